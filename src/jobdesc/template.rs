//! xRSL templates with typed placeholders.
//!
//! A template is plain xRSL. Placeholders are xRSL variables, `$(IMAGE)`,
//! that gridship binds before evaluation (so a template is still valid
//! grammar); each must be declared in a comment with its type:
//!
//! ```text
//! (* @placeholder IMAGE cvmfs-path  the unpacked image directory *)
//! ```
//!
//! An undeclared or unknown placeholder, or a value of the wrong type, is an
//! error with the template's line:column.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::xrsl::{self, ParsedJob};
use super::{Place, Problem, Problems, validate};
use crate::config::search::SearchPath;
use crate::error::{Error, Result};

/// Placeholder types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceholderType {
    /// An absolute path under /cvmfs/.
    CvmfsPath,
    /// A URL the CE can fetch (https://, root://, ...), or `file:///ABS`,
    /// a local file `gridship submit` uploads.
    Url,
    /// Any image reference without whitespace.
    Image,
    /// A positive integer.
    Int,
    /// A name without whitespace (queue, RTE, site).
    Name,
    /// Any text.
    Text,
}

impl PlaceholderType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "cvmfs-path" => Self::CvmfsPath,
            "url" => Self::Url,
            "image" => Self::Image,
            "int" => Self::Int,
            "name" => Self::Name,
            "text" => Self::Text,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::CvmfsPath => "cvmfs-path",
            Self::Url => "url",
            Self::Image => "image",
            Self::Int => "int",
            Self::Name => "name",
            Self::Text => "text",
        }
    }

    fn check(self, v: &str) -> std::result::Result<(), String> {
        let ok = match self {
            Self::CvmfsPath => {
                v.starts_with("/cvmfs/") && v.len() > 7 && !v.contains(char::is_whitespace)
            }
            Self::Url => validate::is_remote_url(v) || validate::local_file_source(v).is_some(),
            Self::Image | Self::Name => !v.is_empty() && !v.contains(char::is_whitespace),
            Self::Int => !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && v != "0",
            Self::Text => true,
        };
        if ok {
            Ok(())
        } else {
            Err(match self {
                Self::CvmfsPath => "an absolute path under /cvmfs/ (e.g. /cvmfs/unpacked.cern.ch/registry.hub.docker.com/org/image:tag)".into(),
                Self::Url => "a URL the CE can fetch (https://..., root://..., davs://...), or file:///ABS/PATH that `gridship submit` uploads".into(),
                Self::Image | Self::Name => "a non-empty value without spaces".into(),
                Self::Int => "a positive whole number".into(),
                Self::Text => unreachable!(),
            })
        }
    }
}

/// The placeholders gridship can fill.
pub const KNOWN_PLACEHOLDERS: &[(&str, &str)] = &[
    ("IMAGE", "the --image argument"),
    ("QUEUE", "the --queue argument"),
    ("SITE", "the --site argument"),
    (
        "CONTAINER_RTE",
        "the queue's container RTE (site.yaml container_rte)",
    ),
    ("GPUS", "GPUs per job"),
    ("CORES", "cores per job (GPUs × cores_per_gpu)"),
    (
        "MEMORY_MB",
        "memory per core in MB (memory_per_gpu_mb / cores_per_gpu)",
    ),
    ("JOBNAME", "a job name derived from the image"),
    (
        "EXECUTABLE",
        "the program the job runs: /bin/sh for --run, the first word after --, or the image's runscript; gridship sets the arguments",
    ),
    (
        "WALLTIME",
        "the --walltime argument (default 6h, at most the queue's max_walltime_hours)",
    ),
];

#[derive(Debug, Clone)]
pub struct Placeholder {
    pub name: String,
    pub ty: PlaceholderType,
    pub description: String,
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Clone)]
pub struct Template {
    /// How errors name it.
    pub input: String,
    pub path: Option<PathBuf>,
    pub text: String,
    pub placeholders: Vec<Placeholder>,
}

impl Template {
    /// `name_or_path`: a file (a value with `/` or ending in .xrsl that is
    /// one), else a name on the templates search path.
    pub fn load(search: &SearchPath, name_or_path: &str) -> Result<Template> {
        let direct = PathBuf::from(name_or_path);
        if (name_or_path.contains('/') || name_or_path.ends_with(".xrsl")) && direct.is_file() {
            let text = std::fs::read_to_string(&direct)
                .map_err(|e| Error::io_path(&direct, "reading template", e))?;
            return Self::from_text(&direct.display().to_string(), Some(direct.clone()), text);
        }
        if name_or_path.contains('/') {
            return Err(Error::bad_input(
                format!("--template {name_or_path}"),
                "no such template file",
            ));
        }
        let name = name_or_path.strip_suffix(".xrsl").unwrap_or(name_or_path);
        let found = search.require(name, &format!("--template {name_or_path}"))?;
        let path = found.display_path();
        let on_disk = found.place.dir.as_ref().map(|_| path.clone());
        Self::from_text(&path.display().to_string(), on_disk, found.text()?)
    }

    pub fn from_text(input: &str, path: Option<PathBuf>, text: String) -> Result<Template> {
        let mut placeholders = Vec::new();
        let mut problems = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let Some(at) = line.find("@placeholder") else {
                continue;
            };
            let rest = &line[at + "@placeholder".len()..];
            let rest = rest.trim_end().trim_end_matches("*)");
            let mut parts = rest.split_whitespace();
            let col = line[..at].chars().count() + 1;
            let (Some(name), Some(ty)) = (parts.next(), parts.next()) else {
                problems.push(Problem {
                    place: Some(Place::LineCol(i + 1, col)),
                    message: "@placeholder needs a name and a type".into(),
                    hint: Some("write (* @placeholder IMAGE cvmfs-path description *)".into()),
                });
                continue;
            };
            let Some(ty) = PlaceholderType::parse(ty) else {
                problems.push(Problem {
                    place: Some(Place::LineCol(i + 1, col)),
                    message: format!("unknown placeholder type '{ty}'"),
                    hint: Some("types: cvmfs-path, url, image, int, name, text".into()),
                });
                continue;
            };
            if !KNOWN_PLACEHOLDERS.iter().any(|(k, _)| *k == name) {
                problems.push(Problem {
                    place: Some(Place::LineCol(i + 1, col)),
                    message: format!("gridship cannot fill placeholder '{name}'"),
                    hint: Some(format!(
                        "placeholders: {}; bind your own values with (rsl_substitution=(\"NAME\" \"value\"))",
                        KNOWN_PLACEHOLDERS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
                    )),
                });
                continue;
            }
            placeholders.push(Placeholder {
                name: name.to_string(),
                ty,
                description: parts.collect::<Vec<_>>().join(" "),
                line: i + 1,
                col,
            });
        }
        if !problems.is_empty() {
            return Err(Problems::new(input, problems).into());
        }
        Ok(Template {
            input: input.to_string(),
            path,
            text,
            placeholders,
        })
    }

    /// Bind the declared placeholders from `values` (type-checked) and read
    /// the template as jobs.
    pub fn instantiate(
        &self,
        values: &BTreeMap<String, String>,
    ) -> std::result::Result<Vec<ParsedJob>, Problems> {
        let mut bound = BTreeMap::new();
        let mut problems = Vec::new();
        for p in &self.placeholders {
            let v = values.get(&p.name).cloned().unwrap_or_default();
            if let Err(want) = p.ty.check(&v) {
                problems.push(Problem {
                    place: Some(Place::LineCol(p.line, p.col)),
                    message: format!(
                        "placeholder {} ({}) gets \"{v}\", which is not {want}",
                        p.name,
                        p.ty.as_str()
                    ),
                    hint: Some(format!(
                        "{} comes from {}",
                        p.name,
                        KNOWN_PLACEHOLDERS
                            .iter()
                            .find(|(k, _)| *k == p.name)
                            .map_or("gridship", |(_, d)| d)
                    )),
                });
            }
            bound.insert(p.name.clone(), v);
        }
        if !problems.is_empty() {
            return Err(Problems::new(&self.input, problems));
        }
        xrsl::read(&self.input, &self.text, &bound)
    }
}
