//! ARC REST 1.0 client: submit (ADL), status, kill, clean, with X.509
//! (proxy or certificate as TLS client identity) or bearer token auth,
//! delegation of the proxy when the CE must stage data, upload of local
//! inputs, and a local list of submitted job IDs.
//!
//! Exchanges as A-REX 6.17 implements them (`src/services/a-rex/rest/rest.cpp`):
//! `POST {base}/rest/1.0/jobs?action=new` answers 201 with one entry per job
//! (`status-code` 201 or an error), `POST .../jobs?action=status|kill|clean`
//! takes `{"job":[{"id":..}]}`, whole-request faults carry their message in
//! the HTTP reason phrase with an empty body, and one-element lists come
//! back as objects.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use x509_cert::der::{Decode, Encode};

use super::model::JobSpec;
use super::validate::{is_remote_url, local_file_source};
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

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io_path(path, what, e))
}

/// PEM blocks: (label, DER).
fn pem_blocks(input: &str, text: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let text = String::from_utf8_lossy(text);
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(label) = line
            .trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let mut b64 = String::new();
        let end = format!("-----END {label}-----");
        let mut closed = false;
        for l in lines.by_ref() {
            if l.trim() == end {
                closed = true;
                break;
            }
            // Headers like Proc-Type would make the key unusable anyway.
            if !l.contains(':') {
                b64.push_str(l.trim());
            }
        }
        if !closed {
            return Err(Error::bad_input(
                input,
                format!("PEM block {label} is not closed"),
            ));
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| Error::bad_input(input, format!("PEM block {label}: {e}")))?;
        out.push((label.to_string(), der));
    }
    Ok(out)
}

/// Certificate chain and key for TLS client authentication. rustls's own
/// `with_client_auth_cert` parses the leaf with webpki, which refuses the
/// critical proxyCertInfo extension of RFC 3820 proxies; the CE (OpenSSL
/// with proxy support) is the one that must accept them, so the chain is
/// handed over as is.
fn client_identity(
    desc: &str,
    pem: &[u8],
) -> Result<(
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
)> {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::bad_input(desc, format!("reading certificates: {e}")))?;
    if chain.is_empty() {
        return Err(Error::bad_input(desc, "no certificate in it"));
    }
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| Error::bad_input(desc, format!("no usable private key: {e}")))?;
    Ok((chain, key))
}

#[derive(Debug)]
struct ProxyIdentity(std::sync::Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for ProxyIdentity {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// ECDHE on secp521r1, which rustls does not ship but A-REX's default
/// `tlscurve` requires. The arithmetic is aws-lc's.
#[derive(Debug)]
struct P521Group;

static P521: P521Group = P521Group;

struct P521Exchange {
    key: aws_lc_rs::agreement::EphemeralPrivateKey,
    public: aws_lc_rs::agreement::PublicKey,
}

impl rustls::crypto::SupportedKxGroup for P521Group {
    fn start(
        &self,
    ) -> std::result::Result<Box<dyn rustls::crypto::ActiveKeyExchange>, rustls::Error> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let key = aws_lc_rs::agreement::EphemeralPrivateKey::generate(
            &aws_lc_rs::agreement::ECDH_P521,
            &rng,
        )
        .map_err(|_| rustls::Error::FailedToGetRandomBytes)?;
        let public = key
            .compute_public_key()
            .map_err(|_| rustls::Error::FailedToGetRandomBytes)?;
        Ok(Box::new(P521Exchange { key, public }))
    }

    fn name(&self) -> rustls::NamedGroup {
        rustls::NamedGroup::secp521r1
    }
}

impl rustls::crypto::ActiveKeyExchange for P521Exchange {
    fn complete(
        self: Box<Self>,
        peer: &[u8],
    ) -> std::result::Result<rustls::crypto::SharedSecret, rustls::Error> {
        // TLS carries uncompressed points only (RFC 8446 4.2.8.2).
        if peer.first() != Some(&0x04) {
            return Err(rustls::PeerMisbehaved::InvalidKeyShare.into());
        }
        let peer =
            aws_lc_rs::agreement::UnparsedPublicKey::new(&aws_lc_rs::agreement::ECDH_P521, peer);
        aws_lc_rs::agreement::agree_ephemeral(self.key, peer, (), |secret| {
            Ok(rustls::crypto::SharedSecret::from(secret))
        })
        .map_err(|()| rustls::PeerMisbehaved::InvalidKeyShare.into())
    }

    fn pub_key(&self) -> &[u8] {
        self.public.as_ref()
    }

    fn group(&self) -> rustls::NamedGroup {
        rustls::NamedGroup::secp521r1
    }
}

/// A connection to one CE's REST interface.
pub struct ArcRest {
    /// `https://host:port/arex`
    pub base: String,
    http: reqwest::Client,
    /// Proxy PEM when X.509 is used: needed to sign delegations.
    proxy_pem: Option<(PathBuf, Vec<u8>)>,
    /// For messages: which credential is in use.
    pub auth_desc: String,
}

/// Normalise a CE given as host, https://host[:port], or .../arex.
pub fn ce_base(ce: &str) -> Result<String> {
    let ce = ce.trim().trim_end_matches('/');
    let ce = ce.strip_suffix("/rest/1.0").unwrap_or(ce);
    let with_scheme = if ce.contains("://") {
        ce.to_string()
    } else {
        format!("https://{ce}")
    };
    let Some(rest) = with_scheme.strip_prefix("https://") else {
        return Err(Error::BadInput {
            input: format!("--ce {ce}"),
            place: String::new(),
            reason: "ARC REST needs https".into(),
            hint: Some("give https://HOST[:PORT]/arex".into()),
        });
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(Error::bad_input(
            format!("--ce {ce}"),
            "no host in the CE URL",
        ));
    }
    Ok(if rest.contains('/') {
        with_scheme
    } else {
        format!("{with_scheme}/arex")
    })
}

fn ce_error(base: &str, detail: impl Into<String>) -> Error {
    Error::CeRequest {
        ce: base.to_string(),
        detail: detail.into(),
    }
}

/// One job's entry in a REST answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobReply {
    pub id: String,
    #[serde(rename = "status-code")]
    pub status_code: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

impl JobReply {
    pub fn ok(&self) -> bool {
        self.status_code.starts_with('2')
    }
}

/// `{"job": {...}}` or `{"job": [...]}` or an empty body.
fn job_entries(body: &str) -> std::result::Result<Vec<serde_json::Value>, String> {
    if body.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| {
        format!(
            "answer is not JSON ({e}): {}",
            body.chars().take(200).collect::<String>()
        )
    })?;
    match v.get("job") {
        None => Ok(Vec::new()),
        Some(serde_json::Value::Array(a)) => Ok(a.clone()),
        Some(o) => Ok(vec![o.clone()]),
    }
}

fn str_field(v: &serde_json::Value, k: &str) -> String {
    match v.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn replies(body: &str) -> std::result::Result<Vec<JobReply>, String> {
    Ok(job_entries(body)?
        .iter()
        .map(|j| JobReply {
            id: str_field(j, "id"),
            status_code: str_field(j, "status-code"),
            reason: str_field(j, "reason"),
            state: Some(str_field(j, "state")).filter(|s| !s.is_empty()),
        })
        .collect())
}

/// What `action=info` tells about a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    pub id: String,
    pub name: Option<String>,
    /// The REST state (`arcrest:` in GLUE2's list).
    pub state: Option<String>,
}

/// A submitted job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Submitted {
    pub id: String,
    /// The job's URL, as arcsub prints it.
    pub url: String,
    pub state: Option<String>,
    pub name: Option<String>,
    pub uploaded: Vec<String>,
    pub delegation: Option<String>,
    /// What `gridship get` brings back (outputs kept on the CE).
    pub outputs: Vec<String>,
}

impl ArcRest {
    pub fn connect(ce: &str, cfg: &AuthConfig) -> Result<ArcRest> {
        let base = ce_base(ce)?;
        let mut b = reqwest::Client::builder()
            .timeout(cfg.timeout.unwrap_or(Duration::from_secs(60)))
            // Downloads lift the total limit; a stall still ends them.
            .read_timeout(cfg.timeout.unwrap_or(Duration::from_secs(60)))
            .connect_timeout(Duration::from_secs(20))
            .user_agent(concat!("gridship/", env!("CARGO_PKG_VERSION")));

        // Grid CAs, not the web PKI: an IGTF directory or a given file.
        let mut roots = rustls::RootCertStore::empty();
        let mut add_pem = |pem: &[u8], strict: Option<&Path>| -> Result<()> {
            for c in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
                match c {
                    Ok(c) => {
                        // A CA webpki cannot use is skipped, as OpenSSL would ignore it too.
                        let _ = roots.add(c);
                    }
                    Err(e) => {
                        if let Some(p) = strict {
                            return Err(Error::bad_input(
                                p.display().to_string(),
                                format!("not PEM certificates: {e}"),
                            ));
                        }
                    }
                }
            }
            Ok(())
        };
        if let Some(f) = &cfg.ca_file {
            add_pem(&read(f, "reading CA file")?, Some(f))?;
        }
        let ca_dir = cfg
            .ca_dir
            .clone()
            .or_else(|| env_path("X509_CERT_DIR"))
            .unwrap_or_else(|| PathBuf::from("/etc/grid-security/certificates"));
        if (cfg.ca_file.is_none() || cfg.ca_dir.is_some())
            && let Ok(rd) = std::fs::read_dir(&ca_dir)
        {
            for e in rd.flatten() {
                let p = e.path();
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let is_cert = n.ends_with(".pem")
                    || n.rsplit_once('.').is_some_and(|(_, ext)| {
                        !ext.is_empty() && ext.bytes().all(|b| b.is_ascii_digit())
                    });
                if is_cert && let Ok(pem) = std::fs::read(&p) {
                    add_pem(&pem, None)?;
                }
            }
        }
        if roots.is_empty() {
            return Err(Error::BadInput {
                input: ca_dir.display().to_string(),
                place: String::new(),
                reason: "no trusted CA certificates found".into(),
                hint: Some(
                    "install the IGTF CA bundle, set X509_CERT_DIR, or pass --ca-file".into(),
                ),
            });
        }

        let token = if cfg.mode == AuthMode::X509 {
            None
        } else {
            find_token()?
        };
        let mut proxy_pem = None;
        let mut identity = None;
        let auth_desc;
        if let Some((t, how)) = &token {
            let mut h = reqwest::header::HeaderMap::new();
            let mut v =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    Error::bad_input(
                        how.clone(),
                        "the token contains characters not allowed in an HTTP header",
                    )
                })?;
            v.set_sensitive(true);
            h.insert(reqwest::header::AUTHORIZATION, v);
            b = b.default_headers(h);
            auth_desc = format!("bearer token from {how}");
        } else if cfg.mode == AuthMode::Token {
            return Err(Error::BadInput {
                input: "bearer token".into(),
                place: String::new(),
                reason: "no token in BEARER_TOKEN, BEARER_TOKEN_FILE or $XDG_RUNTIME_DIR/bt_u$UID"
                    .into(),
                hint: Some(
                    "get one (e.g. oidc-token) and export BEARER_TOKEN, or use --auth x509".into(),
                ),
            });
        } else {
            let uid = rustix::process::getuid().as_raw();
            let default_proxy = PathBuf::from(format!("/tmp/x509up_u{uid}"));
            let proxy = cfg
                .proxy
                .clone()
                .or_else(|| env_path("X509_USER_PROXY"))
                .or_else(|| default_proxy.is_file().then_some(default_proxy));
            let cert = cfg.cert.clone().or_else(|| env_path("X509_USER_CERT"));
            let key = cfg.key.clone().or_else(|| env_path("X509_USER_KEY"));
            let (pem, desc) = match (proxy, cert, key) {
                (Some(p), _, _) if cfg.cert.is_none() => {
                    let pem = read(&p, "reading X.509 proxy")?;
                    proxy_pem = Some((p.clone(), pem.clone()));
                    (pem, format!("X.509 proxy {}", p.display()))
                }
                (_, Some(c), Some(k)) => {
                    let mut pem = read(&c, "reading certificate")?;
                    pem.push(b'\n');
                    pem.extend(read(&k, "reading key")?);
                    (pem, format!("X.509 certificate {}", c.display()))
                }
                _ => {
                    return Err(Error::BadInput {
                        input: "credentials".into(),
                        place: String::new(),
                        reason: "no bearer token and no X.509 proxy or certificate found".into(),
                        hint: Some("make a proxy (arcproxy / voms-proxy-init) or set X509_USER_PROXY, or export BEARER_TOKEN".into()),
                    });
                }
            };
            identity = Some(client_identity(&desc, &pem)?);
            auth_desc = desc;
        }
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        // A-REX 6.14+ defaults to tlscurve=secp521r1 and offers nothing else.
        provider.kx_groups.push(&P521);
        let provider = std::sync::Arc::new(provider);
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ce_error(&base, format!("TLS setup: {e}")))?
            .with_root_certificates(roots);
        let tls = match identity {
            Some((chain, key)) => {
                let signer = provider.key_provider.load_private_key(key).map_err(|e| {
                    Error::bad_input(auth_desc.clone(), format!("unusable private key: {e}"))
                })?;
                builder.with_client_cert_resolver(std::sync::Arc::new(ProxyIdentity(
                    std::sync::Arc::new(rustls::sign::CertifiedKey::new(chain, signer)),
                )))
            }
            None => builder.with_no_client_auth(),
        };
        b = b.tls_backend_preconfigured(tls);
        let http = b
            .build()
            .map_err(|e| ce_error(&base, format!("TLS setup: {}", chain(&e))))?;
        Ok(ArcRest {
            base,
            http,
            proxy_pem,
            auth_desc,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/rest/1.0/{path}", self.base)
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<(reqwest::StatusCode, String, reqwest::header::HeaderMap)> {
        let resp = self.send_connected(req, what).await?;
        let status = resp.status();
        if let Err(e) = resp.error_for_status_ref() {
            let msg = e.without_url().to_string();
            let body = resp.text().await.unwrap_or_default();
            let hint = match status.as_u16() {
                401 | 403 => format!(
                    " (authentication with {} was refused: is your identity mapped on the CE?)",
                    self.auth_desc
                ),
                _ => String::new(),
            };
            let body = if body.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", body.chars().take(300).collect::<String>())
            };
            return Err(ce_error(&self.base, format!("{what}: {msg}{body}{hint}")));
        }
        let headers = resp.headers().clone();
        let body = resp
            .text()
            .await
            .map_err(|e| ce_error(&self.base, format!("{what}: reading answer: {e}")))?;
        Ok((status, body, headers))
    }

    /// Send a request; a connection that fails before the request is sent
    /// (a TLS handshake the CE breaks off, as A-REX now and then does under
    /// load) is made again after 0.2, 0.4 and 0.8 s: nothing reached the
    /// CE, so even a POST is safe to repeat. The fourth failure is the
    /// error, and says so.
    async fn send_connected(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response> {
        const TRIES: u32 = 4;
        let mut tries = 1;
        loop {
            let Some(this) = req.try_clone() else {
                // A streamed body cannot be sent twice.
                return req
                    .send()
                    .await
                    .map_err(|e| ce_error(&self.base, format!("{what}: {}", chain(&e))));
            };
            match this.send().await {
                Ok(resp) => return Ok(resp),
                Err(e) if e.is_connect() && tries < TRIES => {
                    tracing::info!(
                        "{what}: connecting to {} failed ({}); trying again",
                        self.base,
                        chain(&e)
                    );
                    tokio::time::sleep(Duration::from_millis(100 << tries)).await;
                    tries += 1;
                }
                Err(e) => {
                    let after = if e.is_connect() {
                        format!(" (connecting failed {tries} times)")
                    } else {
                        String::new()
                    };
                    return Err(ce_error(
                        &self.base,
                        format!("{what}: {}{after}", chain(&e)),
                    ));
                }
            }
        }
    }

    /// Delegate the proxy to the CE: it makes a key and a CSR, we sign it
    /// as an RFC 3820 proxy of our proxy and send back the chain.
    pub async fn delegate(&self) -> Result<String> {
        let Some((path, pem)) = &self.proxy_pem else {
            return Err(Error::BadInput {
                input: self.auth_desc.clone(),
                place: String::new(),
                reason: "the job stages data from or to URLs, which needs a delegated X.509 proxy".into(),
                hint: Some("use an X.509 proxy (X509_USER_PROXY, --proxy) for jobs with remote inputs or outputs".into()),
            });
        };
        let (status, csr, headers) = self
            .send(
                self.http
                    .post(self.url("delegations"))
                    .query(&[("action", "new")]),
                "starting delegation",
            )
            .await?;
        if status.as_u16() != 201 {
            return Err(ce_error(
                &self.base,
                format!("starting delegation: expected 201, got {status}"),
            ));
        }
        let loc = headers
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let id = loc
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        if id.is_empty() {
            return Err(ce_error(
                &self.base,
                "starting delegation: no delegation id in the Location header",
            ));
        }
        let signed = sign_proxy_request(&path.display().to_string(), pem, csr.as_bytes())?;
        let (status, _, _) = self
            .send(
                self.http
                    .put(self.url(&format!("delegations/{id}")))
                    .header(reqwest::header::CONTENT_TYPE, "application/x-pem-file")
                    .body(signed),
                "storing delegation",
            )
            .await?;
        if !status.is_success() {
            return Err(ce_error(
                &self.base,
                format!("storing delegation {id}: {status}"),
            ));
        }
        Ok(id)
    }

    /// Submit checked jobs. Local inputs are read relative to `base_dir`.
    /// A job the CE refuses makes the whole call an error (naming the jobs
    /// it accepted).
    pub async fn submit(&self, jobs: &[JobSpec], base_dir: &Path) -> Result<Vec<Submitted>> {
        let (out, failed) = self.submit_each(jobs, base_dir).await?;
        if !failed.is_empty() {
            let ok = if out.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} other job(s) were accepted: {})",
                    out.len(),
                    out.iter()
                        .map(|s| s.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            return Err(ce_error(
                &self.base,
                format!("the CE refused {}{ok}", failed.join("; ")),
            ));
        }
        Ok(out)
    }

    /// Submit checked jobs in one request: the jobs the CE accepted, and a
    /// message for each one it refused. An error means the request as a
    /// whole failed (the CE may or may not have created jobs when the
    /// connection broke).
    pub async fn submit_each(
        &self,
        jobs: &[JobSpec],
        base_dir: &Path,
    ) -> Result<(Vec<Submitted>, Vec<String>)> {
        // Everything local must exist before the CE holds a job waiting for it.
        for j in jobs {
            for (f, p) in uploads(j, base_dir) {
                if !p.is_file() {
                    return Err(Error::BadInput {
                        input: p.display().to_string(),
                        place: String::new(),
                        reason: format!(
                            "input file '{}' is to be uploaded but does not exist",
                            f.name
                        ),
                        hint: Some(
                            "put it next to the job description or give a URL as its source".into(),
                        ),
                    });
                }
            }
        }
        let needs_delegation = jobs.iter().any(|j| {
            j.input_files
                .iter()
                .any(|f| f.source.as_deref().is_some_and(is_remote_url))
                || j.output_files
                    .iter()
                    .any(|f| f.target.as_deref().is_some_and(is_remote_url))
        });
        let delegation = if needs_delegation && self.proxy_pem.is_some() {
            Some(self.delegate().await?)
        } else if needs_delegation {
            // A token is passed on by A-REX itself where the site supports it.
            tracing::info!("staging with {}: no X.509 delegation", self.auth_desc);
            None
        } else {
            None
        };
        // The CE waits for uploads where an input has no source.
        let sent: Vec<JobSpec> = jobs
            .iter()
            .map(|j| {
                let mut j = j.clone();
                for f in &mut j.input_files {
                    if f.source
                        .as_deref()
                        .is_some_and(|s| local_file_source(s).is_some())
                    {
                        f.source = None;
                    }
                }
                j
            })
            .collect();
        let body = super::adl::write_with_delegation(&sent, delegation.as_deref());
        let (status, answer, _) = self
            .send(
                self.http
                    .post(self.url("jobs"))
                    .query(&[("action", "new")])
                    .header(reqwest::header::ACCEPT, "application/json")
                    .header(reqwest::header::CONTENT_TYPE, "application/xml")
                    .body(body),
                "submitting",
            )
            .await?;
        if status.as_u16() != 201 {
            return Err(ce_error(
                &self.base,
                format!("submitting: expected 201 Created, got {status}"),
            ));
        }
        let reps =
            replies(&answer).map_err(|e| ce_error(&self.base, format!("submitting: {e}")))?;
        if reps.len() != jobs.len() {
            return Err(ce_error(
                &self.base,
                format!(
                    "submitting: sent {} job(s), the CE answered for {}",
                    jobs.len(),
                    reps.len()
                ),
            ));
        }
        let failed: Vec<String> = reps
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.ok())
            .map(|(i, r)| {
                format!(
                    "job {} ({}): {} {}",
                    i + 1,
                    jobs[i].job_name.as_deref().unwrap_or("unnamed"),
                    r.status_code,
                    r.reason
                )
            })
            .collect();
        let mut out = Vec::new();
        for (j, r) in jobs.iter().zip(&reps) {
            if !r.ok() {
                continue;
            }
            let mut uploaded = Vec::new();
            for (f, p) in uploads(j, base_dir) {
                let data = read(&p, "reading input file")?;
                let url = self.url(&format!("jobs/{}/session/{}", r.id, encode_path(&f.name)));
                self.send(
                    self.http
                        .put(url)
                        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                        .body(data),
                    &format!("uploading {} to job {}", f.name, r.id),
                )
                .await?;
                uploaded.push(f.name.clone());
            }
            out.push(Submitted {
                id: r.id.clone(),
                url: self.url(&format!("jobs/{}", r.id)),
                state: r.state.clone(),
                name: j.job_name.clone(),
                uploaded,
                delegation: delegation.clone(),
                outputs: retrievable_outputs(j),
            });
        }
        Ok((out, failed))
    }

    /// The IDs of every job the CE holds for this identity (`GET jobs`).
    pub async fn list_jobs(&self) -> Result<Vec<String>> {
        let (_, answer, _) = self
            .send(
                self.http
                    .get(self.url("jobs"))
                    .header(reqwest::header::ACCEPT, "application/json"),
                "listing jobs",
            )
            .await?;
        let entries =
            job_entries(&answer).map_err(|e| ce_error(&self.base, format!("listing jobs: {e}")))?;
        Ok(entries
            .iter()
            .map(|j| str_field(j, "id"))
            .filter(|i| !i.is_empty())
            .collect())
    }

    /// Name and state of jobs (GLUE2 `ComputingActivity`: `Name` is ADL's
    /// `ActivityIdentification/Name`, xRSL's jobname), by one `action=info`.
    pub async fn job_infos(&self, ids: &[String]) -> Result<Vec<JobInfo>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let body = serde_json::json!({"job": ids.iter().map(|i| serde_json::json!({"id": i})).collect::<Vec<_>>()});
        let (_, answer, _) = self
            .send(
                self.http
                    .post(self.url("jobs"))
                    .query(&[("action", "info")])
                    .header(reqwest::header::ACCEPT, "application/json")
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.to_string()),
                "info",
            )
            .await?;
        let entries =
            job_entries(&answer).map_err(|e| ce_error(&self.base, format!("info: {e}")))?;
        Ok(entries
            .iter()
            .map(|j| {
                let act = j.pointer("/info_document/ComputingActivity");
                let name = act
                    .and_then(|a| a.get("Name"))
                    .and_then(|n| n.as_str())
                    .map(str::to_string);
                // State is a list of "model:STATE"; a lone one is a string.
                let states: Vec<&str> = match act.and_then(|a| a.get("State")) {
                    Some(serde_json::Value::Array(a)) => {
                        a.iter().filter_map(|v| v.as_str()).collect()
                    }
                    Some(serde_json::Value::String(s)) => vec![s.as_str()],
                    _ => Vec::new(),
                };
                let state = states
                    .iter()
                    .find_map(|s| s.strip_prefix("arcrest:"))
                    .map(str::to_string);
                JobInfo {
                    id: str_field(j, "id"),
                    name,
                    state,
                }
            })
            .collect())
    }

    /// `action` = status | kill | clean | info, for several jobs at once.
    pub async fn action(&self, action: &str, ids: &[String]) -> Result<Vec<JobReply>> {
        let body = serde_json::json!({"job": ids.iter().map(|i| serde_json::json!({"id": i})).collect::<Vec<_>>()});
        let (_, answer, _) = self
            .send(
                self.http
                    .post(self.url("jobs"))
                    .query(&[("action", action)])
                    .header(reqwest::header::ACCEPT, "application/json")
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.to_string()),
                action,
            )
            .await?;
        let reps = replies(&answer).map_err(|e| ce_error(&self.base, format!("{action}: {e}")))?;
        Ok(reps)
    }

    /// The entries of a directory in a job's session directory (`""`: its
    /// top): (name, is a directory). A-REX answers `{"file":..,"dir":..}`,
    /// each a string or a list.
    pub async fn list_session(&self, id: &str, dir: &str) -> Result<Vec<(String, bool)>> {
        let path = if dir.is_empty() {
            format!("jobs/{id}/session")
        } else {
            format!("jobs/{id}/session/{}", encode_path(dir))
        };
        let what = format!(
            "listing {} of job {id}",
            if dir.is_empty() { "the session" } else { dir }
        );
        let (_, body, _) = self
            .send(
                self.http
                    .get(self.url(&path))
                    .header(reqwest::header::ACCEPT, "application/json"),
                &what,
            )
            .await?;
        if body.trim().is_empty() {
            return Ok(Vec::new());
        }
        let v: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| ce_error(&self.base, format!("{what}: answer is not JSON ({e})")))?;
        let mut out = Vec::new();
        for (key, is_dir) in [("file", false), ("dir", true)] {
            let names = match v.get(key) {
                Some(serde_json::Value::String(n)) => vec![n.clone()],
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            };
            for n in names {
                // A name is one path component; anything else would let the
                // CE write outside the download directory.
                if n.is_empty() || n == "." || n == ".." || n.contains('/') {
                    return Err(ce_error(
                        &self.base,
                        format!("{what}: the CE lists an unusable name {n:?}"),
                    ));
                }
                out.push((n, is_dir));
            }
        }
        Ok(out)
    }

    /// Download `name` of a job's session directory into `part`, continuing
    /// from what `part` already holds (HTTP Range); returns the bytes in
    /// `part` afterwards and whether an earlier part was continued.
    pub async fn download(&self, id: &str, name: &str, part: &Path) -> Result<(u64, bool)> {
        use std::io::Write as _;
        let what = format!("downloading {name} of job {id}");
        let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        let mut req = self
            .http
            .get(self.url(&format!("jobs/{id}/session/{}", encode_path(name))));
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        // Outputs can be large: no limit on the whole transfer.
        req = req.timeout(Duration::from_secs(30 * 24 * 3600));
        let mut resp = self.send_connected(req, &what).await?;
        let status = resp.status().as_u16();
        if status == 416 {
            // Nothing after `have`: the part is complete if the CE's size
            // (Content-Range: bytes */SIZE) says so, else start over.
            let total = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit('/').next())
                .and_then(|n| n.trim().parse::<u64>().ok());
            if total == Some(have) {
                return Ok((have, true));
            }
            std::fs::remove_file(part).map_err(|e| Error::io_path(part, "removing", e))?;
            return Box::pin(self.download(id, name, part)).await;
        }
        if !(status == 200 || status == 206) {
            let msg = resp
                .error_for_status_ref()
                .err()
                .map(|e| e.without_url().to_string())
                .unwrap_or_else(|| format!("HTTP {status}"));
            return Err(ce_error(&self.base, format!("{what}: {msg}")));
        }
        let resumed = status == 206;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(part)
            .map_err(|e| Error::io_path(part, "opening", e))?;
        let mut len = if resumed { have } else { 0 };
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| ce_error(&self.base, format!("{what}: {}", chain(&e))))?
        {
            file.write_all(&chunk)
                .map_err(|e| Error::io_path(part, "writing", e))?;
            len += chunk.len() as u64;
        }
        file.sync_all()
            .map_err(|e| Error::io_path(part, "syncing", e))?;
        Ok((len, resumed && have > 0))
    }

    /// One of A-REX's per-job control files (`errors`, `diag`, ...) through
    /// `GET jobs/ID/diagnose/NAME`; `None` when the CE has none.
    pub async fn diagnose(&self, id: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let resp = self
            .send_connected(
                self.http
                    .get(self.url(&format!("jobs/{id}/diagnose/{name}"))),
                &format!("reading {name} of job {id}"),
            )
            .await?;
        if resp.status().as_u16() == 404 {
            return Ok(None);
        }
        if let Err(e) = resp.error_for_status_ref() {
            return Err(ce_error(
                &self.base,
                format!("reading {name} of job {id}: {}", e.without_url()),
            ));
        }
        let b = resp
            .bytes()
            .await
            .map_err(|e| ce_error(&self.base, format!("reading {name} of job {id}: {e}")))?;
        Ok(Some(b.to_vec()))
    }

    /// Read one file from a job's session directory.
    pub async fn fetch_file(&self, id: &str, name: &str) -> Result<String> {
        let (_, body, _) = self
            .send(
                self.http
                    .get(self.url(&format!("jobs/{id}/session/{}", encode_path(name)))),
                &format!("reading {name} of job {id}"),
            )
            .await?;
        Ok(body)
    }
}

/// The outputs a job keeps on the CE for retrieval: stdout, stderr and
/// every output file without a target (directories end in `/`).
pub fn retrievable_outputs(j: &JobSpec) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let names = j.stdout.iter().chain(&j.stderr).chain(
        j.output_files
            .iter()
            .filter(|f| f.target.is_none())
            .map(|f| &f.name),
    );
    for n in names {
        if !out
            .iter()
            .any(|o| o.trim_end_matches('/') == n.trim_end_matches('/'))
        {
            out.push(n.clone());
        }
    }
    out
}

/// Input files the client uploads, with the local file each comes from:
/// no source (beside the description) or a `file://` source.
fn uploads<'j>(j: &'j JobSpec, base_dir: &Path) -> Vec<(&'j super::model::InputFile, PathBuf)> {
    j.input_files
        .iter()
        .filter_map(|f| match f.source.as_deref() {
            None => Some((f, base_dir.join(&f.name))),
            Some(s) => local_file_source(s).map(|p| (f, PathBuf::from(p))),
        })
        .collect()
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(&format!(": {c}"));
        src = c.source();
    }
    s
}

/// Percent-encode a relative path for a URL, keeping `/`.
fn encode_path(p: &str) -> String {
    let mut out = String::new();
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// RFC 3820 proxy signing for delegation
// ---------------------------------------------------------------------------

fn der_len(n: usize, out: &mut Vec<u8>) {
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    der_len(content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// The TLVs inside a constructed TLV, or None when it is malformed.
fn der_children(tlv: &[u8]) -> Option<Vec<&[u8]>> {
    let mut rest = der_content_checked(tlv)?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (hdr, len) = der_header(rest)?;
        let end = hdr.checked_add(len).filter(|&e| e <= rest.len())?;
        out.push(&rest[..end]);
        rest = &rest[end..];
    }
    Some(out)
}

/// (header length, content length) of the TLV at the start of `b`.
fn der_header(b: &[u8]) -> Option<(usize, usize)> {
    let l = *b.get(1)?;
    if l < 0x80 {
        return Some((2, l as usize));
    }
    let n = (l & 0x7f) as usize;
    if n == 0 || n > 4 || b.len() < 2 + n {
        return None;
    }
    Some((
        2 + n,
        b[2..2 + n]
            .iter()
            .fold(0usize, |a, &x| (a << 8) | x as usize),
    ))
}

fn der_content_checked(tlv: &[u8]) -> Option<&[u8]> {
    let (h, l) = der_header(tlv)?;
    tlv.get(h..h.checked_add(l)?)
}

/// The content octets of a DER TLV (skips tag and length).
fn der_content(tlv: &[u8]) -> &[u8] {
    let l = tlv[1];
    let start = if l < 0x80 { 2 } else { 2 + (l & 0x7f) as usize };
    &tlv[start..]
}

/// An X.509 validity time: UTCTime (two-digit year) before 2050,
/// GeneralizedTime from then on (RFC 5280 4.1.2.5).
fn utc_time(t: SystemTime) -> Vec<u8> {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let c = crate::clock::Civil::of(secs);
    let s = format!(
        "{:02}{:02}{:02}{:02}{:02}{:02}Z",
        c.year % 100,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second
    );
    if c.year >= 2050 {
        tlv(0x18, format!("{:04}{}", c.year, &s[2..]).as_bytes())
    } else {
        tlv(0x17, s.as_bytes())
    }
}

const OID_SHA256_RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b,
];
const OID_CN: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
const OID_KEY_USAGE: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x0f];
/// id-pe-proxyCertInfo 1.3.6.1.5.5.7.1.14
const OID_PROXY_CERT_INFO: &[u8] = &[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x0e];
/// id-ppl-inheritAll 1.3.6.1.5.5.7.21.1
const OID_INHERIT_ALL: &[u8] = &[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x15, 0x01];

/// Sign the CE's certificate request with the key of our proxy: the result
/// is a proxy certificate (subject = our subject + CN=serial, proxyCertInfo
/// inheritAll) followed by our proxy's certificate chain, as PEM.
pub fn sign_proxy_request(input: &str, proxy_pem: &[u8], csr_pem: &[u8]) -> Result<String> {
    let blocks = pem_blocks(input, proxy_pem)?;
    let certs: Vec<&Vec<u8>> = blocks
        .iter()
        .filter(|(l, _)| l == "CERTIFICATE")
        .map(|(_, d)| d)
        .collect();
    let Some(issuer_der) = certs.first() else {
        return Err(Error::bad_input(
            input,
            "the proxy file holds no certificate",
        ));
    };
    let key = blocks.iter().find(|(l, _)| l.ends_with("PRIVATE KEY"));
    let signer = match key {
        Some((l, d)) if l == "RSA PRIVATE KEY" => aws_lc_rs::rsa::KeyPair::from_der(d),
        Some((l, d)) if l == "PRIVATE KEY" => aws_lc_rs::rsa::KeyPair::from_pkcs8(d),
        Some((l, _)) => {
            return Err(Error::bad_input(
                input,
                format!("the proxy key is a {l}; delegation supports RSA proxies"),
            ));
        }
        None => {
            return Err(Error::bad_input(
                input,
                "the proxy file holds no private key",
            ));
        }
    }
    .map_err(|e| Error::bad_input(input, format!("the proxy's RSA key cannot be used: {e}")))?;

    let issuer = x509_cert::Certificate::from_der(issuer_der)
        .map_err(|e| Error::bad_input(input, format!("proxy certificate: {e}")))?;
    let csr_blocks = pem_blocks("delegation request from the CE", csr_pem)?;
    let Some((_, csr_der)) = csr_blocks
        .iter()
        .find(|(l, _)| l.contains("CERTIFICATE REQUEST"))
    else {
        return Err(Error::CeRequest {
            ce: String::new(),
            detail: "the CE's delegation answer holds no certificate request".into(),
        });
    };
    // ARC's request is not always strict DER (x509-cert refuses its version
    // INTEGER), and only its public key is needed: walk the structure.
    let bad_csr = || Error::CeRequest {
        ce: String::new(),
        detail: "the CE's delegation request is not a PKCS#10 request".into(),
    };
    let info = der_children(csr_der)
        .and_then(|c| c.first().copied())
        .and_then(der_children)
        .ok_or_else(bad_csr)?;
    let spki = info
        .get(2)
        .filter(|t| t.first() == Some(&0x30))
        .ok_or_else(bad_csr)?
        .to_vec();
    let enc = |r: std::result::Result<Vec<u8>, x509_cert::der::Error>| {
        r.map_err(|e| Error::Other(format!("DER encoding: {e}")))
    };
    let issuer_subject = enc(issuer.tbs_certificate().subject().to_der())?;

    let mut serial = [0u8; 8];
    aws_lc_rs::rand::fill(&mut serial)
        .map_err(|_| Error::Other("no randomness for the serial number".into()))?;
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    let serial_dec = u64::from_be_bytes(serial).to_string();

    // Subject: ours plus one CN (RFC 3820 §3.4).
    let cn = seq(&[OID_CN, &tlv(0x13, serial_dec.as_bytes())]);
    let subject = tlv(
        0x30,
        &[der_content(&issuer_subject), &tlv(0x31, &cn)].concat(),
    );

    let now = SystemTime::now();
    let issuer_end = issuer
        .tbs_certificate()
        .validity()
        .not_after
        .to_system_time();
    let not_after = (now + Duration::from_secs(12 * 3600)).min(issuer_end);
    if not_after <= now {
        return Err(Error::bad_input(
            input,
            "the proxy has expired; make a new one",
        ));
    }
    let validity = seq(&[
        &utc_time(now - Duration::from_secs(300)),
        &utc_time(not_after),
    ]);

    let alg = seq(&[OID_SHA256_RSA, &[0x05, 0x00]]);
    // keyUsage: digitalSignature, keyEncipherment (critical).
    let ku = seq(&[
        OID_KEY_USAGE,
        &[0x01, 0x01, 0xff],
        &tlv(0x04, &[0x03, 0x02, 0x05, 0xa0]),
    ]);
    let pci_value = seq(&[&seq(&[OID_INHERIT_ALL])]);
    let pci = seq(&[
        OID_PROXY_CERT_INFO,
        &[0x01, 0x01, 0xff],
        &tlv(0x04, &pci_value),
    ]);
    let exts = tlv(0xa3, &seq(&[&ku, &pci]));
    let tbs = seq(&[
        &[0xa0, 0x03, 0x02, 0x01, 0x02],
        &tlv(0x02, &serial),
        &alg,
        &issuer_subject,
        &validity,
        &subject,
        &spki,
        &exts,
    ]);

    let mut sig = vec![0u8; signer.public_modulus_len()];
    signer
        .sign(
            &aws_lc_rs::signature::RSA_PKCS1_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
            &tbs,
            &mut sig,
        )
        .map_err(|_| Error::Other("signing the delegation failed".into()))?;
    let cert = seq(&[&tbs, &alg, &tlv(0x03, &[&[0u8][..], &sig].concat())]);

    let mut out = pem("CERTIFICATE", &cert);
    for c in certs {
        out.push_str(&pem("CERTIFICATE", c));
    }
    Ok(out)
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

// ---------------------------------------------------------------------------
// Local list of submitted jobs
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobRecord {
    pub id: String,
    /// REST base of the CE (`https://host:port/arex`).
    pub ce: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Unix seconds.
    pub submitted: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What `get` brings back; empty: everything the session holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
}

/// Job IDs kept on this machine: `$GRIDSHIP_ARC_JOBS`, else
/// `$XDG_DATA_HOME/gridship/arc-jobs.json` (~/.local/share/...).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobList {
    #[serde(skip)]
    pub path: PathBuf,
    pub jobs: Vec<JobRecord>,
}

pub fn default_jobs_file() -> PathBuf {
    if let Some(p) = env_path("GRIDSHIP_ARC_JOBS") {
        return p;
    }
    let data = env_path("XDG_DATA_HOME")
        .or_else(|| env_path("HOME").map(|h| h.join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("gridship").join("arc-jobs.json")
}

impl JobList {
    pub fn load(path: &Path) -> Result<JobList> {
        let mut list = match std::fs::read(path) {
            Ok(b) => serde_json::from_slice::<JobList>(&b).map_err(|e| Error::BadInput {
                input: path.display().to_string(),
                place: format!("{}:{}: ", e.line(), e.column()),
                reason: format!("not a gridship job list: {e}"),
                hint: Some("move the file away; gridship starts a new list".into()),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => JobList::default(),
            Err(e) => return Err(Error::io_path(path, "reading job list", e)),
        };
        list.path = path.to_path_buf();
        Ok(list)
    }

    /// Write to a temporary file beside it, then rename: never half a list.
    pub fn save(&self) -> Result<()> {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io_path(dir, "creating job list directory", e))?;
        let text = serde_json::to_vec_pretty(self).expect("job list serialises");
        // 0600: the list is the user's own, as it always was.
        crate::fsutil::write_atomic(&self.path, &text, 0o600)
    }

    pub fn find(&self, id: &str) -> Option<&JobRecord> {
        self.jobs.iter().find(|j| j.id == id)
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ce_urls() {
        assert_eq!(
            ce_base("ce.example.org").unwrap(),
            "https://ce.example.org/arex"
        );
        assert_eq!(
            ce_base("https://h:8443/arex/").unwrap(),
            "https://h:8443/arex"
        );
        assert_eq!(ce_base("https://h:8443").unwrap(), "https://h:8443/arex");
        assert_eq!(
            ce_base("https://h/arex/rest/1.0").unwrap(),
            "https://h/arex"
        );
        assert!(ce_base("http://h/arex").is_err());
    }

    #[test]
    fn replies_one_or_many() {
        let one =
            r#"{"job":{"status-code":"201","reason":"Created","id":"abc","state":"ACCEPTING"}}"#;
        let r = replies(one).unwrap();
        assert_eq!(r.len(), 1);
        assert!(r[0].ok());
        assert_eq!(r[0].state.as_deref(), Some("ACCEPTING"));
        let many = r#"{"job":[{"status-code":"201","reason":"Created","id":"a"},{"status-code":"500","reason":"Requested queue x does not match","id":""}]}"#;
        let r = replies(many).unwrap();
        assert!(r[0].ok() && !r[1].ok());
        assert!(replies("").unwrap().is_empty());
        assert!(replies("<html>").is_err());
    }

    #[test]
    fn utc_times() {
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc_time(t), tlv(0x17, b"000229000000Z"));
        let t = UNIX_EPOCH + Duration::from_secs(2_556_057_600); // 2050-12-31
        assert_eq!(utc_time(t)[0], 0x18);
    }
}
