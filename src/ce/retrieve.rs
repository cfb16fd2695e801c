//! `gridship get`: bring a job's outputs back from the CE, like arcget.
//!
//! Files land in `DIR/JOBID/` under the names the job gave them. Each is
//! downloaded into `.NAME.gridship-part` beside its final name and renamed
//! when complete, so a killed `get` leaves only whole files plus parts that
//! the next run continues (ARC: by HTTP Range). A file already there is
//! kept; when the CE's differs, that is reported, never overwritten.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{ComputeElement, Fetch, JobList, Phase};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Downloaded,
    /// An earlier, interrupted download was continued.
    Resumed,
    /// Already there with the same content.
    Unchanged,
}

#[derive(Debug, Clone, Serialize)]
pub struct FetchedFile {
    /// Relative to the job's directory.
    pub name: String,
    pub bytes: u64,
    pub action: Action,
}

/// What `get` did for one job.
#[derive(Debug, Clone, Serialize)]
pub struct Fetched {
    pub id: String,
    pub state: String,
    pub dir: PathBuf,
    pub files: Vec<FetchedFile>,
    /// Outputs the description names that the CE does not have.
    pub missing: Vec<String>,
    /// Files already here that differ from the CE's (kept as they were).
    pub conflicts: Vec<String>,
}

impl Fetched {
    /// Everything came back whole.
    pub fn complete(&self) -> bool {
        self.missing.is_empty() && self.conflicts.is_empty()
    }
}

/// The temporary name a download is written under.
pub fn part_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.gridship-part"))
}

/// A listed output path stays inside the job's directory: relative, no
/// empty, `.` or `..` component. A CE is not trusted with where files land.
fn safe_path(p: &str) -> bool {
    !p.is_empty() && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// `path` is the output `o` or inside it.
fn under(o: &str, path: &str) -> bool {
    let bare = o.trim_end_matches('/');
    path == bare || path.strip_prefix(bare).is_some_and(|r| r.starts_with('/'))
}

fn same_content(a: &Path, b: &Path) -> Result<bool> {
    use std::io::Read;
    let (ma, mb) = (
        std::fs::metadata(a).map_err(|e| Error::io_path(a, "reading", e))?,
        std::fs::metadata(b).map_err(|e| Error::io_path(b, "reading", e))?,
    );
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let open = |p: &Path| std::fs::File::open(p).map_err(|e| Error::io_path(p, "reading", e));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = fa
            .read(&mut ba)
            .map_err(|e| Error::io_path(a, "reading", e))?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])
            .map_err(|e| Error::io_path(b, "reading", e))?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Download one session file to `target` through its part file.
async fn fetch_one(
    client: &dyn ComputeElement,
    id: &str,
    name: &str,
    target: &Path,
) -> Result<(u64, Action, bool)> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io_path(parent, "creating", e))?;
    }
    let part = part_path(target);
    let Fetch { bytes, resumed } = client.fetch(id, name, &part).await?;
    let (action, conflict) = settle(&part, target, resumed)?;
    Ok((bytes, action, conflict))
}

/// Rename a complete part into place, unless a file is there already:
/// then the part goes and a different content is reported as a conflict.
fn settle(part: &Path, target: &Path, resumed: bool) -> Result<(Action, bool)> {
    if target.exists() {
        let same = same_content(part, target)?;
        std::fs::remove_file(part).map_err(|e| Error::io_path(part, "removing", e))?;
        return Ok((Action::Unchanged, !same));
    }
    std::fs::rename(part, target).map_err(|e| Error::io_path(target, "renaming into", e))?;
    Ok((
        if resumed {
            Action::Resumed
        } else {
            Action::Downloaded
        },
        false,
    ))
}

/// Bring back job `id`'s outputs (`outputs` as the description names them;
/// empty: everything in its session directory) into `dir/id/`, and with
/// `gmlog` the CE's own records of the job (A-REX's control files, as arcget
/// keeps them) into `dir/id/gmlog/`.
pub async fn get_job(
    client: &dyn ComputeElement,
    id: &str,
    state: &str,
    outputs: &[String],
    dir: &Path,
    gmlog: bool,
) -> Result<Fetched> {
    if id.is_empty() || id.contains('/') || id.starts_with('.') {
        return Err(Error::bad_input(id, "not a job ID"));
    }
    let job_dir = dir.join(id);
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    for e in client.list_outputs(id).await? {
        if !safe_path(&e.path) {
            return Err(super::ce_error(
                client.endpoint(),
                format!(
                    "listing the outputs of job {id}: unusable name {:?}",
                    e.path
                ),
            ));
        }
        if e.is_dir {
            dirs.push(e.path);
        } else {
            files.push(e.path);
        }
    }
    let wanted = |p: &str| outputs.is_empty() || outputs.iter().any(|o| under(o, p));
    let missing: Vec<String> = outputs
        .iter()
        .filter(|o| !files.iter().chain(&dirs).any(|p| under(o, p)))
        .cloned()
        .collect();
    files.retain(|f| wanted(f));
    dirs.retain(|d| wanted(d));
    let selected = files;
    // Directories come back even when empty (the job made them).
    for d in &dirs {
        let local = job_dir.join(d);
        std::fs::create_dir_all(&local).map_err(|e| Error::io_path(&local, "creating", e))?;
    }
    std::fs::create_dir_all(&job_dir).map_err(|e| Error::io_path(&job_dir, "creating", e))?;
    let mut fetched = Fetched {
        id: id.to_string(),
        state: state.to_string(),
        dir: job_dir.clone(),
        files: Vec::new(),
        missing,
        conflicts: Vec::new(),
    };
    for name in selected {
        let target = job_dir.join(&name);
        let (bytes, action, conflict) = fetch_one(client, id, &name, &target).await?;
        if conflict {
            fetched.conflicts.push(name.clone());
        }
        fetched.files.push(FetchedFile {
            name,
            bytes,
            action,
        });
    }
    if gmlog {
        for name in client.diagnostic_names() {
            let Some(data) = client.diagnostic(id, name).await? else {
                continue;
            };
            let rel = format!("gmlog/{name}");
            let target = job_dir.join(&rel);
            let gdir = job_dir.join("gmlog");
            std::fs::create_dir_all(&gdir).map_err(|e| Error::io_path(&gdir, "creating", e))?;
            let part = part_path(&target);
            std::fs::write(&part, &data).map_err(|e| Error::io_path(&part, "writing", e))?;
            let (action, conflict) = settle(&part, &target, false)?;
            if conflict {
                fetched.conflicts.push(rel.clone());
            }
            fetched.files.push(FetchedFile {
                name: rel,
                bytes: data.len() as u64,
                action,
            });
        }
    }
    Ok(fetched)
}

/// What `get` did for its jobs.
#[derive(Debug, Clone, Default)]
pub struct GetReport {
    pub fetched: Vec<Fetched>,
    /// Jobs cleaned from the CE after everything came back.
    pub cleaned: Vec<String>,
    /// One line for each job that did not come back whole, naming it.
    pub problems: Vec<String>,
}

/// `gridship get` for jobs of one CE, added to `report`: each job's status,
/// then, if it has ended, its outputs (as `list` records them; else
/// everything) into `dir/ID/`, then with `clean` the job is cleaned when
/// everything came back. A job that cannot be fetched is a problem, not an
/// error: the others still come back.
pub async fn get_jobs(
    client: &dyn ComputeElement,
    ids: &[String],
    list: &JobList,
    dir: &Path,
    gmlog: bool,
    clean: bool,
    report: &mut GetReport,
) -> Result<()> {
    for r in client.status(ids).await? {
        if !r.ok() {
            report
                .problems
                .push(format!("{}: {} {}", r.id, r.status_code, r.reason));
            continue;
        }
        let state = r.state.clone().unwrap_or_default();
        if !r.phase.is_final() {
            report.problems.push(format!(
                "{}: still {state}; wait for it with `gridship status --wait {}`",
                r.id, r.id
            ));
            continue;
        }
        let outputs = list
            .find(&r.id)
            .map(|j| j.outputs.clone())
            .unwrap_or_default();
        let f = match get_job(client, &r.id, &state, &outputs, dir, gmlog).await {
            Ok(f) => f,
            Err(e) => {
                report.problems.push(format!("{}: {e}", r.id));
                continue;
            }
        };
        if r.phase != Phase::Finished {
            report.problems.push(format!(
                "{}: the job ended {state}; what it left is in {}",
                r.id,
                f.dir.display()
            ));
        }
        if !f.missing.is_empty() {
            report
                .problems
                .push(format!("{}: the CE has no {}", r.id, f.missing.join(", ")));
        }
        for c in &f.conflicts {
            report.problems.push(format!(
                "{}: {} differs from the CE's copy and was kept; move it away and run get again",
                r.id,
                f.dir.join(c).display()
            ));
        }
        if clean && f.conflicts.is_empty() && f.missing.is_empty() {
            for c in client.clean(std::slice::from_ref(&r.id)).await? {
                if c.ok() {
                    report.cleaned.push(c.id);
                } else {
                    report
                        .problems
                        .push(format!("{}: clean: {} {}", c.id, c.status_code, c.reason));
                }
            }
        }
        report.fetched.push(f);
    }
    Ok(())
}
