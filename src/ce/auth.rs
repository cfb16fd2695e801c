//! Which credential a client presents to a CE, and where it comes from:
//! the flags, else the usual grid environment variables and paths. Kept
//! apart from any one CE kind: HTCondor-CEs take the same tokens and proxies.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// Which credential to present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AuthMode {
    /// A bearer token when one is found, else X.509.
    #[default]
    Auto,
    X509,
    Token,
}

/// Where credentials come from; unset fields fall back to the usual grid
/// environment variables and paths.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Trusted CAs: a PEM file.
    pub ca_file: Option<PathBuf>,
    /// Trusted CAs: a directory of PEM files (`X509_CERT_DIR`, default /etc/grid-security/certificates).
    pub ca_dir: Option<PathBuf>,
    /// RFC 3820 proxy (cert + key + chain); default `X509_USER_PROXY`, then /tmp/x509up_u$UID.
    pub proxy: Option<PathBuf>,
    /// Certificate and key instead of a proxy (`X509_USER_CERT`/`X509_USER_KEY`).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub timeout: Option<Duration>,
}

/// How the token was found, ARC's order: `BEARER_TOKEN`, `BEARER_TOKEN_FILE`,
/// `$XDG_RUNTIME_DIR/bt_u$UID`.
pub fn find_token() -> Result<Option<(String, String)>> {
    if let Ok(t) = std::env::var("BEARER_TOKEN") {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(Some((t, "BEARER_TOKEN".into())));
        }
    }
    let file = match std::env::var_os("BEARER_TOKEN_FILE") {
        Some(f) => Some((PathBuf::from(f), "BEARER_TOKEN_FILE")),
        None => std::env::var_os("XDG_RUNTIME_DIR").map(|d| {
            (
                PathBuf::from(d).join(format!("bt_u{}", rustix::process::getuid().as_raw())),
                "XDG_RUNTIME_DIR/bt_u$UID",
            )
        }),
    };
    if let Some((path, how)) = file {
        match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => {
                return Ok(Some((
                    t.trim().to_string(),
                    format!("{how} ({})", path.display()),
                )));
            }
            Ok(_) => {
                return Err(Error::bad_input(
                    path.display().to_string(),
                    "the bearer token file is empty",
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && how != "BEARER_TOKEN_FILE" => {}
            Err(e) => return Err(Error::io_path(&path, "reading bearer token", e)),
        }
    }
    Ok(None)
}

/// A variable of the environment that is set and not empty, as a path.
pub(crate) fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// A credential or CA file, its path in the error.
pub(crate) fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io_path(path, what, e))
}
