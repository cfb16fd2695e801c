//! Grid client certificates and RFC 3820 proxies.
//!
//! A grid user presents either a plain user certificate or a chain of proxy
//! certificates (RFC 3820, GT3 draft or legacy Globus) ending in one; the
//! identity is the end-entity certificate's DN in the OpenSSL slash form.
//! webpki cannot handle proxies (their critical ProxyCertInfo extension and
//! end-entity issuers), so the leading proxies are checked here by hand and
//! only the end-entity certificate and its CA chain go to webpki.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use x509_cert::Certificate;
use x509_cert::der::asn1::ObjectIdentifier as Oid;
use x509_cert::der::{Any, DateTime, Decode, Encode, Tag, Tagged};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};
use x509_cert::name::Name;

/// Why a CA directory, a server identity or a client chain was refused.
/// The messages are shown to users as they are: they name the file or the
/// certificate (by its DN) and the reason.
#[derive(Debug, thiserror::Error)]
pub enum X509Error {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("no CA certificates (HASH.N files) in {}", dir.display())]
    NoCa { dir: PathBuf },
    #[error("this service accepts no client certificates (no CA directory is configured)")]
    NoCaConfigured,
    #[error("no client certificate was presented")]
    NoCertificate,
    #[error("certificate #{} of the client's chain is not valid X.509: {reason}", index + 1)]
    Malformed { index: usize, reason: String },
    /// `role` is "proxy" or "certificate"; `reason` reads on from the DN
    /// ("expired at 2026-12-01 10:00:00 UTC").
    #[error("{role} {subject} {reason}")]
    Rejected {
        role: &'static str,
        subject: String,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// The identity a verified client chain proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The end-entity certificate's DN, slash form.
    pub dn: String,
    /// How many proxy certificates preceded the end-entity certificate.
    pub proxies: usize,
    /// The earliest notAfter of the proxies and the end-entity certificate.
    pub not_after: SystemTime,
}

/// The trusted CAs and their CRLs, from a directory in the hashed layout of
/// /etc/grid-security/certificates.
#[derive(Debug)]
pub struct CaDirectory {
    dir: PathBuf,
    subjects: Vec<DistinguishedName>,
    crls: usize,
    /// `None` for [`CaDirectory::empty`].
    webpki: Option<Arc<dyn ClientCertVerifier>>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum CaFile {
    Cert,
    Crl,
}

/// `HASH.N` is a CA certificate, `HASH.rN` a CRL; anything else
/// (`.signing_policy`, `.namespaces`, `.info`, `.crl_url`, READMEs) is not ours.
fn classify(name: &str) -> Option<CaFile> {
    let (hash, suffix) = name.split_once('.')?;
    if hash.len() != 8 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if all_digits(suffix) {
        Some(CaFile::Cert)
    } else if suffix.strip_prefix('r').is_some_and(all_digits) {
        Some(CaFile::Crl)
    } else {
        None
    }
}

fn file_error(path: &Path, reason: impl Into<String>) -> X509Error {
    X509Error::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, X509Error> {
    fs::read(path).map_err(|source| X509Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn pem_certs(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, X509Error> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no PEM CERTIFICATE"));
    }
    Ok(certs)
}

fn webpki_verifier(
    roots: &Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, rustls::server::VerifierBuilderError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider)
        .with_crls(crls)
        // Many CAs publish no CRL (or fetch-crl has not run yet): without a
        // CRL the status is unknown, which must not lock their users out.
        // Expired CRLs are still applied (rustls's default ExpirationPolicy
        // is Ignore): a stale CRL still lists what it revoked, and a late
        // fetch-crl run must not lock out every user of that CA either.
        .allow_unknown_revocation_status()
        .build()
}

impl CaDirectory {
    /// Read `dir` (e.g. /etc/grid-security/certificates): every `HASH.N`
    /// must hold a usable PEM CA certificate and every `HASH.rN` a CRL.
    pub fn load(dir: &Path) -> Result<CaDirectory, X509Error> {
        let entries = fs::read_dir(dir).map_err(|source| X509Error::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| X509Error::Read {
                path: dir.to_path_buf(),
                source,
            })?;
            let name = entry.file_name();
            if let Some(kind) = name.to_str().and_then(classify) {
                files.push((entry.path(), kind));
            }
        }
        // Deterministic order, so the same bad file is named every time.
        files.sort();

        let mut roots = RootCertStore::empty();
        // Old- and new-style hash links often point at the same CA.
        let mut seen = HashSet::new();
        let mut crls = Vec::new();
        for (path, kind) in &files {
            let bytes = read(path)?;
            match kind {
                CaFile::Cert => {
                    for cert in pem_certs(path, &bytes)? {
                        if !seen.insert(cert.to_vec()) {
                            continue;
                        }
                        roots.add(cert).map_err(|e| {
                            file_error(path, format!("not a usable CA certificate: {e}"))
                        })?;
                    }
                }
                CaFile::Crl => {
                    // fetch-crl writes PEM; some sites drop the DER as published.
                    let crl = if bytes.first() == Some(&0x30) {
                        CertificateRevocationListDer::from(bytes)
                    } else {
                        CertificateRevocationListDer::from_pem_slice(&bytes).map_err(|e| {
                            file_error(path, format!("not a PEM or DER X509 CRL: {e}"))
                        })?
                    };
                    crls.push((path.clone(), crl));
                }
            }
        }
        if roots.is_empty() {
            return Err(X509Error::NoCa {
                dir: dir.to_path_buf(),
            });
        }
        let roots = Arc::new(roots);
        let crl_count = crls.len();
        let all = crls.iter().map(|(_, c)| c.clone()).collect();
        let webpki = match webpki_verifier(&roots, all) {
            Ok(v) => v,
            Err(e) => {
                // Name the CRL webpki could not parse.
                for (path, crl) in crls {
                    if let Err(e) = webpki_verifier(&roots, vec![crl]) {
                        return Err(file_error(&path, format!("not a usable CRL: {e}")));
                    }
                }
                return Err(X509Error::Tls(format!("{}: {e}", dir.display())));
            }
        };
        Ok(CaDirectory {
            dir: dir.to_path_buf(),
            subjects: roots.subjects(),
            crls: crl_count,
            webpki: Some(webpki),
        })
    }

    /// No CAs at all, for a service that takes bearer tokens only: every
    /// client chain is refused and no client certificate is asked for.
    pub fn empty() -> CaDirectory {
        CaDirectory {
            dir: PathBuf::new(),
            subjects: Vec::new(),
            crls: 0,
            webpki: None,
        }
    }

    /// True for [`CaDirectory::empty`].
    pub fn is_empty(&self) -> bool {
        self.webpki.is_none()
    }

    /// The CA subjects, sent in the CertificateRequest so clients (browsers
    /// above all) offer a certificate these CAs issued.
    pub fn root_hint_subjects(&self) -> Vec<DistinguishedName> {
        self.subjects.clone()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Distinct CA certificates loaded.
    pub fn ca_count(&self) -> usize {
        self.subjects.len()
    }

    pub fn crl_count(&self) -> usize {
        self.crls
    }

    /// Verify a client chain as sent in TLS (leaf first): the leading
    /// proxies by hand, the end-entity certificate and the rest with webpki
    /// against this directory (CRLs included).
    pub fn verify_chain(
        &self,
        chain: &[CertificateDer<'_>],
        now: SystemTime,
    ) -> Result<Verified, X509Error> {
        if chain.is_empty() {
            return Err(X509Error::NoCertificate);
        }
        let Some(webpki) = &self.webpki else {
            return Err(X509Error::NoCaConfigured);
        };
        let certs = chain
            .iter()
            .enumerate()
            .map(|(index, der)| {
                Certificate::from_der(der).map_err(|e| X509Error::Malformed {
                    index,
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut not_after = None::<SystemTime>;
        let mut earliest = |t: SystemTime| {
            not_after = Some(not_after.map_or(t, |n| n.min(t)));
        };
        let mut proxies = 0;
        for (index, cert) in certs.iter().enumerate() {
            let reject = |reason: String| X509Error::Rejected {
                role: "proxy",
                subject: slash_dn(cert.tbs_certificate().subject()),
                reason,
            };
            let Some(proxy) = proxy_kind(cert).map_err(reject)? else {
                break;
            };
            let Some(issuer) = certs.get(index + 1) else {
                return Err(reject(
                    "was sent without the certificate that signed it (no end-entity certificate \
                     follows the proxies)"
                        .into(),
                ));
            };
            check_proxy(cert, &chain[index], &proxy, index, issuer, now).map_err(reject)?;
            earliest(not_after_of(cert));
            proxies += 1;
        }

        // Each proxy above required the certificate after it, so the
        // end-entity certificate is there.
        let (Some(ee), Some((ee_der, intermediates))) = (
            certs.get(proxies),
            chain.get(proxies..).and_then(|c| c.split_first()),
        ) else {
            return Err(X509Error::NoCertificate);
        };
        let unix = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
        webpki
            .verify_client_cert(ee_der, intermediates, unix)
            .map_err(|e| X509Error::Rejected {
                role: "certificate",
                subject: slash_dn(ee.tbs_certificate().subject()),
                reason: self.explain(e, ee, now),
            })?;
        earliest(not_after_of(ee));
        Ok(Verified {
            dn: slash_dn(ee.tbs_certificate().subject()),
            proxies,
            not_after: not_after.unwrap_or(now),
        })
    }

    /// webpki's verdict on the end-entity certificate, in words.
    fn explain(&self, err: rustls::Error, ee: &Certificate, now: SystemTime) -> String {
        let ee_after = not_after_of(ee);
        let rustls::Error::InvalidCertificate(err) = err else {
            return format!("was refused: {err}");
        };
        match err {
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
                if ee_after < now =>
            {
                format!("expired at {}", utc(ee_after))
            }
            CertificateError::ExpiredContext { not_after, .. } => format!(
                "is signed by a CA certificate that expired at {}",
                utc(UNIX_EPOCH + Duration::from_secs(not_after.as_secs()))
            ),
            CertificateError::Expired => "is signed by an expired CA certificate".into(),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                let from = ee.tbs_certificate().validity().not_before.to_system_time();
                if from > now {
                    format!("is not yet valid (valid from {})", utc(from))
                } else {
                    "is signed by a CA certificate that is not yet valid".into()
                }
            }
            CertificateError::Revoked => {
                format!("has been revoked by its CA (CRL in {})", self.dir.display())
            }
            CertificateError::UnknownIssuer => {
                format!("is not signed by a CA in {}", self.dir.display())
            }
            CertificateError::BadSignature => {
                "has a signature that does not verify with its CA's key".into()
            }
            CertificateError::UnhandledCriticalExtension => {
                "has a critical extension that is not understood".into()
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "is not valid for TLS client authentication (extended key usage)".into()
            }
            CertificateError::BadEncoding => "is malformed".into(),
            other => format!("was refused: {other}"),
        }
    }
}

// Object identifiers.
const PROXY_CERT_INFO: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.1.14");
const PROXY_CERT_INFO_GT3: Oid = Oid::new_unwrap("1.3.6.1.4.1.3536.1.222");
const PPL_INHERIT_ALL: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.21.1");
const PPL_INDEPENDENT: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.21.2");
const PPL_GLOBUS_LIMITED: Oid = Oid::new_unwrap("1.3.6.1.4.1.3536.1.1.1.9");
const KEY_USAGE: Oid = Oid::new_unwrap("2.5.29.15");
const BASIC_CONSTRAINTS: Oid = Oid::new_unwrap("2.5.29.19");
const EXT_KEY_USAGE: Oid = Oid::new_unwrap("2.5.29.37");
const CN: Oid = Oid::new_unwrap("2.5.4.3");

const RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
const MD5_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.4");
const SHA1_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.5");
const RSA_PSS: Oid = Oid::new_unwrap("1.2.840.113549.1.1.10");
const SHA256_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.13");
const EC_PUBLIC_KEY: Oid = Oid::new_unwrap("1.2.840.10045.2.1");
const ECDSA_SHA1: Oid = Oid::new_unwrap("1.2.840.10045.4.1");
const ECDSA_SHA256: Oid = Oid::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_SHA384: Oid = Oid::new_unwrap("1.2.840.10045.4.3.3");
const ECDSA_SHA512: Oid = Oid::new_unwrap("1.2.840.10045.4.3.4");
const P256: Oid = Oid::new_unwrap("1.2.840.10045.3.1.7");
const P384: Oid = Oid::new_unwrap("1.3.132.0.34");
const P521: Oid = Oid::new_unwrap("1.3.132.0.35");
const ED25519: Oid = Oid::new_unwrap("1.3.101.112");

/// What a proxy certificate constrains.
struct Proxy {
    /// pCPathLenConstraint: how many proxies may follow below this one.
    path_len: Option<u64>,
}

/// `Some` when `cert` is a proxy: it carries ProxyCertInfo (RFC 3820 or the
/// GT3 draft), or it is a legacy Globus proxy (subject = issuer + CN=proxy or
/// CN=limited proxy). `Err` when it is a proxy gridship must refuse.
fn proxy_kind(cert: &Certificate) -> Result<Option<Proxy>, String> {
    let tbs = cert.tbs_certificate();
    for ext in tbs.extensions().into_iter().flatten() {
        if ext.extn_id == PROXY_CERT_INFO || ext.extn_id == PROXY_CERT_INFO_GT3 {
            return proxy_cert_info(ext.extn_value.as_bytes()).map(Some);
        }
    }
    let (subject, issuer) = (rdns(tbs.subject()), rdns(tbs.issuer()));
    let legacy = subject.len() == issuer.len() + 1
        && subject.starts_with(&issuer)
        && subject
            .last()
            .and_then(|rdn| single_cn(rdn))
            .is_some_and(|cn| cn == "proxy" || cn == "limited proxy");
    Ok(legacy.then_some(Proxy { path_len: None }))
}

/// ProxyCertInfo ::= SEQUENCE { pCPathLenConstraint INTEGER OPTIONAL,
/// proxyPolicy SEQUENCE { policyLanguage OID, policy OCTET STRING OPTIONAL } }.
/// The GT3 draft put the policy first and tagged the length [1]; both are read.
fn proxy_cert_info(value: &[u8]) -> Result<Proxy, String> {
    let bad = || "has a malformed ProxyCertInfo extension".to_string();
    let Some(Tlv {
        tag: 0x30,
        content: mut rest,
        rest: [],
        ..
    }) = der_next(value)
    else {
        return Err(bad());
    };
    let mut path_len = None;
    let mut language = None;
    while !rest.is_empty() {
        let Tlv {
            tag,
            content,
            rest: after,
            ..
        } = der_next(rest).ok_or_else(bad)?;
        match tag {
            0x02 => path_len = Some(der_uint(content).ok_or_else(bad)?),
            0xa1 => match der_next(content) {
                Some(Tlv {
                    tag: 0x02,
                    content: n,
                    rest: [],
                    ..
                }) => path_len = Some(der_uint(n).ok_or_else(bad)?),
                _ => return Err(bad()),
            },
            0x30 => match der_next(content) {
                Some(Tlv {
                    tag: 0x06,
                    content: oid,
                    ..
                }) => {
                    language = Some(Oid::from_bytes(oid).map_err(|_| bad())?);
                }
                _ => return Err(bad()),
            },
            _ => return Err(bad()),
        }
        rest = after;
    }
    match language {
        // Limited proxies carry the user's identity too; they only may not
        // submit jobs, which is the CE's business, not authentication's.
        Some(l) if l == PPL_INHERIT_ALL || l == PPL_GLOBUS_LIMITED => Ok(Proxy { path_len }),
        // An independent proxy holds none of its issuer's rights.
        Some(l) if l == PPL_INDEPENDENT => Err(
            "is an independent proxy (id-ppl-independent), which does not carry the user's identity"
                .into(),
        ),
        Some(l) => Err(format!(
            "has proxy policy language {l}, which gridship cannot evaluate (only inheritAll and \
             limited proxies are accepted)"
        )),
        None => Err(bad()),
    }
}

/// The checks RFC 3820 section 4 asks of each proxy: signed by the next
/// certificate's key, named after it, within validity, within its own path
/// length constraint. `below` is how many proxies come before this one in
/// the chain (were signed, directly or not, by its key).
fn check_proxy(
    cert: &Certificate,
    der: &[u8],
    proxy: &Proxy,
    below: usize,
    issuer: &Certificate,
    now: SystemTime,
) -> Result<(), String> {
    let tbs = cert.tbs_certificate();
    let itbs = issuer.tbs_certificate();
    let issuer_dn = slash_dn(itbs.subject());
    if tbs.issuer() != itbs.subject() {
        return Err(format!(
            "names its issuer {}, but the next certificate in the chain is {issuer_dn}",
            slash_dn(tbs.issuer())
        ));
    }
    let (subject, issuer_rdns) = (rdns(tbs.subject()), rdns(itbs.subject()));
    let extends = subject.len() == issuer_rdns.len() + 1
        && subject.starts_with(&issuer_rdns)
        && subject.last().and_then(|rdn| single_cn(rdn)).is_some();
    if !extends {
        return Err(format!(
            "does not have the subject of its issuer {issuer_dn} plus one CN"
        ));
    }

    // The issuer must be able to sign proxies: an end entity or a proxy,
    // not a CA, and with digitalSignature if its key usage is restricted.
    match itbs.get_extension::<BasicConstraints>() {
        Ok(Some((_, bc))) if bc.ca => {
            return Err(format!(
                "is signed by {issuer_dn}, a CA certificate; proxies are signed by end-entity \
                 certificates or proxies"
            ));
        }
        Err(_) => {
            return Err(format!(
                "is signed by {issuer_dn}, whose basic constraints are malformed"
            ));
        }
        _ => {}
    }
    match itbs.get_extension::<KeyUsage>() {
        Ok(Some((_, ku))) if !ku.digital_signature() => {
            return Err(format!(
                "is signed by {issuer_dn}, whose key usage does not allow digitalSignature"
            ));
        }
        Err(_) => {
            return Err(format!(
                "is signed by {issuer_dn}, whose key usage is malformed"
            ));
        }
        _ => {}
    }

    verify_signature(der, cert, issuer, &issuer_dn)?;

    let not_before = tbs.validity().not_before.to_system_time();
    let not_after = not_after_of(cert);
    if now > not_after {
        return Err(format!("expired at {}", utc(not_after)));
    }
    if now < not_before {
        return Err(format!("is not yet valid (valid from {})", utc(not_before)));
    }

    if let Some(max) = proxy.path_len
        && below as u64 > max
    {
        return Err(format!(
            "allows {max} proxies below it (pCPathLenConstraint), but {below} follow"
        ));
    }
    if let Ok(Some((_, bc))) = tbs.get_extension::<BasicConstraints>()
        && bc.ca
    {
        return Err("claims to be a CA (basicConstraints cA)".into());
    }
    let known = [
        PROXY_CERT_INFO,
        PROXY_CERT_INFO_GT3,
        KEY_USAGE,
        BASIC_CONSTRAINTS,
        EXT_KEY_USAGE,
    ];
    for ext in tbs.extensions().into_iter().flatten() {
        if ext.critical && !known.contains(&ext.extn_id) {
            return Err(format!(
                "has a critical extension {} that is not understood",
                ext.extn_id
            ));
        }
    }
    Ok(())
}

/// Verify `cert`'s signature over its TBS bytes with `issuer`'s public key.
fn verify_signature(
    der: &[u8],
    cert: &Certificate,
    issuer: &Certificate,
    issuer_dn: &str,
) -> Result<(), String> {
    let alg = cert.signature_algorithm();
    if alg != cert.tbs_certificate().signature() {
        return Err("has different signature algorithms inside and outside its TBS part".into());
    }
    let tbs = tbs_bytes(der).ok_or("has a malformed TBSCertificate")?;
    let signature = cert
        .signature()
        .as_bytes()
        .ok_or("has a malformed signature bit string")?;
    let spki = issuer.tbs_certificate().subject_public_key_info();
    let key = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| format!("is signed by {issuer_dn}, whose public key is malformed"))?;
    let key_alg = spki.algorithm.oid;
    let curve = || {
        spki.algorithm
            .parameters
            .as_ref()
            .filter(|_| key_alg == EC_PUBLIC_KEY)
            .and_then(|p| Oid::from_bytes(p.value()).ok())
    };
    let wrong_key = || {
        format!(
            "has signature algorithm {}, which does not match the key of {issuer_dn}",
            alg.oid
        )
    };
    let rsa = |alg: &'static dyn VerificationAlgorithm| {
        if key_alg != RSA {
            return Err(wrong_key());
        }
        match rsa_bits(key) {
            Some(bits) if bits < 2048 => Err(format!(
                "is signed by the {bits}-bit RSA key of {issuer_dn}, too short (at least 2048 bits)"
            )),
            Some(bits) if bits > 8192 => Err(format!(
                "is signed by the {bits}-bit RSA key of {issuer_dn}, too long (at most 8192 bits)"
            )),
            Some(_) => Ok(alg),
            None => Err(format!(
                "is signed by {issuer_dn}, whose RSA key is malformed"
            )),
        }
    };
    let ecdsa = |p256, p384, p521| match curve() {
        Some(c) if c == P256 => Ok(p256),
        Some(c) if c == P384 => Ok(p384),
        Some(c) if c == P521 => Ok(p521),
        _ => Err(wrong_key()),
    };
    let algorithm: &'static dyn VerificationAlgorithm = match alg.oid {
        a if a == SHA256_RSA => rsa(&sig::RSA_PKCS1_2048_8192_SHA256)?,
        a if a == SHA384_RSA => rsa(&sig::RSA_PKCS1_2048_8192_SHA384)?,
        a if a == SHA512_RSA => rsa(&sig::RSA_PKCS1_2048_8192_SHA512)?,
        a if a == ECDSA_SHA256 => ecdsa(
            &sig::ECDSA_P256_SHA256_ASN1,
            &sig::ECDSA_P384_SHA256_ASN1,
            &sig::ECDSA_P521_SHA256_ASN1,
        )?,
        a if a == ECDSA_SHA384 => ecdsa(
            &sig::ECDSA_P256_SHA384_ASN1,
            &sig::ECDSA_P384_SHA384_ASN1,
            &sig::ECDSA_P521_SHA384_ASN1,
        )?,
        a if a == ECDSA_SHA512 => ecdsa(
            &sig::ECDSA_P256_SHA512_ASN1,
            &sig::ECDSA_P384_SHA512_ASN1,
            &sig::ECDSA_P521_SHA512_ASN1,
        )?,
        a if a == ED25519 && key_alg == ED25519 => &sig::ED25519,
        // Old proxy tools signed with SHA-1; collisions make that forgeable.
        a if a == SHA1_RSA || a == ECDSA_SHA1 || a == MD5_RSA => {
            let hash = if a == MD5_RSA { "MD5" } else { "SHA-1" };
            return Err(format!(
                "is signed with {hash}, which is refused as insecure; make a new proxy \
                 (arcproxy and voms-proxy-init sign with SHA-256)"
            ));
        }
        a if a == RSA_PSS => return Err("is signed with RSASSA-PSS, which is not supported".into()),
        a => {
            return Err(format!(
                "is signed with an unsupported signature algorithm {a}"
            ));
        }
    };
    UnparsedPublicKey::new(algorithm, key)
        .verify(tbs, signature)
        .map_err(|_| format!("is not signed by the key of {issuer_dn}"))
}

/// The modulus size of a DER RSAPublicKey.
fn rsa_bits(key: &[u8]) -> Option<usize> {
    let Tlv {
        tag: 0x30,
        content: seq,
        ..
    } = der_next(key)?
    else {
        return None;
    };
    let Tlv {
        tag: 0x02,
        content: n,
        ..
    } = der_next(seq)?
    else {
        return None;
    };
    let start = n.iter().position(|&b| b != 0)?;
    let first = *n.get(start)?;
    Some((n.len() - start) * 8 - first.leading_zeros() as usize)
}

/// One DER element.
struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
    /// The element with its tag and length.
    whole: &'a [u8],
    /// What follows the element.
    rest: &'a [u8],
}

/// The first DER element of `input`. Only what certificates use: low tag
/// numbers, definite lengths.
fn der_next(input: &[u8]) -> Option<Tlv<'_>> {
    let tag = *input.first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = input.get(2..2 + n)?;
        let len = bytes.iter().fold(0usize, |a, &b| (a << 8) | usize::from(b));
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    let whole = input.get(..end)?;
    Some(Tlv {
        tag,
        content: whole.get(header..)?,
        whole,
        rest: input.get(end..)?,
    })
}

/// A non-negative DER INTEGER; too large for u64 reads as u64::MAX (no limit).
fn der_uint(content: &[u8]) -> Option<u64> {
    if content.first()? & 0x80 != 0 {
        return None;
    }
    let digits: Vec<u8> = content.iter().copied().skip_while(|&b| b == 0).collect();
    if digits.len() > 8 {
        return Some(u64::MAX);
    }
    Some(digits.iter().fold(0u64, |a, &b| (a << 8) | u64::from(b)))
}

/// The signed bytes of a certificate, exactly as sent (re-encoding the parsed
/// TBSCertificate could differ from what the issuer signed).
fn tbs_bytes(cert: &[u8]) -> Option<&[u8]> {
    let outer = der_next(cert).filter(|t| t.tag == 0x30)?;
    der_next(outer.content)
        .filter(|t| t.tag == 0x30)
        .map(|t| t.whole)
}

/// RDNs as DER, for exact comparison (proxies copy their issuer's subject).
fn rdns(name: &Name) -> Vec<Vec<u8>> {
    name.iter_rdn()
        .map(|rdn| rdn.to_der().unwrap_or_default())
        .collect()
}

/// The CN value of an RDN that holds exactly one attribute, a CN.
fn single_cn(rdn_der: &[u8]) -> Option<String> {
    let rdn = x509_cert::name::RelativeDistinguishedName::from_der(rdn_der).ok()?;
    let mut attrs = rdn.iter();
    match (attrs.next(), attrs.next()) {
        (Some(a), None) if a.oid == CN => attr_text(&a.value),
        _ => None,
    }
}

fn not_after_of(cert: &Certificate) -> SystemTime {
    cert.tbs_certificate().validity().not_after.to_system_time()
}

/// `2026-12-01 10:00:00 UTC`.
fn utc(t: SystemTime) -> String {
    match DateTime::from_system_time(t) {
        Ok(d) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            d.year(),
            d.month(),
            d.day(),
            d.hour(),
            d.minutes(),
            d.seconds()
        ),
        Err(_) => format!("{t:?}"),
    }
}

/// The grid (OpenSSL/Globus "slash") form of a DN, RDNs in certificate order:
/// `/C=XX/O=GridshipTest/CN=Test User`. Attributes of a multi-valued RDN are
/// joined with `+`; unknown attribute types are written as dotted OIDs and
/// values of unknown string types as `#` and their DER in hex.
pub fn slash_dn(name: &Name) -> String {
    let mut out = String::new();
    for rdn in name.iter_rdn() {
        for (i, attr) in rdn.iter().enumerate() {
            out.push(if i == 0 { '/' } else { '+' });
            match short_name(&attr.oid) {
                Some(short) => out.push_str(short),
                None => {
                    let _ = write!(out, "{}", attr.oid);
                }
            }
            out.push('=');
            match attr_text(&attr.value) {
                Some(text) => out.push_str(&text),
                None => {
                    out.push('#');
                    out.push_str(&hex::encode(attr.value.to_der().unwrap_or_default()));
                }
            }
        }
    }
    out
}

/// OpenSSL's short names for the attribute types grid DNs use.
fn short_name(oid: &Oid) -> Option<&'static str> {
    const NAMES: [(Oid, &str); 19] = [
        (Oid::new_unwrap("2.5.4.6"), "C"),
        (Oid::new_unwrap("2.5.4.8"), "ST"),
        (Oid::new_unwrap("2.5.4.7"), "L"),
        (Oid::new_unwrap("2.5.4.10"), "O"),
        (Oid::new_unwrap("2.5.4.11"), "OU"),
        (CN, "CN"),
        (Oid::new_unwrap("1.2.840.113549.1.9.1"), "emailAddress"),
        (Oid::new_unwrap("0.9.2342.19200300.100.1.25"), "DC"),
        (Oid::new_unwrap("0.9.2342.19200300.100.1.1"), "UID"),
        (Oid::new_unwrap("2.5.4.4"), "SN"),
        (Oid::new_unwrap("2.5.4.42"), "GN"),
        (Oid::new_unwrap("2.5.4.43"), "initials"),
        (Oid::new_unwrap("2.5.4.5"), "serialNumber"),
        (Oid::new_unwrap("2.5.4.12"), "title"),
        (Oid::new_unwrap("2.5.4.9"), "street"),
        (Oid::new_unwrap("2.5.4.17"), "postalCode"),
        (Oid::new_unwrap("2.5.4.41"), "name"),
        (Oid::new_unwrap("2.5.4.46"), "dnQualifier"),
        (Oid::new_unwrap("2.5.4.65"), "pseudonym"),
    ];
    NAMES.iter().find(|(o, _)| o == oid).map(|(_, n)| *n)
}

/// An attribute value as text, for the string types DNs use.
fn attr_text(value: &Any) -> Option<String> {
    let bytes = value.value();
    match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::VisibleString
        | Tag::NumericString => String::from_utf8(bytes.to_vec()).ok(),
        // T.61 in theory; Latin-1 in every certificate seen in practice.
        Tag::TeletexString => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString => {
            if !bytes.len().is_multiple_of(2) {
                return None;
            }
            let units = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        _ => None,
    }
}

/// The TLS server's client certificate verifier. It checks only that the
/// client holds the leaf's private key; the chain itself is validated after
/// the handshake with [`CaDirectory::verify_chain`], so a refused user gets a
/// precise HTTP error ("proxy ... expired at ...") instead of a bare TLS
/// alert, and bearer-token clients can connect without a certificate.
#[derive(Debug)]
pub struct PossessionVerifier {
    ca: Arc<CaDirectory>,
    provider: Arc<CryptoProvider>,
}

impl PossessionVerifier {
    pub fn new(ca: Arc<CaDirectory>, provider: Arc<CryptoProvider>) -> PossessionVerifier {
        PossessionVerifier { ca, provider }
    }
}

fn leaf(cert: &CertificateDer<'_>) -> Result<Certificate, rustls::Error> {
    Certificate::from_der(cert)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))
}

impl ClientCertVerifier for PossessionVerifier {
    fn offer_client_auth(&self) -> bool {
        // Without CAs no certificate could pass; don't make browsers ask.
        !self.ca.is_empty()
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.ca.subjects
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deliberately no chain validation here: see the type's comment.
        leaf(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "TLS 1.2 client authentication is not offered (TLS 1.3 only)".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // webpki would refuse a proxy leaf (critical ProxyCertInfo), so the
        // signature is checked against the leaf's raw public key.
        let spki = leaf(cert)?
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(spki.as_slice()),
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The HTTPS server's TLS configuration: TLS 1.3 only, the service's own
/// certificate chain and key (PEM files), grid client certificates through
/// [`PossessionVerifier`], ALPN `http/1.1`.
pub fn server_config(
    ca: Arc<CaDirectory>,
    cert_chain_pem: &Path,
    key_pem: &Path,
) -> Result<ServerConfig, X509Error> {
    let chain = pem_certs(cert_chain_pem, &read(cert_chain_pem)?)?;
    let key = PrivateKeyDer::from_pem_slice(&read(key_pem)?).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            file_error(key_pem, "holds no PEM private key")
        }
        e => file_error(key_pem, format!("not a valid PEM private key: {e}")),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(PossessionVerifier::new(ca, provider.clone()));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| X509Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            X509Error::Tls(format!(
                "{} with {}: {e}",
                cert_chain_pem.display(),
                key_pem.display()
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::sign::CertifiedKey;
    use std::collections::HashMap;
    use std::process::{Command, Stdio};
    use std::sync::OnceLock;

    const USER: &str = "/C=XX/O=GridshipTest/CN=Test User";
    const RSA_KEY: &[&str] = &["-newkey", "rsa:2048"];
    const EC_KEY: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
    const USER_EXT: &str = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n";
    const PROXY_EXT: &str = "keyUsage=critical,digitalSignature,keyEncipherment\nproxyCertInfo=critical,language:id-ppl-inheritAll\n";
    const CA_EXT: &[&str] = &[
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ];

    fn openssl(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .expect("the openssl CLI runs");
        assert!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A self-signed `NAME.pem` and `NAME.key`; `extra` adds extensions.
    fn self_signed(dir: &Path, name: &str, subj: &str, extra: &[&str]) {
        let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
        let mut args = vec![
            "req", "-config", "req.cnf", "-x509", "-nodes", "-days", "3650",
        ];
        args.extend([
            "-subj", subj, "-keyout", &key, "-out", &pem, "-newkey", "rsa:2048",
        ]);
        args.extend(extra);
        openssl(dir, &args);
    }

    /// `NAME.pem` and `NAME.key` for `subj`, signed by `ISSUER.pem`/`.key`,
    /// valid `days` from now, with the extensions in `ext` (and `opts`).
    fn issue(dir: &Path, name: &str, subj: &str, key: &[&str], issuer: &str, ext: &str) {
        issue_with(dir, name, subj, key, issuer, ext, &["-days", "1"]);
    }

    fn issue_with(
        dir: &Path,
        name: &str,
        subj: &str,
        key: &[&str],
        issuer: &str,
        ext: &str,
        opts: &[&str],
    ) {
        let [ext_file, key_file, csr, pem] =
            ["ext", "key", "csr", "pem"].map(|s| format!("{name}.{s}"));
        fs::write(dir.join(&ext_file), ext).unwrap();
        let mut req = vec!["req", "-config", "req.cnf", "-new", "-nodes", "-subj", subj];
        req.extend(["-keyout", &key_file, "-out", &csr]);
        req.extend(key);
        openssl(dir, &req);
        let (ca, ca_key) = (format!("{issuer}.pem"), format!("{issuer}.key"));
        let mut x509 = vec!["x509", "-req", "-in", &csr, "-CA", &ca, "-CAkey", &ca_key];
        x509.extend(["-CAcreateserial", "-extfile", &ext_file, "-out", &pem]);
        x509.extend(opts);
        openssl(dir, &x509);
    }

    /// Everything the tests use, made once; the files are kept as bytes so
    /// no temporary directory outlives the build.
    struct Pki {
        ca_hash: String,
        files: HashMap<String, Vec<u8>>,
        ca: CaDirectory,
    }

    impl Pki {
        fn cert(&self, name: &str) -> CertificateDer<'static> {
            CertificateDer::from_pem_slice(&self.files[&format!("{name}.pem")]).unwrap()
        }
        fn chain(&self, names: &[&str]) -> Vec<CertificateDer<'static>> {
            names.iter().map(|n| self.cert(n)).collect()
        }
        fn key(&self, name: &str) -> PrivateKeyDer<'static> {
            PrivateKeyDer::from_pem_slice(&self.files[&format!("{name}.key")]).unwrap()
        }
        /// A CA directory in hashed layout: the test CA, its CRL in
        /// `crl` form, and the files a real one holds beside them.
        fn ca_dir(&self, crl: Option<&[u8]>) -> tempfile::TempDir {
            let dir = tempfile::tempdir().unwrap();
            let hash = &self.ca_hash;
            fs::write(dir.path().join(format!("{hash}.0")), &self.files["ca.pem"]).unwrap();
            if let Some(crl) = crl {
                fs::write(dir.path().join(format!("{hash}.r0")), crl).unwrap();
            }
            for junk in ["signing_policy", "namespaces", "info", "crl_url"] {
                fs::write(dir.path().join(format!("{hash}.{junk}")), "junk").unwrap();
            }
            fs::write(dir.path().join("README"), "junk").unwrap();
            dir
        }
    }

    fn pki() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(|| {
            let tmp = tempfile::tempdir().unwrap();
            let d = tmp.path();
            fs::write(d.join("req.cnf"), "[req]\ndistinguished_name = dn\n[dn]\n").unwrap();
            self_signed(d, "ca", "/C=XX/O=GridshipTest/CN=Gridship Test CA", CA_EXT);
            let user = |n, s: &str| issue_with(d, n, s, RSA_KEY, "ca", USER_EXT, &["-days", "365"]);
            user("user", USER);
            user("revoked", "/C=XX/O=GridshipTest/CN=Revoked User");
            let proxy = |n, s: &str, issuer, ext: &str| issue(d, n, s, EC_KEY, issuer, ext);
            proxy("p1", &format!("{USER}/CN=12345"), "user", PROXY_EXT);
            proxy("p2", &format!("{USER}/CN=12345/CN=67890"), "p1", PROXY_EXT);
            let pathlen0 = PROXY_EXT.replace("inheritAll", "inheritAll,pathlen:0");
            proxy("p0", &format!("{USER}/CN=111"), "user", &pathlen0);
            proxy("p00", &format!("{USER}/CN=111/CN=222"), "p0", PROXY_EXT);
            let legacy = "keyUsage=critical,digitalSignature,keyEncipherment\n";
            proxy("legacy", &format!("{USER}/CN=proxy"), "user", legacy);
            let independent = PROXY_EXT.replace("inheritAll", "independent");
            proxy("indep", &format!("{USER}/CN=777"), "user", &independent);
            proxy("elsewhere", "/C=XX/O=Elsewhere/CN=Test User/CN=999", "user", PROXY_EXT);
            // Same DN as the user, another key: a forger's "user" certificate.
            self_signed(d, "fake", USER, &[]);
            proxy("forged", &format!("{USER}/CN=666"), "fake", PROXY_EXT);
            issue_with(d, "sha1", &format!("{USER}/CN=555"), EC_KEY, "user", PROXY_EXT, &["-sha1"]);
            self_signed(d, "other-ca", "/C=XX/O=Elsewhere/CN=Other CA", CA_EXT);
            let other = "/C=XX/O=Elsewhere/CN=Other User";
            issue_with(d, "other", other, RSA_KEY, "other-ca", USER_EXT, &["-days", "365"]);
            let server_ext = "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost\n";
            issue(d, "server", "/C=XX/O=GridshipTest/CN=localhost", EC_KEY, "ca", server_ext);

            // A CRL revoking "revoked", made the `openssl ca` way.
            fs::write(
                d.join("ca.cnf"),
                "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\ncrlnumber = crlnumber\n\
                 certificate = ca.pem\nprivate_key = ca.key\ndefault_md = sha256\n\
                 default_crl_days = 30\n",
            )
            .unwrap();
            fs::write(d.join("index.txt"), "").unwrap();
            fs::write(d.join("crlnumber"), "01\n").unwrap();
            openssl(d, &["ca", "-config", "ca.cnf", "-revoke", "revoked.pem"]);
            openssl(d, &["ca", "-config", "ca.cnf", "-gencrl", "-out", "crl.pem"]);

            let ca_hash = openssl(d, &["x509", "-hash", "-noout", "-in", "ca.pem"]);
            let mut files = HashMap::new();
            for entry in fs::read_dir(d).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if name.ends_with(".pem") || name.ends_with(".key") {
                    files.insert(name, fs::read(&path).unwrap());
                }
            }
            let mut pki = Pki {
                ca_hash,
                files,
                ca: CaDirectory::empty(),
            };
            let dir = pki.ca_dir(Some(&pki.files["crl.pem"]));
            pki.ca = CaDirectory::load(dir.path()).unwrap();
            pki
        })
    }

    fn verify(names: &[&str]) -> Result<Verified, X509Error> {
        pki()
            .ca
            .verify_chain(&pki().chain(names), SystemTime::now())
    }

    fn refused(names: &[&str]) -> String {
        verify(names).unwrap_err().to_string()
    }

    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn loads_hashed_directory() {
        let ca = &pki().ca;
        assert_eq!((ca.ca_count(), ca.crl_count()), (1, 1));
        assert_eq!(ca.root_hint_subjects().len(), 1);
        assert!(!ca.is_empty());
    }

    #[test]
    fn user_certificate() {
        let v = verify(&["user"]).unwrap();
        assert_eq!(v.dn, USER);
        assert_eq!(v.proxies, 0);
        let user = Certificate::from_der(&pki().cert("user")).unwrap();
        assert_eq!(v.not_after, not_after_of(&user));
    }

    #[test]
    fn rfc3820_proxies() {
        let v = verify(&["p1", "user"]).unwrap();
        assert_eq!((v.dn.as_str(), v.proxies), (USER, 1));
        let p1 = Certificate::from_der(&pki().cert("p1")).unwrap();
        assert_eq!(v.not_after, not_after_of(&p1), "the proxy expires first");

        let v = verify(&["p2", "p1", "user"]).unwrap();
        assert_eq!((v.dn.as_str(), v.proxies), (USER, 2));
    }

    #[test]
    fn legacy_globus_proxy() {
        let v = verify(&["legacy", "user"]).unwrap();
        assert_eq!((v.dn.as_str(), v.proxies), (USER, 1));
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let (ca, chain) = (&pki().ca, pki().chain(&["p1", "user"]));
        let msg = ca
            .verify_chain(&chain, SystemTime::now() + 2 * DAY)
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(&format!("proxy {USER}/CN=12345 expired at ")),
            "{msg}"
        );
        assert!(msg.ends_with(" UTC"), "{msg}");

        let msg = ca
            .verify_chain(&chain, SystemTime::now() - DAY)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("/CN=12345 is not yet valid (valid from "),
            "{msg}"
        );

        let user = pki().chain(&["user"]);
        let msg = ca
            .verify_chain(&user, SystemTime::now() + 400 * DAY)
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(&format!("certificate {USER} expired at ")),
            "{msg}"
        );
        let msg = ca
            .verify_chain(&user, SystemTime::now() - DAY)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("is not yet valid (valid from "), "{msg}");
    }

    #[test]
    fn unknown_ca() {
        let msg = refused(&["other"]);
        let dir = pki().ca.dir().display().to_string();
        assert_eq!(
            msg,
            format!("certificate /C=XX/O=Elsewhere/CN=Other User is not signed by a CA in {dir}")
        );
        // Sending the unknown CA along does not make it trusted.
        let msg = refused(&["other", "other-ca"]);
        assert!(msg.contains("is not signed by a CA in"), "{msg}");
    }

    #[test]
    fn revoked() {
        let msg = refused(&["revoked"]);
        assert!(
            msg.starts_with("certificate /C=XX/O=GridshipTest/CN=Revoked User has been revoked"),
            "{msg}"
        );
        // The same CRL in DER is read too.
        let crl = CertificateRevocationListDer::from_pem_slice(&pki().files["crl.pem"]).unwrap();
        let dir = pki().ca_dir(Some(crl.as_ref()));
        let ca = CaDirectory::load(dir.path()).unwrap();
        let msg = ca
            .verify_chain(&pki().chain(&["revoked"]), SystemTime::now())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("revoked"), "{msg}");
        // Without a CRL the CA's users still get in.
        let dir = pki().ca_dir(None);
        let ca = CaDirectory::load(dir.path()).unwrap();
        assert_eq!(ca.crl_count(), 0);
        let chain = pki().chain(&["revoked"]);
        assert!(ca.verify_chain(&chain, SystemTime::now()).is_ok());
    }

    #[test]
    fn proxies_refused() {
        let msg = refused(&["elsewhere", "user"]);
        assert!(
            msg.contains("does not have the subject of its issuer"),
            "{msg}"
        );
        let msg = refused(&["forged", "user"]);
        assert_eq!(
            msg,
            format!("proxy {USER}/CN=666 is not signed by the key of {USER}")
        );
        let msg = refused(&["p00", "p0", "user"]);
        assert!(msg.contains("pCPathLenConstraint"), "{msg}");
        assert!(verify(&["p0", "user"]).is_ok());
        let msg = refused(&["indep", "user"]);
        assert!(msg.contains("independent proxy"), "{msg}");
        let msg = refused(&["sha1", "user"]);
        assert!(msg.contains("SHA-1"), "{msg}");
        // A proxy level left out.
        let msg = refused(&["p2", "user"]);
        assert!(msg.contains("names its issuer"), "{msg}");
        let msg = refused(&["p1"]);
        assert!(
            msg.contains("without the certificate that signed it"),
            "{msg}"
        );
    }

    #[test]
    fn malformed_chains() {
        let ca = &pki().ca;
        let now = SystemTime::now();
        assert!(matches!(
            ca.verify_chain(&[], now),
            Err(X509Error::NoCertificate)
        ));
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        let msg = ca.verify_chain(&[garbage], now).unwrap_err().to_string();
        assert!(
            msg.starts_with("certificate #1 of the client's chain is not valid X.509"),
            "{msg}"
        );
        let mut truncated = pki().cert("p1").to_vec();
        truncated.truncate(truncated.len() / 2);
        let chain = [CertificateDer::from(truncated), pki().cert("user")];
        assert!(matches!(
            ca.verify_chain(&chain, now),
            Err(X509Error::Malformed { index: 0, .. })
        ));
        let msg = CaDirectory::empty()
            .verify_chain(&pki().chain(&["user"]), now)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no CA directory"), "{msg}");
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("0123abcd.signing_policy"), "x").unwrap();
        let msg = CaDirectory::load(dir.path()).unwrap_err().to_string();
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(msg.starts_with("no CA certificates"), "{msg}");

        let bad = dir.path().join("0123abcd.0");
        fs::write(&bad, "not a certificate").unwrap();
        let msg = CaDirectory::load(dir.path()).unwrap_err().to_string();
        assert_eq!(msg, format!("{}: holds no PEM CERTIFICATE", bad.display()));

        let dir = pki().ca_dir(Some(b"garbage"));
        let msg = CaDirectory::load(dir.path()).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!(
                "{}.r0: ",
                dir.path().join(&pki().ca_hash).display()
            )),
            "{msg}"
        );
        assert!(msg.contains("CRL"), "{msg}");

        let msg = CaDirectory::load(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("missing"), "{msg}");
    }

    #[test]
    fn slash_dn_formatting() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs::write(d.join("req.cnf"), "[req]\ndistinguished_name = dn\n[dn]\n").unwrap();
        let subj = "/DC=org/DC=example/O=Grid/OU=People/CN=Jörg Doe+UID=jdoe/emailAddress=jd@example.org/businessCategory=x";
        let mut args = vec!["req", "-config", "req.cnf", "-x509", "-nodes", "-utf8"];
        args.extend([
            "-multivalue-rdn",
            "-subj",
            subj,
            "-keyout",
            "k",
            "-out",
            "c.pem",
        ]);
        args.extend(EC_KEY);
        openssl(d, &args);
        let der = CertificateDer::from_pem_file(d.join("c.pem")).unwrap();
        let cert = Certificate::from_der(&der).unwrap();
        // businessCategory has no short name here: its OID stands in.
        let expected = subj.replace("businessCategory", "2.5.4.15");
        assert_eq!(slash_dn(cert.tbs_certificate().subject()), expected);

        let name: Name = "CN=Test User,O=GridshipTest,C=XX".parse().unwrap();
        assert_eq!(slash_dn(&name), USER);
    }

    #[test]
    fn utc_format() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_119_200);
        assert_eq!(utc(t), "2026-12-01 10:00:00 UTC");
    }

    /// The client's certificate and key as they are, without rustls's
    /// check that they match (to present a chain with the wrong key).
    #[derive(Debug)]
    struct Fixed(Arc<CertifiedKey>);

    impl rustls::client::ResolvesClientCert for Fixed {
        fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }

    /// An in-memory TLS handshake between `server_config` and a client
    /// presenting a chain with a key (or no certificate).
    fn handshake(
        ca: Arc<CaDirectory>,
        client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<rustls::ServerConnection, rustls::Error> {
        let pki = pki();
        let tmp = tempfile::tempdir().unwrap();
        let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
        fs::write(&cert, &pki.files["server.pem"]).unwrap();
        fs::write(&key, &pki.files["server.key"]).unwrap();
        let server = server_config(ca, &cert, &key).unwrap();

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(pki.cert("ca")).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots);
        let mut client = match client {
            Some((chain, key)) => {
                let key = provider.key_provider.load_private_key(key).unwrap();
                let certified = CertifiedKey::new(chain, key);
                builder.with_client_cert_resolver(Arc::new(Fixed(Arc::new(certified))))
            }
            None => builder.with_no_client_auth(),
        };
        client.alpn_protocols = vec![b"http/1.1".to_vec()];

        let name = ServerName::try_from("localhost").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
                s.process_new_packets()?;
            }
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                c.process_new_packets()?;
            }
            if !s.is_handshaking() && !c.is_handshaking() {
                return Ok(s);
            }
        }
        panic!("the handshake did not finish");
    }

    fn fixture_ca() -> Arc<CaDirectory> {
        let dir = pki().ca_dir(Some(&pki().files["crl.pem"]));
        Arc::new(CaDirectory::load(dir.path()).unwrap())
    }

    #[test]
    fn tls_with_proxy_then_verify() {
        let ca = fixture_ca();
        let s = handshake(
            ca.clone(),
            Some((pki().chain(&["p1", "user"]), pki().key("p1"))),
        )
        .unwrap();
        assert_eq!(s.alpn_protocol(), Some(&b"http/1.1"[..]));
        let chain = s.peer_certificates().unwrap();
        let v = ca.verify_chain(chain, SystemTime::now()).unwrap();
        assert_eq!((v.dn.as_str(), v.proxies), (USER, 1));

        // Possession is checked in the handshake; the chain only after it.
        let s = handshake(
            ca.clone(),
            Some((pki().chain(&["other"]), pki().key("other"))),
        )
        .unwrap();
        assert!(
            ca.verify_chain(s.peer_certificates().unwrap(), SystemTime::now())
                .is_err()
        );
    }

    #[test]
    fn tls_without_certificate() {
        let s = handshake(fixture_ca(), None).unwrap();
        assert!(s.peer_certificates().is_none());
        let s = handshake(Arc::new(CaDirectory::empty()), None).unwrap();
        assert!(s.peer_certificates().is_none());
    }

    #[test]
    fn tls_refuses_wrong_key() {
        let err = handshake(
            fixture_ca(),
            Some((pki().chain(&["p1", "user"]), pki().key("p2"))),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(CertificateError::BadSignature)
            ),
            "{err:?}"
        );
    }

    #[test]
    fn server_config_errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
        fs::write(&cert, &pki().files["server.pem"]).unwrap();
        let ca = Arc::new(CaDirectory::empty());
        let msg = server_config(ca.clone(), &cert, &key)
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with(&key.display().to_string()), "{msg}");
        fs::write(&key, &pki().files["server.pem"]).unwrap();
        let msg = server_config(ca.clone(), &cert, &key)
            .unwrap_err()
            .to_string();
        assert_eq!(msg, format!("{}: holds no PEM private key", key.display()));
        fs::write(&key, &pki().files["user.key"]).unwrap();
        let msg = server_config(ca, &cert, &key).unwrap_err().to_string();
        assert!(msg.starts_with("TLS configuration:"), "{msg}");
    }

    /// A proxy made by ARC's own tool, when it is installed.
    #[test]
    fn arcproxy_proxy() {
        let found = Command::new("which")
            .arg("arcproxy")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            eprintln!("arcproxy not installed: skipping the arcproxy test");
            return;
        }
        let pki = pki();
        let ca_dir = pki.ca_dir(None);
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs::write(d.join("usercert.pem"), &pki.files["user.pem"]).unwrap();
        fs::write(d.join("userkey.pem"), &pki.files["user.key"]).unwrap();
        // arcproxy refuses a key file others can read.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(d.join("userkey.pem"), fs::Permissions::from_mode(0o600)).unwrap();
        let out = Command::new("arcproxy")
            .args(["-C", "usercert.pem", "-K", "userkey.pem", "-T"])
            .arg(ca_dir.path())
            .args(["-P", "out.pem", "-c", "validityPeriod=3600"])
            .current_dir(d)
            .env("HOME", d)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "arcproxy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let chain = CertificateDer::pem_file_iter(d.join("out.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let ca = CaDirectory::load(ca_dir.path()).unwrap();
        let v = ca.verify_chain(&chain, SystemTime::now()).unwrap();
        assert_eq!((v.dn.as_str(), v.proxies), (USER, 1));
        // And its key proves possession in a TLS 1.3 handshake.
        let key = PrivateKeyDer::from_pem_file(d.join("out.pem")).unwrap();
        let ca = Arc::new(ca);
        let s = handshake(ca.clone(), Some((chain, key))).unwrap();
        let v = ca
            .verify_chain(s.peer_certificates().unwrap(), SystemTime::now())
            .unwrap();
        assert_eq!(v.dn, USER);
    }
}
