//! `gridship smoke`: GPU smoke tests on an image.

use std::path::PathBuf;

use clap::Args;

use super::image::{AccessOpts, parse_ref};
use super::{GlobalOpts, SiteOverlaysOpt, print_json};
use crate::index::FsIndex;
use crate::reference::ImageRef;
use crate::site::SiteProfile;
use crate::smoke::runtime::{self, Backend};
use crate::smoke::suite::{Suite, default_suites_dir};
use crate::smoke::{self, report};
use crate::{Error, transport};

#[derive(Debug, Args)]
pub struct SmokeArgs {
    /// Image to test, e.g. oci:DIR:TAG, docker://REG/REPO:TAG.
    #[arg(value_parser = parse_ref)]
    pub image: ImageRef,
    /// How run checks execute the image.
    #[arg(long, value_enum, default_value = "chroot")]
    pub backend: Backend,
    /// Suite: a name in the smoke-suites directory ($GRIDSHIP_SMOKE_SUITES,
    /// default ./smoke-suites) or a YAML file.
    #[arg(long, value_name = "NAME|FILE", default_value = "gpu-basic")]
    pub suite: String,
    /// Site whose GPU queues' drivers the CUDA check compares with.
    #[arg(long, value_name = "SITE")]
    pub site: Option<String>,
    /// One GPU queue of --site (default: all of them).
    #[arg(long, value_name = "QUEUE", requires = "site")]
    pub queue: Option<String>,
    /// Without a visible GPU, report checks that need one as skipped
    /// (never passed) instead of failed.
    #[arg(long)]
    pub allow_no_gpu: bool,
    /// Also write the report as JUnit XML.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    #[command(flatten)]
    pub overlays: SiteOverlaysOpt,
    #[command(flatten)]
    pub access: AccessOpts,
}

pub fn smoke(global: &GlobalOpts, args: &SmokeArgs) -> anyhow::Result<()> {
    let suite = Suite::find(&args.suite, &default_suites_dir())?;
    let mut queues = Vec::new();
    if let Some(site) = &args.site {
        let p = SiteProfile::load(&args.overlays.dir(), site)?;
        match &args.queue {
            Some(q) => queues.push((site.clone(), q.clone(), p.queue(q)?.clone())),
            None => {
                for (n, q) in &p.gpu_queues {
                    queues.push((site.clone(), n.clone(), q.clone()));
                }
            }
        }
    }
    let ctx = args.access.context(global);
    let image = transport::open(&args.image, &ctx)?;
    let index = FsIndex::from_image(&image)?;
    let opts = smoke::Options {
        backend: args.backend,
        allow_no_gpu: args.allow_no_gpu,
        queues,
        gpu: runtime::gpu_visible(),
    };
    let r = smoke::run(&image, &index, &suite, &opts)?;
    if let Some(path) = &args.junit {
        report::write_junit(&r, path)?;
    }
    if global.json {
        print_json(&r)?;
    } else {
        print!("{}", report::human(&r));
    }
    if !r.ok() {
        // The report is printed; exit 1 says the work (the test) failed.
        return Err(anyhow::Error::new(Error::Other(format!(
            "smoke tests failed: {} of {} checks",
            r.failed,
            r.checks.len()
        ))));
    }
    Ok(())
}
