//! Reading one layer blob as a tar stream: gzip, zstd or plain (sniffed from
//! the bytes), with the blob digest and the uncompressed diff_id both
//! verified when the stream is finished. The tar format itself is read by
//! our own reader ([`tar`]).

pub mod tar;

use std::io::{self, BufRead, BufReader, Read};

use self::tar::{Entry, TarReader};

use crate::digest::{Digest, Hasher, VerifyingReader, unwrap_io};
use crate::image::Image;
use crate::store::Descriptor;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn sniff(head: &[u8]) -> Compression {
        match head {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            _ => Compression::None,
        }
    }
}

/// Hashes the uncompressed stream (for the diff_id) as the tar reader pulls it.
pub struct DiffIdReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> Read for DiffIdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A layer blob as the decoders read it, counted for the progress of the
/// stage that reads it.
type BlobReader =
    BufReader<crate::event::Counted<VerifyingReader<BufReader<crate::store::BlobFile>>>>;

/// The decompressor over a blob, kept concrete so the blob reader can be
/// taken back at the end and read to its verified EOF.
pub enum Decoder {
    Plain(BlobReader),
    Gzip(Box<flate2::bufread::MultiGzDecoder<BlobReader>>),
    Zstd(zstd::stream::read::Decoder<'static, BlobReader>),
}

impl Read for Decoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
        }
    }
}

impl Decoder {
    fn into_blob(self) -> BlobReader {
        match self {
            Decoder::Plain(r) => r,
            Decoder::Gzip(r) => r.into_inner(),
            Decoder::Zstd(r) => r.finish(),
        }
    }
}

/// The uncompressed byte stream of one layer. `finish` reads what is left
/// and verifies the diff_id and the blob digest.
pub struct LayerStream {
    inner: DiffIdReader<Decoder>,
    diff_id: Digest,
    what: String,
}

impl Read for LayerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl LayerStream {
    pub fn open(image: &Image, index: usize) -> Result<(LayerStream, Compression)> {
        let desc = &image.manifest.layers[index];
        let diff_id = image.config.rootfs.diff_ids[index].clone();
        let blob = image.layout.open_blob(&desc.digest, Some(desc.size))?;
        let mut buf: BlobReader = BufReader::with_capacity(1 << 20, crate::event::Counted(blob));
        let head = buf
            .fill_buf()
            .map_err(|e| unwrap_io(e, || format!("reading layer {}", desc.digest)))?;
        let compression = Compression::sniff(head);
        let decoded = match compression {
            Compression::None => Decoder::Plain(buf),
            Compression::Gzip => Decoder::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(buf))),
            Compression::Zstd => Decoder::Zstd(
                zstd::stream::read::Decoder::with_buffer(buf)
                    .map_err(|e| Error::io(format!("opening zstd layer {}", desc.digest), e))?,
            ),
        };
        let stream = LayerStream {
            inner: DiffIdReader {
                inner: decoded,
                hasher: Hasher::new(),
            },
            diff_id,
            what: format!("layer {} ({}) of {}", index + 1, desc.digest, image.name),
        };
        Ok((stream, compression))
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    /// Read the rest of the stream (tar padding, then the blob's end) and
    /// verify the diff_id and the blob digest. Returns the uncompressed
    /// size (the layer tar's bytes).
    pub fn finish(mut self) -> Result<u64> {
        let what = self.what;
        io::copy(&mut self.inner, &mut io::sink())
            .map_err(|e| unwrap_io(e, || format!("reading {what}")))?;
        let (diff, diff_size) = self.inner.hasher.finish();
        if diff != self.diff_id {
            return Err(Error::DigestMismatch {
                what: format!("uncompressed {what} (diff_id)"),
                expected: self.diff_id.to_string(),
                actual: diff.to_string(),
            });
        }
        // The decoder may stop at the end of its stream; what follows in the
        // blob must still be read so the blob digest covers every byte.
        let mut blob = self.inner.inner.into_blob();
        let trailing = io::copy(&mut blob, &mut io::sink())
            .map_err(|e| unwrap_io(e, || format!("reading {what}")))?;
        if trailing > 0 {
            tracing::warn!("{what}: {trailing} bytes after the compressed stream");
        }
        debug_assert!(blob.get_ref().0.is_verified());
        Ok(diff_size)
    }
}

/// An open layer as a tar archive; `finish()` must be called after the
/// entries to verify both digests.
pub struct LayerReader {
    /// Layer position in the manifest (0-based) and its descriptor.
    pub index: usize,
    pub desc: Descriptor,
    pub diff_id: Digest,
    pub compression: Compression,
    tar: TarReader<LayerStream>,
    what: String,
}

impl LayerReader {
    pub fn open(image: &Image, index: usize) -> Result<LayerReader> {
        let (stream, compression) = LayerStream::open(image, index)?;
        let what = stream.what().to_string();
        let desc = image.manifest.layers[index].clone();
        Ok(LayerReader {
            index,
            diff_id: image.config.rootfs.diff_ids[index].clone(),
            compression,
            tar: TarReader::new(stream, desc.digest.to_string(), what.clone()),
            desc,
            what,
        })
    }

    /// The next tar entry, `None` after the end of the archive. Errors name
    /// the layer (and the entry, for malformed ones).
    pub fn next_entry(&mut self) -> Result<Option<Entry<'_, LayerStream>>> {
        self.tar.next_entry()
    }

    /// A description of the layer for error messages.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Read the rest of the stream (what follows the end of the archive
    /// included) and verify both digests. Returns the uncompressed size.
    pub fn finish(self) -> Result<u64> {
        self.tar.into_inner().finish()
    }
}

/// Map an io::Error from inside a layer stream (where a digest mismatch may
/// hide) to a gridship error naming the layer.
pub fn layer_io(what: &str, err: io::Error) -> Error {
    unwrap_io(err, || format!("reading {what}"))
}

/// A layer that fails to decode or parse may simply be corrupt: check the blob's
/// digest and report the mismatch, which says more than "corrupt deflate
/// stream". Other errors pass through.
pub fn diagnose(image: &Image, index: usize, err: Error) -> Error {
    // A malformed entry may be a corrupt plain layer: the digest says which.
    if !matches!(err, Error::Io { .. } | Error::UnsafeEntry { .. }) {
        return err;
    }
    let desc = &image.manifest.layers[index];
    match image.layout.open_blob(&desc.digest, Some(desc.size)) {
        Ok(mut blob) => match io::copy(&mut blob, &mut io::sink()) {
            Err(e) => unwrap_io(e, || format!("reading layer {}", desc.digest)),
            Ok(_) => err,
        },
        Err(e) => e,
    }
}
