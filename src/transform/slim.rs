//! Slim: remove what a batch job never reads. Every rule is named and has
//! its own report line, so a site can see and tune what went; overrides
//! come from the site (`slim:` in site.yaml), the recipe (`protected_paths`
//! and `slim:` in recipe.yaml) and the command line (`--keep`).
//!
//! Never removed: protected paths (the user's projects: /work, the visible
//! entries of home directories; configurable), `--keep` patterns, and
//! `__pycache__` (a read-only image would recompile on every run). The one
//! reach into a visible home entry: the caches of a conda or spack
//! installation found there by its layout (`~/miniconda3/pkgs/*.conda`,
//! `~/spack/var/spack/cache`), reported as such per path.
//!
//! Some rules are opt-in (models a job may need, Julia's precompiled
//! code): off, they remove nothing and report what they would remove.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::paths::{PathPattern, PatternSet};
use super::scan::Finding;
use super::secrets::SecretsPolicy;
use super::{Pick, RuleReport, Spare, prune};
use crate::image::ImageConfig;
use crate::index::{FsIndex, Kind, NodeId, display_path, is_under};
use crate::{Error, Result};

/// How a rule picks paths.
#[derive(Debug, Clone)]
enum Picker {
    Paths {
        patterns: PatternSet,
        except: PatternSet,
        files_only: bool,
        /// Picks inside a Python installation (`site-packages`,
        /// `dist-packages`) may lie in a protected home entry: what a
        /// package shipped, not the user's own files.
        reach_installs: bool,
    },
    Locales,
    CoreDumps,
    /// Paths found by an installation's layout (`find`), which may lie
    /// inside a visible home entry, and `patterns` besides.
    Layout {
        find: fn(&FsIndex) -> Found,
        patterns: PatternSet,
    },
}

/// What a layout finder picked: paths to remove and paths that stay, each
/// with its reason.
#[derive(Debug, Default)]
pub struct Found {
    pub remove: HashMap<Vec<u8>, String>,
    pub keep: HashMap<Vec<u8>, String>,
}

#[derive(Debug, Clone)]
pub struct SlimRule {
    pub name: String,
    pub description: String,
    picker: Picker,
    /// Who turned it off, if someone did.
    pub disabled_by: Option<String>,
    /// Off unless enabled (`slim.enable`, `--enable-slim`).
    pub opt_in: bool,
    /// Who turned an opt-in rule on.
    pub enabled_by: Option<String>,
}

/// The rules with their overrides applied.
#[derive(Debug, Clone)]
pub struct SlimPolicy {
    pub rules: Vec<SlimRule>,
    pub keep: PatternSet,
    pub protect: PatternSet,
    /// The visible entries of home directories: protected, except for the
    /// caches of installations found there by layout.
    pub home: PatternSet,
    pub locales: BTreeSet<String>,
}

/// Paths of a user's work that slimming never touches.
pub const DEFAULT_PROTECT: &[&str] = &["/work", "/project", "/projects", "/data"];

/// The visible entries of home directories (projects, installations).
pub const HOME_ENTRIES: &[&str] = &["/home/*/[!.]*", "/root/[!.]*"];

/// Python bytecode caches stay: a read-only image cannot write them.
const ALWAYS_KEEP: &[&str] = &["**/__pycache__"];

fn name_of(key: &[u8]) -> &[u8] {
    key.rsplit(|&b| b == b'/').next().unwrap_or(key)
}

fn parent_key(key: &[u8]) -> &[u8] {
    key.iter()
        .rposition(|&b| b == b'/')
        .map_or(&b""[..], |i| &key[..i])
}

fn join_key(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

/// conda's (and mamba's, micromamba's) package caches, wherever they are:
/// a directory holding `urls.txt`, or a `pkgs` directory holding package
/// tarballs or extracted packages (`NAME-VER-BUILD/info/index.json`).
fn conda_pkgs_dirs(index: &FsIndex) -> BTreeSet<Vec<u8>> {
    let mut dirs = BTreeSet::new();
    let is_dir = |k: &[u8]| index.get(k).is_some_and(|(_, n)| n.kind.is_dir());
    for (key, _, node) in index.iter() {
        let name = name_of(key);
        let is_file = matches!(node.kind, Kind::File { .. });
        let tarball = name.ends_with(b".conda") || name.ends_with(b".tar.bz2");
        let candidate = if is_file
            && (name == b"urls.txt" || (tarball && name_of(parent_key(key)) == b"pkgs"))
        {
            parent_key(key)
        } else if key.ends_with(b"/info/index.json") {
            let pkgs = parent_key(parent_key(parent_key(key)));
            if name_of(pkgs) != b"pkgs" {
                continue;
            }
            pkgs
        } else {
            continue;
        };
        if !candidate.is_empty() && is_dir(candidate) {
            dirs.insert(candidate.to_vec());
        }
    }
    dirs
}

/// Tarballs and the index cache of every conda package cache, as
/// `conda clean --tarballs --index-cache` removes them.
fn find_conda_tarballs(index: &FsIndex) -> Found {
    let mut found = Found::default();
    for pkgs in conda_pkgs_dirs(index) {
        for k in index.subtree(&pkgs) {
            if parent_key(&k) != pkgs.as_slice() {
                continue;
            }
            let name = name_of(&k);
            let Some((_, n)) = index.get(&k) else {
                continue;
            };
            let reason = match &n.kind {
                Kind::File { .. } if name.ends_with(b".conda") || name.ends_with(b".tar.bz2") => {
                    "conda package tarball"
                }
                Kind::Dir if name == b"cache" => "conda repodata index cache (pkgs/cache)",
                _ => continue,
            };
            found.remove.insert(k, reason.to_string());
        }
    }
    found
}

/// Where a symlink at `key` points, as a key: followed inside the image
/// when it resolves, else its target taken lexically (a dangling link
/// still names what it would use).
fn link_destination(index: &FsIndex, key: &[u8], target: &[u8]) -> Option<Vec<u8>> {
    let shown = display_path(key);
    if let Some((k, _)) = index.follow(&shown) {
        return Some(k);
    }
    let t = String::from_utf8_lossy(target);
    let joined = if t.starts_with('/') {
        t.into_owned()
    } else {
        format!("{}/{t}", display_path(parent_key(key)))
    };
    let mut comps: Vec<&str> = Vec::new();
    for c in joined.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                comps.pop();
            }
            c => comps.push(c),
        }
    }
    Some(comps.join("/").into_bytes())
}

/// Extracted packages of every conda package cache, as `conda clean
/// --packages` removes them, but safer: a package that any path outside
/// it links to through a symlink (an environment made in conda's softlink
/// mode, `link` type 2 in its conda-meta) stays. Files an environment
/// hardlinked (type 1) stay with the environment whatever happens to the
/// package directory.
fn find_conda_packages(index: &FsIndex) -> Found {
    let mut found = Found::default();
    let mut packages: HashSet<Vec<u8>> = HashSet::new();
    for pkgs in conda_pkgs_dirs(index) {
        for k in index.subtree(&pkgs) {
            if parent_key(&k) == pkgs.as_slice()
                && index.get(&k).is_some_and(|(_, n)| n.kind.is_dir())
                && index.get(&join_key(&k, b"info/index.json")).is_some()
            {
                packages.insert(k);
            }
        }
    }
    if packages.is_empty() {
        return found;
    }
    let mut used: HashMap<Vec<u8>, (Vec<u8>, usize)> = HashMap::new();
    for (key, _, node) in index.iter() {
        let Kind::Symlink { target } = &node.kind else {
            continue;
        };
        let Some(dest) = link_destination(index, key, target) else {
            continue;
        };
        // The package directory the destination lies in, if any.
        let mut d: &[u8] = &dest;
        let package = loop {
            if packages.contains(d) {
                break Some(d.to_vec());
            }
            if d.is_empty() {
                break None;
            }
            d = parent_key(d);
        };
        if let Some(p) = package
            && !is_under(key, &p)
        {
            let e = used.entry(p).or_insert_with(|| (key.to_vec(), 0));
            e.1 += 1;
        }
    }
    for p in packages {
        match used.get(&p) {
            Some((link, n)) => {
                found.keep.insert(
                    p,
                    format!(
                        "extracted conda package in use through {n} symlink{} (softlinked environment), e.g. {}",
                        if *n == 1 { "" } else { "s" },
                        display_path(link)
                    ),
                );
            }
            None => {
                found.remove.insert(
                    p,
                    "extracted conda package no environment links to by symlink (as `conda clean --packages`)".into(),
                );
            }
        }
    }
    found
}

/// spack's caches in every spack root (a directory with `bin/spack` and
/// `var/spack`): the source mirror `var/spack/cache` and the build stage
/// `var/spack/stage`. The installed packages (`opt/spack`) stay.
fn find_spack(index: &FsIndex) -> Found {
    let mut found = Found::default();
    for (key, _, node) in index.iter() {
        if name_of(key) != b"spack" || name_of(parent_key(key)) != b"bin" || node.kind.is_dir() {
            continue;
        }
        let root = parent_key(parent_key(key));
        for (sub, reason) in [
            (
                &b"var/spack/cache"[..],
                "spack source mirror (var/spack/cache)",
            ),
            (
                &b"var/spack/stage"[..],
                "spack build stage (var/spack/stage)",
            ),
        ] {
            let k = join_key(root, sub);
            if index.get(&k).is_some_and(|(_, n)| n.kind.is_dir()) {
                found.remove.insert(k, reason.to_string());
            }
        }
    }
    found
}

/// The built-in rules, in the order they run.
fn builtin() -> Result<Vec<SlimRule>> {
    let paths = |name: &str,
                 description: &str,
                 pats: Vec<String>,
                 except: &[&str],
                 files_only|
     -> Result<SlimRule> {
        let input = format!("built-in slim rule {name}");
        Ok(SlimRule {
            name: name.into(),
            description: description.into(),
            picker: Picker::Paths {
                patterns: PatternSet::compile(&pats, &input)?,
                except: PatternSet::compile(
                    &except.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                    &input,
                )?,
                files_only,
                reach_installs: false,
            },
            disabled_by: None,
            opt_in: false,
            enabled_by: None,
        })
    };
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // An opt-in rule over what installed packages shipped, also inside a
    // home's Python environments (`reach_installs`).
    let installed = |name: &str, description: &str, pats: &[&str], files_only| {
        paths(name, description, v(pats), &[], files_only).map(|mut r| {
            if let Picker::Paths { reach_installs, .. } = &mut r.picker {
                *reach_installs = true;
            }
            SlimRule { opt_in: true, ..r }
        })
    };
    let layout = |name: &str, description: &str, find, pats: Vec<String>| -> Result<SlimRule> {
        Ok(SlimRule {
            name: name.into(),
            description: description.into(),
            picker: Picker::Layout {
                find,
                patterns: PatternSet::compile(&pats, &format!("built-in slim rule {name}"))?,
            },
            disabled_by: None,
            opt_in: false,
            enabled_by: None,
        })
    };
    let opt_in = |r: Result<SlimRule>| r.map(|r| SlimRule { opt_in: true, ..r });
    Ok(vec![
        paths(
            "apt-cache",
            "apt package lists and downloaded .deb archives",
            v(&[
                "/var/lib/apt/lists/*",
                "/var/cache/apt/*.bin",
                "/var/cache/apt/archives/*.deb",
                "/var/cache/apt/archives/partial/*",
            ]),
            &["/var/lib/apt/lists/lock", "/var/lib/apt/lists/partial"],
            false,
        )?,
        paths(
            "pip-cache",
            "pip's download and wheel cache",
            v(&["**/.cache/pip"]),
            &[],
            false,
        )?,
        paths(
            "uv-cache",
            "uv's cache (~/.cache/uv)",
            v(&["**/.cache/uv"]),
            &[],
            false,
        )?,
        paths(
            "poetry-cache",
            "poetry's package cache and downloaded artifacts (its virtualenvs stay)",
            v(&["**/.cache/pypoetry/cache", "**/.cache/pypoetry/artifacts"]),
            &[],
            false,
        )?,
        paths(
            "pipenv-cache",
            "pipenv's cache (its virtualenvs stay)",
            v(&["**/.cache/pipenv"]),
            &[],
            false,
        )?,
        layout(
            "conda-cache",
            "conda, mamba and micromamba package tarballs and index cache in every package cache (as `conda clean --tarballs --index-cache`)",
            find_conda_tarballs,
            v(&["**/.cache/conda"]),
        )?,
        layout(
            "conda-pkgs",
            "extracted conda packages no environment uses through a symlink (as `conda clean --packages`; hardlinked files stay with their environment)",
            find_conda_packages,
            Vec::new(),
        )?,
        layout(
            "spack-cache",
            "spack's source mirror and build stages in every spack root, and ~/.spack's cache (installed packages stay)",
            find_spack,
            v(&[
                "**/.spack/cache",
                "**/.spack/stage",
                "/tmp/*/spack-stage",
                "/var/tmp/*/spack-stage",
            ]),
        )?,
        paths(
            "julia-logs",
            "Julia's logs (~/.julia/logs; packages stay)",
            v(&["**/.julia/logs"]),
            &[],
            false,
        )?,
        opt_in(paths(
            "julia-compiled",
            "Julia's precompiled package images (~/.julia/compiled): a job without them precompiles again, into a writable depot",
            v(&["**/.julia/compiled"]),
            &[],
            false,
        ))?,
        paths(
            "r-cache",
            "R package download caches (pak/pkgcache, renv's source tarballs, install.packages' downloads; renv's package cache stays)",
            v(&[
                "**/.cache/R/pkgcache",
                "**/.cache/R/renv/source",
                "/tmp/Rtmp*/downloaded_packages",
            ]),
            &[],
            false,
        )?,
        opt_in(paths(
            "huggingface-cache",
            "the Hugging Face hub cache (~/.cache/huggingface): often the model the job needs",
            v(&["**/.cache/huggingface"]),
            &[],
            false,
        ))?,
        opt_in(paths(
            "torch-hub",
            "torch hub's downloaded models and repositories (~/.cache/torch/hub)",
            v(&["**/.cache/torch/hub"]),
            &[],
            false,
        ))?,
        paths(
            "npm-cache",
            "npm, yarn and pnpm caches",
            v(&[
                "**/.npm/_cacache",
                "**/.npm/_logs",
                "**/.cache/yarn",
                "**/.yarn/cache",
                "**/.cache/pnpm",
                "**/.local/share/pnpm/store",
            ]),
            &[],
            false,
        )?,
        paths(
            "cargo-cache",
            "cargo's registry downloads and sources, git checkouts",
            v(&[
                "**/.cargo/registry/cache",
                "**/.cargo/registry/src",
                "**/.cargo/git/checkouts",
            ]),
            &[],
            false,
        )?,
        paths(
            "build-caches",
            "compiler caches (go build cache, ccache)",
            v(&["**/.cache/go-build", "**/.ccache", "**/.cache/ccache"]),
            &[],
            false,
        )?,
        paths(
            "docs",
            "documentation (licence files in /usr/share/doc/*/copyright stay)",
            v(&[
                "/usr/share/doc/**",
                "/usr/local/share/doc/**",
                "/usr/share/doc-base",
                "/usr/share/gtk-doc",
            ]),
            &["/usr/share/doc/*/copyright"],
            false,
        )?,
        paths(
            "man-info",
            "man and info pages",
            v(&[
                "/usr/share/man/**",
                "/usr/local/share/man/**",
                "/usr/share/info/**",
                "/usr/local/share/info/**",
            ]),
            &[],
            false,
        )?,
        SlimRule {
            name: "locales".into(),
            description: "translations and compiled locales other than the configured ones".into(),
            picker: Picker::Locales,
            disabled_by: None,
            opt_in: false,
            enabled_by: None,
        },
        SlimRule {
            name: "core-dumps".into(),
            description: "ELF core dumps (found by content, whatever the name)".into(),
            picker: Picker::CoreDumps,
            disabled_by: None,
            opt_in: false,
            enabled_by: None,
        },
        paths(
            "tmp",
            "temporary directories' contents",
            v(&["/tmp/*", "/var/tmp/*"]),
            &[],
            false,
        )?,
        paths("logs", "log files", v(&["/var/log/**"]), &[], true)?,
        installed(
            "static-archives",
            "static libraries (*.a): only a link step reads them, never a running job (opt-in: a job that builds against them needs them)",
            &["**/*.a"],
            true,
        )?,
        installed(
            "headers",
            "C/C++/CUDA headers (/usr/include, *.h, *.hpp, *.cuh, ...): opt-in, since a job that compiles at run time needs them (torch.utils.cpp_extension, triton's launcher, cupy and numba JIT)",
            &[
                "/usr/include/**",
                "/usr/local/include/**",
                "**/*.h",
                "**/*.hh",
                "**/*.hpp",
                "**/*.hxx",
                "**/*.cuh",
            ],
            true,
        )?,
        installed(
            "foreign-gpu-backends",
            "GPU backends for other vendors than NVIDIA's (triton's AMD backend, JAX's ROCm plugins): opt-in, for sites whose GPU queues are all NVIDIA",
            &[
                "**/site-packages/triton/backends/amd",
                "**/site-packages/jax_rocm*_plugin",
                "**/site-packages/jax_rocm*_pjrt",
            ],
            false,
        )?,
    ])
}

/// The `slim:` and `secrets:` sections of site.yaml.
#[derive(Debug, Default, Deserialize)]
struct OverrideFile {
    #[serde(default)]
    slim: SlimSpec,
    #[serde(default)]
    secrets: SecretsSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlimSpec {
    /// Built-in rules to turn off.
    #[serde(default)]
    disable: Vec<String>,
    /// Opt-in rules to turn on.
    #[serde(default)]
    enable: Vec<String>,
    /// Patterns never removed.
    #[serde(default)]
    keep: Vec<String>,
    /// More protected paths.
    #[serde(default)]
    protect: Vec<String>,
    /// Locales to keep besides C, POSIX, en and the image's LANG.
    #[serde(default)]
    locales: Vec<String>,
    /// Extra rules.
    #[serde(default)]
    remove: Vec<ExtraRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtraRule {
    name: String,
    #[serde(default)]
    description: Option<String>,
    paths: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsSpec {
    /// Paths holding no secret despite a finding.
    #[serde(default)]
    allow: Vec<String>,
    /// Env names whose values are not secret.
    #[serde(default)]
    allow_env: Vec<String>,
}

/// Slim and secrets policy, built from the defaults and every override.
#[derive(Debug, Clone)]
pub struct Policy {
    pub slim: SlimPolicy,
    pub secrets: SecretsPolicy,
    /// The override files read, in order.
    pub sources: Vec<String>,
}

impl Policy {
    pub fn new() -> Result<Policy> {
        let mut protect = PatternSet::default();
        for p in DEFAULT_PROTECT {
            protect.push(PathPattern::new(p, "built-in protected paths")?);
        }
        let mut home = PatternSet::default();
        for p in HOME_ENTRIES {
            home.push(PathPattern::new(p, "built-in protected paths")?);
        }
        let mut keep = PatternSet::default();
        for p in ALWAYS_KEEP {
            keep.push(PathPattern::new(p, "built-in kept paths")?);
        }
        Ok(Policy {
            slim: SlimPolicy {
                rules: builtin()?,
                keep,
                protect,
                home,
                locales: ["C", "POSIX", "en"].iter().map(|s| s.to_string()).collect(),
            },
            secrets: SecretsPolicy::default(),
            sources: Vec::new(),
        })
    }

    /// Apply the `slim:`/`secrets:` sections of `path`, if it exists.
    pub fn apply_file(&mut self, path: &Path) -> Result<()> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io_path(path, "reading", e)),
        };
        self.apply_text(&path.display().to_string(), &text)
    }

    /// Apply a site's chain of profiles, parents first.
    pub fn apply_site(&mut self, chain: &crate::site::SiteChain) -> Result<()> {
        for doc in &chain.docs {
            self.apply_text(&doc.input.display().to_string(), &doc.text)?;
        }
        Ok(())
    }

    /// Apply the `slim:`/`secrets:` sections of one file's text; `input`
    /// names it in messages and reports.
    pub fn apply_text(&mut self, input: &str, text: &str) -> Result<()> {
        let input = input.to_string();
        let f: OverrideFile = serde_saphyr::from_str(text).map_err(|e| Error::BadInput {
            input: input.clone(),
            place: String::new(),
            reason: e.to_string(),
            hint: Some("slim: takes disable, enable, keep, protect, locales, remove; secrets: takes allow, allow_env".into()),
        })?;
        let s = f.slim;
        for name in &s.disable {
            match self.slim.rules.iter_mut().find(|r| &r.name == name) {
                Some(r) => r.disabled_by = Some(input.clone()),
                None => {
                    return Err(Error::BadInput {
                        input,
                        place: format!("slim.disable: {name}: "),
                        reason: "no such slim rule".into(),
                        hint: Some(format!("rules: {}", self.rule_names().join(", "))),
                    });
                }
            }
        }
        for name in &s.enable {
            self.enable(name, &input, &format!("slim.enable: {name}: "))?;
        }
        for p in &s.keep {
            self.slim
                .keep
                .push(PathPattern::new(p, &format!("{input}: slim.keep"))?);
        }
        for p in &s.protect {
            self.slim
                .protect
                .push(PathPattern::new(p, &format!("{input}: slim.protect"))?);
        }
        self.slim.locales.extend(s.locales);
        for r in s.remove {
            if r.name.is_empty() || self.slim.rules.iter().any(|x| x.name == r.name) {
                return Err(Error::BadInput {
                    input,
                    place: format!("slim.remove: {}: ", r.name),
                    reason: "a rule needs a name of its own".into(),
                    hint: Some(format!("taken: {}", self.rule_names().join(", "))),
                });
            }
            self.slim.rules.push(SlimRule {
                description: r
                    .description
                    .unwrap_or_else(|| format!("paths listed in {input}")),
                picker: Picker::Paths {
                    patterns: PatternSet::compile(
                        &r.paths,
                        &format!("{input}: slim.remove.{}", r.name),
                    )?,
                    except: PatternSet::default(),
                    files_only: false,
                    reach_installs: false,
                },
                name: r.name,
                disabled_by: None,
                opt_in: false,
                enabled_by: None,
            });
        }
        for p in &f.secrets.allow {
            self.secrets
                .allow
                .push(PathPattern::new(p, &format!("{input}: secrets.allow"))?);
        }
        self.secrets.allow_env.extend(f.secrets.allow_env);
        self.sources.push(input);
        Ok(())
    }

    /// A recipe's `protected_paths` and `slim: {keep, remove}` (recipe.yaml),
    /// for sessions started from an image built from it.
    pub fn apply_recipe(&mut self, recipe: &crate::recipe::Recipe) -> Result<()> {
        let input = recipe.dir.join("recipe.yaml").display().to_string();
        for p in &recipe.spec.protected_paths {
            self.slim
                .protect
                .push(PathPattern::new(p, &format!("{input}: protected_paths"))?);
        }
        for p in &recipe.spec.slim.keep {
            self.slim
                .keep
                .push(PathPattern::new(p, &format!("{input}: slim.keep"))?);
        }
        if !recipe.spec.slim.remove.is_empty() {
            self.slim.rules.push(SlimRule {
                name: "recipe-remove".into(),
                description: format!("slim.remove of recipe {}", recipe.name),
                picker: Picker::Paths {
                    patterns: PatternSet::compile(
                        &recipe.spec.slim.remove,
                        &format!("{input}: slim.remove"),
                    )?,
                    except: PatternSet::default(),
                    files_only: false,
                    reach_installs: false,
                },
                disabled_by: None,
                opt_in: false,
                enabled_by: None,
            });
        }
        self.sources.push(input);
        Ok(())
    }

    /// `--keep PATTERN` from the command line.
    pub fn keep(&mut self, pattern: &str) -> Result<()> {
        self.slim
            .keep
            .push(PathPattern::new(pattern, &format!("--keep {pattern}"))?);
        Ok(())
    }

    /// Turn on the opt-in rule `name`; `input` (and `place` in it) asked.
    pub fn enable(&mut self, name: &str, input: &str, place: &str) -> Result<()> {
        let opt_in = self.opt_in_names();
        match self.slim.rules.iter_mut().find(|r| r.name == name) {
            Some(r) if r.opt_in => {
                r.enabled_by = Some(input.to_string());
                Ok(())
            }
            found => Err(Error::BadInput {
                input: input.to_string(),
                place: place.to_string(),
                reason: if found.is_some() {
                    "this slim rule runs by default; only opt-in rules are enabled".into()
                } else {
                    "no such slim rule".into()
                },
                hint: Some(format!("opt-in rules: {}", opt_in.join(", "))),
            }),
        }
    }

    pub fn opt_in_names(&self) -> Vec<String> {
        self.slim
            .rules
            .iter()
            .filter(|r| r.opt_in)
            .map(|r| r.name.clone())
            .collect()
    }

    pub fn rule_names(&self) -> Vec<String> {
        self.slim.rules.iter().map(|r| r.name.clone()).collect()
    }
}

/// The language of a locale name: `de_DE.UTF-8@euro` is `de`.
fn language(name: &str) -> &str {
    name.split(['_', '.', '@']).next().unwrap_or(name)
}

/// Run the slim rules, one report each (`slim:NAME`). `spare` are paths
/// that must stay besides the policy's (the site overlay's files).
pub fn apply(
    index: &mut FsIndex,
    config: &ImageConfig,
    policy: &SlimPolicy,
    findings: &HashMap<NodeId, Finding>,
    spare: &PatternSet,
) -> Vec<RuleReport> {
    let mut locales = policy.locales.clone();
    for e in config.config.env.iter().flatten() {
        if let Some((n, v)) = e.split_once('=')
            && matches!(n, "LANG" | "LC_ALL" | "LANGUAGE")
        {
            for l in v.split(':').filter(|l| !l.is_empty()) {
                locales.insert(language(l).to_string());
                locales.insert(l.to_string());
            }
        }
    }
    // Quietly kept: --keep, __pycache__, the site overlay's files.
    let quiet = |key: &[u8]| policy.keep.covering(key).is_some() || spare.covering(key).is_some();
    // `reach_home`: the pick is an installation's cache found by layout,
    // which home protection does not cover.
    let protected = |key: &[u8], reach_home: bool| {
        if quiet(key) {
            return Spare::Quiet;
        }
        if let Some(p) = policy.protect.covering(key) {
            return Spare::Reported(format!("protected path ({})", p.text));
        }
        match policy.home.covering(key) {
            Some(p) if !reach_home => Spare::Reported(format!("protected home entry ({})", p.text)),
            _ => Spare::No,
        }
    };
    let mut reports = Vec::new();
    for rule in &policy.rules {
        let mut report = RuleReport::new(&format!("slim:{}", rule.name), &rule.description);
        // An opt-in rule that is off, or a disabled one, reports what it
        // would remove and removes nothing.
        let off = if let Some(by) = &rule.disabled_by {
            report.warnings.push(format!("disabled by {by}"));
            Some(format!("the rule is disabled by {by}"))
        } else if rule.opt_in && rule.enabled_by.is_none() {
            report.warnings.push(format!(
                "opt-in, off (turn on with --enable-slim {} or slim.enable in site.yaml)",
                rule.name
            ));
            Some(format!(
                "opt-in rule, off (--enable-slim {} removes it)",
                rule.name
            ))
        } else {
            None
        };
        let dry = off.as_deref();
        match &rule.picker {
            Picker::Paths {
                patterns,
                except,
                files_only,
                reach_installs,
            } => prune(
                index,
                &mut report,
                |key, _, node| {
                    if *files_only && !matches!(node.kind, Kind::File { .. }) {
                        return None;
                    }
                    let p = patterns.matching(key)?;
                    let reach = *reach_installs && in_python_install(key);
                    let reason = match policy.home.covering_at(key) {
                        Some((_, entry)) if reach => format!(
                            "{}; inside the protected home entry {}: a package's own files are not protected",
                            p.text,
                            display_path(entry)
                        ),
                        _ => p.text.clone(),
                    };
                    Some(Pick::Remove(reason, reach))
                },
                |key, reach_home| {
                    if except.covering(key).is_some() {
                        Spare::Quiet
                    } else {
                        protected(key, *reach_home)
                    }
                },
                dry,
            ),
            Picker::Layout { find, patterns } => {
                let found = find(index);
                prune(
                    index,
                    &mut report,
                    |key, _, _| {
                        if let Some(why) = found.keep.get(key) {
                            return Some(Pick::Keep(why.clone()));
                        }
                        if let Some(reason) = found.remove.get(key) {
                            let reason = match policy.home.covering_at(key) {
                                Some((_, entry)) => format!(
                                    "{reason}; inside the protected home entry {}: an installation's caches are not protected",
                                    display_path(entry)
                                ),
                                None => reason.clone(),
                            };
                            return Some(Pick::Remove(reason, true));
                        }
                        patterns
                            .matching(key)
                            .map(|p| Pick::Remove(p.text.clone(), false))
                    },
                    |key, reach_home| protected(key, *reach_home),
                    dry,
                )
            }
            Picker::Locales => prune(
                index,
                &mut report,
                |key, _, node| {
                    let k = String::from_utf8_lossy(key);
                    let (dir, name) = k.rsplit_once('/')?;
                    if !matches!(dir, "usr/share/locale" | "usr/lib/locale") || !node.kind.is_dir()
                    {
                        return None;
                    }
                    let lang = language(name);
                    let is_c = lang == "C" || lang == "POSIX";
                    (!is_c && !locales.contains(name) && !locales.contains(lang))
                        .then(|| Pick::Remove(format!("locale {name} not configured"), false))
                },
                |key, _| protected(key, false),
                dry,
            ),
            Picker::CoreDumps => prune(
                index,
                &mut report,
                |_, id, _| {
                    matches!(findings.get(&id), Some(Finding::CoreDump))
                        .then(|| Pick::Remove("ELF core dump".to_string(), false))
                },
                |key, _| protected(key, false),
                dry,
            ),
        }
        reports.push(report);
    }
    reports
}

/// Whether a path lies in a Python installation's package directory.
fn in_python_install(key: &[u8]) -> bool {
    key.split(|&b| b == b'/')
        .any(|c| c == b"site-packages" || c == b"dist-packages")
}

/// The names of the rules about what users install (package managers,
/// language depots, model caches): the human report lists their paths.
pub const USER_INSTALL_RULES: &[&str] = &[
    "pip-cache",
    "uv-cache",
    "poetry-cache",
    "pipenv-cache",
    "conda-cache",
    "conda-pkgs",
    "spack-cache",
    "julia-logs",
    "julia-compiled",
    "r-cache",
    "huggingface-cache",
    "torch-hub",
    "static-archives",
    "headers",
    "foreign-gpu-backends",
];

/// How many directories the size report lists.
pub const LARGEST_DIRS: usize = 10;

/// A big directory left in the image, for the size report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LargeDir {
    pub path: String,
    /// Bytes of the regular files below it, each file node once (as
    /// `du --apparent-size` counts the files of one tree).
    pub bytes: u64,
    /// Regular files below it (file nodes).
    pub files: u64,
    /// The slim rule that would remove it (an opt-in or disabled rule, or
    /// one whose removal something prevented), with why it stays.
    pub rule: Option<String>,
    pub kept_because: Option<String>,
}

/// The `n` directories that make the tree big. A directory's size is the
/// bytes of the regular files below it, a hardlinked file counted once; a
/// directory one of whose subdirectories holds at least half of those
/// bytes is not listed itself (that subdirectory, or one below it, stands
/// for it), so `/` and `/usr` give way to `/usr/lib/x86_64-linux-gnu`.
/// Largest first, ties by path.
pub fn largest_dirs(index: &FsIndex, reports: &[RuleReport], n: usize) -> Vec<LargeDir> {
    let mut links: HashMap<NodeId, u32> = HashMap::new();
    for (_, id, node) in index.iter() {
        if matches!(node.kind, Kind::File { .. }) {
            *links.entry(id).or_default() += 1;
        }
    }
    // (bytes, files) per directory key.
    let mut sizes: HashMap<&[u8], (u64, u64)> = HashMap::new();
    let mut shared: HashMap<NodeId, (u64, HashSet<&[u8]>)> = HashMap::new();
    for (key, id, node) in index.iter() {
        let Kind::File { size, .. } = node.kind else {
            continue;
        };
        let ancestors = std::iter::successors(Some(parent_key(key)), |k| {
            (!k.is_empty()).then(|| parent_key(k))
        });
        if links[&id] == 1 {
            for a in ancestors {
                let e = sizes.entry(a).or_default();
                e.0 += size;
                e.1 += 1;
            }
        } else {
            shared
                .entry(id)
                .or_insert_with(|| (size, HashSet::new()))
                .1
                .extend(ancestors);
        }
    }
    for (size, dirs) in shared.into_values() {
        for a in dirs {
            let e = sizes.entry(a).or_default();
            e.0 += size;
            e.1 += 1;
        }
    }
    let mut biggest_child: HashMap<&[u8], u64> = HashMap::new();
    for (key, _, node) in index.iter() {
        if key.is_empty() || !node.kind.is_dir() {
            continue;
        }
        let b = sizes.get(key).map_or(0, |s| s.0);
        let e = biggest_child.entry(parent_key(key)).or_default();
        *e = (*e).max(b);
    }
    let mut listed: Vec<(&[u8], u64, u64)> = sizes
        .iter()
        .filter(|(k, (b, _))| {
            *b > 0
                && index.get(k).is_some_and(|(_, n)| n.kind.is_dir())
                && biggest_child.get(*k).copied().unwrap_or(0) * 2 < *b
        })
        .map(|(k, (b, f))| (*k, *b, *f))
        .collect();
    listed.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    listed.truncate(n);
    let kept: Vec<(&str, &super::Change)> = reports
        .iter()
        .filter(|r| r.rule.starts_with("slim:"))
        .flat_map(|r| r.kept.iter().map(move |c| (r.rule.as_str(), c)))
        .collect();
    listed
        .into_iter()
        .map(|(key, bytes, files)| {
            let path = display_path(key);
            let by = kept.iter().find(|(_, c)| {
                let k = c.path.trim_start_matches('/').as_bytes();
                key == k || is_under(key, k)
            });
            LargeDir {
                path,
                bytes,
                files,
                rule: by.map(|(r, _)| r.to_string()),
                kept_because: by.map(|(_, c)| c.reason.clone()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages() {
        assert_eq!(language("de_DE.UTF-8@euro"), "de");
        assert_eq!(language("pt"), "pt");
        assert_eq!(language("C.utf8"), "C");
    }

    fn file(size: usize) -> crate::index::Node {
        crate::index::Node {
            kind: Kind::File {
                size: size as u64,
                data: crate::index::Data::Bytes(vec![b'x'; size].into()),
            },
            meta: Default::default(),
        }
    }

    fn symlink(target: &str) -> crate::index::Node {
        crate::index::Node {
            kind: Kind::Symlink {
                target: target.as_bytes().to_vec(),
            },
            meta: Default::default(),
        }
    }

    fn run(index: &mut FsIndex, policy: &Policy) -> HashMap<String, RuleReport> {
        slim::apply(
            index,
            &ImageConfig::default(),
            &policy.slim,
            &HashMap::new(),
            &PatternSet::default(),
        )
        .into_iter()
        .map(|r| (r.rule.clone(), r))
        .collect()
    }

    use crate::transform::slim;

    /// A home as users leave it: conda with a hardlinked and a softlinked
    /// environment, a spack root, models, a project with a cache-looking tree.
    fn home() -> FsIndex {
        let mut idx = FsIndex::new();
        let c = "/home/bob/miniconda3";
        idx.put(&format!("{c}/pkgs/urls.txt"), file(10)).unwrap();
        idx.put(&format!("{c}/pkgs/hard-1.0-py_0.conda"), file(3000))
            .unwrap();
        idx.put(&format!("{c}/pkgs/soft-2.0-py_0.tar.bz2"), file(2000))
            .unwrap();
        idx.put(&format!("{c}/pkgs/cache/497deca9.json"), file(500))
            .unwrap();
        for p in ["hard-1.0-py_0", "soft-2.0-py_0"] {
            idx.put(&format!("{c}/pkgs/{p}/info/index.json"), file(7))
                .unwrap();
            idx.put(&format!("{c}/pkgs/{p}/lib/m.py"), file(100))
                .unwrap();
        }
        idx.link(
            &format!("{c}/envs/hard/lib/m.py"),
            &format!("{c}/pkgs/hard-1.0-py_0/lib/m.py"),
        )
        .unwrap();
        idx.put(
            &format!("{c}/envs/soft/lib/m.py"),
            symlink(&format!("{c}/pkgs/soft-2.0-py_0/lib/m.py")),
        )
        .unwrap();
        idx.put("/home/bob/spack/bin/spack", file(5)).unwrap();
        idx.put(
            "/home/bob/spack/var/spack/cache/_source-cache/a.tar.gz",
            file(6000),
        )
        .unwrap();
        idx.put("/home/bob/spack/var/spack/stage/x/f", file(50))
            .unwrap();
        idx.put(
            "/home/bob/spack/opt/spack/linux/gcc/p-1-abc/lib/libp.so",
            file(400),
        )
        .unwrap();
        idx.put("/home/bob/.spack/cache/providers/x.json", file(30))
            .unwrap();
        idx.put("/home/bob/.cache/huggingface/hub/blobs/b", file(9000))
            .unwrap();
        idx.put("/home/bob/.julia/compiled/v1.10/X/a.ji", file(800))
            .unwrap();
        idx.put("/home/bob/.julia/logs/manifest_usage.toml", file(20))
            .unwrap();
        idx.put("/home/bob/results/.cache/pip/notes.txt", file(4))
            .unwrap();
        idx
    }

    #[test]
    fn package_managers_in_a_home() {
        let mut idx = home();
        let r = run(&mut idx, &Policy::new().unwrap());
        let paths = |l: &[crate::transform::Change]| -> Vec<String> {
            l.iter().map(|c| c.path.clone()).collect()
        };
        let c = "/home/bob/miniconda3";
        assert_eq!(
            paths(&r["slim:conda-cache"].removed),
            [
                format!("{c}/pkgs/cache"),
                format!("{c}/pkgs/hard-1.0-py_0.conda"),
                format!("{c}/pkgs/soft-2.0-py_0.tar.bz2"),
            ]
        );
        assert!(
            r["slim:conda-cache"].removed[0]
                .reason
                .contains("inside the protected home entry /home/bob/miniconda3")
        );
        // The hardlinked package goes, its file stays with the env (freeing
        // only info/); the softlinked one stays, with the reason.
        let pkgs = &r["slim:conda-pkgs"];
        assert_eq!(paths(&pkgs.removed), [format!("{c}/pkgs/hard-1.0-py_0")]);
        assert_eq!(pkgs.removed[0].bytes, 7);
        assert!(
            pkgs.removed[0].reason.contains("1 file stays"),
            "{:?}",
            pkgs.removed
        );
        assert_eq!(paths(&pkgs.kept), [format!("{c}/pkgs/soft-2.0-py_0")]);
        assert!(
            pkgs.kept[0]
                .reason
                .contains(&format!("{c}/envs/soft/lib/m.py")),
            "{:?}",
            pkgs.kept
        );
        assert_eq!(pkgs.kept[0].bytes, 107);
        assert!(idx.lookup(&format!("{c}/envs/hard/lib/m.py")).is_some());
        assert!(idx.follow(&format!("{c}/envs/soft/lib/m.py")).is_some());
        assert!(idx.lookup(&format!("{c}/pkgs/urls.txt")).is_some());

        assert_eq!(
            paths(&r["slim:spack-cache"].removed),
            [
                "/home/bob/.spack/cache",
                "/home/bob/spack/var/spack/cache",
                "/home/bob/spack/var/spack/stage"
            ]
        );
        assert!(
            idx.lookup("/home/bob/spack/opt/spack/linux/gcc/p-1-abc/lib/libp.so")
                .is_some()
        );
        assert_eq!(
            paths(&r["slim:julia-logs"].removed),
            ["/home/bob/.julia/logs"]
        );
        // Opt-in rules: nothing removed, what they would remove reported.
        for (rule, p, bytes) in [
            (
                "slim:huggingface-cache",
                "/home/bob/.cache/huggingface",
                9000,
            ),
            ("slim:julia-compiled", "/home/bob/.julia/compiled", 800),
        ] {
            assert!(r[rule].removed.is_empty());
            assert_eq!(paths(&r[rule].kept), [p]);
            assert_eq!(r[rule].kept[0].bytes, bytes);
            assert!(idx.lookup(p).is_some());
        }
        // A cache-looking tree in a project stays, reported as protected.
        let pip = &r["slim:pip-cache"];
        assert!(pip.removed.is_empty());
        assert!(
            pip.kept[0].reason.contains("protected home entry"),
            "{:?}",
            pip.kept
        );

        // The size report: the model cache's blobs first, with its rule.
        let big = largest_dirs(&idx, &r.values().cloned().collect::<Vec<_>>(), 3);
        assert_eq!(big[0].path, "/home/bob/.cache/huggingface/hub/blobs");
        assert_eq!((big[0].bytes, big[0].files), (9000, 1));
        assert_eq!(big[0].rule.as_deref(), Some("slim:huggingface-cache"));
        assert!(big.windows(2).all(|w| w[0].bytes >= w[1].bytes));
    }

    #[test]
    fn opt_in_rules_turn_on() {
        let mut p = Policy::new().unwrap();
        p.enable("huggingface-cache", "--enable-slim huggingface-cache", "")
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("site.yaml");
        std::fs::write(&f, "slim:\n  enable: [julia-compiled]\n").unwrap();
        p.apply_file(&f).unwrap();
        let mut idx = home();
        let r = run(&mut idx, &p);
        assert_eq!(r["slim:huggingface-cache"].bytes_removed(), 9000);
        assert_eq!(r["slim:julia-compiled"].bytes_removed(), 800);
        assert!(r["slim:torch-hub"].warnings[0].contains("opt-in, off"));
        // A disable anywhere in the chain holds over an enable.
        std::fs::write(&f, "slim:\n  disable: [julia-compiled]\n").unwrap();
        let mut q = p.clone();
        q.apply_file(&f).unwrap();
        let mut idx = home();
        let r = run(&mut idx, &q);
        assert!(r["slim:julia-compiled"].removed.is_empty());
        assert!(r["slim:julia-compiled"].warnings[0].contains("disabled by"));
        assert_eq!(r["slim:julia-compiled"].bytes_kept(), 800);
        let e = p
            .enable("docs", "--enable-slim docs", "")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--enable-slim docs") && e.contains("runs by default"),
            "{e}"
        );
        std::fs::write(&f, "slim:\n  enable: [models]\n").unwrap();
        let e = Policy::new()
            .unwrap()
            .apply_file(&f)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("slim.enable: models")
                && e.contains("no such slim rule")
                && e.contains("torch-hub"),
            "{e}"
        );
    }

    #[test]
    fn largest_dirs_count_hardlinks_once_and_give_way_to_a_big_child() {
        let mut idx = FsIndex::new();
        idx.put("/a/b/big", file(1000)).unwrap();
        idx.put("/a/small", file(10)).unwrap();
        idx.put("/c/x", file(300)).unwrap();
        idx.put("/c/y/z", file(200)).unwrap();
        idx.link("/c/y/z2", "/c/y/z").unwrap();
        idx.link("/c/w", "/c/y/z").unwrap();
        let got: Vec<(String, u64)> = largest_dirs(&idx, &[], 10)
            .into_iter()
            .map(|d| (d.path, d.bytes))
            .collect();
        // / (1510) gives way to /a (1010), which gives way to /a/b; /c holds
        // 500 (z once), its /c/y 200: /c is listed, and /c/y too.
        assert_eq!(
            got,
            [
                ("/a/b".to_string(), 1000),
                ("/c".into(), 500),
                ("/c/y".into(), 200)
            ]
        );
    }

    #[test]
    fn overrides_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("site.yaml");
        std::fs::write(&f, "name: x\nslim:\n  disable: [docs]\n  keep: ['/usr/share/man/man1/**']\n  remove:\n    - name: testdata\n      paths: ['/opt/testdata']\nsecrets:\n  allow_env: [GPG_KEY]\n").unwrap();
        let mut p = Policy::new().unwrap();
        p.apply_file(&f).unwrap();
        assert!(
            p.slim
                .rules
                .iter()
                .any(|r| r.name == "docs" && r.disabled_by.is_some())
        );
        assert!(p.slim.rules.iter().any(|r| r.name == "testdata"));
        assert!(p.secrets.allow_env.contains("GPG_KEY"));

        std::fs::write(&f, "slim:\n  disable: [nonesuch]\n").unwrap();
        let e = Policy::new()
            .unwrap()
            .apply_file(&f)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("slim.disable: nonesuch") && e.contains("no such slim rule"),
            "{e}"
        );
        std::fs::write(&f, "slim:\n  kep: []\n").unwrap();
        let e = Policy::new()
            .unwrap()
            .apply_file(&f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("site.yaml") && e.contains("kep"), "{e}");
    }

    /// Static archives, headers and foreign GPU backends: off unless
    /// enabled (reported with their bytes), then removed also from a home's
    /// Python environment, never from the user's own files.
    #[test]
    fn package_payload_rules_are_opt_in_and_reach_home_installs() {
        use std::collections::BTreeMap;
        let sp = "/home/bob/venv/lib/python3.11/site-packages";
        let build = || {
            let mut idx = FsIndex::new();
            for (p, size) in [
                ("/usr/lib/x86_64-linux-gnu/libz.a", 100),
                ("/usr/lib/x86_64-linux-gnu/libz.so.1", 90),
                ("/usr/include/zlib.h", 30),
                (&format!("{sp}/torch/lib/libtorch_static.a"), 1000),
                (&format!("{sp}/torch/include/ATen/core/Tensor.h"), 40),
                (&format!("{sp}/triton/backends/amd/lib/ockl.bc"), 5000),
                (&format!("{sp}/triton/backends/amd/driver.py"), 70),
                (&format!("{sp}/triton/backends/nvidia/include/cuda.h"), 50),
                (&format!("{sp}/triton/backends/nvidia/driver.py"), 60),
                ("/home/bob/project/mylib.a", 300),
                ("/home/bob/project/kernel.cuh", 20),
                ("/work/analysis/include/cuts.h", 10),
            ] {
                idx.put(p, file(size)).unwrap();
            }
            idx
        };
        let names = ["static-archives", "headers", "foreign-gpu-backends"];

        // Off: nothing goes, each reports what it would remove.
        let mut idx = build();
        let r = run(&mut idx, &Policy::new().unwrap());
        for n in names {
            let rep = &r[&format!("slim:{n}")];
            assert!(rep.removed.is_empty(), "{n}: {:?}", rep.removed);
            assert!(rep.warnings[0].contains("opt-in, off"), "{n}");
        }
        // (The project's own archive is reported as protected, too.)
        assert_eq!(r["slim:static-archives"].bytes_kept(), 1400);
        assert_eq!(r["slim:foreign-gpu-backends"].bytes_kept(), 5070);
        assert_eq!(idx.len(), build().len());

        // On: removed outside homes and inside a home's site-packages; the
        // user's project and protected paths stay, reported.
        let mut p = Policy::new().unwrap();
        for n in names {
            p.enable(n, &format!("--enable-slim {n}"), "").unwrap();
        }
        let mut idx = build();
        let r = run(&mut idx, &p);
        let removed = |n: &str| -> BTreeMap<String, u64> {
            r[&format!("slim:{n}")]
                .removed
                .iter()
                .map(|c| (c.path.clone(), c.bytes))
                .collect()
        };
        let kept = |n: &str| -> Vec<String> {
            r[&format!("slim:{n}")]
                .kept
                .iter()
                .map(|c| c.path.clone())
                .collect()
        };
        assert_eq!(
            removed("static-archives"),
            BTreeMap::from([
                (format!("{sp}/torch/lib/libtorch_static.a"), 1000),
                ("/usr/lib/x86_64-linux-gnu/libz.a".to_string(), 100),
            ])
        );
        assert_eq!(kept("static-archives"), ["/home/bob/project/mylib.a"]);
        assert_eq!(
            removed("headers"),
            BTreeMap::from([
                (format!("{sp}/torch/include/ATen/core/Tensor.h"), 40),
                (format!("{sp}/triton/backends/nvidia/include/cuda.h"), 50),
                ("/usr/include/zlib.h".to_string(), 30),
            ])
        );
        assert_eq!(
            kept("headers"),
            [
                "/home/bob/project/kernel.cuh",
                "/work/analysis/include/cuts.h"
            ]
        );
        assert_eq!(
            removed("foreign-gpu-backends"),
            BTreeMap::from([(format!("{sp}/triton/backends/amd"), 5070)])
        );
        let why = &r["slim:foreign-gpu-backends"].removed[0].reason;
        assert!(
            why.contains("inside the protected home entry /home/bob/venv"),
            "{why}"
        );
        for stays in [
            "/usr/lib/x86_64-linux-gnu/libz.so.1",
            &format!("{sp}/triton/backends/nvidia/driver.py"),
            "/home/bob/project/mylib.a",
        ] {
            assert!(idx.lookup(stays).is_some(), "{stays}");
        }
    }
}
