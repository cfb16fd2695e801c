//! ARC job descriptions: the typed [`JobSpec`], strict xRSL and ADL readers
//! and writers, templates, site GPU profiles and the job's work. Sending
//! them to a CE is [`crate::ce`]'s.
//!
//! ARC silently drops unknown attributes and misreads bad units, so every
//! description is read strictly and checked ([`validate`]) before anything is
//! written or sent.

pub mod adl;
pub mod model;
pub mod template;
pub mod validate;
pub mod work;
pub mod xrsl;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

pub use model::{EnvVar, Field, InputFile, JobSpec, Notify, NotifyState, OutputFile, RuntimeEnv};
pub use template::Template;

use crate::error::{Error, Result};
use crate::site::{GpuRequest, SiteProfile};

/// The outputs a job keeps on the CE for retrieval: stdout, stderr and
/// every output file without a target (directories end in `/`).
pub fn retrievable_outputs(j: &JobSpec) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let names = j.stdout.iter().chain(&j.stderr).chain(
        j.output_files
            .iter()
            .filter(|f| f.target.is_none())
            .map(|f| &f.name),
    );
    for n in names {
        if !out
            .iter()
            .any(|o| o.trim_end_matches('/') == n.trim_end_matches('/'))
        {
            out.push(n.clone());
        }
    }
    out
}

/// Where in an input a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// 1-based line and column.
    LineCol(usize, usize),
    /// An XML element or a YAML key path.
    Element(String),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::LineCol(l, c) => write!(f, "{l}:{c}"),
            Place::Element(e) => write!(f, "{e}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub place: Option<Place>,
    pub message: String,
    pub hint: Option<String>,
}

/// Every problem found in one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems {
    pub input: String,
    pub items: Vec<Problem>,
}

impl Problems {
    pub fn new(input: &str, items: Vec<Problem>) -> Self {
        Problems {
            input: input.to_string(),
            items,
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.items.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match &p.place {
                Some(Place::LineCol(l, c)) => write!(f, "{}:{l}:{c}: {}", self.input, p.message)?,
                Some(place) => write!(f, "{}: {place}: {}", self.input, p.message)?,
                None => write!(f, "{}: {}", self.input, p.message)?,
            }
            if let Some(h) = &p.hint {
                write!(f, "\n  hint: {h}")?;
            }
        }
        Ok(())
    }
}

impl From<Problems> for Error {
    fn from(p: Problems) -> Error {
        // The first problem fills the structured fields; the rest follow in
        // the reason, each with its own place, so nothing is lost.
        let first = p.items.first().cloned().unwrap_or(Problem {
            place: None,
            message: "invalid".into(),
            hint: None,
        });
        // file:line:column reads as one place, as compilers print it.
        let (input, place) = match &first.place {
            Some(Place::LineCol(l, c)) => (format!("{}:{l}:{c}", p.input), String::new()),
            Some(e) => (p.input.clone(), format!("{e}: ")),
            None => (p.input.clone(), String::new()),
        };
        let mut reason = first.message.clone();
        if let Some(h) = &first.hint {
            reason.push_str(&format!("\n  hint: {h}"));
        }
        if p.items.len() > 1 {
            let rest = Problems::new(&p.input, p.items[1..].to_vec());
            reason.push_str(&format!("\n{rest}"));
        }
        Error::BadInput {
            input,
            place,
            reason,
            hint: None,
        }
    }
}

/// Output formats of `gridship jobdesc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Xrsl,
    Adl,
    Json,
}

/// Render validated jobs.
pub fn render(jobs: &[JobSpec], format: Format) -> String {
    match format {
        Format::Xrsl => xrsl::write(jobs),
        Format::Adl => adl::write(jobs),
        Format::Json => {
            let mut s = if jobs.len() == 1 {
                serde_json::to_string_pretty(&jobs[0])
            } else {
                serde_json::to_string_pretty(jobs)
            }
            .expect("JobSpec serialises");
            s.push('\n');
            s
        }
    }
}

/// Check parsed jobs; issues point at the attribute that set the field when
/// the spans know it.
pub fn check_parsed(
    input: &str,
    src: &str,
    jobs: &[xrsl::ParsedJob],
) -> std::result::Result<(), Problems> {
    let mut items = Vec::new();
    for pj in jobs {
        for i in validate::check(&pj.spec) {
            let place = pj.spans.get(&i.field).map(|&pos| {
                let (l, c) = xrsl::line_col(src, pos);
                Place::LineCol(l, c)
            });
            items.push(Problem {
                place,
                message: i.message,
                hint: Some(i.hint),
            });
        }
    }
    if items.is_empty() {
        Ok(())
    } else {
        Err(Problems::new(input, items))
    }
}

/// Check jobs that carry no positions (ADL, JSON, or built in code).
pub fn check_specs(
    input: &str,
    jobs: &[JobSpec],
    adl_places: bool,
) -> std::result::Result<(), Problems> {
    let items: Vec<Problem> = jobs
        .iter()
        .flat_map(validate::check)
        .map(|i| Problem {
            place: Some(Place::Element(if adl_places {
                i.field.adl().to_string()
            } else {
                i.field.xrsl().to_string()
            })),
            message: i.message,
            hint: Some(i.hint),
        })
        .collect();
    if items.is_empty() {
        Ok(())
    } else {
        Err(Problems::new(input, items))
    }
}

/// Read a job description file in any of the three formats (by content:
/// `<` ADL, `{`/`[` JSON, else xRSL) and check it.
pub fn load(path: &Path) -> Result<Vec<JobSpec>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io_path(path, "reading job description", e))?;
    parse_any(&path.display().to_string(), &text)
}

pub fn parse_any(input: &str, text: &str) -> Result<Vec<JobSpec>> {
    let first = text.trim_start().chars().next();
    match first {
        Some('<') => {
            let jobs = adl::read(input, text)?;
            check_specs(input, &jobs, true)?;
            Ok(jobs)
        }
        Some('{') | Some('[') => {
            let v: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::BadInput {
                input: input.to_string(),
                place: format!("{}:{}: ", e.line(), e.column()),
                reason: format!("{e}"),
                hint: Some("a JobSpec as written by `gridship jobdesc --format json`".into()),
            })?;
            let jobs: Vec<JobSpec> = if v.is_array() {
                serde_json::from_value(v)
            } else {
                serde_json::from_value(v).map(|j| vec![j])
            }
            .map_err(|e| Error::BadInput {
                input: input.to_string(),
                place: String::new(),
                reason: format!("{e}"),
                hint: Some("a JobSpec as written by `gridship jobdesc --format json`".into()),
            })?;
            check_specs(input, &jobs, false)?;
            Ok(jobs)
        }
        None => Err(Error::bad_input(input, "the job description is empty")),
        _ => {
            let parsed = xrsl::read(input, text, &BTreeMap::new())?;
            check_parsed(input, text, &parsed)?;
            Ok(parsed.into_iter().map(|p| p.spec).collect())
        }
    }
}

/// What a caller may ask beyond the site's defaults.
#[derive(Debug, Clone)]
pub struct Request {
    /// GPUs per job; default: the queue's gpus_per_job.
    pub gpus: Option<u32>,
    /// The user's command, files, walltime and memory.
    pub work: work::Work,
    /// What the image runs by itself, for a job given no command.
    pub image_command: work::ImageCommand,
}

/// Walltime when neither `--walltime` nor the queue's limit says otherwise.
pub const DEFAULT_WALLTIME_S: u64 = 6 * 3600;

fn site_err(site: &SiteProfile, place: String, reason: String, hint: String) -> Error {
    Error::BadInput {
        input: site.path.display().to_string(),
        place,
        reason,
        hint: Some(hint),
    }
}

/// A job name from an image reference: its last path part, without tag.
fn job_name_for(image: &str) -> String {
    let last = image
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(image);
    let base = last
        .split([':', '@'])
        .next()
        .unwrap_or(last)
        .trim_end_matches(".sif");
    if base.is_empty() {
        "gridship-job".into()
    } else {
        base.to_string()
    }
}

/// The job(s) that run `image` on `queue` of `site` from `template`: the
/// template is instantiated with the site's numbers, the site's required
/// RTEs, environment and attributes are added, and the result is checked.
/// `gridship jobdesc` and (later) `gridship promote` both call this.
pub fn for_image(
    site: &SiteProfile,
    queue: &str,
    image: &str,
    template: &Template,
    req: &Request,
) -> Result<Vec<JobSpec>> {
    let q = site.queue(queue)?;
    let gpus = req.gpus.unwrap_or(q.gpus_per_job);
    let qplace = format!("gpu_queues.{queue}: ");
    if gpus == 0 {
        return Err(Error::bad_input(
            "--gpus 0",
            "a GPU queue job needs at least one GPU",
        ));
    }
    match q.gpu_request {
        GpuRequest::Fixed if gpus != q.gpus_per_job => {
            return Err(site_err(
                site,
                qplace,
                format!(
                    "{} queue '{queue}' gives every job exactly {} GPU(s) and has no way to ask for {gpus}",
                    site.name, q.gpus_per_job
                ),
                format!(
                    "drop --gpus or use --gpus {}; ARC has no GPU attribute, so the queue decides",
                    q.gpus_per_job
                ),
            ));
        }
        GpuRequest::Cores | GpuRequest::Rte if gpus > q.max_gpus() => {
            return Err(site_err(
                site,
                qplace,
                format!(
                    "{} queue '{queue}' allows at most {} GPU(s) per job; {gpus} cannot be expressed",
                    site.name,
                    q.max_gpus()
                ),
                format!("use --gpus 1..{}", q.max_gpus()),
            ));
        }
        _ => {}
    }
    let cores = gpus * q.cores_per_gpu;
    let mem_per_core = q.memory_per_gpu_mb / u64::from(q.cores_per_gpu);
    let max_wall = q.max_walltime_hours.map(|h| u64::from(h) * 3600);
    let w = &req.work;
    if let (Some(want), Some(max)) = (w.walltime_s, max_wall)
        && want > max
    {
        return Err(site_err(
            site,
            qplace,
            format!(
                "--walltime {} is more than {} queue '{queue}' allows ({})",
                xrsl::format_duration(want),
                site.name,
                xrsl::format_duration(max)
            ),
            format!("use --walltime {} or less", xrsl::format_duration(max)),
        ));
    }
    if let Some(m) = w.memory_mb
        && m > mem_per_core
    {
        return Err(site_err(
            site,
            qplace,
            format!(
                "--memory {m} MB per core is more than {} queue '{queue}' gives ({mem_per_core} MB per core)",
                site.name
            ),
            format!(
                "use --memory {mem_per_core} or less, or more GPUs (--gpus), which bring more memory"
            ),
        ));
    }
    let walltime = w
        .walltime_s
        .unwrap_or_else(|| max_wall.map_or(DEFAULT_WALLTIME_S, |m| m.min(DEFAULT_WALLTIME_S)));
    let memory = w.memory_mb.unwrap_or(mem_per_core);
    let template_runs_command = template.placeholders.iter().any(|p| p.name == "EXECUTABLE");
    let command = if template_runs_command {
        Some(work::executable_and_args(
            w.command.as_ref(),
            &req.image_command,
        )?)
    } else if w.command.is_some() {
        return Err(Error::BadInput {
            input: template.input.clone(),
            place: String::new(),
            reason: "the template runs a command of its own: it has no $(EXECUTABLE) placeholder for --run".into(),
            hint: Some("declare (* @placeholder EXECUTABLE text *) and write (executable = $(EXECUTABLE)) without arguments, or drop --run".into()),
        });
    } else {
        None
    };
    let inputs = work::input_files(&w.inputs)?;
    let outputs = work::output_files(&w.outputs)?;

    let mut values = BTreeMap::new();
    values.insert("IMAGE".to_string(), image.to_string());
    values.insert("QUEUE".to_string(), queue.to_string());
    values.insert("SITE".to_string(), site.name.clone());
    values.insert("CONTAINER_RTE".to_string(), q.container_rte.clone());
    values.insert("GPUS".to_string(), gpus.to_string());
    values.insert("CORES".to_string(), cores.to_string());
    values.insert("MEMORY_MB".to_string(), memory.to_string());
    values.insert("JOBNAME".to_string(), job_name_for(image));
    values.insert("WALLTIME".to_string(), xrsl::format_duration(walltime));
    if let Some((exe, _)) = &command {
        values.insert("EXECUTABLE".to_string(), exe.clone());
    }
    let mut parsed = template.instantiate(&values)?;

    // The site's fixed attributes, read through the same strict xRSL path.
    let mut extra_src = String::from("&(executable=\"/bin/true\")");
    for (attr, vals) in &q.extra_attributes {
        let v: Vec<String> = vals.values().iter().map(|s| xrsl::quote(s)).collect();
        extra_src.push_str(&format!("\n({attr} = {})", v.join(" ")));
    }
    let extra_input = format!(
        "{} (gpu_queues.{queue}.extra_attributes, as xRSL)",
        site.path.display()
    );
    let extra = xrsl::read(&extra_input, &extra_src, &BTreeMap::new())?.remove(0);

    let mut problems = Vec::new();
    for pj in &mut parsed {
        let spans = pj.spans.clone();
        let j = &mut pj.spec;
        let conflict = |field: Field, has: String, want: String| Problem {
            place: spans.get(&field).map(|&p| {
                let (l, c) = xrsl::line_col(&template.text, p);
                Place::LineCol(l, c)
            }),
            message: format!(
                "the template sets {} = {has}, but {} queue '{queue}' needs {want}",
                field.xrsl(),
                site.name
            ),
            hint: Some(format!(
                "remove ({}=...) from the template or use the placeholder gridship fills",
                field.xrsl()
            )),
        };
        if let Some((_, args)) = &command {
            if spans.contains_key(&Field::Arguments) {
                problems.push(Problem {
                    place: spans.get(&Field::Arguments).map(|&p| {
                        let (l, c) = xrsl::line_col(&template.text, p);
                        Place::LineCol(l, c)
                    }),
                    message: "the template sets arguments, but gridship sets them from the job's command (--run, -- ARGV, or the image's own)".into(),
                    hint: Some("remove (arguments=...) from the template".into()),
                });
            }
            j.arguments = args.clone();
        }
        // What the user typed wins over the template's own numbers.
        if w.walltime_s.is_some() {
            j.walltime_s = w.walltime_s;
        }
        if w.memory_mb.is_some() {
            j.memory_mb = w.memory_mb;
        }
        work::add_files(j, &inputs, &outputs)?;
        match &j.queue {
            Some(t) if t != queue => {
                problems.push(conflict(Field::Queue, t.clone(), queue.to_string()))
            }
            _ => j.queue = Some(queue.to_string()),
        }
        match j.count {
            Some(c) if c != cores => problems.push(conflict(
                Field::Count,
                c.to_string(),
                format!("{cores} ({gpus} GPU × {} cores)", q.cores_per_gpu),
            )),
            _ => j.count = Some(cores),
        }
        // A GPU job's cores sit on the GPU's node.
        if j.count_per_node.is_none() {
            j.count_per_node = Some(cores);
        }
        match j.memory_mb {
            Some(m) if m > mem_per_core => problems.push(conflict(
                Field::Memory,
                m.to_string(),
                format!("at most {mem_per_core} MB per core"),
            )),
            Some(_) => {}
            None => j.memory_mb = Some(mem_per_core),
        }
        match (j.walltime_s, q.max_walltime_hours) {
            (None, _) => problems.push(Problem {
                place: None,
                message: "the template sets no walltime; sites kill or refuse jobs without one"
                    .into(),
                hint: Some("add (walltime=\"2h\") to the template".into()),
            }),
            (Some(w), Some(max)) if w > u64::from(max) * 3600 => problems.push(conflict(
                Field::Walltime,
                xrsl::format_duration(w),
                format!("at most {max}h"),
            )),
            _ => {}
        }
        let mut add_rte = |name: &str, options: Vec<String>| {
            if !j.runtime_environments.iter().any(|r| r.name == name) {
                j.runtime_environments.push(RuntimeEnv {
                    name: name.to_string(),
                    options,
                });
            }
        };
        if q.gpu_request == GpuRequest::Rte {
            add_rte(
                q.gpu_rte.as_deref().expect("checked on load"),
                vec![gpus.to_string()],
            );
        }
        for r in &q.rtes {
            add_rte(&r.name, r.options.clone());
        }
        for (name, value) in &q.environment {
            if !j.environment.iter().any(|e| &e.name == name) {
                j.environment.push(EnvVar {
                    name: name.clone(),
                    value: value.clone(),
                });
            }
        }
        merge_extra(j, &extra.spec, &extra.spans, |field, has, want| {
            problems.push(Problem {
                place: spans.get(&field).map(|&p| {
                    let (l, c) = xrsl::line_col(&template.text, p);
                    Place::LineCol(l, c)
                }),
                message: format!(
                    "the template sets {} = {has}, but {} requires {want}",
                    field.xrsl(),
                    site.name
                ),
                hint: Some(format!(
                    "remove it from the template; {} sets it in extra_attributes",
                    site.path.display()
                )),
            })
        });
    }
    if !problems.is_empty() {
        return Err(Problems::new(&template.input, problems).into());
    }
    check_parsed(&template.input, &template.text, &parsed)?;
    Ok(parsed.into_iter().map(|p| p.spec).collect())
}

/// Add what a site's extra_attributes set; a scalar the template set
/// differently is a conflict.
fn merge_extra(
    j: &mut JobSpec,
    e: &JobSpec,
    set: &xrsl::Spans,
    mut conflict: impl FnMut(Field, String, String),
) {
    macro_rules! scalar {
        ($field:ident, $f:expr) => {
            if set.contains_key(&$f) {
                match (&j.$field, &e.$field) {
                    (Some(a), Some(b)) if a != b => {
                        conflict($f, format!("{a:?}"), format!("{b:?}"))
                    }
                    _ => j.$field = e.$field.clone(),
                }
            }
        };
    }
    scalar!(stdout, Field::Stdout);
    scalar!(stderr, Field::Stderr);
    scalar!(gmlog, Field::Gmlog);
    scalar!(rerun, Field::Rerun);
    scalar!(priority, Field::Priority);
    scalar!(disk_mb, Field::Disk);
    scalar!(exclusive, Field::Exclusive);
    scalar!(cputime_s, Field::Cputime);
    scalar!(job_name, Field::JobName);
    for r in &e.runtime_environments {
        if !j.runtime_environments.iter().any(|x| x.name == r.name) {
            j.runtime_environments.push(r.clone());
        }
    }
    for v in &e.environment {
        if !j.environment.iter().any(|x| x.name == v.name) {
            j.environment.push(v.clone());
        }
    }
    j.output_files.extend(
        e.output_files
            .iter()
            .filter(|f| !j.output_files.contains(f))
            .cloned()
            .collect::<Vec<_>>(),
    );
    j.notify.extend(e.notify.iter().cloned());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names() {
        assert_eq!(
            job_name_for("/cvmfs/unpacked.cern.ch/reg/org/pytorch:2.3"),
            "pytorch"
        );
        assert_eq!(job_name_for("https://x/y/train.sif"), "train");
        assert_eq!(job_name_for(""), "gridship-job");
    }

    #[test]
    fn problems_render_with_places() {
        let p = Problems::new(
            "t.xrsl",
            vec![
                Problem {
                    place: Some(Place::LineCol(2, 5)),
                    message: "bad".into(),
                    hint: Some("fix".into()),
                },
                Problem {
                    place: None,
                    message: "worse".into(),
                    hint: None,
                },
            ],
        );
        let e: Error = p.into();
        assert_eq!(e.exit_code(), 2);
        let s = e.to_string();
        assert!(
            s.starts_with("t.xrsl:2:5: bad\n  hint: fix\nt.xrsl: worse"),
            "{s}"
        );
    }
}
