//! Publishing images as unpacked trees in a CernVM-FS repository, in DUCC's
//! layout (reference/cvmfs-ducc.md):
//!
//! ```text
//! .flat/xx/<config digest>/          merged tree + /.singularity.d, a nested catalog
//! .layers/xx/<layer digest>/layerfs/ one layer as it is (--layers), a nested catalog
//! .metadata/REG/REPO:TAG/manifest.json   written last: the commit marker
//! REG/REPO:TAG -> ../../.flat/xx/<digest>  the public, relative symlink
//! podmanStore/                       podman's additional image store (podman.rs)
//! .multiarch/ARCH/REG/REPO:TAG       one platform of an index (multiarch.rs)
//! ```
//!
//! OCI runtime bundles over published trees are in bundle.rs.
//!
//! Every tree is built under a temporary name and renamed into place (dir and
//! cvmfs-server backends) or ingested in one call (ingest backend), so a
//! public symlink only ever points at a complete tree; the symlink is
//! replaced by a rename; the manifest comes last. A run killed at any moment
//! leaves the repository as it was or complete, and the next run finishes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::encode::dir::{UnpackOptions, write_tree};
use crate::error::IoContext;
use crate::fsutil::write_atomic;
use crate::image::{Image, media};
use crate::index::{Data, FsIndex, Kind, NodeId};
use crate::reference::RegistryRef;
use crate::sink::{Artifact, JobImage, Sink, SinkInput, Spec, Trees};
use crate::store::Descriptor;
use crate::transform::{RuleReport, Step};
use crate::{Error, Result};

// The setting lives with config.yaml's (cvmfs.backend), which reads it.
pub use crate::config::file::BackendKind;

pub mod bundle;
pub mod layer_meta;
pub mod lock;
pub mod multiarch;
pub mod podman;
pub mod retention;

const TMP_MARK: &str = crate::fsutil::TEMP_PREFIX;
const CATALOG: &str = ".cvmfscatalog";
const SCHEDULE: &str = ".metadata/remove-schedule.json";

/// A repository to publish into.
#[derive(Debug, Clone)]
pub struct RepoConfig {
    /// Repository name (`unpacked.example.org`).
    pub name: String,
    pub backend: BackendKind,
    /// The tree: `--root` for dir; `MOUNT/NAME` (default /cvmfs/NAME) else.
    pub root: PathBuf,
    /// The `cvmfs_server` program (tests point it at a recording stand-in).
    pub cvmfs_server: PathBuf,
    /// The repository's lock file (see `lock`): shared by `dir`
    /// publishers, exclusive for gc and the server backends.
    pub lock: PathBuf,
    /// How long to wait for another publisher's lock or transaction.
    pub lock_timeout: std::time::Duration,
    /// Hold the repository alone from the start (gc): waiting for a shared
    /// lock to turn exclusive would let two such holders starve each other.
    pub exclusive: bool,
}

impl RepoConfig {
    pub fn new(
        name: &str,
        backend: BackendKind,
        root: Option<PathBuf>,
        mount: Option<PathBuf>,
    ) -> Result<RepoConfig> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(Error::bad_input(
                format!("--repo {name}"),
                "a repository name is a DNS-like name, e.g. unpacked.example.org",
            ));
        }
        let root = match (&backend, root) {
            (BackendKind::Dir, Some(r)) => r,
            (BackendKind::Dir, None) => {
                return Err(Error::BadInput {
                    input: "--backend dir".into(),
                    place: String::new(),
                    reason: "needs --root DIR".into(),
                    hint: Some("give the directory that holds the repository tree".into()),
                });
            }
            (_, Some(r)) => r,
            (_, None) => mount.unwrap_or_else(|| PathBuf::from("/cvmfs")).join(name),
        };
        // One lock per repository and tree: two publishers of the same
        // repository on this machine exclude each other.
        let canonical = root.canonicalize().unwrap_or_else(|_| root.clone());
        let tag =
            Digest::of_bytes(canonical.as_os_str().as_encoded_bytes()).hex()[..12].to_string();
        let lock = std::env::temp_dir().join(format!("gridship-cvmfs-{name}-{tag}.lock"));
        Ok(RepoConfig {
            name: name.into(),
            backend,
            root,
            cvmfs_server: std::env::var_os("GRIDSHIP_CVMFS_SERVER")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("cvmfs_server")),
            lock,
            lock_timeout: std::time::Duration::from_secs(600),
            exclusive: false,
        })
    }
}

/// An open repository: the lock is held while this lives.
pub struct Repo {
    pub config: RepoConfig,
    lock: lock::Held,
    /// The repository lock is exclusive (gc, server backends): nobody
    /// else writes, per-image locks are not needed to sweep leftovers.
    exclusive: bool,
    /// The cvmfs-server transaction of [`Repo::transaction`]: opened at
    /// the first write, so a publish that changes nothing publishes no
    /// new revision.
    txn: std::cell::Cell<Txn>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Txn {
    /// Not in [`Repo::transaction`] (or not a cvmfs-server repository).
    None,
    /// In [`Repo::transaction`], nothing written yet.
    Wanted,
    /// `cvmfs_server transaction` succeeded: publish or abort at the end.
    Open,
}

/// Where cvmfs_server keeps a repository's spool (`in_transaction.lock`).
const SPOOL: &str = "/var/spool/cvmfs";

/// The name an image is published under: `REGISTRY/REPOSITORY:TAG`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PublicName {
    pub registry: String,
    pub repository: String,
    pub tag: String,
}

impl PublicName {
    pub fn from_ref(r: &RegistryRef) -> Result<PublicName> {
        let tag = r.tag.clone().ok_or_else(|| {
            Error::bad_input(
                format!("docker://{r}"),
                "CVMFS names images by tag; give REPO:TAG",
            )
        })?;
        Ok(PublicName {
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            tag,
        })
    }

    pub fn parse(s: &str) -> Result<PublicName> {
        let r = crate::reference::parse_registry(s).map_err(|e| Error::BadInput {
            input: s.into(),
            place: "--name: ".into(),
            reason: e,
            hint: Some("write it like registry.example.org/group/image:tag".into()),
        })?;
        PublicName::from_ref(&r)
    }

    /// `REG/REPO:TAG`, relative to the repository root.
    pub fn link_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "{}/{}:{}",
            self.registry, self.repository, self.tag
        ))
    }

    pub fn metadata_dir(&self) -> PathBuf {
        Path::new(".metadata").join(self.link_path())
    }
}

/// A relative symlink target from `link` to `to` (both relative to the
/// repository root): up to the root, then down.
pub(crate) fn relative_target(link: &Path, to: &Path) -> PathBuf {
    let depth = link.components().count() - 1;
    let mut t = PathBuf::new();
    for _ in 0..depth {
        t.push("..");
    }
    t.join(to)
}

impl std::fmt::Display for PublicName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.registry, self.repository, self.tag)
    }
}

/// `.flat/xx/<hex>` for a config digest.
pub fn flat_path(config: &Digest) -> PathBuf {
    Path::new(".flat")
        .join(&config.hex()[..2])
        .join(config.hex())
}

/// `.layers/xx/<hex>` for a layer digest.
pub fn layer_path(layer: &Digest) -> PathBuf {
    Path::new(".layers")
        .join(&layer.hex()[..2])
        .join(layer.hex())
}

/// The manifest as DUCC stores it: re-encoded with these four fields (its
/// digest differs from the registry's; DUCC only compares config digests).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DuccManifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

impl DuccManifest {
    fn of(image: &Image) -> DuccManifest {
        let strip =
            |d: &Descriptor| Descriptor::new(d.media_type.clone(), d.digest.clone(), d.size);
        DuccManifest {
            schema_version: 2,
            media_type: image
                .manifest
                .media_type
                .clone()
                .unwrap_or_else(|| media::OCI_MANIFEST.into()),
            config: strip(&image.manifest.config),
            layers: image.manifest.layers.iter().map(strip).collect(),
        }
    }
}

/// A tree no public symlink or manifest uses any more, and since when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Scheduled {
    pub path: PathBuf,
    /// Unix seconds when it was found unused.
    pub since: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub was: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PublishReport {
    pub name: String,
    pub config_digest: String,
    pub flat: PathBuf,
    /// `built`, `present` (same config digest already there).
    pub flat_status: String,
    pub layers_built: Vec<String>,
    pub layers_present: Vec<String>,
    /// Files hardlinked from an earlier tree of the same layers.
    pub reused_files: u64,
    /// Lower layers whose merge came from the cache (not read again).
    pub merge_cached_layers: usize,
    /// Layers read and merged by this publish (0 when given a merged tree).
    pub layers_merged: u64,
    /// `linux/arm64/v8` for one platform of a multi-arch index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The image's ID in `podmanStore/` (--podman): its config digest's hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub podman_image: Option<String>,
    /// The tag pointed at another tree before (now scheduled for gc).
    pub replaced: Option<PathBuf>,
    pub transforms: Vec<RuleReport>,
    /// Regular-file bytes of the tree, when this publish built it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_bytes: Option<u64>,
    /// What the user should know about this publish (also logged).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub seconds: f64,
}

/// Now, by the clock retention decisions use (`GRIDSHIP_NOW` in tests).
fn now() -> i64 {
    crate::clock::now().unwrap_or_else(|e| {
        tracing::warn!("{e}; using the system clock");
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    })
}

impl Repo {
    /// Open a repository, taking its lock: shared for the `dir` backend
    /// (publishers of different images run at once, each locking its
    /// image), exclusive for the server backends (one transaction at a
    /// time, and for gc: `config.exclusive`); waits up to `lock_timeout`
    /// for other holders. When nobody
    /// else has it open, what a killed run left behind is cleared.
    pub fn open(config: RepoConfig) -> Result<Repo> {
        let what = format!("repository {}", config.name);
        let (held, exclusive) = if config.backend == BackendKind::Dir && !config.exclusive {
            match lock::try_take(&config.lock, lock::Mode::Exclusive)? {
                Some(h) => (h, true),
                None => (
                    lock::take(&config.lock, lock::Mode::Shared, config.lock_timeout, &what)?,
                    false,
                ),
            }
        } else {
            let h = lock::take(
                &config.lock,
                lock::Mode::Exclusive,
                config.lock_timeout,
                &what,
            )?;
            (h, true)
        };
        let mut repo = Repo {
            config,
            lock: held,
            exclusive,
            txn: std::cell::Cell::new(Txn::None),
        };
        if repo.config.backend == BackendKind::Dir {
            fs::create_dir_all(&repo.config.root).at("creating", &repo.config.root)?;
            if repo.exclusive {
                repo.clean_leftovers()?;
                if !repo.config.exclusive {
                    // Other publishers may join now; each sweeps what it locks.
                    repo.lock.share()?;
                    repo.exclusive = false;
                }
            }
            // Under the store's own lock: safe beside live publishers.
            podman::sweep(&repo)?;
        }
        Ok(repo)
    }

    /// Make this the only publisher of the repository (gc), waiting for
    /// the others to finish; then clear what killed runs left.
    pub fn make_exclusive(&mut self) -> Result<()> {
        if self.exclusive {
            return Ok(());
        }
        let what = format!("repository {} (gc)", self.config.name);
        self.lock.make_exclusive(self.config.lock_timeout, &what)?;
        self.exclusive = true;
        if self.config.backend == BackendKind::Dir {
            self.clean_leftovers()?;
        }
        Ok(())
    }

    /// Lock one public name, tree or the schedule (a no-op cost when the
    /// repository lock is exclusive, but taken anyway: cheap, uniform).
    fn lock_item(&self, key: &str, what: &str) -> Result<lock::Held> {
        lock::take(
            &lock::item_path(&self.config.lock, key),
            lock::Mode::Exclusive,
            self.config.lock_timeout,
            what,
        )
    }

    /// Temporary entries in `dir` (relative) named `.{stem}{TMP_MARK}...`:
    /// only the holder of the lock of `stem` writes them, so the holder
    /// may clear what a killed holder left.
    fn sweep_tmp(&self, dir: &Path, stem: &str) -> Result<()> {
        if self.config.backend == BackendKind::Ingest {
            return Ok(());
        }
        let dir = self.abs(dir);
        let prefix = format!("{stem}{TMP_MARK}");
        let Ok(rd) = fs::read_dir(&dir) else {
            return Ok(());
        };
        for e in rd {
            let e = e.at("reading", &dir)?;
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                self.begin_write()?;
                remove_any(&e.path())?;
            }
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.config.root
    }

    fn abs(&self, rel: &Path) -> PathBuf {
        self.config.root.join(rel)
    }

    /// Temporary trees, files and links of an interrupted run (the lock is
    /// ours, so nobody else is writing them): under `.flat/xx`, in layer
    /// directories, anywhere in `.metadata` and beside the public links.
    fn clean_leftovers(&self) -> Result<()> {
        let root = &self.config.root;
        let mut todo: Vec<(PathBuf, usize)> = vec![(root.clone(), usize::MAX)];
        while let Some((dir, depth)) = todo.pop() {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd {
                let e = e.at("reading", &dir)?;
                let name = e.file_name().to_string_lossy().into_owned();
                let path = e.path();
                if name.contains(TMP_MARK) {
                    remove_any(&path)?;
                    continue;
                }
                if depth == 0 || !e.file_type().at("reading", &path)?.is_dir() {
                    continue;
                }
                // Inside published trees nothing is ours to clear: look only
                // as deep as gridship's own directories go.
                let next = match (dir == *root, name.as_str()) {
                    (true, ".flat") => 1,
                    (true, ".layers") => 2,
                    (true, ".metadata") => usize::MAX,
                    (true, _) if name.starts_with('.') => continue,
                    _ => depth.saturating_sub(1),
                };
                todo.push((path, next));
            }
        }
        Ok(())
    }

    fn server(&self, args: &[&str]) -> Result<()> {
        let out = Command::new(&self.config.cvmfs_server)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                Error::io(
                    format!(
                        "running {} (is cvmfs-server installed?)",
                        self.config.cvmfs_server.display()
                    ),
                    e,
                )
            })?;
        self.server_status(args, &out)
    }

    /// A `cvmfs_server` call that failed is an error with its stderr.
    fn server_status(&self, args: &[&str], out: &std::process::Output) -> Result<()> {
        if out.status.success() {
            return Ok(());
        }
        Err(Error::Other(format!(
            "{} {} failed ({}): {}",
            self.config.cvmfs_server.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }

    /// Run `f` in at most one transaction (cvmfs-server): it is opened at
    /// the first write, published when `f` succeeds and aborted on any
    /// error (the error returned is `f`'s, never the abort's). When `f`
    /// writes nothing, no transaction is opened and no revision published.
    pub fn transaction<T>(&mut self, f: impl FnOnce(&mut Repo) -> Result<T>) -> Result<T> {
        if self.config.backend != BackendKind::CvmfsServer {
            return f(self);
        }
        let name = self.config.name.clone();
        // A transaction our killed predecessor left open is aborted first:
        // the marker says it was ours (we hold the lock, so it is not
        // running). Until then /cvmfs/REPO shows its half-written work.
        let marker = self.txn_marker();
        if marker.exists() {
            tracing::warn!("aborting the transaction a killed gridship run left open on {name}");
            self.server(&["abort", "-f", &name])?;
            let _ = fs::remove_file(&marker);
        }
        self.txn.set(Txn::Wanted);
        // One someone else has open: what the mount shows is their
        // unpublished work, so wait for it before reading anything.
        let foreign = Path::new(SPOOL).join(&name).join("in_transaction.lock");
        if foreign.exists()
            && let Err(e) = self.begin_write()
        {
            self.txn.set(Txn::None);
            return Err(e);
        }
        let result = f(self);
        if self.txn.replace(Txn::None) != Txn::Open {
            if result.is_ok() {
                tracing::info!("nothing to change on {name}: no transaction opened");
            }
            return result;
        }
        let result = result.and_then(|v| self.server(&["publish", &name]).map(|()| v));
        match result {
            Ok(v) => {
                let _ = fs::remove_file(&marker);
                tracing::info!("published {name}");
                Ok(v)
            }
            Err(e) => match self.server(&["abort", "-f", &name]) {
                Ok(()) => {
                    let _ = fs::remove_file(&marker);
                    tracing::warn!("aborted the transaction on {name}: nothing was published");
                    Err(e)
                }
                // The marker stays: the next run aborts it.
                Err(abort) => Err(Error::Other(format!(
                    "{e}\n  (and cvmfs_server abort -f {name} failed: {abort})"
                ))),
            },
        }
    }

    /// Marks a transaction gridship opened, so a killed run's is known.
    fn txn_marker(&self) -> PathBuf {
        self.config.lock.with_extension("txn")
    }

    /// Called before every write: opens the transaction
    /// [`Repo::transaction`] wants, once.
    fn begin_write(&self) -> Result<()> {
        if self.txn.get() != Txn::Wanted {
            return Ok(());
        }
        let name = self.config.name.clone();
        self.open_transaction(&name)?;
        let marker = self.txn_marker();
        self.txn.set(Txn::Open);
        File::create(&marker).at("creating", &marker)?;
        tracing::info!("opened a transaction on {name}");
        Ok(())
    }

    /// `cvmfs_server transaction`, waiting up to `lock_timeout` while it
    /// fails (a transaction someone else opened, e.g. another machine or
    /// an operator); nothing has been written when it gives up.
    fn open_transaction(&self, name: &str) -> Result<()> {
        let started = std::time::Instant::now();
        let mut said = false;
        loop {
            match self.server(&["transaction", name]) {
                Ok(()) => return Ok(()),
                // The program did not run at all: waiting will not help.
                Err(e @ Error::Io { .. }) => return Err(e),
                Err(e) if started.elapsed() >= self.config.lock_timeout => {
                    return Err(Error::Other(format!(
                        "gave up after {}s waiting for the transaction on {name} (nothing was changed): {e}\n  hint: another publisher has it open; let it publish, or abort it (cvmfs_server abort -f {name}), or wait longer with --lock-timeout SECONDS",
                        self.config.lock_timeout.as_secs()
                    )));
                }
                Err(e) => {
                    if !said {
                        tracing::warn!("waiting for the open transaction on {name}: {e}");
                        said = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
            }
        }
    }

    fn exists(&self, rel: &Path) -> bool {
        fs::symlink_metadata(self.abs(rel)).is_ok()
    }

    /// Write a tree at `rel` in one step: built under a temporary name and
    /// renamed (dir, cvmfs-server), or one `ingest` (ingest backend).
    fn put_tree(
        &self,
        rel: &Path,
        index: &FsIndex,
        image: &Image,
        opts: &UnpackOptions,
        catalog: bool,
    ) -> Result<()> {
        self.begin_write()?;
        match self.config.backend {
            BackendKind::Ingest => self.ingest(&rel.to_string_lossy(), catalog, |stdin| {
                crate::encode::tar::write_tar(
                    index,
                    image,
                    io::BufWriter::new(stdin),
                    &crate::encode::tar::TarOptions {
                        reproducible: None,
                        omit_root: false,
                    },
                )
                .map(|_| ())
            }),
            _ => {
                let dest = self.abs(rel);
                let parent = dest.parent().expect("tree paths have a parent");
                fs::create_dir_all(parent).at("creating", parent)?;
                let name = dest
                    .file_name()
                    .expect("named")
                    .to_string_lossy()
                    .into_owned();
                let tmp = tempfile::Builder::new()
                    .prefix(&format!(".{name}{TMP_MARK}"))
                    .tempdir_in(parent)
                    .at("creating a temporary tree in", parent)?;
                write_tree(index, image, tmp.path(), opts)?;
                if catalog {
                    File::create(tmp.path().join(CATALOG))
                        .at("creating", tmp.path().join(CATALOG))?;
                }
                let tmp_path = tmp.keep();
                fs::rename(&tmp_path, &dest).map_err(|e| {
                    let _ = fs::remove_dir_all(&tmp_path);
                    Error::io_path(&dest, "renaming the tree into place at", e)
                })?;
                Ok(())
            }
        }
    }

    /// A small file, replaced atomically; the same bytes are not written
    /// again (no transaction for a file that would not change).
    fn put_file(&self, rel: &Path, data: &[u8]) -> Result<()> {
        if fs::read(self.abs(rel)).is_ok_and(|old| old == data) {
            return Ok(());
        }
        self.begin_write()?;
        match self.config.backend {
            BackendKind::Ingest => self.ingest_small(rel, Some(data), None),
            _ => {
                let dest = self.abs(rel);
                fs::create_dir_all(dest.parent().expect("parent"))
                    .at("creating", dest.parent().expect("parent"))?;
                write_atomic(&dest, data, 0o644)
            }
        }
    }

    /// A symlink, replaced atomically.
    fn put_symlink(&self, rel: &Path, target: &Path) -> Result<()> {
        self.begin_write()?;
        match self.config.backend {
            BackendKind::Ingest => self.ingest_small(rel, None, Some(target)),
            _ => {
                let dest = self.abs(rel);
                let parent = dest.parent().expect("parent");
                fs::create_dir_all(parent).at("creating", parent)?;
                let tmp = parent.join(format!(
                    ".{}{TMP_MARK}{}",
                    dest.file_name().expect("named").to_string_lossy(),
                    std::process::id()
                ));
                let _ = fs::remove_file(&tmp);
                std::os::unix::fs::symlink(target, &tmp).at("creating symlink", &tmp)?;
                fs::rename(&tmp, &dest).at("replacing symlink", &dest)?;
                Ok(())
            }
        }
    }

    /// One file or symlink through `cvmfs_server ingest` (a one-entry tar).
    fn ingest_small(&self, rel: &Path, data: Option<&[u8]>, link: Option<&Path>) -> Result<()> {
        let parent = rel
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = rel
            .file_name()
            .expect("named")
            .to_string_lossy()
            .into_owned();
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_mode(if link.is_some() { 0o777 } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(now() as u64);
        match (data, link) {
            (Some(d), _) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                tar.append_data(&mut h, &name, d)
                    .at("building a tar for", rel)?;
            }
            (None, Some(t)) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                tar.append_link(&mut h, &name, t)
                    .at("building a tar for", rel)?;
            }
            _ => unreachable!("a file or a link"),
        }
        let bytes = tar.into_inner().at("building a tar for", rel)?;
        self.ingest_tar(&parent, false, &bytes)
    }

    /// `cvmfs_server ingest [--catalog] -t - -b BASE REPO` with `tar` on
    /// its standard input.
    fn ingest_tar(&self, base: &str, catalog: bool, tar: &[u8]) -> Result<()> {
        self.ingest(base, catalog, |mut stdin| {
            stdin
                .write_all(tar)
                .map_err(|e| Error::io("feeding cvmfs_server ingest", e))
        })
    }

    /// `cvmfs_server ingest [--catalog] -t - -b BASE REPO`, its standard
    /// input written by `feed`. The server's own failure is reported first:
    /// a feed error then is only the broken pipe it caused.
    fn ingest(
        &self,
        base: &str,
        catalog: bool,
        feed: impl FnOnce(std::process::ChildStdin) -> Result<()>,
    ) -> Result<()> {
        let mut args = vec!["ingest"];
        if catalog {
            args.push("--catalog");
        }
        args.extend(["-t", "-", "-b", base, &self.config.name]);
        let mut child = Command::new(&self.config.cvmfs_server)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(format!("running {}", self.config.cvmfs_server.display()), e))?;
        let fed = feed(child.stdin.take().expect("piped"));
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io("waiting for cvmfs_server ingest", e))?;
        self.server_status(&args, &out)?;
        fed
    }

    /// Remove a tree or file (gc).
    fn remove(&self, rel: &Path) -> Result<()> {
        if !self.exists(rel) {
            return Ok(());
        }
        self.begin_write()?;
        match self.config.backend {
            BackendKind::Ingest => {
                let r = rel.to_string_lossy().into_owned();
                self.server(&["ingest", "--delete", &r, &self.config.name])
            }
            _ => remove_any(&self.abs(rel)),
        }
    }

    /// An empty `.cvmfscatalog` in a directory (a nested catalog).
    fn ensure_catalog(&self, dir: &Path) -> Result<()> {
        let rel = dir.join(CATALOG);
        if self.exists(&rel) {
            return Ok(());
        }
        self.begin_write()?;
        match self.config.backend {
            BackendKind::Ingest => {
                // An empty tar with --catalog makes the nested catalog.
                let empty = tar::Builder::new(Vec::new())
                    .into_inner()
                    .at("building a tar for", dir)?;
                self.ingest_tar(&dir.to_string_lossy(), true, &empty)
            }
            _ => {
                let p = self.abs(&rel);
                fs::create_dir_all(p.parent().expect("parent"))
                    .at("creating", p.parent().expect("parent"))?;
                File::create(&p).at("creating", &p)?;
                Ok(())
            }
        }
    }

    /// Every public symlink (relative path), found in the non-hidden tree.
    pub fn public_links(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let root = &self.config.root;
        if !root.is_dir() {
            return Ok(out);
        }
        let mut todo = vec![PathBuf::new()];
        while let Some(rel) = todo.pop() {
            let dir = root.join(&rel);
            for e in fs::read_dir(&dir).at("reading", &dir)? {
                let e = e.at("reading", &dir)?;
                let name = e.file_name();
                // podmanStore's links are podman's, not published names.
                if name.to_string_lossy().starts_with('.')
                    || (rel.as_os_str().is_empty() && name == podman::STORE)
                {
                    continue;
                }
                let ft = e.file_type().at("reading", e.path())?;
                let r = rel.join(&name);
                if ft.is_symlink() {
                    out.push(r);
                } else if ft.is_dir() {
                    todo.push(r);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The `.flat/xx/hex` a public symlink points at, if it points into `.flat`.
    fn flat_of_link(&self, link: &Path) -> Option<PathBuf> {
        let target = fs::read_link(self.abs(link)).ok()?;
        let mut resolved = link.parent().unwrap_or(Path::new("")).to_path_buf();
        for c in target.components() {
            match c {
                std::path::Component::ParentDir => {
                    resolved.pop();
                }
                std::path::Component::Normal(n) => resolved.push(n),
                _ => return None,
            }
        }
        if resolved.starts_with(".multiarch") {
            // A variant link: follow the platform entry it names.
            return multiarch::flat_of_entry(self, &resolved);
        }
        resolved.starts_with(".flat").then_some(resolved)
    }

    /// The gc schedule is one file all publishers of the repository update.
    fn lock_schedule(&self) -> Result<lock::Held> {
        let held = self.lock_item("schedule", "the gc schedule")?;
        self.sweep_tmp(Path::new(".metadata"), "")?;
        Ok(held)
    }

    fn read_schedule(&self) -> Result<Vec<Scheduled>> {
        let p = self.abs(Path::new(SCHEDULE));
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::BadInput {
                input: p.display().to_string(),
                place: format!("line {} column {}: ", e.line(), e.column()),
                reason: e.to_string(),
                hint: Some("remove the file: gc then starts the grace period anew".into()),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io_path(&p, "reading", e)),
        }
    }

    fn write_schedule(&self, s: &[Scheduled]) -> Result<()> {
        // No file is the empty schedule: gc of a clean repository writes nothing.
        if s.is_empty() && !self.exists(Path::new(SCHEDULE)) {
            return Ok(());
        }
        let mut data = serde_json::to_vec_pretty(s).expect("schedule serializes");
        data.push(b'\n');
        self.put_file(Path::new(SCHEDULE), &data)
    }
}

fn remove_any(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            // A tree may hold read-only directories: make them writable first.
            make_removable(p)?;
            fs::remove_dir_all(p).at("removing", p)
        }
        Ok(_) => fs::remove_file(p).at("removing", p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io_path(p, "removing", e)),
    }
}

fn make_removable(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if rustix::process::geteuid().is_root() {
        return Ok(());
    }
    for e in walkdir_dirs(dir)? {
        let m = fs::symlink_metadata(&e).at("reading", &e)?;
        let mode = m.mode() | 0o700;
        fs::set_permissions(&e, fs::Permissions::from_mode(mode)).at("changing mode of", &e)?;
    }
    Ok(())
}

fn walkdir_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let d = out[i].clone();
        i += 1;
        for e in fs::read_dir(&d).at("reading", &d)? {
            let e = e.at("reading", &d)?;
            if e.file_type().at("reading", e.path())?.is_dir() {
                out.push(e.path());
            }
        }
    }
    Ok(out)
}

/// Entries up to `depth` levels below `dir` (not following symlinks).
fn walk_dirs(dir: &Path, depth: usize) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut level = vec![dir.to_path_buf()];
    for _ in 0..depth {
        let mut next = Vec::new();
        for d in level {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd {
                let e = e.at("reading", &d)?;
                out.push(e.path());
                if e.file_type().at("reading", e.path())?.is_dir() {
                    next.push(e.path());
                }
            }
        }
        level = next;
    }
    Ok(out)
}

/// Disk usage of a tree in bytes (allocated blocks, each inode once).
fn tree_bytes(p: &Path) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut todo = vec![p.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(m) = fs::symlink_metadata(&d) else {
            continue;
        };
        if seen.insert((m.dev(), m.ino())) {
            total += m.blocks() * 512;
        }
        if m.is_dir()
            && let Ok(rd) = fs::read_dir(&d)
        {
            todo.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
        }
    }
    total
}

/// What a publish needs beyond the image.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Also write each layer under `.layers/`.
    pub layers: bool,
    /// Build time of the Apptainer layout (SOURCE_DATE_EPOCH, else the
    /// image's creation time), so the same image gives the same tree.
    pub created: i64,
    /// Hardlink files unchanged since an earlier published tree (dir
    /// backend; a CVMFS transaction copies them anyway).
    pub reuse: bool,
    /// Images in the store, to find earlier trees' layers (for reuse).
    pub store: Option<crate::store::Layout>,
    /// Also enter the image in the podman additional image store
    /// (`podmanStore/`), its one layer being the flat tree.
    pub podman: bool,
}

/// Where an image's link and manifest go: the public name, or one
/// platform's entry under `.multiarch/`.
pub(crate) struct Placement {
    pub link: PathBuf,
    pub metadata: PathBuf,
    /// Name the image in podmanStore (one image per name there).
    pub podman_name: bool,
}

impl Placement {
    pub fn public(name: &PublicName) -> Placement {
        Placement {
            link: name.link_path(),
            metadata: name.metadata_dir(),
            podman_name: true,
        }
    }
}

/// What a flat tree needs beyond the pipeline's transforms: the Apptainer
/// layout (named as DUCC names it, docker://NAME, with the image as its
/// base) and the publisher's widening.
pub fn flat_needs(name: &PublicName, created: i64, image: &Image) -> Result<Vec<Step<'static>>> {
    let mut app = crate::transform::apptainer::ApptainerOptions::for_image(
        &format!("docker://{name}"),
        created,
        &image.config,
    )?;
    app.base = Some(crate::transform::apptainer::BaseImage {
        name: name.to_string(),
        digest: image.manifest_desc.digest.to_string(),
    });
    Ok(vec![
        Step::Apptainer(Box::new(
            crate::transform::apptainer::ApptainerMetadata::new(app),
        )),
        Step::Publishable,
    ])
}

/// Publish one image under `name`, its tree from `trees`.
pub fn publish(
    repo: &mut Repo,
    name: &PublicName,
    image: &Image,
    trees: &dyn Trees,
    opts: &PublishOptions,
) -> Result<PublishReport> {
    publish_at(repo, name, image, trees, opts, &Placement::public(name))
}

pub(crate) fn publish_at(
    repo: &mut Repo,
    name: &PublicName,
    image: &Image,
    trees: &dyn Trees,
    opts: &PublishOptions,
    place: &Placement,
) -> Result<PublishReport> {
    let started = std::time::Instant::now();
    let merged_before = crate::index::layers_merged();
    let config_digest = image.manifest.config.digest.clone();
    let flat = flat_path(&config_digest);
    let mut report = PublishReport {
        name: name.to_string(),
        config_digest: config_digest.to_string(),
        flat: flat.clone(),
        ..Default::default()
    };
    let link = place.link.clone();
    if let Ok(m) = fs::symlink_metadata(repo.abs(&link))
        && !m.file_type().is_symlink()
    {
        return Err(Error::BadInput {
            input: repo.abs(&link).display().to_string(),
            place: String::new(),
            reason: "exists and is not a symlink; gridship will not replace it".into(),
            hint: Some("move it away, or publish under another name".into()),
        });
    }
    // Publishers of other images go on beside this one; a second
    // publisher of this name waits for it.
    let _name_lock = repo.lock_item(&format!("name:{name}"), &format!("image {name}"))?;
    repo.transaction(|repo| {
        repo.ensure_catalog(Path::new(".flat"))?;
        let link_name = link.file_name().expect("named").to_string_lossy();
        repo.sweep_tmp(
            link.parent().expect("REG/REPO:TAG"),
            &format!(".{link_name}"),
        )?;
        repo.sweep_tmp(&name.metadata_dir(), "")?;
        // Trees are shared between images: one writer at a time each.
        let flat_lock = repo.lock_item(
            &format!("tree:{}", flat.display()),
            &format!("tree {}", flat.display()),
        )?;
        repo.sweep_tmp(
            flat.parent().expect(".flat/xx"),
            &format!(".{}", config_digest.hex()),
        )?;
        if repo.exists(&flat) {
            report.flat_status = "present".into();
        } else {
            let tree = trees.tree(image, flat_needs(name, opts.created, image)?)?;
            report.transforms = tree.reports;
            report.merge_cached_layers = tree.merge_cached_layers;
            report.content_bytes = Some(tree.index.content_bytes());
            let mut unpack = UnpackOptions::for_current_user();
            // Reuse matches files by the layers of earlier published
            // manifests; a tree merged from other layers (promote's working
            // image) has none of them.
            if opts.reuse
                && tree.data.manifest_desc.digest == image.manifest_desc.digest
                && repo.config.backend == BackendKind::Dir
            {
                unpack.reuse = reusable_files(repo, name, image, &tree.index, trees, opts)?;
                report.reused_files = unpack.reuse.len() as u64;
            }
            repo.put_tree(&flat, &tree.index, &tree.data, &unpack, true)?;
            report.flat_status = "built".into();
        }
        drop(flat_lock);
        if opts.layers {
            repo.ensure_catalog(Path::new(".layers"))?;
            for (i, l) in image.layers().iter().enumerate() {
                let lp = layer_path(&l.digest);
                repo.ensure_catalog(lp.parent().expect("xx dir"))?;
                let _layer_lock = repo.lock_item(
                    &format!("tree:{}", lp.display()),
                    &format!("tree {}", lp.display()),
                )?;
                repo.sweep_tmp(&lp, ".layerfs")?;
                repo.sweep_tmp(&layer_meta::dir(&lp), "")?;
                let layers_json = layer_meta::dir(&lp).join("layers.json");
                // layerfs is the unit renamed into place: it is there only complete.
                if repo.exists(&lp.join("layerfs")) {
                    report.layers_present.push(l.digest.to_string());
                    // A tree an older gridship published has no record yet.
                    if !repo.exists(&layers_json) {
                        let info = crate::index::LayerInfo {
                            index: i,
                            digest: l.digest.clone(),
                            diff_id: image.config.rootfs.diff_ids[i].clone(),
                            media_type: l.media_type.clone(),
                            size: l.size,
                            compression: crate::layers::Compression::None,
                            entries: 0,
                            diff_size: crate::archive::decompress_layer(
                                image,
                                i,
                                &mut io::sink(),
                            )?,
                        };
                        repo.put_file(&layers_json, &layer_meta::layers_json(&info, opts.created)?)?;
                    }
                } else {
                    let raw = FsIndex::from_layer(image, i)?;
                    if repo.config.backend == BackendKind::CvmfsServer {
                        let markers = raw
                            .iter()
                            .filter(|(k, _, _)| {
                                k.rsplit(|&b| b == b'/')
                                    .next()
                                    .is_some_and(|n| n.starts_with(b".wh."))
                            })
                            .count();
                        if markers > 0 {
                            let w = format!(
                                "layer {}: its {markers} whiteout marker(s) (.wh.*) are not in .layers/…/layerfs: a cvmfs_server transaction drops such files (the flat tree is right: the markers were applied); publish with --backend ingest to keep them, as DUCC does",
                                l.digest
                            );
                            tracing::warn!("{w}");
                            report.warnings.push(w);
                        }
                    }
                    repo.put_tree(
                        &lp.join("layerfs"),
                        &raw,
                        image,
                        &UnpackOptions::for_current_user(),
                        true,
                    )?;
                    let info = raw.layers.first().expect("one layer read");
                    repo.put_file(&layers_json, &layer_meta::layers_json(info, opts.created)?)?;
                    report.layers_built.push(l.digest.to_string());
                }
                layer_meta::add_origin(repo, &lp, &config_digest)?;
            }
        }
        if opts.podman {
            let names = if place.podman_name {
                vec![name.to_string()]
            } else {
                Vec::new()
            };
            report.podman_image = Some(podman::add(repo, &names, image, &flat)?);
        }
        // The public symlink: a moved tag schedules its old tree for gc.
        let target = relative_target(&link, &flat);
        let old = fs::read_link(repo.abs(&link)).ok();
        if old.as_deref() != Some(target.as_path()) {
            if let Some(old_flat) = repo.flat_of_link(&link)
                && old_flat != flat
            {
                let _schedule_lock = repo.lock_schedule()?;
                let mut schedule = repo.read_schedule()?;
                schedule.retain(|s| s.path != old_flat);
                schedule.push(Scheduled {
                    path: old_flat.clone(),
                    since: now(),
                    was: Some(name.to_string()),
                });
                repo.write_schedule(&schedule)?;
                report.replaced = Some(old_flat);
            }
            repo.put_symlink(&link, &target)?;
        }
        // The manifest last: the commit marker.
        let manifest = serde_json::to_vec(&DuccManifest::of(image)).expect("manifest serializes");
        let mrel = place.metadata.join("manifest.json");
        if fs::read(repo.abs(&mrel)).ok().as_deref() != Some(manifest.as_slice()) {
            repo.put_file(&mrel, &manifest)?;
        }
        Ok(())
    })?;
    report.layers_merged = crate::index::layers_merged() - merged_before;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Files of the new tree that an earlier published tree already holds with
/// the same bytes and metadata: the same tar entry of the same layer, gone
/// through the same transforms.
fn reusable_files(
    repo: &Repo,
    name: &PublicName,
    image: &Image,
    index: &FsIndex,
    trees: &dyn Trees,
    opts: &PublishOptions,
) -> Result<HashMap<NodeId, PathBuf>> {
    let Some(store) = &opts.store else {
        return Ok(HashMap::new());
    };
    // The published image sharing the longest run of lower layers.
    let mine: Vec<&Digest> = image.layers().iter().map(|l| &l.digest).collect();
    let mut best: Option<(usize, DuccManifest)> = None;
    for m in published_manifests(repo)? {
        let shared = m
            .layers
            .iter()
            .zip(&mine)
            .take_while(|(a, b)| &a.digest == **b)
            .count();
        if shared > 0
            && m.config.digest != image.manifest.config.digest
            && repo.exists(&flat_path(&m.config.digest))
            && best.as_ref().is_none_or(|(n, _)| shared > *n)
        {
            best = Some((shared, m));
        }
    }
    let Some((shared, old)) = best else {
        return Ok(HashMap::new());
    };
    if old
        .layers
        .iter()
        .chain(std::iter::once(&old.config))
        .any(|d| !store.has_blob(&d.digest, Some(d.size)))
    {
        tracing::info!(
            "earlier tree {}: its blobs are not in the store; nothing reused",
            old.config.digest
        );
        return Ok(HashMap::new());
    }
    let old_image = Image::from_manifest(
        store.clone(),
        crate::image::Manifest {
            schema_version: 2,
            media_type: Some(old.media_type.clone()),
            config: old.config.clone(),
            layers: old.layers.clone(),
            annotations: BTreeMap::new(),
            extra: BTreeMap::new(),
        },
        "earlier published image",
    )?;
    let old_index = trees
        .tree(&old_image, flat_needs(name, opts.created, &old_image)?)?
        .index;
    let old_root = repo.abs(&flat_path(&old.config.digest));
    // (layer digest, header position) → old path and node, in shared layers.
    let mut old_files: HashMap<(Digest, u64), (Vec<u8>, NodeId)> = HashMap::new();
    for (key, id, node) in old_index.iter() {
        if let Kind::File {
            data: Data::Layer { layer, header_pos },
            ..
        } = &node.kind
            && (*layer as usize) < shared
        {
            old_files
                .entry((
                    old_image.layers()[*layer as usize].digest.clone(),
                    *header_pos,
                ))
                .or_insert((key.to_vec(), id));
        }
    }
    let mut reuse = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for (_, id, node) in index.iter() {
        if !seen.insert(id) {
            continue;
        }
        let Kind::File {
            data: Data::Layer { layer, header_pos },
            ..
        } = &node.kind
        else {
            continue;
        };
        let key = (image.layers()[*layer as usize].digest.clone(), *header_pos);
        if let Some((old_key, old_id)) = old_files.get(&key)
            && old_index.node(*old_id).meta == node.meta
        {
            let p = old_root.join(std::ffi::OsStr::from_bytes(old_key));
            // The mode on disk too: the earlier tree may have been published
            // with other options (--world-readable).
            if fs::symlink_metadata(&p)
                .is_ok_and(|m| m.is_file() && m.mode() & 0o7777 == node.meta.mode & 0o7777)
            {
                reuse.insert(id, p);
            }
        }
    }
    Ok(reuse)
}

/// Every `.metadata/**/manifest.json`.
fn published_manifests(repo: &Repo) -> Result<Vec<DuccManifest>> {
    Ok(published_manifests_at(repo)?
        .into_iter()
        .map(|(_, m)| m)
        .collect())
}

/// Every `.metadata/**/manifest.json`, with its path relative to the root.
fn published_manifests_at(repo: &Repo) -> Result<Vec<(PathBuf, DuccManifest)>> {
    let mut out = Vec::new();
    let meta = repo.abs(Path::new(".metadata"));
    if !meta.is_dir() {
        return Ok(out);
    }
    let mut todo = vec![meta];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).at("reading", &d)? {
            let e = e.at("reading", &d)?;
            let p = e.path();
            if e.file_type().at("reading", &p)?.is_dir() {
                todo.push(p);
            } else if e.file_name() == "manifest.json" {
                let b = fs::read(&p).at("reading", &p)?;
                match serde_json::from_slice::<DuccManifest>(&b) {
                    Ok(m) => out.push((p.strip_prefix(repo.root()).unwrap_or(&p).to_path_buf(), m)),
                    Err(e) => tracing::warn!("{}: not a manifest ({e}); ignored", p.display()),
                }
            }
        }
    }
    Ok(out)
}

/// One published image, as `cvmfs ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub name: String,
    pub target: PathBuf,
    /// The flat tree exists and is complete (renamed into place).
    pub complete: bool,
    /// The manifest marker is there and names this tree's config.
    pub committed: bool,
    pub config_digest: Option<String>,
}

pub fn list(repo: &Repo) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    for link in repo.public_links()? {
        let flat = repo.flat_of_link(&link);
        let complete = flat.as_ref().is_some_and(|f| repo.abs(f).is_dir());
        let mpath = repo.abs(&Path::new(".metadata").join(&link).join("manifest.json"));
        let manifest: Option<DuccManifest> = fs::read(&mpath)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let digest = flat
            .as_ref()
            .and_then(|f| f.file_name())
            .map(|n| n.to_string_lossy().into_owned());
        let committed = manifest
            .as_ref()
            .is_some_and(|m| Some(m.config.digest.hex().to_string()) == digest);
        out.push(Listed {
            name: link.display().to_string(),
            target: fs::read_link(repo.abs(&link)).unwrap_or_default(),
            complete,
            committed,
            config_digest: digest.map(|d| format!("sha256:{d}")),
        });
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct GcItem {
    pub path: PathBuf,
    pub bytes: u64,
    /// Unused since (Unix seconds).
    pub since: i64,
    /// `removed`, `would remove`, or `kept (grace period)`.
    pub action: String,
}

/// What gc removes and when.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Trees unused for this many days go.
    pub grace_days: u64,
    /// Dated names (`REG/REPO:SITE-nightly-STAMP`) this many days after
    /// their build are unpublished, except each group's newest (see
    /// `retention`); `None`: published names are never touched.
    pub retention_days: Option<u64>,
    pub dry_run: bool,
    /// Unix seconds (`crate::clock::now()`).
    pub now: i64,
}

/// Remove flat trees no public symlink uses and layers no manifest lists,
/// once they have been unused for `grace_days`.
pub fn gc(repo: &mut Repo, grace_days: u64, dry_run: bool) -> Result<Vec<GcItem>> {
    gc_with(
        repo,
        &GcOptions {
            grace_days,
            retention_days: None,
            dry_run,
            now: now(),
        },
    )
}

/// gc with a retention policy for dated names: an expired name's link and
/// metadata go first, then its tree, like any unused one, after the grace
/// period. Waits for the repository's other publishers (they hold it
/// shared) and keeps them out while it runs.
pub fn gc_with(repo: &mut Repo, opts: &GcOptions) -> Result<Vec<GcItem>> {
    let (grace_days, dry_run, now) = (opts.grace_days, opts.dry_run, opts.now);
    repo.make_exclusive()?;
    // One lock file per name and tree ever published would pile up.
    lock::clear_items(&repo.config.lock)?;
    let links = repo.public_links()?;
    let expired = match opts.retention_days {
        Some(days) => retention::expired(&links, now, days),
        None => Vec::new(),
    };
    let expired_manifests: BTreeSet<PathBuf> = expired
        .iter()
        .map(|l| Path::new(".metadata").join(l).join("manifest.json"))
        .collect();
    let mut used_flats: BTreeSet<PathBuf> = links
        .iter()
        .filter(|l| !expired.contains(l))
        .filter_map(|l| repo.flat_of_link(l))
        .collect();
    // Every platform of a multi-arch name is used while its public link is
    // the variant link; a platform entry of a name published otherwise since
    // goes, and its tree with the rest. (A multi-arch name expired in this
    // run still counts as live: its platforms go in the next gc.)
    let multi = multiarch::scan(repo)?;
    used_flats.extend(multi.live_flats.iter().cloned());
    let used_layers: BTreeSet<PathBuf> = published_manifests_at(repo)?
        .iter()
        .filter(|(p, _)| !expired_manifests.contains(p))
        .flat_map(|(_, m)| m.layers.iter().map(|l| layer_path(&l.digest)))
        .collect();
    let mut candidates = Vec::new();
    for (top, used) in [(".flat", &used_flats), (".layers", &used_layers)] {
        for p in walk_dirs(&repo.abs(Path::new(top)), 2)? {
            let rel = p
                .strip_prefix(repo.root())
                .expect("under root")
                .to_path_buf();
            let name = rel
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if rel.components().count() != 3 || name.starts_with('.') || !p.is_dir() {
                continue;
            }
            if !used.contains(&rel) {
                candidates.push(rel);
            }
        }
    }
    let mut schedule = repo.read_schedule()?;
    // What is used again leaves the schedule.
    schedule.retain(|s| candidates.contains(&s.path));
    let mut items = Vec::new();
    for l in &expired {
        let since = retention::dated(l).map_or(now, |(_, t)| t);
        items.push(GcItem {
            path: l.clone(),
            bytes: 0,
            since,
            action: if dry_run {
                "would unpublish (dated, past retention)"
            } else {
                "unpublished (dated, past retention)"
            }
            .into(),
        });
    }
    let grace = (grace_days * 86400) as i64;
    let mut to_remove = Vec::new();
    for c in &candidates {
        let since = match schedule.iter().find(|s| &s.path == c) {
            Some(s) => s.since,
            None => {
                schedule.push(Scheduled {
                    path: c.clone(),
                    since: now,
                    was: None,
                });
                now
            }
        };
        let due = now - since >= grace;
        items.push(GcItem {
            path: c.clone(),
            bytes: tree_bytes(&repo.abs(c)),
            since,
            action: match (due, dry_run) {
                (true, true) => "would remove",
                (true, false) => "removed",
                (false, _) => "kept (grace period)",
            }
            .into(),
        });
        if due {
            to_remove.push(c.clone());
        }
    }
    if !dry_run {
        repo.transaction(|repo| {
            // The commit marker first, then the link: a killed gc leaves a
            // name that `ls` shows as uncommitted, never a dangling link.
            for l in &expired {
                repo.remove(&Path::new(".metadata").join(l))?;
                repo.remove(l)?;
            }
            multiarch::remove_stale(repo, &multi)?;
            // The podman store's entries first: it never names a tree
            // that is gone.
            let flats: Vec<&PathBuf> = to_remove
                .iter()
                .filter(|c| c.starts_with(".flat"))
                .collect();
            podman::remove(repo, &flats)?;
            for c in &to_remove {
                repo.remove(c)?;
            }
            schedule.retain(|s| !to_remove.contains(&s.path));
            repo.write_schedule(&schedule)
        })?;
    }
    Ok(items)
}

/// Where promote's CVMFS tree goes.
#[derive(Debug, Clone)]
pub struct CvmfsTarget {
    pub repo: RepoConfig,
    /// Default: gridship.local/promoted/NAME:TAG.
    pub name: Option<PublicName>,
}

/// The repository a [`CvmfsSink`] publishes into.
pub enum RepoAt<'r> {
    /// Opened when the sink writes: its lock is held for the publish only.
    Config(RepoConfig),
    /// Opened by the caller, for several publishes under one lock.
    Open(&'r mut Repo),
}

/// The CVMFS sink: an image's flat tree (or each platform's, for a
/// multi-arch image) published in a repository, under its public name.
pub struct CvmfsSink<'r> {
    pub repo: RepoAt<'r>,
    pub name: PublicName,
    pub options: PublishOptions,
    /// Every platform of a multi-arch image (the input image is the
    /// default platform's).
    pub platforms: Option<Vec<(crate::store::Platform, Image)>>,
    /// Whether worker nodes mount the repository (one the user,
    /// config.yaml or the site named): only then is the tree a job's image.
    pub mounted: bool,
    /// Named in the warning about a local tree.
    pub site: String,
    /// After [`Sink::write`]: one per platform.
    pub reports: Vec<PublishReport>,
    warnings: Vec<String>,
}

impl<'r> CvmfsSink<'r> {
    pub fn new(repo: RepoAt<'r>, name: PublicName, options: PublishOptions) -> CvmfsSink<'r> {
        CvmfsSink {
            repo,
            name,
            options,
            platforms: None,
            mounted: true,
            site: String::new(),
            reports: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

impl CvmfsSink<'static> {
    /// Promote's tree: in the repository named (`--cvmfs-repo`, config.yaml,
    /// the site), else a dir backend under OUT/cvmfs that no worker mounts.
    pub fn from_spec(spec: &Spec) -> Result<Box<dyn Sink>> {
        let repo = match &spec.cvmfs {
            Some(t) => t.repo.clone(),
            None => RepoConfig::new(
                "promoted.gridship.local",
                BackendKind::Dir,
                Some(spec.out.join("cvmfs")),
                None,
            )?,
        };
        let name = match spec.cvmfs.as_ref().and_then(|t| t.name.clone()) {
            Some(n) => n,
            None => PublicName::parse(&format!(
                "gridship.local/promoted/{}:{}",
                spec.name, spec.tag
            ))?,
        };
        let mut sink = CvmfsSink::new(
            RepoAt::Config(repo),
            name,
            PublishOptions {
                layers: false,
                created: spec.created,
                reuse: true,
                store: Some(spec.store.clone()),
                podman: false,
            },
        );
        sink.mounted = spec.cvmfs.is_some();
        sink.site = spec.site.clone();
        Ok(Box::new(sink))
    }
}

impl Sink for CvmfsSink<'_> {
    fn kind(&self) -> &'static str {
        "cvmfs"
    }

    fn needs(&self, image: &Image) -> Result<Vec<Step<'static>>> {
        flat_needs(&self.name, self.options.created, image)
    }

    fn named_by_digests(&self) -> bool {
        true
    }

    fn write(&mut self, input: &SinkInput) -> Result<Vec<Artifact>> {
        let mut opened;
        let repo = match &mut self.repo {
            RepoAt::Open(r) => &mut **r,
            RepoAt::Config(c) => {
                if c.backend == BackendKind::Dir {
                    fs::create_dir_all(&c.root).at("creating", &c.root)?;
                }
                opened = Repo::open(c.clone())?;
                &mut opened
            }
        };
        self.reports = match &self.platforms {
            None => vec![publish(
                repo,
                &self.name,
                input.image,
                input.trees,
                &self.options,
            )?],
            Some(images) => {
                multiarch::publish_index(repo, &self.name, images, input.trees, &self.options)?
            }
        };
        let mut artifacts = Vec::new();
        for r in &self.reports {
            let tree = repo.root().join(&r.flat);
            artifacts.push(Artifact {
                kind: "cvmfs".into(),
                path: tree.display().to_string(),
                digest: Some(r.config_digest.clone()),
                // A tree published before: its size on disk.
                bytes: r.content_bytes.unwrap_or_else(|| tree_bytes(&tree)),
                runs_as: None,
            });
        }
        if self.mounted {
            let public = Path::new("/cvmfs")
                .join(&repo.config.name)
                .join(self.name.link_path());
            artifacts.push(Artifact {
                kind: "cvmfs-link".into(),
                path: public.display().to_string(),
                digest: None,
                bytes: 0,
                runs_as: Some(JobImage::Cvmfs(public)),
            });
        } else {
            self.warnings.push(format!(
                "the CVMFS tree under {} is local: no repository was named (--cvmfs-repo, cvmfs.repo of config.yaml, or cvmfs.repo of site {}), so no worker node mounts it and the job description does not use it",
                repo.root().display(),
                self.site
            ));
        }
        Ok(artifacts)
    }

    /// Each tree's name, place and status (the rule reports stay in
    /// `reports`: they list every path).
    fn report(&self) -> Option<serde_json::Value> {
        let trees: Vec<_> = self
            .reports
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name,
                    "flat": r.flat,
                    "flat_status": r.flat_status,
                    "platform": r.platform,
                    "reused_files": r.reused_files,
                    "layers_built": r.layers_built.len(),
                    "layers_present": r.layers_present.len(),
                })
            })
            .collect();
        Some(serde_json::json!({ "trees": trees }))
    }

    fn warnings(&self) -> Vec<String> {
        let publishes = self.reports.iter().flat_map(|r| r.warnings.iter().cloned());
        self.warnings.iter().cloned().chain(publishes).collect()
    }
}
