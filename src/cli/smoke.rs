//! `gridship smoke`: GPU smoke tests on an image.

use std::path::PathBuf;

use clap::Args;

use super::build::ProjectDirs;
use super::image::{AccessOpts, parse_ref};
use super::{GlobalOpts, print_json};
use crate::config::SearchPath;
use crate::recipe::{Recipe, default_recipes_dir};
use crate::reference::ImageRef;
use crate::site::SiteProfile;
use crate::smoke::runtime::{self, Backend};
use crate::smoke::suite::{self, DEFAULT_SUITE, Picked, Suite};
use crate::smoke::{self, report};
use crate::{Error, transport};

#[derive(Debug, Args)]
pub struct SmokeArgs {
    /// Image to test, e.g. oci:DIR:TAG, docker://REG/REPO:TAG.
    #[arg(value_parser = parse_ref)]
    pub image: ImageRef,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Suite: a name (`gridship suites` lists them) or a YAML file. Wins
    /// over --recipe and the image's gridship.recipe label. Default: the
    /// recipe's suite, else gpu-basic.
    #[arg(long, value_name = "NAME|FILE")]
    pub suite: Option<String>,
    /// Run this recipe's suite (recipe.yaml `smoke_suite:`). Without it,
    /// the recipe named by the image's gridship.recipe label is used when
    /// the recipes directory has it.
    #[arg(long, value_name = "NAME")]
    pub recipe: Option<String>,
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
    pub dirs: ProjectDirs,
    #[command(flatten)]
    pub suites: super::SuitesOpt,
    #[command(flatten)]
    pub access: AccessOpts,
}

/// How run checks execute the image (`smoke`, `promote`).
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// How run checks execute the image.
    #[arg(long, value_enum, default_value = "chroot")]
    pub backend: Backend,
    /// The apptainer program for --backend apptainer (default: apptainer
    /// on PATH).
    #[arg(long, value_name = "PATH", env = "GRIDSHIP_APPTAINER")]
    pub apptainer: Option<PathBuf>,
}

impl RuntimeArgs {
    /// A program named with --apptainer must exist: bad input, before any work.
    pub fn check(&self) -> crate::Result<()> {
        match (&self.backend, &self.apptainer) {
            (Backend::Apptainer, Some(p)) => runtime::apptainer_program(Some(p)).map(|_| ()),
            _ => Ok(()),
        }
    }
}

impl SmokeArgs {
    fn recipes_dir(&self) -> PathBuf {
        self.dirs
            .recipes
            .clone()
            .unwrap_or_else(default_recipes_dir)
    }

    /// The suite named on the command line (--suite, then --recipe), if any.
    fn named_suite(&self, suites_dir: &SearchPath) -> anyhow::Result<Option<Picked>> {
        if let Some(s) = &self.suite {
            return Ok(Some(Picked {
                suite: Suite::find(s, suites_dir)?,
                why: "--suite".into(),
            }));
        }
        let Some(name) = &self.recipe else {
            return Ok(None);
        };
        let recipe = Recipe::load(&self.recipes_dir(), name)?;
        Ok(Some(match suite::for_recipe(&recipe, suites_dir)? {
            Some(suite) => Picked {
                suite,
                why: format!("recipe {name} (--recipe)"),
            },
            None => Picked {
                suite: Suite::find(DEFAULT_SUITE, suites_dir)?,
                why: format!("default (recipe {name} names no smoke_suite)"),
            },
        }))
    }
}

pub fn smoke(global: &GlobalOpts, args: &SmokeArgs) -> anyhow::Result<()> {
    args.runtime.check()?;
    let suites_dir = args.suites.search();
    // A suite named on the command line is checked before the image is read.
    let named = args.named_suite(&suites_dir)?;
    let mut queues = Vec::new();
    if let Some(site) = &args.site {
        let p = SiteProfile::load(&args.dirs.overlays.search(), site)?;
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
    let picked = match named {
        Some(p) => p,
        None => suite::for_image(&image, Some(&args.recipes_dir()), &suites_dir)?,
    };
    // The merge state from the store's cache (as promote and cvmfs publish
    // keep it): a second smoke of an image merges nothing again.
    let store = ctx.store()?;
    let (index, _) = crate::index::cache::from_image(&image, &store.merge_cache_dir())?;
    let opts = smoke::Options {
        backend: args.runtime.backend,
        apptainer: args.runtime.apptainer.clone(),
        allow_no_gpu: args.allow_no_gpu,
        queues,
        gpu: runtime::gpu_visible(),
    };
    let mut r = smoke::run(&image, &index, &picked.suite, &opts)?;
    r.suite_chosen_by = Some(picked.why);
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
