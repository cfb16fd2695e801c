//! Advisory `flock` locks on files that are only ever locked, never
//! written: a lock goes with the last descriptor, so a killed process
//! releases what it held.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use crate::error::IoContext;
use crate::{Error, Result};

/// How a lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

/// An open lock file; whatever lock it holds is released when it is
/// dropped (or when the process dies).
#[derive(Debug)]
pub struct LockFile {
    file: File,
    path: PathBuf,
}

impl LockFile {
    /// Open (creating) the lock file at `path`; holds no lock yet.
    pub fn open(path: &Path) -> Result<LockFile> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .at("opening the lock file", path)?;
        Ok(LockFile {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Open the lock file at `path` and take its lock, waiting for it.
    pub fn take(path: &Path, mode: Mode) -> Result<LockFile> {
        let f = LockFile::open(path)?;
        f.lock(mode)?;
        Ok(f)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Take the lock, waiting for whoever holds it. A held lock changes
    /// mode in place (flock converts).
    pub fn lock(&self, mode: Mode) -> Result<()> {
        match mode {
            Mode::Shared => self.file.lock_shared(),
            Mode::Exclusive => self.file.lock(),
        }
        .at("locking", &self.path)
    }

    /// Take the lock without waiting: `false` when another holds it.
    pub fn try_lock(&self, mode: Mode) -> Result<bool> {
        let r = match mode {
            Mode::Shared => self.file.try_lock_shared(),
            Mode::Exclusive => self.file.try_lock(),
        };
        match r {
            Ok(()) => Ok(true),
            Err(TryLockError::WouldBlock) => Ok(false),
            Err(TryLockError::Error(e)) => Err(Error::io_path(&self.path, "locking", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_locks_go_together_an_exclusive_one_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let a = LockFile::open(&p).unwrap();
        let b = LockFile::open(&p).unwrap();
        assert!(a.try_lock(Mode::Shared).unwrap());
        assert!(b.try_lock(Mode::Shared).unwrap());
        let c = LockFile::open(&p).unwrap();
        assert!(!c.try_lock(Mode::Exclusive).unwrap());
        drop(b);
        // The last sharer turns its lock exclusive in place.
        assert!(a.try_lock(Mode::Exclusive).unwrap());
        assert!(!c.try_lock(Mode::Shared).unwrap());
        drop(a);
        assert!(c.try_lock(Mode::Exclusive).unwrap());
    }
}
