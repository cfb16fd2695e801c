//! xRSL: a parser that follows ARC's own `RSLParser` step for step (so it
//! accepts and rejects the same texts), a strict mapping of the parsed
//! attributes onto [`JobSpec`], and a writer.
//!
//! Grammar (ARC 6.17 `RSLParser.cpp`): `&`, `|` and `+` booleans, relations
//! `attr op values` with `= != < > <= >=`, literals `"..."` (`""` is a quote),
//! `'...'`, `^X...X`, bare words, `#` and implicit concatenation, `( ... )`
//! sequences, `$(VAR)` variables bound by `rsl_substitution`, and
//! `(* comments *)` located by a scan of the raw text before parsing.

use std::collections::{BTreeMap, HashMap};

use super::model::{
    EnvVar, Field, InputFile, JobSpec, Notify, NotifyState, OutputFile, RuntimeEnv,
};
use super::{Place, Problem, Problems};

/// Characters that end a bare word and that attribute and variable names must not contain.
const SPECIAL: &[u8] = b"+&|()=<>!\"'^#$";
const WS: &[u8] = b" \t\n\x0b\x0c\r";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoolOp {
    And,
    Or,
    Multi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelOp {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

impl RelOp {
    fn as_str(self) -> &'static str {
        match self {
            RelOp::Eq => "=",
            RelOp::Ne => "!=",
            RelOp::Lt => "<",
            RelOp::Gt => ">",
            RelOp::Le => "<=",
            RelOp::Ge => ">=",
        }
    }
}

/// A parsed (not yet evaluated) description. Positions are byte offsets.
#[derive(Debug, Clone, PartialEq)]
pub enum Rsl {
    Bool {
        op: BoolOp,
        pos: usize,
        items: Vec<Rsl>,
    },
    Rel(Relation),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    /// As written.
    pub attr: String,
    /// Lower case, `_` removed: how ARC compares names.
    pub name: String,
    pub pos: usize,
    pub op: RelOp,
    pub values: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Lit {
        text: String,
        pos: usize,
    },
    Var {
        name: String,
        pos: usize,
    },
    Concat {
        left: Box<Value>,
        right: Box<Value>,
        pos: usize,
    },
    Seq {
        items: Vec<Value>,
        pos: usize,
    },
}

impl Value {
    pub fn pos(&self) -> usize {
        match self {
            Value::Lit { pos, .. }
            | Value::Var { pos, .. }
            | Value::Concat { pos, .. }
            | Value::Seq { pos, .. } => *pos,
        }
    }
}

/// A syntax error: byte offset and message (ARC's wording where it has one).
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub pos: usize,
    pub message: String,
    pub hint: Option<String>,
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(src.len());
    let before = &src[..floor_char_boundary(src, pos)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

struct Parser<'a> {
    src: &'a str,
    s: &'a [u8],
    n: usize,
    /// Start of each `(* ... *)` → offset just past it.
    comments: HashMap<usize, usize>,
}

type PResult<T> = Result<T, SyntaxError>;

fn err<T>(pos: usize, message: impl Into<String>) -> PResult<T> {
    Err(SyntaxError {
        pos,
        message: message.into(),
        hint: None,
    })
}

fn find(s: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > s.len() {
        return None;
    }
    s[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

impl<'a> Parser<'a> {
    fn at(&self, i: usize) -> u8 {
        self.s.get(i).copied().unwrap_or(0)
    }

    fn cur(&self) -> u8 {
        self.at(self.n)
    }

    fn skip_ws_and_comments(&mut self) {
        loop {
            let prev = self.n;
            while self.n < self.s.len() && WS.contains(&self.s[self.n]) {
                self.n += 1;
            }
            if let Some(&end) = self.comments.get(&self.n) {
                self.n = end;
            }
            if self.n == prev {
                break;
            }
        }
    }

    /// `Ok(None)`: no string starts here.
    fn parse_string(&mut self) -> PResult<Option<(String, usize)>> {
        let start = self.n;
        let c = self.cur();
        let delim = match c {
            b'\'' | b'"' => c,
            b'^' => {
                if self.n + 1 >= self.s.len() {
                    return err(self.n + 1, "End of user delimiter quoted string not found");
                }
                if !self.s[self.n + 1].is_ascii() {
                    // ARC splits bytes; a non-ASCII delimiter would cut a character.
                    return err(
                        self.n + 1,
                        "the delimiter after ^ must be an ASCII character",
                    );
                }
                self.n += 1;
                self.s[self.n]
            }
            _ => {
                if self.n >= self.s.len() {
                    return Ok(None);
                }
                let end = self.s[self.n..]
                    .iter()
                    .position(|b| SPECIAL.contains(b) || WS.contains(b))
                    .map_or(self.s.len(), |p| p + self.n);
                if end == self.n {
                    return Ok(None);
                }
                let text = self.src[self.n..end].to_string();
                self.n = end;
                return Ok(Some((text, start)));
            }
        };
        let mut text = Vec::new();
        loop {
            let Some(close) = self.s[self.n + 1..]
                .iter()
                .position(|&b| b == delim)
                .map(|p| p + self.n + 1)
            else {
                let what = match delim {
                    b'"' => "End of double quoted string not found".to_string(),
                    b'\'' => "End of single quoted string not found".to_string(),
                    d => format!(
                        "End of user delimiter ({}) quoted string not found",
                        d as char
                    ),
                };
                return Err(SyntaxError {
                    pos: start,
                    message: what,
                    hint: Some(format!(
                        "close the string with {}; a literal {} inside is written twice",
                        delim as char, delim as char
                    )),
                });
            };
            text.extend_from_slice(&self.s[self.n + 1..close]);
            self.n = close + 1;
            if self.cur() == delim && self.n < self.s.len() {
                text.push(delim);
            } else {
                break;
            }
        }
        // Splitting happened only at ASCII delimiters, so this is still UTF-8.
        let text = String::from_utf8(text).expect("split at ASCII bytes");
        Ok(Some((text, start)))
    }

    fn parse_list(&mut self) -> PResult<Vec<Value>> {
        let mut values = Vec::new();
        let mut left: Option<Value> = None;
        // 0: none, 1: explicit `#`, 2: implicit (adjacent tokens).
        let mut concat = 0u8;
        let mut concat_pos = self.n;
        loop {
            let mut right: Option<Value> = None;
            let mut next_concat = 0u8;
            let save = self.n;
            self.skip_ws_and_comments();
            if self.n != save {
                concat = 0;
            }
            if self.cur() == b'#' {
                concat_pos = self.n;
                self.n += 1;
                self.skip_ws_and_comments();
                concat = 1;
            }
            if concat == 2 {
                concat_pos = self.n;
            }
            if self.cur() == b'(' {
                let seq_pos = self.n;
                self.n += 1;
                let items = self.parse_list()?;
                self.skip_ws_and_comments();
                if self.cur() != b')' {
                    return err(self.n, "')' expected");
                }
                self.n += 1;
                right = Some(Value::Seq {
                    items,
                    pos: seq_pos,
                });
            } else if self.cur() == b'$' {
                let var_pos = self.n;
                self.n += 1;
                self.skip_ws_and_comments();
                if self.cur() != b'(' {
                    return err(self.n, "'(' expected");
                }
                self.n += 1;
                self.skip_ws_and_comments();
                let Some((name, _)) = self.parse_string()? else {
                    return err(self.n, "Variable name expected");
                };
                if name.bytes().any(|b| SPECIAL.contains(&b)) {
                    return err(
                        self.n,
                        format!("Variable name ({name}) contains invalid character"),
                    );
                }
                self.skip_ws_and_comments();
                if self.cur() != b')' {
                    return err(self.n, "')' expected");
                }
                self.n += 1;
                right = Some(Value::Var { name, pos: var_pos });
                next_concat = 2;
            } else {
                match self.parse_string() {
                    Ok(Some((text, pos))) => {
                        right = Some(Value::Lit { text, pos });
                        next_concat = 2;
                    }
                    Ok(None) => {}
                    Err(e) => return Err(e),
                }
            }
            match concat {
                0 => {
                    if let Some(l) = left.take() {
                        values.push(l);
                    }
                    left = right.clone();
                }
                1 => {
                    let Some(l) = left.take() else {
                        return err(self.n, "No left operand for concatenation operator");
                    };
                    let Some(r) = right.clone() else {
                        return err(self.n, "No right operand for concatenation operator");
                    };
                    left = Some(Value::Concat {
                        left: Box::new(l),
                        right: Box::new(r),
                        pos: concat_pos,
                    });
                }
                _ => {
                    if let Some(l) = left.take() {
                        left = Some(match right.clone() {
                            Some(r) => Value::Concat {
                                left: Box::new(l),
                                right: Box::new(r),
                                pos: concat_pos,
                            },
                            None => l,
                        });
                    } else {
                        left = right.clone();
                    }
                }
            }
            concat = next_concat;
            if left.is_none() && right.is_none() {
                break;
            }
        }
        Ok(values)
    }

    fn parse_rsl(&mut self) -> PResult<Rsl> {
        self.skip_ws_and_comments();
        let op = match self.cur() {
            b'+' => Some(BoolOp::Multi),
            b'&' => Some(BoolOp::And),
            b'|' => Some(BoolOp::Or),
            _ => None,
        };
        if let Some(op) = op {
            let pos = self.n;
            self.n += 1;
            self.skip_ws_and_comments();
            let mut items = Vec::new();
            loop {
                if self.cur() != b'(' {
                    return err(self.n, "'(' expected");
                }
                self.n += 1;
                self.skip_ws_and_comments();
                items.push(self.parse_rsl()?);
                self.skip_ws_and_comments();
                if self.cur() != b')' {
                    return err(self.n, "')' expected");
                }
                self.n += 1;
                self.skip_ws_and_comments();
                if !(self.n < self.s.len() && self.cur() == b'(') {
                    break;
                }
            }
            return Ok(Rsl::Bool { op, pos, items });
        }
        let Some((attr, pos)) = self.parse_string()? else {
            return err(self.n, "Attribute name expected");
        };
        if attr.bytes().any(|b| SPECIAL.contains(&b)) {
            return err(
                self.n,
                format!("Attribute name ({attr}) contains invalid character"),
            );
        }
        self.skip_ws_and_comments();
        let op = match (self.cur(), self.at(self.n + 1)) {
            (b'=', _) => (RelOp::Eq, 1),
            (b'!', b'=') => (RelOp::Ne, 2),
            (b'<', b'=') => (RelOp::Le, 2),
            (b'<', _) => (RelOp::Lt, 1),
            (b'>', b'=') => (RelOp::Ge, 2),
            (b'>', _) => (RelOp::Gt, 1),
            _ => return err(self.n, "Relation operator expected"),
        };
        self.n += op.1;
        self.skip_ws_and_comments();
        let values = self.parse_list()?;
        let name = attr.to_lowercase().replace('_', "");
        Ok(Rsl::Rel(Relation {
            attr,
            name,
            pos,
            op: op.0,
            values,
        }))
    }
}

/// Parse xRSL text into its syntax tree, accepting exactly what ARC accepts.
pub fn parse(src: &str) -> Result<Rsl, SyntaxError> {
    let s = src.as_bytes();
    let mut comments = HashMap::new();
    let mut pos = 0;
    // ARC locates comments in the raw text first, even inside strings.
    while let Some(start) = find(s, b"(*", pos) {
        let Some(end) = find(s, b"*)", start) else {
            return Err(SyntaxError {
                pos: start,
                message: "End of comment not found".into(),
                hint: Some(
                    "close the comment with *); inside a string write ( and * apart: \"(\" # \"*\""
                        .into(),
                ),
            });
        };
        comments.insert(start, end + 2);
        pos = end + 2;
    }
    let mut p = Parser {
        src,
        s,
        n: 0,
        comments,
    };
    let rsl = p.parse_rsl()?;
    p.skip_ws_and_comments();
    if p.n < s.len() {
        return err(p.n, "Junk at end of RSL");
    }
    Ok(rsl)
}

/// An evaluated relation value: literals and sequences only.
#[derive(Debug, Clone, PartialEq)]
pub enum EValue {
    Lit { text: String, pos: usize },
    Seq { items: Vec<EValue>, pos: usize },
}

impl EValue {
    pub fn pos(&self) -> usize {
        match self {
            EValue::Lit { pos, .. } | EValue::Seq { pos, .. } => *pos,
        }
    }
}

/// An evaluated description: no variables, no concatenation.
#[derive(Debug, Clone, PartialEq)]
pub enum ERsl {
    Bool {
        op: BoolOp,
        pos: usize,
        items: Vec<ERsl>,
    },
    Rel {
        attr: String,
        name: String,
        pos: usize,
        op: RelOp,
        values: Vec<EValue>,
    },
}

/// Evaluate variables and concatenations. ARC substitutes an undefined
/// variable with an empty string; we refuse it instead (a typo would
/// otherwise vanish). `predefined` are template placeholders.
/// Returns one evaluated tree per job (a top-level `+` gives several).
pub fn evaluate(rsl: &Rsl, predefined: &BTreeMap<String, String>) -> PResult<Vec<ERsl>> {
    match rsl {
        Rsl::Bool {
            op: BoolOp::Multi,
            items,
            ..
        } => {
            let mut out = Vec::new();
            for item in items {
                out.extend(evaluate(item, predefined)?);
            }
            Ok(out)
        }
        other => {
            let mut vars = predefined.clone();
            Ok(vec![eval_rsl(other, &mut vars)?])
        }
    }
}

fn eval_rsl(rsl: &Rsl, vars: &mut BTreeMap<String, String>) -> PResult<ERsl> {
    match rsl {
        Rsl::Bool { op, pos, items } => {
            if *op == BoolOp::Multi {
                return Err(SyntaxError {
                    pos: *pos,
                    message: "Multi-request operator only allowed at top level".into(),
                    hint: Some("write +(&(...))(&(...)) with + first".into()),
                });
            }
            // Bindings stay inside the group they were made in.
            let mut inner = vars.clone();
            let items = items
                .iter()
                .map(|i| eval_rsl(i, &mut inner))
                .collect::<PResult<Vec<_>>>()?;
            Ok(ERsl::Bool {
                op: *op,
                pos: *pos,
                items,
            })
        }
        Rsl::Rel(r) => {
            let mut values = Vec::new();
            if r.name == "rslsubstitution" {
                for v in &r.values {
                    let Value::Seq { items, pos } = v else {
                        return err(v.pos(), "RSL substitution is not a sequence");
                    };
                    if items.len() != 2 {
                        return err(*pos, "RSL substitution sequence is not of length 2");
                    }
                    let name = eval_value(&items[0], vars)?;
                    let value = eval_value(&items[1], vars)?;
                    let (EValue::Lit { text: n, .. }, EValue::Lit { text: val, .. }) =
                        (&name, &value)
                    else {
                        return err(
                            *pos,
                            "RSL substitution variable name or value is not a literal",
                        );
                    };
                    vars.insert(n.clone(), val.clone());
                    values.push(EValue::Seq {
                        items: vec![name, value],
                        pos: *pos,
                    });
                }
            } else {
                for v in &r.values {
                    values.push(eval_value(v, vars)?);
                }
            }
            Ok(ERsl::Rel {
                attr: r.attr.clone(),
                name: r.name.clone(),
                pos: r.pos,
                op: r.op,
                values,
            })
        }
    }
}

fn eval_value(v: &Value, vars: &BTreeMap<String, String>) -> PResult<EValue> {
    match v {
        Value::Lit { text, pos } => Ok(EValue::Lit {
            text: text.clone(),
            pos: *pos,
        }),
        Value::Var { name, pos } => match vars.get(name) {
            Some(text) => Ok(EValue::Lit {
                text: text.clone(),
                pos: *pos,
            }),
            None => Err(SyntaxError {
                pos: *pos,
                message: format!(
                    "variable $({name}) is not defined; ARC would silently put an empty string here"
                ),
                hint: Some(format!(
                    "define it first with (rsl_substitution=(\"{name}\" \"value\")), or use a placeholder gridship knows"
                )),
            }),
        },
        Value::Concat { left, right, pos } => {
            let l = eval_value(left, vars)?;
            let r = eval_value(right, vars)?;
            match (l, r) {
                (EValue::Lit { text: a, pos: lp }, EValue::Lit { text: b, .. }) => {
                    Ok(EValue::Lit {
                        text: a + &b,
                        pos: lp,
                    })
                }
                (EValue::Seq { .. }, _) => err(
                    *pos,
                    "Left operand for RSL concatenation does not evaluate to a literal",
                ),
                _ => err(
                    *pos,
                    "Right operand for RSL concatenation does not evaluate to a literal",
                ),
            }
        }
        Value::Seq { items, pos } => Ok(EValue::Seq {
            items: items
                .iter()
                .map(|i| eval_value(i, vars))
                .collect::<PResult<Vec<_>>>()?,
            pos: *pos,
        }),
    }
}

// ---------------------------------------------------------------------------
// Strict mapping onto JobSpec
// ---------------------------------------------------------------------------

/// What gridship reads, and what ARC knows but gridship refuses, with why.
const GRIDSHIP_ATTRS: &[&str] = &[
    "executable",
    "arguments",
    "stdin",
    "stdout",
    "stderr",
    "join",
    "inputfiles",
    "executables",
    "outputfiles",
    "walltime",
    "cputime",
    "memory",
    "disk",
    "count",
    "countpernode",
    "exclusiveexecution",
    "queue",
    "runtimeenvironment",
    "environment",
    "jobname",
    "notify",
    "priority",
    "rerun",
    "gmlog",
    "rslsubstitution",
];

const ARC_ONLY_ATTRS: &[&str] = &[
    "gridtime",
    "lifetime",
    "starttime",
    "dryrun",
    "acl",
    "architecture",
    "opsys",
    "middleware",
    "nodeaccess",
    "benchmarks",
    "cache",
    "ftpthreads",
    "jobreport",
    "credentialserver",
    "delegationid",
    "replicacollection",
    "cluster",
];

const SERVER_ATTRS: &[&str] = &[
    "action",
    "hostname",
    "jobid",
    "clientxrsl",
    "clientsoftware",
    "savestate",
];

/// Globus RSL leftovers ARC warns about and drops, with the xRSL to use.
const GLOBUS_ATTRS: &[(&str, &str)] = &[
    ("resourcemanagercontact", "submit with --ce instead"),
    (
        "directory",
        "jobs run in their session directory; remove it",
    ),
    ("maxcputime", "use (cputime=...)"),
    ("maxwalltime", "use (walltime=...)"),
    ("maxtime", "use (walltime=...)"),
    ("maxmemory", "use (memory=MB per core)"),
    ("minmemory", "use (memory=MB per core)"),
    ("grammyjob", "remove it"),
    (
        "project",
        "ARC has no project attribute; the VO comes from your proxy or token",
    ),
    ("hostcount", "use (count=...) with (countpernode=...)"),
    ("label", "use (jobname=...)"),
    ("subjobcommstype", "remove it"),
    ("subjobstarttype", "remove it"),
    ("filecleanup", "remove it"),
    ("filestagein", "use (inputfiles=...)"),
    ("filestageinshared", "use (inputfiles=...)"),
    ("filestageout", "use (outputfiles=...)"),
    ("gasscache", "remove it"),
    ("jobtype", "use (count=...)"),
    (
        "librarypath",
        "use (environment=(\"LD_LIBRARY_PATH\" \"...\"))",
    ),
    ("remoteiourl", "remove it"),
    ("scratchdir", "remove it"),
];

const GPU_WORDS: &[&str] = &[
    "gpu",
    "gpus",
    "requestgpus",
    "ngpus",
    "gpucount",
    "cuda",
    "coprocessor",
    "gres",
];

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Why `name` (normalised) is refused, or `None` when gridship reads it.
fn attribute_problem(name: &str, written: &str) -> Option<(String, String)> {
    if GRIDSHIP_ATTRS.contains(&name) {
        return None;
    }
    if ARC_ONLY_ATTRS.contains(&name) {
        return Some((
            format!("attribute '{written}' is valid ARC xRSL but gridship does not model it"),
            "remove it; gridship writes only what it can also express in ADL and check".into(),
        ));
    }
    if SERVER_ATTRS.contains(&name) {
        return Some((
            format!(
                "attribute '{written}' is set by the CE, not by a user description; ARC rejects or overrides it"
            ),
            "remove it".into(),
        ));
    }
    if let Some((_, fix)) = GLOBUS_ATTRS.iter().find(|(g, _)| *g == name) {
        return Some((
            format!("'{written}' is a Globus RSL attribute; ARC ignores it with a warning"),
            (*fix).to_string(),
        ));
    }
    if GPU_WORDS.contains(&name) || name.contains("gpu") {
        return Some((
            format!("unknown attribute '{written}': ARC has no GPU attribute and silently drops this"),
            "GPUs go by queue and site runtime environment: use `gridship jobdesc --site SITE --queue GPUQUEUE`".into(),
        ));
    }
    let best = GRIDSHIP_ATTRS
        .iter()
        .chain(ARC_ONLY_ATTRS)
        .map(|k| (levenshtein(name, k), *k))
        .min();
    let hint = match best {
        Some((d, k)) if d <= 3 && k != "rslsubstitution" => format!("did you mean '{k}'?"),
        _ => format!(
            "known attributes: {}",
            GRIDSHIP_ATTRS[..GRIDSHIP_ATTRS.len() - 1].join(", ")
        ),
    };
    Some((
        format!("unknown attribute '{written}': ARC would silently ignore it"),
        hint,
    ))
}

/// Seconds in a duration as ARC's `Period` reads it with minutes as the
/// bare unit, refusing every form ARC would misread.
pub fn parse_duration(text: &str) -> Result<u64, (String, String)> {
    let t = text.trim();
    let hint =
        "write minutes (\"90\"), units (\"1h30m\", \"2 hours\", \"45s\") or ISO 8601 (\"PT1H30M\")";
    let bad = |why: &str| Err((format!("duration \"{text}\" {why}"), hint.to_string()));
    if t.is_empty() {
        return bad("is empty; ARC would read it as 0");
    }
    if t.contains(':') {
        return bad("uses ':'; ARC reads HH:MM:SS as 0 seconds");
    }
    if let Some(rest) = t.strip_prefix('P').or_else(|| t.strip_prefix('p')) {
        return parse_iso_duration(rest).map_or_else(
            || bad("is not an ISO 8601 duration ARC can read"),
            |s| if s == 0 { bad("is zero") } else { Ok(s) },
        );
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        let m: u64 = t
            .parse()
            .map_err(|_| ("duration too large".to_string(), hint.to_string()))?;
        if m == 0 {
            return bad("is zero");
        }
        return Ok(m * 60);
    }
    // Number-unit pairs: 1h30m, 2 hours, 1d 12h.
    let mut total = 0u64;
    let mut rest = t;
    let mut last_unit = u64::MAX;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return bad("is not a number with a unit");
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| ("duration too large".to_string(), hint.to_string()))?;
        rest = rest[digits..].trim_start();
        let letters = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        if letters == 0 {
            return bad("ends in a number without unit; ARC would guess the unit");
        }
        let unit = rest[..letters].to_ascii_lowercase();
        let secs = match unit.as_str() {
            "w" | "week" | "weeks" => 604_800,
            "d" | "day" | "days" => 86_400,
            "h" | "hour" | "hours" => 3_600,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            _ => return bad("has a unit ARC does not know"),
        };
        if secs >= last_unit {
            return bad("repeats a unit or gives them out of order");
        }
        last_unit = secs;
        total += n * secs;
        rest = rest[letters..].trim_start();
    }
    if total == 0 {
        return bad("is zero");
    }
    Ok(total)
}

fn parse_iso_duration(rest: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut in_time = false;
    let mut num = String::new();
    let mut any = false;
    for c in rest.chars() {
        match c {
            '0'..='9' => num.push(c),
            'T' | 't' if num.is_empty() && !in_time => in_time = true,
            _ => {
                let n: u64 = num.parse().ok()?;
                num.clear();
                let mul = match (c.to_ascii_uppercase(), in_time) {
                    ('W', false) => 604_800,
                    ('D', false) => 86_400,
                    ('H', true) => 3_600,
                    ('M', true) => 60,
                    ('S', true) => 1,
                    _ => return None,
                };
                total += n * mul;
                any = true;
            }
        }
    }
    (num.is_empty() && any).then_some(total)
}

/// Writes seconds so that both dialects read the same number: with units.
pub fn format_duration(mut s: u64) -> String {
    let mut out = String::new();
    for (unit, secs) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if s >= secs {
            out.push_str(&format!("{}{unit}", s / secs));
            s %= secs;
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// Positions of the attributes a JobSpec was read from, for later checks.
pub type Spans = BTreeMap<Field, usize>;

struct Mapper<'a> {
    src: &'a str,
    problems: Vec<Problem>,
    spec: JobSpec,
    spans: Spans,
    join: Option<(bool, usize)>,
    executables: Option<(Vec<(String, usize)>, usize)>,
}

impl Mapper<'_> {
    fn problem(&mut self, pos: usize, message: impl Into<String>, hint: impl Into<String>) {
        let (l, c) = line_col(self.src, pos);
        self.problems.push(Problem {
            place: Some(Place::LineCol(l, c)),
            message: message.into(),
            hint: Some(hint.into()),
        });
    }

    fn lit<'v>(&mut self, attr: &str, v: &'v EValue) -> Option<&'v str> {
        match v {
            EValue::Lit { text, .. } => Some(text),
            EValue::Seq { pos, .. } => {
                self.problem(
                    *pos,
                    format!("'{attr}' takes strings, not a ( ... ) sequence"),
                    format!("write ({attr}=\"value\")"),
                );
                None
            }
        }
    }

    fn single<'v>(&mut self, attr: &str, pos: usize, values: &'v [EValue]) -> Option<&'v str> {
        if values.len() != 1 {
            self.problem(
                pos,
                format!("'{attr}' takes exactly one value, found {}", values.len()),
                format!("write ({attr}=\"value\"); quote values with spaces"),
            );
            return None;
        }
        self.lit(attr, &values[0])
    }

    /// Records where `field` was set; a second setting is an error.
    fn set_once(&mut self, field: Field, pos: usize) -> bool {
        if self.spans.contains_key(&field) {
            let first = self.spans.get(&field).copied().unwrap_or(pos);
            let (l, c) = line_col(self.src, first);
            self.problem(
                pos,
                format!(
                    "'{}' is given twice (first at {l}:{c}); ARC keeps one silently or fails",
                    field.xrsl()
                ),
                "keep one of them",
            );
            return false;
        }
        self.spans.insert(field, pos);
        true
    }

    fn uint(&mut self, attr: &str, pos: usize, text: &str, what: &str, hint: &str) -> Option<u64> {
        let t = text.trim();
        if !t.is_empty()
            && t.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = t.parse::<u64>()
        {
            return Some(n);
        }
        self.problem(
            pos,
            format!("{attr}=\"{text}\" is not {what}; ARC would misread it"),
            hint,
        );
        None
    }

    fn relation(&mut self, attr: &str, name: &str, pos: usize, op: RelOp, values: &[EValue]) {
        if name == "rslsubstitution" {
            return;
        }
        if let Some((message, hint)) = attribute_problem(name, attr) {
            self.problem(pos, message, hint);
            return;
        }
        if op != RelOp::Eq {
            let hint = match name {
                "queue" => "name the queue to use with (queue=\"NAME\"); gridship does not broker between queues".to_string(),
                "runtimeenvironment" => "request the exact RTE with (runtimeenvironment=\"NAME-VERSION\")".to_string(),
                _ => format!("write ({attr}=...)"),
            };
            self.problem(
                pos,
                format!(
                    "'{attr}' is used with '{}'; gridship accepts only '='",
                    op.as_str()
                ),
                hint,
            );
            return;
        }
        match name {
            "executable" => self.string_field(Field::Executable, attr, pos, values),
            "stdin" => self.string_field(Field::Stdin, attr, pos, values),
            "stdout" => self.string_field(Field::Stdout, attr, pos, values),
            "stderr" => self.string_field(Field::Stderr, attr, pos, values),
            "jobname" => self.string_field(Field::JobName, attr, pos, values),
            "gmlog" => self.string_field(Field::Gmlog, attr, pos, values),
            "queue" => self.string_field(Field::Queue, attr, pos, values),
            "arguments" => {
                if self.set_once(Field::Arguments, pos) {
                    let mut args = Vec::new();
                    for v in values {
                        if let Some(t) = self.lit(attr, v) {
                            args.push(t.to_string());
                        }
                    }
                    self.spec.arguments = args;
                }
            }
            "join" => {
                if let Some(t) = self.single(attr, pos, values) {
                    let yes = match t.to_ascii_lowercase().as_str() {
                        "yes" | "true" => true,
                        "no" | "false" => false,
                        _ => {
                            self.problem(
                                pos,
                                format!("join=\"{t}\" must be yes or no"),
                                "write (join=\"yes\")",
                            );
                            return;
                        }
                    };
                    self.join = Some((yes, pos));
                }
            }
            "walltime" | "cputime" => {
                let field = if name == "walltime" {
                    Field::Walltime
                } else {
                    Field::Cputime
                };
                if let Some(t) = self.single(attr, pos, values) {
                    if !self.set_once(field, pos) {
                        return;
                    }
                    match parse_duration(t) {
                        Ok(s) if name == "walltime" => self.spec.walltime_s = Some(s),
                        Ok(s) => self.spec.cputime_s = Some(s),
                        Err((m, h)) => self.problem(values[0].pos(), format!("{attr}: {m}"), h),
                    }
                }
            }
            "memory" | "disk" => {
                let field = if name == "memory" {
                    Field::Memory
                } else {
                    Field::Disk
                };
                if let Some(t) = self.single(attr, pos, values) {
                    if !self.set_once(field, pos) {
                        return;
                    }
                    let hint = if name == "memory" {
                        suggest_mb(t, "memory is MB per core")
                    } else {
                        suggest_mb(t, "disk is MB")
                    };
                    if let Some(n) =
                        self.uint(attr, values[0].pos(), t, "a whole number of MB", &hint)
                    {
                        if name == "memory" {
                            self.spec.memory_mb = Some(n);
                        } else {
                            self.spec.disk_mb = Some(n);
                        }
                    }
                }
            }
            "count" | "countpernode" | "rerun" => {
                let field = match name {
                    "count" => Field::Count,
                    "countpernode" => Field::CountPerNode,
                    _ => Field::Rerun,
                };
                if let Some(t) = self.single(attr, pos, values) {
                    if !self.set_once(field, pos) {
                        return;
                    }
                    let hint = format!("write ({attr}=\"4\")");
                    if let Some(n) = self.uint(attr, values[0].pos(), t, "a whole number", &hint) {
                        let Ok(n) = u32::try_from(n) else {
                            self.problem(
                                values[0].pos(),
                                format!("{attr}=\"{t}\" is too large"),
                                hint,
                            );
                            return;
                        };
                        match field {
                            Field::Count => self.spec.count = Some(n),
                            Field::CountPerNode => self.spec.count_per_node = Some(n),
                            _ => self.spec.rerun = Some(n),
                        }
                    }
                }
            }
            "priority" => {
                if let Some(t) = self.single(attr, pos, values) {
                    if !self.set_once(Field::Priority, pos) {
                        return;
                    }
                    if let Some(n) = self.uint(
                        attr,
                        values[0].pos(),
                        t,
                        "a number from 0 to 100",
                        "write (priority=\"50\"); ARC clamps larger values to 100",
                    ) {
                        if n > 100 {
                            self.problem(
                                values[0].pos(),
                                format!(
                                    "priority=\"{t}\" is above 100; ARC would clamp it silently"
                                ),
                                "use 0..100",
                            );
                        } else {
                            self.spec.priority = Some(n as u8);
                        }
                    }
                }
            }
            "exclusiveexecution" => {
                if let Some(t) = self.single(attr, pos, values) {
                    if !self.set_once(Field::Exclusive, pos) {
                        return;
                    }
                    match t.to_ascii_lowercase().as_str() {
                        "yes" | "true" => self.spec.exclusive = Some(true),
                        "no" | "false" => self.spec.exclusive = Some(false),
                        _ => self.problem(
                            values[0].pos(),
                            format!("exclusiveexecution=\"{t}\" must be yes or no"),
                            "write (exclusiveexecution=\"yes\")",
                        ),
                    }
                }
            }
            "runtimeenvironment" => {
                self.spans.entry(Field::RuntimeEnvironment).or_insert(pos);
                let mut strs = Vec::new();
                for v in values {
                    if let Some(t) = self.lit(attr, v) {
                        strs.push(t.to_string());
                    }
                }
                if strs.is_empty() {
                    self.problem(
                        pos,
                        "runtimeenvironment needs a name",
                        "write (runtimeenvironment=\"ENV/SINGULARITY\" \"/cvmfs/...\")",
                    );
                    return;
                }
                let name = strs.remove(0);
                self.spec.runtime_environments.push(RuntimeEnv {
                    name,
                    options: strs,
                });
            }
            "environment" => {
                self.spans.entry(Field::Environment).or_insert(pos);
                for v in values {
                    match v {
                        EValue::Seq { items, pos: spos } if items.len() == 2 => {
                            let n = self.lit(attr, &items[0]).map(str::to_string);
                            let val = self.lit(attr, &items[1]).map(str::to_string);
                            if let (Some(name), Some(value)) = (n, val) {
                                self.spec.environment.push(EnvVar { name, value });
                            }
                            let _ = spos;
                        }
                        _ => self.problem(
                            v.pos(),
                            "environment takes (\"NAME\" \"VALUE\") pairs",
                            "write (environment=(\"NAME\" \"VALUE\") (\"OTHER\" \"VALUE\"))",
                        ),
                    }
                }
            }
            "inputfiles" | "outputfiles" => {
                let input = name == "inputfiles";
                let field = if input {
                    Field::InputFiles
                } else {
                    Field::OutputFiles
                };
                self.spans.entry(field).or_insert(pos);
                for v in values {
                    let EValue::Seq { items, pos: spos } = v else {
                        self.problem(
                            v.pos(),
                            format!("{attr} takes (\"NAME\" \"URL\") sequences"),
                            format!("write ({attr}=(\"name\" \"\") (\"other\" \"https://...\"))"),
                        );
                        continue;
                    };
                    if items.len() != 2 {
                        self.problem(*spos, format!("{attr} entries need exactly a name and a URL (or \"\"); found {} values", items.len()), "URL options and locations are not supported by gridship: put options in the URL");
                        continue;
                    }
                    let (Some(fname), Some(url)) = (
                        self.lit(attr, &items[0]).map(str::to_string),
                        self.lit(attr, &items[1]).map(str::to_string),
                    ) else {
                        continue;
                    };
                    let loc = if url.is_empty() { None } else { Some(url) };
                    if input {
                        self.spec.input_files.push(InputFile {
                            name: fname,
                            source: loc,
                            executable: false,
                        });
                    } else {
                        self.spec.output_files.push(OutputFile {
                            name: fname,
                            target: loc,
                        });
                    }
                }
            }
            "executables" => {
                let mut names = Vec::new();
                for v in values {
                    if let Some(t) = self.lit(attr, v) {
                        names.push((t.to_string(), v.pos()));
                    }
                }
                if self.set_once(Field::Executables, pos) {
                    self.executables = Some((names, pos));
                }
            }
            "notify" => {
                self.spans.entry(Field::Notify).or_insert(pos);
                for v in values {
                    let Some(t) = self.lit(attr, v).map(str::to_string) else {
                        continue;
                    };
                    self.notify(&t, v.pos());
                }
            }
            _ => unreachable!("attribute_problem covers every other name"),
        }
    }

    fn string_field(&mut self, field: Field, attr: &str, pos: usize, values: &[EValue]) {
        let Some(t) = self.single(attr, pos, values).map(str::to_string) else {
            return;
        };
        if !self.set_once(field, pos) {
            return;
        }
        match field {
            Field::Executable => self.spec.executable = t,
            Field::Stdin => self.spec.stdin = Some(t),
            Field::Stdout => self.spec.stdout = Some(t),
            Field::Stderr => self.spec.stderr = Some(t),
            Field::JobName => self.spec.job_name = Some(t),
            Field::Gmlog => self.spec.gmlog = Some(t),
            Field::Queue => self.spec.queue = Some(t),
            _ => unreachable!(),
        }
    }

    fn notify(&mut self, text: &str, pos: usize) {
        let hint = "write (notify=\"be user@example.org\"): flags b (preparing), q (queued), f (finishing), e (finished), then e-mail addresses";
        let mut toks = text.split([' ', '\t']).filter(|s| !s.is_empty()).peekable();
        let mut states = vec![NotifyState::Preparing, NotifyState::Finished];
        match toks.peek() {
            None => {
                self.problem(pos, "notify value is empty", hint);
                return;
            }
            Some(first) if !first.contains('@') => {
                states.clear();
                for c in first.chars() {
                    match NotifyState::from_xrsl_flag(c) {
                        Some(s) if !states.contains(&s) => states.push(s),
                        Some(_) => {}
                        None if c == 'd' || c == 'c' => {
                            self.problem(pos, format!("notify flag '{c}' cannot be expressed in ADL, which A-REX REST takes"), hint);
                            return;
                        }
                        None => {
                            self.problem(pos, format!("notify flag '{c}' is unknown"), hint);
                            return;
                        }
                    }
                }
                toks.next();
            }
            Some(_) => {}
        }
        let mut any = false;
        for t in toks {
            if !t.contains('@') {
                self.problem(pos, format!("notify: '{t}' is not an e-mail address"), hint);
                return;
            }
            any = true;
            // ARC merges the states of one address given twice.
            if let Some(n) = self.spec.notify.iter_mut().find(|n| n.email == t) {
                for s in &states {
                    if !n.states.contains(s) {
                        n.states.push(*s);
                    }
                }
            } else {
                self.spec.notify.push(Notify {
                    email: t.to_string(),
                    states: states.clone(),
                });
            }
        }
        if !any {
            self.problem(pos, "notify has flags but no e-mail address", hint);
        }
    }

    fn walk(&mut self, r: &ERsl) {
        match r {
            ERsl::Bool {
                op: BoolOp::And,
                items,
                ..
            } => {
                for i in items {
                    self.walk(i);
                }
            }
            ERsl::Bool { op, pos, .. } => {
                let what = if *op == BoolOp::Or {
                    "'|' (alternatives)"
                } else {
                    "'+' (multi-request)"
                };
                self.problem(
                    *pos,
                    format!("{what} inside a job is not supported by gridship"),
                    "write one job per request: +(&(...))(&(...)); choose the queue with --queue",
                );
            }
            ERsl::Rel {
                attr,
                name,
                pos,
                op,
                values,
            } => self.relation(attr, name, *pos, *op, values),
        }
    }

    fn finish(&mut self, top_pos: usize) {
        if let Some((yes, pos)) = self.join
            && yes
        {
            match (&self.spec.stdout, &self.spec.stderr) {
                (None, _) => self.problem(
                    pos,
                    "join is set but stdout is not",
                    "add (stdout=\"out.txt\") or drop join",
                ),
                (Some(o), Some(e)) if o != e => self.problem(
                    pos,
                    "join is set but stderr names another file",
                    "drop stderr or join",
                ),
                (Some(o), _) => self.spec.stderr = Some(o.clone()),
            }
        }
        if let Some((names, _)) = self.executables.take() {
            for (n, p) in names {
                match self.spec.input_files.iter_mut().find(|f| f.name == n) {
                    Some(f) => f.executable = true,
                    None => self.problem(
                        p,
                        format!("executables names '{n}', which is not in inputfiles"),
                        "add it to (inputfiles=...) or remove it",
                    ),
                }
            }
        }
        if self.spec.executable.is_empty() && !self.spans.contains_key(&Field::Executable) {
            self.problem(
                top_pos,
                "no executable; ARC rejects a job without one",
                "add (executable=\"run.sh\")",
            );
        }
    }
}

fn suggest_mb(text: &str, what: &str) -> String {
    let t = text.trim().to_ascii_lowercase();
    let digits: String = t
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let unit = t[digits.len()..].trim().to_string();
    let n: f64 = digits.parse().unwrap_or(0.0);
    let mb = match unit.as_str() {
        "gb" | "g" | "gib" => Some(n * 1024.0),
        "mb" | "m" | "mib" => Some(n),
        "tb" | "t" | "tib" => Some(n * 1024.0 * 1024.0),
        "kb" | "k" | "kib" => Some(n / 1024.0),
        _ => None,
    };
    match mb {
        Some(mb) if mb >= 1.0 => format!("{what} without unit: write \"{}\"", mb.ceil() as u64),
        _ => format!("{what} without unit, e.g. \"4096\""),
    }
}

/// Parsed jobs with the positions of their attributes.
#[derive(Debug, Clone)]
pub struct ParsedJob {
    pub spec: JobSpec,
    pub spans: Spans,
}

/// Parse, evaluate and map xRSL text onto JobSpecs (one per request). Every
/// problem is reported with line:column.
pub fn read(
    input: &str,
    src: &str,
    predefined: &BTreeMap<String, String>,
) -> Result<Vec<ParsedJob>, Problems> {
    let syntax = |e: SyntaxError| {
        let (l, c) = line_col(src, e.pos);
        Problems::new(
            input,
            vec![Problem {
                place: Some(Place::LineCol(l, c)),
                message: e.message,
                hint: e
                    .hint
                    .or_else(|| Some("see the xRSL grammar: &(attribute=\"value\")(...)".into())),
            }],
        )
    };
    let rsl = parse(src).map_err(syntax)?;
    let jobs = evaluate(&rsl, predefined).map_err(syntax)?;
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for job in &jobs {
        let top_pos = match job {
            ERsl::Bool { pos, .. } | ERsl::Rel { pos, .. } => *pos,
        };
        let mut m = Mapper {
            src,
            problems: Vec::new(),
            spec: JobSpec::default(),
            spans: Spans::new(),
            join: None,
            executables: None,
        };
        m.walk(job);
        m.finish(top_pos);
        problems.extend(m.problems);
        out.push(ParsedJob {
            spec: m.spec,
            spans: m.spans,
        });
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Problems::new(input, problems))
    }
}

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

/// A literal as ARC prints it: always `"..."` with `"` doubled. A `(*` inside
/// would open a comment in ARC's raw-text scan, so it is split with `#`.
pub fn quote(s: &str) -> String {
    let doubled = s.replace('"', "\"\"");
    let mut out = String::with_capacity(doubled.len() + 2);
    out.push('"');
    out.push_str(&doubled.replace("(*", "(\" # \"*"));
    out.push('"');
    out
}

fn rel(out: &mut String, first: &mut bool, attr: &str, values: &[String]) {
    out.push_str(if *first { "(" } else { "\n (" });
    *first = false;
    out.push_str(attr);
    out.push_str(" = ");
    out.push_str(&values.join(" "));
    out.push(')');
}

/// One job as `&(...)` (user-side xRSL: durations carry units, so the text
/// means the same in ARC's client and GRIDMANAGER dialects).
pub fn write_job(j: &JobSpec) -> String {
    let mut out = String::from("&");
    let mut first = true;
    let q = |s: &str| quote(s);
    if let Some(n) = &j.job_name {
        rel(&mut out, &mut first, "jobname", &[q(n)]);
    }
    rel(&mut out, &mut first, "executable", &[q(&j.executable)]);
    if !j.arguments.is_empty() {
        let a: Vec<String> = j.arguments.iter().map(|s| q(s)).collect();
        rel(&mut out, &mut first, "arguments", &a);
    }
    for (attr, v) in [
        ("stdin", &j.stdin),
        ("stdout", &j.stdout),
        ("stderr", &j.stderr),
    ] {
        if let Some(v) = v {
            rel(&mut out, &mut first, attr, &[q(v)]);
        }
    }
    if !j.input_files.is_empty() {
        let seqs: Vec<String> = j
            .input_files
            .iter()
            .map(|f| format!("({} {})", q(&f.name), q(f.source.as_deref().unwrap_or(""))))
            .collect();
        rel(&mut out, &mut first, "inputfiles", &seqs);
        let execs: Vec<String> = j
            .input_files
            .iter()
            .filter(|f| f.executable)
            .map(|f| q(&f.name))
            .collect();
        if !execs.is_empty() {
            rel(&mut out, &mut first, "executables", &execs);
        }
    }
    if !j.output_files.is_empty() {
        let seqs: Vec<String> = j
            .output_files
            .iter()
            .map(|f| format!("({} {})", q(&f.name), q(f.target.as_deref().unwrap_or(""))))
            .collect();
        rel(&mut out, &mut first, "outputfiles", &seqs);
    }
    if !j.environment.is_empty() {
        let seqs: Vec<String> = j
            .environment
            .iter()
            .map(|e| format!("({} {})", q(&e.name), q(&e.value)))
            .collect();
        rel(&mut out, &mut first, "environment", &seqs);
    }
    if let Some(s) = j.walltime_s {
        rel(&mut out, &mut first, "walltime", &[q(&format_duration(s))]);
    }
    if let Some(s) = j.cputime_s {
        rel(&mut out, &mut first, "cputime", &[q(&format_duration(s))]);
    }
    if let Some(m) = j.memory_mb {
        rel(&mut out, &mut first, "memory", &[q(&m.to_string())]);
    }
    if let Some(d) = j.disk_mb {
        rel(&mut out, &mut first, "disk", &[q(&d.to_string())]);
    }
    if let Some(c) = j.count {
        rel(&mut out, &mut first, "count", &[q(&c.to_string())]);
    }
    if let Some(c) = j.count_per_node {
        rel(&mut out, &mut first, "countpernode", &[q(&c.to_string())]);
    }
    if let Some(e) = j.exclusive {
        rel(
            &mut out,
            &mut first,
            "exclusiveexecution",
            &[q(if e { "yes" } else { "no" })],
        );
    }
    if let Some(qn) = &j.queue {
        rel(&mut out, &mut first, "queue", &[q(qn)]);
    }
    for r in &j.runtime_environments {
        let mut v = vec![q(&r.name)];
        v.extend(r.options.iter().map(|o| q(o)));
        rel(&mut out, &mut first, "runtimeenvironment", &v);
    }
    if !j.notify.is_empty() {
        let v: Vec<String> = j
            .notify
            .iter()
            .map(|n| {
                q(&format!(
                    "{} {}",
                    n.states.iter().map(|s| s.xrsl_flag()).collect::<String>(),
                    n.email
                ))
            })
            .collect();
        rel(&mut out, &mut first, "notify", &v);
    }
    if let Some(p) = j.priority {
        rel(&mut out, &mut first, "priority", &[q(&p.to_string())]);
    }
    if let Some(r) = j.rerun {
        rel(&mut out, &mut first, "rerun", &[q(&r.to_string())]);
    }
    if let Some(g) = &j.gmlog {
        rel(&mut out, &mut first, "gmlog", &[q(g)]);
    }
    out.push('\n');
    out
}

/// One job as `&(...)`, several as a `+` multi-request.
pub fn write(jobs: &[JobSpec]) -> String {
    if jobs.len() == 1 {
        return write_job(&jobs[0]);
    }
    let mut out = String::from("+");
    for j in jobs {
        out.push('(');
        out.push_str(write_job(j).trim_end());
        out.push_str(")\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(src: &str) -> String {
        match parse(&format!("&(a={src})")).unwrap() {
            Rsl::Bool { items, .. } => match &items[0] {
                Rsl::Rel(r) => {
                    let e = eval_value(&r.values[0], &BTreeMap::new()).unwrap();
                    match e {
                        EValue::Lit { text, .. } => text,
                        _ => panic!("not a literal"),
                    }
                }
                _ => panic!(),
            },
            _ => panic!(),
        }
    }

    #[test]
    fn literal_forms() {
        assert_eq!(lit(r#""say ""hi""""#), r#"say "hi""#);
        assert_eq!(lit("'it''s'"), "it's");
        assert_eq!(lit("^#say \"x\" it's#"), "say \"x\" it's");
        assert_eq!(lit("^#a##b#"), "a#b");
        assert_eq!(lit(r#""run" # ".sh""#), "run.sh");
        assert_eq!(lit(r#""a"'b'"#), "ab");
        assert_eq!(lit("word"), "word");
    }

    #[test]
    fn comments_and_errors() {
        assert!(parse("&(* c *)(executable=a)(* d *)").is_ok());
        let e = parse("&(executable=a)(* open").unwrap_err();
        assert_eq!(e.message, "End of comment not found");
        let e = parse("&(executable=\"a\"))").unwrap_err();
        assert_eq!(e.message, "Junk at end of RSL");
        assert_eq!(line_col("&(executable=\"a\"))", e.pos), (1, 18));
        assert!(parse("&(executable=\"a(*b\")").is_err());
        assert!(parse("&(executable=\"a(*b*)\")").is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(5400));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("2 hours"), Ok(7200));
        assert_eq!(parse_duration("PT1H"), Ok(3600));
        assert_eq!(parse_duration("P1DT1S"), Ok(86401));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert!(parse_duration("1:30:00").is_err());
        assert!(parse_duration("1h30").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("0").is_err());
        for s in [59, 60, 61, 3600, 5400, 86_400 + 61] {
            assert_eq!(parse_duration(&format_duration(s)), Ok(s));
        }
    }

    #[test]
    fn quote_splits_comment_openers() {
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote("x(*y"), "\"x(\" # \"*y\"");
        assert_eq!(lit(&quote("((**\"(*")), "((**\"(*");
    }

    #[test]
    fn strict_mapping_reports_place() {
        let src = "&(executable=\"a\")\n (walltime=\"1:30:00\")\n (memory=\"4GB\")\n (gpus=\"1\")";
        let e = read("t.xrsl", src, &BTreeMap::new()).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("2:12"), "{text}");
        assert!(text.contains("3:10") && text.contains("4096"), "{text}");
        assert!(text.contains("4:3") && text.contains("GPU"), "{text}");
    }
}
