//! Site profiles: `SITE/site.yaml` (+ `SITE/files/`), found on the sites
//! search path ([`crate::config::search`]): a user's or an admin's profile
//! shadows the built-in one of the same name.
//!
//! A profile can extend others (`extends: common` or a list); the chain is
//! resolved here, once, and every section is merged by the module that owns
//! it, in the order parents first (see site-overlays/README.md):
//! - `ce:` the last profile that has one;
//! - `gpu_queues:` by queue name, field by field: a later profile's queue
//!   of a name sets only the fields it gives (e.g. `driver_version`) over
//!   the earlier one's; the merged queue is then checked as one;
//! - `overlay:` env and labels by name, `files/` by path (transform::overlay);
//! - `slim:` and `secrets:` applied in order (transform::slim).
//!
//! This module owns `ce:` and `gpu_queues:`; unknown keys inside them are
//! errors, because a misspelt key would silently change jobs, and so are
//! unknown top-level keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::search::{Found, SearchPath};
use crate::error::{Error, Result};

/// One site.yaml of a chain.
#[derive(Debug, Clone)]
pub struct SiteDoc {
    pub found: Found,
    /// How messages name it: its path, or `<built-in>/site-overlays/NAME/site.yaml`.
    pub input: PathBuf,
    pub text: String,
}

/// A site and the profiles it extends: parents first, the site itself last.
#[derive(Debug, Clone, Default)]
pub struct SiteChain {
    pub docs: Vec<SiteDoc>,
}

/// The top level of a site.yaml: which sections exist (each is read by its
/// owner); anything else is a typo.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // the sections are only checked for presence here
struct TopLevel {
    #[serde(default)]
    extends: Option<OneOrMany>,
    /// Informational: the site's name.
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    ce: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    gpu_queues: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    overlay: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    slim: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    secrets: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    cvmfs: Option<serde::de::IgnoredAny>,
}

const TOP_HINT: &str = "site.yaml has extends, name, ce, gpu_queues, cvmfs, overlay, slim, secrets (see site-overlays/README.md)";

impl SiteChain {
    /// Find `site` on `search` and every profile it extends.
    pub fn resolve(search: &SearchPath, site: &str) -> Result<SiteChain> {
        let found = search.require(site, &format!("--site {site}"))?;
        let mut chain = SiteChain::default();
        let mut stack = Vec::new();
        chain.add(search, found, &mut stack)?;
        Ok(chain)
    }

    fn add(&mut self, search: &SearchPath, found: Found, stack: &mut Vec<PathBuf>) -> Result<()> {
        let input = found.display_path();
        if stack.contains(&input) {
            let cycle: Vec<String> = stack
                .iter()
                .chain(std::iter::once(&input))
                .map(|p| p.display().to_string())
                .collect();
            return Err(bad(
                stack.last().unwrap_or(&input),
                "extends: ",
                format!("a cycle: {}", cycle.join(" -> ")),
                "a profile cannot extend itself through others",
            ));
        }
        if self.docs.iter().any(|d| d.input == input) {
            return Ok(()); // two parents share a grandparent: merged once
        }
        let text = found.text()?;
        let top: TopLevel =
            serde_saphyr::from_str(&text).map_err(|e| bad(&input, "", e.to_string(), TOP_HINT))?;
        stack.push(input.clone());
        for parent in top.extends.map(|e| e.values()).unwrap_or_default() {
            // A profile that extends its own name builds on the one it shadows.
            let pf = if parent == found.name {
                search.find_from(&parent, found.place_index + 1)
            } else {
                search.find(&parent)
            };
            let Some(pf) = pf else {
                return Err(bad(
                    &input,
                    "extends: ",
                    format!("no site profile '{parent}' to extend"),
                    format!("searched {}", search.describe()),
                ));
            };
            self.add(search, pf, stack)?;
        }
        stack.pop();
        self.docs.push(SiteDoc { found, input, text });
        Ok(())
    }

    /// The site's own profile (the last of the chain).
    pub fn own(&self) -> Option<&SiteDoc> {
        self.docs.last()
    }
}

/// The parts of site.yaml this module reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteProfile {
    /// The site's name (filled in on load).
    #[serde(skip)]
    pub name: String,
    /// Its own site.yaml, as messages name it (filled in on load).
    #[serde(skip)]
    pub path: PathBuf,
    /// The profiles it was merged from (filled in on load).
    #[serde(skip)]
    pub chain: SiteChain,
    #[serde(default)]
    pub ce: Option<CeProfile>,
    /// Read apart, as [`QueuePart`]s merged along the chain.
    #[serde(skip_deserializing)]
    pub gpu_queues: BTreeMap<String, GpuQueue>,
    /// The CVMFS repository the site's worker nodes mount and promoted
    /// images are published into (e.g. a site's own unpacked.* repository).
    #[serde(default)]
    pub cvmfs: Option<SiteCvmfs>,
}

/// A site's `cvmfs:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteCvmfs {
    /// Repository name, as under /cvmfs on the worker nodes.
    pub repo: String,
    #[serde(default)]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CeAuth {
    /// RFC 3820 proxy (VOMS) as TLS client certificate.
    X509,
    /// WLCG/OIDC bearer token.
    Token,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeProfile {
    /// ARC REST base URL, ending in /arex (e.g. https://ce.example.org:443/arex).
    pub endpoint: String,
    /// Credentials the CE accepts, in order of preference.
    #[serde(default = "default_auth")]
    pub auth: Vec<CeAuth>,
    /// Free text for humans: batch system, notes.
    #[serde(default)]
    pub comment: Option<String>,
}

fn default_auth() -> Vec<CeAuth> {
    vec![CeAuth::X509]
}

/// How a job on a queue asks for N GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuRequest {
    /// The queue gives each job exactly `gpus_per_job` GPUs; nothing to ask.
    Fixed,
    /// GPUs follow cores: N GPUs = N × cores_per_gpu slots (HTCondor-style).
    Cores,
    /// A site RTE (`gpu_rte`) takes the GPU count as its first option.
    Rte,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RteSpec {
    pub name: String,
    #[serde(default)]
    pub options: Vec<String>,
}

/// A GPU queue, merged along the chain and checked ([`QueuePart`] is how
/// one site.yaml writes it).
#[derive(Debug, Clone, Serialize)]
pub struct GpuQueue {
    /// e.g. "NVIDIA A100-SXM4-40GB".
    pub gpu_model: String,
    /// Device memory per GPU.
    pub gpu_memory_gb: Option<u32>,
    pub gpu_request: GpuRequest,
    /// `fixed`: what each job gets; otherwise the default when none is asked.
    pub gpus_per_job: u32,
    /// Upper bound for `cores` and `rte` (defaults to gpus_per_job).
    pub max_gpus_per_job: Option<u32>,
    /// `rte`: the RTE whose first option is the GPU count.
    pub gpu_rte: Option<String>,
    /// Cores (xRSL count) that come with one GPU.
    pub cores_per_gpu: u32,
    /// Host memory per GPU in MB; per-core memory = this / cores_per_gpu.
    pub memory_per_gpu_mb: u64,
    /// Longest walltime the queue allows, in hours.
    pub max_walltime_hours: Option<u32>,
    /// RTE that runs the job in a container; its first option is the image
    /// (default ENV/SINGULARITY).
    pub container_rte: String,
    /// RTEs every job on this queue must request.
    pub rtes: Vec<RteSpec>,
    /// Environment every job on this queue gets.
    pub environment: BTreeMap<String, String>,
    /// Further xRSL attributes the site needs, e.g. `rerun: "2"`; each value
    /// is one string or a list of strings, checked like any xRSL.
    pub extra_attributes: BTreeMap<String, OneOrMany>,
    /// NVIDIA driver on the queue's nodes, e.g. "550.54.15" (`nvidia-smi`'s
    /// Driver Version): `gridship smoke` checks the image's CUDA runtime
    /// against it.
    pub driver_version: Option<String>,
    /// The CUDA version that driver supports (`nvidia-smi`'s CUDA Version,
    /// e.g. "12.4"), when the exact driver version is not known.
    pub cuda_driver_version: Option<String>,
    pub comment: Option<String>,
}

/// A GPU queue as one site.yaml writes it: every field optional, so a
/// profile that extends another can give only what differs (a
/// `driver_version`) and take the rest from the parent's queue of the same
/// name. The fields are [`GpuQueue`]'s.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueuePart {
    gpu_model: Option<String>,
    gpu_memory_gb: Option<u32>,
    gpu_request: Option<GpuRequest>,
    gpus_per_job: Option<u32>,
    max_gpus_per_job: Option<u32>,
    gpu_rte: Option<String>,
    cores_per_gpu: Option<u32>,
    memory_per_gpu_mb: Option<u64>,
    max_walltime_hours: Option<u32>,
    container_rte: Option<String>,
    rtes: Option<Vec<RteSpec>>,
    environment: Option<BTreeMap<String, String>>,
    extra_attributes: Option<BTreeMap<String, OneOrMany>>,
    driver_version: Option<String>,
    cuda_driver_version: Option<String>,
    comment: Option<String>,
}

impl QueuePart {
    /// `later`'s fields over these; a field given replaces the earlier value
    /// whole (maps and lists too).
    fn then(self, later: QueuePart) -> QueuePart {
        QueuePart {
            gpu_model: later.gpu_model.or(self.gpu_model),
            gpu_memory_gb: later.gpu_memory_gb.or(self.gpu_memory_gb),
            gpu_request: later.gpu_request.or(self.gpu_request),
            gpus_per_job: later.gpus_per_job.or(self.gpus_per_job),
            max_gpus_per_job: later.max_gpus_per_job.or(self.max_gpus_per_job),
            gpu_rte: later.gpu_rte.or(self.gpu_rte),
            cores_per_gpu: later.cores_per_gpu.or(self.cores_per_gpu),
            memory_per_gpu_mb: later.memory_per_gpu_mb.or(self.memory_per_gpu_mb),
            max_walltime_hours: later.max_walltime_hours.or(self.max_walltime_hours),
            container_rte: later.container_rte.or(self.container_rte),
            rtes: later.rtes.or(self.rtes),
            environment: later.environment.or(self.environment),
            extra_attributes: later.extra_attributes.or(self.extra_attributes),
            driver_version: later.driver_version.or(self.driver_version),
            cuda_driver_version: later.cuda_driver_version.or(self.cuda_driver_version),
            comment: later.comment.or(self.comment),
        }
    }

    /// The whole queue, once every profile has given its part. `path` is the
    /// site's own profile; `from` says which profiles gave parts.
    fn into_queue(self, path: &Path, qn: &str, from: &str) -> Result<GpuQueue> {
        let (
            Some(gpu_model),
            Some(gpu_request),
            Some(gpus_per_job),
            Some(cores_per_gpu),
            Some(memory_per_gpu_mb),
        ) = (
            self.gpu_model.clone(),
            self.gpu_request,
            self.gpus_per_job,
            self.cores_per_gpu,
            self.memory_per_gpu_mb,
        )
        else {
            let missing: Vec<&str> = [
                ("gpu_model", self.gpu_model.is_none()),
                ("gpu_request", self.gpu_request.is_none()),
                ("gpus_per_job", self.gpus_per_job.is_none()),
                ("cores_per_gpu", self.cores_per_gpu.is_none()),
                ("memory_per_gpu_mb", self.memory_per_gpu_mb.is_none()),
            ]
            .into_iter()
            .filter_map(|(k, m)| m.then_some(k))
            .collect();
            return Err(bad(
                path,
                format!("gpu_queues.{qn}: "),
                format!("no {} ({from})", missing.join(", ")),
                "a queue needs gpu_model, gpu_request, gpus_per_job, cores_per_gpu and memory_per_gpu_mb, given here or by a profile this one extends under the same queue name",
            ));
        };
        Ok(GpuQueue {
            gpu_model,
            gpu_memory_gb: self.gpu_memory_gb,
            gpu_request,
            gpus_per_job,
            max_gpus_per_job: self.max_gpus_per_job,
            gpu_rte: self.gpu_rte,
            cores_per_gpu,
            memory_per_gpu_mb,
            max_walltime_hours: self.max_walltime_hours,
            container_rte: self.container_rte.unwrap_or_else(default_container_rte),
            rtes: self.rtes.unwrap_or_default(),
            environment: self.environment.unwrap_or_default(),
            extra_attributes: self.extra_attributes.unwrap_or_default(),
            driver_version: self.driver_version,
            cuda_driver_version: self.cuda_driver_version,
            comment: self.comment,
        })
    }
}

/// The `gpu_queues:` section of one site.yaml.
#[derive(Debug, Default, Deserialize)]
struct QueueSection {
    #[serde(default)]
    gpu_queues: BTreeMap<String, QueuePart>,
}

fn default_container_rte() -> String {
    "ENV/SINGULARITY".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn values(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

impl GpuQueue {
    pub fn max_gpus(&self) -> u32 {
        self.max_gpus_per_job.unwrap_or(self.gpus_per_job)
    }
}

/// A dotted version as numbers ("550.54.15" → [550, 54, 15]): a queue's
/// `driver_version` and `cuda_driver_version`.
pub fn parse_version(s: &str) -> Option<Vec<u32>> {
    let v: Option<Vec<u32>> = s.trim().split('.').map(|p| p.parse().ok()).collect();
    v.filter(|v| !v.is_empty())
}

fn bad(
    path: &Path,
    place: impl Into<String>,
    reason: impl Into<String>,
    hint: impl Into<String>,
) -> Error {
    Error::BadInput {
        input: path.display().to_string(),
        place: place.into(),
        reason: reason.into(),
        hint: Some(hint.into()),
    }
}

impl SiteProfile {
    /// Find `site` on the sites search path and merge its chain.
    pub fn load(search: &SearchPath, site: &str) -> Result<SiteProfile> {
        SiteProfile::from_chain(site, SiteChain::resolve(search, site)?)
    }

    /// Merge the `ce:` and `gpu_queues:` sections of a chain, then check them.
    pub fn from_chain(site: &str, chain: SiteChain) -> Result<SiteProfile> {
        let mut merged = SiteProfile {
            name: site.to_string(),
            path: PathBuf::new(),
            chain: SiteChain::default(),
            ce: None,
            gpu_queues: BTreeMap::new(),
            cvmfs: None,
        };
        for doc in &chain.docs {
            let p = Self::parse_unchecked(&doc.input, &doc.text)?;
            if p.ce.is_some() {
                merged.ce = p.ce;
            }
            if p.cvmfs.is_some() {
                merged.cvmfs = p.cvmfs;
            }
        }
        merged.path = chain.own().map(|d| d.input.clone()).unwrap_or_default();
        merged.gpu_queues = Self::merge_queues(
            chain
                .docs
                .iter()
                .map(|d| (d.input.as_path(), d.text.as_str())),
            &merged.path,
        )?;
        merged.chain = chain;
        merged.check()?;
        Ok(merged)
    }

    fn parse_unchecked(path: &Path, text: &str) -> Result<SiteProfile> {
        serde_saphyr::from_str(text).map_err(|e| {
            bad(
                path,
                "",
                format!("{e}"),
                "see site-overlays/README.md for the ce: and gpu_queues: keys",
            )
        })
    }

    /// The `gpu_queues:` of profiles (path, text), parents first, merged
    /// field by field per queue name; each whole queue is made as `own`'s.
    fn merge_queues<'a>(
        docs: impl Iterator<Item = (&'a Path, &'a str)>,
        own: &Path,
    ) -> Result<BTreeMap<String, GpuQueue>> {
        let mut parts: BTreeMap<String, (QueuePart, Vec<String>)> = BTreeMap::new();
        for (path, text) in docs {
            let section: QueueSection = serde_saphyr::from_str(text).map_err(|e| {
                bad(
                    path,
                    "",
                    format!("{e}"),
                    "see site-overlays/README.md for the gpu_queues: keys",
                )
            })?;
            for (qn, part) in section.gpu_queues {
                let (before, mut from) = parts.remove(&qn).unwrap_or_default();
                from.push(path.display().to_string());
                parts.insert(qn, (before.then(part), from));
            }
        }
        parts
            .into_iter()
            .map(|(qn, (part, from))| {
                let from = if from.len() == 1 {
                    format!("the queue is given by {} alone", from[0])
                } else {
                    format!("merged from {}", from.join(", "))
                };
                part.into_queue(own, &qn, &from).map(|q| (qn, q))
            })
            .collect()
    }

    /// One profile's text on its own (no `extends:`), checked.
    pub fn parse(path: &Path, site: &str, text: &str) -> Result<SiteProfile> {
        let mut p = Self::parse_unchecked(path, text)?;
        p.name = site.to_string();
        p.path = path.to_path_buf();
        p.gpu_queues = Self::merge_queues(std::iter::once((path, text)), path)?;
        p.check()?;
        Ok(p)
    }

    fn check(&self) -> Result<()> {
        if let Some(ce) = &self.ce {
            if !(ce.endpoint.starts_with("https://")
                && ce.endpoint.trim_end_matches('/').ends_with("/arex"))
            {
                return Err(bad(
                    &self.path,
                    "ce.endpoint: ",
                    format!("'{}' is not an ARC REST base URL", ce.endpoint),
                    "write https://HOST[:PORT]/arex",
                ));
            }
            if ce.auth.is_empty() {
                return Err(bad(
                    &self.path,
                    "ce.auth: ",
                    "no credential type",
                    "list x509 and/or token",
                ));
            }
        }
        for (qn, q) in &self.gpu_queues {
            let place = format!("gpu_queues.{qn}: ");
            let fail = |r: String, h: &str| Err(bad(&self.path, place.clone(), r, h));
            if qn.is_empty() || qn.chars().any(char::is_whitespace) {
                return fail(
                    format!("queue name '{qn}' is not an arc.conf queue name"),
                    "use the [queue:NAME] of the CE",
                );
            }
            if q.gpus_per_job == 0 || q.cores_per_gpu == 0 || q.memory_per_gpu_mb == 0 {
                return fail(
                    "gpus_per_job, cores_per_gpu and memory_per_gpu_mb must be positive".into(),
                    "give the queue's real numbers",
                );
            }
            if q.max_gpus() < q.gpus_per_job {
                return fail(
                    "max_gpus_per_job is below gpus_per_job".into(),
                    "raise max_gpus_per_job",
                );
            }
            match q.gpu_request {
                GpuRequest::Fixed if q.max_gpus_per_job.is_some_and(|m| m != q.gpus_per_job) => {
                    return fail(
                        "gpu_request fixed cannot have a different max_gpus_per_job".into(),
                        "drop max_gpus_per_job or use gpu_request: cores|rte",
                    );
                }
                GpuRequest::Rte if q.gpu_rte.is_none() => {
                    return fail(
                        "gpu_request rte needs gpu_rte".into(),
                        "name the site RTE that takes the GPU count, e.g. gpu_rte: ENV/GPU",
                    );
                }
                GpuRequest::Fixed | GpuRequest::Cores if q.gpu_rte.is_some() => {
                    return fail(
                        "gpu_rte is only read with gpu_request: rte".into(),
                        "remove gpu_rte or set gpu_request: rte",
                    );
                }
                _ => {}
            }
            for (key, v) in [
                ("driver_version", &q.driver_version),
                ("cuda_driver_version", &q.cuda_driver_version),
            ] {
                if let Some(v) = v
                    && parse_version(v).is_none()
                {
                    return Err(bad(
                        &self.path,
                        format!("gpu_queues.{qn}.{key}: "),
                        format!("'{v}' is not a dotted version"),
                        "quote it as nvidia-smi prints it, e.g. driver_version: \"550.54.15\", cuda_driver_version: \"12.4\"",
                    ));
                }
            }
            if q.memory_per_gpu_mb < u64::from(q.cores_per_gpu) {
                return fail(
                    "memory_per_gpu_mb is below one MB per core".into(),
                    "memory_per_gpu_mb is host RAM per GPU in MB",
                );
            }
        }
        Ok(())
    }

    pub fn queue(&self, name: &str) -> Result<&GpuQueue> {
        self.gpu_queues.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.gpu_queues.keys().map(String::as_str).collect();
            bad(
                &self.path,
                "gpu_queues: ",
                format!("site '{}' has no GPU queue '{name}'", self.name),
                if known.is_empty() {
                    "this site lists no GPU queues; add one under gpu_queues: or pick another site"
                        .to_string()
                } else {
                    format!("GPU queues here: {}", known.join(", "))
                },
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
name: example
overlay: {env: {A: "1"}}
ce:
  endpoint: https://ce.example.org:443/arex
  auth: [token, x509]
gpu_queues:
  gpu:
    gpu_model: NVIDIA A100
    gpu_request: cores
    gpus_per_job: 1
    max_gpus_per_job: 4
    cores_per_gpu: 8
    memory_per_gpu_mb: 32000
    extra_attributes:
      rerun: "2"
"#;

    #[test]
    fn parses_and_leaves_other_sections_to_their_owners() {
        let p = SiteProfile::parse(Path::new("s.yaml"), "example", OK).unwrap();
        assert_eq!(p.ce.unwrap().auth, vec![CeAuth::Token, CeAuth::X509]);
        let q = &p.gpu_queues["gpu"];
        assert_eq!((q.max_gpus(), q.cores_per_gpu), (4, 8));
        assert_eq!(q.container_rte, "ENV/SINGULARITY");
    }

    #[test]
    fn unknown_key_in_our_section_is_an_error() {
        let text = OK.replace("cores_per_gpu: 8", "cores_per_gpu: 8\n    gpus: 2");
        let e = SiteProfile::parse(Path::new("s.yaml"), "example", &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gpus"), "{e}");
        let text = OK.replace("auth: [token, x509]", "auth: [token, x509]\n  endpiont: x");
        assert!(SiteProfile::parse(Path::new("s.yaml"), "example", &text).is_err());
    }
}
