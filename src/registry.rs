//! OCI registries through oci-client: pull into a layout, push from one.
//!
//! Credentials come from `--creds`, else the Docker client configuration
//! (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, including
//! credential helpers). Extra CAs come from `--cert-dir` and the usual
//! `/etc/docker/certs.d/REGISTRY/` and `/etc/containers/certs.d/REGISTRY/`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use crate::digest::Digest;
use crate::image::{Image, PlatformWanted, media};
use crate::reference::RegistryRef;
use crate::store::{Descriptor, IndexJson, Layout};
use crate::{Error, Result};

const MANIFEST_TYPES: &[&str] = &[
    media::OCI_MANIFEST,
    media::OCI_INDEX,
    media::DOCKER_MANIFEST,
    media::DOCKER_LIST,
];

/// How to reach registries; defined once, shared by every command.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// `USER:PASS` from `--creds`.
    pub creds: Option<(String, String)>,
    /// `false` accepts any certificate and allows plain HTTP.
    pub tls_verify: bool,
    /// Directory of extra CA certificates (`*.crt`, PEM).
    pub cert_dir: Option<PathBuf>,
}

pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime starts")
    })
}

/// A client bound to one registry and repository, authenticated.
pub struct Session {
    client: Client,
    auth: RegistryAuth,
    target: RegistryRef,
}

impl Session {
    fn reference(&self, reference: &str) -> Reference {
        if reference.starts_with("sha256:") {
            Reference::with_digest(
                self.target.registry.clone(),
                self.target.repository.clone(),
                reference.to_string(),
            )
        } else {
            Reference::with_tag(
                self.target.registry.clone(),
                self.target.repository.clone(),
                reference.to_string(),
            )
        }
    }

    fn map_err(&self, e: OciDistributionError, what: &str) -> Error {
        map_oci_error(&self.target, e, what)
    }

    pub async fn connect(
        target: &RegistryRef,
        opts: &RegistryOptions,
        op: RegistryOperation,
    ) -> Result<Session> {
        tls_provider();
        // Without verification, plain HTTP is allowed when TLS is not spoken.
        let protocol = if opts.tls_verify || speaks_https(&target.registry).await {
            ClientProtocol::Https
        } else {
            ClientProtocol::Http
        };
        let config = ClientConfig {
            protocol,
            accept_invalid_certificates: !opts.tls_verify,
            extra_root_certificates: ca_certificates(&target.registry, opts.cert_dir.as_deref())?,
            ..Default::default()
        };
        let client = Client::new(config);
        let auth = match &opts.creds {
            Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
            None => docker_config_auth(&target.registry)?,
        };
        let session = Session {
            client,
            auth,
            target: target.clone(),
        };
        let r = session.reference(&target.reference());
        retrying(|| session.client.auth(&r, &session.auth, op))
            .await
            .map_err(|e| session.map_err(e, "access"))?;
        Ok(session)
    }

    /// Fetch a manifest by tag or digest, verifying its digest.
    async fn manifest(&self, reference: &str) -> Result<(Vec<u8>, Digest, String)> {
        let r = self.reference(reference);
        let (bytes, _header_digest) = retrying(|| {
            self.client
                .pull_manifest_raw(&r, &self.auth, MANIFEST_TYPES)
        })
        .await
        .map_err(|e| self.map_err(e, &format!("manifest {reference}")))?;
        let digest = Digest::of_bytes(&bytes);
        if reference.starts_with("sha256:") && digest.to_string() != reference {
            return Err(Error::DigestMismatch {
                what: format!(
                    "manifest from {}/{}",
                    self.target.registry, self.target.repository
                ),
                expected: reference.to_string(),
                actual: digest.to_string(),
            });
        }
        let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(String::from)
            })
            .unwrap_or_else(|| media::OCI_MANIFEST.to_string());
        Ok((bytes.to_vec(), digest, media_type))
    }

    /// Download one blob into the layout unless it is there; verified.
    async fn pull_blob(&self, layout: &Layout, desc: &Descriptor) -> Result<()> {
        if layout.has_blob(&desc.digest, Some(desc.size)) {
            return Ok(());
        }
        let r = self.reference(&self.target.reference());
        let what = format!(
            "blob {} from {}/{}",
            desc.digest, self.target.registry, self.target.repository
        );
        let layer = oci_client::manifest::OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.to_string(),
            size: desc.size as i64,
            ..Default::default()
        };
        let mut stream = retrying(|| self.client.pull_blob_stream(&r, &layer))
            .await
            .map_err(|e| self.map_err(e, &format!("blob {}", desc.digest)))?;
        let mut writer = layout.blob_writer()?;
        let bar = crate::event::item(format!("pull {}", desc.digest.short()), desc.size);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                // oci-client reports a digest mismatch at the end of the stream.
                if e.to_string().to_lowercase().contains("digest") {
                    Error::DigestMismatch {
                        what: what.clone(),
                        expected: desc.digest.to_string(),
                        actual: e.to_string(),
                    }
                } else {
                    Error::io(format!("downloading {what}"), e)
                }
            })?;
            writer
                .write_all(&chunk)
                .map_err(|e| Error::io(format!("storing {what}"), e))?;
            bar.inc(chunk.len() as u64);
        }
        bar.finish();
        writer.finish(Some((&desc.digest, desc.size)), &what)?;
        Ok(())
    }

    async fn push_blob(&self, layout: &Layout, desc: &Descriptor) -> Result<bool> {
        let r = self.reference(&self.target.reference());
        let digest = desc.digest.to_string();
        if retrying(|| self.client.blob_exists(&r, &digest))
            .await
            .map_err(|e| self.map_err(e, &format!("blob {digest}")))?
        {
            return Ok(false);
        }
        // Verify before sending: a corrupt local blob must not leave.
        let mut check = layout.open_blob(&desc.digest, Some(desc.size))?;
        std::io::copy(&mut check, &mut std::io::sink())
            .map_err(|e| crate::digest::unwrap_io(e, || format!("reading blob {digest}")))?;
        let bar = crate::event::item(format!("push {}", desc.digest.short()), desc.size);
        retrying(|| async {
            // Each try sends the whole blob again, from a fresh reader.
            let chunks = blob_chunks(layout, desc)
                .map_err(|e| OciDistributionError::GenericError(Some(e.to_string())))?;
            bar.restart();
            let counted = bar.clone();
            let stream = chunks.map(move |c| {
                if let Ok(b) = &c {
                    counted.inc(b.len() as u64);
                }
                c.map_err(OciDistributionError::IoError)
            });
            self.client
                .push_blob_stream(&r, stream, &digest, Some(desc.size))
                .await
        })
        .await
        .map_err(|e| self.map_err(e, &format!("upload of blob {digest}")))?;
        bar.finish();
        Ok(true)
    }
}

/// A stream of 1 MiB chunks of a stored blob, verified as it is read: a
/// file, or a layer the store links in the engine's layer store (a
/// session's snapshot), which only a reader can give. The blocking read
/// runs on a thread of its own.
pub fn blob_chunks(
    layout: &Layout,
    desc: &Descriptor,
) -> Result<impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static> {
    use std::io::Read;
    let mut reader = layout.open_blob(&desc.digest, Some(desc.size))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    std::thread::spawn(move || {
        loop {
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0;
            // Full chunks (a reader may return less than asked).
            let end = loop {
                match reader.read(&mut buf[n..]) {
                    Ok(0) => break true,
                    Ok(k) => {
                        n += k;
                        if n == buf.len() {
                            break false;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            };
            buf.truncate(n);
            if n > 0 && tx.blocking_send(Ok(bytes::Bytes::from(buf))).is_err() {
                return; // the upload gave up
            }
            if end {
                return;
            }
        }
    });
    Ok(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }))
}

/// A stream of 1 MiB chunks from a file (request bodies for pushes and
/// `docker load`).
pub fn file_chunks(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures_util::stream::try_unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 20];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some((bytes::Bytes::from(buf), file)))
    })
}

/// How often a request that met a passing server failure is tried.
const TRIES: u32 = 4;

/// Whether a registry's answer is a passing failure worth another try: a
/// 5xx other than 501 and 505, which a retry cannot change. Registries give these for moments
/// under load; distribution's filesystem driver, for one, answers a blob
/// HEAD with 500 "invalid checksum digest format" while another client's
/// upload of the same blob is writing its link file.
fn transient(e: &OciDistributionError) -> bool {
    let passing = |code: u16| (500..600).contains(&code) && code != 501 && code != 505;
    match e {
        OciDistributionError::RequestError(r) => r.status().is_some_and(|s| passing(s.as_u16())),
        OciDistributionError::ServerError { code, .. } => passing(*code),
        _ => false,
    }
}

/// Run one registry request, again after 0.2, 0.4, 0.8 s while it meets a
/// passing server failure; any other outcome is final at once.
async fn retrying<T, F, Fut>(mut request: F) -> std::result::Result<T, OciDistributionError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, OciDistributionError>>,
{
    let mut delay = std::time::Duration::from_millis(200);
    let mut tried = 1;
    loop {
        match request().await {
            Err(e) if tried < TRIES && transient(&e) => {
                tracing::warn!("registry: {e}; trying again in {delay:?}");
                tokio::time::sleep(delay).await;
                delay *= 2;
                tried += 1;
            }
            done => return done,
        }
    }
}

/// Registry TLS (oci-client's and our own reqwest clients, which take the
/// process's default provider; `Session::connect` sets it up before either
/// is built) runs on ring: it seeds its generator from the
/// kernel, where aws-lc's first random bytes run a CPU-jitter entropy
/// collector, about 25 ms of CPU in every process, most of what a nightly
/// "unchanged" decision costs. ARC's client names aws-lc-rs itself (it needs
/// P-521 and signs proxies), so it is not affected.
pub(crate) fn tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An embedding program that chose a provider keeps it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Whether the registry answers TLS (for `--tls-verify=false`, which allows
/// plain HTTP the way skopeo's insecure registries do).
async fn speaks_https(registry: &str) -> bool {
    let Ok(client) = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(std::time::Duration::from_secs(10))
        .build()
    else {
        return true;
    };
    client
        .get(format!("https://{registry}/v2/"))
        .send()
        .await
        .is_ok()
}

fn ca_certificates(registry: &str, cert_dir: Option<&Path>) -> Result<Vec<Certificate>> {
    let mut dirs: Vec<PathBuf> = cert_dir.map(Path::to_path_buf).into_iter().collect();
    for base in ["/etc/docker/certs.d", "/etc/containers/certs.d"] {
        dirs.push(Path::new(base).join(registry));
    }
    let mut certs = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if p.extension().is_some_and(|e| e == "crt" || e == "pem") {
                let data = std::fs::read(&p).map_err(|e| Error::io_path(&p, "reading", e))?;
                certs.push(Certificate {
                    encoding: CertificateEncoding::Pem,
                    data,
                });
            }
        }
    }
    Ok(certs)
}

/// Credentials for `registry` from the Docker client configuration.
pub fn docker_config_auth(registry: &str) -> Result<RegistryAuth> {
    let dir = match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".docker"),
            None => return Ok(RegistryAuth::Anonymous),
        },
    };
    let path = dir.join("config.json");
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RegistryAuth::Anonymous),
        Err(e) => return Err(Error::io_path(&path, "reading", e)),
    };
    let config: DockerConfig = serde_json::from_slice(&text).map_err(|e| Error::BadInput {
        input: path.display().to_string(),
        place: format!("line {} column {}: ", e.line(), e.column()),
        reason: e.to_string(),
        hint: None,
    })?;
    let keys = registry_keys(registry);
    if let Some(helper) = keys
        .iter()
        .find_map(|k| config.cred_helpers.get(k))
        .or(config.creds_store.as_ref())
        && let Some(auth) = credential_helper(helper, registry)?
    {
        return Ok(auth);
    }
    for k in &keys {
        if let Some(entry) = config.auths.get(k) {
            if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
                return Ok(RegistryAuth::Basic(u.clone(), p.clone()));
            }
            if let Some(a) = &entry.auth {
                use base64::Engine;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(a.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| Error::BadInput {
                        input: path.display().to_string(),
                        place: format!("auths.{k}.auth: "),
                        reason: "not base64 of USER:PASSWORD".into(),
                        hint: Some("run `docker login` again".into()),
                    })?;
                if let Some((u, p)) = decoded.split_once(':') {
                    return Ok(RegistryAuth::Basic(u.into(), p.into()));
                }
            }
            if let Some(t) = &entry.registrytoken {
                return Ok(RegistryAuth::Bearer(t.clone()));
            }
        }
    }
    Ok(RegistryAuth::Anonymous)
}

/// The keys under which docker stores a registry's credentials.
fn registry_keys(registry: &str) -> Vec<String> {
    if registry == crate::reference::DOCKER_HUB {
        return vec![
            "https://index.docker.io/v1/".into(),
            "index.docker.io".into(),
            "docker.io".into(),
        ];
    }
    vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v1/"),
        format!("https://{registry}/v2/"),
    ]
}

fn credential_helper(helper: &str, registry: &str) -> Result<Option<RegistryAuth>> {
    let program = format!("docker-credential-{helper}");
    let mut child = match std::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("credential helper {program} not usable: {e}");
            return Ok(None);
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(registry.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("running {program}"), e))?;
    if !out.status.success() {
        // "credentials not found" is an answer, not an error.
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    struct HelperReply {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let reply: HelperReply = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::Other(format!("{program} gave an unreadable reply: {e}")))?;
    Ok(Some(if reply.username == "<token>" {
        RegistryAuth::Bearer(reply.secret)
    } else {
        RegistryAuth::Basic(reply.username, reply.secret)
    }))
}

#[derive(serde::Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    registrytoken: Option<String>,
}

fn map_oci_error(target: &RegistryRef, e: OciDistributionError, what: &str) -> Error {
    let registry = target.registry.clone();
    let place = format!("{}/{}", target.registry, target.repository);
    match e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => Error::AuthFailed {
            registry,
            detail: format!(
                "{what} in {place} was refused; check --creds USER:PASSWORD or `docker login {}`",
                target.registry
            ),
        },
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let text = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect::<Vec<_>>()
                .join("; ");
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                Error::AuthFailed {
                    registry,
                    detail: format!(
                        "{what} in {place} was refused ({text}); check --creds USER:PASSWORD"
                    ),
                }
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                Error::NotFound {
                    what: format!("{what} in {place}"),
                    detail: text,
                }
            } else {
                Error::Other(format!("{place}: {what}: {text}"))
            }
        }
        OciDistributionError::ImageManifestNotFoundError(m) => Error::NotFound {
            what: format!("{what} in {place}"),
            detail: m,
        },
        OciDistributionError::ServerError {
            code: 404, message, ..
        } => Error::NotFound {
            what: format!("{what} in {place}"),
            detail: message,
        },
        OciDistributionError::DigestError(d) => Error::DigestMismatch {
            what: format!("{what} in {place}"),
            expected: String::new(),
            actual: d.to_string(),
        },
        ref e if transient(e) => Error::Other(format!(
            "{place}: {what}: {e} (the same answer {TRIES} times in a row)"
        )),
        OciDistributionError::RequestError(r) => {
            let hint = if r.is_connect() || r.is_request() {
                " (is the registry running? for a plain-HTTP registry pass --tls-verify=false)"
            } else {
                ""
            };
            Error::Other(format!("{place}: {what}: {r}{hint}"))
        }
        other => Error::Other(format!("{place}: {what}: {other}")),
    }
}

/// Pull the image at `target` into `layout`; returns the descriptor of the
/// chosen manifest (and of the index it came from, if any). Blobs are stored
/// and verified before the manifest, so a failed pull records no image.
pub fn pull(
    target: &RegistryRef,
    opts: &RegistryOptions,
    layout: &Layout,
    platform: &PlatformWanted,
) -> Result<Descriptor> {
    runtime().block_on(async {
        let session = Session::connect(target, opts, RegistryOperation::Pull).await?;
        let (mut raw, mut digest, mut media_type) = session.manifest(&target.reference()).await?;
        if media::is_index(&media_type) {
            let index: IndexJson = serde_json::from_slice(&raw).map_err(|e| {
                Error::bad_input(
                    format!("docker://{target}"),
                    format!("unreadable image index: {e}"),
                )
            })?;
            let chosen = platform.select(&index, &format!("docker://{target}"))?;
            let wanted = chosen.digest.to_string();
            (raw, digest, media_type) = session.manifest(&wanted).await?;
        }
        if !media::is_manifest(&media_type) {
            return Err(Error::bad_input(
                format!("docker://{target}"),
                format!("the registry returned a {media_type:?}, not an image manifest"),
            ));
        }
        let manifest: crate::image::Manifest = serde_json::from_slice(&raw).map_err(|e| {
            Error::bad_input(
                format!("docker://{target}"),
                format!("unreadable manifest: {e}"),
            )
        })?;
        let blobs: Vec<&Descriptor> = std::iter::once(&manifest.config)
            .chain(manifest.layers.iter())
            .collect();
        futures_util::stream::iter(blobs.into_iter().map(|d| session.pull_blob(layout, d)))
            .buffer_unordered(3)
            .try_collect::<Vec<()>>()
            .await?;
        let (_, size) = layout.put_blob(&raw)?;
        Ok(Descriptor::new(media_type, digest, size))
    })
}

/// The image index `target` names, or None when it names one manifest
/// (multi-arch publishing pulls each platform's image after).
pub fn index(target: &RegistryRef, opts: &RegistryOptions) -> Result<Option<IndexJson>> {
    runtime().block_on(async {
        let session = Session::connect(target, opts, RegistryOperation::Pull).await?;
        let (raw, _, media_type) = session.manifest(&target.reference()).await?;
        if !media::is_index(&media_type) {
            return Ok(None);
        }
        serde_json::from_slice(&raw).map(Some).map_err(|e| {
            Error::bad_input(
                format!("docker://{target}"),
                format!("unreadable image index: {e}"),
            )
        })
    })
}

/// Push an image from its layout to `target`. Returns the manifest digest
/// and how many blobs were uploaded (the rest were there already).
pub fn push(
    image: &Image,
    target: &RegistryRef,
    opts: &RegistryOptions,
) -> Result<(Digest, usize)> {
    runtime().block_on(async {
        let session = Session::connect(target, opts, RegistryOperation::Push).await?;
        let uploaded: Vec<bool> =
            futures_util::stream::iter(image.blobs().map(|d| session.push_blob(&image.layout, d)))
                .buffer_unordered(3)
                .try_collect()
                .await?;
        let reference = match (&target.tag, &target.digest) {
            (Some(t), _) => t.clone(),
            (None, Some(_)) | (None, None) => image.manifest_desc.digest.to_string(),
        };
        if let Some(d) = &target.digest
            && *d != image.manifest_desc.digest
        {
            return Err(Error::bad_input(
                format!("docker://{target}"),
                format!(
                    "the image's manifest is {}, not the digest given",
                    image.manifest_desc.digest
                ),
            ));
        }
        let content_type = reqwest::header::HeaderValue::from_str(&image.manifest_desc.media_type)
            .map_err(|_| Error::Other("manifest media type is not a header value".into()))?;
        let r = session.reference(&reference);
        retrying(|| {
            session
                .client
                .push_manifest_raw(&r, image.manifest_raw.clone(), content_type.clone())
        })
        .await
        .map_err(|e| session.map_err(e, "upload of the manifest"))?;
        Ok((
            image.manifest_desc.digest.clone(),
            uploaded.iter().filter(|u| **u).count(),
        ))
    })
}

/// Tags of a repository (for wildcard wishlists and `ls`).
pub fn list_tags(target: &RegistryRef, opts: &RegistryOptions) -> Result<Vec<String>> {
    runtime().block_on(async {
        let session = Session::connect(target, opts, RegistryOperation::Pull).await?;
        let r = session.reference(&target.reference());
        let resp = retrying(|| session.client.list_tags(&r, &session.auth, None, None))
            .await
            .map_err(|e| session.map_err(e, "tag list"))?;
        Ok(resp.tags)
    })
}

/// The manifest and config of the image a tag names now, without its
/// layers: what a nightly needs to decide "unchanged" from the registry
/// alone. `Ok(None)` when the repository or tag does not exist (or the tag
/// names an index, which no nightly pushes); any other failure, an
/// unreachable registry included, is an error, never "absent".
pub fn fetch_config(
    target: &RegistryRef,
    opts: &RegistryOptions,
) -> Result<Option<(Descriptor, crate::image::ImageConfig)>> {
    runtime().block_on(async {
        let session = match Session::connect(target, opts, RegistryOperation::Pull).await {
            Ok(s) => s,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let (raw, digest, media_type) = match session.manifest(&target.reference()).await {
            Ok(m) => m,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if !media::is_manifest(&media_type) {
            return Ok(None);
        }
        let manifest: crate::image::Manifest = serde_json::from_slice(&raw).map_err(|e| {
            Error::bad_input(
                format!("docker://{target}"),
                format!("unreadable manifest: {e}"),
            )
        })?;
        let r = session.reference(&target.reference());
        let desc = oci_client::manifest::OciDescriptor {
            media_type: manifest.config.media_type.clone(),
            digest: manifest.config.digest.to_string(),
            size: manifest.config.size as i64,
            ..Default::default()
        };
        let bytes = retrying(|| async {
            let mut bytes: Vec<u8> = Vec::new();
            session.client.pull_blob(&r, &desc, &mut bytes).await?;
            Ok(bytes)
        })
        .await
        .map_err(|e| session.map_err(e, &format!("config {}", manifest.config.digest)))?;
        let actual = Digest::of_bytes(&bytes);
        if actual != manifest.config.digest {
            return Err(Error::DigestMismatch {
                what: format!("config of docker://{target}"),
                expected: manifest.config.digest.to_string(),
                actual: actual.to_string(),
            });
        }
        let config: crate::image::ImageConfig = serde_json::from_slice(&bytes).map_err(|e| {
            Error::bad_input(
                format!("docker://{target}"),
                format!("unreadable image config: {e}"),
            )
        })?;
        Ok(Some((
            Descriptor::new(media_type, digest, raw.len() as u64),
            config,
        )))
    })
}
