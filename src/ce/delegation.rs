//! Delegation: the CE makes a key and a certificate request, which the
//! client signs with the key of its own proxy as an RFC 3820 proxy
//! certificate. The DER is written and walked by hand: x509-cert refuses
//! ARC's not quite strict requests, and a proxy needs only a few fields.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use x509_cert::der::{Decode, Encode};

use crate::error::{Error, Result};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times() {
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc_time(t), tlv(0x17, b"000229000000Z"));
        let t = UNIX_EPOCH + Duration::from_secs(2_556_057_600); // 2050-12-31
        assert_eq!(utc_time(t)[0], 0x18);
    }
}
