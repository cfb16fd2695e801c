//! An opened [`Image`]: a manifest and config read (verified) from a
//! layout, ready for the layer merge; which entry of a multi-arch index to
//! take. The documents themselves are [`crate::oci`]'s.

use std::collections::BTreeMap;

use crate::digest::Digest;
use crate::oci::{Descriptor, IndexJson, Platform};
use crate::store::Layout;
use crate::{Error, Result};

// The documents an image is made of, under the names callers know them by.
pub use crate::oci::{ContainerConfig, ImageConfig, Manifest, RootFs, media};

impl Manifest {
    /// Store the OCI manifest of `config` (an OCI config blob) and `layers`
    /// in `layout`, as gridship writes the images it assembles; returns
    /// the manifest's descriptor.
    pub fn put_oci(
        layout: &Layout,
        config: (Digest, u64),
        layers: Vec<Descriptor>,
    ) -> Result<Descriptor> {
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.into()),
            config: Descriptor::new(media::OCI_CONFIG, config.0, config.1),
            layers,
            annotations: BTreeMap::new(),
            extra: BTreeMap::new(),
        };
        let raw = serde_json::to_vec(&manifest).expect("manifest serializes");
        let (digest, size) = layout.put_blob(&raw)?;
        Ok(Descriptor::new(media::OCI_MANIFEST, digest, size))
    }
}

/// Which entry of a multi-arch index to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformWanted {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl PlatformWanted {
    /// The host's platform in OCI (GOARCH) spelling.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "powerpc64" => ("ppc64", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        PlatformWanted {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(String::from),
        }
    }

    /// Parse `--arch`: `amd64`, `arm64`, `arm64/v8`, `linux/arm/v7`.
    pub fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        let (os, arch, variant) = match parts.as_slice() {
            [a] => ("linux", *a, None),
            [a, v] if *a != "linux" => ("linux", *a, Some(*v)),
            [o, a] => (*o, *a, None),
            [o, a, v] => (*o, *a, Some(*v)),
            _ => ("", "", None),
        };
        if arch.is_empty() || !arch.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Error::BadInput {
                input: s.into(),
                place: "--arch: ".into(),
                reason: "not a platform".into(),
                hint: Some("write it like amd64, arm64/v8 or linux/arm/v7".into()),
            });
        }
        Ok(PlatformWanted {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.map(String::from),
        })
    }

    pub fn matches(&self, p: &Platform) -> bool {
        p.os == self.os
            && p.architecture == self.architecture
            && match (&self.variant, &p.variant) {
                (Some(want), Some(have)) => want == have,
                // arm64 images often omit "v8".
                _ => true,
            }
    }

    /// Pick the manifest for this platform from an index.
    pub fn select<'a>(&self, index: &'a IndexJson, what: &str) -> Result<&'a Descriptor> {
        let candidates: Vec<&Descriptor> = index
            .manifests
            .iter()
            .filter(|d| d.platform.as_ref().is_some_and(|p| self.matches(p)))
            .collect();
        // Prefer an exact variant match when several qualify.
        let exact = candidates.iter().find(|d| {
            d.platform.as_ref().and_then(|p| p.variant.as_ref()) == self.variant.as_ref()
        });
        exact.or(candidates.first()).copied().ok_or_else(|| {
            let have: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .map(|p| {
                    format!(
                        "{}/{}{}",
                        p.os,
                        p.architecture,
                        p.variant
                            .as_ref()
                            .map(|v| format!("/{v}"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            Error::NotFound {
                what: format!("platform {self} in {what}"),
                detail: format!("the index has: {}; pick one with --arch", have.join(", ")),
            }
        })
    }
}

impl std::fmt::Display for PlatformWanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(data: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(data).map_err(|e| Error::BadInput {
        input: what.to_string(),
        place: format!("line {} column {}: ", e.line(), e.column()),
        reason: e.to_string(),
        hint: None,
    })
}

/// An image opened from a layout: manifest and config verified and parsed.
#[derive(Debug, Clone)]
pub struct Image {
    pub layout: Layout,
    /// How the user named it (for messages and reports).
    pub name: String,
    pub manifest_desc: Descriptor,
    pub manifest_raw: Vec<u8>,
    pub manifest: Manifest,
    pub config_raw: Vec<u8>,
    pub config: ImageConfig,
    /// The multi-arch index the manifest was selected from, if any.
    pub index_desc: Option<Descriptor>,
}

impl Image {
    /// Open the image `desc` points at (a manifest, or an index from which
    /// the platform's manifest is chosen).
    pub fn load(
        layout: Layout,
        desc: Descriptor,
        name: &str,
        platform: &PlatformWanted,
    ) -> Result<Image> {
        let mut index_desc = None;
        let mut desc = desc;
        if media::is_index(&desc.media_type) {
            let raw = layout.read_blob(&desc.digest, Some(desc.size))?;
            let index: IndexJson = parse_json(&raw, &format!("index {} of {name}", desc.digest))?;
            let chosen = platform.select(&index, name)?.clone();
            index_desc = Some(desc);
            desc = chosen;
        }
        if !media::is_manifest(&desc.media_type) {
            return Err(Error::bad_input(
                name,
                format!(
                    "{} has media type {:?}, not an image manifest",
                    desc.digest, desc.media_type
                ),
            ));
        }
        let manifest_raw = layout.read_blob(&desc.digest, Some(desc.size))?;
        let manifest: Manifest = parse_json(
            &manifest_raw,
            &format!("manifest {} of {name}", desc.digest),
        )?;
        let config_raw = layout.read_blob(&manifest.config.digest, Some(manifest.config.size))?;
        let config: ImageConfig = parse_json(
            &config_raw,
            &format!("config {} of {name}", manifest.config.digest),
        )?;
        let image = Image {
            layout,
            name: name.to_string(),
            manifest_desc: desc,
            manifest_raw,
            manifest,
            config_raw,
            config,
            index_desc,
        };
        image.check()?;
        Ok(image)
    }

    /// An image from a manifest known only by its content (e.g. a CVMFS
    /// repository's stored manifest), with its config and layers in `layout`.
    pub fn from_manifest(layout: Layout, manifest: Manifest, name: &str) -> Result<Image> {
        let manifest_raw = serde_json::to_vec(&manifest).expect("manifest serializes");
        let manifest_desc = Descriptor::new(
            manifest
                .media_type
                .clone()
                .unwrap_or_else(|| media::OCI_MANIFEST.into()),
            Digest::of_bytes(&manifest_raw),
            manifest_raw.len() as u64,
        );
        let config_raw = layout.read_blob(&manifest.config.digest, Some(manifest.config.size))?;
        let config: ImageConfig = parse_json(
            &config_raw,
            &format!("config {} of {name}", manifest.config.digest),
        )?;
        let image = Image {
            layout,
            name: name.to_string(),
            manifest_desc,
            manifest_raw,
            manifest,
            config_raw,
            config,
            index_desc: None,
        };
        image.check()?;
        Ok(image)
    }

    fn check(&self) -> Result<()> {
        let bad = |reason: String| Error::bad_input(self.name.clone(), reason);
        for (i, l) in self.manifest.layers.iter().enumerate() {
            if !media::is_layer(&l.media_type) {
                return Err(bad(format!(
                    "layer {} ({}) has media type {:?}, which is not a filesystem layer",
                    i + 1,
                    l.digest,
                    l.media_type
                )));
            }
        }
        if self.config.rootfs.kind != "layers" {
            return Err(bad(format!(
                "config rootfs.type is {:?}, expected \"layers\"",
                self.config.rootfs.kind
            )));
        }
        if self.config.rootfs.diff_ids.len() != self.manifest.layers.len() {
            return Err(bad(format!(
                "the manifest lists {} layers but the config {} diff_ids",
                self.manifest.layers.len(),
                self.config.rootfs.diff_ids.len()
            )));
        }
        Ok(())
    }

    pub fn layers(&self) -> &[Descriptor] {
        &self.manifest.layers
    }

    /// Digests of every blob the image needs, config first.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        std::iter::once(&self.manifest.config).chain(self.manifest.layers.iter())
    }
}
