//! `gridship pressure`: keep a CE's queue supplied with copies of one job
//! (pilots), at most `max_running` running and `max_idle` waiting, within
//! limits read again from the config file every cycle.
//!
//! Three parts: the config ([`PressureConfig`], YAML or JSON, unknown keys
//! refused), the cycle's decision as a pure function ([`plan`]) of the limits,
//! what the CE reported and the budget spent, and the loop ([`run`]) that
//! talks to the CE and keeps the job list ([`PressureState`]) on disk.
//!
//! How the loop counts a job: by the [`Phase`] the CE reports (ARC's
//! states map to phases in [`crate::ce::arc::phase`]); a job the CE no
//! longer knows (404) is failed, one whose status could not be read is
//! unknown.
//!
//! Unknown jobs are alive for every cap (they may be waiting or running) but
//! are never reported as idle: an error must not look like a supplied queue.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::joblist::now_unix;
use super::{AuthConfig, ComputeElement, Phase};
use crate::config::search::SearchPath;
use crate::error::{Error, Result};
use crate::jobdesc::{self, JobSpec, retrievable_outputs};
use crate::lockfile::{self, LockFile};

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

fn default_submit_per_cycle() -> u32 {
    10
}
fn default_cycle_seconds() -> u64 {
    60
}
fn default_max_backoff_seconds() -> u64 {
    900
}

/// The pressure config file. Every key is described in README.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PressureConfig {
    /// Job description (xRSL, ADL or gridship JSON) with one job; relative
    /// paths are relative to the config file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<PathBuf>,
    /// Instead of `job`: a promote report (`OUT/NAME.promote.json`); its ADL
    /// description is submitted and its site gives the CE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote: Option<PathBuf>,
    /// Queue to submit to, replacing the description's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// CE REST base (https://HOST[:PORT]/arex, or a host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce: Option<String>,
    /// Site profile whose ce.endpoint is the CE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    pub max_running: u32,
    pub max_idle: u32,
    #[serde(default = "default_submit_per_cycle")]
    pub max_submit_per_cycle: u32,
    #[serde(default = "default_cycle_seconds")]
    pub cycle_seconds: u64,
    /// Longest pause after errors (exponential backoff's cap).
    #[serde(default = "default_max_backoff_seconds")]
    pub max_backoff_seconds: u64,
    /// walltime × slots of all submitted jobs, in hours, after which no more are submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_hours: Option<f64>,
    /// The loop exits this long after it started ("12h", "90m", "PT2H";
    /// a bare number is minutes); its jobs keep running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_after: Option<String>,
    /// Shell command printing how many jobs the payload can use now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demand: Option<String>,
    /// Job name prefix; each job is named PREFIX-TOKEN-SEQ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobname: Option<String>,
    /// The job list (default: CONFIG.state.json next to the config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<PathBuf>,
    /// Fetch finished jobs' outputs into DIR/JOBID/ before cleaning them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get: Option<PathBuf>,
}

impl PressureConfig {
    /// Parse and check a config text (`input` names it in errors).
    pub fn parse(input: &str, text: &str) -> Result<PressureConfig> {
        let json = input.ends_with(".json") || text.trim_start().starts_with('{');
        let cfg: PressureConfig = if json {
            serde_json::from_str(text).map_err(|e| Error::bad_input(input, e.to_string()))?
        } else {
            serde_saphyr::from_str(text).map_err(|e| Error::bad_input(input, e.to_string()))?
        };
        cfg.check(input)?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<PressureConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io_path(path, "reading pressure config", e))?;
        PressureConfig::parse(&path.display().to_string(), &text)
    }

    fn check(&self, input: &str) -> Result<()> {
        let bad = |key: &str, why: String| Err(Error::bad_input(input, format!("{key}: {why}")));
        match (&self.job, &self.promote) {
            (None, None) => {
                return bad(
                    "job",
                    "no job description: set job: FILE or promote: OUT/NAME.promote.json".into(),
                );
            }
            (Some(_), Some(_)) => {
                return bad("promote", "give job: or promote:, not both".into());
            }
            _ => {}
        }
        if self.ce.is_some() && self.site.is_some() {
            return bad("site", "give ce: or site:, not both".into());
        }
        if self.ce.is_none() && self.site.is_none() && self.promote.is_none() {
            return bad(
                "ce",
                "no CE: set ce: https://HOST/arex or site: SITE".into(),
            );
        }
        if let Some(ce) = &self.ce
            && let Err(e) = super::endpoint(ce)
        {
            return bad("ce", e.to_string());
        }
        if self.max_submit_per_cycle == 0 {
            return bad("max_submit_per_cycle", "must be at least 1".into());
        }
        if self.cycle_seconds == 0 || self.cycle_seconds > 86_400 {
            return bad(
                "cycle_seconds",
                format!("{} is not between 1 and 86400", self.cycle_seconds),
            );
        }
        if self.max_backoff_seconds < self.cycle_seconds {
            return bad(
                "max_backoff_seconds",
                format!(
                    "{} is less than cycle_seconds ({})",
                    self.max_backoff_seconds, self.cycle_seconds
                ),
            );
        }
        if let Some(b) = self.budget_hours
            && !(b.is_finite() && b >= 0.0)
        {
            return bad("budget_hours", format!("{b} is not a number of hours ≥ 0"));
        }
        if let Some(s) = &self.stop_after
            && let Err((why, hint)) = jobdesc::xrsl::parse_duration(s)
        {
            return bad("stop_after", format!("{why}; {hint}"));
        }
        if let Some(d) = &self.demand
            && d.trim().is_empty()
        {
            return bad("demand", "the command is empty".into());
        }
        if let Some(n) = &self.jobname
            && (n.is_empty()
                || n.len() > 64
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return bad(
                "jobname",
                format!("'{n}' is not 1-64 characters of [A-Za-z0-9._-]"),
            );
        }
        if let Some(q) = &self.queue
            && q.trim().is_empty()
        {
            return bad("queue", "is empty".into());
        }
        Ok(())
    }

    /// The walltime limit in seconds after which the loop stops.
    pub fn stop_after_s(&self) -> Option<u64> {
        self.stop_after
            .as_deref()
            .and_then(|s| jobdesc::xrsl::parse_duration(s).ok())
    }

    /// The budget in seconds of walltime × slots.
    pub fn budget_s(&self) -> Option<u64> {
        self.budget_hours.map(|h| (h * 3600.0).round() as u64)
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_running: self.max_running,
            max_idle: self.max_idle,
            max_submit_per_cycle: self.max_submit_per_cycle,
        }
    }
}

/// What changed between two configs, one "key: old -> new" per key.
pub fn config_changes(old: &PressureConfig, new: &PressureConfig) -> Vec<String> {
    let (a, b) = (
        serde_json::to_value(old).unwrap_or_default(),
        serde_json::to_value(new).unwrap_or_default(),
    );
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return Vec::new();
    };
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let show = |v: Option<&serde_json::Value>| match v {
        None => "(unset)".to_string(),
        Some(v) => v.to_string(),
    };
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {} -> {}", show(a.get(k)), show(b.get(k))))
        .collect()
}

// ---------------------------------------------------------------------------
// States and the cycle's decision
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_running: u32,
    pub max_idle: u32,
    pub max_submit_per_cycle: u32,
}

/// The loop's own jobs that are alive, as the CE reported them this cycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    pub running: u32,
    pub idle: u32,
    /// Alive but of unknown state: status unreadable, or a submission whose
    /// outcome is not known yet.
    pub unknown: u32,
}

impl Observed {
    pub fn alive(&self) -> u32 {
        self.running + self.idle + self.unknown
    }
}

/// walltime × slots, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    pub limit_s: Option<u64>,
    pub used_s: u64,
    /// What one more job costs.
    pub job_cost_s: u64,
}

/// Why a cycle submitted fewer than it could have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hold {
    /// max_idle jobs wait already.
    IdleFull,
    /// max_running + max_idle jobs are alive.
    AliveFull,
    MaxSubmitPerCycle,
    /// The payload's demand is met.
    Demand,
    Budget,
    /// The CE refused or was unreachable: one job probes it.
    CeRefusing,
    /// Status could not be read: nothing is known, nothing is submitted.
    StatusUnknown,
    /// No usable config, description, CE or demand this cycle.
    NotReady,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub submit: u32,
    /// What bounded `submit`, when something did.
    pub held_by: Option<Hold>,
}

/// How many copies to submit this cycle. `demand`: how many jobs the
/// payload can use (alive ones included); `refusing`: the CE refused or
/// failed the last submission, so at most one job probes it.
pub fn plan(
    limits: &Limits,
    seen: &Observed,
    budget: &Budget,
    demand: Option<u64>,
    refusing: bool,
) -> Plan {
    let mut n = u64::MAX;
    let mut held_by = None;
    let mut cap = |bound: u64, why: Hold| {
        if bound < n {
            n = bound;
            held_by = Some(why);
        }
    };
    // Ties go to the first: the budget and demand say more than a cap.
    if let Some(limit) = budget.limit_s {
        let left = limit.saturating_sub(budget.used_s);
        // A job that costs nothing (no walltime) is always affordable.
        let afford = left.checked_div(budget.job_cost_s).unwrap_or(u64::MAX);
        cap(afford, Hold::Budget);
    }
    if let Some(d) = demand {
        cap(d.saturating_sub(u64::from(seen.alive())), Hold::Demand);
    }
    cap(
        u64::from(limits.max_running + limits.max_idle).saturating_sub(u64::from(seen.alive())),
        Hold::AliveFull,
    );
    // Unknown jobs may be waiting: they take idle room too.
    cap(
        u64::from(limits.max_idle).saturating_sub(u64::from(seen.idle + seen.unknown)),
        Hold::IdleFull,
    );
    cap(
        u64::from(limits.max_submit_per_cycle),
        Hold::MaxSubmitPerCycle,
    );
    if refusing {
        cap(1, Hold::CeRefusing);
    }
    // Filling up to a limit is the normal case, not a hold.
    let held_by = match held_by {
        Some(Hold::IdleFull | Hold::AliveFull | Hold::Demand) if n > 0 => None,
        h => h,
    };
    Plan {
        submit: u32::try_from(n).unwrap_or(u32::MAX),
        held_by,
    }
}

/// The pause before the next cycle after `failures` failed cycles in a
/// row: cycle_seconds doubled per failure, at most `max_s`.
pub fn backoff_s(cycle_s: u64, failures: u32, max_s: u64) -> u64 {
    let factor = 1u64.checked_shl(failures.min(32)).unwrap_or(u64::MAX);
    cycle_s.saturating_mul(factor).min(max_s.max(cycle_s))
}

// ---------------------------------------------------------------------------
// The job list on disk
// ---------------------------------------------------------------------------

/// A job the loop owns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OwnedJob {
    pub id: String,
    pub name: String,
    /// REST base of the CE.
    pub ce: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    pub submitted: u64,
    /// walltime × slots charged to the budget.
    pub cost_s: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
}

/// A submission that was decided and recorded but whose outcome is not
/// known yet (see [`run`] on why it is recorded first).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PendingJob {
    pub name: String,
    pub ce: String,
    pub cost_s: u64,
    pub since: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
}

/// The job list, written atomically on every change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PressureState {
    pub version: u32,
    /// Random, per job list: job names of two lists never collide.
    pub token: String,
    /// The next job's number: never reused, so a name is never reused.
    pub next_seq: u64,
    pub budget_used_s: u64,
    pub submitted_total: u64,
    pub finished_total: u64,
    pub failed_total: u64,
    /// The CE refused or failed the last submission: one job probes it.
    #[serde(default)]
    pub ce_refusing: bool,
    #[serde(default)]
    pub pending: Vec<PendingJob>,
    #[serde(default)]
    pub jobs: Vec<OwnedJob>,
    #[serde(skip)]
    pub path: PathBuf,
}

impl PressureState {
    /// Read the list, or start an empty one when the file does not exist.
    pub fn load_or_new(path: &Path) -> Result<PressureState> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut s: PressureState = serde_json::from_str(&text).map_err(|e| {
                    Error::bad_input(path.display().to_string(), format!("job list: {e}"))
                })?;
                s.path = path.to_path_buf();
                Ok(s)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut b = [0u8; 4];
                rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty())
                    .map_err(|e| Error::Other(format!("getrandom: {e}")))?;
                Ok(PressureState {
                    version: 1,
                    token: hex::encode(b),
                    next_seq: 1,
                    budget_used_s: 0,
                    submitted_total: 0,
                    finished_total: 0,
                    failed_total: 0,
                    ce_refusing: false,
                    pending: Vec::new(),
                    jobs: Vec::new(),
                    path: path.to_path_buf(),
                })
            }
            Err(e) => Err(Error::io_path(path, "reading job list", e)),
        }
    }

    pub fn save(&self) -> Result<()> {
        let mut text = serde_json::to_vec_pretty(self).expect("state serializes");
        text.push(b'\n');
        crate::fsutil::write_atomic(&self.path, &text, 0o644)
    }
}

/// `CONFIG.state.json` beside the config.
pub fn default_state_path(config: &Path) -> PathBuf {
    let mut name = config.file_name().unwrap_or_default().to_os_string();
    name.push(".state.json");
    config.with_file_name(name)
}

// ---------------------------------------------------------------------------
// The loop
// ---------------------------------------------------------------------------

/// What `run` needs besides the config file.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    /// Overrides state: of the config.
    pub state: Option<PathBuf>,
    pub once: bool,
    pub auth: AuthConfig,
    /// Where site profiles are found (site:, promote's site).
    pub sites: SearchPath,
}

/// One cycle, as logged.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CycleReport {
    pub cycle: u64,
    pub running: u32,
    pub idle: u32,
    pub unknown: u32,
    pub submitted: u32,
    pub finished: u32,
    pub failed: u32,
    pub budget_used_hours: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_by: Option<Hold>,
    /// "key: old -> new" for each key that changed since the last cycle.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub config_changes: Vec<String>,
    /// Why the config file was not taken (the last good one is kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Seconds until the next cycle (0 on the last one).
    pub next_cycle_s: u64,
    /// The CE failed or refused this cycle: the next one waits longer.
    pub backing_off: bool,
}

impl CycleReport {
    /// The one log line of a cycle.
    pub fn line(&self) -> String {
        let mut s = format!(
            "cycle {}: running {}, idle {}, submitted {}, finished {}, failed {}",
            self.cycle, self.running, self.idle, self.submitted, self.finished, self.failed
        );
        if self.unknown > 0 {
            s.push_str(&format!(", unknown {}", self.unknown));
        }
        if let Some(h) = self.held_by {
            let h = serde_json::to_value(h).unwrap_or_default();
            s.push_str(&format!(
                "; held by {}",
                h.as_str().unwrap_or_default().replace('_', " ")
            ));
        }
        for e in &self.errors {
            s.push_str(&format!("; error: {e}"));
        }
        s
    }
}

/// The description and CE a cycle submits with.
struct Target {
    spec: JobSpec,
    base_dir: PathBuf,
    ce: String,
    cost_s: u64,
}

fn relative_to(config: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join(p)
    }
}

fn resolve_target(cfg: &PressureConfig, config: &Path, sites: &SearchPath) -> Result<Target> {
    let (desc, report_site) = match (&cfg.job, &cfg.promote) {
        (Some(j), _) => (relative_to(config, j), None),
        (None, Some(p)) => {
            let p = relative_to(config, p);
            let text = std::fs::read_to_string(&p)
                .map_err(|e| Error::io_path(&p, "reading promote report", e))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                Error::bad_input(p.display().to_string(), format!("promote report: {e}"))
            })?;
            let adl = v["artifacts"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["kind"] == "adl"))
                .and_then(|x| x["path"].as_str())
                .ok_or_else(|| {
                    Error::bad_input(
                        p.display().to_string(),
                        "the promote report lists no adl job description (did promote pass its smoke checks?)",
                    )
                })?;
            (
                relative_to(&p, Path::new(adl)),
                v["site"].as_str().map(str::to_string),
            )
        }
        (None, None) => unreachable!("checked"),
    };
    let mut jobs = jobdesc::load(&desc)?;
    if jobs.len() != 1 {
        return Err(Error::bad_input(
            desc.display().to_string(),
            format!(
                "holds {} jobs; pressure submits copies of exactly one",
                jobs.len()
            ),
        ));
    }
    let mut spec = jobs.remove(0);
    if let Some(q) = &cfg.queue {
        spec.queue = Some(q.clone());
    }
    let site = cfg.site.clone().or(report_site);
    let ce = match (&cfg.ce, site) {
        (Some(ce), _) => super::endpoint(ce)?,
        (None, Some(site)) => {
            let p = crate::site::SiteProfile::load(sites, &site)?;
            let ce = p.ce.map(|c| c.endpoint).ok_or_else(|| {
                Error::bad_input(
                    p.path.display().to_string(),
                    format!("site '{site}' has no ce: section; set ce: in the pressure config"),
                )
            })?;
            super::endpoint(&ce)?
        }
        (None, None) => {
            return Err(Error::bad_input(
                config.display().to_string(),
                "ce: no CE: set ce: or site:",
            ));
        }
    };
    let slots = u64::from(spec.count.unwrap_or(1).max(1));
    let cost_s = spec.walltime_s.unwrap_or(0) * slots;
    if cfg.budget_hours.is_some() && spec.walltime_s.is_none() {
        return Err(Error::bad_input(
            desc.display().to_string(),
            "budget_hours needs a walltime in the job description (the budget is walltime × slots)",
        ));
    }
    let base_dir = desc
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    Ok(Target {
        spec,
        base_dir,
        ce,
        cost_s,
    })
}

/// Run the demand command: the number it prints on its first line.
fn run_demand(cmd: &str, dir: &Path) -> std::result::Result<u64, String> {
    let mut child = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| format!("demand: starting `{cmd}`: {e}"))?;
    // A hung command must not stop the loop.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("demand: `{cmd}` ran longer than 60 s"));
            }
            Err(e) => return Err(format!("demand: waiting for `{cmd}`: {e}")),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("demand: `{cmd}`: {e}"))?;
    if !out.status.success() {
        return Err(format!("demand: `{cmd}` failed ({})", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or("").trim();
    first
        .parse::<u64>()
        .map_err(|_| format!("demand: `{cmd}` printed {first:?}, not a number of jobs"))
}

/// The loop's state between cycles.
struct Looper {
    opts: Options,
    cfg: PressureConfig,
    state: PressureState,
    clients: HashMap<String, Box<dyn ComputeElement>>,
    cycle: u64,
}

impl Looper {
    fn client(&mut self, ce: &str) -> Result<&dyn ComputeElement> {
        if !self.clients.contains_key(ce) {
            let c = super::connect(ce, &self.opts.auth)?;
            self.clients.insert(ce.to_string(), c);
        }
        Ok(self.clients[ce].as_ref())
    }

    /// Settle submissions whose outcome is unknown (the loop was killed, or
    /// the connection broke, between recording and learning the IDs): the
    /// CE's jobs carrying a pending name are adopted, the other pending
    /// names were never created and are dropped, their budget refunded.
    async fn reconcile(&mut self, errors: &mut Vec<String>) -> bool {
        let ces: BTreeSet<String> = self.state.pending.iter().map(|p| p.ce.clone()).collect();
        let mut ok = true;
        for ce in ces {
            let owned: BTreeSet<String> = self.state.jobs.iter().map(|j| j.id.clone()).collect();
            let found = async {
                let c = self.client(&ce)?;
                let ids: Vec<String> = c
                    .list_jobs()
                    .await?
                    .into_iter()
                    .filter(|i| !owned.contains(i))
                    .collect();
                c.job_infos(&ids).await
            }
            .await;
            let names = match found {
                Ok(n) => n,
                Err(e) => {
                    errors.push(format!("finding earlier submissions: {e}"));
                    ok = false;
                    continue;
                }
            };
            let by_name: HashMap<&str, &str> = names
                .iter()
                .filter_map(|i| Some((i.name.as_deref()?, i.id.as_str())))
                .collect();
            let mut keep = Vec::new();
            for p in std::mem::take(&mut self.state.pending) {
                if p.ce != ce {
                    keep.push(p);
                    continue;
                }
                if let Some(id) = by_name.get(p.name.as_str()) {
                    tracing::info!("adopting job {id} ({}) submitted before a restart", p.name);
                    self.state.submitted_total += 1;
                    self.state.jobs.push(OwnedJob {
                        id: id.to_string(),
                        name: p.name,
                        ce: p.ce,
                        state: None,
                        submitted: p.since,
                        cost_s: p.cost_s,
                        outputs: p.outputs,
                    });
                } else {
                    self.state.budget_used_s = self.state.budget_used_s.saturating_sub(p.cost_s);
                }
            }
            self.state.pending.extend(keep);
        }
        ok
    }

    async fn cycle(&mut self) -> CycleReport {
        self.cycle += 1;
        // Connections are made again each cycle: a renewed proxy (or token)
        // is read from its file, as a long-running loop needs.
        self.clients.clear();
        let mut r = CycleReport {
            cycle: self.cycle,
            ..Default::default()
        };
        // 1. The config, again: a bad edit keeps the last good one.
        match PressureConfig::load(&self.opts.config) {
            Ok(new) => {
                r.config_changes = config_changes(&self.cfg, &new);
                self.cfg = new;
            }
            Err(e) => r.config_error = Some(e.to_string()),
        }
        let target = resolve_target(&self.cfg, &self.opts.config, &self.opts.sites);
        let mut ce_failed = false;
        let mut not_ready = false;

        // 2. Submissions of unknown outcome first: they may be alive.
        if !self.state.pending.is_empty() {
            let before = self.state.clone();
            if !self.reconcile(&mut r.errors).await {
                ce_failed = true;
            }
            if self.state != before {
                self.save(&mut r.errors);
            }
        }

        // 3. One status request per CE for all of the loop's jobs on it.
        let mut by_ce: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for j in &self.state.jobs {
            by_ce.entry(j.ce.clone()).or_default().push(j.id.clone());
        }
        let mut phases: HashMap<String, Phase> = HashMap::new();
        let mut status_failed = false;
        for (ce, ids) in &by_ce {
            let res = match self.client(ce) {
                Ok(c) => c.status(ids).await,
                Err(e) => Err(e),
            };
            match res {
                Ok(replies) => {
                    for rep in replies {
                        let ph = if rep.ok() {
                            if let Some(j) = self.state.jobs.iter_mut().find(|j| j.id == rep.id) {
                                j.state = rep.state.clone();
                            }
                            rep.phase
                        } else if rep.unknown_job() {
                            // The CE no longer has it (cleaned or wiped elsewhere).
                            Phase::Failed
                        } else {
                            Phase::Unknown
                        };
                        phases.insert(rep.id, ph);
                    }
                }
                Err(e) => {
                    r.errors.push(format!("status: {e}"));
                    status_failed = true;
                    ce_failed = true;
                }
            }
        }
        let mut seen = Observed {
            unknown: self.state.pending.len() as u32,
            ..Default::default()
        };
        let mut done: BTreeMap<String, Vec<(String, Phase)>> = BTreeMap::new();
        for j in &self.state.jobs {
            match phases.get(&j.id).copied().unwrap_or(Phase::Unknown) {
                Phase::Idle => seen.idle += 1,
                Phase::Running => seen.running += 1,
                Phase::Unknown => seen.unknown += 1,
                p @ (Phase::Finished | Phase::Failed) => done
                    .entry(j.ce.clone())
                    .or_default()
                    .push((j.id.clone(), p)),
            }
        }

        // 4. Finished jobs: fetched (get:), then cleaned, then forgotten.
        for (ce, jobs) in done {
            let mut to_clean = Vec::new();
            for (id, p) in &jobs {
                if let Some(dir) = self.cfg.get.clone() {
                    let dir = relative_to(&self.opts.config, &dir);
                    let j = self.state.jobs.iter().find(|j| &j.id == id).cloned();
                    let Some(j) = j else { continue };
                    let state = j.state.clone().unwrap_or_default();
                    let got = match self.client(&ce) {
                        Ok(c) => match std::fs::create_dir_all(&dir) {
                            Ok(()) => {
                                super::retrieve::get_job(c, id, &state, &j.outputs, &dir, false)
                                    .await
                            }
                            Err(e) => Err(Error::io_path(&dir, "creating", e)),
                        },
                        Err(e) => Err(e),
                    };
                    match got {
                        Err(e) => {
                            r.errors.push(format!("get {id}: {e}"));
                            // Kept: fetched again next cycle; it counts for no cap.
                            continue;
                        }
                        Ok(f) if !f.conflicts.is_empty() => {
                            // As `gridship get`: a local file that differs is never
                            // overwritten, and the CE's copy is kept until it is moved.
                            r.errors.push(format!(
                                "get {id}: {} differ from the CE's copies; move them away",
                                f.conflicts.join(", ")
                            ));
                            continue;
                        }
                        Ok(f) if !f.missing.is_empty() => {
                            // Asking again will not make them: cleaned all the same.
                            r.errors
                                .push(format!("get {id}: the CE has no {}", f.missing.join(", ")));
                        }
                        Ok(_) => {}
                    }
                }
                to_clean.push((id.clone(), *p));
            }
            if to_clean.is_empty() {
                continue;
            }
            let ids: Vec<String> = to_clean.iter().map(|(i, _)| i.clone()).collect();
            let res = match self.client(&ce) {
                Ok(c) => c.clean(&ids).await,
                Err(e) => Err(e),
            };
            match res {
                Ok(replies) => {
                    let gone: BTreeSet<String> = replies
                        .iter()
                        .filter(|c| c.ok() || c.unknown_job())
                        .map(|c| c.id.clone())
                        .collect();
                    for c in replies.iter().filter(|c| !gone.contains(&c.id)) {
                        r.errors
                            .push(format!("clean {}: {} {}", c.id, c.status_code, c.reason));
                    }
                    for (id, p) in &to_clean {
                        if gone.contains(id) {
                            if *p == Phase::Finished {
                                r.finished += 1;
                                self.state.finished_total += 1;
                            } else {
                                r.failed += 1;
                                self.state.failed_total += 1;
                            }
                        }
                    }
                    self.state.jobs.retain(|j| !gone.contains(&j.id));
                }
                Err(e) => {
                    r.errors.push(format!("clean: {e}"));
                    ce_failed = true;
                }
            }
        }
        self.save(&mut r.errors);

        // 5. How many to submit.
        let target = match target {
            Ok(t) => Some(t),
            Err(e) => {
                r.errors.push(e.to_string());
                not_ready = true;
                None
            }
        };
        let demand = match (&self.cfg.demand, not_ready || status_failed) {
            (Some(cmd), false) => {
                let dir = relative_to(&self.opts.config, Path::new("."));
                match run_demand(cmd, &dir) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        r.errors.push(e);
                        not_ready = true;
                        None
                    }
                }
            }
            _ => None,
        };
        let budget = Budget {
            limit_s: self.cfg.budget_s(),
            used_s: self.state.budget_used_s,
            job_cost_s: target.as_ref().map(|t| t.cost_s).unwrap_or(0),
        };
        let p = if status_failed || !self.state.pending.is_empty() {
            // Not knowing what is alive, or what the last submission made,
            // nothing more is sent.
            Plan {
                submit: 0,
                held_by: Some(Hold::StatusUnknown),
            }
        } else if not_ready {
            Plan {
                submit: 0,
                held_by: Some(Hold::NotReady),
            }
        } else {
            plan(
                &self.cfg.limits(),
                &seen,
                &budget,
                demand,
                self.state.ce_refusing,
            )
        };
        r.held_by = p.held_by;

        // 6. Submit: names recorded first, then sent, then IDs recorded.
        if let (Some(t), true) = (target, p.submit > 0) {
            let prefix = self.cfg.jobname.clone().unwrap_or_else(|| {
                let stem = self
                    .opts
                    .config
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let stem: String = stem
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                    .collect();
                format!("pressure-{stem}")
            });
            let outputs = retrievable_outputs(&t.spec);
            let mut specs = Vec::new();
            let mut names = Vec::new();
            for _ in 0..p.submit {
                let name = format!("{prefix}-{}-{}", self.state.token, self.state.next_seq);
                self.state.next_seq += 1;
                self.state.budget_used_s += t.cost_s;
                self.state.pending.push(PendingJob {
                    name: name.clone(),
                    ce: t.ce.clone(),
                    cost_s: t.cost_s,
                    since: now_unix(),
                    outputs: outputs.clone(),
                });
                let mut s = t.spec.clone();
                s.job_name = Some(name.clone());
                specs.push(s);
                names.push(name);
            }
            // The intent must be on disk before the CE can hold the jobs.
            if let Err(e) = self.state.save() {
                r.errors.push(e.to_string());
                self.state.pending.retain(|p| !names.contains(&p.name));
                self.state.budget_used_s -= t.cost_s * u64::from(p.submit);
            } else {
                let res = match self.client(&t.ce) {
                    Ok(c) => super::submit_each(c, &specs, &t.base_dir).await,
                    Err(e) => Err(e),
                };
                match res {
                    Ok((accepted, refused)) => {
                        for s in &accepted {
                            let name = s.name.clone().unwrap_or_default();
                            self.state.pending.retain(|p| p.name != name);
                            self.state.submitted_total += 1;
                            self.state.jobs.push(OwnedJob {
                                id: s.id.clone(),
                                name,
                                ce: t.ce.clone(),
                                state: s.state.clone(),
                                submitted: now_unix(),
                                cost_s: t.cost_s,
                                outputs: outputs.clone(),
                            });
                        }
                        r.submitted = accepted.len() as u32;
                        if refused.is_empty() {
                            self.state.ce_refusing = false;
                        } else {
                            // Refused jobs do not exist: their names and budget go back.
                            let got: BTreeSet<String> =
                                accepted.iter().filter_map(|s| s.name.clone()).collect();
                            let dropped: Vec<PendingJob> = self
                                .state
                                .pending
                                .iter()
                                .filter(|p| names.contains(&p.name) && !got.contains(&p.name))
                                .cloned()
                                .collect();
                            for d in &dropped {
                                self.state.budget_used_s =
                                    self.state.budget_used_s.saturating_sub(d.cost_s);
                            }
                            self.state.pending.retain(|p| !dropped.contains(p));
                            self.state.ce_refusing = true;
                            ce_failed = true;
                            r.errors.push(format!(
                                "submit: {}: the CE refused {}",
                                t.ce,
                                refused.join("; ")
                            ));
                        }
                    }
                    Err(e) => {
                        // Whether the CE made the jobs is unknown: they stay
                        // pending and are looked up by name next cycle.
                        self.state.ce_refusing = true;
                        ce_failed = true;
                        r.errors.push(format!("submit: {e}"));
                    }
                }
                self.save(&mut r.errors);
            }
        }
        r.running = seen.running;
        r.idle = seen.idle;
        r.unknown = seen.unknown;
        r.budget_used_hours = self.state.budget_used_s as f64 / 3600.0;
        r.backing_off = ce_failed;
        r
    }

    fn save(&self, errors: &mut Vec<String>) {
        if let Err(e) = self.state.save() {
            errors.push(e.to_string());
        }
    }
}

/// Hold an exclusive lock on `STATE.lock` so that two loops never share a
/// job list (each would count the other's submissions as its own).
fn lock_state(state: &Path) -> Result<LockFile> {
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    let f = LockFile::open(&state.with_file_name(name))?;
    // Any failure to lock reads as "held": the loop must not run unlocked.
    match f.try_lock(lockfile::Mode::Exclusive) {
        Ok(true) => Ok(f),
        Ok(false) | Err(_) => Err(Error::bad_input(
            state.display().to_string(),
            "another gridship pressure runs with this job list (its lock file is held)",
        )),
    }
}

/// Run the loop until SIGTERM/SIGINT, `stop_after`, or after one cycle
/// with `once`; `report` gets each cycle's report; the last one is returned.
///
/// No duplicates, no lost jobs across SIGKILL: every job gets a name never
/// used before (PREFIX-TOKEN-SEQ; TOKEN is random per job list, SEQ grows
/// and is saved with the list). Before a submission is sent, its names are
/// saved as pending (budget charged); after the CE answers, the pending
/// entries become jobs with IDs. A kill between the two leaves pending
/// names, and a failed connection leaves them too: before anything else
/// the next cycle lists the CE's jobs and reads their names (one
/// `action=info`), adopts those carrying a pending name, and drops the
/// names the CE does not hold (they were never created). Until that lookup
/// succeeds nothing new is submitted, so a job is neither made twice nor
/// forgotten, whichever instant the kill came at.
pub async fn run(opts: Options, mut report: impl FnMut(&CycleReport)) -> Result<CycleReport> {
    use tokio::signal::unix::{SignalKind, signal};
    let cfg = PressureConfig::load(&opts.config)?;
    let state_path = opts
        .state
        .clone()
        .or_else(|| cfg.state.as_ref().map(|s| relative_to(&opts.config, s)))
        .unwrap_or_else(|| default_state_path(&opts.config));
    if let Some(d) = state_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(|e| Error::io_path(d, "creating", e))?;
    }
    let _lock = lock_state(&state_path)?;
    let state = PressureState::load_or_new(&state_path)?;
    // Temporary files a killed run left beside the list. The lock says no
    // other loop writes there, but another command may (a job list saved
    // beside it): a live writer's file is milliseconds old, so only those
    // older than a minute go.
    if let Some(dir) = state_path.parent()
        && let Ok(rd) = std::fs::read_dir(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
    {
        for e in rd.flatten() {
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(60));
            if stale
                && e.file_name()
                    .to_string_lossy()
                    .starts_with(crate::fsutil::TEMP_PREFIX)
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let io = |e: std::io::Error| Error::Other(format!("installing signal handler: {e}"));
    let mut term = signal(SignalKind::terminate()).map_err(io)?;
    let mut int = signal(SignalKind::interrupt()).map_err(io)?;
    let started = Instant::now();
    let mut l = Looper {
        opts,
        cfg,
        state,
        clients: HashMap::new(),
        cycle: 0,
    };
    let mut failures = 0u32;
    loop {
        let mut r = l.cycle().await;
        let failed = r.backing_off;
        failures = if failed { failures + 1 } else { 0 };
        let pause = if failed {
            backoff_s(l.cfg.cycle_seconds, failures, l.cfg.max_backoff_seconds)
        } else {
            l.cfg.cycle_seconds
        };
        let stop = l.opts.once
            || l.cfg
                .stop_after_s()
                .is_some_and(|s| started.elapsed() >= Duration::from_secs(s));
        r.next_cycle_s = if stop { 0 } else { pause };
        report(&r);
        if stop {
            return Ok(r);
        }
        // A signal that came during the cycle is already queued: the select
        // returns at once, after the cycle was finished and saved.
        tokio::select! {
            biased;
            _ = term.recv() => return Ok(r),
            _ = int.recv() => return Ok(r),
            _ = tokio::time::sleep(Duration::from_secs(pause)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(r: u32, i: u32, s: u32) -> Limits {
        Limits {
            max_running: r,
            max_idle: i,
            max_submit_per_cycle: s,
        }
    }

    fn seen(running: u32, idle: u32, unknown: u32) -> Observed {
        Observed {
            running,
            idle,
            unknown,
        }
    }

    const NO_BUDGET: Budget = Budget {
        limit_s: None,
        used_s: 0,
        job_cost_s: 3600,
    };

    #[test]
    fn fills_idle_up_to_max_idle() {
        let p = plan(&limits(3, 1, 10), &seen(0, 0, 0), &NO_BUDGET, None, false);
        assert_eq!(p.submit, 1);
        assert_eq!(p.held_by, None);
        let p = plan(&limits(3, 5, 10), &seen(2, 1, 0), &NO_BUDGET, None, false);
        assert_eq!(p.submit, 4);
    }

    #[test]
    fn never_more_alive_than_running_plus_idle() {
        // The fork backend runs everything: 4 running, 0 idle, cap 3+1.
        let p = plan(&limits(3, 1, 10), &seen(4, 0, 0), &NO_BUDGET, None, false);
        assert_eq!(p.submit, 0);
        assert_eq!(p.held_by, Some(Hold::AliveFull));
        let p = plan(&limits(3, 2, 10), &seen(3, 0, 0), &NO_BUDGET, None, false);
        assert_eq!(p.submit, 2);
        // Lowered limits below what is alive: nothing, nothing killed.
        let p = plan(&limits(1, 0, 10), &seen(3, 1, 0), &NO_BUDGET, None, false);
        assert_eq!(p.submit, 0);
        // Exhaustive: the result never exceeds either cap.
        for mr in 0..5 {
            for mi in 0..5 {
                for r in 0..8 {
                    for i in 0..8 {
                        for u in 0..3 {
                            let o = seen(r, i, u);
                            let p = plan(&limits(mr, mi, 3), &o, &NO_BUDGET, None, false);
                            assert!(o.alive() + p.submit <= (mr + mi).max(o.alive()));
                            assert!(i + u + p.submit <= mi.max(i + u));
                            assert!(p.submit <= 3);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn unknown_jobs_take_room_but_are_not_idle() {
        let p = plan(&limits(3, 2, 10), &seen(0, 0, 2), &NO_BUDGET, None, false);
        assert_eq!(
            p.submit, 0,
            "two jobs of unknown state may be the two idle ones"
        );
        assert_eq!(p.held_by, Some(Hold::IdleFull));
    }

    #[test]
    fn max_submit_per_cycle_bounds() {
        let p = plan(&limits(100, 50, 7), &seen(0, 0, 0), &NO_BUDGET, None, false);
        assert_eq!(p.submit, 7);
        assert_eq!(p.held_by, Some(Hold::MaxSubmitPerCycle));
    }

    #[test]
    fn demand_sizes_within_limits() {
        let p = plan(
            &limits(10, 5, 10),
            &seen(2, 0, 0),
            &NO_BUDGET,
            Some(4),
            false,
        );
        assert_eq!(p.submit, 2);
        let p = plan(
            &limits(10, 5, 10),
            &seen(2, 0, 0),
            &NO_BUDGET,
            Some(3),
            false,
        );
        assert_eq!(p.submit, 1);
        let p = plan(
            &limits(10, 5, 10),
            &seen(5, 0, 0),
            &NO_BUDGET,
            Some(3),
            false,
        );
        assert_eq!((p.submit, p.held_by), (0, Some(Hold::Demand)));
        // The limits still cap a large demand.
        let p = plan(
            &limits(3, 1, 10),
            &seen(0, 0, 0),
            &NO_BUDGET,
            Some(1000),
            false,
        );
        assert_eq!(p.submit, 1);
    }

    #[test]
    fn budget_stops_at_the_right_job() {
        // 2.5 h of budget, 1 h jobs: the third does not fit.
        let mut b = Budget {
            limit_s: Some(9000),
            used_s: 0,
            job_cost_s: 3600,
        };
        let l = limits(10, 10, 10);
        assert_eq!(plan(&l, &seen(0, 0, 0), &b, None, false).submit, 2);
        b.used_s = 7200;
        let p = plan(&l, &seen(0, 2, 0), &b, None, false);
        assert_eq!((p.submit, p.held_by), (0, Some(Hold::Budget)));
        // Exactly enough is enough.
        b = Budget {
            limit_s: Some(7200),
            used_s: 3600,
            job_cost_s: 3600,
        };
        assert_eq!(plan(&l, &seen(0, 1, 0), &b, None, false).submit, 1);
    }

    #[test]
    fn a_refusing_ce_gets_one_probe() {
        let p = plan(&limits(10, 5, 10), &seen(0, 0, 0), &NO_BUDGET, None, true);
        assert_eq!((p.submit, p.held_by), (1, Some(Hold::CeRefusing)));
        let p = plan(&limits(10, 0, 10), &seen(0, 0, 0), &NO_BUDGET, None, true);
        assert_eq!(p.submit, 0);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff_s(2, 0, 60), 2);
        assert_eq!(backoff_s(2, 1, 60), 4);
        assert_eq!(backoff_s(2, 3, 60), 16);
        assert_eq!(backoff_s(2, 5, 60), 60);
        assert_eq!(backoff_s(2, 200, 60), 60);
        assert_eq!(backoff_s(60, 1, 30), 60, "never shorter than a cycle");
    }

    fn parse(text: &str) -> Result<PressureConfig> {
        PressureConfig::parse("p.yaml", text)
    }

    fn err(text: &str) -> String {
        let e = parse(text).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        e.to_string()
    }

    #[test]
    fn config_yaml_and_json() {
        let y = parse(
            "job: pilot.xrsl\nce: https://ce.example.org/arex\nmax_running: 3\nmax_idle: 1\ncycle_seconds: 2\nbudget_hours: 2.5\nstop_after: 12h\ndemand: echo 4\n",
        )
        .unwrap();
        assert_eq!(y.job, Some(PathBuf::from("pilot.xrsl")));
        assert_eq!((y.max_running, y.max_idle, y.cycle_seconds), (3, 1, 2));
        assert_eq!(y.max_submit_per_cycle, 10);
        assert_eq!(y.max_backoff_seconds, 900);
        assert_eq!(y.budget_s(), Some(9000));
        assert_eq!(y.stop_after_s(), Some(12 * 3600));
        let j = PressureConfig::parse(
            "p.json",
            r#"{"job": "pilot.xrsl", "ce": "https://ce.example.org/arex", "max_running": 3, "max_idle": 1, "cycle_seconds": 2, "budget_hours": 2.5, "stop_after": "12h", "demand": "echo 4"}"#,
        )
        .unwrap();
        assert_eq!(y, j);
    }

    #[test]
    fn config_errors_name_the_key() {
        let base = "job: j.xrsl\nce: ce.example.org\nmax_running: 3\nmax_idle: 1\n";
        assert!(err(&format!("{base}max_runing: 4\n")).contains("max_runing"));
        assert!(err("job: j.xrsl\nce: x\nmax_idle: 1\n").contains("max_running"));
        assert!(err(&format!("{base}cycle_seconds: 0\n")).contains("cycle_seconds"));
        assert!(err(&format!("{base}cycle_seconds: -3\n")).contains("cycle_seconds"));
        assert!(err(&format!("{base}max_submit_per_cycle: 0\n")).contains("max_submit_per_cycle"));
        assert!(err(&format!("{base}budget_hours: -1\n")).contains("budget_hours"));
        assert!(err(&format!("{base}stop_after: soon\n")).contains("stop_after"));
        assert!(err(&format!("{base}jobname: 'a b'\n")).contains("jobname"));
        assert!(err(&format!("{base}demand: ' '\n")).contains("demand"));
        assert!(
            err(&format!(
                "{base}max_backoff_seconds: 10\ncycle_seconds: 20\n"
            ))
            .contains("max_backoff_seconds")
        );
        assert!(err("ce: x\nmax_running: 3\nmax_idle: 1\n").contains("job"));
        assert!(err("job: j\nmax_running: 3\nmax_idle: 1\n").contains("ce"));
        assert!(err("job: j\nce: http://x/arex\nmax_running: 3\nmax_idle: 1\n").contains("ce"));
        assert!(err("job: j\nce: x\nsite: s\nmax_running: 3\nmax_idle: 1\n").contains("site"));
        let e = PressureConfig::parse(
            "p.json",
            r#"{"job": "j", "ce": "x", "max_running": 3, "max_idle": 1, "bogus": 1}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn changes_are_reported_per_key() {
        let a = parse("job: j\nce: x\nmax_running: 3\nmax_idle: 1\n").unwrap();
        let b = parse("job: j\nce: x\nmax_running: 5\nmax_idle: 1\nbudget_hours: 2\n").unwrap();
        assert_eq!(
            config_changes(&a, &b),
            vec!["budget_hours: (unset) -> 2.0", "max_running: 3 -> 5"]
        );
        assert!(config_changes(&a, &a).is_empty());
    }

    #[test]
    fn state_round_trips_and_refuses_garbage() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json");
        let mut s = PressureState::load_or_new(&p).unwrap();
        assert_eq!(s.token.len(), 8);
        s.pending.push(PendingJob {
            name: "x-1".into(),
            ce: "https://ce/arex".into(),
            cost_s: 60,
            since: 1,
            outputs: vec![],
        });
        s.save().unwrap();
        assert_eq!(PressureState::load_or_new(&p).unwrap(), s);
        std::fs::write(&p, "{\"version\": 1}").unwrap();
        let e = PressureState::load_or_new(&p).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn default_state_is_beside_the_config() {
        assert_eq!(
            default_state_path(Path::new("/x/pilots.yaml")),
            PathBuf::from("/x/pilots.yaml.state.json")
        );
    }

    #[test]
    fn promote_report_gives_the_description_and_queue() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("img.adl"),
            r#"<ActivityDescription xmlns="http://www.eu-emi.eu/es/2010/12/adl">
  <ActivityIdentification><Name>img</Name></ActivityIdentification>
  <Application><Executable><Path>/bin/true</Path></Executable></Application>
  <Resources><SlotRequirement><NumberOfSlots>4</NumberOfSlots></SlotRequirement><QueueName>gpu</QueueName><WallTime>7200</WallTime></Resources>
</ActivityDescription>
"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("img.promote.json"),
            r#"{"site": "nowhere", "artifacts": [{"kind": "xrsl", "path": "img.xrsl"}, {"kind": "adl", "path": "img.adl"}]}"#,
        )
        .unwrap();
        let cfg_path = d.path().join("p.yaml");
        let cfg = parse(
            "promote: img.promote.json\nce: https://ce.example.org/arex\nqueue: a100\nmax_running: 1\nmax_idle: 1\nbudget_hours: 10\n",
        )
        .unwrap();
        let sites = SearchPath::new(crate::config::search::Kind::Sites, None);
        let t = resolve_target(&cfg, &cfg_path, &sites).unwrap();
        assert_eq!(t.spec.queue.as_deref(), Some("a100"));
        assert_eq!(t.ce, "https://ce.example.org/arex");
        assert_eq!(t.cost_s, 7200 * 4, "walltime × slots");
        // Without a walltime there is no budget to count.
        std::fs::write(
            d.path().join("img.adl"),
            r#"<ActivityDescription xmlns="http://www.eu-emi.eu/es/2010/12/adl">
  <Application><Executable><Path>/bin/true</Path></Executable></Application>
</ActivityDescription>
"#,
        )
        .unwrap();
        let e = resolve_target(&cfg, &cfg_path, &sites).err().unwrap();
        assert!(e.to_string().contains("budget_hours"), "{e}");
    }

    #[test]
    fn demand_command() {
        let d = Path::new("/");
        assert_eq!(run_demand("echo 7", d), Ok(7));
        assert!(run_demand("echo many", d).unwrap_err().contains("many"));
        assert!(run_demand("exit 3", d).unwrap_err().contains("failed"));
    }
}
