//! OCI image layout directories: the local store, and any `oci:DIR`.
//!
//! Blobs are content-addressed: a writer hashes while writing into a
//! temporary file in `blobs/sha256/`, and only a verified blob is renamed to
//! its digest name. `index.json` is rewritten under an exclusive lock and
//! renamed into place, so two processes writing the same image both succeed
//! and readers never see a half-written file.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingWriter, VerifyingReader, unwrap_io};
use crate::error::IoContext;
use crate::{Error, Result};

pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
const LAYOUT_FILE: &str = "oci-layout";
const LOCK_FILE: &str = ".gridship.lock";
/// Manifests and configs are read into memory; anything bigger is not one.
pub const MAX_JSON_BLOB: u64 = 64 << 20;

/// An OCI content descriptor. Unknown fields are kept so that documents we
/// rewrite (index.json) lose nothing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Descriptor {
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            platform: None,
            annotations: BTreeMap::new(),
            extra: BTreeMap::new(),
        }
    }

    pub fn ref_name(&self) -> Option<&str> {
        self.annotations
            .get(REF_NAME_ANNOTATION)
            .map(String::as_str)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `index.json` of a layout (an OCI image index).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexJson {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for IndexJson {
    fn default() -> Self {
        IndexJson {
            schema_version: 2,
            media_type: Some(crate::image::media::OCI_INDEX.into()),
            manifests: Vec::new(),
            extra: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Open an existing layout; it must have an `oci-layout` file.
    pub fn open(root: impl Into<PathBuf>) -> Result<Layout> {
        let root = root.into();
        let marker = root.join(LAYOUT_FILE);
        let text = fs::read_to_string(&marker).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::BadInput {
                    input: root.display().to_string(),
                    place: String::new(),
                    reason: "not an OCI image layout (no oci-layout file)".into(),
                    hint: Some(
                        "give a directory written by `gridship copy ... oci:DIR` or skopeo".into(),
                    ),
                }
            } else {
                Error::io_path(&marker, "reading", e)
            }
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::BadInput {
            input: marker.display().to_string(),
            place: format!("line {} column {}: ", e.line(), e.column()),
            reason: format!("invalid JSON: {e}"),
            hint: None,
        })?;
        if v.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
            return Err(Error::BadInput {
                input: marker.display().to_string(),
                place: String::new(),
                reason: "imageLayoutVersion is not \"1.0.0\"".into(),
                hint: None,
            });
        }
        Ok(Layout { root })
    }

    /// Open a layout, creating an empty one if the directory has none.
    pub fn open_or_create(root: impl Into<PathBuf>) -> Result<Layout> {
        let root = root.into();
        fs::create_dir_all(root.join("blobs/sha256")).at("creating", root.join("blobs/sha256"))?;
        let layout = Layout { root };
        if !layout.root.join(LAYOUT_FILE).exists() {
            layout.write_atomic(
                &layout.root.join(LAYOUT_FILE),
                br#"{"imageLayoutVersion":"1.0.0"}"#,
            )?;
        }
        if !layout.root.join("index.json").exists() {
            let _lock = layout.lock()?;
            if !layout.root.join("index.json").exists() {
                layout.write_index(&IndexJson::default())?;
            }
        }
        Layout::open(&layout.root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Whether the blob is present with the expected size (its content is
    /// verified whenever it is read).
    pub fn has_blob(&self, digest: &Digest, size: Option<u64>) -> bool {
        match fs::metadata(self.blob_path(digest)) {
            Ok(m) => m.is_file() && size.is_none_or(|s| s == m.len()),
            Err(_) => false,
        }
    }

    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let dir = self.root.join("blobs/sha256");
        fs::create_dir_all(&dir).at("creating", &dir)?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-blob-")
            .tempfile_in(&dir)
            .at("creating a temporary blob in", &dir)?;
        Ok(BlobWriter {
            inner: HashingWriter::new(io::BufWriter::with_capacity(1 << 20, tmp)),
            dir,
        })
    }

    /// Store bytes as a blob; returns its digest and size.
    pub fn put_blob(&self, data: &[u8]) -> Result<(Digest, u64)> {
        let digest = Digest::of_bytes(data);
        if self.has_blob(&digest, Some(data.len() as u64)) {
            return Ok((digest, data.len() as u64));
        }
        let mut w = self.blob_writer()?;
        w.write_all(data).at("writing a blob in", &self.root)?;
        w.finish(Some((&digest, data.len() as u64)), "blob")
    }

    /// Copy a blob in from a reader, verifying it against `expected`.
    pub fn put_blob_from(
        &self,
        reader: &mut dyn Read,
        expected: &Digest,
        size: Option<u64>,
        what: &str,
    ) -> Result<(Digest, u64)> {
        let mut w = self.blob_writer()?;
        io::copy(reader, &mut w).map_err(|e| unwrap_io(e, || format!("copying {what}")))?;
        w.finish(
            size.map(|s| (expected, s)).or(Some((expected, u64::MAX))),
            what,
        )
    }

    /// A reader over a blob that fails at EOF unless it hashes to `digest`.
    pub fn open_blob(
        &self,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<VerifyingReader<BufReader<File>>> {
        let path = self.blob_path(digest);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::NotFound {
                    what: format!("blob {digest}"),
                    detail: format!("missing from {}", self.root.display()),
                }
            } else {
                Error::io_path(&path, "opening", e)
            }
        })?;
        if let Some(size) = size {
            let len = file.metadata().at("reading", &path)?.len();
            if len != size {
                return Err(Error::DigestMismatch {
                    what: format!("blob {} in {}", digest, self.root.display()),
                    expected: format!("{size} bytes"),
                    actual: format!("{len} bytes"),
                });
            }
        }
        Ok(VerifyingReader::new(
            BufReader::with_capacity(1 << 20, file),
            digest.clone(),
            size,
            format!("blob {} in {}", digest, self.root.display()),
        ))
    }

    /// Read a small (JSON) blob fully, verified.
    pub fn read_blob(&self, digest: &Digest, size: Option<u64>) -> Result<Vec<u8>> {
        if let Some(s) = size
            && s > MAX_JSON_BLOB
        {
            return Err(Error::bad_input(
                digest.to_string(),
                format!("{s} bytes is too large for a manifest or config"),
            ));
        }
        let mut r = self.open_blob(digest, size)?;
        let mut buf = Vec::new();
        r.by_ref()
            .take(MAX_JSON_BLOB + 1)
            .read_to_end(&mut buf)
            .map_err(|e| unwrap_io(e, || format!("reading blob {digest}")))?;
        if !r.is_verified() {
            // take() stopped before EOF: the blob is larger than allowed.
            return Err(Error::bad_input(
                digest.to_string(),
                "too large for a manifest or config",
            ));
        }
        Ok(buf)
    }

    pub fn read_index(&self) -> Result<IndexJson> {
        let path = self.root.join("index.json");
        let text = fs::read(&path).at("reading", &path)?;
        serde_json::from_slice(&text).map_err(|e| Error::BadInput {
            input: path.display().to_string(),
            place: format!("line {} column {}: ", e.line(), e.column()),
            reason: format!("not a valid OCI index: {e}"),
            hint: None,
        })
    }

    fn write_index(&self, index: &IndexJson) -> Result<()> {
        let mut data = serde_json::to_vec_pretty(index).expect("index serializes");
        data.push(b'\n');
        self.write_atomic(&self.root.join("index.json"), &data)
    }

    /// Exclusive lock over index.json updates (released on drop).
    fn lock(&self) -> Result<File> {
        let path = self.root.join(LOCK_FILE);
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .at("opening", &path)?;
        f.lock().at("locking", &path)?;
        Ok(f)
    }

    /// Read-modify-write index.json under the lock.
    pub fn update_index<T>(&self, f: impl FnOnce(&mut IndexJson) -> T) -> Result<T> {
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let out = f(&mut index);
        self.write_index(&index)?;
        Ok(out)
    }

    /// Remove the blobs that no name in index.json leads to (through
    /// indexes and manifests), when older than `min_age`: a writer that
    /// has put blobs but not yet named its manifest is left alone.
    /// Returns how many were removed.
    pub fn remove_unreferenced_blobs(&self, min_age: std::time::Duration) -> Result<usize> {
        let _lock = self.lock()?;
        let index = self.read_index()?;
        let mut reachable = std::collections::HashSet::new();
        let mut todo: Vec<Descriptor> = index.manifests.clone();
        while let Some(d) = todo.pop() {
            if !reachable.insert(d.digest.clone()) {
                continue;
            }
            let is_manifest = crate::image::media::is_manifest(&d.media_type);
            if !(is_manifest || crate::image::media::is_index(&d.media_type)) {
                continue;
            }
            // A missing or unreadable document: keep what is known, drop nothing below.
            let Ok(raw) = self.read_blob(&d.digest, Some(d.size)) else {
                continue;
            };
            if is_manifest {
                if let Ok(m) = serde_json::from_slice::<crate::image::Manifest>(&raw) {
                    todo.push(m.config);
                    todo.extend(m.layers);
                }
            } else if let Ok(i) = serde_json::from_slice::<IndexJson>(&raw) {
                todo.extend(i.manifests);
            }
        }
        let dir = self.root.join("blobs").join("sha256");
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io_path(&dir, "reading", e)),
        };
        for entry in entries {
            let entry = entry.at("reading", &dir)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(digest) = format!("sha256:{name}").parse::<Digest>() else {
                continue;
            };
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() >= min_age);
            if !reachable.contains(&digest) && old {
                fs::remove_file(entry.path()).at("removing", entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Record `desc` under a ref name, replacing what had that name.
    pub fn set_ref(&self, name: &str, desc: &Descriptor) -> Result<()> {
        let mut desc = desc.clone();
        desc.annotations
            .insert(REF_NAME_ANNOTATION.into(), name.to_string());
        self.update_index(|index| {
            index.manifests.retain(|d| d.ref_name() != Some(name));
            index.manifests.push(desc);
        })
    }

    /// Find the manifest (or index) descriptor for a ref name; with no name,
    /// the layout must hold exactly one.
    pub fn resolve(&self, name: Option<&str>) -> Result<Descriptor> {
        let index = self.read_index()?;
        match name {
            Some(n) => index
                .manifests
                .iter()
                .rev()
                .find(|d| d.ref_name() == Some(n))
                .cloned()
                .ok_or_else(|| {
                    let known: Vec<&str> = index
                        .manifests
                        .iter()
                        .filter_map(|d| d.ref_name())
                        .collect();
                    Error::NotFound {
                        what: format!("image {n:?} in {}", self.root.display()),
                        detail: if known.is_empty() {
                            "the layout holds no named images".into()
                        } else {
                            format!("names there: {}", known.join(", "))
                        },
                    }
                }),
            None => match index.manifests.as_slice() {
                [one] => Ok(one.clone()),
                [] => Err(Error::NotFound {
                    what: format!("image in {}", self.root.display()),
                    detail: "the layout's index.json lists no images".into(),
                }),
                many => Err(Error::BadInput {
                    input: self.root.display().to_string(),
                    place: String::new(),
                    reason: format!("the layout holds {} images; say which", many.len()),
                    hint: Some(format!(
                        "add :NAME, one of: {}",
                        many.iter()
                            .map(|d| d.ref_name().unwrap_or("(unnamed)"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                }),
            },
        }
    }

    /// Write a file next to its final name, then rename it into place.
    pub fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<()> {
        write_atomic(path, data)
    }
}

/// Write `data` to a temporary file beside `path`, fsync, rename into place.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // A recognizable name, so whoever owns the directory can clear what a
    // killed process left (see sink::cvmfs).
    let mut tmp = tempfile::Builder::new()
        .prefix(".gridship-tmp-")
        .tempfile_in(dir)
        .at("creating a temporary file in", dir)?;
    tmp.write_all(data).at("writing", tmp.path())?;
    // Temporary files are private (0600); what is renamed into place is
    // meant to be read by others (store indexes, CVMFS metadata).
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .at("changing mode of", tmp.path())?;
    tmp.as_file().sync_all().at("syncing", tmp.path())?;
    tmp.persist(path)
        .map_err(|e| Error::io_path(path, "renaming into place", e.error))?;
    Ok(())
}

/// Writes a blob: hashes while writing into a temporary file; `finish`
/// verifies and renames it to its digest name. Dropped unfinished, the
/// temporary file is removed.
pub struct BlobWriter {
    inner: HashingWriter<io::BufWriter<tempfile::NamedTempFile>>,
    dir: PathBuf,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl BlobWriter {
    /// Verify against the expected digest and size (size `u64::MAX` means
    /// "any size"), then rename into place. `what` names the content in errors.
    pub fn finish(self, expected: Option<(&Digest, u64)>, what: &str) -> Result<(Digest, u64)> {
        let (buf, digest, size) = self.inner.finish();
        let tmp = buf
            .into_inner()
            .map_err(|e| Error::io(format!("writing {what}"), e.into_error()))?;
        if let Some((want, want_size)) = expected {
            if *want != digest {
                return Err(Error::DigestMismatch {
                    what: what.to_string(),
                    expected: want.to_string(),
                    actual: digest.to_string(),
                });
            }
            if want_size != u64::MAX && want_size != size {
                return Err(Error::DigestMismatch {
                    what: what.to_string(),
                    expected: format!("{want} ({want_size} bytes)"),
                    actual: format!("{digest} ({size} bytes)"),
                });
            }
        }
        let dest = self.dir.join(digest.hex());
        tmp.persist(&dest)
            .map_err(|e| Error::io_path(&dest, "renaming blob into place", e.error))?;
        Ok((digest, size))
    }
}

/// The default store: `$GRIDSHIP_STORE`, else `$XDG_CACHE_HOME/gridship/store`,
/// else `~/.cache/gridship/store`.
pub fn default_store_path() -> PathBuf {
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("gridship/store");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/gridship/store")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_roundtrip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::open_or_create(dir.path().join("s")).unwrap();
        let (d, n) = l.put_blob(b"content").unwrap();
        assert_eq!(n, 7);
        assert_eq!(l.read_blob(&d, Some(7)).unwrap(), b"content");
        // A blob whose bytes changed on disk is refused on read.
        fs::write(l.blob_path(&d), b"contenT").unwrap();
        let e = l.read_blob(&d, Some(7)).unwrap_err();
        assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
        // A writer given the wrong digest leaves nothing behind.
        let mut w = l.blob_writer().unwrap();
        w.write_all(b"other").unwrap();
        let wrong = Digest::of_bytes(b"not other");
        assert!(w.finish(Some((&wrong, 5)), "x").is_err());
        assert!(!l.has_blob(&wrong, None));
        let left: Vec<_> = fs::read_dir(l.root().join("blobs/sha256"))
            .unwrap()
            .collect();
        assert_eq!(left.len(), 1, "only the first blob remains");
    }

    #[test]
    fn refs_replace_and_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::open_or_create(dir.path()).unwrap();
        let (d1, n1) = l.put_blob(b"{}").unwrap();
        let (d2, n2) = l.put_blob(b"{ }").unwrap();
        l.set_ref("a", &Descriptor::new("m", d1.clone(), n1))
            .unwrap();
        l.set_ref("b", &Descriptor::new("m", d1.clone(), n1))
            .unwrap();
        l.set_ref("a", &Descriptor::new("m", d2.clone(), n2))
            .unwrap();
        assert_eq!(l.resolve(Some("a")).unwrap().digest, d2);
        assert_eq!(l.read_index().unwrap().manifests.len(), 2);
        let e = l.resolve(None).unwrap_err().to_string();
        assert!(e.contains("holds 2 images"), "{e}");
        let e = l.resolve(Some("zz")).unwrap_err().to_string();
        assert!(e.contains("names there: b, a"), "{e}");
    }
}
