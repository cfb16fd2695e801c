//! Checks on a [`JobSpec`] before anything is written or sent: what ARC would
//! misread, what A-REX would reject, and what one of xRSL/ADL cannot carry.

use std::collections::HashSet;

use super::model::{Field, JobSpec};

/// One problem: the field, what is wrong, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub field: Field,
    pub message: String,
    pub hint: String,
}

fn issue(out: &mut Vec<Issue>, field: Field, message: impl Into<String>, hint: impl Into<String>) {
    out.push(Issue {
        field,
        message: message.into(),
        hint: hint.into(),
    });
}

/// `file:///ABS/PATH`: a local file the client uploads at submission, as
/// ARC's own clients do with such sources.
pub fn local_file_source(s: &str) -> Option<&str> {
    s.strip_prefix("file://")
        .filter(|p| p.starts_with('/') && p.len() > 1 && !p.chars().any(char::is_whitespace))
}

/// Characters XML 1.0 cannot carry (so ADL cannot), even escaped.
fn bad_char(s: &str) -> Option<char> {
    s.chars().find(|&c| {
        matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}')
    })
}

/// `scheme://rest` with a scheme ARC can stage from (not `file`).
pub fn is_remote_url(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    let mut sc = scheme.chars();
    sc.next().is_some_and(|c| c.is_ascii_alphabetic())
        && sc.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !scheme.eq_ignore_ascii_case("file")
        && !rest.is_empty()
        && !s.chars().any(char::is_whitespace)
}

fn check_rel_name(out: &mut Vec<Issue>, field: Field, what: &str, name: &str) {
    if name.is_empty() {
        issue(
            out,
            field,
            format!("{what} has an empty name"),
            "give the file a name",
        );
    } else if name.starts_with('/') {
        issue(
            out,
            field,
            format!(
                "{what} '{name}' is an absolute path; it must be relative to the job's session directory"
            ),
            "drop the leading /",
        );
    } else if name.split('/').any(|c| c == "..") {
        issue(
            out,
            field,
            format!("{what} '{name}' leaves the session directory with '..'"),
            "use a name inside the session directory",
        );
    }
}

/// All problems with `j`; empty when it can be written and submitted.
pub fn check(j: &JobSpec) -> Vec<Issue> {
    let mut out = Vec::new();
    let o = &mut out;

    // Text every format must carry.
    let mut texts: Vec<(Field, &str)> = vec![(Field::Executable, &j.executable)];
    texts.extend(j.arguments.iter().map(|a| (Field::Arguments, a.as_str())));
    for (f, v) in [
        (Field::Stdin, &j.stdin),
        (Field::Stdout, &j.stdout),
        (Field::Stderr, &j.stderr),
        (Field::JobName, &j.job_name),
        (Field::Queue, &j.queue),
        (Field::Gmlog, &j.gmlog),
    ] {
        if let Some(v) = v {
            texts.push((f, v));
        }
    }
    for e in &j.environment {
        texts.push((Field::Environment, &e.name));
        texts.push((Field::Environment, &e.value));
    }
    for r in &j.runtime_environments {
        texts.extend(
            r.options
                .iter()
                .map(|o| (Field::RuntimeEnvironment, o.as_str())),
        );
    }
    for f in &j.input_files {
        texts.push((Field::InputFiles, &f.name));
    }
    for f in &j.output_files {
        texts.push((Field::OutputFiles, &f.name));
    }
    for (field, t) in texts {
        if let Some(c) = bad_char(t) {
            issue(
                o,
                field,
                format!(
                    "{} contains the control character U+{:04X}, which ADL (XML) cannot carry",
                    field.xrsl(),
                    c as u32
                ),
                "remove it",
            );
        }
    }

    if j.executable.is_empty() {
        issue(
            o,
            Field::Executable,
            "executable is empty",
            "set executable to a path in the image or a staged file",
        );
    } else if !j.executable.starts_with('/')
        && !j.input_files.iter().any(|f| f.name == j.executable)
    {
        issue(
            o,
            Field::Executable,
            format!(
                "executable '{}' is relative but is not an input file; A-REX looks for it in the session directory",
                j.executable
            ),
            format!(
                "add (inputfiles=(\"{}\" \"\")) to upload it, or give an absolute path such as /usr/bin/env",
                j.executable
            ),
        );
    }

    if j.job_name.as_deref() == Some("") {
        issue(
            o,
            Field::JobName,
            "jobname is empty; ARC reads an empty name as no name",
            "drop jobname or give a name",
        );
    }
    for (f, what, v) in [
        (Field::Stdin, "stdin", &j.stdin),
        (Field::Stdout, "stdout", &j.stdout),
        (Field::Stderr, "stderr", &j.stderr),
        (Field::Gmlog, "gmlog", &j.gmlog),
    ] {
        if let Some(v) = v {
            check_rel_name(o, f, what, v);
        }
    }

    let mut seen = HashSet::new();
    for f in &j.input_files {
        check_rel_name(o, Field::InputFiles, "input file", &f.name);
        if !seen.insert(f.name.as_str()) {
            issue(
                o,
                Field::InputFiles,
                format!("input file '{}' is listed twice", f.name),
                "keep one entry",
            );
        }
        if f.executable && f.name.contains("(*") {
            issue(
                o,
                Field::Executables,
                format!(
                    "executable input file '{}' contains '(*'; ARC re-reads the executables list as xRSL and loses the flag",
                    f.name
                ),
                "rename the file",
            );
        }
        if f.source.is_none() && f.name.contains(':') {
            issue(
                o,
                Field::InputFiles,
                format!(
                    "input file '{}' has a ':'; ARC turns the name of a file to upload into a URL and would read '{}' as its scheme",
                    f.name,
                    f.name.split(':').next().unwrap_or("")
                ),
                "rename the file without ':'",
            );
        }
        if let Some(s) = &f.source
            && !is_remote_url(s)
            && local_file_source(s).is_none()
        {
            issue(
                o,
                Field::InputFiles,
                format!(
                    "source of input file '{}' is \"{s}\", not a URL the CE can fetch",
                    f.name
                ),
                "give scheme://host/path (https, root, davs, ...), file:///ABS/PATH to upload a local file, or \"\" to upload the file of that name beside the description",
            );
        }
    }
    let mut seen = HashSet::new();
    for f in &j.output_files {
        check_rel_name(o, Field::OutputFiles, "output file", &f.name);
        if !seen.insert(f.name.as_str()) {
            issue(
                o,
                Field::OutputFiles,
                format!("output file '{}' is listed twice", f.name),
                "keep one entry",
            );
        }
        if let Some(t) = &f.target
            && !is_remote_url(t)
        {
            issue(
                o,
                Field::OutputFiles,
                format!(
                    "target of output file '{}' is \"{t}\", not a URL the CE can write to",
                    f.name
                ),
                "give scheme://host/path, or \"\" to keep it for retrieval",
            );
        }
    }

    for e in &j.environment {
        let ok = e
            .name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && e.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            issue(
                o,
                Field::Environment,
                format!("environment name '{}' is not a shell variable name", e.name),
                "use letters, digits and _ (not first a digit)",
            );
        }
    }

    for (f, v, what) in [
        (Field::Walltime, j.walltime_s, "walltime"),
        (Field::Cputime, j.cputime_s, "cputime"),
    ] {
        if v == Some(0) {
            issue(o, f, format!("{what} is 0"), "give a positive duration");
        }
    }
    for (f, v, what) in [
        (Field::Memory, j.memory_mb, "memory"),
        (Field::Disk, j.disk_mb, "disk"),
    ] {
        if v == Some(0) {
            issue(
                o,
                f,
                format!("{what} is 0 MB"),
                "give a positive number of MB",
            );
        }
    }
    if j.count == Some(0) {
        issue(
            o,
            Field::Count,
            "count is 0",
            "count is the number of cores, at least 1",
        );
    }
    match (j.count, j.count_per_node) {
        (None, Some(_)) => issue(
            o,
            Field::CountPerNode,
            "countpernode is set without count; ARC rejects it",
            "add (count=N) with N a multiple of countpernode",
        ),
        (Some(c), Some(p)) if p == 0 || c % p != 0 => issue(
            o,
            Field::CountPerNode,
            format!("countpernode {p} does not divide count {c}; A-REX rejects the job"),
            "make count a multiple of countpernode",
        ),
        _ => {}
    }
    if j.exclusive.is_some() && j.count_per_node.is_none() {
        issue(
            o,
            Field::Exclusive,
            "exclusiveexecution without countpernode: ARC's ADL reader drops it",
            "add (countpernode=N) or remove exclusiveexecution",
        );
    }
    if j.priority.is_some_and(|p| p > 100) {
        issue(o, Field::Priority, "priority above 100", "use 0..100");
    }
    if let Some(q) = &j.queue
        && (q.is_empty() || q.chars().any(char::is_whitespace))
    {
        issue(
            o,
            Field::Queue,
            format!("queue '{q}' is empty or contains spaces"),
            "name a queue of the CE",
        );
    }
    for r in &j.runtime_environments {
        let ok = !r.name.is_empty()
            && !r.name.starts_with('/')
            && r.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '+' | '-'));
        if !ok {
            issue(
                o,
                Field::RuntimeEnvironment,
                format!("runtime environment name '{}' is not an RTE path", r.name),
                "RTE names look like ENV/SINGULARITY or APPS/HEP/ATLAS-23.0",
            );
        }
    }
    for n in &j.notify {
        if !n.email.contains('@') || n.email.chars().any(char::is_whitespace) || n.email.is_empty()
        {
            issue(
                o,
                Field::Notify,
                format!("notify address '{}' is not an e-mail address", n.email),
                "write user@example.org",
            );
        }
        if n.states.is_empty() {
            issue(
                o,
                Field::Notify,
                format!("notify for '{}' has no states", n.email),
                "give at least one of b, q, f, e",
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobdesc::model::InputFile;

    fn base() -> JobSpec {
        JobSpec {
            executable: "/bin/true".into(),
            ..JobSpec::default()
        }
    }

    #[test]
    fn ok_and_bad() {
        assert!(check(&base()).is_empty());
        let mut j = base();
        j.count_per_node = Some(4);
        assert_eq!(check(&j)[0].field, Field::CountPerNode);
        j.count = Some(6);
        assert!(check(&j)[0].message.contains("does not divide"));
        let mut j = base();
        j.executable = "run.sh".into();
        assert_eq!(check(&j)[0].field, Field::Executable);
        j.input_files.push(InputFile {
            name: "run.sh".into(),
            source: None,
            executable: true,
        });
        assert!(check(&j).is_empty());
        j.input_files.push(InputFile {
            name: "d".into(),
            source: Some("/tmp/x".into()),
            executable: false,
        });
        assert_eq!(check(&j)[0].field, Field::InputFiles);
        j.input_files[1].source = Some("file:///tmp/x".into());
        assert!(check(&j).is_empty());
    }

    #[test]
    fn urls() {
        assert!(is_remote_url("https://h/p"));
        assert!(is_remote_url("root://eos.cern.ch//eos/x"));
        assert!(!is_remote_url("file:///x"));
        assert!(!is_remote_url("x"));
        assert!(!is_remote_url("https://h/a b"));
    }
}
