//! Strip sshd: an interactive session's SSH server has no place in a batch
//! image (it would never run, and its host keys and authorized_keys must
//! not be published). The ssh client stays.
//!
//! Removed: the server binaries, its configuration, host keys,
//! authorized_keys in every home, /run/sshd, and its service units and
//! init scripts. An Entrypoint/Cmd that starts sshd, directly, through a
//! shell command or through an entrypoint script, is replaced by a plain
//! shell, recorded in the report.

use std::collections::HashMap;

use regex::bytes::Regex;

use super::paths::PatternSet;
use super::{Edit, RuleReport, Transform, remove_where};
use crate::Result;
use crate::image::ImageConfig;
use crate::index::{FsIndex, Kind, NodeId};

/// What belongs to the SSH server (Debian, Ubuntu, RHEL, Alpine, s6 and
/// supervisor layouts).
const SERVER_PATHS: &[&str] = &[
    "/usr/sbin/sshd",
    "/usr/bin/sshd",
    "/usr/lib/openssh/sshd-session",
    "/usr/lib/openssh/sshd-auth",
    "/usr/lib/openssh/sftp-server",
    "/usr/lib/ssh/sshd-session",
    "/usr/lib/ssh/sftp-server",
    "/usr/libexec/openssh/sshd-session",
    "/usr/libexec/openssh/sshd-auth",
    "/usr/libexec/openssh/sshd-keygen",
    "/usr/libexec/openssh/sftp-server",
    "/usr/libexec/sshd-session",
    "/etc/ssh/sshd_config",
    "/etc/ssh/sshd_config.d",
    "/etc/ssh/ssh_host_*",
    "/etc/ssh/moduli",
    "/etc/ssh/authorized_keys",
    "/usr/share/openssh/sshd_config*",
    "/run/sshd",
    "/run/sshd.pid",
    "/var/run/sshd",
    "/var/run/sshd.pid",
    "/etc/default/ssh",
    "/etc/sysconfig/sshd",
    "/etc/pam.d/sshd",
    "/etc/init.d/ssh",
    "/etc/init.d/sshd",
    "/etc/rc?.d/[SK][0-9][0-9]ssh",
    "/etc/rc?.d/[SK][0-9][0-9]sshd",
    "/etc/ufw/applications.d/openssh-server",
    "/lib/systemd/system/ssh.service",
    "/lib/systemd/system/ssh@.service",
    "/lib/systemd/system/ssh.socket",
    "/lib/systemd/system/rescue-ssh.target",
    "/lib/systemd/system/sshd*.service",
    "/lib/systemd/system/sshd*.socket",
    "/lib/systemd/system/sshd-keygen.target",
    "/usr/lib/systemd/system/ssh.service",
    "/usr/lib/systemd/system/ssh@.service",
    "/usr/lib/systemd/system/ssh.socket",
    "/usr/lib/systemd/system/rescue-ssh.target",
    "/usr/lib/systemd/system/sshd*.service",
    "/usr/lib/systemd/system/sshd*.socket",
    "/usr/lib/systemd/system/sshd-keygen.target",
    "/etc/systemd/system/sshd.service",
    "/etc/systemd/system/*.wants/ssh.service",
    "/etc/systemd/system/*.wants/ssh.socket",
    "/etc/systemd/system/*.wants/sshd.service",
    "/etc/supervisor/conf.d/sshd.conf",
    "/etc/supervisor/conf.d/ssh.conf",
    "/etc/services.d/sshd",
    "/etc/s6-overlay/s6-rc.d/sshd",
    "/etc/s6-overlay/s6-rc.d/user/contents.d/sshd",
    "**/.ssh/authorized_keys",
    "**/.ssh/authorized_keys2",
];

/// A command that starts the SSH server: `sshd` run as a command (not a
/// path such as /run/sshd or sshd_config), or its service started.
fn starts_sshd() -> Regex {
    Regex::new(
        r#"(?m)(?:^|[\s;&|(!`'"])(?:(?:/usr)?/s?bin/|/usr/libexec/)?sshd(?:[\s;&|)'"`]|$)|\bservice\s+sshd?\s+(?:re)?start\b|/etc/init\.d/sshd?\s+(?:re)?start\b|\bsystemctl\s+(?:re)?start\s+sshd?\b|\brc-service\s+sshd\s+(?:re)?start\b"#,
    )
    .expect("valid regex")
}

pub struct StripSshd<'a> {
    /// Contents of the files Entrypoint/Cmd run ([`entry_scripts`]).
    pub scripts: &'a HashMap<String, Vec<u8>>,
}

impl Transform for StripSshd<'_> {
    fn name(&self) -> &'static str {
        "strip-sshd"
    }
    fn description(&self) -> &'static str {
        "SSH server, its configuration, host keys, authorized_keys, service units; an sshd-starting entrypoint"
    }
    fn apply(&self, edit: Edit<'_>) -> Result<()> {
        let Edit(index, config, report) = edit;
        let texts: Vec<String> = SERVER_PATHS.iter().map(|s| s.to_string()).collect();
        let patterns = PatternSet::compile(&texts, "built-in strip-sshd rule")?;
        remove_where(
            index,
            report,
            |key, _, _| {
                patterns.matching(key).map(|p| {
                    if p.text.starts_with("/etc/ssh/ssh_host_") {
                        "sshd host key".to_string()
                    } else if p.text.contains("authorized_keys") {
                        "sshd authorized_keys".to_string()
                    } else {
                        format!("ssh server ({})", p.text)
                    }
                })
            },
            |_| false,
        );
        self.replace_command(index, config, report);
        if let Some(ports) = config
            .config
            .extra
            .get_mut("ExposedPorts")
            .and_then(|p| p.as_object_mut())
            && ports.remove("22/tcp").is_some()
        {
            report.change(
                "config:ExposedPorts",
                "port 22/tcp (sshd) no longer exposed",
            );
        }
        Ok(())
    }
}

impl StripSshd<'_> {
    fn replace_command(&self, index: &FsIndex, config: &mut ImageConfig, report: &mut RuleReport) {
        let re = starts_sshd();
        let c = &config.config;
        let argv: Vec<String> = c
            .entrypoint
            .iter()
            .flatten()
            .chain(c.cmd.iter().flatten())
            .cloned()
            .collect();
        let mut why = None;
        // The command line itself: `sshd -D`, `sh -c "... sshd ..."`.
        for a in &argv {
            if re.is_match(a.as_bytes()) {
                why = Some(format!("the command line starts sshd ({a:?})"));
                break;
            }
        }
        if why.is_none() {
            for (path, text) in self.scripts {
                if let Some(m) = re.find(text) {
                    let line = text[..m.start()].iter().filter(|&&b| b == b'\n').count() + 1;
                    why = Some(format!("{path} starts sshd (line {line})"));
                    break;
                }
            }
        }
        let Some(why) = why else {
            return;
        };
        let shell = if index.lookup("/bin/bash").is_some() {
            "/bin/bash"
        } else {
            "/bin/sh"
        };
        let before = serde_json::json!({"Entrypoint": c.entrypoint, "Cmd": c.cmd});
        config.config.entrypoint = None;
        config.config.cmd = Some(vec![shell.to_string()]);
        report.change(
            "config:Entrypoint",
            format!("{why}; was {before}, now no entrypoint and Cmd [\"{shell}\"] (a job's command runs directly)"),
        );
    }
}

/// The regular files Entrypoint and Cmd run (absolute, or found on the
/// config's PATH), symlinks followed inside the image: their contents go
/// to [`StripSshd::scripts`] after the content scan.
pub fn entry_scripts(index: &FsIndex, config: &ImageConfig) -> Vec<(String, NodeId)> {
    let c = &config.config;
    let path_env = c
        .env
        .iter()
        .flatten()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .to_string();
    let mut out = Vec::new();
    for a in c.entrypoint.iter().flatten().chain(c.cmd.iter().flatten()) {
        let candidates: Vec<String> = if a.starts_with('/') {
            vec![a.clone()]
        } else if !a.contains('/') && !a.is_empty() && !a.starts_with('-') {
            path_env
                .split(':')
                .filter(|d| d.starts_with('/'))
                .map(|d| format!("{}/{a}", d.trim_end_matches('/')))
                .collect()
        } else {
            continue;
        };
        for cand in candidates {
            if let Some((_, id)) = index.follow(&cand)
                && matches!(index.node(id).kind, Kind::File { .. })
                && !out.iter().any(|(_, i)| *i == id)
            {
                out.push((cand, id));
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sshd_commands() {
        let re = starts_sshd();
        for yes in [
            "/usr/sbin/sshd -D",
            "sshd",
            "mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e",
            "service ssh start; sleep infinity",
            "/etc/init.d/ssh start",
            "systemctl start sshd",
            "exec sshd -D",
        ] {
            assert!(re.is_match(yes.as_bytes()), "{yes}");
        }
        for no in [
            "mkdir -p /run/sshd",
            "cat /etc/ssh/sshd_config",
            "ssh user@host",
            "python3 train.py",
            "ls /var/run/sshd.pid",
            "sshd_wrapper.sh",
        ] {
            assert!(!re.is_match(no.as_bytes()), "{no}");
        }
    }
}
