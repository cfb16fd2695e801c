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
//!
//! Credential files and directories ([`CREDENTIALS`]) are never opened, nor
//! anything below them, nor another path of a file hardlinked to one: an
//! image that keeps `/etc/shadow` must not publish its password hashes.
//! Each one the rule would have opened is reported as kept.

use std::collections::{BTreeMap, HashSet};
use std::sync::LazyLock;

use super::paths::{PathPattern, PatternSet};
use super::{Edit, Transform};
use crate::Result;
use crate::image::ImageConfig;
use crate::index::{FsIndex, Kind, display_path};

const SETUID_SETGID: u32 = 0o6000;

/// What the rule never opens: image paths (patterns as in site.yaml) and
/// what each holds. A directory covers everything below it. The one list;
/// the rule's report names the entry that held each path back.
pub const CREDENTIALS: &[(&str, &str)] = &[
    ("/etc/shadow", "password hashes"),
    ("/etc/shadow-", "password hashes (backup)"),
    ("/etc/gshadow", "group password hashes"),
    ("/etc/gshadow-", "group password hashes (backup)"),
    (
        "/etc/security/opasswd",
        "old password hashes (pam_pwhistory)",
    ),
    (
        "/var/cache/debconf/passwords.dat",
        "passwords given to debconf",
    ),
    ("/etc/sudoers", "sudo rules"),
    ("/etc/sudoers.d", "sudo rules"),
    ("/etc/ssl/private", "TLS private keys"),
    ("/etc/pki/tls/private", "TLS private keys"),
    ("/etc/pki/CA/private", "CA private keys"),
    ("/etc/ssh/ssh_host_*_key", "SSH host private keys"),
    ("/etc/grid-security/hostkey.pem", "grid host private key"),
    ("/etc/grid-security/*/*key.pem", "grid service private keys"),
    ("/etc/krb5.keytab", "Kerberos host keys"),
    ("**/*.keytab", "Kerberos keys"),
    ("/etc/munge", "MUNGE key (Slurm authentication)"),
    ("/etc/condor/passwords.d", "HTCondor pool passwords"),
    ("/etc/condor/tokens.d", "HTCondor IDTOKENS"),
    ("/etc/cvmfs/keys/*.key", "CernVM-FS repository private keys"),
    ("/etc/cvmfs/keys/*.masterkey", "CernVM-FS master keys"),
    ("/etc/ipsec.secrets", "IPsec secrets"),
    ("/etc/ppp/*-secrets", "PPP secrets"),
    ("/etc/wireguard", "WireGuard keys"),
    (
        "/etc/NetworkManager/system-connections",
        "network passwords",
    ),
    ("/etc/samba/smbpasswd", "Samba password hashes"),
    ("/var/lib/samba/private", "Samba secrets"),
    ("/var/lib/sss/secrets", "SSSD secrets"),
    ("/etc/mysql/debian.cnf", "MySQL maintenance password"),
    ("/etc/letsencrypt/archive", "TLS private keys"),
    ("/etc/letsencrypt/keys", "TLS private keys"),
    ("/etc/gitlab-runner", "CI runner tokens"),
    ("/var/spool/cron/crontabs", "users' crontabs"),
    ("**/.ssh", "SSH keys and configuration"),
    ("**/.gnupg", "GnuPG keys"),
    ("**/.globus", "grid user certificate and key"),
    ("**/.pki", "NSS certificate and key database"),
    ("**/.password-store", "pass passwords"),
    ("**/.local/share/keyrings", "keyrings"),
    ("**/.netrc", "login passwords"),
    ("**/.pgpass", "PostgreSQL passwords"),
    ("**/.my.cnf", "MySQL passwords"),
    ("**/.git-credentials", "git passwords and tokens"),
    ("**/.docker", "registry credentials"),
    ("**/.aws", "cloud credentials"),
    ("**/.kube", "Kubernetes credentials"),
    ("**/.config/gcloud", "cloud credentials"),
];

/// [`CREDENTIALS`] compiled, in the same order.
fn credentials() -> &'static PatternSet {
    static SET: LazyLock<PatternSet> = LazyLock::new(|| PatternSet {
        patterns: CREDENTIALS
            .iter()
            .map(|(p, _)| PathPattern::new(p, "readable::CREDENTIALS").expect("valid pattern"))
            .collect(),
    });
    &SET
}

/// The nodes at or below a [`CREDENTIALS`] path (a file hardlinked to one
/// is that node, under every name): what no rule may open to others.
pub fn credential_nodes(index: &FsIndex) -> HashSet<crate::index::NodeId> {
    let set = credentials();
    index
        .iter()
        .filter(|(key, _, _)| set.covering(key).is_some())
        .map(|(_, id, _)| id)
        .collect()
}

/// What a credential pattern holds, by its text.
fn holds(pattern: &PathPattern) -> &'static str {
    CREDENTIALS
        .iter()
        .find(|(p, _)| *p == pattern.text)
        .map_or("credentials", |(_, what)| what)
}

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

/// Home and working directories a pool account cannot enter or list
/// (`/home/NAME`, `/root`, the image's WorkingDir), with their modes: what
/// `gridship sif` without the rule warns about.
/// The warning a tree without the rule gets when a home or the working
/// directory is closed to pool accounts.
pub fn closed_homes_warning(index: &FsIndex, config: &ImageConfig) -> Option<String> {
    let closed = closed_homes(index, config);
    if closed.is_empty() {
        return None;
    }
    let list: Vec<String> = closed
        .iter()
        .map(|(p, m)| format!("{p} ({m:04o})"))
        .collect();
    Some(format!(
        "{} closed to group and others: a grid job runs as a pool account, not the session's uid, and will not read {}; --world-readable gives them the owner's read and search bits (credential files excepted)",
        list.join(", "),
        if closed.len() == 1 { "it" } else { "them" }
    ))
}

pub fn closed_homes(index: &FsIndex, config: &ImageConfig) -> Vec<(String, u32)> {
    let workdir = config
        .config
        .working_dir
        .as_deref()
        .map(|w| w.trim_matches('/').as_bytes().to_vec())
        .filter(|w| !w.is_empty());
    let mut out = Vec::new();
    for (key, _, node) in index.iter() {
        let home = key
            .strip_prefix(b"home/")
            .is_some_and(|r| !r.contains(&b'/'));
        let wanted = home || key == b"root" || workdir.as_deref() == Some(key);
        if wanted && matches!(node.kind, Kind::Dir) && node.meta.mode & 0o005 != 0o005 {
            out.push((display_path(key), node.meta.mode & 0o7777));
        }
    }
    out
}

impl Transform for WorldReadable {
    fn name(&self) -> &'static str {
        "world-readable"
    }
    fn description(&self) -> &'static str {
        "the owner's read and execute/search bits given to group and others, so a pool account running the job reads what the session's user could (never write, setuid or setgid); credential files and directories (password hashes, sudoers, private keys: readable::CREDENTIALS) are never opened"
    }
    fn apply(&self, edit: Edit<'_>) -> Result<()> {
        let Edit(index, _, report) = edit;
        // Nodes at or below a credential path, by the path the list names
        // (the first path of a node decides which entry is reported).
        // One pass gives both: the held nodes (as credential_nodes) and the
        // report lines.
        let set = credentials();
        let mut held = HashSet::new();
        let mut named: BTreeMap<String, (&'static str, u32, u64)> = BTreeMap::new();
        for (key, id, node) in index.iter() {
            let Some((pattern, at)) = set.covering_at(key) else {
                continue;
            };
            held.insert(id);
            let dir = match node.kind {
                Kind::Dir => true,
                Kind::File { .. } => false,
                _ => continue,
            };
            if widened_mode(dir, node.meta.mode) != node.meta.mode {
                let entry = named
                    .entry(display_path(at))
                    .or_insert((holds(pattern), 0, 0));
                entry.1 += 1;
                if let Kind::File { size, .. } = node.kind {
                    entry.2 += size;
                }
            }
        }
        for (path, (what, entries, bytes)) in named {
            let mode = index
                .lookup(&path)
                .map(|(_, _, n)| format!("mode {:04o} stays", n.meta.mode & 0o7777))
                .unwrap_or_default();
            let below = if entries > 1 {
                format!(", {} entries at and below it stay closed", entries)
            } else {
                String::new()
            };
            report.keep(
                path,
                bytes,
                format!("credential ({what}): never opened; {mode}{below}"),
            );
        }
        let open = |id, dir, mode| {
            if held.contains(&id) {
                mode
            } else {
                widened_mode(dir, mode)
            }
        };
        for (path, old, new) in index.remap_modes(open) {
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
    use crate::transform::RuleReport;

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
            .apply(Edit(&mut index, &mut ImageConfig::default(), &mut report))
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

    #[test]
    fn credentials_are_never_opened_and_are_reported() {
        use crate::index::Data;
        let file = |m| {
            node(
                Kind::File {
                    size: 3,
                    data: Data::Bytes(b"abc"[..].into()),
                },
                m,
            )
        };
        let mut index = FsIndex::new();
        for (path, n) in [
            ("/etc", node(Kind::Dir, 0o755)),
            ("/etc/shadow", file(0o640)),
            ("/etc/gshadow", file(0o640)),
            ("/etc/sudoers", file(0o440)),
            ("/etc/sudoers.d", node(Kind::Dir, 0o750)),
            ("/etc/sudoers.d/bob", file(0o440)),
            ("/etc/ssl", node(Kind::Dir, 0o755)),
            ("/etc/ssl/private", node(Kind::Dir, 0o700)),
            ("/etc/ssl/private/site.key", file(0o600)),
            ("/etc/security", node(Kind::Dir, 0o755)),
            ("/etc/security/opasswd", file(0o600)),
            ("/var/cache/debconf", node(Kind::Dir, 0o755)),
            ("/var/cache/debconf/passwords.dat", file(0o600)),
            ("/etc/ssh", node(Kind::Dir, 0o755)),
            ("/etc/ssh/ssh_host_ed25519_key", file(0o600)),
            ("/etc/ssh/sshd_config", file(0o600)),
            ("/home/bob", node(Kind::Dir, 0o700)),
            ("/home/bob/.ssh", node(Kind::Dir, 0o700)),
            ("/home/bob/.ssh/config", file(0o600)),
            ("/home/bob/project", node(Kind::Dir, 0o700)),
            ("/home/bob/project/params", file(0o600)),
        ] {
            index.put(path, n).unwrap();
        }
        // Another name for the shadow file stays as closed as the file.
        index.link("/home/bob/shadow-copy", "/etc/shadow").unwrap();
        let mut report = RuleReport::new("world-readable", "");
        WorldReadable
            .apply(Edit(&mut index, &mut ImageConfig::default(), &mut report))
            .unwrap();
        let mode = |p: &str| index.lookup(p).unwrap().2.meta.mode;
        for (p, want) in [
            ("/etc/shadow", 0o640),
            ("/home/bob/shadow-copy", 0o640),
            ("/etc/gshadow", 0o640),
            ("/etc/sudoers", 0o440),
            ("/etc/sudoers.d", 0o750),
            ("/etc/sudoers.d/bob", 0o440),
            ("/etc/ssl/private", 0o700),
            ("/etc/ssl/private/site.key", 0o600),
            ("/etc/security/opasswd", 0o600),
            ("/var/cache/debconf/passwords.dat", 0o600),
            ("/etc/ssh/ssh_host_ed25519_key", 0o600),
            ("/home/bob/.ssh", 0o700),
            ("/home/bob/.ssh/config", 0o600),
            // What a job needs is opened.
            ("/home/bob", 0o755),
            ("/home/bob/project", 0o755),
            ("/home/bob/project/params", 0o644),
            ("/etc/ssh/sshd_config", 0o644),
        ] {
            assert_eq!(mode(p), want, "{p}: {:04o}", mode(p));
        }
        let kept: BTreeMap<&str, &str> = report
            .kept
            .iter()
            .map(|c| (c.path.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            kept.keys().copied().collect::<Vec<_>>(),
            [
                "/etc/gshadow",
                "/etc/security/opasswd",
                "/etc/shadow",
                "/etc/ssh/ssh_host_ed25519_key",
                "/etc/ssl/private",
                "/etc/sudoers",
                "/etc/sudoers.d",
                "/home/bob/.ssh",
                "/var/cache/debconf/passwords.dat",
            ]
        );
        assert_eq!(
            kept["/etc/shadow"],
            "credential (password hashes): never opened; mode 0640 stays"
        );
        assert_eq!(
            kept["/etc/ssl/private"],
            "credential (TLS private keys): never opened; mode 0700 stays, 2 entries at and below it stay closed"
        );
        assert!(
            report
                .changed
                .iter()
                .all(|c| !c.path.starts_with("/etc/s") || c.path == "/etc/ssh/sshd_config"),
            "{:?}",
            report.changed
        );
    }

    #[test]
    fn every_credential_pattern_compiles() {
        assert_eq!(credentials().patterns.len(), CREDENTIALS.len());
        let set = credentials();
        for (key, want) in [
            ("etc/shadow", true),
            ("etc/shadow-", true),
            ("etc/ssh/ssh_host_rsa_key", true),
            ("etc/ssh/ssh_host_rsa_key.pub", false),
            ("root/.ssh/known_hosts", true),
            ("etc/cvmfs/keys/grid.cern.ch.pub", false),
            ("etc/cvmfs/keys/test.repo.masterkey", true),
            ("home/bob/project", false),
            ("etc/passwd", false),
        ] {
            assert_eq!(set.covering(key.as_bytes()).is_some(), want, "{key}");
        }
    }

    #[test]
    fn closed_homes_are_listed() {
        let mut index = FsIndex::new();
        for (p, m) in [
            ("/home/bob", 0o700),
            ("/home/alice", 0o755),
            ("/home/bob/private", 0o700),
            ("/root", 0o700),
            ("/work", 0o750),
            ("/srv", 0o700),
        ] {
            index.put(p, node(Kind::Dir, m)).unwrap();
        }
        let mut config = ImageConfig::default();
        config.config.working_dir = Some("/work".into());
        assert_eq!(
            closed_homes(&index, &config),
            [
                ("/home/bob".to_string(), 0o700),
                ("/root".to_string(), 0o700),
                ("/work".to_string(), 0o750),
            ]
        );
    }
}
