//! World-readable: what the image's owner can read, a grid job can read.
//!
//! Grid jobs run as pool accounts, never as the uid that owned the session.
//! A home made the Debian way (`adduser`: mode 0700) keeps the user's own
//! project from the job: a CVMFS tree is read with the kernel's permission
//! checks, and so is a SIF mounted by a setuid or root Apptainer (kernel
//! squashfs). Only squashfuse, which checks no permissions, hides it.
//!
//! For every directory and regular file, the owner's read and execute
//! (search) bits are given to group and others: 0700 → 0755, 0600 → 0644,
//! 0750 → 0755. Nothing else changes: write bits are never added, nor
//! setuid, setgid or sticky; a setuid or setgid file gets read but not
//! execute (who may run it privileged stays as the image says). Symlinks,
//! devices and fifos are left alone. Secrets are scrubbed before this runs.

use super::{RuleReport, Transform};
use crate::Result;
use crate::image::ImageConfig;
use crate::index::FsIndex;

const SETUID_SETGID: u32 = 0o6000;

/// The rule; see the module comment.
pub struct WorldReadable;

/// The mode after the rule, for a directory (`dir`) or regular file.
pub fn widened_mode(dir: bool, mode: u32) -> u32 {
    let mut add = 0;
    if mode & 0o400 != 0 {
        add |= 0o044;
    }
    if mode & 0o100 != 0 && (dir || mode & SETUID_SETGID == 0) {
        add |= 0o011;
    }
    mode | add
}

impl Transform for WorldReadable {
    fn name(&self) -> &'static str {
        "world-readable"
    }
    fn description(&self) -> &'static str {
        "the owner's read and execute/search bits given to group and others, so a pool account running the job reads what the session's user could (never write, setuid or setgid)"
    }
    fn apply(
        &self,
        index: &mut FsIndex,
        _config: &mut ImageConfig,
        report: &mut RuleReport,
    ) -> Result<()> {
        for (path, old, new) in index.remap_modes(widened_mode) {
            let held_back = if old & SETUID_SETGID != 0 && old & 0o100 != 0 && new & 0o011 != 0o011
            {
                " (setuid/setgid: execute not extended)"
            } else {
                ""
            };
            report.change(path, format!("mode {old:04o} -> {new:04o}{held_back}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Kind;

    #[test]
    fn modes() {
        for (mode, dir, want) in [
            (0o700, true, 0o755),
            (0o700, false, 0o755),
            (0o600, false, 0o644),
            (0o750, true, 0o755),
            (0o640, false, 0o644),
            (0o755, true, 0o755),
            (0o644, false, 0o644),
            // Owner search without read: search only.
            (0o300, true, 0o311),
            // Nothing for the owner: nothing for anyone.
            (0o000, false, 0o000),
            (0o070, true, 0o070),
            // Write is never given, sticky and setgid dirs keep their bits.
            (0o1700, true, 0o1755),
            (0o2770, true, 0o2775),
            // setuid/setgid files: read, never execute.
            (0o4700, false, 0o4744),
            (0o4750, false, 0o4754),
            (0o2710, false, 0o2754),
            (0o6500, false, 0o6544),
        ] {
            assert_eq!(
                widened_mode(dir, mode),
                want,
                "{mode:04o} ({})",
                if dir { "dir" } else { "file" }
            );
        }
    }

    fn node(kind: Kind, mode: u32) -> crate::index::Node {
        crate::index::Node {
            kind,
            meta: crate::index::Meta {
                mode,
                uid: 1000,
                gid: 1000,
                ..Default::default()
            },
        }
    }

    #[test]
    fn index_paths_reported_once_devices_and_symlinks_left() {
        use crate::index::Data;
        let file = |m| {
            node(
                Kind::File {
                    size: 1,
                    data: Data::Bytes(b"x"[..].into()),
                },
                m,
            )
        };
        let mut index = FsIndex::new();
        index.put("/home/bob", node(Kind::Dir, 0o700)).unwrap();
        index.put("/home/bob/run.py", file(0o600)).unwrap();
        index.put("/home/bob/ok", file(0o644)).unwrap();
        index
            .put(
                "/home/bob/tty",
                node(Kind::CharDevice { major: 4, minor: 1 }, 0o600),
            )
            .unwrap();
        index
            .put(
                "/home/bob/link",
                node(
                    Kind::Symlink {
                        target: b"run.py".to_vec(),
                    },
                    0o700,
                ),
            )
            .unwrap();
        let mut report = RuleReport::new("world-readable", "");
        WorldReadable
            .apply(&mut index, &mut ImageConfig::default(), &mut report)
            .unwrap();
        let got: Vec<(&str, &str)> = report
            .changed
            .iter()
            .map(|c| (c.path.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("/home/bob", "mode 0700 -> 0755"),
                ("/home/bob/run.py", "mode 0600 -> 0644"),
            ]
        );
        assert_eq!(index.lookup("/home/bob/tty").unwrap().2.meta.mode, 0o600);
        assert_eq!(index.lookup("/home/bob/link").unwrap().2.meta.mode, 0o700);
        assert!(report.added.is_empty() && report.removed.is_empty());
    }
}
