//! The podman additional image store, `podmanStore/`, as DUCC's newest
//! version writes it (reference/cvmfs-ducc.md): each image is one synthetic
//! layer whose `diff` is the image's `.flat` tree, so podman runs the tree
//! CVMFS already serves without pulling or unpacking anything:
//!
//! ```text
//! podmanStore/overlay/<layer id>/diff -> ../../../.flat/xx/<config hex>
//! podmanStore/overlay/<layer id>/link     its short name
//! podmanStore/overlay/l/<short> -> ../<layer id>/diff
//! podmanStore/overlay-layers/layers.json  one record per layer
//! podmanStore/overlay-images/<config hex>/{manifest,=BASE64(key)}  big data
//! podmanStore/overlay-images/images.json  written last: the commit point
//! ```
//!
//! The image ID is the config digest's hex, as containers/storage gives
//! pulled images, and the config and manifest are the registry's bytes.
//! Entries are written under their final names and committed by the
//! atomic rewrite of `images.json`; what a killed run wrote but never
//! committed is swept (under the store's own lock) by the next run.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{Map, Value, json};

use super::{BackendKind, Repo, relative_target};
use crate::digest::Digest;
use crate::error::IoContext;
use crate::image::Image;
use crate::lockfile::{self, LockFile};
use crate::{Error, Result};

pub const STORE: &str = "podmanStore";
const IMAGES: &str = "podmanStore/overlay-images";
const LAYERS: &str = "podmanStore/overlay-layers";
const OVERLAY: &str = "podmanStore/overlay";

type Records = Vec<Map<String, Value>>;

/// The synthetic layer of the image with this config: a name of its own
/// (layers and images are separate namespaces in containers/storage, but a
/// distinct ID keeps `podman inspect` unambiguous).
pub fn layer_id(config: &Digest) -> String {
    Digest::of_bytes(format!("gridship flat tree of {config}").as_bytes())
        .hex()
        .to_string()
}

/// The layer's short name under `overlay/l/`: 26 characters, as
/// containers/storage's own, derived from the layer ID so that a rewrite
/// gives the same name.
fn short_id(layer: &str) -> String {
    format!("GS{}", layer[..24].to_uppercase())
}

/// The file name containers/storage gives a big-data item: the key itself
/// when it is lower-case letters, digits and dots, else `=` + base64.
fn big_data_name(key: &str) -> String {
    if key
        .bytes()
        .all(|b| b == b'.' || b.is_ascii_digit() || b.is_ascii_lowercase())
    {
        key.to_string()
    } else {
        format!(
            "={}",
            base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
        )
    }
}

/// Writers of the store exclude each other with a lock of its own, so the
/// read-modify-write of its indexes is safe whatever locks the repository.
fn lock(repo: &Repo) -> Result<LockFile> {
    LockFile::take(
        &repo.config.lock.with_extension("podman.lock"),
        lockfile::Mode::Exclusive,
    )
}

fn read_records(repo: &Repo, rel: &str) -> Result<Records> {
    let p = repo.abs(Path::new(rel));
    match fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::BadInput {
            input: p.display().to_string(),
            place: format!("line {} column {}: ", e.line(), e.column()),
            reason: format!("not a containers/storage index: {e}"),
            hint: Some("restore it from the repository's history, or remove podmanStore/ and publish with --podman again".into()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io_path(&p, "reading", e)),
    }
}

/// Written sorted by ID: the same store whatever order images came in.
fn write_records(repo: &Repo, rel: &str, records: &Records) -> Result<()> {
    let mut records = records.clone();
    records.sort_by(|a, b| field(a, "id").cmp(field(b, "id")));
    let mut data = serde_json::to_vec_pretty(&records).expect("records serialize");
    data.push(b'\n');
    repo.put_file(Path::new(rel), &data)
}

fn field<'a>(r: &'a Map<String, Value>, k: &str) -> &'a str {
    r.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// Enter `image` (published at `flat`) in the store under `names` (names
/// move from any image that held them). Returns the image ID.
pub(super) fn add(repo: &Repo, names: &[String], image: &Image, flat: &Path) -> Result<String> {
    let _lock = lock(repo)?;
    if repo.config.backend == BackendKind::Dir {
        sweep_locked(repo)?;
    }
    let config = &image.manifest.config.digest;
    let id = config.hex().to_string();
    let layer = layer_id(config);
    let short = short_id(&layer);
    for d in [STORE, OVERLAY, IMAGES, LAYERS] {
        repo.ensure_catalog(Path::new(d))?;
    }
    // containers/storage opens these even in a read-only store.
    for f in [
        format!("{IMAGES}/images.lock"),
        format!("{LAYERS}/layers.lock"),
    ] {
        if !repo.exists(Path::new(&f)) {
            repo.put_file(Path::new(&f), b"")?;
        }
    }
    let created = image
        .config
        .created
        .clone()
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into());

    // The layer: its diff is the flat tree.
    let ldir = Path::new(OVERLAY).join(&layer);
    let diff = ldir.join("diff");
    let diff_target = relative_target(&diff, flat);
    if fs::read_link(repo.abs(&diff)).ok().as_deref() != Some(diff_target.as_path()) {
        repo.put_symlink(&diff, &diff_target)?;
    }
    let short_link = Path::new(OVERLAY).join("l").join(&short);
    let short_target = Path::new("..").join(&layer).join("diff");
    if fs::read_link(repo.abs(&short_link)).ok().as_deref() != Some(short_target.as_path()) {
        repo.put_symlink(&short_link, &short_target)?;
    }
    if fs::read(repo.abs(&ldir.join("link"))).ok().as_deref() != Some(short.as_bytes()) {
        repo.put_file(&ldir.join("link"), short.as_bytes())?;
    }

    // The image's big data: the registry's config and manifest bytes.
    let idir = Path::new(IMAGES).join(&id);
    let manifest_key = format!("manifest-{}", image.manifest_desc.digest);
    let big: [(String, &[u8]); 3] = [
        (config.to_string(), &image.config_raw),
        (manifest_key, &image.manifest_raw),
        ("manifest".into(), &image.manifest_raw),
    ];
    for (key, data) in &big {
        let p = idir.join(big_data_name(key));
        if fs::read(repo.abs(&p)).ok().as_deref() != Some(*data) {
            repo.put_file(&p, data)?;
        }
    }

    // layers.json, then images.json (the commit point).
    let mut layers = read_records(repo, &format!("{LAYERS}/layers.json"))?;
    if !layers.iter().any(|r| field(r, "id") == layer) {
        // Size and digest must be set for podman to accept the layer: the
        // digest is a name of this tree (no tar has it, so podman never
        // takes the layer for one it pulls).
        let size = content_bytes(&repo.abs(flat));
        let record = json!({
            "id": layer,
            "created": created,
            "diff-digest": format!("sha256:{layer}"),
            "diff-size": size,
        });
        layers.push(record.as_object().expect("object").clone());
        write_records(repo, &format!("{LAYERS}/layers.json"), &layers)?;
    }
    let mut images = read_records(repo, &format!("{IMAGES}/images.json"))?;
    let before = images.clone();
    for r in images.iter_mut().filter(|r| field(r, "id") != id) {
        if let Some(Value::Array(n)) = r.get_mut("names") {
            n.retain(|v| !names.iter().any(|w| v.as_str() == Some(w)));
        }
    }
    let sizes: Map<String, Value> = big
        .iter()
        .map(|(k, d)| (k.clone(), json!(d.len())))
        .collect();
    let digests: Map<String, Value> = big
        .iter()
        .map(|(k, d)| (k.clone(), json!(Digest::of_bytes(d).to_string())))
        .collect();
    match images.iter_mut().find(|r| field(r, "id") == id) {
        Some(r) => {
            let mut all: Vec<Value> = r
                .get("names")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for n in names {
                if !all.iter().any(|v| v.as_str() == Some(n)) {
                    all.push(json!(n));
                }
            }
            r.insert("names".into(), Value::Array(all));
        }
        None => {
            let record = json!({
                "id": id,
                "digest": image.manifest_desc.digest.to_string(),
                "names": names,
                "layer": layer,
                "metadata": "{}",
                "big-data-names": big.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
                "big-data-sizes": sizes,
                "big-data-digests": digests,
                "created": created,
            });
            images.push(record.as_object().expect("object").clone());
        }
    }
    if images != before {
        write_records(repo, &format!("{IMAGES}/images.json"), &images)?;
    }
    Ok(id)
}

/// Take the images of these flat trees out of the store (gc, before the
/// trees go): images.json first, so it never names a missing layer.
pub(super) fn remove(repo: &Repo, flats: &[&PathBuf]) -> Result<()> {
    if flats.is_empty() || !repo.exists(Path::new(STORE)) {
        return Ok(());
    }
    let _lock = lock(repo)?;
    let ids: BTreeSet<String> = flats
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let mut images = read_records(repo, &format!("{IMAGES}/images.json"))?;
    let gone: Vec<Map<String, Value>> = images
        .iter()
        .filter(|r| ids.contains(field(r, "id")))
        .cloned()
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    images.retain(|r| !ids.contains(field(r, "id")));
    write_records(repo, &format!("{IMAGES}/images.json"), &images)?;
    let still: BTreeSet<&str> = images.iter().map(|r| field(r, "layer")).collect();
    let gone_layers: BTreeSet<String> = gone
        .iter()
        .map(|r| field(r, "layer").to_string())
        .filter(|l| !still.contains(l.as_str()))
        .collect();
    let mut layers = read_records(repo, &format!("{LAYERS}/layers.json"))?;
    layers.retain(|r| !gone_layers.contains(field(r, "id")));
    write_records(repo, &format!("{LAYERS}/layers.json"), &layers)?;
    for r in &gone {
        repo.remove(&Path::new(IMAGES).join(field(r, "id")))?;
    }
    for l in &gone_layers {
        let link = Path::new(OVERLAY).join(l).join("link");
        if let Ok(short) = fs::read_to_string(repo.abs(&link)) {
            repo.remove(&Path::new(OVERLAY).join("l").join(short.trim()))?;
        }
        repo.remove(&Path::new(OVERLAY).join(l))?;
    }
    Ok(())
}

/// Bytes of the regular files in a tree, each inode once (what podman shows
/// as the image's size; apparent sizes, so the same tree gives the same
/// number however its directories grew).
fn content_bytes(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = BTreeSet::new();
    let mut total = 0;
    let mut todo = vec![p.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(m) = fs::symlink_metadata(&d) else {
            continue;
        };
        if m.is_file() && seen.insert((m.dev(), m.ino())) {
            total += m.size();
        }
        if m.is_dir()
            && let Ok(rd) = fs::read_dir(&d)
        {
            todo.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
        }
    }
    total
}

/// Remove what a killed writer left uncommitted: image directories
/// images.json does not list, layers layers.json does not list, short links
/// to neither (dir backend; the server backends abort the transaction).
pub(super) fn sweep(repo: &Repo) -> Result<()> {
    if !repo.exists(Path::new(STORE)) {
        return Ok(());
    }
    let _lock = lock(repo)?;
    sweep_locked(repo)
}

fn sweep_locked(repo: &Repo) -> Result<()> {
    let images: BTreeSet<String> = read_records(repo, &format!("{IMAGES}/images.json"))?
        .iter()
        .map(|r| field(r, "id").to_string())
        .collect();
    let mut records = read_records(repo, &format!("{LAYERS}/layers.json"))?;
    // A layer recorded by a run killed before its image was committed.
    let used: BTreeSet<String> = read_records(repo, &format!("{IMAGES}/images.json"))?
        .iter()
        .map(|r| field(r, "layer").to_string())
        .collect();
    let n = records.len();
    records.retain(|r| used.contains(field(r, "id")));
    if records.len() != n {
        write_records(repo, &format!("{LAYERS}/layers.json"), &records)?;
    }
    let layers: BTreeSet<String> = records.iter().map(|r| field(r, "id").to_string()).collect();
    let entries = |rel: &str| -> Result<Vec<(String, PathBuf)>> {
        let dir = repo.abs(Path::new(rel));
        let Ok(rd) = fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.at("reading", &dir)?;
            out.push((
                e.file_name().to_string_lossy().into_owned(),
                Path::new(rel).join(e.file_name()),
            ));
        }
        Ok(out)
    };
    let is_id = |n: &str| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit());
    for (n, p) in entries(IMAGES)? {
        if is_id(&n) && !images.contains(&n) {
            super::remove_any(&repo.abs(&p))?;
        }
    }
    for (n, p) in entries(OVERLAY)? {
        if is_id(&n) && !layers.contains(&n) {
            super::remove_any(&repo.abs(&p))?;
        }
    }
    for (_, p) in entries(&format!("{OVERLAY}/l"))? {
        let target = fs::read_link(repo.abs(&p)).unwrap_or_default();
        let layer = target
            .components()
            .nth(1)
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        if !layers.contains(&layer) {
            super::remove_any(&repo.abs(&p))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_data_names_follow_containers_storage() {
        assert_eq!(big_data_name("manifest"), "manifest");
        assert_eq!(
            big_data_name("sha256:ab"),
            format!(
                "={}",
                base64::engine::general_purpose::STANDARD.encode("sha256:ab")
            )
        );
        assert!(big_data_name("manifest-sha256:ab").starts_with('='));
    }

    #[test]
    fn short_ids_have_containers_storage_length() {
        let l = layer_id(&Digest::of_bytes(b"x"));
        assert_eq!(short_id(&l).len(), 26);
    }
}
