//! OCI images written into the store: an image plus one more layer (a
//! site overlay), with its config edited. Blobs go through the store's
//! hash-while-writing writer; the manifest is written last and then named.

use std::io::Write;

use crate::digest::Digest;
use crate::image::{Image, ImageConfig, Manifest, PlatformWanted, media};
use crate::store::{Descriptor, Layout};
use crate::{Error, Result};

/// One layer to add: an uncompressed tar and what to say in the history.
pub struct NewLayer<'a> {
    pub tar: &'a [u8],
    pub created_by: String,
    pub comment: Option<String>,
}

/// Write `image` + `layer` into `store` under `name`, with `edit` applied
/// to the config. The layer is gzip-compressed (deterministically: no name,
/// mtime 0) with the media type that matches the manifest's kind.
pub fn append_layer(
    image: &Image,
    store: &Layout,
    layer: &NewLayer<'_>,
    created: &str,
    edit: impl FnOnce(&mut ImageConfig),
    name: &str,
) -> Result<Image> {
    if store.root() != image.layout.root() {
        crate::transport::copy_blobs(image, store)?;
    }
    let docker = image.manifest_desc.media_type == media::DOCKER_MANIFEST;

    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(store.blob_writer()?, flate2::Compression::new(6));
    gz.write_all(layer.tar)
        .and_then(|_| gz.try_finish())
        .map_err(|e| Error::io(format!("compressing the new layer of {name}"), e))?;
    let (layer_digest, layer_size) = gz
        .finish()
        .map_err(|e| Error::io(format!("compressing the new layer of {name}"), e))?
        .finish(None, "new layer")?;
    let layer_desc = Descriptor::new(
        if docker {
            media::DOCKER_LAYER_GZIP
        } else {
            media::OCI_LAYER_GZIP
        },
        layer_digest,
        layer_size,
    );

    let mut config = image.config.clone();
    config.rootfs.diff_ids.push(Digest::of_bytes(layer.tar));
    let mut history = serde_json::json!({
        "created": created,
        "created_by": layer.created_by,
    });
    if let Some(c) = &layer.comment {
        history["comment"] = c.clone().into();
    }
    config.history.push(history);
    config.created = Some(created.to_string());
    edit(&mut config);
    let layers = image
        .manifest
        .layers
        .iter()
        .cloned()
        .chain(std::iter::once(layer_desc))
        .collect();
    put_image(
        store,
        name,
        &config,
        &image.manifest.config.media_type,
        |config| Manifest {
            config,
            layers,
            ..image.manifest.clone()
        },
        &image.manifest_desc.media_type,
        image.manifest_desc.platform.clone(),
    )
}

/// The last steps of writing an image: the config blob, the manifest
/// `manifest` builds around the config's descriptor, then its name.
fn put_image(
    store: &Layout,
    name: &str,
    config: &ImageConfig,
    config_type: &str,
    manifest: impl FnOnce(Descriptor) -> Manifest,
    manifest_type: &str,
    platform: Option<crate::store::Platform>,
) -> Result<Image> {
    let config_raw = serde_json::to_vec(config).expect("config serializes");
    let (config_digest, config_size) = store.put_blob(&config_raw)?;
    let manifest = manifest(Descriptor::new(config_type, config_digest, config_size));
    let manifest_raw = serde_json::to_vec(&manifest).expect("manifest serializes");
    let (digest, size) = store.put_blob(&manifest_raw)?;
    let mut desc = Descriptor::new(manifest_type, digest, size);
    desc.platform = platform;
    store.set_ref(name, &desc)?;
    Image::load(store.clone(), desc, name, &PlatformWanted::host())
}

/// What [`write_image`] keeps in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// The image, named.
    Named,
    /// The (small) config only: the new layer is hashed as it streams and
    /// dropped, and no name is set (`name` is what errors call the image).
    /// For a sink that names the image by its digests (CVMFS metadata) but
    /// never reads the layer.
    DigestsOnly,
}

/// Write a new OCI image into `store` under `name`: the first `keep` layers
/// of `base` (media types in OCI spelling) plus one uncompressed layer that
/// `write` streams (hashed while written; for a plain tar the digest is the
/// diff_id), with `config` (its rootfs and history are set here: the kept
/// layers' history, then `history`). The manifest is written last. Both
/// modes give the same digests.
#[allow(clippy::too_many_arguments)]
pub fn write_image(
    base: &Image,
    keep: usize,
    store: &Layout,
    config: ImageConfig,
    history: serde_json::Value,
    write: impl FnOnce(&mut dyn Write) -> Result<()>,
    name: &str,
    mode: WriteMode,
) -> Result<Image> {
    let (layer_digest, layer_size) = match mode {
        WriteMode::Named => {
            if store.root() != base.layout.root() && keep > 0 {
                crate::transport::copy_blobs(base, store)?;
            }
            let mut w = store.blob_writer()?;
            write(&mut w)?;
            w.finish(None, "the promoted layer")?
        }
        WriteMode::DigestsOnly => {
            let mut w = crate::digest::HashingWriter::new(std::io::sink());
            write(&mut w)?;
            let (_, digest, size) = w.finish();
            (digest, size)
        }
    };
    let (config, manifest) = flattened(base, keep, config, history, layer_digest, layer_size);
    match mode {
        WriteMode::Named => put_image(
            store,
            name,
            &config,
            media::OCI_CONFIG,
            manifest,
            media::OCI_MANIFEST,
            base.manifest_desc.platform.clone(),
        ),
        WriteMode::DigestsOnly => {
            let config_raw = serde_json::to_vec(&config).expect("config serializes");
            let (digest, size) = store.put_blob(&config_raw)?;
            Image::from_manifest(
                store.clone(),
                manifest(Descriptor::new(media::OCI_CONFIG, digest, size)),
                name,
            )
        }
    }
}

/// The config and (around the config's descriptor) the manifest of `keep`
/// layers of `base` plus one uncompressed layer.
fn flattened(
    base: &Image,
    keep: usize,
    mut config: ImageConfig,
    history: serde_json::Value,
    layer_digest: Digest,
    layer_size: u64,
) -> (ImageConfig, impl FnOnce(Descriptor) -> Manifest) {
    let oci_type = |t: &str| match t {
        media::DOCKER_LAYER_GZIP => media::OCI_LAYER_GZIP.to_string(),
        "application/vnd.docker.image.rootfs.diff.tar" => media::OCI_LAYER.to_string(),
        t => t.to_string(),
    };
    let mut layers: Vec<Descriptor> = base.manifest.layers[..keep]
        .iter()
        .map(|d| Descriptor::new(oci_type(&d.media_type), d.digest.clone(), d.size))
        .collect();
    layers.push(Descriptor::new(
        media::OCI_LAYER,
        layer_digest.clone(),
        layer_size,
    ));

    config.rootfs.kind = "layers".into();
    config.rootfs.diff_ids = base.config.rootfs.diff_ids[..keep].to_vec();
    config.rootfs.diff_ids.push(layer_digest);
    // The history of the kept layers: entries up to the keep-th that made one.
    let mut kept_history = Vec::new();
    let mut made = 0;
    for h in &base.config.history {
        if made == keep {
            break;
        }
        if !h
            .get("empty_layer")
            .and_then(|e| e.as_bool())
            .unwrap_or(false)
        {
            made += 1;
        }
        kept_history.push(h.clone());
    }
    kept_history.push(history);
    config.history = kept_history;
    (config, move |config| Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        config,
        layers,
        annotations: Default::default(),
        extra: Default::default(),
    })
}

/// The transformed tree as one flattened OCI image in the store (promote
/// `--to oci`), or only its digests (what a CVMFS tree is named by).
pub struct OciSink {
    pub store: Layout,
    /// The store name, e.g. promoted/NAME:TAG.
    pub name: String,
    /// The history entry of the new layer (created, created_by).
    pub history: serde_json::Value,
    pub mode: WriteMode,
    /// After [`super::Sink::write`].
    pub written: Option<Image>,
}

impl OciSink {
    /// Promote's image: promoted/NAME:TAG in the store.
    pub fn from_spec(spec: &super::Spec) -> Result<Box<dyn super::Sink>> {
        Ok(Box::new(OciSink::for_spec(spec, WriteMode::Named)?))
    }

    pub fn for_spec(spec: &super::Spec, mode: WriteMode) -> Result<OciSink> {
        Ok(OciSink {
            store: spec.store.clone(),
            name: format!("promoted/{}:{}", spec.name, spec.tag),
            history: serde_json::json!({
                "created": crate::clock::rfc3339_utc(spec.created)?,
                "created_by": spec.created_by,
            }),
            mode,
            written: None,
        })
    }
}

impl super::Sink for OciSink {
    fn kind(&self) -> &'static str {
        "oci"
    }

    fn stage_name(&self) -> &'static str {
        match self.mode {
            WriteMode::Named => "oci image",
            WriteMode::DigestsOnly => "image digests",
        }
    }

    fn write(&mut self, input: &super::SinkInput) -> Result<Vec<super::Artifact>> {
        let tree = input.tree(self)?;
        let diff;
        let (keep, layer_index) = match &tree.kept_base {
            Some((keep, lower)) => {
                diff = tree.index.diff_from(lower);
                (*keep, &diff)
            }
            None => (0, &tree.index),
        };
        let img = write_image(
            &tree.data,
            keep,
            &self.store,
            tree.config.clone(),
            self.history.clone(),
            |w| {
                crate::encode::tar::write_tar(
                    layer_index,
                    &tree.data,
                    w,
                    &crate::encode::tar::TarOptions::default(),
                )
                .map(|_| ())
            },
            &self.name,
            self.mode,
        )?;
        let artifacts = match self.mode {
            WriteMode::Named => vec![super::Artifact {
                kind: "oci".into(),
                path: format!("{}:{}", self.store.root().display(), self.name),
                digest: Some(img.manifest_desc.digest.to_string()),
                bytes: img.layers().iter().map(|l| l.size).sum(),
                runs_as: None,
            }],
            WriteMode::DigestsOnly => Vec::new(),
        };
        self.written = Some(img);
        Ok(artifacts)
    }

    fn image(&self) -> Option<&Image> {
        self.written.as_ref()
    }
}
