//! Tar archives of images: `docker-archive` (what `docker save` writes:
//! `manifest.json` with per-layer `layer.tar` files, or since Engine 25 an OCI
//! layout plus `manifest.json`) and `oci-archive` (a tarred OCI layout).
//!
//! Reading streams the archive once: every blob goes straight into the
//! store through a verifying writer, metadata files are kept in memory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, unwrap_io};
use crate::error::IoContext;
use crate::image::{Image, Manifest, media};
use crate::layers::{Compression, LayerStream};
use crate::store::{Descriptor, IndexJson, Layout, REF_NAME_ANNOTATION};
use crate::{Error, Result};

/// Files up to this size that are not blobs are kept in memory.
const MAX_META_FILE: u64 = 16 << 20;
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// One entry of `docker save`'s manifest.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SaveEntry {
    pub config: String,
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    pub layers: Vec<String>,
}

/// What a pass over an archive found.
#[derive(Default)]
struct Scan {
    /// Archive path → blob stored for it.
    blobs: BTreeMap<String, (Digest, u64)>,
    /// Archive path → symlink target (older `docker save` deduplicates
    /// identical layers with symlinks).
    links: BTreeMap<String, String>,
    /// Small metadata files by archive path.
    meta: BTreeMap<String, Vec<u8>>,
}

fn clean_name(name: &Path) -> String {
    let s = name.to_string_lossy();
    s.trim_start_matches("./")
        .trim_start_matches('/')
        .to_string()
}

fn is_meta_name(name: &str) -> bool {
    matches!(
        name,
        "manifest.json" | "repositories" | "index.json" | "oci-layout"
    ) || name.ends_with("/json")
        || name.ends_with("/VERSION")
}

/// Stream an archive into `layout`: blobs stored and verified, metadata kept.
fn scan(reader: impl Read, layout: &Layout, source: &str) -> Result<Scan> {
    let mut scan = Scan::default();
    let mut archive = tar::Archive::new(reader);
    let bad = |reason: String| Error::bad_input(source.to_string(), reason);
    for entry in archive
        .entries()
        .map_err(|e| unwrap_io(e, || format!("reading {source}")))?
    {
        let mut entry = entry.map_err(|e| unwrap_io(e, || format!("reading {source}")))?;
        let name = clean_name(
            &entry
                .path()
                .map_err(|e| bad(format!("bad entry name: {e}")))?,
        );
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            tar::EntryType::Symlink | tar::EntryType::Link => {
                if let Some(t) = entry.link_name().ok().flatten() {
                    let t = t.to_string_lossy().to_string();
                    // Symlink targets are relative to the link's directory.
                    let target = if entry.header().entry_type() == tar::EntryType::Symlink {
                        resolve_relative(&name, &t)
                    } else {
                        t.trim_start_matches("./").to_string()
                    };
                    scan.links.insert(name, target);
                }
                continue;
            }
            _ => continue,
        }
        let size = entry.size();
        if is_meta_name(&name) && size <= MAX_META_FILE {
            let mut buf = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut buf)
                .map_err(|e| unwrap_io(e, || format!("reading {name} in {source}")))?;
            scan.meta.insert(name, buf);
            continue;
        }
        // A blob named by its digest is verified against that name.
        let named = name
            .strip_prefix("blobs/sha256/")
            .and_then(|h| Digest::from_hex(h).ok());
        let what = format!("{name} in {source}");
        let stored = match named {
            Some(d) if layout.has_blob(&d, Some(size)) => {
                // Already stored (and verified when it was); skip the bytes.
                io::copy(&mut entry, &mut io::sink())
                    .map_err(|e| unwrap_io(e, || format!("reading {what}")))?;
                (d, size)
            }
            Some(d) => layout.put_blob_from(&mut entry, &d, Some(size), &what)?,
            None => {
                let mut w = layout.blob_writer()?;
                io::copy(&mut entry, &mut w)
                    .map_err(|e| unwrap_io(e, || format!("storing {what}")))?;
                w.finish(None, &what)?
            }
        };
        scan.blobs.insert(name, stored);
    }
    Ok(scan)
}

fn resolve_relative(link: &str, target: &str) -> String {
    if let Some(abs) = target.strip_prefix('/') {
        return abs.to_string();
    }
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

impl Scan {
    fn blob(&self, path: &str, source: &str) -> Result<(Digest, u64)> {
        let mut p = path.trim_start_matches("./").to_string();
        for _ in 0..16 {
            if let Some(b) = self.blobs.get(&p) {
                return Ok(b.clone());
            }
            match self.links.get(&p) {
                Some(t) => p = t.clone(),
                None => break,
            }
        }
        Err(Error::bad_input(
            source.to_string(),
            format!("manifest.json names {path:?}, which the archive does not hold"),
        ))
    }

    fn json<T: serde::de::DeserializeOwned>(&self, name: &str, source: &str) -> Result<Option<T>> {
        match self.meta.get(name) {
            None => Ok(None),
            Some(data) => serde_json::from_slice(data)
                .map(Some)
                .map_err(|e| Error::BadInput {
                    input: source.to_string(),
                    place: format!("{name} line {} column {}: ", e.line(), e.column()),
                    reason: e.to_string(),
                    hint: None,
                }),
        }
    }
}

/// Whether a docker-style name (`group/img:1`, `docker.io/group/img:1`)
/// names the same image as `want`.
fn same_docker_name(have: &str, want: &str) -> bool {
    let norm = |s: &str| -> String {
        match crate::reference::parse_registry(s) {
            Ok(r) => r.to_string(),
            Err(_) => s.to_string(),
        }
    };
    have == want || norm(have) == norm(want)
}

/// Import a `docker save` archive into `layout`; returns the manifest
/// descriptor of the image chosen by `name` (or the only one).
pub fn import_docker_archive(
    reader: impl Read,
    layout: &Layout,
    name: Option<&str>,
    source: &str,
) -> Result<Descriptor> {
    let scan = scan(reader, layout, source)?;
    // Engine 25+ writes an OCI layout: keep its manifests byte for byte.
    if let Some(index) = scan.json::<IndexJson>("index.json", source)? {
        let chosen = index.manifests.iter().find(|d| match name {
            Some(n) => [CONTAINERD_NAME, REF_NAME_ANNOTATION].iter().any(|a| {
                d.annotations
                    .get(*a)
                    .is_some_and(|v| same_docker_name(v, n))
            }),
            None => index.manifests.len() == 1,
        });
        if let Some(d) = chosen {
            return Ok(d.clone());
        }
    }
    let entries: Vec<SaveEntry> = scan.json("manifest.json", source)?.ok_or_else(|| {
        Error::bad_input(
            source.to_string(),
            "no manifest.json: not a docker-archive (docker save) file",
        )
    })?;
    let entry = match name {
        Some(n) => entries
            .iter()
            .find(|e| e.repo_tags.iter().flatten().any(|t| same_docker_name(t, n))),
        None if entries.len() == 1 => entries.first(),
        None => None,
    }
    .ok_or_else(|| {
        let tags: Vec<String> = entries
            .iter()
            .flat_map(|e| e.repo_tags.clone().unwrap_or_default())
            .collect();
        Error::BadInput {
            input: source.to_string(),
            place: String::new(),
            reason: match name {
                Some(n) => format!("holds no image named {n}"),
                None => format!("holds {} images; say which", entries.len()),
            },
            hint: Some(format!("add :NAME:TAG, one of: {}", tags.join(", "))),
        }
    })?;
    let (config_digest, config_size) = scan.blob(&entry.config, source)?;
    let mut layers = Vec::new();
    for l in &entry.layers {
        let (d, size) = scan.blob(l, source)?;
        let compression = sniff_blob(layout, &d)?;
        let mt = match compression {
            Compression::None => media::OCI_LAYER,
            Compression::Gzip => media::OCI_LAYER_GZIP,
            Compression::Zstd => media::OCI_LAYER_ZSTD,
        };
        layers.push(Descriptor::new(mt, d, size));
    }
    Manifest::put_oci(layout, (config_digest, config_size), layers)
}

/// The compression of a stored layer, from its first bytes (a file, or a
/// layer the store links in the engine: always a plain tar).
fn sniff_blob(layout: &Layout, d: &Digest) -> Result<Compression> {
    let mut head = [0u8; 4];
    let mut blob = layout.open_blob(d, None)?;
    let n = blob
        .read(&mut head)
        .map_err(|e| crate::digest::unwrap_io(e, || format!("reading blob {d}")))?;
    Ok(Compression::sniff(&head[..n]))
}

/// Import an OCI archive into `layout`; returns the descriptor for `tag`
/// (matched against the ref name, or the only image).
pub fn import_oci_archive(
    reader: impl Read,
    layout: &Layout,
    tag: Option<&str>,
    source: &str,
) -> Result<Descriptor> {
    let scan = scan(reader, layout, source)?;
    if !scan.meta.contains_key("oci-layout") {
        return Err(Error::bad_input(
            source.to_string(),
            "no oci-layout file: not an OCI archive",
        ));
    }
    let index: IndexJson = scan
        .json("index.json", source)?
        .ok_or_else(|| Error::bad_input(source.to_string(), "no index.json: not an OCI archive"))?;
    let found = match tag {
        Some(t) => index
            .manifests
            .iter()
            .rev()
            .find(|d| d.ref_name() == Some(t)),
        None if index.manifests.len() == 1 => index.manifests.first(),
        None => None,
    };
    found.cloned().ok_or_else(|| {
        let names: Vec<&str> = index
            .manifests
            .iter()
            .filter_map(|d| d.ref_name())
            .collect();
        Error::BadInput {
            input: source.to_string(),
            place: String::new(),
            reason: match tag {
                Some(t) => format!("holds no image named {t:?}"),
                None => format!("holds {} images; say which", index.manifests.len()),
            },
            hint: Some(format!("add :NAME, one of: {}", names.join(", "))),
        }
    })
}

/// A tar writer into a temporary file beside `dest`, renamed into place on
/// `finish`. Entries are written like `docker save` does: root-owned, fixed
/// modes, the image's own times where it has them.
struct ArchiveWriter {
    builder: tar::Builder<io::BufWriter<tempfile::NamedTempFile>>,
    dest: std::path::PathBuf,
}

impl ArchiveWriter {
    fn new(dest: &Path) -> Result<Self> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => ".".into(),
        };
        std::fs::create_dir_all(&dir).at("creating", &dir)?;
        let tmp = tempfile::Builder::new()
            .prefix(".gridship-archive-")
            .tempfile_in(&dir)
            .at("creating a temporary file in", &dir)?;
        let mut builder = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, tmp));
        builder.mode(tar::HeaderMode::Deterministic);
        Ok(ArchiveWriter {
            builder,
            dest: dest.to_path_buf(),
        })
    }

    fn header(size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h
    }

    fn dir(&mut self, name: &str) -> Result<()> {
        let mut h = Self::header(0, 0o755);
        h.set_entry_type(tar::EntryType::Directory);
        self.builder
            .append_data(&mut h, name, io::empty())
            .at("writing", &self.dest)
    }

    fn bytes(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let mut h = Self::header(data.len() as u64, 0o644);
        self.builder
            .append_data(&mut h, name, data)
            .at("writing", &self.dest)
    }

    fn reader(&mut self, name: &str, size: u64, r: &mut dyn Read) -> Result<()> {
        let mut h = Self::header(size, 0o644);
        self.builder
            .append_data(&mut h, name, r)
            .map_err(|e| unwrap_io(e, || format!("writing {name} into {}", self.dest.display())))
    }

    fn finish(self) -> Result<()> {
        let buf = self.builder.into_inner().at("writing", &self.dest)?;
        let tmp = buf
            .into_inner()
            .map_err(|e| Error::io_path(&self.dest, "writing", e.into_error()))?;
        tmp.as_file().sync_all().at("syncing", &self.dest)?;
        crate::fsutil::persist(tmp, &self.dest)
    }
}

/// Write `image` as an OCI archive, named `tag` in its index.
pub fn write_oci_archive(image: &Image, dest: &Path, tag: Option<&str>) -> Result<()> {
    let mut w = ArchiveWriter::new(dest)?;
    w.bytes("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut desc = image.manifest_desc.clone();
    desc.annotations.clear();
    if let Some(t) = tag {
        desc.annotations
            .insert(REF_NAME_ANNOTATION.into(), t.into());
    }
    let index = IndexJson {
        manifests: vec![desc],
        ..IndexJson::default()
    };
    w.bytes(
        "index.json",
        &serde_json::to_vec(&index).expect("index serializes"),
    )?;
    w.dir("blobs/")?;
    w.dir("blobs/sha256/")?;
    let mut seen = std::collections::HashSet::new();
    for d in std::iter::once(&image.manifest_desc).chain(image.blobs()) {
        if !seen.insert(d.digest.clone()) {
            continue;
        }
        let mut r = image.layout.open_blob(&d.digest, Some(d.size))?;
        w.reader(&format!("blobs/sha256/{}", d.digest.hex()), d.size, &mut r)?;
    }
    w.finish()
}

/// Write `image` the way `docker save` does (legacy layout, uncompressed
/// layers named by diff_id), so any Docker Engine can `docker load` it.
pub fn write_docker_archive(image: &Image, dest: &Path, name: Option<&str>) -> Result<()> {
    let mut w = ArchiveWriter::new(dest)?;
    let config_name = format!("{}.json", image.manifest.config.digest.hex());
    w.bytes(&config_name, &image.config_raw)?;
    let mut layer_names = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, diff_id) in image.config.rootfs.diff_ids.iter().enumerate() {
        let layer_name = format!("{}/layer.tar", diff_id.hex());
        layer_names.push(layer_name.clone());
        if !seen.insert(diff_id.clone()) {
            continue;
        }
        w.dir(&format!("{}/", diff_id.hex()))?;
        // The tar header needs the size first: decompress to a temporary
        // file, verifying the diff_id on the way.
        let mut spool =
            tempfile::tempfile().at("creating a temporary file", std::env::temp_dir())?;
        let size = decompress_layer(image, i, &mut spool)?;
        spool.rewind().at("rewinding", std::env::temp_dir())?;
        w.reader(&layer_name, size, &mut BufReader::new(spool))?;
        w.bytes(&format!("{}/VERSION", diff_id.hex()), b"1.0")?;
    }
    let tags = name.map(|n| vec![n.to_string()]);
    let manifest = vec![SaveEntry {
        config: config_name,
        repo_tags: tags,
        layers: layer_names,
    }];
    w.bytes(
        "manifest.json",
        &serde_json::to_vec(&manifest).expect("manifest serializes"),
    )?;
    if let Some(n) = name
        && let Ok(r) = crate::reference::parse_registry(n)
    {
        let repo = if r.registry == crate::reference::DOCKER_HUB {
            r.repository.trim_start_matches("library/").to_string()
        } else {
            format!("{}/{}", r.registry, r.repository)
        };
        let top = image
            .config
            .rootfs
            .diff_ids
            .last()
            .map(|d| d.hex().to_string())
            .unwrap_or_default();
        let repos = serde_json::json!({ repo: { r.tag.unwrap_or_else(|| "latest".into()): top } });
        w.bytes("repositories", &serde_json::to_vec(&repos).expect("json"))?;
    }
    w.finish()
}

/// Write layer `i` uncompressed to `out`, verifying blob digest and diff_id.
pub fn decompress_layer(image: &Image, i: usize, out: &mut dyn Write) -> Result<u64> {
    let (mut stream, _) = LayerStream::open(image, i)?;
    let size = io::copy(&mut stream, out)
        .map_err(|e| unwrap_io(e, || format!("decompressing {}", stream.what())))
        .map_err(|e| crate::layers::diagnose(image, i, e))?;
    stream
        .finish()
        .map_err(|e| crate::layers::diagnose(image, i, e))?;
    Ok(size)
}

/// Read the image an archive file holds into the store.
pub fn open_archive_file(path: &Path) -> Result<BufReader<File>> {
    let f = File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::bad_input(path.display().to_string(), "no such archive file")
        } else {
            Error::io_path(path, "opening", e)
        }
    })?;
    Ok(BufReader::with_capacity(1 << 20, f))
}
