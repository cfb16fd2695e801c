//! The local list of submitted jobs: which CE holds each ID, and what
//! `get` brings back.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::auth::env_path;
use crate::error::{Error, Result};

/// A submitted job as the list keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobRecord {
    pub id: String,
    /// The CE's endpoint (ARC: its REST base, `https://host:port/arex`).
    pub ce: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Unix seconds.
    pub submitted: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What `get` brings back; empty: everything the session holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
}

/// Job IDs kept on this machine: `$GRIDSHIP_ARC_JOBS`, else
/// `$XDG_DATA_HOME/gridship/arc-jobs.json` (~/.local/share/...).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobList {
    #[serde(skip)]
    pub path: PathBuf,
    pub jobs: Vec<JobRecord>,
}

pub fn default_jobs_file() -> PathBuf {
    if let Some(p) = env_path("GRIDSHIP_ARC_JOBS") {
        return p;
    }
    let data = env_path("XDG_DATA_HOME")
        .or_else(|| env_path("HOME").map(|h| h.join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("gridship").join("arc-jobs.json")
}

impl JobList {
    pub fn load(path: &Path) -> Result<JobList> {
        let mut list = match std::fs::read(path) {
            Ok(b) => serde_json::from_slice::<JobList>(&b).map_err(|e| Error::BadInput {
                input: path.display().to_string(),
                place: format!("{}:{}: ", e.line(), e.column()),
                reason: format!("not a gridship job list: {e}"),
                hint: Some("move the file away; gridship starts a new list".into()),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => JobList::default(),
            Err(e) => return Err(Error::io_path(path, "reading job list", e)),
        };
        list.path = path.to_path_buf();
        Ok(list)
    }

    /// Write to a temporary file beside it, then rename: never half a list.
    pub fn save(&self) -> Result<()> {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io_path(dir, "creating job list directory", e))?;
        let text = serde_json::to_vec_pretty(self).expect("job list serialises");
        // 0600: the list is the user's own, as it always was.
        crate::fsutil::write_atomic(&self.path, &text, 0o600)
    }

    pub fn find(&self, id: &str) -> Option<&JobRecord> {
        self.jobs.iter().find(|j| j.id == id)
    }
}

/// Seconds since the epoch, for the lists' submission times.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}
