//! The engine's own layer store, read directly: on a local engine with the
//! overlay2 driver, an image's config is a file in `image/overlay2/imagedb`
//! and each layer is a `diff` directory plus the tar-split record of the
//! tar it was unpacked from (`image/overlay2/layerdb/sha256/CHAIN_ID`).
//! Joining the record's headers with the files' bytes gives back the very
//! tar the engine's `docker save` would stream, byte for byte, so its sha256
//! is the layer's diff ID and every blob stays verified. This is what the
//! engine itself does for `docker save`, without the export stream.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::digest::Digest;
use crate::error::IoContext;
use crate::{Error, Result};

/// The overlay2 layer store of the engine that holds an image.
#[derive(Debug)]
pub struct LayerStore {
    /// The engine's root directory (`/var/lib/docker`).
    root: PathBuf,
}

impl LayerStore {
    /// The layer store of a local overlay2 engine, found from the upper dir
    /// the engine reports for one of its images (`ROOT/overlay2/ID/diff`);
    /// `Err` says why it cannot be read here.
    pub fn locate(driver: &str, upper_dir: &Path) -> std::result::Result<LayerStore, String> {
        if driver != "overlay2" {
            return Err(format!(
                "the engine's storage driver is {driver:?}, not overlay2"
            ));
        }
        let root = upper_dir
            .parent()
            .and_then(Path::parent)
            .filter(|d| d.file_name() == Some("overlay2".as_ref()))
            .and_then(Path::parent)
            .ok_or_else(|| {
                format!(
                    "{} is not in an overlay2 layer directory",
                    upper_dir.display()
                )
            })?;
        let store = LayerStore {
            root: root.to_path_buf(),
        };
        let layerdb = store.layerdb();
        std::fs::read_dir(&layerdb)
            .map_err(|e| format!("cannot read {}: {e}", layerdb.display()))?;
        Ok(store)
    }

    /// The layer store under an engine root a store link recorded; what
    /// is read through it is verified against the diff ID as always.
    pub fn at_root(root: &Path) -> LayerStore {
        LayerStore {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn layerdb(&self) -> PathBuf {
        self.root.join("image/overlay2/layerdb/sha256")
    }

    /// The image config the engine keeps for image `id`, verified.
    pub fn config(&self, id: &Digest) -> Result<Vec<u8>> {
        let path = self
            .root
            .join("image/overlay2/imagedb/content/sha256")
            .join(id.hex());
        let raw = std::fs::read(&path).at("reading", &path)?;
        let actual = Digest::of_bytes(&raw);
        if actual != *id {
            return Err(Error::DigestMismatch {
                what: path.display().to_string(),
                expected: id.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(raw)
    }

    /// The directory of the layer with chain ID `chain_id` and its
    /// tar-split record.
    fn layer_files(&self, chain_id: &Digest) -> Result<(PathBuf, PathBuf)> {
        let dir = self.layerdb().join(chain_id.hex());
        let cache_id_path = dir.join("cache-id");
        let cache_id = std::fs::read_to_string(&cache_id_path).at("reading", &cache_id_path)?;
        let cache_id = cache_id.trim();
        if cache_id.is_empty() || cache_id.contains(['/', '.']) {
            return Err(Error::Other(format!(
                "{}: {cache_id:?} is not a layer directory name",
                cache_id_path.display()
            )));
        }
        let diff = self.root.join("overlay2").join(cache_id).join("diff");
        Ok((diff, dir.join("tar-split.json.gz")))
    }

    /// Whether the engine still has the layer with chain ID `chain_id`.
    pub fn has_layer(&self, chain_id: &Digest) -> bool {
        self.layer_files(chain_id)
            .is_ok_and(|(diff, record)| diff.is_dir() && record.is_file())
    }

    /// The tar of the layer with chain ID `chain_id`, read as it is joined
    /// from its record and its directory; the caller verifies it against
    /// the diff ID.
    pub fn open_layer(&self, chain_id: &Digest) -> Result<LayerTar> {
        let (diff, record) = self.layer_files(chain_id)?;
        let file = File::open(&record).at("opening", &record)?;
        let json = BufReader::new(flate2::read::GzDecoder::new(BufReader::new(file)));
        Ok(LayerTar {
            diff,
            entries: serde_json::Deserializer::from_reader(json).into_iter(),
            record,
            current: Part::Done,
        })
    }

    /// The size of the layer's tar, from its record alone (no file read).
    pub fn layer_size(&self, chain_id: &Digest) -> Result<u64> {
        let mut tar = self.open_layer(chain_id)?;
        let mut size = 0u64;
        while let Some(entry) = tar.next_record()? {
            size += match entry.kind {
                TAR_SPLIT_SEGMENT => entry.segment(&tar.record)?.len() as u64,
                _ => entry.size,
            };
        }
        Ok(size)
    }

    /// Write the tar of the layer with chain ID `chain_id` to `out`; the
    /// caller verifies it against the diff ID. Returns the bytes written.
    pub fn write_layer(&self, chain_id: &Digest, out: &mut dyn Write) -> Result<u64> {
        let mut tar = crate::event::Counted(self.open_layer(chain_id)?);
        io::copy(&mut tar, out).map_err(|e| {
            crate::digest::unwrap_io(e, || format!("copying layer {chain_id} of the engine"))
        })
    }
}

type Record = serde_json::StreamDeserializer<
    'static,
    serde_json::de::IoRead<BufReader<flate2::read::GzDecoder<BufReader<File>>>>,
    TarSplitEntry,
>;

/// One layer's tar, read by joining its tar-split record (headers,
/// padding) with its files' bytes from the layer directory.
pub struct LayerTar {
    diff: PathBuf,
    record: PathBuf,
    entries: Record,
    current: Part,
}

/// What the reader is in the middle of.
enum Part {
    Segment(Vec<u8>, usize),
    File {
        file: io::Take<File>,
        path: PathBuf,
        left: u64,
    },
    Done,
}

impl LayerTar {
    fn next_record(&mut self) -> Result<Option<TarSplitEntry>> {
        match self.entries.next() {
            None => Ok(None),
            Some(Ok(e)) => Ok(Some(e)),
            Some(Err(e)) => Err(Error::Other(format!(
                "{}: not a tar-split record: {e}",
                self.record.display()
            ))),
        }
    }

    /// Move to the next record with bytes; false at the end.
    fn advance(&mut self) -> Result<bool> {
        while let Some(entry) = self.next_record()? {
            match entry.kind {
                TAR_SPLIT_SEGMENT => {
                    let bytes = entry.segment(&self.record)?;
                    if !bytes.is_empty() {
                        self.current = Part::Segment(bytes, 0);
                        return Ok(true);
                    }
                }
                TAR_SPLIT_FILE if entry.size == 0 => {}
                TAR_SPLIT_FILE => {
                    let path = self.diff.join(entry.file_name(&self.record)?);
                    let file = File::open(&path).at("opening", &path)?;
                    self.current = Part::File {
                        file: file.take(entry.size),
                        path,
                        left: entry.size,
                    };
                    return Ok(true);
                }
                other => {
                    return Err(Error::Other(format!(
                        "{}: unknown entry type {other}",
                        self.record.display()
                    )));
                }
            }
        }
        self.current = Part::Done;
        Ok(false)
    }
}

impl Read for LayerTar {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match &mut self.current {
                Part::Segment(bytes, pos) if *pos < bytes.len() => {
                    let n = buf.len().min(bytes.len() - *pos);
                    buf[..n].copy_from_slice(&bytes[*pos..*pos + n]);
                    *pos += n;
                    return Ok(n);
                }
                Part::File { file, path, left } if *left > 0 => {
                    let n = file.read(buf)?;
                    if n == 0 {
                        // A file that shrank since is refused, not padded.
                        return Err(io::Error::other(format!(
                            "{}: {left} bytes short of what the layer's tar says",
                            path.display()
                        )));
                    }
                    *left -= n as u64;
                    return Ok(n);
                }
                _ => {
                    if !self.advance().map_err(io::Error::other)? {
                        return Ok(0);
                    }
                }
            }
        }
    }
}

/// One line of a tar-split record: raw tar bytes (headers, padding), or a
/// file whose bytes are read from the layer's directory.
#[derive(Deserialize)]
struct TarSplitEntry {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    name: Option<String>,
    /// Names that are not UTF-8, base64.
    #[serde(default)]
    name_raw: Option<String>,
    #[serde(default)]
    size: u64,
    /// Segments: the raw bytes, base64 (files: a checksum, unused: the
    /// whole tar is checked by sha256).
    #[serde(default)]
    payload: Option<String>,
}

const TAR_SPLIT_FILE: u8 = 1;
const TAR_SPLIT_SEGMENT: u8 = 2;

impl TarSplitEntry {
    /// A segment's raw bytes.
    fn segment(&self, record: &Path) -> Result<Vec<u8>> {
        match &self.payload {
            Some(p) => base64::engine::general_purpose::STANDARD
                .decode(p)
                .map_err(|e| Error::Other(format!("{}: segment payload: {e}", record.display()))),
            None => Ok(Vec::new()),
        }
    }

    /// A file entry's name inside the layer directory: only names that
    /// stay inside it are accepted.
    fn file_name(&self, record: &Path) -> Result<PathBuf> {
        let bad = |reason: String| Error::Other(format!("{}: {reason}", record.display()));
        let name = match (&self.name_raw, &self.name) {
            (Some(raw), _) => base64::engine::general_purpose::STANDARD
                .decode(raw)
                .map_err(|e| bad(format!("file name: {e}")))?,
            (None, Some(n)) => n.clone().into_bytes(),
            (None, None) => return Err(bad("a file entry without a name".into())),
        };
        let rel = Path::new(std::ffi::OsStr::from_bytes(&name));
        if !rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(bad(format!("file name {rel:?} leaves the layer")));
        }
        Ok(rel.to_path_buf())
    }
}

/// The chain IDs of a stack of layers: the first is its diff ID, each next
/// one `sha256("PARENT_CHAIN DIFF_ID")` (what names layers in layerdb).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut chain: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match chain.last() {
            None => d.clone(),
            Some(parent) => Digest::of_bytes(format!("{parent} {d}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = Digest::of_bytes(b"a");
        let b = Digest::of_bytes(b"b");
        let c = Digest::of_bytes(b"c");
        let ids = chain_ids(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(ids[0], a);
        let ab = Digest::of_bytes(format!("{a} {b}").as_bytes());
        assert_eq!(ids[1], ab);
        assert_eq!(ids[2], Digest::of_bytes(format!("{ab} {c}").as_bytes()));
    }

    /// A record of a tar with one file and one whiteout is joined back
    /// with the file's bytes from the layer directory.
    #[test]
    fn tar_split_records_are_joined_with_the_files() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let chain = Digest::of_bytes(b"layer");
        let db = root.join("image/overlay2/layerdb/sha256").join(chain.hex());
        std::fs::create_dir_all(&db).unwrap();
        std::fs::create_dir_all(root.join("overlay2/abc/diff/etc")).unwrap();
        std::fs::write(root.join("overlay2/abc/diff/etc/motd"), b"hello\n").unwrap();
        std::fs::write(db.join("cache-id"), "abc").unwrap();
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let record = [
            serde_json::json!({"type": 2, "payload": b64(b"HEADER1"), "position": 0}),
            serde_json::json!({"type": 1, "name": "etc/", "payload": null, "position": 1}),
            serde_json::json!({"type": 2, "payload": b64(b"HEADER2"), "position": 2}),
            serde_json::json!({"type": 1, "name": "etc/motd", "size": 6, "payload": "AAAAAAAAAAA=", "position": 3}),
            serde_json::json!({"type": 2, "payload": b64(b"PAD"), "position": 4}),
        ];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for r in &record {
            writeln!(gz, "{r}").unwrap();
        }
        std::fs::write(db.join("tar-split.json.gz"), gz.finish().unwrap()).unwrap();
        let store = LayerStore::locate("overlay2", &root.join("overlay2/abc/diff")).unwrap();
        let mut out = Vec::new();
        let n = store.write_layer(&chain, &mut out).unwrap();
        assert_eq!(out, b"HEADER1HEADER2hello\nPAD");
        assert_eq!(n, out.len() as u64);

        // A file that changed size since is refused, not padded.
        std::fs::write(root.join("overlay2/abc/diff/etc/motd"), b"hi\n").unwrap();
        let e = store.write_layer(&chain, &mut Vec::new()).unwrap_err();
        assert!(
            e.to_string()
                .contains("3 bytes short of what the layer's tar says"),
            "{e}"
        );
        std::fs::write(root.join("overlay2/abc/diff/etc/motd"), b"hello\n").unwrap();
        assert_eq!(store.layer_size(&chain).unwrap(), n);
        assert!(store.has_layer(&chain));
        assert!(!store.has_layer(&Digest::of_bytes(b"other")));

        assert!(LayerStore::locate("vfs", &root.join("overlay2/abc/diff")).is_err());
        assert!(LayerStore::locate("overlay2", &root.join("elsewhere/abc/diff")).is_err());
    }

    #[test]
    fn names_outside_the_layer_are_refused() {
        let entry = TarSplitEntry {
            kind: TAR_SPLIT_FILE,
            name: Some("../../etc/shadow".into()),
            name_raw: None,
            size: 10,
            payload: None,
        };
        let e = entry.file_name(Path::new("r")).unwrap_err();
        assert!(e.to_string().contains("leaves the layer"), "{e}");
    }
}
