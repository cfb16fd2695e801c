//! Locks between publishers of one repository on one machine: advisory
//! `flock`s on files beside the repository's lock, so a killed publisher
//! releases them with its last file descriptor.
//!
//! - the repository lock: shared by `dir` publishers, exclusive for gc and
//!   for the server backends (CVMFS allows one transaction per repository);
//! - one lock per public name and per tree (`.flat/xx/D`, `.layers/xx/D`)
//!   and one for the gc schedule: `dir` publishers of different images
//!   run at once, two of the same image (or sharing a tree) take turns.
//!
//! Every wait has a deadline and ends in an error that says what it waited
//! for; nothing has been written by then.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::digest::Digest;
use crate::error::IoContext;
use crate::lockfile::LockFile;
pub use crate::lockfile::Mode;
use crate::{Error, Result};

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct Held {
    file: LockFile,
}

impl Held {
    /// Turn a shared lock into an exclusive one, waiting up to `timeout`
    /// for the other holders.
    pub fn make_exclusive(&self, timeout: Duration, what: &str) -> Result<()> {
        let started = Instant::now();
        let mut said = false;
        loop {
            if self.file.try_lock(Mode::Exclusive)? {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(timed_out(self.file.path(), timeout, what));
            }
            if !said {
                tracing::warn!("{what}: publishers are writing; waiting for them");
                said = true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Turn an exclusive lock into a shared one (flock converts in place).
    pub fn share(&self) -> Result<()> {
        self.file.lock(Mode::Shared)
    }
}

/// Take the lock at `path` without waiting: `None` when someone holds it.
pub fn try_take(path: &Path, mode: Mode) -> Result<Option<Held>> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).at("creating", dir)?;
    }
    let file = LockFile::open(path)?;
    Ok(file.try_lock(mode)?.then_some(Held { file }))
}

/// Take the lock at `path`, waiting up to `timeout` for whoever holds it.
/// `what` names the thing locked, for the log and the error.
pub fn take(path: &Path, mode: Mode, timeout: Duration, what: &str) -> Result<Held> {
    let started = Instant::now();
    let mut said = false;
    loop {
        if let Some(held) = try_take(path, mode)? {
            if said {
                tracing::info!(
                    "{what}: lock taken after {:.1}s",
                    started.elapsed().as_secs_f64()
                );
            }
            return Ok(held);
        }
        if started.elapsed() >= timeout {
            return Err(timed_out(path, timeout, what));
        }
        if !said {
            tracing::warn!("{what}: another publisher holds it; waiting");
            said = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn timed_out(path: &Path, timeout: Duration, what: &str) -> Error {
    Error::Other(format!(
        "gave up after {}s waiting for {what}: another publisher holds {} (nothing was changed)\n  hint: let it finish and run again, or wait longer with --lock-timeout SECONDS",
        timeout.as_secs(),
        path.display()
    ))
}

/// The lock file of one thing (a public name, a tree, the schedule) of the
/// repository whose lock is `repo_lock`.
pub fn item_path(repo_lock: &Path, key: &str) -> PathBuf {
    let hex = Digest::of_bytes(key.as_bytes()).hex()[..24].to_string();
    repo_lock.with_extension("d").join(format!("{hex}.lock"))
}

/// Remove the item lock files of the repository whose lock is `repo_lock`.
/// Only for the holder of the exclusive repository lock: item locks are
/// taken under the shared one, so nobody holds or waits on them then.
pub fn clear_items(repo_lock: &Path) -> Result<()> {
    let dir = repo_lock.with_extension("d");
    match fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io_path(&dir, "removing", e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exclusive_lock_waits_then_names_what_it_waited_for() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.lock");
        let a = try_take(&p, Mode::Shared).unwrap().unwrap();
        // Shared locks go together; an exclusive one waits for them.
        let b = try_take(&p, Mode::Shared).unwrap().unwrap();
        assert!(try_take(&p, Mode::Exclusive).unwrap().is_none());
        let e = take(
            &p,
            Mode::Exclusive,
            Duration::from_millis(300),
            "the test image",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("waiting for the test image"), "{e}");
        assert!(e.contains("nothing was changed"), "{e}");
        drop((a, b));
        take(&p, Mode::Exclusive, Duration::from_secs(1), "x").unwrap();
        assert_ne!(item_path(&p, "name:a"), item_path(&p, "name:b"));
    }
}
