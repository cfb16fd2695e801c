//! Compute elements: where jobs are submitted, watched, killed, cleaned and
//! their outputs fetched from.
//!
//! Callers (the CLI's submit, status, kill, clean and get, [`retrieve`],
//! [`pressure`]) see a CE only through [`ComputeElement`] and its CE-neutral
//! types; [`connect`] and [`endpoint`] pick the implementation for a CE URL,
//! today always ARC's REST interface ([`arc::ArcRest`]). A second kind
//! (HTCondor-CE) is one more implementation and one more arm there.
//!
//! The job itself is described in [`crate::jobdesc`]; this module depends on
//! it, never the reverse.

pub mod arc;
pub mod auth;
pub mod delegation;
pub mod joblist;
pub mod pressure;
pub mod retrieve;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use auth::{AuthConfig, AuthMode};
pub use joblist::{JobList, JobRecord};

use crate::error::{Error, Result};
use crate::jobdesc::JobSpec;

/// What the trait's methods return. Boxed rather than `async fn` in the
/// trait: [`connect`] picks the CE at run time, so the trait must be
/// dyn-compatible, and a boxed future does that without another crate
/// (async-trait would write the same boxes).
pub type CeFuture<'a, T> = futures_util::future::BoxFuture<'a, Result<T>>;

/// One CE, as every caller uses it.
pub trait ComputeElement: Send + Sync {
    /// The CE as jobs are recorded against it and named in messages (ARC:
    /// the REST base, `https://host:port/arex`).
    fn endpoint(&self) -> &str;

    /// Which credential is in use, for messages.
    fn credential(&self) -> &str;

    /// Submit checked jobs in one request, local inputs read relative to
    /// `base_dir`: one reply per job, in order. An error means the request
    /// as a whole failed (the CE may or may not have made jobs).
    fn submit<'a>(
        &'a self,
        jobs: &'a [JobSpec],
        base_dir: &'a Path,
    ) -> CeFuture<'a, Vec<SubmitReply>>;

    /// The state of several jobs at once.
    fn status<'a>(&'a self, ids: &'a [String]) -> CeFuture<'a, Vec<JobReply>>;

    fn kill<'a>(&'a self, ids: &'a [String]) -> CeFuture<'a, Vec<JobReply>>;

    /// Remove jobs and what they left from the CE.
    fn clean<'a>(&'a self, ids: &'a [String]) -> CeFuture<'a, Vec<JobReply>>;

    /// The IDs of every job the CE holds for this identity.
    fn list_jobs(&self) -> CeFuture<'_, Vec<String>>;

    /// Name and state of jobs (the name the description gave).
    fn job_infos<'a>(&'a self, ids: &'a [String]) -> CeFuture<'a, Vec<JobInfo>>;

    /// Every file and directory a job left for retrieval, directories
    /// before what they hold.
    fn list_outputs<'a>(&'a self, id: &'a str) -> CeFuture<'a, Vec<OutputEntry>>;

    /// Fetch the output `name` of a job into `part`, continuing from what
    /// `part` already holds where the CE can.
    fn fetch<'a>(&'a self, id: &'a str, name: &'a str, part: &'a Path) -> CeFuture<'a, Fetch>;

    /// The names of the CE's own records of a job that [`Self::diagnostic`]
    /// reads (A-REX's control files: errors, diag, ...).
    fn diagnostic_names(&self) -> &'static [&'static str];

    /// One of them; `None` when the CE has none for this job.
    fn diagnostic<'a>(&'a self, id: &'a str, name: &'a str) -> CeFuture<'a, Option<Vec<u8>>>;
}

/// How a job stands, whatever the CE calls its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Waiting: accepted, staging, queued, held.
    Idle,
    Running,
    Finished,
    /// Ended without success: failed, killed, wiped.
    Failed,
    Unknown,
}

impl Phase {
    /// The job has ended: what it left no longer changes.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Finished | Phase::Failed)
    }
}

/// A CE's answer for one job of a bulk request (status, kill, clean).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReply {
    pub id: String,
    /// In HTTP's terms whatever the CE: 2xx done, 404 the CE does not know
    /// the job, anything else refused.
    pub status_code: String,
    pub reason: String,
    /// The job's state in the CE's own words.
    pub state: Option<String>,
    /// `state` in the terms callers decide by; `Unknown` when this job's
    /// request failed.
    pub phase: Phase,
}

impl JobReply {
    pub fn ok(&self) -> bool {
        self.status_code.starts_with('2')
    }

    /// The CE does not know the job (any more).
    pub fn unknown_job(&self) -> bool {
        self.status_code == "404"
    }
}

/// What a CE tells about a job it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    pub id: String,
    pub name: Option<String>,
    /// The job's state in the CE's own words.
    pub state: Option<String>,
}

/// A submitted job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Submitted {
    pub id: String,
    /// The job's URL (ARC: as arcsub prints it).
    pub url: String,
    pub state: Option<String>,
    pub name: Option<String>,
    pub uploaded: Vec<String>,
    /// The credential delegated for the job's data staging.
    pub delegation: Option<String>,
    /// What `gridship get` brings back (outputs kept on the CE).
    pub outputs: Vec<String>,
}

/// The CE's answer for one job of a submission.
pub type SubmitReply = std::result::Result<Submitted, Refusal>;

/// Why a CE did not make a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// In HTTP's terms, as [`JobReply::status_code`].
    pub code: String,
    pub reason: String,
}

/// One entry of a job's outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputEntry {
    /// Relative to the job's directory, `/`-separated.
    pub path: String,
    pub is_dir: bool,
}

/// What [`ComputeElement::fetch`] left in its part file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    /// The bytes the part holds now.
    pub bytes: u64,
    /// An earlier, interrupted fetch was continued.
    pub resumed: bool,
}

/// The CE at `ce` (a URL or a host name), reached with the credential
/// `auth` names. The one place that knows which kinds of CE there are.
pub fn connect(ce: &str, auth: &AuthConfig) -> Result<Box<dyn ComputeElement>> {
    Ok(Box::new(arc::ArcRest::connect(ce, auth)?))
}

/// `ce` as [`ComputeElement::endpoint`] will name it, checked without
/// connecting.
pub fn endpoint(ce: &str) -> Result<String> {
    arc::ce_base(ce)
}

/// A job given as its URL: (the CE's endpoint, the job's ID); `None` when
/// `s` is not a job URL (a bare ID).
pub fn split_job_url(s: &str) -> Result<Option<(String, String)>> {
    arc::split_job_url(s)
}

pub(crate) fn ce_error(ce: &str, detail: impl Into<String>) -> Error {
    Error::CeRequest {
        ce: ce.to_string(),
        detail: detail.into(),
    }
}

/// Submit in one request: the jobs the CE accepted, and a message for each
/// one it refused. An error means the request as a whole failed.
pub async fn submit_each(
    ce: &dyn ComputeElement,
    jobs: &[JobSpec],
    base_dir: &Path,
) -> Result<(Vec<Submitted>, Vec<String>)> {
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for (i, (j, r)) in jobs
        .iter()
        .zip(ce.submit(jobs, base_dir).await?)
        .enumerate()
    {
        match r {
            Ok(s) => accepted.push(s),
            Err(r) => refused.push(format!(
                "job {} ({}): {} {}",
                i + 1,
                j.job_name.as_deref().unwrap_or("unnamed"),
                r.code,
                r.reason
            )),
        }
    }
    Ok((accepted, refused))
}

/// Submit in one request; a job the CE refuses makes the whole call an
/// error (naming the jobs it accepted).
pub async fn submit_all(
    ce: &dyn ComputeElement,
    jobs: &[JobSpec],
    base_dir: &Path,
) -> Result<Vec<Submitted>> {
    let (out, failed) = submit_each(ce, jobs, base_dir).await?;
    if !failed.is_empty() {
        let ok = if out.is_empty() {
            String::new()
        } else {
            format!(
                " ({} other job(s) were accepted: {})",
                out.len(),
                out.iter()
                    .map(|s| s.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(ce_error(
            ce.endpoint(),
            format!("the CE refused {}{ok}", failed.join("; ")),
        ));
    }
    Ok(out)
}
