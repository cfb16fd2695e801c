//! Files replaced whole: written beside their final name, synced, renamed
//! into place, then the directory synced, so that after a crash the name
//! holds the old content or the new, never part of either.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::IoContext;
use crate::{Error, Result};

/// The name [`write_atomic`]'s temporary files start with, so whoever owns
/// the directory can clear what a killed process left (the store, a CVMFS
/// repository, pressure's state directory).
pub const TEMP_PREFIX: &str = ".gridship-tmp-";

/// Write `data` to `path` through a temporary file beside it, which gets
/// `mode` (temporary files are created 0600) before the rename.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = parent_dir(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .at("creating a temporary file in", dir)?;
    tmp.write_all(data).at("writing", tmp.path())?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .at("changing mode of", tmp.path())?;
    tmp.as_file().sync_all().at("syncing", tmp.path())?;
    persist(tmp, path)
}

/// Rename a temporary file (written and synced by the caller) to `dest`,
/// in the same directory, then sync that directory so the rename lasts.
pub fn persist(tmp: tempfile::NamedTempFile, dest: &Path) -> Result<()> {
    tmp.persist(dest)
        .map_err(|e| Error::io_path(dest, "renaming into place", e.error))?;
    sync_dir(parent_dir(dest))
}

/// Make the entries of `dir` (a rename into it) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    let synced = std::fs::File::open(dir).and_then(|f| f.sync_all());
    match synced {
        // A directory this user may write but not read, or a filesystem
        // that cannot sync directories (some FUSE ones): the rename
        // stands, only its durability is out of our hands.
        Err(e)
            if e.kind() == std::io::ErrorKind::PermissionDenied
                || e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) =>
        {
            Ok(())
        }
        r => r.at("syncing", dir),
    }
}

/// The directory a file is created in: its parent, `.` for a bare name.
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_with_the_mode_asked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        write_atomic(&p, b"one", 0o644).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Nothing left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
