//! `sif`, `export` and `unpack`: one image to artifacts.
//!
//! source → sinks; each sink's tree is merged and transformed (the
//! world-readable rule when asked, then what the sink's format needs) when
//! the sink asks for it.

use std::path::PathBuf;

use crate::Result;
use crate::image::Image;
use crate::reference::ImageRef;
use crate::sink::{Artifact, Sink};
use crate::transport::{self, Context};

use super::stages::{Merging, Run};

#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    pub world_readable: bool,
    /// Without the rule: warn of homes closed to pool accounts.
    pub warn_closed_homes: bool,
    /// Merge states of earlier runs to merge from.
    pub merge_cache: Option<PathBuf>,
}

pub struct Converted {
    pub image: Image,
    pub artifacts: Vec<Artifact>,
    pub run: Run,
}

/// Open `source` (the "source" stage), then run the sink `make` makes for
/// the image (a SIF's build time can be the image's) on its tree. The sink
/// comes back with its report.
pub fn convert<S: Sink>(
    source: &ImageRef,
    ctx: &Context,
    opts: &ConvertOptions,
    make: impl FnOnce(&Image) -> Result<S>,
) -> Result<(Converted, S)> {
    let mut run = Run::new();
    let image = run.stage("source", || transport::open(source, ctx))?;
    let mut made = make(&image)?;
    let mut trees = Merging::new(opts.merge_cache.clone(), opts.world_readable);
    trees.warn_closed_homes = opts.warn_closed_homes;
    let artifacts = run.sinks(&mut [&mut made], &image, &trees)?;
    run.warnings.extend(trees.warnings());
    Ok((
        Converted {
            image,
            artifacts,
            run,
        },
        made,
    ))
}
