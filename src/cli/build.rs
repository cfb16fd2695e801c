//! `build`, `snapshot`, `nightly`: images made by the Docker Engine.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::image::{AccessOpts, human_bytes};
use super::{GlobalOpts, print_json};
use crate::Error;
use crate::pipeline::build::{BuildOptions, BuildReport, PullPolicy, build_recipe};
use crate::pipeline::nightly::{NightlyOptions, NightlyReport, Outcome, run_nightly};
use crate::recipe::{Recipe, ReviewPolicy};
use crate::reference::{ImageRef, RegistryRef, parse_registry};

/// Where recipes and site overlays are.
#[derive(Debug, Clone, Args)]
pub struct ProjectDirs {
    /// Recipes directory (recipes/NAME/{Dockerfile,recipe.yaml}), inside the
    /// reviewed git repository.
    #[arg(long, env = "GRIDSHIP_RECIPES", value_name = "DIR")]
    pub recipes: Option<PathBuf>,
    #[command(flatten)]
    pub overlays: super::SiteOverlaysOpt,
}

/// How a recipe is built: review rules, engine options.
#[derive(Debug, Clone, Args)]
pub struct RecipeBuildOpts {
    /// The branch reviewed recipes are merged into.
    #[arg(
        long,
        env = "GRIDSHIP_REVIEWED_BRANCH",
        default_value = "main",
        value_name = "BRANCH"
    )]
    pub reviewed_branch: String,
    /// Require the commit that last changed the recipe to carry a valid
    /// signature (OpenPGP via gpg, or SSH via gpg.ssh.allowedSignersFile).
    #[arg(long)]
    pub require_signed: bool,
    /// Require a Reviewed-by: trailer naming someone in the repository's
    /// REVIEWERS file (not the author).
    #[arg(long)]
    pub require_reviewers: bool,
    /// Build a recipe that is not reviewed (local experiments); the image
    /// is labelled gridship.reviewed=false.
    #[arg(long)]
    pub allow_unreviewed: bool,
    /// Build argument over the recipe's defaults (repeatable).
    #[arg(long = "build-arg", value_name = "NAME=VALUE", value_parser = parse_build_arg)]
    pub build_args: Vec<(String, String)>,
    /// Network of the RUN steps, e.g. `none` for an offline build.
    #[arg(long, value_name = "MODE")]
    pub network: Option<String>,
    /// Build every step anew (no engine cache).
    #[arg(long)]
    pub no_cache: bool,
}

fn parse_build_arg(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err("write a build argument as NAME=VALUE".into()),
    }
}

fn parse_push(s: &str) -> Result<RegistryRef, String> {
    let rest = s.strip_prefix("docker://").ok_or_else(|| {
        "a push destination is a registry repository: docker://REGISTRY/REPO[:TAG]".to_string()
    })?;
    let r = parse_registry(rest)?;
    if r.digest.is_some() {
        return Err("a push destination takes a tag, not a digest".into());
    }
    Ok(r)
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Recipe name (a directory of the recipes directory).
    pub recipe: String,
    /// Site to build for (repeatable); default: the recipe's sites.
    #[arg(long = "site", value_name = "SITE")]
    pub sites: Vec<String>,
    /// Push each site's image to docker://REG/REPO[:TAG] as TAG-SITE (TAG:
    /// the given one, else each of the recipe's tags).
    #[arg(long, value_name = "REF", value_parser = parse_push)]
    pub push: Option<RegistryRef>,
    /// Base image (engine image name) instead of the recipe's.
    #[arg(long, value_name = "IMAGE")]
    pub base: Option<String>,
    /// When the engine fetches the base image.
    #[arg(long, value_enum, default_value = "missing")]
    pub pull: PullPolicy,
    #[command(flatten)]
    pub recipe_opts: RecipeBuildOpts,
    #[command(flatten)]
    pub dirs: ProjectDirs,
    #[command(flatten)]
    pub access: AccessOpts,
}

#[derive(Debug, Args)]
pub struct NightlyArgs {
    /// Only these recipes (repeatable or comma-separated); default: every recipe.
    #[arg(long = "recipe", value_delimiter = ',', value_name = "NAME")]
    pub only_recipes: Vec<String>,
    /// Only these sites (repeatable or comma-separated) of each recipe's list.
    #[arg(long = "site", value_delimiter = ',', value_name = "SITE")]
    pub only_sites: Vec<String>,
    /// Push to docker://REG/PREFIX/RECIPE:TAG-SITE (default: push: of config.yaml).
    #[arg(long, value_name = "REF", value_parser = parse_push)]
    pub push_prefix: Option<RegistryRef>,
    /// When the engine fetches base images (a nightly wants the newest).
    #[arg(long, value_enum, default_value = "always")]
    pub pull: PullPolicy,
    /// Dated builds kept per recipe and site.
    #[arg(long, default_value_t = 7, value_name = "N")]
    pub keep: usize,
    /// Dated builds older than this are dropped (the newest always stays).
    #[arg(long, default_value_t = 30, value_name = "DAYS")]
    pub keep_days: u64,
    /// Build nothing; print the recipe × site pairs as a CI matrix (JSON):
    /// `github` gives {"include": [{"RECIPE": R, "SITE": S}, ...]} for
    /// strategy.matrix with fromJSON, `gitlab` the list parallel:matrix
    /// takes. Each job then runs `nightly --recipe $RECIPE --site $SITE`.
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        num_args = 0..=1,
        default_missing_value = "github",
        conflicts_with = "wishlist_for"
    )]
    pub list_matrix: Option<MatrixFormat>,
    /// Build nothing; print a DUCC wishlist for CVMFS repository REPO: each
    /// recipe × site's dated tag and moving tags as the registry's labels
    /// say now (for `cvmfs publish --wishlist` after the matrix jobs).
    #[arg(long, value_name = "REPO")]
    pub wishlist_for: Option<String>,
    #[command(flatten)]
    pub recipe_opts: RecipeBuildOpts,
    #[command(flatten)]
    pub dirs: ProjectDirs,
    #[command(flatten)]
    pub access: AccessOpts,
}

/// The shape of `nightly --list-matrix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MatrixFormat {
    Github,
    Gitlab,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Container name or ID (running or stopped).
    pub container: String,
    /// Store name for the snapshot (default snapshot/CONTAINER:UTC-TIME).
    #[arg(long, value_name = "NAME")]
    pub tag: Option<String>,
    #[command(flatten)]
    pub access: AccessOpts,
}

fn build_options(
    global: &GlobalOpts,
    dirs: &ProjectDirs,
    access: &AccessOpts,
    r: &RecipeBuildOpts,
    pull: PullPolicy,
) -> BuildOptions {
    BuildOptions {
        recipes_dir: dirs
            .recipes
            .clone()
            .unwrap_or_else(crate::recipe::default_recipes_dir),
        sites_path: dirs.overlays.search(),
        sites: Vec::new(),
        base: None,
        build_args: r.build_args.iter().cloned().collect::<BTreeMap<_, _>>(),
        review: ReviewPolicy {
            branch: r.reviewed_branch.clone(),
            require_signed: r.require_signed,
            reviewers: r.require_reviewers,
        },
        allow_unreviewed: r.allow_unreviewed,
        network: r.network.clone(),
        pull,
        no_cache: r.no_cache,
        push: None,
        ctx: access.context(global),
    }
}

/// Engine output: on stderr when someone watches, else only with -v.
fn build_log(global: &GlobalOpts) -> impl FnMut(&str) {
    let show = !global.quiet && !global.json && std::io::stderr().is_terminal();
    move |line: &str| {
        if show {
            eprintln!("{line}");
        } else {
            tracing::info!("{line}");
        }
    }
}

pub fn build(global: &GlobalOpts, a: &BuildArgs) -> anyhow::Result<()> {
    let mut opts = build_options(global, &a.dirs, &a.access, &a.recipe_opts, a.pull);
    opts.sites = a.sites.clone();
    opts.base = a.base.clone();
    opts.push = a.push.clone();
    let recipe = Recipe::load(&opts.recipes_dir, &a.recipe)?;
    let report = build_recipe(&recipe, &opts, &mut build_log(global))?;
    if global.json {
        return print_json(&report);
    }
    print_build(&report);
    Ok(())
}

fn print_build(r: &BuildReport) {
    println!(
        "recipe {} ({}) from {} [{}]",
        r.recipe,
        match &r.commit {
            Some(c) => format!("reviewed at {}", &c[..c.len().min(12)]),
            None => "UNREVIEWED".into(),
        },
        r.base.name,
        r.base.digest
    );
    for s in &r.sites {
        println!(
            "  {}: store:{} {} (overlay {} entries)",
            s.site, s.store_names[0], s.manifest_digest, s.overlay_files
        );
        for p in &s.pushed {
            println!("    pushed {p}");
        }
    }
    println!("built in {:.1}s", r.seconds);
}

pub fn nightly(global: &GlobalOpts, a: &NightlyArgs) -> anyhow::Result<()> {
    let build = build_options(global, &a.dirs, &a.access, &a.recipe_opts, a.pull);
    let opts = NightlyOptions {
        recipes: a.only_recipes.clone(),
        sites: a.only_sites.clone(),
        push_prefix: match (&a.push_prefix, &super::defaults()?.push) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(s)) => Some(parse_push(&s.value).map_err(|e| {
                Error::bad_input(s.from.display().to_string(), format!("push: {e}"))
            })?),
            (None, None) => None,
        },
        keep: a.keep,
        keep_days: a.keep_days,
        state_dir: build.ctx.store.join("gridship-cache"),
        build,
    };
    if let Some(format) = a.list_matrix {
        let pairs = crate::pipeline::nightly::matrix(&opts)?;
        let doc = match format {
            MatrixFormat::Github => serde_json::json!({ "include": pairs }),
            MatrixFormat::Gitlab => serde_json::json!(pairs),
        };
        // One line: CI systems read it as a step output or a variable.
        println!("{doc}");
        return Ok(());
    }
    if let Some(repo) = &a.wishlist_for {
        let (text, missing) = crate::pipeline::nightly::wishlist(&opts, repo)?;
        for p in &missing {
            eprintln!(
                "warning: {} for {}: no nightly image in the registry; left out of the wishlist",
                p.recipe, p.site
            );
        }
        print!("{text}");
        return Ok(());
    }
    let quiet = global.quiet || global.json;
    let report = run_nightly(&opts, &mut |l| {
        if quiet {
            tracing::info!("{l}")
        } else {
            eprintln!("{l}")
        }
    })?;
    if global.json {
        print_json(&report)?;
    } else {
        print_nightly(&report);
    }
    if report.failed > 0 {
        return Err(anyhow::Error::new(Error::Other(format!(
            "nightly: {} of {} builds failed",
            report.failed,
            report.items.len()
        ))));
    }
    Ok(())
}

fn print_nightly(r: &NightlyReport) {
    println!("nightly {}", r.started);
    for i in &r.items {
        let what = match i.outcome {
            Outcome::Built => format!(
                "built      {}",
                i.manifest_digest.as_deref().unwrap_or_default()
            ),
            Outcome::Unchanged => format!(
                "unchanged  {}",
                i.manifest_digest.as_deref().unwrap_or_default()
            ),
            Outcome::Failed => format!("FAILED     {}", i.error.as_deref().unwrap_or_default()),
        };
        println!(
            "  {:<16} {:<12} {what} ({:.1}s)",
            i.recipe, i.site, i.seconds
        );
    }
    for p in &r.pruned {
        println!("  dropped {p}");
    }
    println!(
        "{} built, {} unchanged, {} failed in {:.1}s",
        r.built, r.unchanged, r.failed, r.seconds
    );
}

#[derive(Serialize)]
struct SnapshotView {
    container: String,
    container_id: String,
    running: bool,
    paused_for_capture: bool,
    store_name: String,
    manifest_digest: String,
    layers: usize,
    /// Layers of the container's image, kept as they were.
    base_layers: usize,
    /// Bytes of the layer holding the changes made in the container.
    changes_bytes: u64,
}

pub fn snapshot(global: &GlobalOpts, a: &SnapshotArgs) -> anyhow::Result<()> {
    let info = crate::engine::inspect_container(&a.container)?;
    let name = match &a.tag {
        Some(t) => t.clone(),
        None => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let stamp = crate::clock::compact_stamp(t)?;
            format!("snapshot/{}:{stamp}", info.name)
        }
    };
    let ctx = a.access.context(global);
    let image = crate::transport::open(&ImageRef::Container(info.id.clone()), &ctx)?;
    let store = ctx.store()?;
    store.set_ref(&name, &image.manifest_desc)?;
    let base_layers = crate::engine::inspect_image(&info.image_id)?.layers;
    let view = SnapshotView {
        container: info.name.clone(),
        container_id: info.id.clone(),
        running: crate::engine::inspect_container(&info.id)?.running,
        paused_for_capture: a.access.pause,
        store_name: name,
        manifest_digest: image.manifest_desc.digest.to_string(),
        layers: image.layers().len(),
        base_layers,
        changes_bytes: image.layers().last().map_or(0, |l| l.size),
    };
    if global.json {
        return print_json(&view);
    }
    println!(
        "{} -> store:{} {}",
        view.container, view.store_name, view.manifest_digest
    );
    println!(
        "  {} layers: {} of the container's image, 1 of its changes ({})",
        view.layers,
        view.base_layers,
        human_bytes(view.changes_bytes)
    );
    println!(
        "  the container {}",
        if view.running {
            "keeps running"
        } else {
            "is not running"
        }
    );
    Ok(())
}
