//! Site profiles: `site-overlays/SITE/site.yaml`.
//!
//! This module owns two sections of that file, `ce:` (how to reach the
//! site's ARC CE) and `gpu_queues:` (how a GPU job is expressed there: ARC
//! has no GPU attribute, so it goes by queue name, cores and site RTEs).
//! Other top-level keys belong to other parts of gridship (image overlay
//! files, env, labels) and are left alone here; unknown keys *inside* these
//! two sections are errors, because a misspelt key would silently change jobs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The parts of site.yaml this module reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteProfile {
    /// Directory name under site-overlays/ (filled in on load).
    #[serde(skip)]
    pub name: String,
    /// Where it was read from (filled in on load).
    #[serde(skip)]
    pub path: PathBuf,
    #[serde(default)]
    pub ce: Option<CeProfile>,
    #[serde(default)]
    pub gpu_queues: BTreeMap<String, GpuQueue>,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuQueue {
    /// e.g. "NVIDIA A100-SXM4-40GB".
    pub gpu_model: String,
    /// Device memory per GPU.
    #[serde(default)]
    pub gpu_memory_gb: Option<u32>,
    pub gpu_request: GpuRequest,
    /// `fixed`: what each job gets; otherwise the default when none is asked.
    pub gpus_per_job: u32,
    /// Upper bound for `cores` and `rte` (defaults to gpus_per_job).
    #[serde(default)]
    pub max_gpus_per_job: Option<u32>,
    /// `rte`: the RTE whose first option is the GPU count.
    #[serde(default)]
    pub gpu_rte: Option<String>,
    /// Cores (xRSL count) that come with one GPU.
    pub cores_per_gpu: u32,
    /// Host memory per GPU in MB; per-core memory = this / cores_per_gpu.
    pub memory_per_gpu_mb: u64,
    /// Longest walltime the queue allows, in hours.
    #[serde(default)]
    pub max_walltime_hours: Option<u32>,
    /// RTE that runs the job in a container; its first option is the image.
    #[serde(default = "default_container_rte")]
    pub container_rte: String,
    /// RTEs every job on this queue must request.
    #[serde(default)]
    pub rtes: Vec<RteSpec>,
    /// Environment every job on this queue gets.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Further xRSL attributes the site needs, e.g. `rerun: "2"`; each value
    /// is one string or a list of strings, checked like any xRSL.
    #[serde(default)]
    pub extra_attributes: BTreeMap<String, OneOrMany>,
    /// NVIDIA driver on the queue's nodes, e.g. "550.54.15" (`nvidia-smi`'s
    /// Driver Version): `gridship smoke` checks the image's CUDA runtime
    /// against it.
    #[serde(default)]
    pub driver_version: Option<String>,
    /// The CUDA version that driver supports (`nvidia-smi`'s CUDA Version,
    /// e.g. "12.4"), when the exact driver version is not known.
    #[serde(default)]
    pub cuda_driver_version: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
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

/// Where site overlays live: `$GRIDSHIP_SITE_OVERLAYS`, else ./site-overlays.
pub fn default_overlays_dir() -> PathBuf {
    std::env::var_os("GRIDSHIP_SITE_OVERLAYS")
        .map_or_else(|| PathBuf::from("site-overlays"), PathBuf::from)
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
    /// Load `DIR/SITE/site.yaml`.
    pub fn load(overlays: &Path, site: &str) -> Result<SiteProfile> {
        if site.is_empty() || site.contains('/') || site.starts_with('.') {
            return Err(Error::bad_input(
                format!("--site {site}"),
                "a site is a directory name under site-overlays/",
            ));
        }
        let path = overlays.join(site).join("site.yaml");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let known = list_sites(overlays);
                return Err(bad(
                    &path,
                    "",
                    format!("no site profile for '{site}'"),
                    if known.is_empty() {
                        format!(
                            "create {} or point GRIDSHIP_SITE_OVERLAYS at the site-overlays directory",
                            path.display()
                        )
                    } else {
                        format!("known sites: {}", known.join(", "))
                    },
                ));
            }
            Err(e) => return Err(Error::io_path(&path, "reading site profile", e)),
        };
        Self::parse(&path, site, &text)
    }

    pub fn parse(path: &Path, site: &str, text: &str) -> Result<SiteProfile> {
        let mut p: SiteProfile = serde_saphyr::from_str(text).map_err(|e| {
            bad(
                path,
                "",
                format!("{e}"),
                "see site-overlays/README.md for the ce: and gpu_queues: keys",
            )
        })?;
        p.name = site.to_string();
        p.path = path.to_path_buf();
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
                    && crate::smoke::cuda::parse_version(v).is_none()
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

/// Site directories that contain a site.yaml.
pub fn list_sites(overlays: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(overlays)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("site.yaml").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
name: example
files: [ignored-by-this-module]
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
    fn parses_and_keeps_other_sections_alone() {
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
