//! `gridship get`: bring a job's outputs back from the CE, like arcget.
//!
//! Files land in `DIR/JOBID/` under the names the job gave them. Each is
//! downloaded into `.NAME.gridship-part` beside its final name and renamed
//! when complete, so a killed `get` leaves only whole files plus parts that
//! the next run continues (HTTP Range). A file already there is kept; when
//! the CE's differs, that is reported, never overwritten.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::submit::ArcRest;
use crate::error::{Error, Result};

/// A-REX's per-job control files that arcget's gmlog directory holds.
const GMLOG_FILES: &[&str] = &[
    "errors",
    "failed",
    "local",
    "diag",
    "status",
    "description",
    "input",
    "output",
    "statistics",
];

/// States after which a job's session directory no longer changes.
pub const FINAL_STATES: &[&str] = &["FINISHED", "FAILED", "KILLED", "WIPED"];

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

/// Every file under `dir` of the session (recursively), as relative paths.
async fn walk(client: &ArcRest, id: &str, dir: &str, out: &mut Vec<String>) -> Result<()> {
    for (name, is_dir) in client.list_session(id, dir).await? {
        let rel = if dir.is_empty() {
            name
        } else {
            format!("{dir}/{name}")
        };
        if is_dir {
            Box::pin(walk(client, id, &rel, out)).await?;
        } else {
            out.push(rel);
        }
    }
    Ok(())
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
    client: &ArcRest,
    id: &str,
    name: &str,
    target: &Path,
) -> Result<(u64, Action, bool)> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io_path(parent, "creating", e))?;
    }
    let part = part_path(target);
    let (bytes, resumed) = client.download(id, name, &part).await?;
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
/// `gmlog` A-REX's control files into `dir/id/gmlog/`.
pub async fn get_job(
    client: &ArcRest,
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
    let mut files = Vec::new();
    walk(client, id, "", &mut files).await?;
    let (selected, missing): (Vec<String>, Vec<String>) = if outputs.is_empty() {
        (files, Vec::new())
    } else {
        let mut sel = Vec::new();
        let mut missing = Vec::new();
        for o in outputs {
            let bare = o.trim_end_matches('/');
            let under = format!("{bare}/");
            let hits: Vec<&String> = files
                .iter()
                .filter(|f| f.as_str() == bare || f.starts_with(&under))
                .collect();
            // An empty output directory exists only as a listing.
            if hits.is_empty() && !(o.ends_with('/') && client.list_session(id, bare).await.is_ok())
            {
                missing.push(o.clone());
            }
            for h in hits {
                if !sel.contains(h) {
                    sel.push(h.clone());
                }
            }
            if o.ends_with('/') {
                std::fs::create_dir_all(job_dir.join(bare))
                    .map_err(|e| Error::io_path(&job_dir, "creating", e))?;
            }
        }
        (sel, missing)
    };
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
        for name in GMLOG_FILES {
            let Some(data) = client.diagnose(id, name).await? else {
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
