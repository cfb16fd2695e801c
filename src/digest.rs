//! sha256 content digests: parsing, hashing while writing or reading, and
//! verification at the end of a stream.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

/// A validated `sha256:<64 lowercase hex>` digest. Other algorithms are
/// refused: every blob gridship stores is verified by sha256.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    pub fn from_hex(hex: &str) -> Result<Self> {
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::bad_input(
                format!("sha256:{hex}"),
                "a sha256 digest is 64 lowercase hex characters",
            ));
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }

    pub fn of_bytes(data: &[u8]) -> Self {
        Digest {
            hex: hex::encode(Sha256::digest(data)),
        }
    }

    /// The sha256 of a file's bytes.
    pub fn of_file(path: &std::path::Path) -> Result<Self> {
        let mut f = std::fs::File::open(path).map_err(|e| Error::io_path(path, "reading", e))?;
        let mut h = HashingWriter::new(io::sink());
        io::copy(&mut f, &mut h).map_err(|e| Error::io_path(path, "reading", e))?;
        Ok(h.finish().1)
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// A short form for human output (`sha256:0123456789ab`).
    pub fn short(&self) -> String {
        format!("sha256:{}", &self.hex[..12])
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.split_once(':') {
            Some(("sha256", hex)) => Digest::from_hex(hex),
            Some((alg, _)) => Err(Error::bad_input(
                s,
                format!("digest algorithm {alg:?} is not supported; only sha256"),
            )),
            None => Err(Error::bad_input(
                s,
                "a digest is written sha256:<64 hex characters>",
            )),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental sha256 with a byte count.
#[derive(Clone, Default)]
pub struct Hasher {
    inner: Sha256,
    len: u64,
}

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.len += data.len() as u64;
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn finish(self) -> (Digest, u64) {
        (
            Digest {
                hex: hex::encode(self.inner.finalize()),
            },
            self.len,
        )
    }
}

/// A writer that hashes everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::new(),
        }
    }
    pub fn finish(self) -> (W, Digest, u64) {
        let (d, n) = self.hasher.finish();
        (self.inner, d, n)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what passes through and, at end of stream, fails with
/// `InvalidData` unless the content has the expected digest and size. A
/// consumer that reads to EOF therefore never sees unverified content succeed.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Hasher,
    expected: Digest,
    expected_size: Option<u64>,
    what: String,
    verified: bool,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: Digest, expected_size: Option<u64>, what: String) -> Self {
        VerifyingReader {
            inner,
            hasher: Hasher::new(),
            expected,
            expected_size,
            what,
            verified: false,
        }
    }

    /// Read whatever is left (a tar reader stops at the end-of-archive
    /// marker, before padding) so the digest covers the whole blob.
    pub fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink())?;
        Ok(())
    }

    pub fn is_verified(&self) -> bool {
        self.verified
    }

    fn check(&mut self) -> io::Result<()> {
        let (digest, len) = std::mem::take(&mut self.hasher).finish();
        if let Some(size) = self.expected_size
            && size != len
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                Error::DigestMismatch {
                    what: self.what.clone(),
                    expected: format!("{} ({size} bytes)", self.expected),
                    actual: format!("{digest} ({len} bytes)"),
                },
            ));
        }
        if digest != self.expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                Error::DigestMismatch {
                    what: self.what.clone(),
                    expected: self.expected.to_string(),
                    actual: digest.to_string(),
                },
            ));
        }
        self.verified = true;
        Ok(())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            if !self.verified && !buf.is_empty() {
                self.check()?;
            }
        } else {
            if self.verified {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: data after verified end", self.what),
                ));
            }
            self.hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Turn an io::Error that wraps a gridship Error (as VerifyingReader makes)
/// back into that Error, so digest mismatches keep their type.
pub fn unwrap_io(err: io::Error, context: impl FnOnce() -> String) -> Error {
    if err.get_ref().is_some_and(|e| e.is::<Error>()) {
        match err.into_inner().map(|e| e.downcast::<Error>()) {
            Some(Ok(e)) => return *e,
            Some(Err(other)) => return Error::io(context(), io::Error::other(other)),
            None => unreachable!("checked get_ref above"),
        }
    }
    Error::io(context(), err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            .parse()
            .unwrap();
        assert_eq!(d, Digest::of_bytes(b""));
        assert!("sha512:00".parse::<Digest>().is_err());
        assert!("sha256:E3B0".parse::<Digest>().is_err());
        assert!("e3b0c44298fc".parse::<Digest>().is_err());
    }

    #[test]
    fn verifying_reader_detects_corruption() {
        let good = Digest::of_bytes(b"hello");
        let mut r = VerifyingReader::new(&b"hello"[..], good.clone(), Some(5), "blob".into());
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert!(r.is_verified());

        let mut r = VerifyingReader::new(&b"hellO"[..], good.clone(), Some(5), "blob x".into());
        let err = r.read_to_end(&mut Vec::new()).unwrap_err();
        let e = unwrap_io(err, || "reading".into());
        assert!(
            matches!(e, Error::DigestMismatch { ref what, .. } if what == "blob x"),
            "{e}"
        );

        let mut r = VerifyingReader::new(&b"hello!"[..], good, Some(5), "blob".into());
        assert!(r.read_to_end(&mut Vec::new()).is_err());
    }
}
