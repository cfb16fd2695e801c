//! OCI image layout directories: the local store, and any `oci:DIR`.
//!
//! Blobs are content-addressed: a writer hashes while writing into a
//! temporary file in `blobs/sha256/`, and only a verified blob is renamed to
//! its digest name. `index.json` is rewritten under an exclusive lock and
//! renamed into place, so two processes writing the same image both succeed
//! and readers never see a half-written file.
//!
//! Every process that opens the store to write it holds a shared lock on it
//! until it ends; `gridship store gc` takes that lock exclusively, so it never
//! removes a blob a running writer has put but not yet named (writers name
//! an image last), nor one it found present and is about to name.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingWriter, VerifyingReader, unwrap_io};
use crate::error::IoContext;
use crate::fsutil;
use crate::lockfile::{LockFile, Mode};
use crate::{Error, Result};

// The OCI documents a layout holds, under the names callers know them by.
pub use crate::oci::{Descriptor, IndexJson, Platform, REF_NAME_ANNOTATION};

const LAYOUT_FILE: &str = "oci-layout";
const LOCK_FILE: &str = ".gridship.lock";
/// Held shared by every process writing the store, for its whole run, and
/// exclusively by `store gc`.
const USERS_LOCK_FILE: &str = ".gridship-users.lock";
/// The users locks this process holds, one per store, until it ends.
static USERS_LOCKS: std::sync::Mutex<Vec<(PathBuf, LockFile)>> = std::sync::Mutex::new(Vec::new());
/// Layers the store reads from the engine instead of copying: one
/// [`EngineLink`] per diff ID, `engine-layers/HEX.json`.
const ENGINE_LINKS: &str = "engine-layers";
/// Manifests and configs are read into memory; anything bigger is not one.
pub const MAX_JSON_BLOB: u64 = 64 << 20;

/// An uncompressed layer the store holds as a reference into the engine's
/// layer store rather than a copy: gridship's own container snapshots,
/// which the engine keeps for as long as the store names them. Its digest
/// is its diff ID, so every read through it is verified by sha256 like a
/// blob file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineLink {
    /// The engine's root directory (`/var/lib/docker`).
    pub engine_root: PathBuf,
    /// The layer's chain ID, which names it in the engine's layerdb.
    pub chain_id: Digest,
    /// The bytes of its tar.
    pub size: u64,
    /// The engine image that holds it.
    pub image: String,
}

/// A blob's bytes: a file of the store, or a layer joined from the
/// engine's layer store.
pub enum BlobFile {
    File(File),
    Engine(Box<crate::layer_store::LayerTar>),
}

impl Read for BlobFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BlobFile::File(f) => f.read(buf),
            BlobFile::Engine(t) => t.read(buf),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    /// Opened to be written (the store, a destination): naming and
    /// resolving a name mark its manifest used, which `store gc` orders
    /// names by. A layout only read (`oci:DIR`) is left as it is.
    track_use: bool,
}

/// Bumped whenever the merge (crate::index::cache) could give another
/// result for the same layers, so states from older builds are never used.
pub const MERGE_STATE_FORMAT: u32 = 1;

/// The merge state after `diff_ids` (all layers up to one) in `dir`: the
/// store names them, so gc keeps the states its images need.
pub fn merge_state_path(dir: &Path, diff_ids: &[Digest]) -> PathBuf {
    let mut key = format!("gridship merge state {MERGE_STATE_FORMAT}\n");
    for d in diff_ids {
        key.push_str(&d.to_string());
        key.push('\n');
    }
    dir.join(format!("{}.json", Digest::of_bytes(key.as_bytes()).hex()))
}

impl Layout {
    /// Where merge states of this store's images are kept: beside the
    /// blobs they describe.
    pub fn merge_cache_dir(&self) -> PathBuf {
        self.root().join("gridship-cache").join("merge")
    }

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
        Ok(Layout {
            root,
            track_use: false,
        })
    }

    /// Open a layout, creating an empty one if the directory has none.
    /// This process holds the layout's users lock from now until it ends.
    pub fn open_or_create(root: impl Into<PathBuf>) -> Result<Layout> {
        let root = root.into();
        fs::create_dir_all(root.join("blobs/sha256")).at("creating", root.join("blobs/sha256"))?;
        let layout = Layout {
            root,
            track_use: true,
        };
        layout.hold_users_lock();
        if !layout.root.join(LAYOUT_FILE).exists() {
            fsutil::write_atomic(
                &layout.root.join(LAYOUT_FILE),
                br#"{"imageLayoutVersion":"1.0.0"}"#,
                0o644,
            )?;
        }
        if !layout.root.join("index.json").exists() {
            let _lock = layout.lock()?;
            if !layout.root.join("index.json").exists() {
                layout.write_index(&IndexJson::default())?;
            }
        }
        Ok(Layout {
            track_use: true,
            ..Layout::open(&layout.root)?
        })
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
        self.blob_size(digest)
            .is_some_and(|n| size.is_none_or(|s| s == n))
    }

    /// The size of a blob the store holds, as a file or a link to a layer
    /// the engine still has (not verified: reads verify).
    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.blob_path(digest))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .or_else(|| self.engine_link(digest).map(|l| l.size))
    }

    fn link_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join(ENGINE_LINKS)
            .join(format!("{}.json", digest.hex()))
    }

    /// The engine layer the store holds `digest` as, when the engine still
    /// has it.
    pub fn engine_link(&self, digest: &Digest) -> Option<EngineLink> {
        self.read_engine_link(digest).ok()
    }

    /// The link of layer `digest`, whose layer the engine still has; the
    /// error says which of the two is missing.
    fn read_engine_link(&self, digest: &Digest) -> Result<EngineLink> {
        let missing = |detail: String| Error::NotFound {
            what: format!("blob {digest}"),
            detail,
        };
        let path = self.link_path(digest);
        let raw = match fs::read(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(missing(format!("missing from {}", self.root.display())));
            }
            Err(e) => return Err(Error::io_path(&path, "reading", e)),
        };
        let link: EngineLink = serde_json::from_slice(&raw)
            .map_err(|e| Error::Other(format!("{}: not an engine link: {e}", path.display())))?;
        let engine = crate::layer_store::LayerStore::at_root(&link.engine_root);
        if !engine.has_layer(&link.chain_id) {
            return Err(missing(format!(
                "the store holds it as layer {} of the engine image {}, which the engine at {} no longer has (take the snapshot again)",
                link.chain_id,
                link.image,
                link.engine_root.display()
            )));
        }
        Ok(link)
    }

    /// Hold layer `diff_id` as a link into the engine's layer store.
    pub fn link_engine_layer(&self, diff_id: &Digest, link: &EngineLink) -> Result<()> {
        self.hold_users_lock();
        let dir = self.root.join(ENGINE_LINKS);
        fs::create_dir_all(&dir).at("creating", &dir)?;
        let json = serde_json::to_vec_pretty(link).expect("a link serializes");
        fsutil::write_atomic(&self.link_path(diff_id), &json, 0o644)
    }

    pub fn blob_writer(&self) -> Result<BlobWriter> {
        self.hold_users_lock();
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
    ) -> Result<VerifyingReader<BufReader<BlobFile>>> {
        let path = self.blob_path(digest);
        let (file, len) = match File::open(&path) {
            Ok(file) => {
                let len = file.metadata().at("reading", &path)?.len();
                (BlobFile::File(file), len)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.open_engine_link(digest)?,
            Err(e) => return Err(Error::io_path(&path, "opening", e)),
        };
        if let Some(size) = size
            && len != size
        {
            return Err(Error::DigestMismatch {
                what: format!("blob {} in {}", digest, self.root.display()),
                expected: format!("{size} bytes"),
                actual: format!("{len} bytes"),
            });
        }
        Ok(VerifyingReader::new(
            BufReader::with_capacity(1 << 20, file),
            digest.clone(),
            size,
            format!("blob {} in {}", digest, self.root.display()),
        ))
    }

    /// A blob the store holds as an engine layer, opened.
    fn open_engine_link(&self, digest: &Digest) -> Result<(BlobFile, u64)> {
        let link = self.read_engine_link(digest)?;
        let tar = crate::layer_store::LayerStore::at_root(&link.engine_root)
            .open_layer(&link.chain_id)?;
        Ok((BlobFile::Engine(Box::new(tar)), link.size))
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
        fsutil::write_atomic(&self.root.join("index.json"), &data, 0o644)
    }

    /// Exclusive lock over index.json updates (released on drop).
    fn lock(&self) -> Result<LockFile> {
        LockFile::take(&self.root.join(LOCK_FILE), Mode::Exclusive)
    }

    /// Hold this layout's users lock, shared, until the process ends (once
    /// per layout and process). While `store gc` holds it, wait for it. A
    /// filesystem without locks only loses gc's protection: a warning.
    fn hold_users_lock(&self) {
        let key = fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        let mut held = USERS_LOCKS.lock().unwrap_or_else(|p| p.into_inner());
        if held.iter().any(|(k, _)| *k == key) {
            return;
        }
        let path = self.root.join(USERS_LOCK_FILE);
        let locked = LockFile::open(&path).and_then(|f| {
            if !f.try_lock(Mode::Shared)? {
                tracing::warn!(
                    "{}: `gridship store gc` is cleaning this store; waiting for it",
                    self.root.display()
                );
                f.lock(Mode::Shared)?;
            }
            Ok(f)
        });
        match locked {
            Ok(f) => held.push((key, f)),
            Err(e) => tracing::warn!(
                "{e}: a `gridship store gc` running meanwhile could remove blobs this run has not named yet"
            ),
        }
    }

    /// Take the users lock exclusively: no other process writes the store
    /// until the returned lock is dropped. Waits up to `wait` for running
    /// writers, then fails saying so.
    pub fn lock_exclusive(&self, wait: Duration) -> Result<ExclusiveLock> {
        let key = fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        let held = USERS_LOCKS.lock().unwrap_or_else(|p| p.into_inner());
        if held.iter().any(|(k, _)| *k == key) {
            return Err(Error::Other(format!(
                "{}: this process writes the store, so it cannot also have it alone",
                self.root.display()
            )));
        }
        drop(held);
        let path = self.root.join(USERS_LOCK_FILE);
        let file = LockFile::open(&path)?;
        let started = std::time::Instant::now();
        let mut said = false;
        loop {
            if file.try_lock(Mode::Exclusive)? {
                return Ok(ExclusiveLock { _file: file });
            }
            if started.elapsed() >= wait {
                return Err(Error::Other(format!(
                    "{}: another gridship process is writing this store (a promote, copy, build or nightly; \
                     it names what it wrote only at its end), so nothing was removed{}\n  \
                     hint: run again when it has ended, or wait for it with --wait DURATION",
                    self.root.display(),
                    if wait.is_zero() {
                        String::new()
                    } else {
                        format!(" after waiting {}s", wait.as_secs())
                    }
                )));
            }
            if !said {
                tracing::warn!(
                    "{}: another gridship process is writing this store; waiting for it",
                    self.root.display()
                );
                said = true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Mark a manifest used now (its blob's mtime), in a layout written here.
    fn mark_used(&self, digest: &Digest) {
        if self.track_use {
            // Best effort: only gc's order of names depends on it.
            let _ =
                File::open(self.blob_path(digest)).and_then(|f| f.set_modified(SystemTime::now()));
        }
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
        for d in &index.manifests {
            reachable.extend(self.reach(d).blobs);
        }
        let now = unix_secs(SystemTime::now()).unwrap_or(0);
        let mut removed = 0;
        let files = list_files(&self.root, "blobs/sha256")?.into_iter().chain(
            list_files(&self.root, ENGINE_LINKS)?
                .into_iter()
                .filter_map(|(name, f)| Some((name.strip_suffix(".json")?.to_string(), f))),
        );
        for (name, file) in files {
            let Ok(digest) = Digest::from_hex(&name) else {
                continue;
            };
            let old = file
                .modified
                .is_some_and(|t| now - t >= min_age.as_secs() as i64);
            if !reachable.contains(&digest) && old {
                let path = self.root.join(&file.path);
                fs::remove_file(&path).at("removing", &path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Whether the store has ever held a layer as an engine link.
    pub fn has_engine_links(&self) -> bool {
        self.root.join(ENGINE_LINKS).is_dir()
    }

    /// Every blob a name in index.json leads to (image configs included:
    /// an engine image's ID is its config's digest).
    pub fn reachable_blobs(&self) -> Result<std::collections::HashSet<Digest>> {
        let index = self.read_index()?;
        Ok(index
            .manifests
            .iter()
            .flat_map(|d| self.reach(d).blobs)
            .collect())
    }

    /// What one index.json entry leads to: every blob it names (itself,
    /// manifests, configs, layers) and the layers' diff_ids of each image.
    /// A missing or unreadable document keeps what is known and adds
    /// nothing below it.
    fn reach(&self, entry: &Descriptor) -> Reach {
        let mut reach = Reach::default();
        let mut todo = vec![entry.clone()];
        while let Some(d) = todo.pop() {
            if !reach.blobs.insert(d.digest.clone()) {
                continue;
            }
            let is_manifest = crate::oci::media::is_manifest(&d.media_type);
            if !(is_manifest || crate::oci::media::is_index(&d.media_type)) {
                continue;
            }
            let Ok(raw) = self.read_blob(&d.digest, Some(d.size)) else {
                continue;
            };
            if is_manifest {
                if let Ok(m) = serde_json::from_slice::<crate::oci::Manifest>(&raw) {
                    reach.blobs.insert(m.config.digest.clone());
                    if let Ok(config) = self.read_blob(&m.config.digest, Some(m.config.size))
                        && let Ok(config) =
                            serde_json::from_slice::<crate::oci::ImageConfig>(&config)
                    {
                        reach.created = reach.created.or(config.created);
                        reach.diff_ids.push(config.rootfs.diff_ids);
                    }
                    todo.extend(m.layers);
                }
            } else if let Ok(i) = serde_json::from_slice::<IndexJson>(&raw) {
                todo.extend(i.manifests);
            }
        }
        reach
    }

    /// Record `desc` under a ref name, replacing what had that name.
    pub fn set_ref(&self, name: &str, desc: &Descriptor) -> Result<()> {
        let mut desc = desc.clone();
        desc.annotations
            .insert(REF_NAME_ANNOTATION.into(), name.to_string());
        let digest = desc.digest.clone();
        self.update_index(|index| {
            index.manifests.retain(|d| d.ref_name() != Some(name));
            index.manifests.push(desc);
        })?;
        self.mark_used(&digest);
        Ok(())
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
                .inspect(|d| self.mark_used(&d.digest))
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
}

// ------------------------------------------------------------ ls, du, gc

/// Names of temporary files in the store's own directories: blob writers
/// (`.tmp-blob-`), [`fsutil::write_atomic`], `copy ... docker-daemon:` archives.
const TEMP_PREFIXES: [&str; 3] = [".tmp", fsutil::TEMP_PREFIX, ".docker-load-"];

/// What [`Layout::reach`] found below one index.json entry.
#[derive(Default)]
struct Reach {
    blobs: std::collections::HashSet<Digest>,
    /// The layers' diff_ids of each image config reached.
    diff_ids: Vec<Vec<Digest>>,
    /// The first image config's `created`.
    created: Option<String>,
}

/// A file in the store.
#[derive(Debug, Clone, Serialize)]
pub struct StoredFile {
    /// Relative to the store.
    pub path: String,
    pub bytes: u64,
    /// Unix seconds.
    pub modified: Option<i64>,
}

/// One entry of index.json, as `store ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredImage {
    /// None: an entry without a name (kept like a named one).
    pub name: Option<String>,
    pub digest: Digest,
    pub media_type: String,
    /// The bytes of the blobs it leads to (manifest, config, layers).
    pub bytes: u64,
    /// Of those, the bytes another entry leads to as well.
    pub shared_bytes: u64,
    /// Of its layers, the bytes it holds as links into the engine's layer
    /// store (gridship's container snapshots): not in `bytes`.
    pub in_engine: u64,
    /// Blobs it names that are not in the store (nor in the engine, for
    /// a link).
    pub missing_blobs: usize,
    /// The image config's `created`.
    pub created: Option<String>,
    /// Unix seconds it was last named or read by name.
    pub last_used: Option<i64>,
}

/// A merge state (see [`crate::index::cache`]) and whether an image in the
/// store needs it.
#[derive(Debug, Clone, Serialize)]
pub struct MergeState {
    #[serde(flatten)]
    pub file: StoredFile,
    pub needed: bool,
}

/// The store's bytes by kind. `total` counts like `du -sb`: every file
/// once, directories included.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DiskUsage {
    /// Blobs an index.json entry leads to, each counted once.
    pub named: u64,
    /// Of `named`, the blobs more than one entry leads to.
    pub shared: u64,
    /// Blobs no entry leads to (`store gc` removes them).
    pub unreferenced: u64,
    /// Temporary files: of running writers, or left by killed runs.
    pub temp: u64,
    /// Merge states, and of those the ones no image in the store needs.
    pub merge_cache: u64,
    pub merge_cache_unneeded: u64,
    /// index.json, locks, the nightly state, directories.
    pub other: u64,
    pub total: u64,
    /// Layers the named images hold as links into the engine's layer
    /// store: read from there, not on the store's disk.
    pub in_engine: u64,
}

/// Everything in a store: `store ls` and `store du`.
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    pub store: String,
    pub images: Vec<StoredImage>,
    pub unreferenced: Vec<StoredFile>,
    pub temp: Vec<StoredFile>,
    pub merge_states: Vec<MergeState>,
    pub usage: DiskUsage,
}

impl Inventory {
    /// A store that does not exist yet.
    pub fn empty(root: &Path) -> Inventory {
        Inventory {
            store: root.display().to_string(),
            images: Vec::new(),
            unreferenced: Vec::new(),
            temp: Vec::new(),
            merge_states: Vec::new(),
            usage: DiskUsage::default(),
        }
    }
}

/// What `store gc` removes besides unreferenced blobs, temporary files and
/// merge states no image needs.
#[derive(Debug, Clone, Default)]
pub struct GcOptions {
    /// Names not used for this long.
    pub older_than: Option<Duration>,
    /// Names, least recently used first, until the store takes at most
    /// this many bytes.
    pub max_size: Option<u64>,
    pub dry_run: bool,
    /// Unix seconds (see [`crate::clock`]).
    pub now: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RemovedName {
    pub name: String,
    pub digest: Digest,
    pub last_used: Option<i64>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct GcReport {
    pub store: String,
    pub dry_run: bool,
    pub names: Vec<RemovedName>,
    pub blobs: Vec<StoredFile>,
    pub temp: Vec<StoredFile>,
    pub merge_states: Vec<StoredFile>,
    /// Container snapshots the engine kept for this store that no name
    /// needs any more: removed from the engine (tags).
    pub engine_snapshots: Vec<String>,
    /// The bytes of the files removed (or, with dry_run, that would be).
    pub bytes_freed: u64,
    pub before: DiskUsage,
    /// Measured after gc; none for a dry run.
    pub after: Option<DiskUsage>,
}

impl GcReport {
    /// Nothing removed from a store that does not exist.
    pub fn empty(root: &Path, dry_run: bool) -> GcReport {
        GcReport {
            store: root.display().to_string(),
            dry_run,
            names: Vec::new(),
            blobs: Vec::new(),
            temp: Vec::new(),
            merge_states: Vec::new(),
            engine_snapshots: Vec::new(),
            bytes_freed: 0,
            before: DiskUsage::default(),
            after: None,
        }
    }
}

/// A store's files, classified, and what each index.json entry leads to.
struct StoreScan {
    index: IndexJson,
    reaches: Vec<Reach>,
    blobs: std::collections::HashMap<Digest, StoredFile>,
    /// Layers held as engine links: the link file, and the layer's bytes
    /// when the engine still has it.
    links: std::collections::HashMap<Digest, (StoredFile, Option<u64>)>,
    temp: Vec<StoredFile>,
    states: Vec<StoredFile>,
    merge_dir: PathBuf,
    total: u64,
}

/// What is left to remove when only some entries stay.
struct Sweep<'a> {
    blobs: Vec<&'a StoredFile>,
    states: Vec<&'a StoredFile>,
    /// How many staying entries lead to each blob.
    refs: std::collections::HashMap<&'a Digest, usize>,
}

impl StoreScan {
    fn sweep(&self, stays: impl Fn(usize) -> bool) -> Sweep<'_> {
        let mut refs = std::collections::HashMap::new();
        let mut needed = std::collections::HashSet::new();
        for (_, reach) in self.reaches.iter().enumerate().filter(|(i, _)| stays(*i)) {
            for d in &reach.blobs {
                *refs.entry(d).or_insert(0) += 1;
            }
            for ids in &reach.diff_ids {
                needed
                    .extend((1..=ids.len()).map(|n| merge_state_path(&self.merge_dir, &ids[..n])));
            }
        }
        let blobs = self
            .blobs
            .iter()
            .chain(self.links.iter().map(|(d, (f, _))| (d, f)))
            .filter(|(d, _)| !refs.contains_key(d))
            .map(|(_, f)| f)
            .collect();
        let states = self
            .states
            .iter()
            .filter(|f| !needed.contains(&self.merge_dir.join(file_name(&f.path))))
            .collect();
        Sweep {
            blobs,
            states,
            refs,
        }
    }

    /// The store's files for a digest: its blob file, its engine link.
    fn files_of<'a>(&'a self, d: &Digest) -> impl Iterator<Item = &'a StoredFile> + use<'a> {
        self.blobs
            .get(d)
            .into_iter()
            .chain(self.links.get(d).map(|(f, _)| f))
    }

    fn held(&self, d: &Digest) -> bool {
        self.blobs.contains_key(d) || self.links.get(d).is_some_and(|(_, size)| size.is_some())
    }

    fn last_used(&self, i: usize) -> Option<i64> {
        self.blobs
            .get(&self.index.manifests[i].digest)
            .and_then(|f| f.modified)
    }
}

impl Sweep<'_> {
    /// Bytes removed, with the temporary files of `scan`.
    fn bytes(&self, scan: &StoreScan) -> u64 {
        self.blobs
            .iter()
            .chain(&self.states)
            .copied()
            .chain(&scan.temp)
            .map(|f| f.bytes)
            .sum()
    }
}

/// `30d`, `1d12h`, `90s`: how `--older-than` is written.
fn short_duration(d: Duration) -> String {
    let mut rest = d.as_secs();
    let mut out = String::new();
    for (unit, secs) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if rest >= secs || (rest == 0 && out.is_empty() && secs == 1) {
            out.push_str(&format!("{}{unit}", rest / secs));
            rest %= secs;
        }
    }
    out
}

fn file_name(rel: &str) -> &str {
    rel.rsplit('/').next().unwrap_or(rel)
}

fn unix_secs(t: SystemTime) -> Option<i64> {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs() as i64)
}

/// The regular files directly in `root/rel`, by name (none if it is missing).
fn list_files(root: &Path, rel: &str) -> Result<Vec<(String, StoredFile)>> {
    let dir = root.join(rel);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io_path(&dir, "reading", e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.at("reading", &dir)?;
        let Ok(meta) = entry.metadata() else { continue };
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if meta.is_file() {
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let modified = meta.modified().ok().and_then(unix_secs);
            files.push((
                name,
                StoredFile {
                    path,
                    bytes: meta.len(),
                    modified,
                },
            ));
        }
    }
    Ok(files)
}

/// Bytes under `path` as `du -sb` counts them: apparent sizes of every
/// file, directory and link, a file with several links once.
fn du_bytes(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut todo = vec![path.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            // Gone meanwhile (a temporary file renamed).
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io_path(&p, "reading", e)),
        };
        if !meta.is_dir() && meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total += meta.len();
        if meta.is_dir() {
            match fs::read_dir(&p) {
                Ok(entries) => todo.extend(entries.filter_map(|e| e.ok()).map(|e| e.path())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io_path(&p, "reading", e)),
            }
        }
    }
    Ok(total)
}

/// The store held alone by `store gc` (see [`Layout::lock_exclusive`]).
pub struct ExclusiveLock {
    _file: LockFile,
}

impl Layout {
    fn scan(&self) -> Result<StoreScan> {
        let index = self.read_index()?;
        let reaches = index.manifests.iter().map(|d| self.reach(d)).collect();
        let mut blobs = std::collections::HashMap::new();
        let mut temp = Vec::new();
        for (name, file) in list_files(&self.root, "blobs/sha256")? {
            match Digest::from_hex(&name) {
                Ok(d) => {
                    blobs.insert(d, file);
                }
                Err(_) => temp.push(file),
            }
        }
        let mut links = std::collections::HashMap::new();
        for (name, file) in list_files(&self.root, ENGINE_LINKS)? {
            match name.strip_suffix(".json").map(Digest::from_hex) {
                Some(Ok(d)) => {
                    let size = self.engine_link(&d).map(|l| l.size);
                    links.insert(d, (file, size));
                }
                _ => temp.push(file),
            }
        }
        for (name, file) in list_files(&self.root, "")? {
            if TEMP_PREFIXES.iter().any(|p| name.starts_with(p)) {
                temp.push(file);
            }
        }
        let merge_dir = self.merge_cache_dir();
        let merge_rel = merge_dir
            .strip_prefix(&self.root)
            .unwrap_or(&merge_dir)
            .to_string_lossy()
            .to_string();
        let mut states = Vec::new();
        for (name, file) in list_files(&self.root, &merge_rel)? {
            if name.ends_with(".json") {
                states.push(file);
            } else {
                temp.push(file);
            }
        }
        Ok(StoreScan {
            index,
            reaches,
            blobs,
            links,
            temp,
            states,
            merge_dir,
            total: du_bytes(&self.root)?,
        })
    }

    fn usage(scan: &StoreScan, sweep: &Sweep) -> DiskUsage {
        let sum =
            |files: &mut dyn Iterator<Item = &StoredFile>| files.map(|f| f.bytes).sum::<u64>();
        let on_disk = |min: usize| {
            sweep
                .refs
                .iter()
                .filter(|(_, n)| **n >= min)
                .flat_map(|(d, _)| scan.files_of(d))
                .map(|f| f.bytes)
                .sum::<u64>()
        };
        let mut u = DiskUsage {
            named: on_disk(1),
            shared: on_disk(2),
            unreferenced: sum(&mut sweep.blobs.iter().copied()),
            temp: sum(&mut scan.temp.iter()),
            merge_cache: sum(&mut scan.states.iter()),
            merge_cache_unneeded: sum(&mut sweep.states.iter().copied()),
            in_engine: sweep
                .refs
                .keys()
                .filter_map(|d| scan.links.get(*d)?.1)
                .sum(),
            other: 0,
            total: scan.total,
        };
        u.other = u
            .total
            .saturating_sub(u.named + u.unreferenced + u.temp + u.merge_cache);
        u
    }

    /// Every image, unreferenced blob, temporary file and merge state of
    /// the store, with sizes.
    pub fn inventory(&self) -> Result<Inventory> {
        let scan = self.scan()?;
        let sweep = scan.sweep(|_| true);
        let images = scan
            .index
            .manifests
            .iter()
            .zip(&scan.reaches)
            .enumerate()
            .map(|(i, (d, reach))| {
                let on_disk: Vec<(&Digest, &StoredFile)> = reach
                    .blobs
                    .iter()
                    .flat_map(|b| scan.files_of(b).map(move |f| (b, f)))
                    .collect();
                StoredImage {
                    name: d.ref_name().map(str::to_string),
                    digest: d.digest.clone(),
                    media_type: d.media_type.clone(),
                    bytes: on_disk.iter().map(|(_, f)| f.bytes).sum(),
                    shared_bytes: on_disk
                        .iter()
                        .filter(|(b, _)| sweep.refs.get(b).is_some_and(|n| *n > 1))
                        .map(|(_, f)| f.bytes)
                        .sum(),
                    in_engine: reach
                        .blobs
                        .iter()
                        .filter_map(|b| scan.links.get(b)?.1)
                        .sum(),
                    missing_blobs: reach.blobs.iter().filter(|b| !scan.held(b)).count(),
                    created: reach.created.clone(),
                    last_used: scan.last_used(i),
                }
            })
            .collect();
        let unneeded: std::collections::HashSet<&str> =
            sweep.states.iter().map(|f| f.path.as_str()).collect();
        let mut unreferenced: Vec<StoredFile> = sweep.blobs.iter().map(|f| (*f).clone()).collect();
        unreferenced.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Inventory {
            store: self.root.display().to_string(),
            images,
            unreferenced,
            temp: scan.temp.clone(),
            merge_states: scan
                .states
                .iter()
                .map(|f| MergeState {
                    file: f.clone(),
                    needed: !unneeded.contains(f.path.as_str()),
                })
                .collect(),
            usage: Self::usage(&scan, &sweep),
        })
    }

    /// Remove what no name needs: unreferenced blobs, temporary files of
    /// killed runs, merge states no image in the store needs; with
    /// `older_than` and `max_size`, names too (least recently used first)
    /// and then what only they needed. The caller holds the store alone
    /// ([`Layout::lock_exclusive`]): no writer runs, so no temporary file
    /// or unnamed blob belongs to a live one.
    pub fn gc(&self, _alone: &ExclusiveLock, opts: &GcOptions) -> Result<GcReport> {
        let scan = self.scan()?;
        let before = Self::usage(&scan, &scan.sweep(|_| true));
        let mut order: Vec<usize> = (0..scan.index.manifests.len())
            .filter(|&i| scan.index.manifests[i].ref_name().is_some())
            .collect();
        order.sort_by_key(|&i| (scan.last_used(i), scan.index.manifests[i].ref_name()));
        let mut dropped: Vec<(usize, String)> = Vec::new();
        if let Some(age) = opts.older_than {
            for &i in &order {
                if scan
                    .last_used(i)
                    .is_none_or(|t| opts.now - t >= age.as_secs() as i64)
                {
                    dropped.push((
                        i,
                        format!("unused for {} or more (--older-than)", short_duration(age)),
                    ));
                }
            }
        }
        if let Some(max) = opts.max_size {
            for &i in &order {
                let stays = |j| !dropped.iter().any(|(k, _)| *k == j);
                if scan.total.saturating_sub(scan.sweep(stays).bytes(&scan)) <= max {
                    break;
                }
                if stays(i) {
                    dropped.push((
                        i,
                        format!(
                            "least recently used while the store is over {max} bytes (--max-size)"
                        ),
                    ));
                }
            }
        }
        let sweep = scan.sweep(|j| !dropped.iter().any(|(k, _)| *k == j));
        let names: Vec<RemovedName> = dropped
            .iter()
            .map(|(i, reason)| {
                let d = &scan.index.manifests[*i];
                RemovedName {
                    name: d.ref_name().unwrap_or_default().to_string(),
                    digest: d.digest.clone(),
                    last_used: scan.last_used(*i),
                    reason: reason.clone(),
                }
            })
            .collect();
        if !opts.dry_run {
            // Names first, then the files nothing names any more.
            if !names.is_empty() {
                self.update_index(|index| {
                    index.manifests.retain(|d| {
                        !names
                            .iter()
                            .any(|n| d.ref_name() == Some(n.name.as_str()) && d.digest == n.digest)
                    })
                })?;
            }
            for f in sweep
                .blobs
                .iter()
                .copied()
                .chain(&scan.temp)
                .chain(sweep.states.iter().copied())
            {
                let path = self.root.join(&f.path);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io_path(&path, "removing", e)),
                }
            }
        }
        let after = if opts.dry_run {
            None
        } else {
            let scan = self.scan()?;
            Some(Self::usage(&scan, &scan.sweep(|_| true)))
        };
        let sorted = |files: &[&StoredFile]| {
            let mut v: Vec<StoredFile> = files.iter().map(|f| (*f).clone()).collect();
            v.sort_by(|a, b| a.path.cmp(&b.path));
            v
        };
        Ok(GcReport {
            store: self.root.display().to_string(),
            dry_run: opts.dry_run,
            bytes_freed: sweep.bytes(&scan),
            names,
            blobs: sorted(&sweep.blobs),
            temp: sorted(&scan.temp.iter().collect::<Vec<_>>()),
            merge_states: sorted(&sweep.states),
            engine_snapshots: Vec::new(),
            before,
            after,
        })
    }
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
