//! Slim: remove what a batch job never reads. Every rule is named and has
//! its own report line, so a site can see and tune what went; overrides
//! come from the site (`slim:` in site.yaml), the recipe (`protected_paths`
//! and `slim:` in recipe.yaml) and the command line (`--keep`).
//!
//! Never removed: protected paths (the user's projects: /work, the visible
//! entries of home directories; configurable), `--keep` patterns, and
//! `__pycache__` (a read-only image would recompile on every run).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::Deserialize;

use super::paths::{PathPattern, PatternSet};
use super::scan::Finding;
use super::secrets::SecretsPolicy;
use super::{RuleReport, remove_where};
use crate::image::ImageConfig;
use crate::index::{FsIndex, Kind, NodeId};
use crate::{Error, Result};

/// How a rule picks paths.
#[derive(Debug, Clone)]
enum Picker {
    Paths {
        patterns: PatternSet,
        except: PatternSet,
        files_only: bool,
    },
    Locales,
    CoreDumps,
}

#[derive(Debug, Clone)]
pub struct SlimRule {
    pub name: String,
    pub description: String,
    picker: Picker,
    /// Who turned it off, if someone did.
    pub disabled_by: Option<String>,
}

/// The rules with their overrides applied.
#[derive(Debug, Clone)]
pub struct SlimPolicy {
    pub rules: Vec<SlimRule>,
    pub keep: PatternSet,
    pub protect: PatternSet,
    pub locales: BTreeSet<String>,
}

/// Paths of a user's work that slimming never touches.
pub const DEFAULT_PROTECT: &[&str] = &[
    "/work",
    "/project",
    "/projects",
    "/data",
    "/home/*/[!.]*",
    "/root/[!.]*",
];

/// Python bytecode caches stay: a read-only image cannot write them.
const ALWAYS_KEEP: &[&str] = &["**/__pycache__"];

fn conda_patterns() -> Vec<String> {
    let roots = [
        "/opt/conda",
        "**/miniconda3",
        "**/miniforge3",
        "**/mambaforge",
        "**/anaconda3",
        "**/.conda",
    ];
    let mut out: Vec<String> = roots
        .iter()
        .flat_map(|r| {
            ["pkgs/*.tar.bz2", "pkgs/*.conda", "pkgs/cache"]
                .iter()
                .map(move |s| format!("{r}/{s}"))
        })
        .collect();
    out.push("**/.cache/conda".into());
    out
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
            },
            disabled_by: None,
        })
    };
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
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
            "conda-cache",
            "conda package tarballs and index cache (as `conda clean --tarballs --index-cache`)",
            conda_patterns(),
            &[],
            false,
        )?,
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
        },
        SlimRule {
            name: "core-dumps".into(),
            description: "ELF core dumps (found by content, whatever the name)".into(),
            picker: Picker::CoreDumps,
            disabled_by: None,
        },
        paths(
            "tmp",
            "temporary directories' contents",
            v(&["/tmp/*", "/var/tmp/*"]),
            &[],
            false,
        )?,
        paths("logs", "log files", v(&["/var/log/**"]), &[], true)?,
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
        let mut keep = PatternSet::default();
        for p in ALWAYS_KEEP {
            keep.push(PathPattern::new(p, "built-in kept paths")?);
        }
        Ok(Policy {
            slim: SlimPolicy {
                rules: builtin()?,
                keep,
                protect,
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
            hint: Some("slim: takes disable, keep, protect, locales, remove; secrets: takes allow, allow_env".into()),
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
                },
                name: r.name,
                disabled_by: None,
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
                },
                disabled_by: None,
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
    let kept = |key: &[u8]| {
        policy.protect.covering(key).is_some()
            || policy.keep.covering(key).is_some()
            || spare.covering(key).is_some()
    };
    let mut reports = Vec::new();
    for rule in &policy.rules {
        let mut report = RuleReport::new(&format!("slim:{}", rule.name), &rule.description);
        if let Some(by) = &rule.disabled_by {
            report.warnings.push(format!("disabled by {by}"));
            reports.push(report);
            continue;
        }
        match &rule.picker {
            Picker::Paths {
                patterns,
                except,
                files_only,
            } => remove_where(
                index,
                &mut report,
                |key, _, node| {
                    if *files_only && !matches!(node.kind, Kind::File { .. }) {
                        return None;
                    }
                    patterns.matching(key).map(|p| p.text.clone())
                },
                |key| kept(key) || except.covering(key).is_some(),
            ),
            Picker::Locales => remove_where(
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
                        .then(|| format!("locale {name} not configured"))
                },
                kept,
            ),
            Picker::CoreDumps => remove_where(
                index,
                &mut report,
                |_, id, _| {
                    matches!(findings.get(&id), Some(Finding::CoreDump))
                        .then(|| "ELF core dump".to_string())
                },
                kept,
            ),
        }
        reports.push(report);
    }
    reports
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
}
