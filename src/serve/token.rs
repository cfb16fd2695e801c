//! WLCG JWT profile bearer tokens (`Authorization: Bearer ...`): the
//! issuers `gridship serve` trusts, their public keys, and the checks a
//! token passes before its subject is believed.
//!
//! Signatures are checked by `jsonwebtoken`; everything else (algorithm,
//! issuer, times, audience) is checked here, against a `now` the caller
//! gives, so that messages are precise and tests need no clock.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use x509_cert::der::Decode as _;
use x509_cert::spki::SubjectPublicKeyInfoRef;

use crate::clock::Civil;

/// The WLCG profile's audience meaning "any service".
pub const WLCG_ANY_AUDIENCE: &str = "https://wlcg.cern.ch/jwt/v1/any";

/// Seconds of clock skew tolerated between an issuer and this node.
pub const CLOCK_SKEW_LEEWAY: u64 = 60;

/// What [`TokenError::UnsupportedAlgorithm`] offers instead.
const ACCEPTED_ALGORITHMS: &str = "RS256, RS384, RS512, ES256, ES384";

/// The RSA moduli aws-lc verifies PKCS#1 v1.5 signatures with; a key
/// outside them would load and then never verify anything.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// JWKS members are base64url; some publishers pad them.
const B64URL_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One trusted token issuer (an entry of `serve: tokens: issuers:` in
/// config.yaml).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenIssuer {
    /// The `iss` claim, compared exactly (e.g. `https://wlcg.example/`).
    pub issuer: String,
    /// The issuer's public keys: a JWKS file (`{"keys": [...]}`) or a PEM
    /// file of one or more `PUBLIC KEY` blocks.
    pub keys: PathBuf,
}

/// Who a verified token says its bearer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    pub issuer: String,
    pub subject: String,
    /// The `exp` claim, Unix seconds.
    pub expires: u64,
    /// The space-separated `scope` claim (empty when absent).
    pub scopes: Vec<String>,
}

/// Why a token (or an issuer's key file) was refused. Messages never
/// include the token: it is a credential, and they end up in logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("cannot load the token keys of issuer {issuer} from {}: {reason}", .file.display())]
    KeyFile {
        issuer: String,
        file: PathBuf,
        reason: String,
    },
    #[error("not a JWT: {0}")]
    NotJwt(String),
    #[error("token uses algorithm {0}, which this service never accepts")]
    ForbiddenAlgorithm(String),
    #[error(
        "token uses algorithm {0}, which this service does not accept (only {ACCEPTED_ALGORITHMS})"
    )]
    UnsupportedAlgorithm(String),
    #[error("token header lists critical extensions (crit), which this service does not implement")]
    CriticalHeader,
    #[error("token issuer {0} is not configured")]
    UnknownIssuer(String),
    #[error("token signature does not verify with the keys of issuer {issuer}{detail}")]
    BadSignature { issuer: String, detail: String },
    #[error("token has no {0} claim")]
    MissingClaim(&'static str),
    #[error("token claim {claim} is not {expected}")]
    BadClaim {
        claim: &'static str,
        expected: &'static str,
    },
    #[error("token expired at {}", utc(*.0))]
    Expired(u64),
    #[error("token not valid before {}", utc(*.0))]
    NotYetValid(u64),
    #[error("token issued in the future, at {}", utc(*.0))]
    IssuedInFuture(u64),
    #[error("token audience {token:?} is not one of this service's {accepted:?}")]
    WrongAudience {
        token: Vec<String>,
        accepted: Vec<String>,
    },
}

/// Unix seconds as `2026-12-01 10:00:00 UTC`.
fn utc(t: u64) -> String {
    let c = Civil::of(i64::try_from(t).unwrap_or(i64::MAX));
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// A value from an unverified token, fit for a message: control
/// characters escaped, length bounded.
fn shown(s: &str) -> String {
    const MAX: usize = 100;
    let mut out: String = s.chars().take(MAX).flat_map(char::escape_debug).collect();
    if s.chars().count() > MAX {
        out.push('…');
    }
    out
}

/// The kind of key an algorithm verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
}

impl KeyKind {
    fn of(alg: Algorithm) -> Option<KeyKind> {
        match alg {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => Some(KeyKind::Rsa),
            Algorithm::ES256 => Some(KeyKind::P256),
            Algorithm::ES384 => Some(KeyKind::P384),
            _ => None,
        }
    }
}

/// The header's `alg`, if this service accepts it.
fn accepted_algorithm(alg: &str) -> Result<Algorithm, TokenError> {
    match alg {
        "RS256" => Ok(Algorithm::RS256),
        "RS384" => Ok(Algorithm::RS384),
        "RS512" => Ok(Algorithm::RS512),
        "ES256" => Ok(Algorithm::ES256),
        "ES384" => Ok(Algorithm::ES384),
        // `none` is no signature at all. An HMAC signature verifies with
        // the very secret that makes it: configured here it would be the
        // issuer's signing key, and anyone who can read it could mint
        // tokens. (It also lets a public key be misused as an HMAC
        // secret.) So neither is ever accepted, whatever the keys.
        "none" | "HS256" | "HS384" | "HS512" => Err(TokenError::ForbiddenAlgorithm(alg.into())),
        _ => Err(TokenError::UnsupportedAlgorithm(shown(alg))),
    }
}

/// One public key of an issuer.
#[derive(Debug)]
struct Key {
    kid: Option<String>,
    kind: KeyKind,
    /// The JWK's `alg`, when it pins the key to one algorithm.
    alg: Option<Algorithm>,
    decoding: DecodingKey,
}

impl Key {
    fn fits(&self, alg: Algorithm) -> bool {
        KeyKind::of(alg) == Some(self.kind) && self.alg.is_none_or(|a| a == alg)
    }
}

#[derive(Debug)]
struct IssuerKeys {
    issuer: String,
    keys: Vec<Key>,
}

/// The trusted issuers and their keys, loaded once, and this service's
/// audiences.
#[derive(Debug)]
pub struct TokenVerifier {
    issuers: Vec<IssuerKeys>,
    audiences: Vec<String>,
}

impl TokenVerifier {
    /// Loads every issuer's key file now, so that a broken one stops the
    /// service at start rather than refusing every token later.
    pub fn new(issuers: &[TokenIssuer], audiences: &[String]) -> Result<TokenVerifier, TokenError> {
        let mut loaded: Vec<IssuerKeys> = Vec::new();
        for cfg in issuers {
            let keys = load_keys(&cfg.keys).map_err(|reason| TokenError::KeyFile {
                issuer: cfg.issuer.clone(),
                file: cfg.keys.clone(),
                reason,
            })?;
            // Two entries for one issuer add up (old and new keys during a
            // rotation, in separate files).
            match loaded.iter_mut().find(|i| i.issuer == cfg.issuer) {
                Some(known) => known.keys.extend(keys),
                None => loaded.push(IssuerKeys {
                    issuer: cfg.issuer.clone(),
                    keys,
                }),
            }
        }
        Ok(TokenVerifier {
            issuers: loaded,
            audiences: audiences.to_vec(),
        })
    }

    /// Verifies a bearer token (without `Bearer `) at `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<TokenIdentity, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::NotJwt(
                "not three dot-separated parts (header.claims.signature)".into(),
            ));
        };
        let header = json_part(header, "header")?;
        let alg = match header.get("alg") {
            Some(Value::String(alg)) => accepted_algorithm(alg)?,
            _ => return Err(TokenError::NotJwt("the header has no alg".into())),
        };
        // RFC 7515: an extension the verifier does not understand must fail.
        if header.contains_key("crit") {
            return Err(TokenError::CriticalHeader);
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => {
                return Err(TokenError::NotJwt(
                    "the header's kid is not a string".into(),
                ));
            }
        };

        // The issuer is read before the signature is checked, only to know
        // whose keys check it.
        let unverified = json_part(payload, "claims")?;
        let iss = string_claim(&unverified, "iss")?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or_else(|| TokenError::UnknownIssuer(shown(iss)))?;
        let claims = issuer.verify_signature(token, alg, kid)?;

        // Times are checked here, at the caller's `now`.
        let expires = time_claim(&claims, "exp")?.ok_or(TokenError::MissingClaim("exp"))?;
        if expires.saturating_add(CLOCK_SKEW_LEEWAY) <= now {
            return Err(TokenError::Expired(expires));
        }
        let skewed_now = now.saturating_add(CLOCK_SKEW_LEEWAY);
        if let Some(nbf) = time_claim(&claims, "nbf")?
            && nbf > skewed_now
        {
            return Err(TokenError::NotYetValid(nbf));
        }
        if let Some(iat) = time_claim(&claims, "iat")?
            && iat > skewed_now
        {
            return Err(TokenError::IssuedInFuture(iat));
        }

        let subject = string_claim(&claims, "sub")?;
        if subject.is_empty() {
            return Err(TokenError::BadClaim {
                claim: "sub",
                expected: "a non-empty string",
            });
        }

        let audience = audience_claim(&claims)?;
        let accepted = |a: &String| a == WLCG_ANY_AUDIENCE || self.audiences.contains(a);
        if !audience.iter().any(accepted) {
            return Err(TokenError::WrongAudience {
                // Debug formatting escapes them; only the length needs a bound.
                token: audience
                    .iter()
                    .map(|a| a.chars().take(100).collect())
                    .collect(),
                accepted: self.audiences.clone(),
            });
        }

        let scopes = match claims.get("scope") {
            None => Vec::new(),
            Some(Value::String(s)) => s.split_whitespace().map(String::from).collect(),
            Some(_) => {
                return Err(TokenError::BadClaim {
                    claim: "scope",
                    expected: "a space-separated string",
                });
            }
        };

        Ok(TokenIdentity {
            issuer: issuer.issuer.clone(),
            subject: subject.to_owned(),
            expires,
            scopes,
        })
    }
}

impl IssuerKeys {
    /// The token's claims, once one of this issuer's keys verifies its
    /// signature: the key named by the header's `kid` if there is one,
    /// else each key that fits the algorithm.
    fn verify_signature(
        &self,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Map<String, Value>, TokenError> {
        let bad = |detail: String| TokenError::BadSignature {
            issuer: self.issuer.clone(),
            detail,
        };
        let named: Vec<&Key> = match kid {
            Some(kid) => self
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect(),
            None => Vec::new(),
        };
        let candidates: Vec<&Key> = if named.is_empty() {
            self.keys.iter().filter(|k| k.fits(alg)).collect()
        } else {
            named.into_iter().filter(|k| k.fits(alg)).collect()
        };
        if candidates.is_empty() {
            return Err(bad(match kid {
                Some(kid) if self.keys.iter().any(|k| k.kid.as_deref() == Some(kid)) => {
                    format!(": its key \"{}\" is not for {alg:?}", shown(kid))
                }
                _ => format!(": it has no key for {alg:?}"),
            }));
        }

        // jsonwebtoken checks the signature only: time claims are checked
        // by the caller at its `now`, the audience and issuer here.
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;

        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => match e.kind() {
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidKeyFormat => continue,
                    ErrorKind::Base64(_) => {
                        return Err(TokenError::NotJwt("the signature is not base64url".into()));
                    }
                    // Its own words: they describe, never quote, the token.
                    _ => return Err(TokenError::NotJwt(e.to_string())),
                },
            }
        }
        Err(bad(String::new()))
    }
}

/// A base64url JSON object part of the token.
fn json_part(part: &str, what: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::NotJwt(format!("the {what} is not base64url")))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| TokenError::NotJwt(format!("the {what} is not a JSON object")))
}

fn string_claim<'a>(
    claims: &'a Map<String, Value>,
    claim: &'static str,
) -> Result<&'a str, TokenError> {
    match claims.get(claim) {
        None => Err(TokenError::MissingClaim(claim)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(TokenError::BadClaim {
            claim,
            expected: "a string",
        }),
    }
}

/// A NumericDate claim (RFC 7519: seconds, possibly fractional), if present.
fn time_claim(claims: &Map<String, Value>, claim: &'static str) -> Result<Option<u64>, TokenError> {
    let Some(value) = claims.get(claim) else {
        return Ok(None);
    };
    let seconds = value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            // Saturating float-to-int: far future stays far future.
            .map(|f| f as u64)
    });
    seconds.map(Some).ok_or(TokenError::BadClaim {
        claim,
        expected: "a time in Unix seconds",
    })
}

/// `aud`: one string or an array of them.
fn audience_claim(claims: &Map<String, Value>) -> Result<Vec<String>, TokenError> {
    let bad = TokenError::BadClaim {
        claim: "aud",
        expected: "a string or an array of strings",
    };
    match claims.get("aud") {
        None => Err(TokenError::MissingClaim("aud")),
        Some(Value::String(a)) => Ok(vec![a.clone()]),
        Some(Value::Array(all)) => all
            .iter()
            .map(|a| a.as_str().map(String::from).ok_or(bad.clone()))
            .collect(),
        Some(_) => Err(bad),
    }
}

/// An issuer's key file, JWKS or PEM; at least one key must be usable.
fn load_keys(path: &Path) -> Result<Vec<Key>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let (keys, skipped) = if text.trim_start().starts_with('{') {
        jwks_keys(&text)?
    } else if text.contains("-----BEGIN ") {
        (pem_keys(&text)?, Vec::new())
    } else {
        return Err("neither a JWKS (JSON) nor a PEM file".into());
    };
    if keys.is_empty() {
        return Err(if skipped.is_empty() {
            "no keys".into()
        } else {
            format!("no usable key ({})", skipped.join("; "))
        });
    }
    Ok(keys)
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Value>,
}

/// The members of a JWK this service reads.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// A JWKS's usable keys, and why the others were skipped. A JWKS often
/// lists keys for other uses; only a malformed key of a kind this
/// service uses is an error.
fn jwks_keys(text: &str) -> Result<(Vec<Key>, Vec<String>), String> {
    let jwks: Jwks =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS ({{\"keys\": [...]}}): {e}"))?;
    let (mut keys, mut skipped) = (Vec::new(), Vec::new());
    for (i, value) in jwks.keys.into_iter().enumerate() {
        let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("key {}: {e}", i + 1))?;
        let name = match &jwk.kid {
            Some(kid) => format!("key {kid:?}"),
            None => format!("key {}", i + 1),
        };
        match jwk_key(jwk) {
            Ok(Ok(key)) => keys.push(key),
            Ok(Err(why)) => skipped.push(format!("{name}: {why}")),
            Err(e) => return Err(format!("{name}: {e}")),
        }
    }
    Ok((keys, skipped))
}

/// One JWK: `Ok(Ok(key))` to use, `Ok(Err(why))` to skip, `Err` if broken.
fn jwk_key(jwk: Jwk) -> Result<Result<Key, String>, String> {
    if let Some(usage) = jwk.usage.as_deref()
        && usage != "sig"
    {
        return Ok(Err(format!("for use {usage:?}, not signatures")));
    }
    let alg = match jwk.alg.as_deref() {
        None => None,
        Some(a) => match accepted_algorithm(a) {
            Ok(alg) => Some(alg),
            Err(_) => return Ok(Err(format!("for algorithm {a}, not accepted here"))),
        },
    };
    let member = |value: &Option<String>, name: &str| -> Result<Vec<u8>, String> {
        let value = value.as_deref().ok_or(format!("no {name}"))?;
        B64URL_ANY_PADDING
            .decode(value)
            .map_err(|_| format!("{name} is not base64url"))
    };
    let (kind, decoding) = match jwk.kty.as_str() {
        "RSA" => {
            let (n, e) = (member(&jwk.n, "n")?, member(&jwk.e, "e")?);
            let n = n.strip_prefix(&[0u8][..]).unwrap_or(&n);
            let bits = match n.first() {
                Some(top) => n.len() * 8 - top.leading_zeros() as usize,
                None => 0,
            };
            check_rsa_bits(bits)?;
            if e.iter().all(|b| *b == 0) {
                return Err("e is zero".into());
            }
            (KeyKind::Rsa, DecodingKey::from_rsa_raw_components(n, &e))
        }
        "EC" => {
            let kind = match jwk.crv.as_deref() {
                Some("P-256") => KeyKind::P256,
                Some("P-384") => KeyKind::P384,
                Some(other) => return Ok(Err(format!("curve {other}, not P-256 or P-384"))),
                None => return Err("an EC key without crv".into()),
            };
            let size = if kind == KeyKind::P256 { 32 } else { 48 };
            let (x, y) = (member(&jwk.x, "x")?, member(&jwk.y, "y")?);
            if x.len() != size || y.len() != size {
                return Err(format!("x and y are not {size} bytes each"));
            }
            // The uncompressed point, as in a SubjectPublicKeyInfo.
            let point = [&[4u8][..], &x, &y].concat();
            ec_key(kind, &point)?
        }
        // A symmetric key would be the issuer's signing secret (see
        // `accepted_algorithm`): never used, even if published.
        "oct" => return Ok(Err("a symmetric (HMAC) key, never accepted".into())),
        other => return Ok(Err(format!("key type {other}, not RSA or EC"))),
    };
    if let Some(alg) = alg
        && KeyKind::of(alg) != Some(kind)
    {
        return Err(format!(
            "alg {alg:?} does not fit a key of type {}",
            jwk.kty
        ));
    }
    Ok(Ok(Key {
        kid: jwk.kid,
        kind,
        alg,
        decoding,
    }))
}

fn check_rsa_bits(bits: usize) -> Result<(), String> {
    if RSA_BITS.contains(&bits) {
        Ok(())
    } else {
        Err(format!(
            "an RSA key of {bits} bits ({} to {} needed)",
            RSA_BITS.start(),
            RSA_BITS.end()
        ))
    }
}

/// An EC point (SEC1), checked to lie on its curve now rather than fail
/// every verification later.
fn ec_key(kind: KeyKind, point: &[u8]) -> Result<(KeyKind, DecodingKey), String> {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ParsedPublicKey};
    let algorithm = if kind == KeyKind::P256 {
        &ECDSA_P256_SHA256_FIXED
    } else {
        &ECDSA_P384_SHA384_FIXED
    };
    ParsedPublicKey::new(algorithm, point)
        .map_err(|e| format!("not a valid EC public key ({e})"))?;
    Ok((kind, DecodingKey::from_ec_der(point)))
}

/// An RSAPublicKey (PKCS#1 DER).
fn rsa_key(pkcs1: &[u8]) -> Result<(KeyKind, DecodingKey), String> {
    let bits = aws_lc_rs::signature::RsaParameters::public_modulus_len(pkcs1)
        .map_err(|_| "not a valid RSA public key".to_string())?;
    check_rsa_bits(usize::try_from(bits).unwrap_or(usize::MAX))?;
    Ok((KeyKind::Rsa, DecodingKey::from_rsa_der(pkcs1)))
}

/// Every block of a PEM file must be a public key.
fn pem_keys(text: &str) -> Result<Vec<Key>, String> {
    let mut keys = Vec::new();
    for (i, (label, der)) in pem_blocks(text)?.into_iter().enumerate() {
        let key = match label.as_str() {
            "PUBLIC KEY" => spki_key(&der),
            "RSA PUBLIC KEY" => rsa_key(&der),
            "CERTIFICATE" => {
                Err("a certificate; give its public key (openssl x509 -pubkey -noout)".into())
            }
            l if l.contains("PRIVATE KEY") => {
                Err("a private key; give only the public key (openssl pkey -pubout)".into())
            }
            _ => Err("not a public key".into()),
        };
        let (kind, decoding) = key.map_err(|e| format!("PEM block {} ({label}): {e}", i + 1))?;
        keys.push(Key {
            kid: None,
            kind,
            alg: None,
            decoding,
        });
    }
    Ok(keys)
}

/// A SubjectPublicKeyInfo: RSA, or EC on P-256 or P-384.
fn spki_key(der: &[u8]) -> Result<(KeyKind, DecodingKey), String> {
    let spki = SubjectPublicKeyInfoRef::from_der(der)
        .map_err(|e| format!("not a SubjectPublicKeyInfo ({e})"))?;
    let (algorithm, parameters) = spki
        .algorithm
        .oids()
        .map_err(|e| format!("unreadable key algorithm ({e})"))?;
    let key = spki
        .subject_public_key
        .as_bytes()
        .ok_or("the key is not a whole number of bytes")?;
    match algorithm.to_string().as_str() {
        "1.2.840.113549.1.1.1" => rsa_key(key),
        "1.2.840.10045.2.1" => {
            let kind = match parameters.map(|p| p.to_string()).as_deref() {
                Some("1.2.840.10045.3.1.7") => KeyKind::P256,
                Some("1.3.132.0.34") => KeyKind::P384,
                Some(other) => {
                    return Err(format!("an EC key on curve {other}, not P-256 or P-384"));
                }
                None => return Err("an EC key without a named curve".into()),
            };
            ec_key(kind, key)
        }
        other => Err(format!("a key of algorithm {other}, not RSA or EC")),
    }
}

/// The (label, DER) blocks of a PEM file; text outside blocks is ignored.
fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let armor = |line: &str, word: &str| -> Option<String> {
        let label = line
            .strip_prefix("-----")?
            .strip_prefix(word)?
            .strip_prefix(' ')?;
        label.strip_suffix("-----").map(String::from)
    };
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in text.lines().map(str::trim) {
        if let Some(label) = armor(line, "BEGIN") {
            if let Some((unclosed, _)) = &open {
                return Err(format!("the {unclosed} block has no END line"));
            }
            open = Some((label, String::new()));
        } else if let Some(label) = armor(line, "END") {
            let Some((begun, body)) = open.take() else {
                return Err(format!("END {label} without BEGIN"));
            };
            if begun != label {
                return Err(format!("the {begun} block ends with END {label}"));
            }
            let der = STANDARD
                .decode(&body)
                .map_err(|_| format!("the {begun} block is not base64"))?;
            blocks.push((begun, der));
        } else if let Some((_, body)) = &mut open {
            // RFC 1421 headers (`Proc-Type: ...`) come only with encrypted
            // private keys, which are refused anyway.
            if !line.contains(':') {
                body.push_str(line);
            }
        }
    }
    if let Some((unclosed, _)) = open {
        return Err(format!("the {unclosed} block has no END line"));
    }
    if blocks.is_empty() {
        return Err("no PEM block".into());
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use std::process::Command;
    use std::sync::OnceLock;

    const ISS: &str = "https://wlcg.example/";
    const AUD: &str = "https://dev.example:8443";
    /// 2027-01-15 08:00:00 UTC.
    const NOW: u64 = 1_800_000_000;

    /// Keys made once by the openssl CLI, kept in memory.
    struct Keys {
        /// PKCS#1 DER, what `EncodingKey::from_rsa_der` signs with.
        rsa_private: Vec<u8>,
        rsa_public_pem: String,
        rsa_n: String,
        rsa_e: String,
        /// PKCS#8 DER, what `EncodingKey::from_ec_der` signs with.
        ec_private: Vec<u8>,
        ec_public_pem: String,
        ec_x: String,
        ec_y: String,
        /// A key no issuer has.
        stranger_private: Vec<u8>,
    }

    fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl CLI runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn unhex(hex: &str) -> Vec<u8> {
        let digits: Vec<u8> = hex.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn b64url(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn keys() -> &'static Keys {
        static KEYS: OnceLock<Keys> = OnceLock::new();
        KEYS.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            let rsa = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
            openssl(d, &[&["genpkey"][..], &rsa, &["-out", "rsa.pem"]].concat());
            openssl(
                d,
                &[&["genpkey"][..], &rsa, &["-out", "stranger.pem"]].concat(),
            );
            let ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
            openssl(d, &[&["genpkey"][..], &ec, &["-out", "ec.pem"]].concat());
            openssl(d, &["pkey", "-in", "rsa.pem", "-pubout", "-out", "rsa.pub"]);
            openssl(d, &["pkey", "-in", "ec.pem", "-pubout", "-out", "ec.pub"]);
            let pkcs1 =
                |file: &str| openssl(d, &["rsa", "-in", file, "-traditional", "-outform", "DER"]);

            // n from `-modulus`, e from the text dump (`Exponent: 65537 (0x10001)`).
            let modulus = String::from_utf8(openssl(
                d,
                &["rsa", "-pubin", "-in", "rsa.pub", "-modulus", "-noout"],
            ))
            .unwrap();
            let n = unhex(modulus.trim().strip_prefix("Modulus=").unwrap());
            let text = String::from_utf8(openssl(
                d,
                &["rsa", "-pubin", "-in", "rsa.pub", "-text", "-noout"],
            ))
            .unwrap();
            let e: u64 = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("Exponent: "))
                .and_then(|l| l.split_whitespace().next())
                .unwrap()
                .parse()
                .unwrap();
            let e_bytes: Vec<u8> = e
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();

            // The point from `pub:` in the text dump: 04 || x || y.
            let text = String::from_utf8(openssl(
                d,
                &["ec", "-pubin", "-in", "ec.pub", "-text", "-noout"],
            ))
            .unwrap();
            let hex: String = text
                .lines()
                .skip_while(|l| !l.starts_with("pub:"))
                .skip(1)
                .take_while(|l| l.starts_with(' '))
                .collect();
            let point = unhex(&hex);
            assert_eq!(
                (point.len(), point[0]),
                (65, 4),
                "an uncompressed P-256 point"
            );

            let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
            Keys {
                rsa_private: pkcs1("rsa.pem"),
                rsa_public_pem: read("rsa.pub"),
                rsa_n: b64url(&n),
                rsa_e: b64url(&e_bytes),
                ec_private: openssl(
                    d,
                    &[
                        "pkcs8", "-topk8", "-nocrypt", "-in", "ec.pem", "-outform", "DER",
                    ],
                ),
                ec_public_pem: read("ec.pub"),
                ec_x: b64url(&point[1..33]),
                ec_y: b64url(&point[33..]),
                stranger_private: pkcs1("stranger.pem"),
            }
        })
    }

    fn rsa_signer() -> EncodingKey {
        EncodingKey::from_rsa_der(&keys().rsa_private)
    }

    fn ec_signer() -> EncodingKey {
        EncodingKey::from_ec_der(&keys().ec_private)
    }

    fn claims() -> Value {
        json!({
            "iss": ISS,
            "sub": "e2c1b7d4-alice",
            "aud": AUD,
            "exp": NOW + 3600,
            "nbf": NOW - 10,
            "iat": NOW - 10,
            "scope": "compute.read compute.create storage.read:/home",
            "wlcg.ver": "1.0",
        })
    }

    fn with(mut claims: Value, name: &str, value: Value) -> Value {
        claims[name] = value;
        claims
    }

    fn without(mut claims: Value, name: &str) -> Value {
        claims.as_object_mut().unwrap().remove(name);
        claims
    }

    fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(String::from);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn rs256(claims: &Value) -> String {
        sign(Algorithm::RS256, None, claims, &rsa_signer())
    }

    /// A token with any header, signed by `signer` (or unsigned).
    fn raw_token(
        header: Value,
        claims: &Value,
        signer: Option<(Algorithm, &EncodingKey)>,
    ) -> String {
        let message = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let signature = match signer {
            Some((alg, key)) => jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap(),
            None => String::new(),
        };
        format!("{message}.{signature}")
    }

    /// A verifier over key files written to a scratch directory (gone once
    /// loaded: keys are read at start).
    fn verifier_with(files: &[(&str, &str)]) -> Result<TokenVerifier, TokenError> {
        let dir = tempfile::tempdir().unwrap();
        let issuers: Vec<TokenIssuer> = files
            .iter()
            .enumerate()
            .map(|(i, (issuer, content))| {
                let keys = dir.path().join(format!("keys-{i}"));
                std::fs::write(&keys, content).unwrap();
                TokenIssuer {
                    issuer: issuer.to_string(),
                    keys,
                }
            })
            .collect();
        TokenVerifier::new(&issuers, &[AUD.to_string()])
    }

    /// The issuer's RSA and EC keys in one PEM file.
    fn pem_verifier() -> TokenVerifier {
        let pem = format!("{}{}", keys().rsa_public_pem, keys().ec_public_pem);
        verifier_with(&[(ISS, &pem)]).unwrap()
    }

    fn jwks() -> Value {
        let k = keys();
        json!({"keys": [
            {"kty": "RSA", "kid": "rsa1", "use": "sig", "alg": "RS256", "n": k.rsa_n, "e": k.rsa_e},
            {"kty": "EC", "kid": "ec1", "crv": "P-256", "x": k.ec_x, "y": k.ec_y},
            {"kty": "RSA", "kid": "enc1", "use": "enc", "n": k.rsa_n, "e": k.rsa_e},
            {"kty": "OKP", "kid": "ed1", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        ]})
    }

    fn jwks_verifier() -> TokenVerifier {
        verifier_with(&[(ISS, &jwks().to_string())]).unwrap()
    }

    /// The refusal's message, which must not quote the token.
    fn refused(verifier: &TokenVerifier, token: &str) -> String {
        let err = verifier.verify(token, NOW).expect_err("token refused");
        let message = err.to_string();
        assert!(token.is_empty() || !message.contains(token), "{message}");
        for part in token.split('.').filter(|p| p.len() > 16) {
            assert!(!message.contains(part), "{message} quotes the token");
        }
        message
    }

    #[test]
    fn valid_rs256_with_a_pem_key() {
        let id = pem_verifier().verify(&rs256(&claims()), NOW).unwrap();
        assert_eq!(
            id,
            TokenIdentity {
                issuer: ISS.into(),
                subject: "e2c1b7d4-alice".into(),
                expires: NOW + 3600,
                scopes: vec![
                    "compute.read".into(),
                    "compute.create".into(),
                    "storage.read:/home".into()
                ],
            }
        );
    }

    #[test]
    fn valid_es256_with_a_pem_key() {
        let token = sign(
            Algorithm::ES256,
            None,
            &without(claims(), "scope"),
            &ec_signer(),
        );
        let id = pem_verifier().verify(&token, NOW).unwrap();
        assert_eq!(
            (id.issuer.as_str(), id.subject.as_str()),
            (ISS, "e2c1b7d4-alice")
        );
        assert!(id.scopes.is_empty());
    }

    #[test]
    fn jwks_keys_by_kid_and_without() {
        let v = jwks_verifier();
        for token in [
            sign(Algorithm::RS256, Some("rsa1"), &claims(), &rsa_signer()),
            sign(Algorithm::ES256, Some("ec1"), &claims(), &ec_signer()),
            // No kid, or one the JWKS lacks: every key that fits is tried.
            rs256(&claims()),
            sign(
                Algorithm::ES256,
                Some("rotated-away"),
                &claims(),
                &ec_signer(),
            ),
        ] {
            assert_eq!(v.verify(&token, NOW).unwrap().subject, "e2c1b7d4-alice");
        }
    }

    #[test]
    fn jwks_key_pins_its_kid_and_alg() {
        let v = jwks_verifier();
        // The kid names the RSA key; an ES256 signature cannot be its.
        let token = sign(Algorithm::ES256, Some("rsa1"), &claims(), &ec_signer());
        assert_eq!(
            refused(&v, &token),
            "token signature does not verify with the keys of issuer https://wlcg.example/: \
             its key \"rsa1\" is not for ES256"
        );
        // The JWK says RS256 only.
        let token = sign(Algorithm::RS512, Some("rsa1"), &claims(), &rsa_signer());
        assert!(refused(&v, &token).contains("its key \"rsa1\" is not for RS512"));
        // Keys for encryption are never used to verify.
        let token = sign(Algorithm::RS384, Some("enc1"), &claims(), &rsa_signer());
        assert_eq!(
            refused(&v, &token),
            "token signature does not verify with the keys of issuer https://wlcg.example/: \
             it has no key for RS384"
        );
    }

    #[test]
    fn rsa_pem_key_verifies_every_rsa_algorithm() {
        let v = pem_verifier();
        for alg in [Algorithm::RS384, Algorithm::RS512] {
            let token = sign(alg, None, &claims(), &rsa_signer());
            assert!(v.verify(&token, NOW).is_ok(), "{alg:?}");
        }
    }

    #[test]
    fn wrong_audience() {
        let token = rs256(&with(claims(), "aud", json!("https://other.example")));
        assert_eq!(
            refused(&pem_verifier(), &token),
            "token audience [\"https://other.example\"] is not one of this service's \
             [\"https://dev.example:8443\"]"
        );
        let token = rs256(&with(claims(), "aud", json!([])));
        assert!(refused(&pem_verifier(), &token).starts_with("token audience [] is not"));
    }

    #[test]
    fn audience_array_with_ours() {
        let token = rs256(&with(
            claims(),
            "aud",
            json!(["https://other.example", AUD]),
        ));
        assert!(pem_verifier().verify(&token, NOW).is_ok());
    }

    #[test]
    fn wlcg_any_audience() {
        let token = rs256(&with(claims(), "aud", json!(WLCG_ANY_AUDIENCE)));
        assert!(pem_verifier().verify(&token, NOW).is_ok());
        let token = rs256(&with(claims(), "aud", json!(["x", WLCG_ANY_AUDIENCE])));
        assert!(pem_verifier().verify(&token, NOW).is_ok());
    }

    #[test]
    fn bad_audience_claim() {
        let token = rs256(&without(claims(), "aud"));
        assert_eq!(refused(&pem_verifier(), &token), "token has no aud claim");
        let token = rs256(&with(claims(), "aud", json!([AUD, 7])));
        assert_eq!(
            refused(&pem_verifier(), &token),
            "token claim aud is not a string or an array of strings"
        );
    }

    #[test]
    fn expired() {
        let v = pem_verifier();
        let token = rs256(&with(claims(), "exp", json!(NOW - 120)));
        assert_eq!(
            refused(&v, &token),
            "token expired at 2027-01-15 07:58:00 UTC"
        );
        // Within the clock skew leeway: still good.
        let token = rs256(&with(claims(), "exp", json!(NOW - 30)));
        assert!(v.verify(&token, NOW).is_ok());
        let token = rs256(&with(claims(), "exp", json!(NOW - CLOCK_SKEW_LEEWAY)));
        assert!(v.verify(&token, NOW).is_err());
        // The caller's clock, not the system's, decides.
        let token = rs256(&claims());
        assert!(v.verify(&token, NOW + 3600 + CLOCK_SKEW_LEEWAY).is_err());
    }

    #[test]
    fn not_yet_valid() {
        let v = pem_verifier();
        let token = rs256(&with(claims(), "nbf", json!(NOW + 600)));
        assert_eq!(
            refused(&v, &token),
            "token not valid before 2027-01-15 08:10:00 UTC"
        );
        let token = rs256(&with(claims(), "nbf", json!(NOW + 30)));
        assert!(v.verify(&token, NOW).is_ok());
        let token = rs256(&with(claims(), "iat", json!(NOW + 600)));
        assert_eq!(
            refused(&v, &token),
            "token issued in the future, at 2027-01-15 08:10:00 UTC"
        );
        // NumericDate may be fractional.
        let token = rs256(&with(claims(), "nbf", json!(NOW as f64 + 0.5)));
        assert!(v.verify(&token, NOW).is_ok());
    }

    #[test]
    fn bad_time_claims() {
        let v = pem_verifier();
        let token = rs256(&without(claims(), "exp"));
        assert_eq!(refused(&v, &token), "token has no exp claim");
        let token = rs256(&with(claims(), "exp", json!("tomorrow")));
        assert_eq!(
            refused(&v, &token),
            "token claim exp is not a time in Unix seconds"
        );
        let token = rs256(&with(claims(), "nbf", json!(-5)));
        assert_eq!(
            refused(&v, &token),
            "token claim nbf is not a time in Unix seconds"
        );
    }

    #[test]
    fn badly_signed() {
        let stranger = EncodingKey::from_rsa_der(&keys().stranger_private);
        let token = sign(Algorithm::RS256, None, &claims(), &stranger);
        let message =
            "token signature does not verify with the keys of issuer https://wlcg.example/";
        assert_eq!(refused(&pem_verifier(), &token), message);
        let token = sign(Algorithm::RS256, Some("rsa1"), &claims(), &stranger);
        assert_eq!(refused(&jwks_verifier(), &token), message);

        // Claims changed after signing.
        let good = rs256(&claims());
        let parts: Vec<&str> = good.split('.').collect();
        let forged = with(claims(), "sub", json!("root"));
        let token = format!(
            "{}.{}.{}",
            parts[0],
            b64url(forged.to_string().as_bytes()),
            parts[2]
        );
        assert_eq!(refused(&pem_verifier(), &token), message);

        // An ES256 token where the issuer has only RSA keys.
        let rsa_only = verifier_with(&[(ISS, &keys().rsa_public_pem)]).unwrap();
        let token = sign(Algorithm::ES256, None, &claims(), &ec_signer());
        assert_eq!(
            refused(&rsa_only, &token),
            format!("{message}: it has no key for ES256")
        );
    }

    #[test]
    fn unknown_issuer() {
        let token = rs256(&with(claims(), "iss", json!("https://evil.example/")));
        assert_eq!(
            refused(&pem_verifier(), &token),
            "token issuer https://evil.example/ is not configured"
        );
        let token = rs256(&without(claims(), "iss"));
        assert_eq!(refused(&pem_verifier(), &token), "token has no iss claim");
        // Shown escaped, so a log line stays one line.
        let token = rs256(&with(claims(), "iss", json!("a\nb")));
        assert_eq!(
            refused(&pem_verifier(), &token),
            "token issuer a\\nb is not configured"
        );
    }

    #[test]
    fn hmac_refused() {
        // The classic confusion: the issuer's public key used as an HMAC secret.
        let secret = EncodingKey::from_secret(keys().rsa_public_pem.as_bytes());
        for (alg, name) in [(Algorithm::HS256, "HS256"), (Algorithm::HS512, "HS512")] {
            let token = sign(alg, None, &claims(), &secret);
            assert_eq!(
                refused(&pem_verifier(), &token),
                format!("token uses algorithm {name}, which this service never accepts")
            );
        }
    }

    #[test]
    fn alg_none_refused() {
        let token = raw_token(json!({"alg": "none", "typ": "JWT"}), &claims(), None);
        assert_eq!(
            refused(&pem_verifier(), &token),
            "token uses algorithm none, which this service never accepts"
        );
    }

    #[test]
    fn other_algorithms_refused() {
        let token = sign(Algorithm::PS256, None, &claims(), &rsa_signer());
        assert_eq!(
            refused(&pem_verifier(), &token),
            "token uses algorithm PS256, which this service does not accept \
             (only RS256, RS384, RS512, ES256, ES384)"
        );
        let token = raw_token(json!({"typ": "JWT"}), &claims(), None);
        assert_eq!(
            refused(&pem_verifier(), &token),
            "not a JWT: the header has no alg"
        );
    }

    #[test]
    fn critical_header_refused() {
        let header = json!({"alg": "RS256", "crit": ["exp"], "exp": 1});
        let token = raw_token(header, &claims(), Some((Algorithm::RS256, &rsa_signer())));
        assert_eq!(
            refused(&pem_verifier(), &token),
            "token header lists critical extensions (crit), which this service does not implement"
        );
        // The same by hand, without crit: good, so the signing above is right.
        let token = raw_token(
            json!({"alg": "RS256"}),
            &claims(),
            Some((Algorithm::RS256, &rsa_signer())),
        );
        assert!(pem_verifier().verify(&token, NOW).is_ok());
    }

    #[test]
    fn subject_required() {
        let v = pem_verifier();
        assert_eq!(
            refused(&v, &rs256(&without(claims(), "sub"))),
            "token has no sub claim"
        );
        assert_eq!(
            refused(&v, &rs256(&with(claims(), "sub", json!("")))),
            "token claim sub is not a non-empty string"
        );
        assert_eq!(
            refused(&v, &rs256(&with(claims(), "sub", json!(42)))),
            "token claim sub is not a string"
        );
    }

    #[test]
    fn scope_must_be_a_string() {
        let token = rs256(&with(claims(), "scope", json!(["compute.read"])));
        assert_eq!(
            refused(&pem_verifier(), &token),
            "token claim scope is not a space-separated string"
        );
    }

    #[test]
    fn garbage_tokens() {
        let v = pem_verifier();
        let good = rs256(&claims());
        let parts: Vec<&str> = good.split('.').collect();
        for (token, message) in [
            (
                "",
                "not a JWT: not three dot-separated parts (header.claims.signature)",
            ),
            (
                "garbage",
                "not a JWT: not three dot-separated parts (header.claims.signature)",
            ),
            (
                "a.b.c.d.e",
                "not a JWT: not three dot-separated parts (header.claims.signature)",
            ),
            ("!!!.b.c", "not a JWT: the header is not base64url"),
            ("e30.b.c", "not a JWT: the header has no alg"),
            (
                "bm90IGpzb24.b.c",
                "not a JWT: the header is not a JSON object",
            ),
        ] {
            assert_eq!(refused(&v, token), message, "{token:?}");
        }
        let token = format!("{}.%%%.{}", parts[0], parts[2]);
        assert_eq!(
            refused(&v, &token),
            "not a JWT: the claims is not base64url"
        );
        let token = format!("{}.{}.%%%", parts[0], parts[1]);
        assert_eq!(
            refused(&v, &token),
            "not a JWT: the signature is not base64url"
        );
        let token = format!("{}.{}.", parts[0], parts[1]);
        assert!(refused(&v, &token).starts_with("token signature does not verify"));
    }

    /// The refusal of a key file with this content.
    fn key_file_error(content: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wlcg-keys.txt");
        std::fs::write(&file, content).unwrap();
        let issuers = [TokenIssuer {
            issuer: ISS.into(),
            keys: file.clone(),
        }];
        let message = TokenVerifier::new(&issuers, &[]).unwrap_err().to_string();
        let prefix = format!(
            "cannot load the token keys of issuer https://wlcg.example/ from {}: ",
            file.display()
        );
        assert!(message.starts_with(&prefix), "{message}");
        message[prefix.len()..].to_string()
    }

    #[test]
    fn key_files_that_do_not_parse() {
        assert_eq!(
            key_file_error("hello"),
            "neither a JWKS (JSON) nor a PEM file"
        );
        assert_eq!(key_file_error(""), "neither a JWKS (JSON) nor a PEM file");
        assert!(key_file_error("{\"keys\": 3}").starts_with("not a JWKS ({\"keys\": [...]}): "));
        assert_eq!(key_file_error("{\"keys\": []}"), "no keys");
        assert_eq!(
            key_file_error(
                "-----BEGIN PUBLIC KEY-----\nnot base64 at all!\n-----END PUBLIC KEY-----\n"
            ),
            "the PUBLIC KEY block is not base64"
        );
        assert!(
            key_file_error("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
                .starts_with("PEM block 1 (PUBLIC KEY): not a SubjectPublicKeyInfo")
        );
        let truncated: String = keys()
            .rsa_public_pem
            .lines()
            .take(3)
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            key_file_error(&truncated),
            "the PUBLIC KEY block has no END line"
        );
        assert_eq!(
            key_file_error("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            "PEM block 1 (PRIVATE KEY): a private key; give only the public key (openssl pkey -pubout)"
        );
        // Only unusable keys: each one says why.
        let jwks = json!({"keys": [
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
        ]});
        assert_eq!(
            key_file_error(&jwks.to_string()),
            "no usable key (key \"h\": a symmetric (HMAC) key, never accepted; \
             key 2: curve P-521, not P-256 or P-384)"
        );
        // A broken key of a kind in use is an error, not a skip.
        let jwks = json!({"keys": [{"kty": "EC", "kid": "ec1", "crv": "P-256", "x": keys().ec_x, "y": "AAAA"}]});
        assert_eq!(
            key_file_error(&jwks.to_string()),
            "key \"ec1\": x and y are not 32 bytes each"
        );
        let jwks =
            json!({"keys": [{"kty": "EC", "crv": "P-256", "x": keys().ec_x, "y": keys().ec_x}]});
        assert!(key_file_error(&jwks.to_string()).starts_with("key 1: not a valid EC public key"));
        let jwks = json!({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]});
        assert_eq!(
            key_file_error(&jwks.to_string()),
            "key 1: an RSA key of 17 bits (2048 to 8192 needed)"
        );
        let jwks = json!({"keys": [{"kty": "RSA", "kid": "r", "alg": "ES256", "n": keys().rsa_n, "e": keys().rsa_e}]});
        assert_eq!(
            key_file_error(&jwks.to_string()),
            "key \"r\": alg ES256 does not fit a key of type RSA"
        );
    }

    #[test]
    fn missing_key_file() {
        let issuers = [TokenIssuer {
            issuer: ISS.into(),
            keys: "/nonexistent/wlcg.jwks".into(),
        }];
        let message = TokenVerifier::new(&issuers, &[]).unwrap_err().to_string();
        assert!(
            message.starts_with(
                "cannot load the token keys of issuer https://wlcg.example/ from /nonexistent/wlcg.jwks: "
            ),
            "{message}"
        );
    }

    #[test]
    fn issuers_and_their_keys() {
        let jwks_ec_only = json!({"keys": [jwks()["keys"][1].clone()]}).to_string();
        // Two entries for one issuer add up; another issuer's keys are its own.
        let v = verifier_with(&[
            (ISS, &keys().rsa_public_pem),
            (ISS, &jwks_ec_only),
            ("https://other.example/", &keys().ec_public_pem),
        ])
        .unwrap();
        assert!(v.verify(&rs256(&claims()), NOW).is_ok());
        let es256 = |iss: &str| {
            sign(
                Algorithm::ES256,
                None,
                &with(claims(), "iss", json!(iss)),
                &ec_signer(),
            )
        };
        assert!(v.verify(&es256(ISS), NOW).is_ok());
        let id = v.verify(&es256("https://other.example/"), NOW).unwrap();
        assert_eq!(id.issuer, "https://other.example/");
        let token = rs256(&with(claims(), "iss", json!("https://other.example/")));
        assert_eq!(
            refused(&v, &token),
            "token signature does not verify with the keys of issuer https://other.example/: \
             it has no key for RS256"
        );
    }

    #[test]
    fn config_entry() {
        let entry: TokenIssuer =
            serde_json::from_value(json!({"issuer": ISS, "keys": "/etc/gridship/wlcg.jwks"}))
                .unwrap();
        assert_eq!(entry.keys, PathBuf::from("/etc/gridship/wlcg.jwks"));
        let typo = serde_json::from_value::<TokenIssuer>(json!({"issuer": ISS, "key": "/x"}));
        assert!(typo.is_err());
    }

    #[test]
    fn times_in_utc() {
        assert_eq!(utc(NOW), "2027-01-15 08:00:00 UTC");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            TokenError::Expired(1_796_119_200).to_string(),
            "token expired at 2026-12-01 10:00:00 UTC"
        );
    }
}
