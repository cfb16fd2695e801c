//! Smoke-test suites: YAML files of named checks.
//!
//! ```yaml
//! name: gpu-basic
//! description: free text
//! include: [other-suite]            # optional: suites whose checks come first
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
//! Suites are found by name (`NAME.yaml`) on the suites search path
//! (`--suites`, `$GRIDSHIP_SMOKE_SUITES`, `~/.config/gridship/smoke-suites`,
//! `/etc/gridship/smoke-suites`, built-in; see config::search). A value
//! with a `/` or ending in `.yaml`/`.yml` is a file.
//!
//! `include:` lists suites whose checks run first, in order, then the
//! suite's own: a name is looked up on the search path, a file
//! is relative to the including suite. Includes nest; a cycle, an unknown
//! include or a check name used twice across them is an error naming the
//! file and the key.
//!
//! A recipe names its suite with `smoke_suite:` in recipe.yaml: a name in
//! the smoke-suites directory (`gpu-basic`), or a file of the recipe
//! directory (`smoke.yaml`), which may include shipped suites by name.
//! [`for_recipe`] loads it; [`for_image`] picks the suite for an image
//! from its `gridship.recipe` label (set by `gridship build`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::search::{Kind, SearchPath};
use crate::image::Image;
use crate::recipe::Recipe;
use crate::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Suites whose checks come before this one's (names in the
    /// smoke-suites directory, or files relative to this suite).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// After loading: the included suites' checks, then this suite's own.
    #[serde(default)]
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
    /// The suite file that defines it (filled in on load).
    #[serde(skip)]
    pub from: PathBuf,
}

fn default_timeout() -> u64 {
    60
}

fn bad(path: &Path, place: impl Into<String>, reason: impl Into<String>, hint: &str) -> Error {
    Error::BadInput {
        input: path.display().to_string(),
        place: place.into(),
        reason: reason.into(),
        hint: Some(hint.into()),
    }
}

const HINT: &str = "a suite has name, description, include: [SUITE, ...], checks: [{name, kind: static|run, command, expect: {exit, stdout_contains, stdout_regex}, timeout_s, needs_gpu}] (see smoke-suites/README.md)";

/// A suite value that names a file rather than a suite of the directory.
fn names_file(v: &str) -> bool {
    v.contains('/') || v.ends_with(".yaml") || v.ends_with(".yml")
}

impl Suite {
    /// Find a suite: a file (a value with `/` or a .yaml/.yml ending), else
    /// a name on the suites search path. Includes by name are looked up
    /// there too.
    pub fn find(name_or_file: &str, search: &SearchPath) -> Result<Suite> {
        if names_file(name_or_file) {
            return Suite::load(Path::new(name_or_file), search);
        }
        let found = search.require(name_or_file, &format!("--suite {name_or_file}"))?;
        Suite::parse_in(&found.display_path(), &found.text()?, search)
    }

    /// Load the suite file `path`; includes by name come from `search`.
    pub fn load(path: &Path, search: &SearchPath) -> Result<Suite> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(bad(
                    path,
                    "",
                    "no such smoke-test suite file",
                    "give a suite file, or a suite name (gridship suites lists them)",
                ));
            }
            Err(e) => return Err(Error::io_path(path, "reading smoke-test suite", e)),
        };
        Suite::parse_in(path, &text, search)
    }

    /// Parse suite text; `path` names it in errors, includes by name come
    /// from the default suites search path.
    pub fn parse(path: &Path, text: &str) -> Result<Suite> {
        Suite::parse_in(path, text, &SearchPath::new(Kind::Suites, None))
    }

    /// Parse suite text, resolving includes by name on `search`.
    pub fn parse_in(path: &Path, text: &str, search: &SearchPath) -> Result<Suite> {
        let mut stack = Vec::new();
        Suite::parse_nested(path, text, search, &mut stack)
    }

    fn parse_nested(
        path: &Path,
        text: &str,
        search: &SearchPath,
        stack: &mut Vec<PathBuf>,
    ) -> Result<Suite> {
        let mut s: Suite =
            serde_saphyr::from_str(text).map_err(|e| bad(path, "", format!("{e}"), HINT))?;
        s.path = path.to_path_buf();
        for c in &mut s.checks {
            c.from = path.to_path_buf();
        }
        s.check_own()?;
        stack.push(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()));
        let mut checks = Vec::new();
        for (i, inc) in s.include.iter().enumerate() {
            let place = format!("include[{i}]: ");
            let (inc_path, text) = if names_file(inc) {
                let p = path.parent().unwrap_or(Path::new(".")).join(inc);
                match std::fs::read_to_string(&p) {
                    Ok(t) => (p, t),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(bad(
                            path,
                            place,
                            format!(
                                "no smoke-test suite file '{inc}' (looked for {})",
                                p.display()
                            ),
                            "a file include is relative to the including suite",
                        ));
                    }
                    Err(e) => return Err(Error::io_path(&p, "reading smoke-test suite", e)),
                }
            } else if inc.is_empty() || inc.starts_with('.') {
                return Err(bad(
                    path,
                    place,
                    format!("'{inc}' is not a suite name"),
                    "include a suite by name (gpu-basic), or a file (other.yaml)",
                ));
            } else {
                let Some(found) = search.find(inc) else {
                    let known: Vec<String> = search.list().into_iter().map(|l| l.name).collect();
                    return Err(bad(
                        path,
                        place,
                        format!(
                            "no smoke-test suite '{inc}'; searched {}",
                            search.describe()
                        ),
                        &format!("suites: {}", known.join(", ")),
                    ));
                };
                (found.display_path(), found.text()?)
            };
            let key = std::fs::canonicalize(&inc_path).unwrap_or_else(|_| inc_path.clone());
            if let Some(at) = stack.iter().position(|p| *p == key) {
                let chain: Vec<String> = stack[at..]
                    .iter()
                    .chain(std::iter::once(&key))
                    .map(|p| p.display().to_string())
                    .collect();
                return Err(bad(
                    path,
                    place,
                    format!("include cycle: {}", chain.join(" -> ")),
                    "a suite may not include itself, directly or through others",
                ));
            }
            let sub = Suite::parse_nested(&inc_path, &text, search, stack)?;
            checks.extend(sub.checks);
        }
        stack.pop();
        checks.append(&mut s.checks);
        s.checks = checks;
        s.check_merged()?;
        Ok(s)
    }

    /// The checks of all includes and its own, as loaded: at least one,
    /// and no name twice.
    fn check_merged(&self) -> Result<()> {
        let path = &self.path;
        if self.checks.is_empty() {
            return Err(bad(path, "checks: ", "no checks", HINT));
        }
        let mut seen: std::collections::HashMap<&str, &Path> = std::collections::HashMap::new();
        for c in &self.checks {
            if let Some(first) = seen.insert(c.name.as_str(), c.from.as_path()) {
                return Err(bad(
                    path,
                    if self.include.is_empty() {
                        "checks: "
                    } else {
                        "include: "
                    },
                    format!(
                        "check '{}' comes twice: from {} and from {}",
                        c.name,
                        first.display(),
                        c.from.display()
                    ),
                    "give every check its own name; a suite cannot redefine a check of a suite it includes",
                ));
            }
        }
        Ok(())
    }

    /// The suite's own checks (not its includes').
    fn check_own(&self) -> Result<()> {
        let path = &self.path;
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

/// The suite run when nothing else picks one.
pub const DEFAULT_SUITE: &str = "gpu-basic";

/// The image config label naming the recipe an image was built from
/// (written by `gridship build` and the nightly).
pub const RECIPE_LABEL: &str = "gridship.recipe";

/// A suite and why it was chosen (for reports).
#[derive(Debug, Clone)]
pub struct Picked {
    pub suite: Suite,
    /// e.g. "--suite", "recipe gpu-dev (label gridship.recipe)", "default".
    pub why: String,
}

/// The suite a recipe names with `smoke_suite:` (a file of the recipe
/// directory, or a name on the suites search path); `None` when it names none.
pub fn for_recipe(recipe: &Recipe, suites: &SearchPath) -> Result<Option<Suite>> {
    match (&recipe.spec.smoke_suite, recipe.smoke_suite_file()) {
        (_, Some(file)) => Suite::load(&file, suites).map(Some),
        (Some(name), None) => Suite::find(name, suites).map(Some),
        (None, None) => Ok(None),
    }
}

/// Pick the suite for `image` when the caller names none.
///
/// When the image's config carries the label `gridship.recipe` and
/// `recipes_dir` holds that recipe, the recipe's suite ([`for_recipe`]);
/// otherwise (no label, no recipes directory, the recipe is not there or
/// names no suite) the [`DEFAULT_SUITE`] from `suites`. A
/// recipe that is there but broken, or whose suite is, is an error: the
/// image asked for it.
pub fn for_image(image: &Image, recipes_dir: Option<&Path>, suites: &SearchPath) -> Result<Picked> {
    let label = image
        .config
        .config
        .labels
        .as_ref()
        .and_then(|l| l.get(RECIPE_LABEL))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    let why_default = match (&label, recipes_dir) {
        (None, _) => format!("default (no {RECIPE_LABEL} label on the image)"),
        (Some(name), None) => {
            format!("default (label {RECIPE_LABEL}={name}, but no recipes directory given)")
        }
        (Some(name), Some(dir)) => {
            if Recipe::list(dir).iter().any(|r| r == name) {
                let recipe = Recipe::load(dir, name)?;
                if let Some(suite) = for_recipe(&recipe, suites)? {
                    return Ok(Picked {
                        suite,
                        why: format!("recipe {name} (label {RECIPE_LABEL})"),
                    });
                }
                format!("default (recipe {name} names no smoke_suite)")
            } else {
                format!(
                    "default (label {RECIPE_LABEL}={name}, but {} has no such recipe)",
                    dir.display()
                )
            }
        }
    };
    tracing::info!("smoke suite: {why_default}");
    Ok(Picked {
        suite: Suite::find(DEFAULT_SUITE, suites)?,
        why: why_default,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(dir: &Path) -> SearchPath {
        SearchPath::new(Kind::Suites, Some(dir))
    }

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
        assert_eq!(Suite::find("mine", &sp(d.path())).unwrap().name, "t");
        let f = d.path().join("mine.yaml");
        assert_eq!(
            Suite::find(f.to_str().unwrap(), &sp(Path::new("/nonexistent")))
                .unwrap()
                .name,
            "t"
        );
        let e = Suite::find("other", &sp(d.path())).unwrap_err().to_string();
        assert!(
            e.contains("no smoke-test suite 'other'") && e.contains("mine"),
            "{e}"
        );
    }

    #[test]
    fn smoke_suite_includes_come_first_and_nest() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        std::fs::write(
            dir.join("base.yaml"),
            "name: base\nchecks:\n  - {name: no-driver-libs, kind: static}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("mid.yaml"),
            "name: mid\ninclude: [base]\nchecks:\n  - {name: glibc-version, kind: static}\n",
        )
        .unwrap();
        let sub = dir.join("r");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(
            sub.join("extra.yaml"),
            "name: extra\nchecks:\n  - {name: hi, kind: run, command: \"echo hi\"}\n",
        )
        .unwrap();
        // A name from the suites directory, a file relative to the suite.
        let top = sub.join("smoke.yaml");
        std::fs::write(
            &top,
            "name: top\ninclude: [mid, extra.yaml]\nchecks:\n  - {name: cuda-driver-compat, kind: static}\n",
        )
        .unwrap();
        let s = Suite::load(&top, &sp(dir)).unwrap();
        let names: Vec<&str> = s.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "no-driver-libs",
                "glibc-version",
                "hi",
                "cuda-driver-compat"
            ]
        );
        assert_eq!(s.checks[0].from, dir.join("base.yaml"));
        assert_eq!((s.name.as_str(), s.include.len()), ("top", 2));
        // Only includes, no own checks: fine.
        std::fs::write(&top, "name: top\ninclude: [mid]\n").unwrap();
        assert_eq!(Suite::load(&top, &sp(dir)).unwrap().checks.len(), 2);
    }

    #[test]
    fn smoke_suite_include_errors_name_file_and_key() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let a = dir.join("a.yaml");
        let e = |text: &str| {
            std::fs::write(&a, text).unwrap();
            Suite::load(&a, &sp(dir)).unwrap_err()
        };
        let err = e("name: a\ninclude: [nope]\n");
        assert_eq!(err.exit_code(), 2);
        let m = err.to_string();
        assert!(
            m.contains("a.yaml: include[0]: no smoke-test suite 'nope'"),
            "{m}"
        );
        // A cycle through another suite, and a suite including itself.
        std::fs::write(dir.join("b.yaml"), "name: b\ninclude: [a]\n").unwrap();
        let m = e("name: a\ninclude: [b]\n").to_string();
        assert!(
            m.contains("b.yaml: include[0]: include cycle: ") && m.contains("a.yaml -> "),
            "{m}"
        );
        let m = e("name: a\ninclude: [a.yaml]\n").to_string();
        assert!(m.contains("a.yaml: include[0]: include cycle"), "{m}");
        // A check defined twice across includes.
        std::fs::write(
            dir.join("c.yaml"),
            "name: c\nchecks:\n  - {name: no-driver-libs, kind: static}\n",
        )
        .unwrap();
        let m = e("name: a\ninclude: [c]\nchecks:\n  - {name: no-driver-libs, kind: static}\n")
            .to_string();
        assert!(
            m.contains("a.yaml: include: check 'no-driver-libs' comes twice")
                && m.contains("c.yaml"),
            "{m}"
        );
        let m = e("name: a\ninclude: \"c\"\n").to_string();
        assert!(m.contains("a.yaml") && m.contains("include"), "{m}");
        let m = e("name: a\n").to_string();
        assert!(m.contains("a.yaml: checks: no checks"), "{m}");
    }

    /// The shipped gpu-dev recipe's own suite: gpu-basic's checks, then
    /// the recipe's venv check.
    #[test]
    fn smoke_suite_of_the_gpu_dev_recipe() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let suites = sp(&root.join("smoke-suites"));
        let recipe = Recipe::load(&root.join("recipes"), "gpu-dev").unwrap();
        assert_eq!(
            recipe.smoke_suite_file(),
            Some(recipe.dir.join("smoke.yaml"))
        );
        let s = for_recipe(&recipe, &suites).unwrap().unwrap();
        let basic = Suite::find("gpu-basic", &suites).unwrap();
        assert_eq!(s.name, "gpu-dev");
        assert_eq!(s.checks.len(), basic.checks.len() + 1);
        for (a, b) in s.checks.iter().zip(&basic.checks) {
            assert_eq!(a.name, b.name);
        }
        let own = s.checks.last().unwrap();
        assert_eq!(
            (own.name.as_str(), own.kind),
            ("venv-imports", CheckKind::Run)
        );
        assert!(!own.needs_gpu);
        assert_eq!(own.command.as_ref().unwrap().argv()[0], "python3");
        // debian12-dev names no suite.
        let deb = Recipe::load(&root.join("recipes"), "debian12-dev").unwrap();
        assert!(for_recipe(&deb, &suites).unwrap().is_none());
    }
}
