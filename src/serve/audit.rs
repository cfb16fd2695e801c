//! The audit log: one JSON line per change or refusal, appended with
//! O_APPEND so lines from concurrent requests never interleave.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::error::{Error, Result};

pub struct AuditLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub time: String,
    pub identity: &'a str,
    pub session: &'a str,
    pub action: &'a str,
    pub result: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<&'a str>,
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<AuditLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io_path(dir, "creating the audit log's directory", e))?;
        }
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io_path(path, "opening the audit log", e))?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Record one event. A failure to write is logged, never hidden, but
    /// does not undo the change it records.
    pub fn record(
        &self,
        identity: &str,
        session: &str,
        action: &str,
        result: &str,
        operation: Option<&str>,
    ) {
        let time = crate::clock::now()
            .and_then(crate::clock::rfc3339_utc)
            .unwrap_or_default();
        let entry = Entry {
            time,
            identity,
            session,
            action,
            result,
            operation,
        };
        let mut line = serde_json::to_vec(&entry).unwrap_or_default();
        line.push(b'\n');
        let written = match self.file.lock() {
            Ok(mut f) => f.write_all(&line),
            Err(_) => Err(std::io::Error::other("audit log lock poisoned")),
        };
        if let Err(e) = written {
            tracing::error!("writing the audit log {}: {e}", self.path.display());
        }
    }
}
