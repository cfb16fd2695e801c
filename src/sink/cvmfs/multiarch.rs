//! Multi-arch images, as DUCC's newest version publishes them
//! (reference/cvmfs-ducc.md): every platform's tree behind a per-platform
//! link, the public name a CVMFS variant symlink that each client resolves
//! with its own `CVMFS_ARCH`:
//!
//! ```text
//! .multiarch/ARCH[:VARIANT]/REG/REPO:TAG -> ../../../../.flat/xx/<config>
//! .multiarch/x86_64 -> amd64, .multiarch/aarch64 -> arm64   DUCC's aliases
//! .metadata/.multiarch/ARCH[:VARIANT]/REG/REPO:TAG/manifest.json
//! REG/REPO:TAG -> ../../.multiarch/$(CVMFS_ARCH:-amd64)/REG/REPO:TAG
//! ```
//!
//! The `$(…)` is literal text in the symlink; CVMFS expands it when a client
//! reads the link. A plain directory (the dir backend) has no variant
//! symlinks: there the public link names the host's architecture.

use std::path::{Component, Path, PathBuf};

use super::{
    BackendKind, DuccManifest, Placement, PublicName, PublishOptions, PublishReport, Repo,
    publish_at, relative_target,
};
use crate::image::{Image, PlatformWanted};
use crate::store::Platform;
use crate::{Error, Result};

pub const DIR: &str = ".multiarch";
/// The variant symlink's architecture component (CVMFS's default: amd64).
pub const VARIANT: &str = "$(CVMFS_ARCH:-amd64)";
const DEFAULT_ARCH: &str = "amd64";
/// DUCC's aliases: the names `uname -m` gives, for sites that set
/// CVMFS_ARCH from it.
pub const ALIASES: [(&str, &str); 2] = [("x86_64", "amd64"), ("aarch64", "arm64")];

/// `ARCH[:VARIANT]`: the variant only where it is not the architecture's
/// usual one (arm64 is v8, so `arm64`; `arm:v7`), so CVMFS_ARCH=arm64 finds
/// an arm64/v8 image.
pub fn arch_dir(architecture: &str, variant: Option<&str>) -> String {
    match (architecture, variant) {
        (a, None) => a.to_string(),
        ("arm64", Some("v8")) | ("amd64", Some("v1")) => architecture.to_string(),
        (a, Some(v)) => format!("{a}:{v}"),
    }
}

pub fn platform_dir(p: &Platform) -> String {
    arch_dir(&p.architecture, p.variant.as_deref())
}

fn entry(arch: &str, name: &PublicName) -> PathBuf {
    Path::new(DIR).join(arch).join(name.link_path())
}

fn metadata(arch: &str, name: &PublicName) -> PathBuf {
    Path::new(".metadata")
        .join(DIR)
        .join(arch)
        .join(name.link_path())
}

/// The image index `src` names, or None for a single-platform image. Read
/// from registries and OCI layouts (the store's included); archives and the
/// engine give one platform.
pub fn index_of(
    src: &crate::reference::ImageRef,
    ctx: &crate::transport::Context,
) -> Result<Option<crate::store::IndexJson>> {
    use crate::reference::ImageRef;
    let from_layout = |layout: crate::store::Layout, tag: Option<&str>| {
        let desc = layout.resolve(tag)?;
        if !crate::image::media::is_index(&desc.media_type) {
            return Ok(None);
        }
        let raw = layout.read_blob(&desc.digest, Some(desc.size))?;
        serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| Error::bad_input(src.to_string(), format!("unreadable image index: {e}")))
    };
    match src {
        ImageRef::Registry(r) => crate::registry::index(r, &ctx.registry),
        ImageRef::Oci { dir, tag } => from_layout(crate::store::Layout::open(dir)?, tag.as_deref()),
        ImageRef::Store(n) => from_layout(ctx.store()?, Some(n)),
        _ => Ok(None),
    }
}

/// The Linux platforms of an index that `wanted` asks for (all when empty),
/// without attestation entries (`unknown/unknown`).
pub fn select(
    index: &crate::store::IndexJson,
    wanted: &[PlatformWanted],
    what: &str,
) -> Result<Vec<Platform>> {
    let mut out: Vec<Platform> = Vec::new();
    for p in index.manifests.iter().filter_map(|d| d.platform.as_ref()) {
        if p.os != "linux" || p.architecture == "unknown" {
            continue;
        }
        if (wanted.is_empty() || wanted.iter().any(|w| w.matches(p)))
            && !out.iter().any(|o| platform_dir(o) == platform_dir(p))
        {
            out.push(p.clone());
        }
    }
    for w in wanted {
        if !out.iter().any(|p| w.matches(p)) {
            return Err(Error::NotFound {
                what: format!("platform {w} in {what}"),
                detail: "the index does not have it".into(),
            });
        }
    }
    if out.is_empty() {
        return Err(Error::bad_input(what, "the index lists no Linux platform"));
    }
    Ok(out)
}

/// The architecture the public link names: the variant symlink's default
/// on a CVMFS backend, the host's on a plain directory.
fn link_arch(repo: &Repo) -> String {
    if repo.config.backend == BackendKind::Dir {
        let h = PlatformWanted::host();
        arch_dir(&h.architecture, h.variant.as_deref())
    } else {
        DEFAULT_ARCH.to_string()
    }
}

/// Publish every platform of a multi-arch image under `name`: each tree
/// with its own link and manifest, then DUCC's aliases, then the public
/// variant link and the name's manifest (the default platform's), last.
pub fn publish_index(
    repo: &mut Repo,
    name: &PublicName,
    images: &[(Platform, Image)],
    trees: &dyn crate::sink::Trees,
    opts: &PublishOptions,
) -> Result<Vec<PublishReport>> {
    let public = name.link_path();
    if let Ok(m) = std::fs::symlink_metadata(repo.abs(&public))
        && !m.file_type().is_symlink()
    {
        return Err(Error::BadInput {
            input: repo.abs(&public).display().to_string(),
            place: String::new(),
            reason: "exists and is not a symlink; gridship will not replace it".into(),
            hint: Some("move it away, or publish under another name".into()),
        });
    }
    let default = link_arch(repo);
    let mut reports = Vec::new();
    for (p, image) in images {
        let arch = platform_dir(p);
        let place = Placement {
            link: entry(&arch, name),
            metadata: metadata(&arch, name),
            // One image per name in podman's store: the default platform's.
            podman_name: arch == default,
        };
        let mut r = publish_at(repo, name, image, trees, opts, &place)?;
        r.platform = Some(format!(
            "{}/{}{}",
            p.os,
            p.architecture,
            p.variant
                .as_deref()
                .map(|v| format!("/{v}"))
                .unwrap_or_default()
        ));
        reports.push(r);
    }
    let published: Vec<String> = images.iter().map(|(p, _)| platform_dir(p)).collect();
    let (arch_in_link, link_image) = if repo.config.backend == BackendKind::Dir {
        let pick = published
            .iter()
            .position(|a| *a == default)
            .unwrap_or_default();
        if published[pick] == default {
            // Said at warning level: this tree does not behave as CVMFS's would.
            tracing::warn!(
                "the dir backend has no variant symlinks: {name} names this host's architecture ({default}); a CVMFS backend writes {VARIANT}"
            );
        } else {
            tracing::warn!(
                "the dir backend has no variant symlinks and {name} has no {default} image: it names {}",
                published[pick]
            );
        }
        (published[pick].clone(), &images[pick].1)
    } else {
        let i = published.iter().position(|a| *a == DEFAULT_ARCH);
        if i.is_none() {
            tracing::warn!(
                "{name} has no {DEFAULT_ARCH} image: clients that do not set CVMFS_ARCH find nothing"
            );
        }
        (VARIANT.to_string(), &images[i.unwrap_or_default()].1)
    };
    repo.transaction(|repo| {
        for (alias, arch) in ALIASES {
            let a = Path::new(DIR).join(alias);
            if published.iter().any(|p| p == arch)
                && std::fs::read_link(repo.abs(&a)).ok().as_deref() != Some(Path::new(arch))
            {
                repo.put_symlink(&a, Path::new(arch))?;
            }
        }
        let target = relative_target(&public, &entry(&arch_in_link, name));
        if std::fs::read_link(repo.abs(&public)).ok().as_deref() != Some(target.as_path()) {
            repo.put_symlink(&public, &target)?;
        }
        let manifest =
            serde_json::to_vec(&DuccManifest::of(link_image)).expect("manifest serializes");
        let mrel = name.metadata_dir().join("manifest.json");
        if std::fs::read(repo.abs(&mrel)).ok().as_deref() != Some(manifest.as_slice()) {
            repo.put_file(&mrel, &manifest)?;
        }
        Ok(())
    })?;
    Ok(reports)
}

/// `base` joined with a relative symlink target, `..` applied.
fn resolve(base: &Path, target: &Path) -> Option<PathBuf> {
    let mut out = base.to_path_buf();
    for c in target.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(n) => out.push(n),
            _ => return None,
        }
    }
    Some(out)
}

/// The `.flat` tree a `.multiarch/ARCH/…` path leads to: the variant
/// resolved as a client without CVMFS_ARCH would, aliases followed.
pub(super) fn flat_of_entry(repo: &Repo, path: &Path) -> Option<PathBuf> {
    let mut comps = path.components().skip(1);
    let arch = comps.next()?.as_os_str().to_string_lossy().into_owned();
    let rest: PathBuf = comps.collect();
    let mut arch = if arch == VARIANT {
        DEFAULT_ARCH.to_string()
    } else {
        arch
    };
    if let Ok(t) = std::fs::read_link(repo.abs(&Path::new(DIR).join(&arch))) {
        arch = t.to_string_lossy().into_owned();
    }
    let e = Path::new(DIR).join(&arch).join(&rest);
    let target = std::fs::read_link(repo.abs(&e)).ok()?;
    let flat = resolve(e.parent()?, &target)?;
    flat.starts_with(".flat").then_some(flat)
}

/// The platform entries found, split by whether their name's public link is
/// still the multi-arch one.
pub(super) struct Scan {
    pub live_flats: Vec<PathBuf>,
    /// (entry link, its manifest directory)
    pub stale: Vec<(PathBuf, PathBuf)>,
}

pub(super) fn scan(repo: &Repo) -> Result<Scan> {
    let mut out = Scan {
        live_flats: Vec::new(),
        stale: Vec::new(),
    };
    let top = repo.abs(Path::new(DIR));
    let Ok(rd) = std::fs::read_dir(&top) else {
        return Ok(out);
    };
    for arch in rd.flatten() {
        // Aliases are symlinks; platform directories are real.
        if !arch.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let arch_name = arch.file_name().to_string_lossy().into_owned();
        for e in super::walk_dirs(&arch.path(), 16)? {
            if !std::fs::symlink_metadata(&e).is_ok_and(|m| m.file_type().is_symlink()) {
                continue;
            }
            let rel = e.strip_prefix(arch.path()).expect("below").to_path_buf();
            let entry_rel = Path::new(DIR).join(&arch_name).join(&rel);
            // Live while the public link leads into .multiarch for this name.
            let live = std::fs::read_link(repo.abs(&rel))
                .ok()
                .and_then(|t| resolve(rel.parent().unwrap_or(Path::new("")), &t))
                .is_some_and(|r| r.starts_with(DIR) && r.ends_with(&rel));
            if live {
                if let Some(f) = std::fs::read_link(&e)
                    .ok()
                    .and_then(|t| resolve(entry_rel.parent()?, &t))
                {
                    out.live_flats.push(f);
                }
            } else {
                out.stale.push((
                    entry_rel,
                    Path::new(".metadata").join(DIR).join(&arch_name).join(&rel),
                ));
            }
        }
    }
    Ok(out)
}

/// Remove platform entries whose name is published otherwise now (or not
/// at all): their trees then are unused, and gc takes them together.
pub(super) fn remove_stale(repo: &Repo, scan: &Scan) -> Result<()> {
    for (e, m) in &scan.stale {
        repo.remove(e)?;
        if repo.exists(m) {
            repo.remove(m)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_dirs_name_the_variant_only_when_unusual() {
        assert_eq!(arch_dir("amd64", None), "amd64");
        assert_eq!(arch_dir("arm64", Some("v8")), "arm64");
        assert_eq!(arch_dir("arm", Some("v7")), "arm:v7");
    }

    #[test]
    fn relative_paths_resolve() {
        assert_eq!(
            resolve(Path::new("r/x"), Path::new("../../.multiarch/a/r/x:1")),
            Some(PathBuf::from(".multiarch/a/r/x:1"))
        );
        assert_eq!(resolve(Path::new(""), Path::new("../x")), None);
    }
}
