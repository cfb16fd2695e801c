//! The `serve:` section of config.yaml: where the service listens, whom it
//! trusts, where it keeps state, outputs and the audit log, and its limits.
//!
//! ```yaml
//! serve:
//!   listen: 0.0.0.0:8444
//!   tls: {cert: /etc/grid-security/hostcert.pem, key: /etc/grid-security/hostkey.pem}
//!   client_ca: /etc/grid-security/certificates
//!   tokens:
//!     audiences: [https://devnode.example.org:8444]
//!     issuers: [{issuer: https://wlcg.cloud.cnaf.infn.it/, keys: /etc/gridship/wlcg-jwks.json}]
//!   admins: ["/C=UK/O=eScience/OU=Glasgow/CN=site admin"]
//!   sockets: /run/gridship/sessions
//!   state: /var/lib/gridship/serve
//!   outputs: /var/lib/gridship/outputs
//!   sites: [glasgow]
//!   images: [registry.example.org/gridship/]
//!   limits: {node: 2, user: 1, queued_per_user: 10}
//!   retention_days: 14
//!   audit: /var/log/gridship/audit.jsonl
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::token::TokenIssuer;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    /// `aud` values this service accepts (besides the WLCG "any").
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub issuers: Vec<TokenIssuer>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Operations running at once on the node.
    #[serde(default = "one")]
    pub node: usize,
    /// Operations of one identity running at once.
    #[serde(default = "one")]
    pub user: usize,
    /// Operations one identity may have waiting.
    #[serde(default = "ten")]
    pub queued_per_user: usize,
}

fn one() -> usize {
    1
}
fn ten() -> usize {
    10
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            node: 1,
            user: 1,
            queued_per_user: 10,
        }
    }
}

/// The section as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// HTTPS address; none: only the session sockets.
    pub listen: Option<String>,
    pub tls: Option<TlsFiles>,
    /// CA certificates (HASH.0) and CRLs (HASH.r0), the grid layout.
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub tokens: TokenSection,
    /// Identities (DN, or ISSUER#SUBJECT) that see and act on every session.
    #[serde(default)]
    pub admins: Vec<String>,
    /// One directory per session below this, mounted into the session.
    pub sockets: PathBuf,
    /// The operations' record and event logs.
    pub state: PathBuf,
    /// Artifacts per identity and session; downloads come only from here.
    pub outputs: PathBuf,
    /// Sites users may promote for (empty: every site the node knows).
    #[serde(default)]
    pub sites: Vec<String>,
    /// Image name prefixes a new session may start from.
    #[serde(default)]
    pub images: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    /// Days artifacts are kept.
    #[serde(default = "retention")]
    pub retention_days: u64,
    /// One JSON line per change.
    pub audit: PathBuf,
    /// Ask the engine for GPUs for new sessions (`--gpus all`).
    #[serde(default = "yes")]
    pub gpus: bool,
    /// The uid of a new session's user: its home gets the ssh key. (On the
    /// socket, any process inside the session speaks for its owner.)
    #[serde(default = "session_uid")]
    pub session_uid: u32,
}

fn retention() -> u64 {
    14
}
fn yes() -> bool {
    true
}
fn session_uid() -> u32 {
    1000
}

#[derive(Deserialize)]
struct FileWithServe {
    serve: Option<ServeConfig>,
}

fn bad(path: &Path, place: &str, reason: impl Into<String>) -> Error {
    Error::BadInput {
        input: path.display().to_string(),
        place: place.into(),
        reason: reason.into(),
        hint: Some("see the serve: section in the README".into()),
    }
}

impl ServeConfig {
    /// The `serve:` section of `path` (the other keys are config.yaml's
    /// own, checked by its own reader).
    pub fn load(path: &Path) -> Result<ServeConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io_path(path, "reading the service's config", e))?;
        // Only serve: is read here (other keys are config::file's, checked there).
        let f: FileWithServe =
            serde_saphyr::from_str(&text).map_err(|e| bad(path, "", e.to_string()))?;
        let c = f
            .serve
            .ok_or_else(|| bad(path, "", "has no serve: section"))?;
        c.check(path)?;
        Ok(c)
    }

    /// What `serve --check-config` checks beyond the types: paths absolute,
    /// the TLS pair and trust there when HTTPS is on, limits above zero.
    pub fn check(&self, path: &Path) -> Result<()> {
        for (key, p) in [
            ("serve.sockets", &self.sockets),
            ("serve.state", &self.state),
            ("serve.outputs", &self.outputs),
            ("serve.audit", &self.audit),
        ] {
            if !p.is_absolute() {
                return Err(bad(
                    path,
                    &format!("{key}: "),
                    format!("'{}' is not an absolute path", p.display()),
                ));
            }
        }
        if let Some(listen) = &self.listen {
            listen.parse::<std::net::SocketAddr>().map_err(|e| {
                bad(
                    path,
                    "serve.listen: ",
                    format!("'{listen}' is not ADDRESS:PORT: {e}"),
                )
            })?;
            let tls = self.tls.as_ref().ok_or_else(|| {
                bad(
                    path,
                    "serve.tls: ",
                    "listen is set, so HTTPS needs tls: {cert, key}",
                )
            })?;
            for (key, p) in [("serve.tls.cert", &tls.cert), ("serve.tls.key", &tls.key)] {
                if !p.is_file() {
                    return Err(bad(
                        path,
                        &format!("{key}: "),
                        format!("'{}' is not a readable file", p.display()),
                    ));
                }
            }
            if self.client_ca.is_none() && self.tokens.issuers.is_empty() {
                return Err(bad(
                    path,
                    "serve: ",
                    "listen is set but nobody could log in: give client_ca, tokens.issuers or both",
                ));
            }
        }
        if !self.tokens.issuers.is_empty() && self.tokens.audiences.is_empty() {
            return Err(bad(
                path,
                "serve.tokens.audiences: ",
                "token issuers are set but no audience: a token for any other service would do",
            ));
        }
        if self.limits.node == 0 || self.limits.user == 0 || self.limits.queued_per_user == 0 {
            return Err(bad(path, "serve.limits: ", "every limit must be 1 or more"));
        }
        for s in &self.sites {
            if s.is_empty() || s.contains('/') {
                return Err(bad(
                    path,
                    "serve.sites: ",
                    format!("'{s}' is not a site name"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("config.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn the_section_is_read_and_other_keys_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "site: glasgow\nserve:\n  sockets: /run/g\n  state: /var/lib/g/s\n  outputs: /var/lib/g/o\n  audit: /var/log/g.jsonl\n  admins: [\"/CN=admin\"]\n  limits: {node: 2}\n",
        );
        let c = ServeConfig::load(&p).unwrap();
        assert_eq!(c.admins, ["/CN=admin"]);
        assert_eq!(c.limits.node, 2);
        assert_eq!(c.limits.user, 1);
        assert_eq!(c.retention_days, 14);
        assert!(c.listen.is_none());
    }

    #[test]
    fn mistakes_name_the_file_and_key() {
        let d = tempfile::tempdir().unwrap();
        let base = "serve:\n  sockets: /run/g\n  state: /s\n  outputs: /o\n  audit: /a\n";
        let cases = [
            (format!("{base}  listn: 1\n"), "listn"),
            (
                base.replace("/run/g", "run/g"),
                "serve.sockets: 'run/g' is not an absolute path",
            ),
            (
                format!("{base}  listen: 0.0.0.0:8444\n"),
                "serve.tls: listen is set",
            ),
            (format!("{base}  limits: {{node: 0}}\n"), "serve.limits"),
            ("site: x\n".to_string(), "has no serve: section"),
        ];
        for (text, want) in cases {
            let p = write(d.path(), &text);
            let e = ServeConfig::load(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
            assert!(e.contains(&p.display().to_string()), "{e}");
        }
    }
}
