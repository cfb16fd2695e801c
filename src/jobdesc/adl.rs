//! ADL (EMI-ES ActivityDescription) writer and reader, with ARC's namespaces.
//!
//! Element order and unit conversions follow what ARC's own `emies:adl`
//! unparser writes: seconds for times, bytes for memory and disk.

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

use super::model::{EnvVar, InputFile, JobSpec, Notify, NotifyState, OutputFile, RuntimeEnv};
use super::{Place, Problem, Problems};

pub const NS_ADL: &str = "http://www.eu-emi.eu/es/2010/12/adl";
pub const NS_NORDUGRID: &str = "http://www.nordugrid.org/es/2011/12/nordugrid-adl";
pub const NS_TYPES: &str = "http://www.eu-emi.eu/es/2010/12/types";

const MB: u64 = 1024 * 1024;

/// XML text escaping; `\r` as a character reference so parsers do not fold it.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

struct W {
    out: String,
    depth: usize,
    /// Delegation the CE uses to stage from/to URLs (set by `submit`).
    delegation: Option<String>,
}

impl W {
    fn open(&mut self, name: &str) {
        self.indent();
        self.out.push('<');
        self.out.push_str(name);
        self.out.push_str(">\n");
        self.depth += 1;
    }
    fn close(&mut self, name: &str) {
        self.depth -= 1;
        self.indent();
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push_str(">\n");
    }
    fn leaf(&mut self, name: &str, text: &str) {
        self.indent();
        self.out
            .push_str(&format!("<{name}>{}</{name}>\n", escape(text)));
    }
    fn indent(&mut self) {
        for _ in 0..self.depth {
            self.out.push_str("  ");
        }
    }
}

fn write_activity(w: &mut W, j: &JobSpec, root_ns: bool) {
    w.indent();
    if root_ns {
        w.out.push_str(&format!(
            "<ActivityDescription xmlns=\"{NS_ADL}\" xmlns:emiestypes=\"{NS_TYPES}\" xmlns:nordugrid-adl=\"{NS_NORDUGRID}\">\n"
        ));
    } else {
        w.out.push_str("<ActivityDescription>\n");
    }
    w.depth += 1;
    if let Some(n) = &j.job_name {
        w.open("ActivityIdentification");
        w.leaf("Name", n);
        w.close("ActivityIdentification");
    }
    w.open("Application");
    w.open("Executable");
    w.leaf("Path", &j.executable);
    for a in &j.arguments {
        w.leaf("Argument", a);
    }
    w.close("Executable");
    for (el, v) in [
        ("Input", &j.stdin),
        ("Output", &j.stdout),
        ("Error", &j.stderr),
    ] {
        if let Some(v) = v {
            w.leaf(el, v);
        }
    }
    if let Some(r) = j.rerun {
        w.leaf("nordugrid-adl:Rerun", &r.to_string());
    }
    if let Some(p) = j.priority {
        w.leaf("nordugrid-adl:Priority", &p.to_string());
    }
    for e in &j.environment {
        w.open("Environment");
        w.leaf("Name", &e.name);
        w.leaf("Value", &e.value);
        w.close("Environment");
    }
    if let Some(g) = &j.gmlog {
        w.leaf("nordugrid-adl:LoggingDirectory", g);
    }
    for n in &j.notify {
        w.open("Notification");
        w.leaf("Protocol", "email");
        w.leaf("Recipient", &n.email);
        for s in &n.states {
            w.leaf("OnState", s.adl_state());
        }
        w.close("Notification");
    }
    w.close("Application");

    let has_resources = !j.runtime_environments.is_empty()
        || j.memory_mb.is_some()
        || j.disk_mb.is_some()
        || j.count.is_some()
        || j.queue.is_some()
        || j.cputime_s.is_some()
        || j.walltime_s.is_some();
    if has_resources {
        w.open("Resources");
        for r in &j.runtime_environments {
            w.open("RuntimeEnvironment");
            let (name, version) = r.name_and_version();
            w.leaf("Name", name);
            if let Some(v) = version {
                w.leaf("Version", v);
            }
            for o in &r.options {
                w.leaf("Option", o);
            }
            w.close("RuntimeEnvironment");
        }
        if let Some(m) = j.memory_mb {
            w.leaf("IndividualPhysicalMemory", &(m * MB).to_string());
        }
        if let Some(d) = j.disk_mb {
            w.leaf("DiskSpaceRequirement", &(d * MB).to_string());
        }
        if let Some(c) = j.count {
            w.open("SlotRequirement");
            w.leaf("NumberOfSlots", &c.to_string());
            if let Some(p) = j.count_per_node {
                w.leaf("SlotsPerHost", &p.to_string());
            }
            if let Some(e) = j.exclusive {
                w.leaf("ExclusiveExecution", if e { "true" } else { "false" });
            }
            w.close("SlotRequirement");
        }
        if let Some(q) = &j.queue {
            w.leaf("QueueName", q);
        }
        if let Some(c) = j.cputime_s {
            w.leaf("TotalCPUTime", &c.to_string());
        }
        if let Some(s) = j.walltime_s {
            w.leaf("WallTime", &s.to_string());
        }
        w.close("Resources");
    }

    if !j.input_files.is_empty() || !j.output_files.is_empty() {
        w.open("DataStaging");
        for f in &j.input_files {
            w.open("InputFile");
            w.leaf("Name", &f.name);
            if let Some(s) = &f.source {
                w.open("Source");
                w.leaf("URI", s);
                if let Some(d) = w.delegation.clone() {
                    w.leaf("DelegationID", &d);
                }
                w.close("Source");
            }
            if f.executable {
                w.leaf("IsExecutable", "true");
            }
            w.close("InputFile");
        }
        for f in &j.output_files {
            w.open("OutputFile");
            w.leaf("Name", &f.name);
            if let Some(t) = &f.target {
                w.open("Target");
                w.leaf("URI", t);
                if let Some(d) = w.delegation.clone() {
                    w.leaf("DelegationID", &d);
                }
                w.close("Target");
            }
            w.close("OutputFile");
        }
        if let Some(d) = w.delegation.clone() {
            w.leaf("nordugrid-adl:DelegationID", &d);
        }
        w.close("DataStaging");
    }
    w.depth -= 1;
    w.indent();
    w.out.push_str("</ActivityDescription>\n");
}

/// One job as an `ActivityDescription` document.
pub fn write_job(j: &JobSpec) -> String {
    write_with_delegation(std::slice::from_ref(j), None)
}

/// One job as `ActivityDescription`, several wrapped in `ActivityDescriptions`
/// (what A-REX REST takes for a multi-job submission).
pub fn write(jobs: &[JobSpec]) -> String {
    write_with_delegation(jobs, None)
}

/// As [`write`], with a delegation ID on every staged URL.
pub fn write_with_delegation(jobs: &[JobSpec], delegation: Option<&str>) -> String {
    let mut w = W {
        out: String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"),
        depth: 0,
        delegation: delegation.map(str::to_string),
    };
    if jobs.len() == 1 {
        write_activity(&mut w, &jobs[0], true);
        return w.out;
    }
    w.out.push_str(&format!(
        "<ActivityDescriptions xmlns=\"{NS_ADL}\" xmlns:emiestypes=\"{NS_TYPES}\" xmlns:nordugrid-adl=\"{NS_NORDUGRID}\">\n"
    ));
    w.depth = 1;
    for j in jobs {
        write_activity(&mut w, j, false);
    }
    w.out.push_str("</ActivityDescriptions>\n");
    w.out
}

// ---------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------

/// A parsed XML element: (namespace, local name), text, children, line.
#[derive(Debug, Default)]
struct Node {
    ns: String,
    name: String,
    text: String,
    children: Vec<Node>,
    line: usize,
}

impl Node {
    fn path_place(&self, path: &str) -> Place {
        Place::Element(format!("line {}: {path}", self.line))
    }
}

fn line_of(src: &str, pos: usize) -> usize {
    src.as_bytes()[..pos.min(src.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn parse_tree(input: &str, src: &str) -> Result<Node, Problems> {
    let mut reader = NsReader::from_str(src);
    let mut stack: Vec<Node> = vec![Node::default()];
    let bad = |pos: usize, msg: String| {
        Problems::new(
            input,
            vec![Problem {
                place: Some(Place::Element(format!("line {}", line_of(src, pos)))),
                message: msg,
                hint: Some("fix the XML; ADL must be well-formed".into()),
            }],
        )
    };
    loop {
        let pos = reader.buffer_position() as usize;
        let (ns, ev) = reader
            .read_resolved_event()
            .map_err(|e| bad(pos, format!("XML error: {e}")))?;
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let is_empty = matches!(ev, Event::Empty(_));
                let ns = match ns {
                    ResolveResult::Bound(n) => AsRef::<str>::as_ref(&n).to_string(),
                    _ => String::new(),
                };
                let node = Node {
                    ns,
                    name: AsRef::<str>::as_ref(&e.local_name()).to_string(),
                    line: line_of(src, pos),
                    ..Node::default()
                };
                if is_empty {
                    stack.last_mut().expect("root").children.push(node);
                } else {
                    stack.push(node);
                }
            }
            Event::End(_) => {
                let node = stack.pop().expect("balanced by quick-xml");
                stack
                    .last_mut()
                    .ok_or_else(|| bad(pos, "unbalanced XML".into()))?
                    .children
                    .push(node);
            }
            Event::Text(t) => {
                // References arrive as their own events, so this is plain text.
                let t = t.xml10_content();
                stack.last_mut().expect("root").text.push_str(&t);
            }
            Event::CData(t) => {
                stack
                    .last_mut()
                    .expect("root")
                    .text
                    .push_str(&t.xml10_content());
            }
            Event::GeneralRef(r) => {
                let name = r.xml10_content();
                let ch = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    _ => match quick_xml::escape::resolve_predefined_entity(&name) {
                        Some(s) => s.to_string(),
                        None => return Err(bad(pos, format!("unknown XML entity &{name};"))),
                    },
                };
                stack.last_mut().expect("root").text.push_str(&ch);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if stack.len() != 1 {
        return Err(bad(src.len(), "XML ends inside an element".into()));
    }
    Ok(stack.pop().expect("root"))
}

struct Reader<'a> {
    problems: Vec<Problem>,
    _input: &'a str,
}

impl Reader<'_> {
    fn problem(&mut self, place: Place, message: impl Into<String>, hint: impl Into<String>) {
        self.problems.push(Problem {
            place: Some(place),
            message: message.into(),
            hint: Some(hint.into()),
        });
    }

    /// Children in the ADL or NorduGrid namespace; anything else is refused,
    /// since ARC ignores unknown elements silently.
    fn children<'n>(&mut self, node: &'n Node, path: &str, known: &[&str]) -> Vec<&'n Node> {
        let mut out = Vec::new();
        for c in &node.children {
            let qualified = if c.ns == NS_NORDUGRID {
                format!("nordugrid-adl:{}", c.name)
            } else {
                c.name.clone()
            };
            if (c.ns == NS_ADL || c.ns == NS_NORDUGRID) && known.contains(&qualified.as_str()) {
                out.push(c);
            } else {
                let p = format!("{path}/{qualified}");
                let why = match (c.ns.as_str(), c.name.as_str()) {
                    (NS_ADL, "Coprocessor") => ("ADL Coprocessor is rejected by A-REX (\"Coprocessor is not supported yet\")".to_string(), "GPUs go by queue and site runtime environment: use `gridship jobdesc --site SITE --queue GPUQUEUE`".to_string()),
                    (NS_ADL, "PreExecutable" | "PostExecutable") => (format!("ADL {} is rejected by A-REX", c.name), "run it from your executable instead".to_string()),
                    (ns, _) if ns != NS_ADL && ns != NS_NORDUGRID => (format!("element {p} is not in the ADL namespace ({NS_ADL})"), "ARC would ignore it: put it in the ADL namespace or remove it".to_string()),
                    _ => (format!("element {p} is not read by gridship; ARC ignores unknown elements silently"), format!("known here: {}", known.join(", "))),
                };
                self.problem(c.path_place(&p), why.0, why.1);
            }
        }
        out
    }

    fn uint(&mut self, n: &Node, path: &str, what: &str) -> Option<u64> {
        let t = n.text.trim();
        match t.parse::<u64>() {
            Ok(v) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => Some(v),
            _ => {
                self.problem(
                    n.path_place(path),
                    format!("{path} \"{}\" is not {what}", n.text),
                    format!("write a whole number of {what}"),
                );
                None
            }
        }
    }

    fn once<'n>(&mut self, nodes: &[&'n Node], name: &str, path: &str) -> Option<&'n Node> {
        let mut found = nodes.iter().filter(|n| qname(n) == name);
        let first = found.next().copied();
        if let Some(second) = found.next() {
            self.problem(
                second.path_place(&format!("{path}/{name}")),
                format!("{path}/{name} is given twice"),
                "keep one",
            );
        }
        first
    }
}

fn qname(n: &Node) -> String {
    if n.ns == NS_NORDUGRID {
        format!("nordugrid-adl:{}", n.name)
    } else {
        n.name.clone()
    }
}

/// Read ADL (one `ActivityDescription` or several in `ActivityDescriptions`)
/// strictly: unknown elements, bad numbers and what A-REX rejects are errors.
pub fn read(input: &str, src: &str) -> Result<Vec<JobSpec>, Problems> {
    let root = parse_tree(input, src)?;
    let mut r = Reader {
        problems: Vec::new(),
        _input: input,
    };
    let top: Vec<&Node> = root.children.iter().collect();
    let mut acts = Vec::new();
    match top.as_slice() {
        [one] if one.ns == NS_ADL && one.name == "ActivityDescription" => acts.push(*one),
        [one] if one.ns == NS_ADL && one.name == "ActivityDescriptions" => {
            acts.extend(r.children(one, "ActivityDescriptions", &["ActivityDescription"]));
        }
        [one] => r.problem(
            one.path_place(&one.name),
            format!(
                "root element is {{{}}}{}; ARC needs {{{NS_ADL}}}ActivityDescription",
                one.ns, one.name
            ),
            "use the ADL namespace on the root element",
        ),
        _ => r.problem(
            Place::Element("document".into()),
            "ADL must have exactly one root element",
            "wrap several jobs in ActivityDescriptions",
        ),
    }
    let mut jobs = Vec::new();
    for a in acts {
        jobs.push(read_activity(&mut r, a));
    }
    if r.problems.is_empty() {
        Ok(jobs)
    } else {
        Err(Problems::new(input, r.problems))
    }
}

fn read_activity(r: &mut Reader<'_>, a: &Node) -> JobSpec {
    let mut j = JobSpec::default();
    let kids = r.children(
        a,
        "ActivityDescription",
        &[
            "ActivityIdentification",
            "Application",
            "Resources",
            "DataStaging",
        ],
    );
    if let Some(id) = r.once(&kids, "ActivityIdentification", "ActivityDescription") {
        let k = r.children(id, "ActivityIdentification", &["Name"]);
        j.job_name = r
            .once(&k, "Name", "ActivityIdentification")
            .map(|n| n.text.clone());
    }
    match r.once(&kids, "Application", "ActivityDescription") {
        Some(app) => read_application(r, app, &mut j),
        None => r.problem(
            a.path_place("ActivityDescription"),
            "no Application/Executable; A-REX rejects a job without one",
            "add <Application><Executable><Path>run.sh</Path></Executable></Application>",
        ),
    }
    if let Some(res) = r.once(&kids, "Resources", "ActivityDescription") {
        read_resources(r, res, &mut j);
    }
    if let Some(ds) = r.once(&kids, "DataStaging", "ActivityDescription") {
        read_staging(r, ds, &mut j);
    }
    j
}

fn read_application(r: &mut Reader<'_>, app: &Node, j: &mut JobSpec) {
    let p = "Application";
    let k = r.children(
        app,
        p,
        &[
            "Executable",
            "Input",
            "Output",
            "Error",
            "Environment",
            "Notification",
            "nordugrid-adl:Rerun",
            "nordugrid-adl:Priority",
            "nordugrid-adl:LoggingDirectory",
        ],
    );
    match r.once(&k, "Executable", p) {
        Some(e) => {
            let ek = r.children(e, "Application/Executable", &["Path", "Argument"]);
            match r.once(&ek, "Path", "Application/Executable") {
                Some(path) => j.executable = path.text.clone(),
                None => r.problem(
                    e.path_place("Application/Executable"),
                    "Executable without Path",
                    "add <Path>",
                ),
            }
            j.arguments = ek
                .iter()
                .filter(|n| n.name == "Argument")
                .map(|n| n.text.clone())
                .collect();
        }
        None => r.problem(
            app.path_place(p),
            "no Application/Executable",
            "add <Executable><Path>run.sh</Path></Executable>",
        ),
    }
    j.stdin = r.once(&k, "Input", p).map(|n| n.text.clone());
    j.stdout = r.once(&k, "Output", p).map(|n| n.text.clone());
    j.stderr = r.once(&k, "Error", p).map(|n| n.text.clone());
    j.gmlog = r
        .once(&k, "nordugrid-adl:LoggingDirectory", p)
        .map(|n| n.text.clone());
    if let Some(n) = r.once(&k, "nordugrid-adl:Rerun", p) {
        j.rerun = r
            .uint(n, "Application/nordugrid-adl:Rerun", "reruns")
            .and_then(|v| u32::try_from(v).ok());
    }
    if let Some(n) = r.once(&k, "nordugrid-adl:Priority", p) {
        match r.uint(n, "Application/nordugrid-adl:Priority", "priority 0..100") {
            Some(v) if v <= 100 => j.priority = Some(v as u8),
            Some(_) => r.problem(
                n.path_place("Application/nordugrid-adl:Priority"),
                "priority above 100; ARC clamps it silently",
                "use 0..100",
            ),
            None => {}
        }
    }
    for e in k.iter().filter(|n| n.name == "Environment") {
        let ek = r.children(e, "Application/Environment", &["Name", "Value"]);
        let name = r
            .once(&ek, "Name", "Application/Environment")
            .map(|n| n.text.clone());
        let value = r
            .once(&ek, "Value", "Application/Environment")
            .map(|n| n.text.clone());
        match (name, value) {
            (Some(name), Some(value)) => j.environment.push(EnvVar { name, value }),
            _ => r.problem(
                e.path_place("Application/Environment"),
                "Environment needs Name and Value",
                "add both",
            ),
        }
    }
    for n in k.iter().filter(|n| n.name == "Notification") {
        let nk = r.children(
            n,
            "Application/Notification",
            &["Protocol", "Recipient", "OnState"],
        );
        if r.once(&nk, "Protocol", "Application/Notification")
            .map(|p| p.text.trim().to_string())
            != Some("email".into())
        {
            r.problem(
                n.path_place("Application/Notification"),
                "Notification must have Protocol email (ARC rejects others)",
                "write <Protocol>email</Protocol>",
            );
            continue;
        }
        let mut states = Vec::new();
        for s in nk.iter().filter(|c| c.name == "OnState") {
            match NotifyState::from_adl_state(s.text.trim()) {
                Some(st) if !states.contains(&st) => states.push(st),
                Some(_) => {}
                None => r.problem(
                    s.path_place("Application/Notification/OnState"),
                    format!("OnState \"{}\" is not one ARC maps", s.text),
                    "use PREPROCESSING, PROCESSING, POSTPROCESSING or TERMINAL",
                ),
            }
        }
        for rcp in nk.iter().filter(|c| c.name == "Recipient") {
            j.notify.push(Notify {
                email: rcp.text.clone(),
                states: states.clone(),
            });
        }
    }
}

fn read_resources(r: &mut Reader<'_>, res: &Node, j: &mut JobSpec) {
    let p = "Resources";
    let k = r.children(
        res,
        p,
        &[
            "RuntimeEnvironment",
            "IndividualPhysicalMemory",
            "DiskSpaceRequirement",
            "SlotRequirement",
            "QueueName",
            "TotalCPUTime",
            "WallTime",
        ],
    );
    for rte in k.iter().filter(|n| n.name == "RuntimeEnvironment") {
        let rk = r.children(
            rte,
            "Resources/RuntimeEnvironment",
            &["Name", "Version", "Option"],
        );
        let Some(name) = r.once(&rk, "Name", "Resources/RuntimeEnvironment") else {
            r.problem(
                rte.path_place("Resources/RuntimeEnvironment"),
                "RuntimeEnvironment without Name",
                "add <Name>",
            );
            continue;
        };
        let mut full = name.text.clone();
        if let Some(v) = r.once(&rk, "Version", "Resources/RuntimeEnvironment")
            && !v.text.is_empty()
        {
            full = format!("{full}-{}", v.text);
        }
        let options = rk
            .iter()
            .filter(|n| n.name == "Option")
            .map(|n| n.text.clone())
            .collect();
        j.runtime_environments.push(RuntimeEnv {
            name: full,
            options,
        });
    }
    let bytes_to_mb = |r: &mut Reader<'_>, n: &Node, path: &str| -> Option<u64> {
        let b = r.uint(n, path, "bytes")?;
        if b % MB != 0 {
            r.problem(
                n.path_place(path),
                format!("{path} {b} is not a whole number of MB; ARC rounds it up"),
                format!("write {}", b.div_ceil(MB) * MB),
            );
            return None;
        }
        Some(b / MB)
    };
    if let Some(n) = r.once(&k, "IndividualPhysicalMemory", p) {
        j.memory_mb = bytes_to_mb(r, n, "Resources/IndividualPhysicalMemory");
    }
    if let Some(n) = r.once(&k, "DiskSpaceRequirement", p) {
        j.disk_mb = bytes_to_mb(r, n, "Resources/DiskSpaceRequirement");
    }
    if let Some(s) = r.once(&k, "SlotRequirement", p) {
        let sk = r.children(
            s,
            "Resources/SlotRequirement",
            &["NumberOfSlots", "SlotsPerHost", "ExclusiveExecution"],
        );
        let u32_of = |r: &mut Reader<'_>, n: &Node, path: &str| {
            r.uint(n, path, "slots").and_then(|v| u32::try_from(v).ok())
        };
        match r.once(&sk, "NumberOfSlots", "Resources/SlotRequirement") {
            Some(n) => j.count = u32_of(r, n, "Resources/SlotRequirement/NumberOfSlots"),
            None => r.problem(
                s.path_place("Resources/SlotRequirement"),
                "SlotRequirement without NumberOfSlots; ARC rejects it",
                "add <NumberOfSlots>",
            ),
        }
        if let Some(n) = r.once(&sk, "SlotsPerHost", "Resources/SlotRequirement") {
            j.count_per_node = u32_of(r, n, "Resources/SlotRequirement/SlotsPerHost");
        }
        if let Some(n) = r.once(&sk, "ExclusiveExecution", "Resources/SlotRequirement") {
            match n.text.trim() {
                "true" => j.exclusive = Some(true),
                "false" => j.exclusive = Some(false),
                t => r.problem(
                    n.path_place("Resources/SlotRequirement/ExclusiveExecution"),
                    format!("ExclusiveExecution \"{t}\" is not true or false"),
                    "write true or false",
                ),
            }
        }
    }
    j.queue = r.once(&k, "QueueName", p).map(|n| n.text.clone());
    if let Some(n) = r.once(&k, "TotalCPUTime", p) {
        j.cputime_s = r.uint(n, "Resources/TotalCPUTime", "seconds");
    }
    if let Some(n) = r.once(&k, "WallTime", p) {
        j.walltime_s = r.uint(n, "Resources/WallTime", "seconds");
    }
}

fn read_staging(r: &mut Reader<'_>, ds: &Node, j: &mut JobSpec) {
    let p = "DataStaging";
    let k = r.children(ds, p, &["InputFile", "OutputFile"]);
    for f in k.iter().filter(|n| n.name == "InputFile") {
        let fk = r.children(
            f,
            "DataStaging/InputFile",
            &["Name", "Source", "IsExecutable"],
        );
        let name = r
            .once(&fk, "Name", "DataStaging/InputFile")
            .map(|n| n.text.clone())
            .unwrap_or_default();
        let source = r
            .once(&fk, "Source", "DataStaging/InputFile")
            .and_then(|s| {
                let sk = r.children(s, "DataStaging/InputFile/Source", &["URI"]);
                r.once(&sk, "URI", "DataStaging/InputFile/Source")
                    .map(|u| u.text.clone())
            });
        let executable = match r.once(&fk, "IsExecutable", "DataStaging/InputFile") {
            Some(n) => n.text.trim() == "true",
            None => false,
        };
        j.input_files.push(InputFile {
            name,
            source,
            executable,
        });
    }
    for f in k.iter().filter(|n| n.name == "OutputFile") {
        let fk = r.children(f, "DataStaging/OutputFile", &["Name", "Target"]);
        let name = r
            .once(&fk, "Name", "DataStaging/OutputFile")
            .map(|n| n.text.clone())
            .unwrap_or_default();
        let target = r
            .once(&fk, "Target", "DataStaging/OutputFile")
            .and_then(|t| {
                let tk = r.children(t, "DataStaging/OutputFile/Target", &["URI"]);
                r.once(&tk, "URI", "DataStaging/OutputFile/Target")
                    .map(|u| u.text.clone())
            });
        j.output_files.push(OutputFile { name, target });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_hostile_text() {
        let j = JobSpec {
            executable: "/bin/echo".into(),
            arguments: vec!["<&>\"'".into(), "a\r\nb".into(), "  ".into(), String::new()],
            memory_mb: Some(4000),
            count: Some(8),
            count_per_node: Some(4),
            exclusive: Some(true),
            queue: Some("gpu".into()),
            runtime_environments: vec![RuntimeEnv {
                name: "APPS/X-1.2".into(),
                options: vec!["o".into()],
            }],
            ..JobSpec::default()
        };
        let x = write_job(&j);
        assert!(x.contains("<IndividualPhysicalMemory>4194304000</IndividualPhysicalMemory>"));
        assert!(x.contains("a&#13;\nb"));
        let back = read("t.adl", &x).unwrap();
        assert_eq!(back, vec![j]);
    }

    #[test]
    fn coprocessor_and_unknown_are_refused() {
        let x = format!(
            "<ActivityDescription xmlns=\"{NS_ADL}\"><Application><Executable><Path>a</Path></Executable></Application><Resources><Coprocessor>CUDA</Coprocessor><Gpus>1</Gpus></Resources></ActivityDescription>"
        );
        let e = read("t.adl", &x).unwrap_err().to_string();
        assert!(e.contains("Coprocessor is not supported yet"), "{e}");
        assert!(e.contains("Resources/Gpus"), "{e}");
    }
}
