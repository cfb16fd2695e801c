//! The content scan: one bounded pass over the bytes of every regular file,
//! before any rule decides, for what names alone cannot tell: private keys
//! and proxies whatever the file is called, bearer tokens, core dumps.
//!
//! Bounded: each file is read up to [`ScanOptions::limit`] bytes (a key or
//! a token is small; the rest of a big file is skipped in the stream).
//! Fast: layers are scanned in parallel, and PEM markers are found with a
//! vectorised substring search.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::Mutex;

use memchr::memmem;
use serde::Serialize;

use crate::Result;
use crate::image::Image;
use crate::index::{Data, FsIndex, Kind, NodeId};

/// What the bytes of a file are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Finding {
    /// A PEM private key block (`-----BEGIN <label>-----`), or a PuTTY key.
    PrivateKey { label: String },
    /// A certificate and a private key in one PEM file: an X.509 proxy, or
    /// a certificate with its key.
    X509Proxy,
    /// The whole file is a JWT (a WLCG/SciToken/OIDC bearer token).
    BearerToken,
    /// An ELF core dump.
    CoreDump,
}

impl Finding {
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::PrivateKey { .. } => "private key",
            Finding::X509Proxy => "X.509 proxy (certificate and private key)",
            Finding::BearerToken => "bearer token",
            Finding::CoreDump => "core dump",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Bytes read per file.
    pub limit: usize,
    pub threads: usize,
    /// Nodes whose first `limit` bytes are kept (entrypoint scripts).
    pub keep_content: HashSet<NodeId>,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            limit: 1 << 20,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            keep_content: HashSet::new(),
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct ScanStats {
    pub files: u64,
    pub bytes: u64,
    /// Files longer than the limit (read up to it).
    pub partial: u64,
    pub seconds: f64,
}

#[derive(Debug, Default)]
pub struct Scan {
    pub findings: HashMap<NodeId, Finding>,
    pub contents: HashMap<NodeId, Vec<u8>>,
    pub stats: ScanStats,
}

/// Scan every regular file of `index` (content from `image`).
pub fn scan(index: &FsIndex, image: &Image, opts: &ScanOptions) -> Result<Scan> {
    let started = std::time::Instant::now();
    let out = Mutex::new(Scan::default());
    let look = |id: NodeId, bytes: &[u8], size: u64| {
        let finding = classify(bytes);
        let mut s = out.lock().expect("scan lock");
        s.stats.files += 1;
        s.stats.bytes += bytes.len() as u64;
        if size > bytes.len() as u64 {
            s.stats.partial += 1;
        }
        if let Some(f) = finding {
            s.findings.insert(id, f);
        }
        if opts.keep_content.contains(&id) {
            s.contents.insert(id, bytes.to_vec());
        }
    };
    // Bytes added by transforms: in memory already.
    let mut layers: Vec<u32> = Vec::new();
    let mut seen = HashSet::new();
    for (_, id, node) in index.iter() {
        if let Kind::File { size, data } = &node.kind {
            if !seen.insert(id) {
                continue;
            }
            match data {
                Data::Bytes(b) => look(id, &b[..b.len().min(opts.limit)], *size),
                Data::Layer { layer, .. } => layers.push(*layer),
            }
        }
    }
    layers.sort_unstable();
    layers.dedup();
    // Biggest layers first, so the last to finish is a small one.
    let sizes: HashMap<u32, u64> = index
        .layers
        .iter()
        .map(|l| (l.index as u32, l.size))
        .collect();
    layers.sort_by_key(|l| std::cmp::Reverse(sizes.get(l).copied().unwrap_or(0)));
    let queue = Mutex::new(layers);
    let first_error = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..opts.threads.max(1) {
            s.spawn(|| {
                let mut buf = Vec::with_capacity(64 * 1024);
                loop {
                    let Some(layer) = queue.lock().expect("queue").pop() else {
                        return;
                    };
                    let in_layer = |id: NodeId| {
                        matches!(&index.node(id).kind,
                            Kind::File { data: Data::Layer { layer: l, .. }, .. } if *l == layer)
                    };
                    let r = index.for_each_content_where(image, in_layer, |id, reader| {
                        buf.clear();
                        reader
                            .take(opts.limit as u64)
                            .read_to_end(&mut buf)
                            .map_err(|e| crate::Error::io("scanning file content", e))?;
                        let size = match &index.node(id).kind {
                            Kind::File { size, .. } => *size,
                            _ => 0,
                        };
                        look(id, &buf, size);
                        Ok(())
                    });
                    if let Err(e) = r {
                        first_error.lock().expect("error slot").get_or_insert(e);
                        queue.lock().expect("queue").clear();
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("error slot") {
        return Err(e);
    }
    let mut scan = out.into_inner().expect("scan lock");
    scan.stats.seconds = started.elapsed().as_secs_f64();
    Ok(scan)
}

/// What a file's first bytes say it is, if it matters.
pub fn classify(bytes: &[u8]) -> Option<Finding> {
    if bytes.starts_with(b"\x7fELF") {
        // Binaries are not scanned for PEM text: libraries quote PEM labels.
        return is_core_dump(bytes).then_some(Finding::CoreDump);
    }
    if bytes.starts_with(b"PuTTY-User-Key-File-") {
        return Some(Finding::PrivateKey {
            label: "PuTTY key".into(),
        });
    }
    if let Some(label) = pem_private_key(bytes) {
        return Some(if pem_block(bytes, "CERTIFICATE") {
            Finding::X509Proxy
        } else {
            Finding::PrivateKey { label }
        });
    }
    if is_jwt(bytes) {
        return Some(Finding::BearerToken);
    }
    None
}

fn is_core_dump(b: &[u8]) -> bool {
    // e_ident[EI_DATA] = 1 little, 2 big endian; e_type at 16; ET_CORE = 4.
    if b.len() < 18 {
        return false;
    }
    let e_type = match b[5] {
        1 => u16::from_le_bytes([b[16], b[17]]),
        2 => u16::from_be_bytes([b[16], b[17]]),
        _ => return false,
    };
    e_type == 4
}

/// The label of the first real PEM private-key block: a BEGIN line, at
/// least one line of base64 and the matching END line. Code that only
/// quotes the marker (format strings, regexes) has no such block.
fn pem_private_key(b: &[u8]) -> Option<String> {
    for at in memmem::find_iter(b, b"-----BEGIN ") {
        if let Some((label, _)) = block_at(b, at)
            && label.ends_with("PRIVATE KEY")
        {
            return Some(label);
        }
    }
    None
}

fn pem_block(b: &[u8], want: &str) -> bool {
    memmem::find_iter(b, b"-----BEGIN ")
        .any(|at| block_at(b, at).is_some_and(|(label, _)| label == want))
}

/// The PEM block starting at `at`: its label and where it ends.
fn block_at(b: &[u8], at: usize) -> Option<(String, usize)> {
    let rest = &b[at + 11..];
    let end_label = memmem::find(&rest[..rest.len().min(80)], b"-----")?;
    let label = &rest[..end_label];
    if label.is_empty()
        || !label
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b' ')
    {
        return None;
    }
    let label = String::from_utf8_lossy(label).into_owned();
    let body_start = at + 11 + end_label + 5;
    let end_marker = format!("-----END {label}-----");
    let end = memmem::find(&b[body_start..], end_marker.as_bytes())? + body_start;
    let body = &b[body_start..end];
    let base64_line = body.split(|&c| c == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        line.len() >= 16
            && line
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='))
    });
    base64_line.then_some((label, end + end_marker.len()))
}

/// The whole file (trimmed) is a JWT: three base64url parts, the first two
/// JSON objects (`eyJ` is `{"` encoded).
fn is_jwt(b: &[u8]) -> bool {
    if b.len() > 16 * 1024 || !b.starts_with(b"eyJ") {
        return false;
    }
    let t = b.trim_ascii();
    let parts: Vec<&[u8]> = t.split(|&c| c == b'.').collect();
    parts.len() == 3
        && parts[1].starts_with(b"eyJ")
        && parts[0].len() >= 10
        && parts[1].len() >= 10
        && parts.iter().all(|p| {
            p.iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n";
    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2hlY2sgdGhpcw\n-----END CERTIFICATE-----\n";

    #[test]
    fn keys_whatever_the_name() {
        assert_eq!(
            classify(KEY.as_bytes()),
            Some(Finding::PrivateKey {
                label: "OPENSSH PRIVATE KEY".into()
            })
        );
        let rsa = format!("notes\n{}", KEY.replace("OPENSSH", "RSA"));
        assert!(matches!(
            classify(rsa.as_bytes()),
            Some(Finding::PrivateKey { .. })
        ));
        let enc = "-----BEGIN ENCRYPTED PRIVATE KEY-----\r\nMIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG\r\n-----END ENCRYPTED PRIVATE KEY-----\r\n";
        assert!(matches!(
            classify(enc.as_bytes()),
            Some(Finding::PrivateKey { .. })
        ));
        assert_eq!(
            classify(format!("{CERT}{KEY}{CERT}").as_bytes()),
            Some(Finding::X509Proxy)
        );
        assert!(matches!(
            classify(b"PuTTY-User-Key-File-3: ssh-ed25519\n"),
            Some(Finding::PrivateKey { .. })
        ));
    }

    #[test]
    fn quoted_markers_are_not_keys() {
        let code = br#"PEM = "-----BEGIN {} PRIVATE KEY-----"
END = "-----END {} PRIVATE KEY-----"
re = r"-----BEGIN (.*) PRIVATE KEY-----\s+(.*)-----END"
"#;
        assert_eq!(classify(code), None);
        // A marker without a body.
        assert_eq!(
            classify(b"-----BEGIN RSA PRIVATE KEY-----\n-----END RSA PRIVATE KEY-----\n"),
            None
        );
        // A certificate alone is public.
        assert_eq!(classify(CERT.as_bytes()), None);
        // A binary quoting a whole key block is not scanned.
        let mut elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x03\0".to_vec();
        elf.extend_from_slice(KEY.as_bytes());
        assert_eq!(classify(&elf), None);
    }

    #[test]
    fn tokens_and_cores() {
        let jwt = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyIiwiZXhwIjoxfQ.c2lnbmF0dXJl\n";
        assert_eq!(classify(jwt), Some(Finding::BearerToken));
        assert_eq!(classify(b"eyJhbGciOiJSUzI1NiJ9 not a token"), None);
        let core = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x04\0\x3e\0";
        assert_eq!(classify(core), Some(Finding::CoreDump));
        let exe = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0";
        assert_eq!(classify(exe), None);
    }
}
