//! `cvmfs publish`: images to a CernVM-FS repository, in DUCC's layout.
//!
//! For each image: source (the image, or each platform of a multi-arch
//! index; its blobs kept in the store, so a later publish finds this
//! tree's layers) → the CVMFS sink. The sink's tree is merged (from the
//! merge cache) and transformed only when the repository lacks it.

use crate::Result;
use crate::image::{Image, PlatformWanted};
use crate::reference::ImageRef;
use crate::sink::cvmfs::{
    CvmfsSink, PublicName, PublishOptions, PublishReport, Repo, RepoAt, multiarch,
};
use crate::store::Layout;
use crate::transport::{self, Context};

use super::stages::{Merging, Run, image_summary};

/// What every image of one `cvmfs publish` is published with.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    /// Also write each layer under `.layers/`.
    pub layers: bool,
    /// Hardlink files unchanged since an earlier tree (dir backend).
    pub reuse: bool,
    /// Also enter each image in podman's additional image store.
    pub podman: bool,
    pub world_readable: bool,
    /// SOURCE_DATE_EPOCH; else each image's creation time.
    pub epoch: Option<i64>,
    /// Platforms of a multi-arch image to publish (none: every one).
    pub platforms: Vec<PlatformWanted>,
    /// Where the images' blobs are kept and merge states cached.
    pub store: Option<Layout>,
}

/// Publish `source` under `name` in `repo`: one report per tree.
pub fn publish(
    repo: &mut Repo,
    source: &ImageRef,
    name: &PublicName,
    ctx: &Context,
    plan: &PublishPlan,
) -> Result<(Vec<PublishReport>, Run)> {
    let mut run = Run::new();
    let (image, platforms) = run.stage_said(
        "source",
        || open_all(source, ctx, plan),
        |(image, _)| image_summary(image),
    )?;
    let created = plan
        .epoch
        .or_else(|| {
            image
                .config
                .created
                .as_deref()
                .and_then(crate::clock::parse_rfc3339)
        })
        .unwrap_or(0);
    let mut sink = CvmfsSink::new(
        RepoAt::Open(repo),
        name.clone(),
        PublishOptions {
            layers: plan.layers,
            created,
            reuse: plan.reuse,
            store: plan.store.clone(),
            podman: plan.podman,
        },
    );
    sink.platforms = platforms;
    // A nightly image differs from yesterday's in its top layers: merge
    // from the cached state of the shared lower ones.
    let trees = Merging::new(
        plan.store.as_ref().map(Layout::merge_cache_dir),
        plan.world_readable,
    );
    run.sinks(&mut [&mut sink], &image, &trees)?;
    Ok((sink.reports, run))
}

/// The image, or each platform of a multi-arch index (the first is the
/// input image then).
#[allow(clippy::type_complexity)]
fn open_all(
    source: &ImageRef,
    ctx: &Context,
    plan: &PublishPlan,
) -> Result<(Image, Option<Vec<(crate::store::Platform, Image)>>)> {
    let Some(index) = multiarch::index_of(source, ctx)? else {
        return Ok((open(source, ctx, plan)?, None));
    };
    let chosen = multiarch::select(&index, &plan.platforms, &source.to_string())?;
    let mut images = Vec::new();
    for p in chosen {
        let mut c = ctx.clone();
        c.platform = PlatformWanted {
            os: p.os.clone(),
            architecture: p.architecture.clone(),
            variant: p.variant.clone(),
        };
        let image = open(source, &c, plan)?;
        images.push((p, image));
    }
    Ok((images[0].1.clone(), Some(images)))
}

/// One image, its blobs copied into the store.
fn open(source: &ImageRef, ctx: &Context, plan: &PublishPlan) -> Result<Image> {
    let image = transport::open(source, ctx)?;
    if let Some(store) = &plan.store
        && image.layout.root() != store.root()
    {
        transport::copy_blobs(&image, store)?;
    }
    Ok(image)
}
