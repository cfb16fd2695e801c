//! The CVMFS publisher's widening, as DUCC does it before a publish.

use crate::Result;

use super::{Edit, Transform};

/// Make every entry readable by the publisher, as DUCC does before a
/// publish: files `| 0600`, directories `| 0700` (CVMFS reads the tree as
/// the repository owner). Each widened path is reported.
pub struct Publishable;

impl Transform for Publishable {
    fn name(&self) -> &'static str {
        "cvmfs-publishable"
    }
    fn description(&self) -> &'static str {
        "owner read/write (files) and read/write/search (directories) added, as DUCC does, so the publisher can read every entry (credential files: owner read and search only)"
    }
    fn apply(&self, edit: Edit<'_>) -> Result<()> {
        let Edit(index, _, report) = edit;
        // Owner rw (files) and rwx (directories), as DUCC does; credential
        // files only get what reading them takes (owner r, and x on a
        // directory), never write: readable::CREDENTIALS.
        let held = crate::transform::readable::credential_nodes(index);
        let owner = |id, dir: bool, mode: u32| {
            mode | match (held.contains(&id), dir) {
                (false, true) => 0o700,
                (false, false) => 0o600,
                (true, true) => 0o500,
                (true, false) => 0o400,
            }
        };
        for (path, old, mode) in index.remap_modes(owner) {
            report.change(path, format!("mode {old:04o} -> {mode:04o}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Data, FsIndex, Kind, Meta, Node};
    use crate::transform::RuleReport;

    /// The publisher may read every entry; a credential file gains read
    /// (and a directory search) for its owner, never write.
    #[test]
    fn publishable_never_gives_credentials_write() {
        let node = |kind, mode| Node {
            kind,
            meta: Meta {
                mode,
                ..Default::default()
            },
        };
        let file = |mode| {
            node(
                Kind::File {
                    size: 1,
                    data: Data::Bytes(b"x"[..].into()),
                },
                mode,
            )
        };
        let mut index = FsIndex::new();
        for (p, n) in [
            ("/etc/shadow", file(0o000)),
            ("/etc/sudoers", file(0o440)),
            ("/etc/ssl/private", node(Kind::Dir, 0o000)),
            ("/opt/app/run", file(0o500)),
            ("/opt/app/data", node(Kind::Dir, 0o500)),
        ] {
            index.put(p, n).unwrap();
        }
        let mut report = RuleReport::new("cvmfs-publishable", "");
        Publishable
            .apply(super::Edit(
                &mut index,
                &mut Default::default(),
                &mut report,
            ))
            .unwrap();
        let mode = |p: &str| index.lookup(p).unwrap().2.meta.mode;
        assert_eq!(mode("/etc/shadow"), 0o400);
        assert_eq!(mode("/etc/sudoers"), 0o440);
        assert_eq!(mode("/etc/ssl/private"), 0o500);
        assert_eq!(mode("/opt/app/run"), 0o700);
        assert_eq!(mode("/opt/app/data"), 0o700);
    }
}
