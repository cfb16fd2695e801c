//! The HTTPS client of one ARC CE: grid CAs rather than the web PKI, the
//! credential as a bearer header or as TLS client identity (proxies
//! included, which webpki refuses), and secp521r1, which A-REX requires.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;

use super::{ce_error, chain};
use crate::ce::auth::{AuthConfig, AuthMode, env_path, find_token, read};
use crate::error::{Error, Result};

/// A client, and what the credential lets it do besides.
pub(crate) struct Client {
    pub http: reqwest::Client,
    /// Proxy PEM when X.509 is used: needed to sign delegations.
    pub proxy_pem: Option<(PathBuf, Vec<u8>)>,
    /// For messages: which credential is in use.
    pub auth_desc: String,
}

/// The client for the CE at `base` with the credential `cfg` names.
pub(crate) fn client(base: &str, cfg: &AuthConfig) -> Result<Client> {
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
            hint: Some("install the IGTF CA bundle, set X509_CERT_DIR, or pass --ca-file".into()),
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
        .map_err(|e| ce_error(base, format!("TLS setup: {e}")))?
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
        .map_err(|e| ce_error(base, format!("TLS setup: {}", chain(&e))))?;
    Ok(Client {
        http,
        proxy_pem,
        auth_desc,
    })
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
