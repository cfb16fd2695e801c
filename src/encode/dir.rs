//! Materialize a merged index as a directory tree (`gridship unpack`, and the
//! ground of the CVMFS sink).
//!
//! The tree is built in a temporary directory beside the destination and
//! renamed into place at the end: a crash leaves nothing at DIR. Every path
//! comes from the index, whose parents are real directories by construction,
//! so nothing is written through a symlink and nothing outside DIR.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};
use serde::Serialize;

use crate::error::IoContext;
use crate::image::Image;
use crate::index::{FsIndex, Kind, Meta, Node, NodeId, display_path};
use crate::{Error, Result};

#[derive(Debug, Default, Clone, Serialize)]
pub struct DirReport {
    #[serde(flatten)]
    pub kinds: super::EntryKinds,
    pub bytes: u64,
    /// Things that could not be reproduced as in the image (rootless runs).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// Not root: keep our own ownership, make device nodes empty files.
    pub rootless: bool,
    /// Regular files already on disk with exactly a node's content and
    /// metadata (an earlier tree of the same layers): hardlinked, not written,
    /// their metadata left as it is.
    pub reuse: HashMap<NodeId, PathBuf>,
}

impl UnpackOptions {
    pub fn for_current_user() -> Self {
        UnpackOptions {
            rootless: !rustix::process::geteuid().is_root(),
            reuse: HashMap::new(),
        }
    }
}

fn rel(key: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(key))
}

/// Check that `dest` can take a new tree: absent, or an empty directory.
pub fn check_destination(dest: &Path) -> Result<()> {
    match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io_path(dest, "checking", e)),
        Ok(m) if m.is_dir() => {
            if fs::read_dir(dest).at("reading", dest)?.next().is_some() {
                Err(Error::BadInput {
                    input: dest.display().to_string(),
                    place: String::new(),
                    reason: "exists and is not empty".into(),
                    hint: Some("give a new directory (it is created) or an empty one".into()),
                })
            } else {
                Ok(())
            }
        }
        Ok(_) => Err(Error::bad_input(
            dest.display().to_string(),
            "exists and is not a directory",
        )),
    }
}

/// Write the tree of `index` (whose layer content comes from `image`) to `dest`.
pub fn unpack(
    index: &FsIndex,
    image: &Image,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<DirReport> {
    check_destination(dest)?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).at("creating", &parent)?;
    let name = dest
        .file_name()
        .ok_or_else(|| Error::bad_input(dest.display().to_string(), "has no directory name"))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.gridship-", name.to_string_lossy()))
        .tempdir_in(&parent)
        .at("creating a temporary directory in", &parent)?;

    let report = write_tree(index, image, tmp.path(), opts)?;

    // Replace an empty destination directory, or create it, by one rename.
    if dest.exists() {
        fs::remove_dir(dest).at("replacing the empty directory", dest)?;
    }
    let tmp_path = tmp.keep();
    fs::rename(&tmp_path, dest).map_err(|e| {
        let _ = fs::remove_dir_all(&tmp_path);
        Error::io_path(dest, "renaming the unpacked tree to", e)
    })?;
    Ok(report)
}

/// Small files are read into memory and written by the pool; larger ones
/// are streamed by the reading thread.
const POOLED_FILE_MAX: u64 = 1 << 20;

/// A few threads that run filesystem jobs: creating and writing files is
/// bound by syscall latency, not by one core, so a pool keeps the layer
/// reader busy. Each job has a key (the directory it creates an entry in)
/// and all jobs of one key go to one worker: threads creating entries in
/// the same directory would only queue on its lock (and spin on it, which
/// costs more CPU than the work). The first error wins and stops further jobs.
struct Pool<'scope> {
    queues: Vec<mpsc::SyncSender<Job<'scope>>>,
    workers: Vec<thread::ScopedJoinHandle<'scope, Result<()>>>,
    failed: Arc<AtomicBool>,
}

type Job<'scope> = Box<dyn FnOnce() -> Result<()> + Send + 'scope>;

/// Jobs queued per worker before the producer waits.
const QUEUE_PER_WORKER: usize = 64;

impl<'scope> Pool<'scope> {
    fn new<'env>(scope: &'scope thread::Scope<'scope, 'env>, threads: usize) -> Self {
        let failed = Arc::new(AtomicBool::new(false));
        let mut queues = Vec::with_capacity(threads);
        let mut workers = Vec::with_capacity(threads);
        for _ in 0..threads.max(1) {
            let (tx, rx) = mpsc::sync_channel::<Job<'scope>>(QUEUE_PER_WORKER);
            queues.push(tx);
            let failed = Arc::clone(&failed);
            workers.push(scope.spawn(move || -> Result<()> {
                for job in rx {
                    if failed.load(Ordering::Relaxed) {
                        continue;
                    }
                    if let Err(e) = job() {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
                Ok(())
            }));
        }
        Pool {
            queues,
            workers,
            failed,
        }
    }

    /// Queue a job that creates or changes an entry of directory `dir`;
    /// false once a job has failed (stop producing).
    fn submit(&self, dir: &[u8], job: Job<'scope>) -> bool {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        dir.hash(&mut h);
        let q = &self.queues[(h.finish() % self.queues.len() as u64) as usize];
        !self.failed.load(Ordering::Relaxed) && q.send(job).is_ok()
    }

    fn finish(mut self) -> Result<()> {
        self.queues.clear();
        let mut first = Ok(());
        for w in self.workers.drain(..) {
            let r = w.join().expect("pool worker does not panic");
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

/// The directory part of an index key (the pool's job key).
fn parent_key(key: &[u8]) -> &[u8] {
    key.iter()
        .rposition(|&b| b == b'/')
        .map_or(&[][..], |i| &key[..i])
}

fn pool_threads() -> usize {
    if let Some(n) = std::env::var("GRIDSHIP_WRITE_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        return n;
    }
    thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 4)
        * 2
}

/// Write the tree into `root` (an existing, empty directory).
pub fn write_tree(
    index: &FsIndex,
    image: &Image,
    root: &Path,
    opts: &UnpackOptions,
) -> Result<DirReport> {
    let mut report = DirReport::default();
    let warnings = Mutex::new(Vec::new());
    // The first path of a node holds it; further paths are hardlinks.
    let mut primary: HashMap<NodeId, &[u8]> = HashMap::new();
    let mut links: Vec<(&[u8], &[u8])> = Vec::new();
    let mut others: Vec<(&[u8], &Node)> = Vec::new();
    let path_of = |key: &[u8]| root.join(rel(key));

    // Directories first, parents before children, on this thread.
    for (key, id, node) in index.iter() {
        if key.is_empty() {
            continue;
        }
        if let Some(first) = primary.get(&id) {
            links.push((first, key));
            continue;
        }
        primary.insert(id, key);
        match &node.kind {
            Kind::Dir => {
                let path = path_of(key);
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .at("creating directory", &path)?;
                report.kinds.directories += 1;
                crate::event::advance_paths(1);
            }
            Kind::File { size, .. } => {
                report.kinds.files += 1;
                report.bytes += size;
                others.push((key, node));
            }
            Kind::Symlink { .. } => {
                report.kinds.symlinks += 1;
                others.push((key, node));
            }
            Kind::CharDevice { .. } | Kind::BlockDevice { .. } => {
                report.kinds.devices += 1;
                others.push((key, node));
            }
            Kind::Fifo => {
                report.kinds.fifos += 1;
                others.push((key, node));
            }
        }
    }

    thread::scope(|scope| -> Result<()> {
        let pool = Pool::new(scope, pool_threads());
        for &(key, node) in &others {
            let path = path_of(key);
            let warnings = &warnings;
            pool.submit(
                parent_key(key),
                Box::new(move || {
                    create_node(&path, key, node, opts, warnings)?;
                    crate::event::advance_paths(1);
                    Ok(())
                }),
            );
        }
        for (&id, old) in &opts.reuse {
            if let Some(key) = primary.get(&id) {
                let path = path_of(key);
                pool.submit(
                    parent_key(key),
                    Box::new(move || {
                        fs::hard_link(old, &path).at("linking an unchanged file to", &path)
                    }),
                );
            }
        }
        let want = |id: NodeId| !opts.reuse.contains_key(&id);
        let write = |id: NodeId, reader: &mut dyn Read| -> Result<()> {
            let key = primary[&id];
            let path = path_of(key);
            let size = match &index.node(id).kind {
                Kind::File { size, .. } => *size,
                _ => 0,
            };
            if size <= POOLED_FILE_MAX {
                let mut data = Vec::with_capacity(size as usize);
                reader.read_to_end(&mut data).map_err(|e| {
                    crate::digest::unwrap_io(e, || format!("reading content of {}", path.display()))
                })?;
                let queued = pool.submit(
                    parent_key(key),
                    Box::new(move || {
                        let mut f = create_file(&path)?;
                        f.write_all(&data).at("writing", &path)
                    }),
                );
                if !queued {
                    // A worker failed; its error is the one to report.
                    return Err(Error::Other("stopped after a failed write".into()));
                }
            } else {
                let mut f = create_file(&path)?;
                io::copy(reader, &mut f).map_err(|e| {
                    crate::digest::unwrap_io(e, || format!("writing {}", path.display()))
                })?;
            }
            Ok(())
        };
        // Without reuse every layer is read (and so verified) again; with it,
        // layers holding only reused content are skipped.
        let streamed = if opts.reuse.is_empty() {
            index.for_each_content(image, write)
        } else {
            index.for_each_content_where(image, want, write)
        };
        let pooled = pool.finish();
        pooled.and(streamed)
    })?;

    for (first, key) in &links {
        let path = path_of(key);
        fs::hard_link(path_of(first), &path).at("creating hardlink", &path)?;
        report.kinds.hardlinks += 1;
        crate::event::advance_paths(1);
    }

    // Metadata last: ownership before mode (chown clears setuid), and
    // directories deepest first, after everything inside them is done.
    let mut dirs = Vec::new();
    thread::scope(|scope| -> Result<()> {
        let pool = Pool::new(scope, pool_threads());
        for (key, id, node) in index.iter() {
            if primary.get(&id) != Some(&key) && !key.is_empty() {
                continue;
            }
            if node.kind.is_dir() {
                dirs.push((key, node));
            } else if !opts.reuse.contains_key(&id) {
                let path = path_of(key);
                let warnings = &warnings;
                // Metadata takes the entry's own lock, not its directory's.
                pool.submit(
                    key,
                    Box::new(move || apply_meta(&path, node, opts, warnings)),
                );
            }
        }
        pool.finish()
    })?;
    for (key, node) in dirs.iter().rev() {
        apply_meta(&path_of(key), node, opts, &warnings)?;
    }
    report.warnings = warnings.into_inner().expect("warnings lock");
    Ok(report)
}

/// Create a non-directory node (layer-backed file content comes later).
fn create_node(
    path: &Path,
    key: &[u8],
    node: &Node,
    opts: &UnpackOptions,
    warnings: &Mutex<Vec<String>>,
) -> Result<()> {
    match &node.kind {
        Kind::Dir => Ok(()),
        // Content, layer-backed or added by a transform, is written in the
        // streaming pass.
        Kind::File { .. } => Ok(()),
        Kind::Symlink { target } => {
            std::os::unix::fs::symlink(OsStr::from_bytes(target), path).at("creating symlink", path)
        }
        Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
            if opts.rootless {
                create_file(path)?;
                warnings.lock().expect("warnings lock").push(format!(
                    "{}: device {major}:{minor} made an empty file (not root)",
                    display_path(key)
                ));
                return Ok(());
            }
            let ft = if matches!(node.kind, Kind::CharDevice { .. }) {
                FileType::CharacterDevice
            } else {
                FileType::BlockDevice
            };
            rustix::fs::mknodat(
                CWD,
                path,
                ft,
                Mode::from_raw_mode(0o600),
                rustix::fs::makedev(*major, *minor),
            )
            .map_err(io::Error::from)
            .at("creating device node", path)
        }
        Kind::Fifo => rustix::fs::mknodat(CWD, path, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
            .map_err(io::Error::from)
            .at("creating fifo", path),
    }
}

fn create_file(path: &Path) -> Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .mode(0o600)
        .open(path)
        .at("creating file", path)
}

fn apply_meta(
    path: &Path,
    node: &Node,
    opts: &UnpackOptions,
    warnings: &Mutex<Vec<String>>,
) -> Result<()> {
    let Meta {
        mode,
        uid,
        gid,
        mtime,
        mtime_nsec,
        xattrs,
    } = &node.meta;
    let is_symlink = matches!(node.kind, Kind::Symlink { .. });
    if !opts.rootless {
        let (u, g) = (u32::try_from(*uid), u32::try_from(*gid));
        let (Ok(u), Ok(g)) = (u, g) else {
            return Err(Error::bad_input(
                path.display().to_string(),
                format!("owner {uid}:{gid} does not fit a 32-bit id"),
            ));
        };
        std::os::unix::fs::lchown(path, Some(u), Some(g)).at("changing owner of", path)?;
    }
    if !is_symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(*mode))
            .at("changing mode of", path)?;
    }
    for (name, value) in xattrs {
        if let Err(errno) = rustix::fs::lsetxattr(path, name.as_str(), value, XattrFlags::empty()) {
            let unsupported = errno == rustix::io::Errno::OPNOTSUPP;
            let e = io::Error::from(errno);
            // Unprivileged runs cannot set security.* or trusted.*; some file
            // systems have no xattrs. Say so instead of failing.
            if opts.rootless || unsupported {
                warnings
                    .lock()
                    .expect("warnings lock")
                    .push(format!("{}: xattr {name} not set: {e}", path.display()));
                continue;
            }
            return Err(Error::io_path(path, &format!("setting xattr {name} on"), e));
        }
    }
    let t = Timespec {
        tv_sec: *mtime,
        tv_nsec: *mtime_nsec as _,
    };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)
    .at("setting times of", path)?;
    Ok(())
}
