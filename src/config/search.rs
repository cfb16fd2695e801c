//! Where named defaults are found: one search path per kind (sites,
//! templates, smoke suites), first match by name wins:
//!
//! 1. the command-line option (a directory),
//! 2. the env var,
//! 3. `$XDG_CONFIG_HOME/gridship/KIND/` (default `~/.config/gridship/KIND/`),
//! 4. `/etc/gridship/KIND/` (`$GRIDSHIP_SYSCONFDIR` relocates `/etc/gridship`),
//! 5. built into the binary.
//!
//! Nothing is looked up relative to the current directory.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::builtin::{self, BuiltinEntry, BuiltinKind};
use crate::error::{Error, Result};

/// What is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `NAME/site.yaml` (+ `NAME/files/`).
    Sites,
    /// `NAME.xrsl`.
    Templates,
    /// `NAME.yaml`.
    Suites,
}

impl Kind {
    /// The directory name below the config directories.
    pub fn subdir(self) -> &'static str {
        match self {
            Kind::Sites => "sites",
            Kind::Templates => "templates",
            Kind::Suites => "smoke-suites",
        }
    }

    pub fn env_var(self) -> &'static str {
        match self {
            Kind::Sites => "GRIDSHIP_SITE_OVERLAYS",
            Kind::Templates => "GRIDSHIP_XRSL_TEMPLATES",
            Kind::Suites => "GRIDSHIP_SMOKE_SUITES",
        }
    }

    pub fn option(self) -> &'static str {
        match self {
            Kind::Sites => "--site-overlays",
            Kind::Templates => "--templates",
            Kind::Suites => "--suites",
        }
    }

    /// What one item is called in messages.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Sites => "site profile",
            Kind::Templates => "xRSL template",
            Kind::Suites => "smoke-test suite",
        }
    }

    /// The repository directory the built-in ones come from.
    fn builtin_root(self) -> &'static str {
        match self {
            Kind::Sites => "site-overlays",
            Kind::Templates => "xrsl-templates",
            Kind::Suites => "smoke-suites",
        }
    }

    fn builtin_tree(self) -> &'static [BuiltinEntry] {
        match self {
            Kind::Sites => builtin::SITES,
            Kind::Templates => builtin::TEMPLATES,
            Kind::Suites => builtin::SUITES,
        }
    }

    /// The file that makes a name an item, relative to the place.
    fn item_file(self, name: &str) -> String {
        match self {
            Kind::Sites => format!("{name}/site.yaml"),
            Kind::Templates => format!("{name}.xrsl"),
            Kind::Suites => format!("{name}.yaml"),
        }
    }

    /// The item name an entry of a place stands for, if it is one.
    fn item_name(self, entry: &str) -> Option<&str> {
        match self {
            Kind::Sites => entry
                .strip_suffix("/site.yaml")
                .filter(|n| !n.contains('/')),
            Kind::Templates => entry.strip_suffix(".xrsl").filter(|n| !n.contains('/')),
            Kind::Suites => entry.strip_suffix(".yaml").filter(|n| !n.contains('/')),
        }
    }
}

/// Where a place on the search path comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// A command-line option.
    Option,
    /// An env var.
    Env,
    /// `$XDG_CONFIG_HOME/gridship`.
    User,
    /// `/etc/gridship`.
    System,
    /// Inside the binary.
    BuiltIn,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Option => "option",
            Origin::Env => "env",
            Origin::User => "user",
            Origin::System => "system",
            Origin::BuiltIn => "built-in",
        })
    }
}

/// One place on a search path.
#[derive(Debug, Clone)]
pub struct Place {
    pub origin: Origin,
    /// None for the built-in place.
    pub dir: Option<PathBuf>,
    /// How the place was given: `--site-overlays DIR`, `$GRIDSHIP_SITE_OVERLAYS`, ...
    pub given_by: String,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.dir {
            Some(d) => write!(f, "{} ({})", d.display(), self.given_by),
            None => f.write_str("built-in"),
        }
    }
}

/// The search path of one kind.
#[derive(Debug, Clone)]
pub struct SearchPath {
    pub kind: Kind,
    pub places: Vec<Place>,
}

/// `$XDG_CONFIG_HOME/gridship` (default `~/.config/gridship`), if a home is known.
pub fn user_config_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    xdg.or_else(|| {
        std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(|h| PathBuf::from(h).join(".config"))
    })
    .map(|d| d.join("gridship"))
}

/// `/etc/gridship`, or `$GRIDSHIP_SYSCONFDIR`.
pub fn system_config_dir() -> PathBuf {
    std::env::var_os("GRIDSHIP_SYSCONFDIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/etc/gridship"), PathBuf::from)
}

impl SearchPath {
    /// The search path for `kind`, with `option` the command line's directory.
    pub fn new(kind: Kind, option: Option<&Path>) -> SearchPath {
        let mut places = Vec::new();
        if let Some(d) = option {
            places.push(Place {
                origin: Origin::Option,
                dir: Some(d.to_path_buf()),
                given_by: kind.option().into(),
            });
        }
        if let Some(v) = std::env::var_os(kind.env_var()).filter(|v| !v.is_empty()) {
            places.push(Place {
                origin: Origin::Env,
                dir: Some(PathBuf::from(v)),
                given_by: format!("${}", kind.env_var()),
            });
        }
        if let Some(d) = user_config_dir() {
            places.push(Place {
                origin: Origin::User,
                dir: Some(d.join(kind.subdir())),
                given_by: "user config".into(),
            });
        }
        places.push(Place {
            origin: Origin::System,
            dir: Some(system_config_dir().join(kind.subdir())),
            given_by: "system config".into(),
        });
        places.push(Place {
            origin: Origin::BuiltIn,
            dir: None,
            given_by: "built-in".into(),
        });
        SearchPath { kind, places }
    }

    /// Find `name`: the first place that has it.
    pub fn find(&self, name: &str) -> Option<Found> {
        self.find_from(name, 0)
    }

    /// Find `name` in the places from index `start` on (a profile that
    /// extends the one it shadows looks further down the path).
    pub fn find_from(&self, name: &str, start: usize) -> Option<Found> {
        if !valid_name(name) {
            return None;
        }
        let rel = self.kind.item_file(name);
        for (i, place) in self.places.iter().enumerate().skip(start) {
            let hit = match &place.dir {
                Some(d) => d.join(&rel).is_file(),
                None => builtin::file(self.kind.builtin_tree(), &rel).is_some(),
            };
            if hit {
                return Some(Found {
                    kind: self.kind,
                    name: name.to_string(),
                    place: place.clone(),
                    place_index: i,
                });
            }
        }
        None
    }

    /// Find `name` or say where it was looked for and what exists.
    pub fn require(&self, name: &str, input: &str) -> Result<Found> {
        if let Some(f) = self.find(name) {
            return Ok(f);
        }
        let known: Vec<String> = self.list().into_iter().map(|l| l.name).collect();
        let reason = if valid_name(name) {
            format!("no {} '{name}'", self.kind.noun())
        } else {
            format!("'{name}' is not a {} name", self.kind.noun())
        };
        Err(Error::BadInput {
            input: input.to_string(),
            place: String::new(),
            reason: format!("{reason}; searched {}", self.describe()),
            hint: Some(if known.is_empty() {
                format!(
                    "put {} in one of those directories",
                    self.kind.item_file(name)
                )
            } else {
                format!("known: {}", known.join(", "))
            }),
        })
    }

    /// The places, in order, for messages.
    pub fn describe(&self) -> String {
        self.places
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every item on the path: the one used, and the places it shadows.
    pub fn list(&self) -> Vec<Listed> {
        let mut by_name: BTreeMap<String, Listed> = BTreeMap::new();
        for (i, place) in self.places.iter().enumerate() {
            for name in self.names_in(place) {
                match by_name.get_mut(&name) {
                    Some(l) => l.shadows.push(place.to_string()),
                    None => {
                        let found = Found {
                            kind: self.kind,
                            name: name.clone(),
                            place: place.clone(),
                            place_index: i,
                        };
                        by_name.insert(
                            name.clone(),
                            Listed {
                                name,
                                found,
                                shadows: Vec::new(),
                            },
                        );
                    }
                }
            }
        }
        by_name.into_values().collect()
    }

    fn names_in(&self, place: &Place) -> Vec<String> {
        let mut names: Vec<String> = match &place.dir {
            Some(d) => std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter_map(|n| {
                    let rel = match self.kind {
                        Kind::Sites => format!("{n}/site.yaml"),
                        _ => n.clone(),
                    };
                    let name = self.kind.item_name(&rel)?.to_string();
                    (valid_name(&name) && d.join(&rel).is_file()).then_some(name)
                })
                .collect(),
            None => self
                .kind
                .builtin_tree()
                .iter()
                .filter(|e| matches!(e.kind, BuiltinKind::File { .. }))
                .filter_map(|e| self.kind.item_name(e.path).map(str::to_string))
                .collect(),
        };
        names.sort();
        names.dedup();
        names
    }
}

/// Names are single path components that are not hidden.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && !name.starts_with('.') && !name.contains('\0')
}

/// One item on a search path, as listed.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub found: Found,
    /// Places further down the path that have the same name.
    pub shadows: Vec<String>,
}

/// An item found on a search path.
#[derive(Debug, Clone)]
pub struct Found {
    pub kind: Kind,
    pub name: String,
    pub place: Place,
    /// Its index on the search path.
    pub place_index: usize,
}

/// One entry of a found tree (a site's `files/`).
#[derive(Debug, Clone)]
pub struct TreeEntry {
    /// Relative to the tree's root.
    pub path: PathBuf,
    pub data: TreeData,
}

#[derive(Debug, Clone)]
pub enum TreeData {
    Dir,
    File {
        bytes: Cow<'static, [u8]>,
        exec: bool,
    },
    Symlink(PathBuf),
}

impl Found {
    /// The item file's path, or `<built-in>/ROOT/FILE`: how messages name it.
    pub fn display_path(&self) -> PathBuf {
        let rel = self.kind.item_file(&self.name);
        match &self.place.dir {
            Some(d) => d.join(rel),
            None => Path::new("<built-in>")
                .join(self.kind.builtin_root())
                .join(rel),
        }
    }

    /// Where it comes from, for listings: a directory or `built-in`.
    pub fn location(&self) -> String {
        match &self.place.dir {
            Some(_) => {
                let p = self.display_path();
                match self.kind {
                    Kind::Sites => p.parent().unwrap_or(&p).display().to_string(),
                    _ => p.display().to_string(),
                }
            }
            None => "built-in".into(),
        }
    }

    /// The item file's text.
    pub fn text(&self) -> Result<String> {
        let rel = self.kind.item_file(&self.name);
        match &self.place.dir {
            Some(d) => {
                let p = d.join(rel);
                std::fs::read_to_string(&p)
                    .map_err(|e| Error::io_path(&p, &format!("reading {}", self.kind.noun()), e))
            }
            None => {
                let data = builtin::file(self.kind.builtin_tree(), &rel)
                    .ok_or_else(|| Error::Other(format!("built-in {rel} vanished")))?;
                String::from_utf8(data.to_vec()).map_err(|_| {
                    Error::Other(format!("built-in {rel} is not UTF-8 (a build defect)"))
                })
            }
        }
    }

    /// The entries below `sub` of a site's directory (e.g. `files`), parents
    /// before children, sorted by name; empty when there is none.
    pub fn tree(&self, sub: &str) -> Result<Vec<TreeEntry>> {
        match &self.place.dir {
            Some(d) => {
                let root = d.join(&self.name).join(sub);
                let mut out = Vec::new();
                if root.exists() {
                    walk_dir(&root, Path::new(""), &mut out)?;
                }
                Ok(out)
            }
            None => {
                let prefix = format!("{}/{sub}/", self.name);
                Ok(self
                    .kind
                    .builtin_tree()
                    .iter()
                    .filter_map(|e| {
                        let rel = e.path.strip_prefix(&prefix)?;
                        let data = match e.kind {
                            BuiltinKind::Dir => TreeData::Dir,
                            BuiltinKind::File { data, exec } => TreeData::File {
                                bytes: Cow::Borrowed(data),
                                exec,
                            },
                            BuiltinKind::Symlink(t) => TreeData::Symlink(PathBuf::from(t)),
                        };
                        Some(TreeEntry {
                            path: PathBuf::from(rel),
                            data,
                        })
                    })
                    .collect())
            }
        }
    }
}

/// Read a directory tree into entries: files, directories and symlinks only.
fn walk_dir(root: &Path, rel: &Path, out: &mut Vec<TreeEntry>) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io_path(&dir, "reading", e))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io_path(&dir, "reading", e))?;
    names.sort();
    for name in names {
        let entry = TreeEntry::read(root, &rel.join(&name))?;
        let is_dir = matches!(entry.data, TreeData::Dir);
        let child = entry.path.clone();
        out.push(entry);
        if is_dir {
            walk_dir(root, &child, out)?;
        }
    }
    Ok(())
}

impl TreeEntry {
    /// The entry `rel` below `root` on disk (not following a symlink):
    /// a directory, a file with its bytes and executable bit, or a link.
    pub fn read(root: &Path, rel: &Path) -> Result<TreeEntry> {
        use std::os::unix::fs::PermissionsExt;
        let abs = root.join(rel);
        let meta =
            std::fs::symlink_metadata(&abs).map_err(|e| Error::io_path(&abs, "reading", e))?;
        let ft = meta.file_type();
        let data = if ft.is_dir() {
            TreeData::Dir
        } else if ft.is_symlink() {
            TreeData::Symlink(
                std::fs::read_link(&abs).map_err(|e| Error::io_path(&abs, "reading link", e))?,
            )
        } else if ft.is_file() {
            TreeData::File {
                bytes: Cow::Owned(
                    std::fs::read(&abs).map_err(|e| Error::io_path(&abs, "reading", e))?,
                ),
                exec: meta.permissions().mode() & 0o111 != 0,
            }
        } else {
            return Err(Error::BadInput {
                input: abs.display().to_string(),
                place: String::new(),
                reason: "an overlay holds files, directories and symlinks only".into(),
                hint: None,
            });
        };
        Ok(TreeEntry {
            path: rel.to_path_buf(),
            data,
        })
    }
}
