//! Site overlays: what a site adds to every image built for it.
//!
//! `SITE/site.yaml` has an `overlay:` section (env and labels merged into
//! the image config) and `SITE/files/` is a tree copied into the image root.
//! With `extends:`, the chain's overlays merge parents first: env and labels
//! by name, files by path (a later file replaces an earlier one; a file or
//! link over a directory replaces the directory and what is below it).
//! The files become ONE layer that depends on nothing but their names,
//! bytes and executable bits: owner root:root, modes 0644/0755, mtime 0,
//! sorted, so the same overlay always has the same digest (and a nightly
//! with unchanged inputs builds nothing).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::search::{SearchPath, TreeData, TreeEntry};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::ImageConfig;
use crate::site::SiteProfile;

#[derive(Debug, Default, Deserialize)]
struct OverlayFile {
    #[serde(default)]
    overlay: OverlaySpec,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverlaySpec {
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// A site's overlay, loaded and checked.
#[derive(Debug, Clone)]
pub struct SiteOverlay {
    pub site: String,
    /// The site.yaml files it was merged from, parents first.
    pub sources: Vec<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// The layer: a tar, and its sha256 (the diff_id).
    pub layer: Vec<u8>,
    pub diff_id: Digest,
    /// Files and directories in the layer.
    pub entries: usize,
}

/// The mtime of every overlay entry: fixed, so the layer is reproducible.
const MTIME: u64 = 0;

impl SiteOverlay {
    /// Find `site` on the sites search path and build its overlay.
    pub fn load(search: &SearchPath, site: &str) -> Result<SiteOverlay> {
        // The same validation (and the same "known sites" error) as the
        // job-description code.
        SiteOverlay::from_profile(&SiteProfile::load(search, site)?)
    }

    /// The overlay of a loaded profile: its chain's `overlay:` sections and
    /// `files/` trees, merged parents first.
    pub fn from_profile(profile: &SiteProfile) -> Result<SiteOverlay> {
        let mut env = BTreeMap::new();
        let mut labels = BTreeMap::new();
        let mut files: BTreeMap<PathBuf, TreeData> = BTreeMap::new();
        for doc in &profile.chain.docs {
            let file: OverlayFile =
                serde_saphyr::from_str(&doc.text).map_err(|e| Error::BadInput {
                    input: doc.input.display().to_string(),
                    place: "overlay: ".into(),
                    reason: e.to_string(),
                    hint: Some("overlay: takes env: {NAME: value} and labels: {key: value}".into()),
                })?;
            for name in file.overlay.env.keys() {
                if name.is_empty() || name.contains('=') || name.contains('\0') {
                    return Err(Error::BadInput {
                        input: doc.input.display().to_string(),
                        place: format!("overlay.env.{name}: "),
                        reason: "not an environment variable name".into(),
                        hint: None,
                    });
                }
            }
            env.extend(file.overlay.env);
            labels.extend(file.overlay.labels);
            for e in doc.found.tree("files")? {
                if !matches!(e.data, TreeData::Dir) {
                    files.retain(|p, _| p == &e.path || !p.starts_with(&e.path));
                }
                files.insert(e.path, e.data);
            }
        }
        let entries: Vec<TreeEntry> = files
            .into_iter()
            .map(|(path, data)| TreeEntry { path, data })
            .collect();
        let layer = tar_of_entries(&entries)?;
        Ok(SiteOverlay {
            site: profile.name.clone(),
            diff_id: Digest::of_bytes(&layer),
            sources: profile.chain.docs.iter().map(|d| d.input.clone()).collect(),
            env,
            labels,
            layer,
            entries: entries.len(),
        })
    }

    /// What identifies the overlay: its layer, env and labels.
    pub fn digest(&self) -> Digest {
        let doc = serde_json::json!({
            "format": "gridship site overlay 1",
            "site": self.site,
            "diff_id": self.diff_id.to_string(),
            "env": self.env,
            "labels": self.labels,
        });
        Digest::of_bytes(doc.to_string().as_bytes())
    }

    /// Merge env (same name: the overlay wins) and labels into `config`,
    /// plus the labels that say which overlay was applied.
    pub fn apply_config(&self, config: &mut ImageConfig) {
        let env = config.config.env.get_or_insert_with(Vec::new);
        for (k, v) in &self.env {
            let entry = format!("{k}={v}");
            match env
                .iter_mut()
                .find(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) == k)
            {
                Some(e) => *e = entry,
                None => env.push(entry),
            }
        }
        let labels = config.config.labels.get_or_insert_with(BTreeMap::new);
        labels.extend(self.labels.clone());
        labels.insert("gridship.site".into(), self.site.clone());
        labels.insert("gridship.site.overlay".into(), self.digest().to_string());
    }
}

/// A tar of `paths` (relative to `root`, in this order) that depends only
/// on names, bytes, link targets and executable bits: root:root, modes
/// 0644/0755, mtime 0. Used for build contexts.
pub fn deterministic_tar(root: &Path, paths: &[PathBuf]) -> Result<Vec<u8>> {
    let entries = paths
        .iter()
        .map(|rel| TreeEntry::read(root, rel))
        .collect::<Result<Vec<_>>>()?;
    tar_of_entries(&entries)
}

/// The deterministic tar of `entries`, in their order.
pub fn tar_of_entries(entries: &[TreeEntry]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    for e in entries {
        let rel = &e.path;
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        let _ = h.set_username("root");
        let _ = h.set_groupname("root");
        let io = |err: std::io::Error| Error::io_path(rel, "adding to the overlay layer", err);
        match &e.data {
            TreeData::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                builder
                    .append_data(&mut h, rel, std::io::empty())
                    .map_err(io)?;
            }
            TreeData::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                builder.append_link(&mut h, rel, target).map_err(io)?;
            }
            TreeData::File { bytes, exec } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(if *exec { 0o755 } else { 0o644 });
                h.set_size(bytes.len() as u64);
                builder.append_data(&mut h, rel, &bytes[..]).map_err(io)?;
            }
        }
    }
    let mut data = builder
        .into_inner()
        .map_err(|e| Error::io("writing an overlay tar", e))?;
    data.flush().ok();
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::search::Kind;
    use std::os::unix::fs::PermissionsExt;

    fn sites(dir: &Path) -> SearchPath {
        SearchPath::new(Kind::Sites, Some(dir))
    }

    fn site_dir(tmp: &Path, yaml: &str) -> PathBuf {
        let d = tmp.join("s1");
        std::fs::create_dir_all(d.join("files/etc/profile.d")).unwrap();
        std::fs::write(d.join("site.yaml"), yaml).unwrap();
        std::fs::write(d.join("files/etc/profile.d/a.sh"), "export A=1\n").unwrap();
        std::fs::write(d.join("files/etc/site.conf"), "x\n").unwrap();
        std::fs::set_permissions(
            d.join("files/etc/profile.d/a.sh"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        d
    }

    #[test]
    fn same_files_same_layer_whatever_their_times_and_owners() {
        let tmp = tempfile::tempdir().unwrap();
        let d = site_dir(tmp.path(), "overlay:\n  env: {A: '1'}\n");
        let a = SiteOverlay::load(&sites(tmp.path()), "s1").unwrap();
        // Touch a file: another mtime, same bytes.
        let f = std::fs::File::options()
            .write(true)
            .open(d.join("files/etc/site.conf"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(99))
            .unwrap();
        let b = SiteOverlay::load(&sites(tmp.path()), "s1").unwrap();
        assert_eq!(a.diff_id, b.diff_id);
        assert_eq!(a.digest(), b.digest());
        let mut ar = tar::Archive::new(&a.layer[..]);
        let got: Vec<(String, u32, u64)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.mtime().unwrap() + h.uid().unwrap() + h.gid().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("etc".into(), 0o755, 0),
                ("etc/profile.d".into(), 0o755, 0),
                ("etc/profile.d/a.sh".into(), 0o755, 0),
                ("etc/site.conf".into(), 0o644, 0),
            ]
        );
        // Content changes the layer; env changes the overlay digest only.
        std::fs::write(d.join("files/etc/site.conf"), "y\n").unwrap();
        let c = SiteOverlay::load(&sites(tmp.path()), "s1").unwrap();
        assert_ne!(a.diff_id, c.diff_id);
        std::fs::write(d.join("files/etc/site.conf"), "x\n").unwrap();
        std::fs::write(d.join("site.yaml"), "overlay:\n  env: {A: '2'}\n").unwrap();
        let e = SiteOverlay::load(&sites(tmp.path()), "s1").unwrap();
        assert_eq!(a.diff_id, e.diff_id);
        assert_ne!(a.digest(), e.digest());
    }

    #[test]
    fn env_overrides_by_name_and_labels_name_the_overlay() {
        let tmp = tempfile::tempdir().unwrap();
        site_dir(
            tmp.path(),
            "overlay:\n  env: {PATH: /site/bin, X509_CERT_DIR: /etc/grid-security/certificates}\n  labels: {site.contact: ops@example.org}\n",
        );
        let o = SiteOverlay::load(&sites(tmp.path()), "s1").unwrap();
        let mut config = ImageConfig::default();
        config.config.env = Some(vec!["PATH=/usr/bin".into(), "LANG=C.UTF-8".into()]);
        o.apply_config(&mut config);
        assert_eq!(
            config.config.env.unwrap(),
            vec![
                "PATH=/site/bin",
                "LANG=C.UTF-8",
                "X509_CERT_DIR=/etc/grid-security/certificates"
            ]
        );
        let labels = config.config.labels.unwrap();
        assert_eq!(labels["site.contact"], "ops@example.org");
        assert_eq!(labels["gridship.site"], "s1");
        assert_eq!(labels["gridship.site.overlay"], o.digest().to_string());
    }

    #[test]
    fn bad_overlay_sections_name_the_file_and_key() {
        let tmp = tempfile::tempdir().unwrap();
        site_dir(tmp.path(), "overlay:\n  enviroment: {A: '1'}\n");
        let e = SiteOverlay::load(&sites(tmp.path()), "s1")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("s1/site.yaml") && e.contains("enviroment"),
            "{e}"
        );
        site_dir(tmp.path(), "overlay:\n  env: {'A=B': '1'}\n");
        let e = SiteOverlay::load(&sites(tmp.path()), "s1")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("overlay.env.A=B") && e.contains("not an environment variable name"),
            "{e}"
        );
    }
}
