//! The SIF sink: a transformed tree as an Apptainer SIF file (the format is
//! crate::encode::sif; the partition crate::encode::squashfs).

use std::path::PathBuf;

use serde::Serialize;

use super::{Artifact, JobImage, Sink, SinkInput, Spec};
use crate::Result;
use crate::encode::sif::{SifContent, Stamp, write_sif};
use crate::encode::squashfs::{SquashfsOptions, SquashfsReport, write_squashfs};
use crate::image::Image;
use crate::transform::apptainer::{self, ApptainerMetadata, ApptainerOptions, BaseImage};
use crate::transform::{RuleReport, Step};

/// A SIF at `dest`.
#[derive(Debug, Clone)]
pub struct SifSink {
    pub dest: PathBuf,
    /// How the image was named (the Deffile's bootstrap/from come from it).
    pub uri: String,
    /// Registry images: the normalized reference and manifest digest, for
    /// the base-image labels Apptainer writes.
    pub base: Option<BaseImage>,
    /// Build time (SOURCE_DATE_EPOCH when reproducible).
    pub created: i64,
    pub reproducible: bool,
    pub squashfs: SquashfsOptions,
    /// After [`Sink::write`].
    pub report: Option<SifReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SifReport {
    pub squashfs: SquashfsReport,
    /// The pipeline's rules on the tree, in order.
    pub rules: Vec<RuleReport>,
    /// The Apptainer layout's report.
    pub transform: RuleReport,
}

impl SifSink {
    /// Promote's SIF: OUT/NAME.sif, named docker://promoted/NAME:TAG.
    pub fn from_spec(spec: &Spec) -> Result<Box<dyn Sink>> {
        Ok(Box::new(SifSink {
            dest: spec.out.join(format!("{}.sif", spec.name)),
            uri: format!("docker://promoted/{}:{}", spec.name, spec.tag),
            base: None,
            created: spec.created,
            reproducible: spec.reproducible,
            squashfs: spec.squashfs.clone(),
            report: None,
        }))
    }

    fn options(&self, image: &Image) -> Result<ApptainerOptions> {
        let mut options = ApptainerOptions::for_image(&self.uri, self.created, &image.config)?;
        options.base = self.base.clone();
        Ok(options)
    }
}

impl Sink for SifSink {
    fn kind(&self) -> &'static str {
        "sif"
    }

    fn needs(&self, image: &Image) -> Result<Vec<Step<'static>>> {
        Ok(vec![Step::Apptainer(Box::new(ApptainerMetadata::new(
            self.options(image)?,
        )))])
    }

    /// The Deffile and JSON objects, and the squashfs partition streamed
    /// from the layers.
    fn write(&mut self, input: &SinkInput) -> Result<Vec<Artifact>> {
        let options = self.options(input.image)?;
        let mut tree = input.tree(self)?;
        let deffile = apptainer::deffile_for(&options.bootstrap, &options.from);
        let inspect = apptainer::inspect_metadata_json(&apptainer::inspect_metadata(
            &tree.index,
            &tree.data,
        )?);
        let oci_config = apptainer::oci_config_json(&tree.config.config);
        let stamp = if self.reproducible {
            Stamp::deterministic()
        } else {
            Stamp::now()?
        };
        let content = SifContent {
            deffile: deffile.as_bytes(),
            json: vec![
                ("inspect-metadata.json", &inspect),
                ("oci-config.json", &oci_config),
            ],
            arch: &tree.config.architecture,
        };
        let squashfs = write_sif(&self.dest, &content, stamp, |out| {
            let r = write_squashfs(&tree.index, &tree.data, out, &self.squashfs)?;
            Ok((r.bytes, r))
        })?;
        // The sink's own step is the last applied.
        let transform = tree.reports.pop().unwrap_or_default();
        self.report = Some(SifReport {
            squashfs,
            rules: tree.reports,
            transform,
        });
        Ok(vec![Artifact {
            kind: "sif".into(),
            path: self.dest.display().to_string(),
            digest: Some(crate::digest::Digest::of_file(&self.dest)?.to_string()),
            bytes: std::fs::metadata(&self.dest).map(|m| m.len()).unwrap_or(0),
            runs_as: Some(JobImage::Sif(self.dest.clone())),
        }])
    }

    fn rules(&self) -> Vec<RuleReport> {
        self.report.iter().map(|r| r.transform.clone()).collect()
    }

    fn report(&self) -> Option<serde_json::Value> {
        self.report
            .as_ref()
            .and_then(|r| serde_json::to_value(&r.squashfs).ok())
    }
}
