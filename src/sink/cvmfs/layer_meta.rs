//! DUCC's records beside each layer tree, `.layers/xx/D/.metadata/`:
//!
//! - `layers.json`: the layer as podman's containers/storage describes it
//!   (`id` is the diffID's hex; the compressed and uncompressed digests; the
//!   uncompressed size), a one-element array;
//! - `origin.json`: `{"origin":[...]}`, the config digests of the images
//!   published with this layer (DUCC's backlinks).
//!
//! Encoded as DUCC's Go code encodes them (one-space indent for
//! `layers.json`, compact `origin.json`, no trailing newline), so scripts
//! written against unpacked.cern.ch read gridship's repositories unchanged.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Repo;
use crate::digest::Digest;
use crate::index::LayerInfo;
use crate::{Error, Result};

/// `.layers/xx/D/.metadata`.
pub fn dir(layer_dir: &Path) -> PathBuf {
    layer_dir.join(".metadata")
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct LayerRecord {
    pub id: String,
    pub created: String,
    #[serde(rename = "compressed-diff-digest")]
    pub compressed_diff_digest: String,
    #[serde(rename = "diff-digest")]
    pub diff_digest: String,
    #[serde(rename = "diff-size")]
    pub diff_size: u64,
}

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Origin {
    pub origin: Vec<String>,
}

/// `layers.json` of a layer read whole (`diff_size` known). DUCC writes
/// the time of its run as `created`; gridship the image's build time (as
/// for the Apptainer layout), so the same image gives the same bytes.
pub fn layers_json(layer: &LayerInfo, created: i64) -> Result<Vec<u8>> {
    let record = LayerRecord {
        id: layer.diff_id.hex().to_string(),
        created: crate::clock::rfc3339_utc(created)?,
        compressed_diff_digest: layer.digest.to_string(),
        diff_digest: layer.diff_id.to_string(),
        diff_size: layer.diff_size,
    };
    encode(&record)
}

fn encode(record: &LayerRecord) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b" ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    [record]
        .serialize(&mut ser)
        .map_err(|e| Error::Other(format!("encoding layers.json: {e}")))?;
    Ok(out)
}

/// Add `config` to the layer's `origin.json` (written only when it was not
/// listed: a republish changes nothing).
pub fn add_origin(repo: &Repo, layer_dir: &Path, config: &Digest) -> Result<()> {
    let rel = dir(layer_dir).join("origin.json");
    let mut origin = match std::fs::read(repo.abs(&rel)) {
        // One written by hand or by an older DUCC that does not parse is
        // replaced: it is a cache of what the manifests say.
        Ok(b) => serde_json::from_slice::<Origin>(&b).unwrap_or_else(|e| {
            tracing::warn!("{}: {e}; writing it anew", repo.abs(&rel).display());
            Origin::default()
        }),
        Err(_) => Origin::default(),
    };
    let c = config.to_string();
    if origin.origin.contains(&c) {
        return Ok(());
    }
    origin.origin.push(c);
    let data = serde_json::to_vec(&origin).expect("origin serializes");
    repo.put_file(&rel, &data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Compression;

    #[test]
    fn layers_json_is_encoded_as_ducc_encodes_it() {
        let d = |c: char| Digest::from_hex(&c.to_string().repeat(64)).unwrap();
        let layer = LayerInfo {
            index: 0,
            digest: d('a'),
            diff_id: d('b'),
            media_type: String::new(),
            size: 10,
            compression: Compression::Gzip,
            entries: 1,
            diff_size: 2048,
        };
        let got = String::from_utf8(layers_json(&layer, 86400).unwrap()).unwrap();
        let want = format!(
            "[\n {{\n  \"id\": \"{b}\",\n  \"created\": \"1970-01-02T00:00:00Z\",\n  \"compressed-diff-digest\": \"sha256:{a}\",\n  \"diff-digest\": \"sha256:{b}\",\n  \"diff-size\": 2048\n }}\n]",
            a = "a".repeat(64),
            b = "b".repeat(64)
        );
        assert_eq!(got, want);
        let o = serde_json::to_string(&Origin {
            origin: vec!["sha256:1".into()],
        })
        .unwrap();
        assert_eq!(o, r#"{"origin":["sha256:1"]}"#);
    }
}
