//! Reviewed recipes: `recipes/NAME/{Dockerfile,recipe.yaml}` plus any other
//! files in that directory, which together form the build context.
//!
//! This module reads `recipe.yaml` ([`RecipeSpec`]), lists the build
//! context ([`Recipe::context_files`]) and digests it
//! ([`Recipe::input_digest`], what the nightly compares to skip unchanged
//! recipes). The review gate that decides whether a recipe may be built as
//! "reviewed" lives in [`review`] ([`check_review`]).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, Hasher};
use crate::error::{Error, IoContext, Result};

pub mod review;

pub use review::{Review, ReviewPolicy, check_review, unreviewed_labels};

/// A recipe found on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recipe {
    /// Directory name under recipes/.
    pub name: String,
    /// The recipe directory, absolute.
    pub dir: PathBuf,
    pub spec: RecipeSpec,
}

/// `recipe.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeSpec {
    #[serde(default)]
    pub description: Option<String>,
    pub base: BaseSpec,
    /// Defaults of Dockerfile ARGs, overridable per build.
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    /// Tags the build gets (the nightly adds a date tag itself).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Target sites: names on the sites search path (`gridship sites`).
    #[serde(default)]
    pub sites: Vec<String>,
    /// Smoke-test suite to run on the result: a name in the smoke-suites
    /// directory (`gpu-basic`), or a file of the recipe directory
    /// (`smoke.yaml`, any name ending in .yaml/.yml).
    #[serde(default)]
    pub smoke_suite: Option<String>,
    /// Paths (globs) that slimming never removes.
    #[serde(default)]
    pub protected_paths: Vec<String>,
    #[serde(default)]
    pub slim: SlimOverrides,
}

/// The base image: the Dockerfile ARG that takes it and its default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseSpec {
    #[serde(default = "default_base_arg")]
    pub arg: String,
    pub image: String,
}

fn default_base_arg() -> String {
    "BASE".into()
}

/// Overrides of the slim rules: `keep` wins over the built-in removals,
/// `remove` adds removals (protected paths still win over both).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlimOverrides {
    #[serde(default)]
    pub keep: Vec<String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

const FORMAT_HINT: &str = "see recipes/README.md for the recipe.yaml keys";

fn bad(path: &Path, place: &str, reason: impl Into<String>, hint: impl Into<String>) -> Error {
    Error::BadInput {
        input: path.display().to_string(),
        place: place.to_string(),
        reason: reason.into(),
        hint: Some(hint.into()),
    }
}

/// `$GRIDSHIP_RECIPES`, else `./recipes` when it exists, else the
/// `recipes/` of the source tree the running binary was built in
/// (`REPO/target/release/gridship` → `REPO/recipes`), else `recipes`.
pub fn default_recipes_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GRIDSHIP_RECIPES") {
        return PathBuf::from(dir);
    }
    let here = PathBuf::from("recipes");
    if here.is_dir() {
        return here;
    }
    if let Ok(exe) = std::env::current_exe() {
        for anc in exe.ancestors().skip(1) {
            let cand = anc.join("recipes");
            if anc.join("Cargo.toml").is_file() && cand.is_dir() {
                return cand;
            }
        }
    }
    here
}

fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// An OCI distribution tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
}

/// A Dockerfile ARG name.
fn is_arg_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Does the Dockerfile declare `ARG NAME` (with or without a default)?
fn declares_arg(dockerfile: &str, name: &str) -> bool {
    dockerfile.lines().any(|l| {
        let mut w = l.split_whitespace();
        w.next().is_some_and(|i| i.eq_ignore_ascii_case("ARG"))
            && w.any(|a| a.split('=').next() == Some(name))
    })
}

impl RecipeSpec {
    /// Parse `recipe.yaml` text; `path` names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<RecipeSpec> {
        let spec: RecipeSpec =
            serde_saphyr::from_str(text).map_err(|e| bad(path, "", format!("{e}"), FORMAT_HINT))?;
        spec.check(path)?;
        Ok(spec)
    }

    fn check(&self, path: &Path) -> Result<()> {
        if !is_arg_name(&self.base.arg) {
            return Err(bad(
                path,
                "base.arg: ",
                format!("'{}' is not a Dockerfile ARG name", self.base.arg),
                "name the ARG that FROM uses, e.g. arg: BASE with `ARG BASE=...` and `FROM ${BASE}`",
            ));
        }
        if self.base.image.trim().is_empty() || self.base.image.contains(char::is_whitespace) {
            return Err(bad(
                path,
                "base.image: ",
                format!("'{}' is not an image reference", self.base.image),
                "write the default base image, e.g. docker.io/library/debian:bookworm",
            ));
        }
        if let Some(k) = self.build_args.keys().find(|k| !is_arg_name(k)) {
            return Err(bad(
                path,
                &format!("build_args.{k}: "),
                format!("'{k}' is not a Dockerfile ARG name"),
                "use letters, digits and _",
            ));
        }
        if self.build_args.contains_key(&self.base.arg) {
            return Err(bad(
                path,
                &format!("build_args.{}: ", self.base.arg),
                "the base image ARG is set by base.image",
                "remove it from build_args and set base.image",
            ));
        }
        if let Some(t) = self.tags.iter().find(|t| !is_tag(t)) {
            return Err(bad(
                path,
                "tags: ",
                format!("'{t}' is not an OCI tag"),
                "a tag is [A-Za-z0-9_][A-Za-z0-9._-]{0,127}",
            ));
        }
        if let Some(s) = self.sites.iter().find(|s| !is_plain_name(s)) {
            return Err(bad(
                path,
                "sites: ",
                format!("'{s}' is not a site name"),
                "list site names (`gridship sites`), e.g. sites: [glasgow, bonn]",
            ));
        }
        if let Some(s) = self.smoke_suite.as_deref().filter(|s| !is_plain_name(s)) {
            return Err(bad(
                path,
                "smoke_suite: ",
                format!("'{s}' is not a smoke-test suite name"),
                "name a suite (smoke_suite: gpu-basic) or a file of the recipe directory (smoke_suite: smoke.yaml)",
            ));
        }
        for (key, list) in [
            ("protected_paths", &self.protected_paths),
            ("slim.keep", &self.slim.keep),
            ("slim.remove", &self.slim.remove),
        ] {
            if let Some(p) = list.iter().find(|p| !p.starts_with('/')) {
                return Err(bad(
                    path,
                    &format!("{key}: "),
                    format!("'{p}' is not an absolute path pattern"),
                    "write paths inside the image from /, globs allowed, e.g. /home/*/project",
                ));
            }
        }
        Ok(())
    }
}

impl Recipe {
    /// Load `RECIPES/NAME/recipe.yaml` (and check that a Dockerfile that
    /// declares the base ARG sits next to it).
    pub fn load(recipes_dir: &Path, name: &str) -> Result<Recipe> {
        if !is_plain_name(name) {
            return Err(Error::bad_input(
                format!("recipe {name:?}"),
                "a recipe is a directory name under recipes/",
            ));
        }
        let dir = std::path::absolute(recipes_dir.join(name)).at("resolving", recipes_dir)?;
        let path = dir.join("recipe.yaml");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let known = Recipe::list(recipes_dir);
                return Err(bad(
                    &path,
                    "",
                    format!("no recipe '{name}'"),
                    if known.is_empty() {
                        format!(
                            "create {} or point GRIDSHIP_RECIPES at the recipes directory",
                            path.display()
                        )
                    } else {
                        format!("known recipes: {}", known.join(", "))
                    },
                ));
            }
            Err(e) => return Err(Error::io_path(&path, "reading recipe", e)),
        };
        let spec = RecipeSpec::parse(&path, &text)?;
        let dockerfile = dir.join("Dockerfile");
        let df = match std::fs::read_to_string(&dockerfile) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(bad(
                    &dockerfile,
                    "",
                    "missing: a recipe is a Dockerfile plus recipe.yaml",
                    "add the Dockerfile next to recipe.yaml",
                ));
            }
            Err(e) => return Err(Error::io_path(&dockerfile, "reading", e)),
        };
        if !declares_arg(&df, &spec.base.arg) {
            return Err(bad(
                &dockerfile,
                "",
                format!(
                    "declares no `ARG {}` (recipe.yaml base.arg) before FROM",
                    spec.base.arg
                ),
                format!(
                    "start the Dockerfile with `ARG {0}={1}` and `FROM ${{{0}}}`",
                    spec.base.arg, spec.base.image
                ),
            ));
        }
        let recipe = Recipe {
            name: name.to_string(),
            dir,
            spec,
        };
        if let Some(f) = recipe.smoke_suite_file()
            && !f.is_file()
        {
            return Err(bad(
                &path,
                "smoke_suite: ",
                format!("{} is not a file of the recipe directory", f.display()),
                "add the suite file next to recipe.yaml, or name a shipped suite (smoke_suite: gpu-basic)",
            ));
        }
        Ok(recipe)
    }

    /// `smoke_suite:` when it names a file of the recipe directory (a
    /// value ending in .yaml/.yml): its absolute path.
    pub fn smoke_suite_file(&self) -> Option<PathBuf> {
        self.spec
            .smoke_suite
            .as_deref()
            .filter(|s| s.ends_with(".yaml") || s.ends_with(".yml"))
            .map(|s| self.dir.join(s))
    }

    /// Sorted names of the directories under `recipes_dir` that hold a recipe.yaml.
    pub fn list(recipes_dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(recipes_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("recipe.yaml").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| is_plain_name(n))
            .collect();
        out.sort();
        out
    }

    /// Check that every site the recipe targets has a profile on the sites
    /// search path.
    pub fn check_sites(&self, sites: &crate::config::search::SearchPath) -> Result<()> {
        if let Some(s) = self.spec.sites.iter().find(|s| sites.find(s).is_none()) {
            let known: Vec<String> = sites.list().into_iter().map(|l| l.name).collect();
            return Err(bad(
                &self.dir.join("recipe.yaml"),
                "sites: ",
                format!("no site profile '{s}'; searched {}", sites.describe()),
                format!("known sites: {}", known.join(", ")),
            ));
        }
        Ok(())
    }

    /// Every file of the recipe directory (the build context), relative to
    /// it, sorted. Symlinks are listed as links, not followed; one whose
    /// target leaves the directory is refused, as are sockets, fifos and
    /// devices.
    pub fn context_files(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let abs = self.dir.join(&rel);
            for entry in std::fs::read_dir(&abs).at("listing recipe directory", &abs)? {
                let entry = entry.at("listing recipe directory", &abs)?;
                let r = rel.join(entry.file_name());
                let ft = entry.file_type().at("reading", entry.path())?;
                if ft.is_dir() {
                    stack.push(r);
                } else if ft.is_file() {
                    out.push(r);
                } else if ft.is_symlink() {
                    let target =
                        std::fs::read_link(entry.path()).at("reading link", entry.path())?;
                    if !link_stays_inside(&r, &target) {
                        return Err(bad(
                            &entry.path(),
                            "",
                            format!(
                                "symlink to {} points outside the recipe directory",
                                target.display()
                            ),
                            "the build context is the recipe directory: copy the file in, or use a relative link to a file inside it",
                        ));
                    }
                    out.push(r);
                } else {
                    return Err(bad(
                        &entry.path(),
                        "",
                        "not a regular file, directory or symlink",
                        "remove it from the recipe directory",
                    ));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// sha256 over the build context: for each of [`Self::context_files`]
    /// in order, its relative path, its mode as git records it (100644,
    /// 100755 or 120000) and its bytes (a link's target for symlinks), each
    /// length-prefixed. Independent of mtime, owner and umask.
    pub fn input_digest(&self) -> Result<Digest> {
        let mut h = Hasher::new();
        h.update(b"gridship-recipe-context-v1\0");
        for rel in self.context_files()? {
            let abs = self.dir.join(&rel);
            let path = rel.to_str().ok_or_else(|| {
                bad(
                    &abs,
                    "",
                    "file name is not UTF-8",
                    "rename it to a UTF-8 name",
                )
            })?;
            let (mode, bytes) = git_mode_and_bytes(&abs)?;
            for field in [path.as_bytes(), mode.as_bytes(), &bytes] {
                h.update(&(field.len() as u64).to_be_bytes());
                h.update(field);
            }
        }
        Ok(h.finish().0)
    }
}

/// The mode git would record for a file (`100644`, `100755`, `120000`) and
/// its content (a symlink's target).
pub(crate) fn git_mode_and_bytes(abs: &Path) -> Result<(&'static str, Vec<u8>)> {
    let md = std::fs::symlink_metadata(abs).at("reading", abs)?;
    if md.file_type().is_symlink() {
        let t = std::fs::read_link(abs).at("reading link", abs)?;
        return Ok(("120000", t.into_os_string().into_encoded_bytes()));
    }
    let mut bytes = Vec::with_capacity(md.len() as usize);
    std::fs::File::open(abs)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .at("reading", abs)?;
    let mode = if md.permissions().mode() & 0o100 != 0 {
        "100755"
    } else {
        "100644"
    };
    Ok((mode, bytes))
}

/// Does a link at `link` (relative to the recipe dir) with `target` resolve
/// lexically to a path inside the recipe dir?
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = link.parent().map_or(0, |p| p.components().count() as i64);
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    depth > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
description: Debian 12 development image
base:
  image: docker.io/library/debian:bookworm
build_args: {APT_PACKAGES: "build-essential git"}
tags: ["bookworm", "latest"]
sites: [glasgow, bonn]
smoke_suite: gpu-basic
protected_paths: ["/home/*/project", "/work"]
slim: {keep: ["/usr/share/doc/python3*"], remove: ["/usr/share/locale/*"]}
"#;

    fn parse(text: &str) -> Result<RecipeSpec> {
        RecipeSpec::parse(Path::new("recipes/x/recipe.yaml"), text)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_with_defaults() {
        let s = parse(OK).unwrap();
        assert_eq!(s.base.arg, "BASE");
        assert_eq!(s.base.image, "docker.io/library/debian:bookworm");
        assert_eq!(s.build_args["APT_PACKAGES"], "build-essential git");
        assert_eq!(s.sites, ["glasgow", "bonn"]);
        assert_eq!(s.slim.remove, ["/usr/share/locale/*"]);
        let min = parse("base: {image: alpine:3}\n").unwrap();
        assert_eq!(min.slim, SlimOverrides::default());
        assert!(min.tags.is_empty() && min.smoke_suite.is_none());
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let e = err(&OK.replace("smoke_suite:", "smoke_suit:"));
        assert!(e.contains("recipes/x/recipe.yaml"), "{e}");
        assert!(e.contains("smoke_suit"), "{e}");
        let e = err(&OK.replace("image: docker", "imag: docker"));
        assert!(
            e.contains("recipes/x/recipe.yaml") && e.contains("imag"),
            "{e}"
        );
        let e = err(&OK.replace("slim: {keep", "slim: {kep"));
        assert!(e.contains("kep"), "{e}");
    }

    #[test]
    fn missing_base_names_file_and_key() {
        let text: String = OK
            .lines()
            .filter(|l| !l.starts_with("base:") && !l.starts_with("  image:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let e = err(&text);
        assert!(
            e.contains("recipes/x/recipe.yaml") && e.contains("base"),
            "{e}"
        );
        assert!(e.contains("recipes/README.md"), "{e}");
    }

    #[test]
    fn bad_values_name_file_and_key() {
        for (from, to, key) in [
            (
                "sites: [glasgow, bonn]",
                "sites: [glasgow, ../etc]",
                "sites: ",
            ),
            ("sites: [glasgow, bonn]", "sites: [\"\"]", "sites: "),
            ("\"latest\"]", "\"la test\"]", "tags: "),
            (
                "smoke_suite: gpu-basic",
                "smoke_suite: a/b",
                "smoke_suite: ",
            ),
            ("\"/work\"]", "\"work\"]", "protected_paths: "),
            (
                "APT_PACKAGES:",
                "APT-PACKAGES:",
                "build_args.APT-PACKAGES: ",
            ),
            ("image: docker", "arg: 1X\n  image: docker", "base.arg: "),
        ] {
            let e = err(&OK.replace(from, to));
            assert!(
                e.starts_with("recipes/x/recipe.yaml: ") && e.contains(key),
                "{to}: {e}"
            );
            assert!(e.contains("hint: "), "{e}");
        }
    }

    #[test]
    fn dockerfile_arg_detection() {
        assert!(declares_arg("ARG BASE=debian\nFROM ${BASE}\n", "BASE"));
        assert!(declares_arg("arg  BASE\nFROM $BASE\n", "BASE"));
        assert!(declares_arg("ARG X=1 BASE=2\n", "BASE"));
        assert!(!declares_arg("ARG BASEIMAGE=x\n", "BASE"));
        assert!(!declares_arg("# ARG BASE\n", "BASE"));
    }

    #[test]
    fn links_inside_and_outside() {
        let p = Path::new;
        assert!(link_stays_inside(p("a"), p("b")));
        assert!(link_stays_inside(p("d/a"), p("../b")));
        assert!(link_stays_inside(p("d/a"), p("./x/../b")));
        assert!(!link_stays_inside(p("a"), p("../b")));
        assert!(!link_stays_inside(p("d/a"), p("../../b")));
        assert!(!link_stays_inside(p("a"), p("/etc/passwd")));
        assert!(!link_stays_inside(p("a"), p(".")));
    }

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn sample(tmp: &Path) -> PathBuf {
        let recipes = tmp.join("recipes");
        write(
            &recipes,
            "r1/recipe.yaml",
            "base: {image: debian:bookworm}\n",
        );
        write(
            &recipes,
            "r1/Dockerfile",
            "ARG BASE=debian:bookworm\nFROM ${BASE}\n",
        );
        write(&recipes, "r1/files/etc/motd", "hello\n");
        write(
            &recipes,
            "r2/recipe.yaml",
            "base: {image: debian:bookworm}\n",
        );
        write(&recipes, "r2/Dockerfile", "FROM debian:bookworm\n");
        write(&recipes, "notes/README", "not a recipe\n");
        recipes
    }

    #[test]
    fn load_list_and_context() {
        let tmp = tempfile::tempdir().unwrap();
        let recipes = sample(tmp.path());
        assert_eq!(Recipe::list(&recipes), ["r1", "r2"]);
        let r = Recipe::load(&recipes, "r1").unwrap();
        assert!(r.dir.is_absolute() && r.dir.ends_with("recipes/r1"));
        std::os::unix::fs::symlink("files/etc/motd", r.dir.join("motd")).unwrap();
        assert_eq!(
            r.context_files().unwrap(),
            [
                PathBuf::from("Dockerfile"),
                "files/etc/motd".into(),
                "motd".into(),
                "recipe.yaml".into()
            ]
        );
        let e = Recipe::load(&recipes, "nope").unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("no recipe 'nope'") && m.contains("known recipes: r1, r2"),
            "{m}"
        );
        assert_eq!(e.exit_code(), 2);
        let m = Recipe::load(&recipes, "r2").unwrap_err().to_string();
        assert!(m.contains("r2/Dockerfile") && m.contains("ARG BASE"), "{m}");
        assert!(Recipe::load(&recipes, "../r1").is_err());

        std::os::unix::fs::symlink("../r2/Dockerfile", r.dir.join("escape")).unwrap();
        let m = r.context_files().unwrap_err().to_string();
        assert!(
            m.contains("r1/escape") && m.contains("outside the recipe directory"),
            "{m}"
        );
        assert!(r.input_digest().is_err());
    }

    #[test]
    fn input_digest_is_stable_and_sensitive() {
        let tmp = tempfile::tempdir().unwrap();
        let recipes = sample(tmp.path());
        let r = Recipe::load(&recipes, "r1").unwrap();
        let d1 = r.input_digest().unwrap();
        assert_eq!(d1, r.input_digest().unwrap());
        // A copy elsewhere, written in another order and with other mtimes, digests the same.
        let tmp2 = tempfile::tempdir().unwrap();
        let recipes2 = tmp2.path().join("recipes");
        write(&recipes2, "r1/files/etc/motd", "hello\n");
        write(
            &recipes2,
            "r1/Dockerfile",
            "ARG BASE=debian:bookworm\nFROM ${BASE}\n",
        );
        write(
            &recipes2,
            "r1/recipe.yaml",
            "base: {image: debian:bookworm}\n",
        );
        let r2 = Recipe::load(&recipes2, "r1").unwrap();
        assert_eq!(d1, r2.input_digest().unwrap());
        // Group/other bits do not count, the executable bit does.
        let motd = r.dir.join("files/etc/motd");
        std::fs::set_permissions(&motd, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(d1, r.input_digest().unwrap());
        std::fs::set_permissions(&motd, std::fs::Permissions::from_mode(0o755)).unwrap();
        let d2 = r.input_digest().unwrap();
        assert_ne!(d1, d2);
        std::fs::set_permissions(&motd, std::fs::Permissions::from_mode(0o644)).unwrap();
        write(&r.dir, "files/etc/motd", "hello!\n");
        assert_ne!(d1, r.input_digest().unwrap());
        write(&r.dir, "files/etc/motd", "hello\n");
        assert_eq!(d1, r.input_digest().unwrap());
        // Moving bytes between path and content changes the digest.
        write(&r.dir, "files/etc/x", "");
        let d3 = r.input_digest().unwrap();
        assert_ne!(d1, d3);
    }
}
