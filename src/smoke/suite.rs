//! Smoke-test suites: YAML files of named checks.
//!
//! ```yaml
//! name: gpu-basic
//! description: free text
//! checks:
//!   - name: no-driver-libs          # static: a name from the registry (statics::REGISTRY)
//!     kind: static
//!   - name: gpu-visible
//!     kind: run
//!     command: [nvidia-smi, -L]     # an argv list, or one string run by /bin/sh -c
//!     expect: {exit: 0, stdout_regex: "^GPU 0: "}
//!     timeout_s: 30
//!     needs_gpu: true
//! ```
//!
//! Suites are found by name in the smoke-suites directory
//! (`$GRIDSHIP_SMOKE_SUITES`, else ./smoke-suites): `NAME.yaml`; a recipe
//! names its own with `smoke_suite:` in recipe.yaml. A value with a `/` or
//! ending in `.yaml`/`.yml` is a file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub checks: Vec<Check>,
    /// Where it was read from (filled in on load).
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// Reads the image (merged index) only: no GPU, no unpacking.
    Static,
    /// Runs a command inside the image with a backend.
    Run,
}

impl CheckKind {
    pub fn name(self) -> &'static str {
        match self {
            CheckKind::Static => "static",
            CheckKind::Run => "run",
        }
    }
}

/// A command: an argv list, or one string for `/bin/sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CommandSpec {
    Argv(Vec<String>),
    Shell(String),
}

impl CommandSpec {
    pub fn argv(&self) -> Vec<String> {
        match self {
            CommandSpec::Argv(v) => v.clone(),
            CommandSpec::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
        }
    }
}

/// What passing means for a run check.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Exit status (default 0).
    #[serde(default)]
    pub exit: i32,
    /// Text stdout must contain.
    #[serde(default)]
    pub stdout_contains: Option<String>,
    /// A regular expression (Rust `regex` syntax, multi-line mode) stdout must match.
    #[serde(default)]
    pub stdout_regex: Option<String>,
    /// stdout is `nvidia-smi` output: its "CUDA Version" (what the driver
    /// supports) must be at least the image's CUDA runtime version.
    #[serde(default)]
    pub nvidia_smi_cuda_covers_image: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub name: String,
    pub kind: CheckKind,
    #[serde(default)]
    pub description: Option<String>,
    /// Run checks only.
    #[serde(default)]
    pub command: Option<CommandSpec>,
    #[serde(default)]
    pub expect: Expect,
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    /// Without a visible GPU this check fails ("no GPU visible"), or is
    /// skipped with --allow-no-gpu.
    #[serde(default)]
    pub needs_gpu: bool,
}

fn default_timeout() -> u64 {
    60
}

/// Directory of shipped suites: `$GRIDSHIP_SMOKE_SUITES`, else ./smoke-suites.
pub fn default_suites_dir() -> PathBuf {
    std::env::var_os("GRIDSHIP_SMOKE_SUITES")
        .map_or_else(|| PathBuf::from("smoke-suites"), PathBuf::from)
}

fn bad(path: &Path, place: impl Into<String>, reason: impl Into<String>, hint: &str) -> Error {
    Error::BadInput {
        input: path.display().to_string(),
        place: place.into(),
        reason: reason.into(),
        hint: Some(hint.into()),
    }
}

const HINT: &str = "a suite has name, description, checks: [{name, kind: static|run, command, expect: {exit, stdout_contains, stdout_regex}, timeout_s, needs_gpu}] (see smoke-suites/README.md)";

impl Suite {
    /// Find a suite: a file (a value with `/` or a .yaml/.yml ending), else
    /// `DIR/NAME.yaml`.
    pub fn find(name_or_file: &str, dir: &Path) -> Result<Suite> {
        let is_file = name_or_file.contains('/')
            || name_or_file.ends_with(".yaml")
            || name_or_file.ends_with(".yml");
        let path = if is_file {
            PathBuf::from(name_or_file)
        } else {
            dir.join(format!("{name_or_file}.yaml"))
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let known = list_suites(dir);
                return Err(bad(
                    &path,
                    "",
                    format!("no smoke-test suite '{name_or_file}'"),
                    &if known.is_empty() {
                        format!(
                            "give a suite file, or point GRIDSHIP_SMOKE_SUITES at the smoke-suites directory (looked in {})",
                            dir.display()
                        )
                    } else {
                        format!("suites in {}: {}", dir.display(), known.join(", "))
                    },
                ));
            }
            Err(e) => return Err(Error::io_path(&path, "reading smoke-test suite", e)),
        };
        Suite::parse(&path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Suite> {
        let mut s: Suite =
            serde_saphyr::from_str(text).map_err(|e| bad(path, "", format!("{e}"), HINT))?;
        s.path = path.to_path_buf();
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<()> {
        let path = &self.path;
        if self.checks.is_empty() {
            return Err(bad(path, "checks: ", "no checks", HINT));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, c) in self.checks.iter().enumerate() {
            let place = format!("checks[{i}] ({}): ", c.name);
            if c.name.trim().is_empty() || !seen.insert(c.name.as_str()) {
                return Err(bad(
                    path,
                    format!("checks[{i}].name: "),
                    format!("'{}' is empty or used twice", c.name),
                    "give every check its own name",
                ));
            }
            match c.kind {
                CheckKind::Static => {
                    if super::statics::lookup(&c.name).is_none() {
                        return Err(bad(
                            path,
                            format!("{place}name: "),
                            format!("no static check named '{}'", c.name),
                            &format!(
                                "static checks: {}",
                                super::statics::REGISTRY
                                    .iter()
                                    .map(|s| s.name)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ));
                    }
                    if c.command.is_some() {
                        return Err(bad(
                            path,
                            format!("{place}command: "),
                            "a static check runs no command",
                            "remove command, or use kind: run",
                        ));
                    }
                }
                CheckKind::Run => {
                    match &c.command {
                        None => {
                            return Err(bad(
                                path,
                                format!("{place}command: "),
                                "a run check needs a command",
                                "command: [prog, arg, ...] or command: \"shell text\"",
                            ));
                        }
                        Some(cmd) if cmd.argv().first().is_none_or(|a| a.is_empty()) => {
                            return Err(bad(
                                path,
                                format!("{place}command: "),
                                "empty command",
                                "command: [prog, arg, ...] or command: \"shell text\"",
                            ));
                        }
                        Some(_) => {}
                    }
                    if let Some(re) = &c.expect.stdout_regex
                        && let Err(e) = regex::Regex::new(re)
                    {
                        return Err(bad(
                            path,
                            format!("{place}expect.stdout_regex: "),
                            format!("{e}"),
                            "write a Rust regex",
                        ));
                    }
                    if c.timeout_s == 0 {
                        return Err(bad(
                            path,
                            format!("{place}timeout_s: "),
                            "must be positive",
                            "seconds, e.g. timeout_s: 60",
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Suite names (files NAME.yaml) in `dir`.
pub fn list_suites(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .into_string()
                .ok()?
                .strip_suffix(".yaml")
                .map(String::from)
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
name: t
description: test
checks:
  - name: no-driver-libs
    kind: static
  - name: gpu-visible
    kind: run
    command: [nvidia-smi, -L]
    expect: {exit: 0, stdout_regex: "^GPU 0: "}
    timeout_s: 30
    needs_gpu: true
  - name: shell
    kind: run
    command: "echo hi"
    expect: {stdout_contains: hi}
"#;

    fn err(text: &str) -> String {
        Suite::parse(Path::new("suite.yaml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn smoke_suite_parses() {
        let s = Suite::parse(Path::new("suite.yaml"), OK).unwrap();
        assert_eq!(s.checks.len(), 3);
        assert_eq!(
            s.checks[1].command.as_ref().unwrap().argv(),
            ["nvidia-smi", "-L"]
        );
        assert_eq!(
            s.checks[2].command.as_ref().unwrap().argv()[..2],
            ["/bin/sh", "-c"]
        );
        assert_eq!((s.checks[2].timeout_s, s.checks[2].expect.exit), (60, 0));
        assert!(s.checks[1].needs_gpu && !s.checks[2].needs_gpu);
    }

    #[test]
    fn smoke_suite_errors_name_file_and_key() {
        let e = err(&OK.replace("timeout_s: 30", "timeout: 30"));
        assert!(e.contains("suite.yaml") && e.contains("timeout"), "{e}");
        let e = err(&OK.replace("stdout_contains: hi", "stdout_contain: hi"));
        assert!(e.contains("stdout_contain"), "{e}");
        let e = err(&OK.replace("name: no-driver-libs", "name: no-such-static"));
        assert!(
            e.contains("checks[0]") && e.contains("no-such-static"),
            "{e}"
        );
        let e = err(&OK.replace("    command: \"echo hi\"\n", ""));
        assert!(e.contains("checks[2] (shell): command"), "{e}");
        let e = err(&OK.replace("\"^GPU 0: \"", "\"(\""));
        assert!(e.contains("stdout_regex"), "{e}");
        let e = err(&OK.replace("kind: static", "kind: statik"));
        assert!(e.contains("suite.yaml"), "{e}");
    }

    #[test]
    fn smoke_suite_found_by_name_or_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("mine.yaml"), OK).unwrap();
        assert_eq!(Suite::find("mine", d.path()).unwrap().name, "t");
        let f = d.path().join("mine.yaml");
        assert_eq!(
            Suite::find(f.to_str().unwrap(), Path::new("/nonexistent"))
                .unwrap()
                .name,
            "t"
        );
        let e = Suite::find("other", d.path()).unwrap_err().to_string();
        assert!(
            e.contains("no smoke-test suite 'other'") && e.contains("mine"),
            "{e}"
        );
    }
}
