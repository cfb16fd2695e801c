//! Site overlays: what a site adds to every image built for it.
//!
//! `site-overlays/SITE/site.yaml` has an `overlay:` section (env and labels
//! merged into the image config) and `site-overlays/SITE/files/` is a tree
//! copied into the image root. The files become ONE layer that depends on
//! nothing but their names, bytes and executable bits: owner root:root,
//! modes 0644/0755, mtime 0, sorted, so the same overlay always has the
//! same digest (and a nightly with unchanged inputs builds nothing).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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
    /// `site-overlays/SITE`.
    pub dir: PathBuf,
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
    pub fn load(overlays: &Path, site: &str) -> Result<SiteOverlay> {
        // The same validation (and the same "known sites" error) as the
        // job-description code.
        let profile = SiteProfile::load(overlays, site)?;
        let text = std::fs::read_to_string(&profile.path)
            .map_err(|e| Error::io_path(&profile.path, "reading site profile", e))?;
        let file: OverlayFile = serde_saphyr::from_str(&text).map_err(|e| Error::BadInput {
            input: profile.path.display().to_string(),
            place: "overlay: ".into(),
            reason: e.to_string(),
            hint: Some("overlay: takes env: {NAME: value} and labels: {key: value}".into()),
        })?;
        for name in file.overlay.env.keys() {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(Error::BadInput {
                    input: profile.path.display().to_string(),
                    place: format!("overlay.env.{name}: "),
                    reason: "not an environment variable name".into(),
                    hint: None,
                });
            }
        }
        let dir = overlays.join(site);
        let (layer, entries) = layer_tar(&dir.join("files"))?;
        Ok(SiteOverlay {
            site: site.to_string(),
            diff_id: Digest::of_bytes(&layer),
            dir,
            env: file.overlay.env,
            labels: file.overlay.labels,
            layer,
            entries,
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

/// The deterministic tar of `root` (a missing root gives an empty layer).
fn layer_tar(root: &Path) -> Result<(Vec<u8>, usize)> {
    let mut paths = Vec::new();
    if root.exists() {
        walk(root, Path::new(""), &mut paths)?;
    }
    Ok((deterministic_tar(root, &paths)?, paths.len()))
}

/// A tar of `paths` (relative to `root`, in this order) that depends only
/// on names, bytes, link targets and executable bits: root:root, modes
/// 0644/0755, mtime 0. Used for overlay layers and build contexts.
pub fn deterministic_tar(root: &Path, paths: &[PathBuf]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    for rel in paths {
        let abs = root.join(rel);
        let meta =
            std::fs::symlink_metadata(&abs).map_err(|e| Error::io_path(&abs, "reading", e))?;
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        let _ = h.set_username("root");
        let _ = h.set_groupname("root");
        let ft = meta.file_type();
        let io = |e: std::io::Error| Error::io_path(&abs, "adding to the overlay layer", e);
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            builder
                .append_data(&mut h, rel, std::io::empty())
                .map_err(io)?;
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(&abs).map_err(|e| Error::io_path(&abs, "reading link", e))?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            builder.append_link(&mut h, rel, &target).map_err(io)?;
        } else if ft.is_file() {
            let exec = meta.permissions().mode() & 0o111 != 0;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(if exec { 0o755 } else { 0o644 });
            h.set_size(meta.len());
            let f = std::fs::File::open(&abs).map_err(|e| Error::io_path(&abs, "opening", e))?;
            builder.append_data(&mut h, rel, f).map_err(io)?;
        } else {
            return Err(Error::BadInput {
                input: abs.display().to_string(),
                place: String::new(),
                reason: "an overlay holds files, directories and symlinks only".into(),
                hint: None,
            });
        }
    }
    let mut data = builder
        .into_inner()
        .map_err(|e| Error::io_path(root, "writing a tar of", e))?;
    data.flush().ok();
    Ok(data)
}

/// Every path below `root`, relative, parents before children, sorted by
/// name (bytes) so the order never depends on the filesystem.
fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io_path(&dir, "reading", e))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io_path(&dir, "reading", e))?;
    names.sort();
    for name in names {
        let child = rel.join(&name);
        out.push(child.clone());
        let meta = std::fs::symlink_metadata(root.join(&child))
            .map_err(|e| Error::io_path(&root.join(&child), "reading", e))?;
        if meta.is_dir() {
            walk(root, &child, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let a = SiteOverlay::load(tmp.path(), "s1").unwrap();
        // Touch a file: another mtime, same bytes.
        let f = std::fs::File::options()
            .write(true)
            .open(d.join("files/etc/site.conf"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(99))
            .unwrap();
        let b = SiteOverlay::load(tmp.path(), "s1").unwrap();
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
        let c = SiteOverlay::load(tmp.path(), "s1").unwrap();
        assert_ne!(a.diff_id, c.diff_id);
        std::fs::write(d.join("files/etc/site.conf"), "x\n").unwrap();
        std::fs::write(d.join("site.yaml"), "overlay:\n  env: {A: '2'}\n").unwrap();
        let e = SiteOverlay::load(tmp.path(), "s1").unwrap();
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
        let o = SiteOverlay::load(tmp.path(), "s1").unwrap();
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
        let e = SiteOverlay::load(tmp.path(), "s1").unwrap_err().to_string();
        assert!(
            e.contains("s1/site.yaml") && e.contains("enviroment"),
            "{e}"
        );
        site_dir(tmp.path(), "overlay:\n  env: {'A=B': '1'}\n");
        let e = SiteOverlay::load(tmp.path(), "s1").unwrap_err().to_string();
        assert!(
            e.contains("overlay.env.A=B") && e.contains("not an environment variable name"),
            "{e}"
        );
    }
}
