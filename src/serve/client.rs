//! The CLI's side of `gridship serve`: inside a session over its socket,
//! elsewhere over HTTPS with the user's proxy or token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, Result};

/// Where a session sees its socket, unless GRIDSHIP_SOCKET says otherwise.
pub fn session_socket() -> Option<PathBuf> {
    let p = std::env::var_os("GRIDSHIP_SOCKET")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(super::sessions::SOCKET_MOUNT).join(super::sessions::SOCKET_NAME)
        });
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(&p)
        .is_ok_and(|m| m.file_type().is_socket())
        .then_some(p)
}

/// An error and its causes, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

pub struct ServiceClient {
    http: reqwest::Client,
    base: String,
    /// For messages: the socket or the URL, and the credential.
    pub describe: String,
    /// Whether this is a session's own socket (sessions are "self").
    pub in_session: bool,
}

impl ServiceClient {
    /// The session's socket.
    pub fn socket(path: &Path) -> Result<ServiceClient> {
        // No TLS on the socket; an empty trust store keeps reqwest from
        // looking for the system's CAs (a session may have none).
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Other(format!("TLS set-up: {e}")))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .unix_socket(path)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Other(format!("{}: {}", path.display(), chain(&e))))?;
        Ok(ServiceClient {
            http,
            base: "http://gridship".into(),
            describe: format!("the session's service socket {}", path.display()),
            in_session: true,
        })
    }

    /// A service at `url`, with the credential the usual grid variables
    /// name (BEARER_TOKEN..., X509_USER_PROXY, /tmp/x509up_uUID).
    pub fn https(url: &str) -> Result<ServiceClient> {
        let base = url.trim_end_matches('/').to_string();
        if !base.starts_with("https://") {
            return Err(Error::bad_input(
                "--service",
                format!("{url:?} is not an https:// URL"),
            ));
        }
        let cfg = crate::ce::auth::AuthConfig {
            // Streams of long operations: a stall still ends them (keep-alives every 15 s).
            timeout: Some(Duration::from_secs(120)),
            ..Default::default()
        };
        let c = crate::ce::arc::tls::client(&base, &cfg)?;
        Ok(ServiceClient {
            http: c.http,
            describe: format!("{base} ({})", c.auth_desc),
            base,
            in_session: false,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.base)
    }

    async fn answer(&self, r: reqwest::Response, what: &str) -> Result<Value> {
        let status = r.status();
        let text = r
            .text()
            .await
            .map_err(|e| Error::Other(format!("{what}: {e}")))?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        if status.is_success() {
            return Ok(v);
        }
        let msg = v["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| text.chars().take(300).collect());
        Err(match status.as_u16() {
            400 | 413 | 422 | 429 => Error::BadInput {
                input: what.to_string(),
                place: String::new(),
                reason: msg,
                hint: None,
            },
            404 => Error::BadInput {
                input: self.describe.clone(),
                place: String::new(),
                reason: msg,
                hint: None,
            },
            401 | 403 => Error::AuthFailed {
                registry: self.describe.clone(),
                detail: msg,
            },
            _ => Error::Other(format!("{what}: {status}: {msg}")),
        })
    }

    fn sent(&self, e: reqwest::Error, what: &str) -> Error {
        Error::Other(format!(
            "{what}: cannot reach {}: {}",
            self.describe,
            chain(&e)
        ))
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        let r = self
            .http
            .get(self.url(path))
            .send()
            .await
            .map_err(|e| self.sent(e, path))?;
        self.answer(r, path).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let r = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .map_err(|e| self.sent(e, path))?;
        self.answer(r, path).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value> {
        let r = self
            .http
            .delete(self.url(path))
            .send()
            .await
            .map_err(|e| self.sent(e, path))?;
        self.answer(r, path).await
    }

    /// Follow an operation's events until it ends; each event's JSON to `f`.
    pub async fn follow(&self, id: &str, mut f: impl FnMut(&Value)) -> Result<()> {
        let path = format!("operations/{id}/events");
        let mut r = self
            .http
            .get(self.url(&path))
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|e| self.sent(e, &path))?;
        if !r.status().is_success() {
            return self.answer(r, &path).await.map(|_| ());
        }
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = r
            .chunk()
            .await
            .map_err(|e| Error::Other(format!("{path}: {e}")))?
        {
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                if let Some(data) = line.trim_end().strip_prefix("data:")
                    && let Ok(v) = serde_json::from_str::<Value>(data.trim_start())
                {
                    f(&v);
                }
            }
        }
        Ok(())
    }

    /// Download one artifact into `dest` (a temporary name, then renamed),
    /// checking the digest the service listed.
    pub async fn download(&self, id: &str, file: &str, sha256: &str, dest: &Path) -> Result<u64> {
        use sha2::Digest;
        use std::io::Write;
        let path = format!("operations/{id}/files/{file}");
        let mut r = self
            .http
            .get(self.url(&path))
            .send()
            .await
            .map_err(|e| self.sent(e, &path))?;
        if !r.status().is_success() {
            return self.answer(r, &path).await.map(|_| 0);
        }
        let dir = dest.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::Builder::new()
            .prefix(".gridship-download-")
            .tempfile_in(dir)
            .map_err(|e| Error::io_path(dir, "creating a download file", e))?;
        let mut h = sha2::Sha256::new();
        let mut n = 0u64;
        while let Some(chunk) = r
            .chunk()
            .await
            .map_err(|e| Error::Other(format!("{path}: {e}")))?
        {
            h.update(&chunk);
            n += chunk.len() as u64;
            tmp.write_all(&chunk)
                .map_err(|e| Error::io_path(dest, "writing a download", e))?;
        }
        let got = hex::encode(h.finalize());
        if got != sha256 {
            return Err(Error::DigestMismatch {
                what: format!("{file} of operation {id}"),
                expected: sha256.to_string(),
                actual: got,
            });
        }
        tmp.as_file()
            .sync_all()
            .map_err(|e| Error::io_path(dest, "writing a download", e))?;
        crate::fsutil::persist(tmp, dest)?;
        Ok(n)
    }
}
