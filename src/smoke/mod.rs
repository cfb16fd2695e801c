//! GPU smoke tests: prove an image will run on a site's GPUs before any job
//! is sent (`gridship smoke`).
//!
//! A suite ([`suite::Suite`], YAML) lists named checks. Static checks
//! ([`statics`]) read the merged index only and run everywhere; run checks
//! ([`runtime`]) execute a command inside the image with a backend. Every
//! check gets one report line ([`CheckResult`]): pass, fail or skip, a
//! detail and its time. Without a visible GPU a check that needs one fails
//! with "no GPU visible: ..."; with `allow_no_gpu` it is skipped, never
//! passed.

pub mod cuda;
pub mod nvsmi;
pub mod report;
pub mod runtime;
pub mod statics;
pub mod suite;

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Result;
use crate::image::Image;
use crate::index::FsIndex;
use crate::site::GpuQueue;
use runtime::{Backend, Runner};
use statics::ImageFacts;
use suite::{Check, CheckKind, Suite};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub kind: &'static str,
    pub status: Status,
    pub detail: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub image: String,
    pub suite: String,
    /// The suite file read (includes are listed in it).
    pub suite_path: String,
    /// Why this suite ran, when the caller says (`gridship smoke` does:
    /// "--suite", "recipe NAME (--recipe)", "recipe NAME (label
    /// gridship.recipe)", "default (...)").
    pub suite_chosen_by: Option<String>,
    pub backend: &'static str,
    /// "SITE/QUEUE" of every GPU queue checked against.
    pub queues: Vec<String>,
    pub gpu: Option<String>,
    pub checks: Vec<CheckResult>,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub seconds: f64,
    pub facts: ImageFacts,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}

pub struct Options {
    pub backend: Backend,
    /// The apptainer program for the apptainer backend (None: on PATH).
    pub apptainer: Option<std::path::PathBuf>,
    pub allow_no_gpu: bool,
    /// (site, queue name, queue) the CUDA check compares with.
    pub queues: Vec<(String, String, GpuQueue)>,
    /// Whether a GPU is visible (Ok: what was seen; Err: why not). Tests
    /// and callers may decide it; [`runtime::gpu_visible`] by default.
    pub gpu: std::result::Result<String, String>,
}

fn cut(s: &str, n: usize) -> String {
    let s = s.trim();
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

/// Judge a run check's output.
pub fn judge(check: &Check, out: &runtime::Output, facts: &ImageFacts) -> (Status, String) {
    let tail = || {
        let e = cut(&out.stderr, 300);
        if e.is_empty() {
            String::new()
        } else {
            format!("; stderr: {e}")
        }
    };
    if out.timed_out {
        return (
            Status::Fail,
            format!("timed out after {}s{}", check.timeout_s, tail()),
        );
    }
    let e = &check.expect;
    if out.code != Some(e.exit) {
        return (
            Status::Fail,
            format!(
                "exit status {} (expected {}){}",
                out.code
                    .map_or("none (killed by a signal)".into(), |c| c.to_string()),
                e.exit,
                tail()
            ),
        );
    }
    if let Some(want) = &e.stdout_contains
        && !out.stdout.contains(want.as_str())
    {
        return (
            Status::Fail,
            format!("stdout lacks {want:?}: {}", cut(&out.stdout, 300)),
        );
    }
    if let Some(re) = &e.stdout_regex {
        let ok = regex::RegexBuilder::new(re)
            .multi_line(true)
            .build()
            .map(|r| r.is_match(&out.stdout))
            .unwrap_or(false);
        if !ok {
            return (
                Status::Fail,
                format!("stdout does not match /{re}/: {}", cut(&out.stdout, 300)),
            );
        }
    }
    if e.nvidia_smi_cuda_covers_image {
        let smi = nvsmi::parse_table(&out.stdout);
        let Some(drv_cuda) = smi.cuda_version.clone() else {
            return (
                Status::Fail,
                format!(
                    "no \"CUDA Version\" in nvidia-smi's output: {}",
                    cut(&out.stdout, 300)
                ),
            );
        };
        let driver = smi.driver_version.clone().unwrap_or_else(|| "?".into());
        return match facts.cuda_version() {
            None => (
                Status::Pass,
                format!(
                    "driver {driver} supports CUDA {drv_cuda}; no CUDA runtime found in the image"
                ),
            ),
            Some(img) => {
                let c = cuda::verdict_for_driver_cuda(img, &drv_cuda);
                let st = if c.verdict == cuda::Verdict::Incompatible {
                    Status::Fail
                } else {
                    Status::Pass
                };
                (
                    st,
                    format!("driver {driver}: {}: {}", c.verdict.name(), c.why),
                )
            }
        };
    }
    let first = out
        .stdout
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    (Status::Pass, cut(first, 200))
}

/// Run a suite on an image.
pub fn run(image: &Image, index: &FsIndex, suite: &Suite, opts: &Options) -> Result<Report> {
    let started = Instant::now();
    let facts = statics::gather(index, image)?;
    let mut checks = Vec::new();
    let mut runner: Option<std::result::Result<Runner, String>> = None;
    for c in &suite.checks {
        let t = Instant::now();
        let (status, detail) = match c.kind {
            CheckKind::Static => statics::run_check(&c.name, &facts, &opts.queues),
            CheckKind::Run => {
                if let (true, Err(why)) = (c.needs_gpu, &opts.gpu) {
                    if opts.allow_no_gpu {
                        (
                            Status::Skip,
                            format!("no GPU visible: {why} (--allow-no-gpu)"),
                        )
                    } else {
                        (Status::Fail, format!("no GPU visible: {why}"))
                    }
                } else {
                    let r = runner.get_or_insert_with(|| {
                        Runner::prepare(opts.backend, opts.apptainer.as_deref(), index, image)
                            .map_err(|e| e.to_string())
                    });
                    match r {
                        Err(e) => (
                            Status::Fail,
                            format!("{} backend: {e}", opts.backend.name()),
                        ),
                        Ok(r) => {
                            let argv = c.command.as_ref().map(|c| c.argv()).unwrap_or_default();
                            match r.run(&argv, Duration::from_secs(c.timeout_s)) {
                                Ok(out) => judge(c, &out, &facts),
                                Err(e) => (Status::Fail, e.to_string()),
                            }
                        }
                    }
                }
            }
        };
        checks.push(CheckResult {
            name: c.name.clone(),
            kind: c.kind.name(),
            status,
            detail,
            seconds: t.elapsed().as_secs_f64(),
        });
    }
    if let Some(Ok(mut r)) = runner
        && let Err(e) = r.cleanup()
    {
        checks.push(CheckResult {
            name: "cleanup".into(),
            kind: "run",
            status: Status::Fail,
            detail: e.to_string(),
            seconds: 0.0,
        });
    }
    let count = |s| checks.iter().filter(|c| c.status == s).count();
    Ok(Report {
        image: image.name.clone(),
        suite: suite.name.clone(),
        suite_path: suite.path.display().to_string(),
        suite_chosen_by: None,
        backend: opts.backend.name(),
        queues: opts
            .queues
            .iter()
            .map(|(s, q, _)| format!("{s}/{q}"))
            .collect(),
        gpu: opts.gpu.as_ref().ok().cloned(),
        passed: count(Status::Pass),
        failed: count(Status::Fail),
        skipped: count(Status::Skip),
        checks,
        seconds: started.elapsed().as_secs_f64(),
        facts,
    })
}
