//! `gridship jobdesc`, `submit`, `status`, `kill`, `clean`: ARC job
//! descriptions and the CE's REST interface.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use super::GlobalOpts;
use crate::ce::{self, AuthConfig, AuthMode, JobList, JobRecord, JobReply, Phase, retrieve};
use crate::error::Error;
use crate::jobdesc::{self, Format, Request, Template};
use crate::site::SiteProfile;

#[derive(Debug, Args)]
pub struct JobdescArgs {
    /// Site profile (e.g. glasgow; `gridship sites` lists them). Default:
    /// site: of config.yaml.
    #[arg(long)]
    pub site: Option<String>,
    /// GPU queue of that site (see gpu_queues: in its site.yaml). Default:
    /// queue: of config.yaml, else the site's only GPU queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// The image as the site sees it: a /cvmfs/ path, or a SIF URL for a staged
    /// template, or a local SIF that `gridship submit` uploads with the job.
    #[arg(long, value_name = "REF")]
    pub image: String,
    /// Template name (`gridship templates` lists them) or a path to an .xrsl file.
    /// Default: gpu-cvmfs for /cvmfs/ images, else gpu-sif-staged.
    #[arg(long, value_name = "T")]
    pub template: Option<String>,
    #[command(flatten)]
    pub work: WorkArgs,
    #[arg(long, value_enum, default_value = "xrsl")]
    pub format: Format,
    /// Write the description here (atomically) instead of stdout.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub overlays: super::SiteOverlaysOpt,
    #[command(flatten)]
    pub templates: super::TemplatesOpt,
}

/// What the job runs and moves; `jobdesc` and `promote` flatten it.
#[derive(Debug, Clone, Args)]
pub struct WorkArgs {
    /// Shell command line the job runs in the image (as /bin/sh -c CMD).
    /// Default: the image's own Entrypoint/Cmd, as `apptainer run` would.
    #[arg(long, value_name = "CMD", conflicts_with = "argv")]
    pub run: Option<String>,
    /// Input of the job: a local file (uploaded by `gridship submit`) or a
    /// URL the CE fetches; lands in the job's directory under its file
    /// name. Repeatable.
    #[arg(long = "input", value_name = "FILE|URL")]
    pub inputs: Vec<String>,
    /// Output `gridship get` brings back: a file, or a directory ending in
    /// / (e.g. results/), relative to the job's directory. Repeatable.
    #[arg(long = "output", value_name = "PATH")]
    pub outputs: Vec<String>,
    /// GPUs per job (default: the queue's gpus_per_job).
    #[arg(long)]
    pub gpus: Option<u32>,
    /// Wall-clock limit: 2h, 1h30m, 1d, PT90M; a bare number is minutes
    /// (default 6h, at most the queue's max_walltime_hours).
    #[arg(long, value_name = "DURATION", value_parser = parse_walltime)]
    pub walltime: Option<u64>,
    /// Memory per core: 4000 (MB), 4000M or 4G (default: the queue's
    /// memory per GPU shared by its cores).
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// The program and its arguments, run without a shell: `-- python3
    /// train.py --lr 0.1`.
    #[arg(last = true, value_name = "PROGRAM ARG")]
    pub argv: Vec<String>,
}

fn parse_walltime(s: &str) -> Result<u64, String> {
    jobdesc::xrsl::parse_duration(s).map_err(|(why, hint)| format!("{why}; {hint}"))
}

fn parse_memory(s: &str) -> Result<u64, String> {
    jobdesc::work::parse_memory_mb(s)
}

impl WorkArgs {
    pub fn work(&self) -> jobdesc::work::Work {
        use jobdesc::work::Command;
        jobdesc::work::Work {
            command: match (&self.run, self.argv.is_empty()) {
                (Some(line), _) => Some(Command::Shell(line.clone())),
                (None, false) => Some(Command::Argv(self.argv.clone())),
                (None, true) => None,
            },
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
            walltime_s: self.walltime,
            memory_mb: self.memory,
        }
    }
}

/// Credentials and trust for talking to a CE.
#[derive(Debug, Clone, Args)]
pub struct CeAuthArgs {
    /// Credential to present: a bearer token if found (auto), X.509, or
    /// token. Default: auth: of config.yaml, else auto.
    #[arg(long, value_enum)]
    pub auth: Option<AuthMode>,
    /// X.509 proxy file (default: $X509_USER_PROXY, then /tmp/x509up_u$UID).
    #[arg(long, value_name = "FILE")]
    pub proxy: Option<PathBuf>,
    /// X.509 certificate instead of a proxy (with --key).
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Trusted CA directory (default: $X509_CERT_DIR, then /etc/grid-security/certificates).
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
    /// Trusted CA certificates, one PEM file.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Seconds one CE request may take (a download: may stall).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub request_timeout: u64,
    /// Local list of submitted jobs (default: $XDG_DATA_HOME/gridship/arc-jobs.json).
    #[arg(long, env = "GRIDSHIP_ARC_JOBS", value_name = "FILE")]
    pub jobs_file: Option<PathBuf>,
}

impl CeAuthArgs {
    pub fn config(&self) -> anyhow::Result<AuthConfig> {
        let mode = match (self.auth, &super::defaults()?.auth) {
            (Some(m), _) => m,
            (None, Some(s)) => {
                <AuthMode as clap::ValueEnum>::from_str(&s.value, true).map_err(|_| {
                    Error::bad_input(s.from.display().to_string(), format!("auth: {}", s.value))
                })?
            }
            (None, None) => AuthMode::Auto,
        };
        Ok(AuthConfig {
            mode,
            ca_file: self.ca_file.clone(),
            ca_dir: self.ca_dir.clone(),
            proxy: self.proxy.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            timeout: Some(Duration::from_secs(self.request_timeout)),
        })
    }

    fn jobs_file(&self) -> PathBuf {
        self.jobs_file
            .clone()
            .unwrap_or_else(ce::joblist::default_jobs_file)
    }
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Job description: xRSL, ADL or gridship JSON (checked before sending).
    pub file: PathBuf,
    /// CE: https://HOST[:PORT]/arex (or a host name). Default: ce: of
    /// config.yaml, else the CE of the config's site.
    #[arg(long, value_name = "URL")]
    pub ce: Option<String>,
    /// Take the CE from this site's profile instead of --ce.
    #[arg(long, conflicts_with = "ce")]
    pub site: Option<String>,
    #[command(flatten)]
    pub overlays: super::SiteOverlaysOpt,
    #[command(flatten)]
    pub auth: CeAuthArgs,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Job IDs (from `gridship submit`) or job URLs; default for status: every job in the local list.
    pub jobs: Vec<String>,
    /// CE of IDs that are not in the local list.
    #[arg(long, value_name = "URL")]
    pub ce: Option<String>,
    #[command(flatten)]
    pub auth: CeAuthArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub jobs: JobsArgs,
    /// Wait until every job is in a final state (FINISHED, FAILED, KILLED,
    /// WIPED); exit 0 only when every job FINISHED.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds (exit 1).
    #[arg(
        long,
        alias = "wait-timeout",
        default_value_t = 3600,
        value_name = "SECS",
        requires = "wait"
    )]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub jobs: JobsArgs,
    /// Download into DIR/JOBID/ (default: the current directory).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// Also fetch A-REX's log files of the job into DIR/JOBID/gmlog/.
    #[arg(long)]
    pub gmlog: bool,
    /// Remove the job from the CE (and the local list) once everything came back.
    #[arg(long)]
    pub clean: bool,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `--queue`, else queue: of config.yaml, else the site's only GPU queue.
fn pick_queue(given: Option<&str>, profile: &SiteProfile) -> anyhow::Result<String> {
    if let Some(q) = super::or_config(given, &super::defaults()?.queue) {
        return Ok(q);
    }
    let mut names = profile.gpu_queues.keys();
    match (names.next(), names.next()) {
        (Some(only), None) => Ok(only.clone()),
        _ => Err(Error::BadInput {
            input: "--queue".into(),
            place: String::new(),
            reason: format!(
                "no queue given and site '{}' has {} GPU queues",
                profile.name,
                profile.gpu_queues.len()
            ),
            hint: Some(format!(
                "pass --queue ({}) or set queue: in config.yaml",
                profile
                    .gpu_queues
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
        .into()),
    }
}

/// `--image` as the job description names it: a local file (a SIF made here)
/// becomes `file:///ABS`, which `gridship submit` uploads into the job's
/// session directory; URLs and /cvmfs/ paths stay as given.
fn local_sif_source(image: &str) -> anyhow::Result<String> {
    let p = Path::new(image);
    if image.starts_with("/cvmfs/") || image.contains("://") || !p.is_file() {
        return Ok(image.to_string());
    }
    let abs = std::path::absolute(p).with_context(|| format!("resolving {image}"))?;
    Ok(format!("file://{}", abs.display()))
}

pub fn jobdesc(g: &GlobalOpts, a: JobdescArgs) -> anyhow::Result<()> {
    let site = super::require_site(a.site.as_deref())?;
    let profile = SiteProfile::load(&a.overlays.search(), &site)?;
    let queue = pick_queue(a.queue.as_deref(), &profile)?;
    let tsearch = a.templates.search();
    let tname = a.template.clone().unwrap_or_else(|| {
        if a.image.starts_with("/cvmfs/") {
            "gpu-cvmfs".into()
        } else {
            "gpu-sif-staged".into()
        }
    });
    let template = Template::load(&tsearch, &tname)?;
    // A SIF here (not a URL, not /cvmfs/) goes with the job: `submit` uploads it.
    let image = local_sif_source(&a.image)?;
    // The image's own command is known when the image is readable here.
    let image_dir = Path::new(&a.image);
    let image_command = if image_dir.is_dir() {
        jobdesc::work::image_command_of_dir(image_dir)
    } else {
        jobdesc::work::ImageCommand::Unknown(format!(
            "{} is not a directory here (a remote SIF, or CVMFS not mounted)",
            a.image
        ))
    };
    let jobs = jobdesc::for_image(
        &profile,
        &queue,
        &image,
        &template,
        &Request {
            gpus: a.work.gpus,
            work: a.work.work(),
            image_command,
        },
    )?;
    let text = jobdesc::render(&jobs, a.format);
    if let Some(out) = &a.out {
        // 0600, the mode written descriptions have always had.
        crate::fsutil::write_atomic(out, text.as_bytes(), 0o600)?;
    }
    if g.json {
        let doc = serde_json::json!({
            "site": site, "queue": queue, "image": a.image,
            "template": template.input, "format": format!("{:?}", a.format).to_lowercase(),
            "output": a.out, "description": text, "jobs": jobs,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else if a.out.is_none() {
        print!("{text}");
    } else if !g.quiet {
        eprintln!(
            "wrote {} job(s) to {}",
            jobs.len(),
            a.out.as_ref().expect("checked").display()
        );
    }
    Ok(())
}

pub fn submit(g: &GlobalOpts, a: SubmitArgs) -> anyhow::Result<()> {
    let jobs = jobdesc::load(&a.file)?;
    // --ce, --site, then config.yaml's ce:, then its site:.
    let d = super::defaults()?;
    let site = a.site.clone().or_else(|| {
        d.ce.is_none()
            .then(|| d.site.as_ref().map(|s| s.value.clone()))
            .flatten()
    });
    let ce = match (super::or_config(a.ce.as_deref(), &d.ce), &site) {
        (Some(ce), _) if a.site.is_none() => ce,
        (_, Some(s)) => {
            let p = SiteProfile::load(&a.overlays.search(), s)?;
            p.ce.map(|c| c.endpoint).ok_or_else(|| Error::BadInput {
                input: p.path.display().to_string(),
                place: String::new(),
                reason: format!("site '{s}' has no ce: section"),
                hint: Some("add ce: endpoint: https://HOST/arex, or pass --ce".into()),
            })?
        }
        _ => {
            return Err(Error::BadInput {
                input: "--ce".into(),
                place: String::new(),
                reason: "no CE given".into(),
                hint: Some(
                    "pass --ce URL or --site SITE, or set ce: or site: in config.yaml".into(),
                ),
            }
            .into());
        }
    };
    let client = ce::connect(&ce, &a.auth.config()?)?;
    let base_dir = a
        .file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let rt = runtime()?;
    let done = rt.block_on(ce::submit_all(client.as_ref(), &jobs, &base_dir))?;
    let mut list = JobList::load(&a.auth.jobs_file())?;
    for s in &done {
        list.jobs.push(JobRecord {
            id: s.id.clone(),
            ce: client.endpoint().to_string(),
            name: s.name.clone(),
            state: s.state.clone(),
            submitted: ce::joblist::now_unix(),
            description: Some(a.file.display().to_string()),
            outputs: s.outputs.clone(),
        });
    }
    list.save()?;
    if g.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"ce": client.endpoint(), "auth": client.credential(), "jobs": done})
            )?
        );
    } else {
        for s in &done {
            println!("{}\t{}\t{}", s.id, s.state.as_deref().unwrap_or("-"), s.url);
        }
    }
    Ok(())
}

/// Group the given jobs (IDs from the list, or URLs) by CE.
fn resolve(
    a: &JobsArgs,
    list: &JobList,
    all_if_empty: bool,
) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut by_ce: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if a.jobs.is_empty() {
        if !all_if_empty {
            return Err(Error::bad_input(
                "job IDs",
                "name the jobs (IDs as printed by `gridship submit`)",
            )
            .into());
        }
        for j in &list.jobs {
            by_ce.entry(j.ce.clone()).or_default().push(j.id.clone());
        }
        return Ok(by_ce);
    }
    for j in &a.jobs {
        if let Some((ce, id)) = ce::split_job_url(j)? {
            by_ce.entry(ce).or_default().push(id);
        } else if let Some(r) = list.find(j) {
            by_ce.entry(r.ce.clone()).or_default().push(j.clone());
        } else if let Some(ce) = super::or_config(a.ce.as_deref(), &super::defaults()?.ce) {
            by_ce.entry(ce::endpoint(&ce)?).or_default().push(j.clone());
        } else {
            return Err(Error::BadInput {
                input: j.clone(),
                place: String::new(),
                reason: format!("job '{j}' is not in {}", list.path.display()),
                hint: Some(
                    "pass --ce URL, or the job URL https://HOST/arex/rest/1.0/jobs/ID".into(),
                ),
            }
            .into());
        }
    }
    Ok(by_ce)
}

/// The bulk requests of `status`, `kill` and `clean`.
#[derive(Debug, Clone, Copy)]
enum Action {
    Status,
    Kill,
    Clean,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Status => "status",
            Action::Kill => "kill",
            Action::Clean => "clean",
        }
    }
}

fn run_action(
    a: &JobsArgs,
    action: Action,
    all_if_empty: bool,
) -> anyhow::Result<(Vec<(String, JobReply)>, JobList)> {
    let list = JobList::load(&a.auth.jobs_file())?;
    let by_ce = resolve(a, &list, all_if_empty)?;
    let rt = runtime()?;
    let mut out = Vec::new();
    for (ce, ids) in by_ce {
        let client = ce::connect(&ce, &a.auth.config()?)?;
        let replies = match action {
            Action::Status => client.status(&ids),
            Action::Kill => client.kill(&ids),
            Action::Clean => client.clean(&ids),
        };
        for r in rt.block_on(replies)? {
            out.push((ce.clone(), r));
        }
    }
    Ok((out, list))
}

fn report(g: &GlobalOpts, action: Action, replies: &[(String, JobReply)]) -> anyhow::Result<()> {
    let action = action.name();
    if g.json {
        let v: Vec<serde_json::Value> = replies
            .iter()
            .map(|(ce, r)| serde_json::json!({"ce": ce, "id": r.id, "status-code": r.status_code, "reason": r.reason, "state": r.state}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"action": action, "jobs": v}))?
        );
    } else {
        for (_, r) in replies {
            if r.ok() {
                println!("{}\t{}", r.id, r.state.as_deref().unwrap_or(&r.reason));
            } else {
                println!("{}\terror {}: {}", r.id, r.status_code, r.reason);
            }
        }
    }
    let failed: Vec<String> = replies
        .iter()
        .filter(|(_, r)| !r.ok())
        .map(|(_, r)| format!("{} ({} {})", r.id, r.status_code, r.reason))
        .collect();
    if !failed.is_empty() {
        let ce = replies
            .iter()
            .find(|(_, r)| !r.ok())
            .map(|(c, _)| c.clone())
            .unwrap_or_default();
        return Err(Error::CeRequest {
            ce,
            detail: format!("{action} failed for {}", failed.join(", ")),
        }
        .into());
    }
    Ok(())
}

pub fn status(g: &GlobalOpts, a: StatusArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let (replies, mut list) = run_action(&a.jobs, Action::Status, true)?;
        let is_final = |r: &JobReply| r.phase.is_final();
        let all_final = replies.iter().all(|(_, r)| !r.ok() || is_final(r));
        let timed_out = a.wait && !all_final && start.elapsed() >= Duration::from_secs(a.timeout);
        if !a.wait || all_final || timed_out {
            for (_, r) in &replies {
                if let Some(j) = list.jobs.iter_mut().find(|j| j.id == r.id)
                    && r.ok()
                {
                    j.state = r.state.clone();
                }
            }
            if list.path.exists() || !list.jobs.is_empty() {
                list.save()?;
            }
            report(g, Action::Status, &replies)?;
            if !a.wait {
                return Ok(());
            }
            let describe = |pick: &dyn Fn(&JobReply) -> bool| {
                replies
                    .iter()
                    .filter(|(_, r)| pick(r))
                    .map(|(_, r)| format!("{} ({})", r.id, r.state.as_deref().unwrap_or("?")))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if timed_out {
                return Err(Error::Other(format!(
                    "timed out after {} s waiting for {}; wait longer with --timeout SECS",
                    a.timeout,
                    describe(&|r| !is_final(r))
                ))
                .into());
            }
            let unsuccessful = describe(&|r| r.phase != Phase::Finished);
            if !unsuccessful.is_empty() {
                return Err(Error::Other(format!(
                    "not every job finished successfully: {unsuccessful}; `gridship get JOB` fetches their stdout and stderr"
                ))
                .into());
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(3));
    }
}

pub fn get(g: &GlobalOpts, a: GetArgs) -> anyhow::Result<()> {
    let mut list = JobList::load(&a.jobs.auth.jobs_file())?;
    let by_ce = resolve(&a.jobs, &list, false)?;
    let rt = runtime()?;
    let mut got = retrieve::GetReport::default();
    for (ce, ids) in by_ce {
        let client = ce::connect(&ce, &a.jobs.auth.config()?)?;
        rt.block_on(retrieve::get_jobs(
            client.as_ref(),
            &ids,
            &list,
            &a.dir,
            a.gmlog,
            a.clean,
            &mut got,
        ))?;
    }
    let retrieve::GetReport {
        fetched,
        cleaned,
        problems,
    } = got;
    if !cleaned.is_empty() {
        list.jobs.retain(|j| !cleaned.contains(&j.id));
        list.save()?;
    }
    if g.json {
        super::print_json(
            &serde_json::json!({"jobs": fetched, "cleaned": cleaned, "problems": problems}),
        )?;
    } else {
        for f in &fetched {
            let bytes: u64 = f.files.iter().map(|x| x.bytes).sum();
            println!(
                "{}\t{}\t{} file(s), {bytes} bytes\t{}",
                f.id,
                f.state,
                f.files.len(),
                f.dir.display()
            );
        }
    }
    if !problems.is_empty() {
        return Err(Error::Other(problems.join("\n")).into());
    }
    Ok(())
}

pub fn kill(g: &GlobalOpts, a: JobsArgs) -> anyhow::Result<()> {
    let (replies, _) = run_action(&a, Action::Kill, false)?;
    report(g, Action::Kill, &replies)
}

pub fn clean(g: &GlobalOpts, a: JobsArgs) -> anyhow::Result<()> {
    let (replies, mut list) = run_action(&a, Action::Clean, false)?;
    // Cleaned jobs are gone on the CE; forget them here too.
    let cleaned: Vec<&str> = replies
        .iter()
        .filter(|(_, r)| r.ok())
        .map(|(_, r)| r.id.as_str())
        .collect();
    let before = list.jobs.len();
    list.jobs.retain(|j| !cleaned.contains(&j.id.as_str()));
    if list.jobs.len() != before {
        list.save()?;
    }
    report(g, Action::Clean, &replies)
}
