//! The Docker Engine, through bollard: `docker-daemon:` images are read
//! into the store reusing the layers it has (by diff ID), from the engine's
//! own layer store when it is local (see crate::layer_store) or else with
//! the save endpoint (a docker-archive stream), and written with load.

use crate::layer_store as storage;

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use bollard::Docker;
use futures_util::StreamExt;
use serde::Serialize;

use crate::archive;
use crate::digest::Digest;
use crate::image::{ImageConfig, Manifest, media};
use crate::registry::runtime;
use crate::store::{Descriptor, Layout};
use crate::{Error, Result};

fn engine_host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

/// Connect to the engine named by `DOCKER_HOST` (default: the local socket)
/// and agree on an API version the engine speaks.
pub async fn connect() -> Result<Docker> {
    let host = engine_host();
    let no_engine = |e: &dyn std::fmt::Display| {
        Error::Other(format!(
            "no Docker Engine answers at {host}: {e}\n  hint: start one (`dockerd &` as root, or `ci/setup`), or point DOCKER_HOST at a running engine"
        ))
    };
    let docker = Docker::connect_with_defaults().map_err(|e| no_engine(&e))?;
    // One request both proves the engine answers and agrees the API version.
    docker.negotiate_version().await.map_err(|e| no_engine(&e))
}

/// A blocking reader over chunks that an async task sends.
pub struct ChannelReader {
    rx: mpsc::Receiver<io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
    received: u64,
}

impl ChannelReader {
    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.current = chunk?;
                    self.received += self.current.len() as u64;
                    crate::event::advance(self.current.len() as u64);
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Stream `docker save NAME` as a reader (a docker-archive); NAME is known
/// to exist (an engine error mid-stream fails the read).
pub fn save(name: &str) -> Result<ChannelReader> {
    let docker = runtime().block_on(connect())?;
    let (tx, rx) = mpsc::sync_channel(16);
    let name = name.to_string();
    runtime().spawn(async move {
        let mut stream = docker.export_image(&name);
        while let Some(chunk) = stream.next().await {
            let item = chunk.map_err(|e| io::Error::other(format!("docker save {name}: {e}")));
            let failed = item.is_err();
            if tx.send(item).is_err() || failed {
                break;
            }
        }
    });
    Ok(ChannelReader {
        rx,
        current: bytes::Bytes::new(),
        received: 0,
    })
}

/// How an engine image came into the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadVia {
    /// The store had every blob: nothing was read from the engine.
    Store,
    /// What the store lacked was read from the engine's layer store.
    LayerStore,
    /// `docker save` streamed the whole image.
    DockerSave,
}

/// What reading an engine image took.
#[derive(Debug, Clone, Serialize)]
pub struct EngineRead {
    /// The engine's image ID (its config digest).
    pub image_id: String,
    pub via: ReadVia,
    pub layers: usize,
    /// Layers the store had already (by diff ID): not read again.
    pub layers_reused: usize,
    /// Of the layers, those the store holds as links into the engine's
    /// layer store (a container snapshot, which the engine then keeps):
    /// not copied, read from the engine when used.
    pub layers_linked: usize,
    /// Bytes the engine gave: config and layer tars from its layer store,
    /// or the whole `docker save` stream.
    pub bytes_exported: u64,
}

/// Bring engine image `name` into `store` and return its manifest
/// descriptor; `source` is the name it gets in the store. The store's
/// blobs are reused (the engine's image ID is the config digest, and an
/// uncompressed layer blob's digest is its diff ID); what is missing is
/// read from the engine's layer store when it can be, else the image is
/// exported with `docker save`. Everything written is verified by sha256,
/// and reused blobs are verified whenever they are read. With `link` (an
/// image gridship keeps in the engine: a container snapshot), layers the
/// store lacks are not copied: the store links them in the engine's layer
/// store, and every read of them is verified by their diff ID.
pub fn read_into_store(
    name: &str,
    store: &Layout,
    source: &str,
    link: bool,
) -> Result<(Descriptor, EngineRead)> {
    let image = inspect_image(name)?;
    if let Some(size) = image.size {
        crate::event::set_total(size);
    }
    let mut read = EngineRead {
        image_id: image.id.clone(),
        via: ReadVia::Store,
        layers: image.layers,
        layers_reused: 0,
        layers_linked: 0,
        bytes_exported: 0,
    };
    match reuse_stored_blobs(&image, store, source, link.then_some(name), &mut read) {
        Ok(desc) => {
            tracing::info!(
                "{source}: {} of {} layers reused from the store, {}{} bytes read from the engine ({})",
                read.layers_reused,
                read.layers,
                match read.layers_linked {
                    0 => String::new(),
                    n => format!("{n} linked in the engine's layer store, "),
                },
                read.bytes_exported,
                match read.via {
                    ReadVia::Store => "no export",
                    _ => "its layer store, no export",
                }
            );
            return Ok((desc, read));
        }
        // Content that does not verify, or a layer store that cannot be
        // read through, is worth a warning; an engine that is not local is not.
        Err(why @ (Error::DigestMismatch { .. } | Error::Io { .. })) => {
            tracing::warn!("{source}: exporting with docker save: {why}")
        }
        Err(why) => tracing::info!("{source}: exporting with docker save: {why}"),
    }
    let mut reader = save(name)?;
    let wanted = (!name.starts_with("sha256:")).then_some(name);
    let desc = archive::import_docker_archive(&mut reader, store, wanted, source)?;
    read.via = ReadVia::DockerSave;
    read.layers_reused = 0;
    read.layers_linked = 0;
    read.bytes_exported = reader.received();
    tracing::info!(
        "{source}: {} bytes exported with docker save",
        read.bytes_exported
    );
    Ok((desc, read))
}

/// The image stored under `source`, when its config is `id` and all its
/// blobs are there.
fn stored_under(store: &Layout, source: &str, id: &Digest) -> Option<Descriptor> {
    let desc = store.resolve(Some(source)).ok()?;
    if !media::is_manifest(&desc.media_type) {
        return None;
    }
    let raw = store.read_blob(&desc.digest, Some(desc.size)).ok()?;
    let manifest: Manifest = serde_json::from_slice(&raw).ok()?;
    let complete = manifest.config.digest == *id
        && std::iter::once(&manifest.config)
            .chain(&manifest.layers)
            .all(|d| store.has_blob(&d.digest, Some(d.size)));
    complete.then_some(desc)
}

/// The layer store of the local engine that holds `image`.
fn layer_store(image: &EngineImage) -> Result<storage::LayerStore> {
    if !engine_host().starts_with("unix://") {
        return Err(Error::Other(format!(
            "the engine at {} is not local",
            engine_host()
        )));
    }
    let (driver, upper) = image.storage.as_ref().ok_or_else(|| {
        Error::Other("the engine reports no storage directory for the image".into())
    })?;
    storage::LayerStore::locate(driver, upper).map_err(Error::Other)
}

/// Assemble the image from the store's blobs, reading only what is
/// missing from the engine's layer store (or, with `link_to` naming the
/// engine image that keeps them, linking it there); `Err` says why
/// `docker save` is needed instead.
fn reuse_stored_blobs(
    image: &EngineImage,
    store: &Layout,
    source: &str,
    link_to: Option<&str>,
    read: &mut EngineRead,
) -> Result<Descriptor> {
    let id: Digest = image.id.parse()?;
    if let Some(desc) = stored_under(store, source, &id) {
        read.layers_reused = read.layers;
        return Ok(desc);
    }
    if store.blob_size(&id).is_none() {
        let raw = layer_store(image)?.config(&id)?;
        store.put_blob(&raw)?;
        read.bytes_exported += raw.len() as u64;
        read.via = ReadVia::LayerStore;
    }
    let config_raw = store.read_blob(&id, None)?;
    let config: ImageConfig = serde_json::from_slice(&config_raw)
        .map_err(|e| Error::Other(format!("blob {id} is not an image config: {e}")))?;
    if config.rootfs.diff_ids != image.diff_ids || image.diff_ids.len() != image.layers {
        return Err(Error::Other(format!(
            "the config {id} lists other layers than the engine reports"
        )));
    }
    let chain_ids = storage::chain_ids(&config.rootfs.diff_ids);
    let mut layers = Vec::with_capacity(chain_ids.len());
    for (diff_id, chain_id) in config.rootfs.diff_ids.iter().zip(&chain_ids) {
        let size = match store.blob_size(diff_id) {
            Some(size) => {
                read.layers_reused += 1;
                // A layer the store holds as a link (the same layer in an
                // earlier snapshot: the engine keeps one copy of a chain
                // ID) now names this image, which keeps it.
                if let Some(engine_image) = link_to
                    && !store.blob_path(diff_id).is_file()
                    && let Some(mut link) = store.engine_link(diff_id)
                {
                    link.image = engine_image.to_string();
                    // The same diff ID may sit on another parent chain there.
                    link.chain_id = chain_id.clone();
                    store.link_engine_layer(diff_id, &link)?;
                    read.layers_linked += 1;
                }
                size
            }
            None if let Some(engine_image) = link_to => {
                let engine = layer_store(image)?;
                let size = engine.layer_size(chain_id)?;
                store.link_engine_layer(
                    diff_id,
                    &crate::store::EngineLink {
                        engine_root: engine.root().to_path_buf(),
                        chain_id: chain_id.clone(),
                        size,
                        image: engine_image.to_string(),
                    },
                )?;
                read.layers_linked += 1;
                read.via = ReadVia::LayerStore;
                size
            }
            None => {
                let mut w = store.blob_writer()?;
                read.bytes_exported += layer_store(image)?.write_layer(chain_id, &mut w)?;
                read.via = ReadVia::LayerStore;
                let what = format!("layer {diff_id} of {source} from the engine's layer store");
                w.finish(Some((diff_id, u64::MAX)), &what)?.1
            }
        };
        layers.push(Descriptor::new(media::OCI_LAYER, diff_id.clone(), size));
    }
    Manifest::put_oci(store, (id, config_raw.len() as u64), layers)
}

/// `docker load` a docker-archive file.
pub fn load(archive: &Path) -> Result<()> {
    runtime().block_on(async {
        let docker = connect().await?;
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|e| Error::io_path(archive, "opening", e))?;
        let body = crate::registry::file_chunks(file);
        let mut progress = docker.import_image_stream(
            bollard::query_parameters::ImportImageOptions {
                quiet: true,
                ..Default::default()
            },
            body,
            None,
        );
        while let Some(msg) = progress.next().await {
            msg.map_err(|e| Error::Other(format!("docker load: {e}")))?;
        }
        Ok(())
    })
}

/// Map an engine error on `what` to ours: a missing object is NotFound.
pub(crate) fn engine_error(what: &str, e: bollard::errors::Error) -> Error {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            message,
        } => Error::NotFound {
            what: format!("{what} in the Docker Engine at {}", engine_host()),
            detail: message,
        },
        e => Error::Other(format!("{what}: {e}")),
    }
}

/// An engine image: its id (config digest), repo digests, layers.
#[derive(Debug, Clone)]
pub struct EngineImage {
    pub id: String,
    pub repo_digests: Vec<String>,
    pub layers: usize,
    /// The layers' diff IDs (those that are sha256 digests).
    pub diff_ids: Vec<Digest>,
    /// The storage driver and the image's top layer directory, if the
    /// engine says (overlay2: `ROOT/overlay2/ID/diff`).
    pub storage: Option<(String, PathBuf)>,
    /// Bytes of its layers, uncompressed, as the engine counts them: about
    /// what an export reads (the progress total).
    pub size: Option<u64>,
}

/// Look an image up in the engine.
pub fn inspect_image(name: &str) -> Result<EngineImage> {
    runtime().block_on(async {
        let docker = connect().await?;
        let i = docker
            .inspect_image(name)
            .await
            .map_err(|e| engine_error(&format!("image {name}"), e))?;
        let layers = i.root_fs.and_then(|r| r.layers).unwrap_or_default();
        Ok(EngineImage {
            id: i.id.unwrap_or_default(),
            repo_digests: i.repo_digests.unwrap_or_default(),
            layers: layers.len(),
            diff_ids: layers.iter().filter_map(|l| l.parse().ok()).collect(),
            storage: i.graph_driver.and_then(|g| {
                let upper = g.data.get("UpperDir")?;
                Some((g.name, PathBuf::from(upper)))
            }),
            size: i.size.and_then(|s| u64::try_from(s).ok()),
        })
    })
}

/// Registry credentials for the engine (`X-Registry-Auth`), from
/// `--creds` or the Docker client configuration.
fn engine_credentials(
    registry: &str,
    creds: Option<&(String, String)>,
) -> Result<Option<bollard::auth::DockerCredentials>> {
    let (user, pass) = match creds {
        Some((u, p)) => (u.clone(), p.clone()),
        None => match crate::registry::docker_config_auth(registry)? {
            oci_client::secrets::RegistryAuth::Basic(u, p) => (u, p),
            _ => return Ok(None),
        },
    };
    Ok(Some(bollard::auth::DockerCredentials {
        username: Some(user),
        password: Some(pass),
        serveraddress: Some(registry.to_string()),
        ..Default::default()
    }))
}

/// The registry host of an engine image name (`docker.io` when it has none).
pub fn registry_of(name: &str) -> String {
    match name.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_string(),
        _ => "docker.io".to_string(),
    }
}

/// `docker pull NAME`, with credentials for its registry.
pub fn pull(name: &str, creds: Option<&(String, String)>) -> Result<EngineImage> {
    let auth = engine_credentials(&registry_of(name), creds)?;
    runtime().block_on(async {
        let docker = connect().await?;
        let mut stream = docker.create_image(
            Some(bollard::query_parameters::CreateImageOptions {
                from_image: Some(name.to_string()),
                ..Default::default()
            }),
            None,
            auth,
        );
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(|e| engine_error(&format!("docker pull {name}"), e))?;
            if let Some(err) = msg.error_detail.and_then(|d| d.message) {
                return Err(Error::Other(format!("docker pull {name}: {err}")));
            }
        }
        Ok::<_, Error>(())
    })?;
    inspect_image(name)
}

/// What to build: a context tar, the Dockerfile in it, arguments, labels.
#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    pub context_tar: Vec<u8>,
    pub dockerfile: String,
    pub tag: String,
    pub build_args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// Network mode of the RUN steps (`none` for offline builds).
    pub network: Option<String>,
    /// Pull the base image even when the engine has one.
    pub pull: bool,
    pub no_cache: bool,
    /// Credentials for the base image's registry.
    pub base_registry: Option<String>,
    pub creds: Option<(String, String)>,
}

/// Build an image with the engine's classic builder; `log` gets the build
/// output line by line. Returns the image id.
pub fn build(req: &BuildRequest, mut log: impl FnMut(&str)) -> Result<String> {
    let credentials = match &req.base_registry {
        Some(reg) => engine_credentials(reg, req.creds.as_ref())?
            .map(|c| std::collections::HashMap::from([(reg.clone(), c)])),
        None => None,
    };
    let options = bollard::query_parameters::BuildImageOptions {
        dockerfile: req.dockerfile.clone(),
        t: Some(req.tag.clone()),
        rm: true,
        forcerm: true,
        nocache: req.no_cache,
        pull: req.pull.then(|| "1".to_string()),
        buildargs: Some(req.build_args.clone().into_iter().collect()),
        labels: Some(req.labels.clone().into_iter().collect()),
        networkmode: req.network.clone(),
        ..Default::default()
    };
    let body = bollard::body_full(bytes::Bytes::from(req.context_tar.clone()));
    runtime().block_on(async {
        let docker = connect().await?;
        let mut stream = docker.build_image(options, credentials, Some(body));
        let mut id = None;
        let mut tail: Vec<String> = Vec::new();
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(|e| match e {
                bollard::errors::Error::DockerStreamError { error } => Error::Other(format!(
                    "docker build {}: {error}\n{}",
                    req.tag,
                    tail.join("\n")
                )),
                e => Error::Other(format!("docker build {}: {e}", req.tag)),
            })?;
            if let Some(s) = &msg.stream {
                for line in s.lines().filter(|l| !l.trim().is_empty()) {
                    log(line);
                    tail.push(line.to_string());
                    if tail.len() > 20 {
                        tail.remove(0);
                    }
                }
            }
            if let Some(err) = msg.error_detail.and_then(|d| d.message) {
                return Err(Error::Other(format!(
                    "docker build {}: {err}\n{}",
                    req.tag,
                    tail.join("\n")
                )));
            }
            if let Some(aux) = msg.aux
                && let Some(i) = aux.id
            {
                id = Some(i);
            }
        }
        match id {
            Some(id) => Ok(id),
            None => Ok(inspect_image(&req.tag)?.id),
        }
    })
}

/// `docker commit` a container into an image named `tag`, without
/// stopping it; `pause` freezes it while the engine copies its changes.
pub fn commit(container: &str, tag: &str, pause: bool) -> Result<String> {
    let (repo, t) = match tag.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r.to_string(), t.to_string()),
        _ => (tag.to_string(), "latest".to_string()),
    };
    runtime().block_on(async {
        let docker = connect().await?;
        let r = docker
            .commit_container(
                bollard::query_parameters::CommitContainerOptions {
                    container: Some(container.to_string()),
                    repo: Some(repo),
                    tag: Some(t),
                    pause,
                    comment: Some("gridship snapshot".into()),
                    ..Default::default()
                },
                bollard::models::ContainerConfig::default(),
            )
            .await
            .map_err(|e| engine_error(&format!("container {container}"), e))?;
        Ok(r.id)
    })
}

/// The state of a container: running, and its image.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image_id: String,
    pub running: bool,
}

pub fn inspect_container(name: &str) -> Result<ContainerInfo> {
    runtime().block_on(async {
        let docker = connect().await?;
        let c = docker
            .inspect_container(name, None)
            .await
            .map_err(|e| engine_error(&format!("container {name}"), e))?;
        Ok(ContainerInfo {
            id: c.id.unwrap_or_default(),
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            image_id: c.image.unwrap_or_default(),
            running: c.state.and_then(|s| s.running).unwrap_or(false),
        })
    })
}

/// Remove an image name (not the layers other names share).
pub fn remove_image(name: &str) -> Result<()> {
    runtime().block_on(async {
        let docker = connect().await?;
        docker
            .remove_image(
                name,
                Some(bollard::query_parameters::RemoveImageOptions {
                    noprune: false,
                    force: false,
                    ..Default::default()
                }),
                None,
            )
            .await
            .map_err(|e| engine_error(&format!("image {name}"), e))?;
        Ok(())
    })
}

/// The container snapshots gridship keeps in the engine for one store
/// (tags `gridship-snapshot/CONTAINER:STORE-PID`, `store` the store's key):
/// each tag with its image ID.
pub fn snapshot_images(store: &str) -> Result<Vec<(String, String)>> {
    let ours = format!("{store}-");
    runtime().block_on(async {
        let docker = connect().await?;
        let filters = std::collections::HashMap::from([(
            "reference".to_string(),
            vec!["gridship-snapshot/*".to_string()],
        )]);
        let images = docker
            .list_images(Some(bollard::query_parameters::ListImagesOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| engine_error("the snapshot images", e))?;
        Ok(images
            .into_iter()
            .flat_map(|i| {
                let id = i.id.clone();
                i.repo_tags
                    .into_iter()
                    .filter(|t| {
                        t.rsplit_once(':')
                            .is_some_and(|(_, tag)| tag.starts_with(&ours))
                    })
                    .map(move |t| (t, id.clone()))
            })
            .collect())
    })
}

/// What a container run gave.
#[derive(Debug, Clone, Default)]
pub struct ContainerRun {
    /// None: killed (time limit).
    pub code: Option<i64>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

/// Run `argv` (entrypoint replaced) in a new container of `image` with
/// `env`, all GPUs requested from the engine's `nvidia` device driver when
/// `gpus` (what `docker run --gpus all` asks), no network; the container is
/// removed afterwards, whatever happened.
pub fn run_container(
    image: &str,
    argv: &[String],
    env: &[(String, String)],
    gpus: bool,
    timeout: std::time::Duration,
) -> Result<ContainerRun> {
    use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig};
    let name = format!(
        "gridship-smoke-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    );
    runtime().block_on(async {
        let docker = connect().await?;
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(argv.get(..1).unwrap_or_default().to_vec()),
            cmd: Some(argv.get(1..).unwrap_or_default().to_vec()),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                device_requests: gpus.then(|| {
                    vec![DeviceRequest {
                        driver: Some("nvidia".into()),
                        count: Some(-1),
                        capabilities: Some(vec![vec!["gpu".into()]]),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        docker
            .create_container(
                Some(bollard::query_parameters::CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| engine_error(&format!("creating a container of {image}"), e))?;
        let result = async {
            docker
                .start_container(&name, None)
                .await
                .map_err(|e| engine_error(&format!("starting a container of {image}"), e))?;
            let mut run = ContainerRun::default();
            let mut wait = docker.wait_container(&name, None);
            match tokio::time::timeout(timeout, wait.next()).await {
                Err(_) => {
                    run.timed_out = true;
                    let _ = docker.kill_container(&name, None).await;
                }
                Ok(Some(Ok(r))) => run.code = Some(r.status_code),
                Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError {
                    code, ..
                }))) => run.code = Some(code),
                Ok(Some(Err(e))) => return Err(engine_error(&format!("container {name}"), e)),
                Ok(None) => {}
            }
            let mut logs = docker.logs(
                &name,
                Some(bollard::query_parameters::LogsOptions {
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            );
            while let Some(chunk) = logs.next().await {
                match chunk.map_err(|e| engine_error(&format!("logs of {name}"), e))? {
                    bollard::container::LogOutput::StdErr { message } => {
                        run.stderr.push_str(&String::from_utf8_lossy(&message))
                    }
                    other => run
                        .stdout
                        .push_str(&String::from_utf8_lossy(&other.into_bytes())),
                }
            }
            Ok(run)
        }
        .await;
        let _ = docker
            .remove_container(
                &name,
                Some(bollard::query_parameters::RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
        result
    })
}
