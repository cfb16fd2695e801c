//! The transports together: open any reference as an [`Image`] (bringing
//! registry, engine and archive images into the store first), and copy an
//! image to any destination.

use std::path::PathBuf;

use serde::Serialize;

use crate::archive;
use crate::digest::Digest;
use crate::engine;
use crate::image::{Image, PlatformWanted};
use crate::reference::ImageRef;
use crate::registry::{self, RegistryOptions};
use crate::store::{Layout, default_store_path};
use crate::{Error, Result};

/// Where images are kept and how remote ones are reached.
#[derive(Debug, Clone)]
pub struct Context {
    pub store: PathBuf,
    pub registry: RegistryOptions,
    pub platform: PlatformWanted,
    /// `container:` sources are paused while the engine commits them.
    pub pause_containers: bool,
}

impl Default for Context {
    fn default() -> Self {
        Context {
            store: default_store_path(),
            registry: RegistryOptions {
                tls_verify: true,
                ..Default::default()
            },
            platform: PlatformWanted::host(),
            pause_containers: false,
        }
    }
}

impl Context {
    pub fn store(&self) -> Result<Layout> {
        Layout::open_or_create(&self.store)
    }
}

/// Open `src` for reading.
pub fn open(src: &ImageRef, ctx: &Context) -> Result<Image> {
    open_reporting(src, ctx).map(|(image, _)| image)
}

/// Open `src` for reading, and say what reading a `docker-daemon:` or
/// `container:` source took from the engine.
pub fn open_reporting(
    src: &ImageRef,
    ctx: &Context,
) -> Result<(Image, Option<engine::EngineRead>)> {
    let name = src.to_string();
    let into_store = |desc| -> Result<Image> {
        let store = ctx.store()?;
        store.set_ref(&name, &desc)?;
        Image::load(store, desc, &name, &ctx.platform)
    };
    let mut engine_read = None;
    let image = match src {
        ImageRef::Registry(r) => {
            let store = ctx.store()?;
            let desc = registry::pull(r, &ctx.registry, &store, &ctx.platform)?;
            into_store(desc)
        }
        ImageRef::DockerDaemon(n) => {
            let store = ctx.store()?;
            let (desc, read) = engine::read_into_store(n, &store, &name, false)?;
            engine_read = Some(read);
            into_store(desc)
        }
        ImageRef::Oci { dir, tag } => {
            let layout = Layout::open(dir)?;
            let desc = layout.resolve(tag.as_deref())?;
            Image::load(layout, desc, &name, &ctx.platform)
        }
        ImageRef::OciArchive { file, tag } => {
            let store = ctx.store()?;
            let reader = archive::open_archive_file(file)?;
            let desc = archive::import_oci_archive(reader, &store, tag.as_deref(), &name)?;
            into_store(desc)
        }
        ImageRef::DockerArchive { file, name: wanted } => {
            let store = ctx.store()?;
            let reader = archive::open_archive_file(file)?;
            let desc = archive::import_docker_archive(reader, &store, wanted.as_deref(), &name)?;
            into_store(desc)
        }
        ImageRef::Store(n) => {
            let store = ctx.store()?;
            let desc = store.resolve(Some(n))?;
            Image::load(store, desc, &name, &ctx.platform)
        }
        ImageRef::Container(c) => {
            let store = ctx.store()?;
            let (desc, read) = snapshot_container(c, ctx.pause_containers, &store, &name)?;
            engine_read = Some(read);
            into_store(desc)
        }
    }?;
    Ok((image, engine_read))
}

/// Capture a container through the engine: `docker commit` (the container
/// keeps running; `pause` freezes it during the copy) gives its image's
/// layers plus one layer of the changes made in it, named `name` in the
/// store. Where the engine's layer store can be read (a local overlay2
/// engine, as root) nothing is copied: the store links the layers it lacks
/// and the engine keeps the committed image (`gridship-snapshot/ID:STORE-PID`)
/// for as long as a name in the store leads to it; older snapshots of the
/// store that no name needs any more are removed then. Otherwise the
/// layers are copied like `docker-daemon:` and the committed image removed.
fn snapshot_container(
    container: &str,
    pause: bool,
    store: &Layout,
    name: &str,
) -> Result<(crate::store::Descriptor, engine::EngineRead)> {
    let info = engine::inspect_container(container)?;
    let key = snapshot_key(store);
    let tag = format!(
        "gridship-snapshot/{}:{key}-{}",
        info.id.get(..12).unwrap_or(&info.id),
        std::process::id()
    );
    engine::commit(&info.id, &tag, pause)?;
    let result = engine::read_into_store(&tag, store, name, true)
        .and_then(|(desc, read)| store.set_ref(name, &desc).map(|()| (desc, read)));
    let linked = matches!(&result, Ok((_, read)) if read.layers_linked > 0);
    if !linked && let Err(e) = engine::remove_image(&tag) {
        tracing::warn!("could not remove the engine image {tag}: {e}");
    }
    if result.is_ok()
        && let Err(e) = prune_snapshots(store, Some(&tag), false, false)
    {
        tracing::warn!("could not remove older snapshots from the engine: {e}");
    }
    result
}

/// What names a store in its snapshots' tags: its path, hashed.
fn snapshot_key(store: &Layout) -> String {
    let root = std::fs::canonicalize(store.root()).unwrap_or_else(|_| store.root().to_path_buf());
    Digest::of_bytes(root.as_os_str().as_encoded_bytes()).hex()[..12].to_string()
}

/// Remove the container snapshots this store keeps in the engine that no
/// name in the store leads to, except `keep` and, unless the caller holds
/// the store `alone`, those of a gridship still running (its pid ends the
/// tag): they may be its own, not yet named. Returns the tags removed (or,
/// with `dry_run`, that would be).
pub fn prune_snapshots(
    store: &Layout,
    keep: Option<&str>,
    alone: bool,
    dry_run: bool,
) -> Result<Vec<String>> {
    let held = store.reachable_blobs()?;
    let mut removed = Vec::new();
    for (tag, id) in engine::snapshot_images(&snapshot_key(store))? {
        let pid = tag.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
        let live = !alone
            && pid.is_some_and(|p| {
                p == std::process::id() || std::path::Path::new(&format!("/proc/{p}")).exists()
            });
        let named = id.parse::<Digest>().is_ok_and(|d| held.contains(&d));
        if keep == Some(tag.as_str()) || live || named {
            continue;
        }
        if !dry_run {
            engine::remove_image(&tag)?;
        }
        removed.push(tag);
    }
    Ok(removed)
}

#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    pub source: String,
    pub destination: String,
    pub manifest_digest: Digest,
    pub media_type: String,
    /// Blobs written at the destination (others were there already).
    pub blobs_copied: usize,
    pub bytes: u64,
    /// What reading a `docker-daemon:` or `container:` source took from
    /// the engine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_read: Option<engine::EngineRead>,
}

/// Copy the blobs of `image` into `dest` (verified), skipping what is there.
pub fn copy_blobs(image: &Image, dest: &Layout) -> Result<usize> {
    let mut copied = 0;
    for d in std::iter::once(&image.manifest_desc).chain(image.blobs()) {
        if dest.has_blob(&d.digest, Some(d.size)) {
            continue;
        }
        let mut r = image.layout.open_blob(&d.digest, Some(d.size))?;
        dest.put_blob_from(
            &mut r,
            &d.digest,
            Some(d.size),
            &format!("blob {}", d.digest),
        )?;
        copied += 1;
    }
    Ok(copied)
}

/// A docker-style name for an image from `src`, for archives and the engine.
fn docker_name(src: &ImageRef) -> Option<String> {
    match src {
        ImageRef::Registry(r) if r.tag.is_some() => Some(format!(
            "{}/{}:{}",
            r.registry,
            r.repository,
            r.tag.as_deref().unwrap_or("latest")
        )),
        ImageRef::DockerDaemon(n) if !n.starts_with("sha256:") => Some(n.clone()),
        ImageRef::DockerArchive { name, .. } => name.clone(),
        _ => None,
    }
}

pub fn copy(src: &ImageRef, dst: &ImageRef, ctx: &Context) -> Result<CopyReport> {
    if let ImageRef::Container(_) = dst {
        return Err(Error::bad_input(
            dst.to_string(),
            "a container is a source only; write to docker-daemon:NAME:TAG, store:NAME or a registry",
        ));
    }
    let (image, engine_read) = open_reporting(src, ctx)?;
    let bytes = image.blobs().map(|d| d.size).sum::<u64>() + image.manifest_desc.size;
    let mut report = CopyReport {
        source: src.to_string(),
        destination: dst.to_string(),
        manifest_digest: image.manifest_desc.digest.clone(),
        media_type: image.manifest_desc.media_type.clone(),
        blobs_copied: 0,
        bytes,
        engine_read,
    };
    match dst {
        ImageRef::Registry(r) => {
            let (_, uploaded) = registry::push(&image, r, &ctx.registry)?;
            report.blobs_copied = uploaded;
        }
        ImageRef::Oci { dir, tag } => {
            let layout = Layout::open_or_create(dir)?;
            report.blobs_copied = copy_blobs(&image, &layout)?;
            let mut desc = image.manifest_desc.clone();
            desc.annotations.clear();
            match tag {
                Some(t) => layout.set_ref(t, &desc)?,
                None => layout.update_index(|index| {
                    index
                        .manifests
                        .retain(|d| d.ref_name().is_some() || d.digest != desc.digest);
                    index.manifests.push(desc);
                })?,
            }
        }
        ImageRef::OciArchive { file, tag } => {
            archive::write_oci_archive(&image, file, tag.as_deref())?;
            report.blobs_copied = image.blobs().count() + 1;
        }
        ImageRef::DockerArchive { file, name } => {
            let name = name.clone().or_else(|| docker_name(src));
            archive::write_docker_archive(&image, file, name.as_deref())?;
            report.blobs_copied = image.blobs().count();
        }
        ImageRef::DockerDaemon(n) => {
            if n.starts_with("sha256:") {
                return Err(Error::bad_input(
                    dst.to_string(),
                    "an engine destination needs NAME:TAG, not an image ID",
                ));
            }
            let store = ctx.store()?;
            let tmp = tempfile::Builder::new()
                .prefix(".docker-load-")
                .suffix(".tar")
                .tempfile_in(store.root())
                .map_err(|e| Error::io_path(store.root(), "creating a temporary file in", e))?;
            archive::write_docker_archive(&image, tmp.path(), Some(n))?;
            engine::load(tmp.path())?;
            report.blobs_copied = image.blobs().count();
        }
        ImageRef::Container(_) => unreachable!("refused before the source is read"),
        ImageRef::Store(n) => {
            let store = ctx.store()?;
            if store.root() != image.layout.root() {
                report.blobs_copied = copy_blobs(&image, &store)?;
            }
            store.set_ref(n, &image.manifest_desc)?;
        }
    }
    Ok(report)
}
