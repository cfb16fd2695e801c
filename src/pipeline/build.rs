//! `gridship build`: a reviewed recipe, built by the Docker Engine from its
//! base, then one image per site with that site's overlay layer on top,
//! into the store (and a registry).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::config::search::SearchPath;
use crate::digest::Digest;
use crate::engine::{self, BuildRequest};
use crate::image::Image;
use crate::recipe::{Recipe, ReviewPolicy, check_review, unreviewed_labels};
use crate::reference::{ImageRef, RegistryRef};
use crate::sink::oci::{NewLayer, append_layer};
use crate::transform::overlay::{SiteOverlay, deterministic_tar};
use crate::transport::{self, Context};
use crate::{Error, Result};

/// When the engine fetches the base image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Always ask the registry for the newest (what a nightly wants).
    Always,
    /// Only when the engine has no image of that name.
    Missing,
    /// Never: the engine must have it.
    Never,
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub recipes_dir: PathBuf,
    /// The sites search path.
    pub sites_path: SearchPath,
    /// Sites to build for; empty: the recipe's own list.
    pub sites: Vec<String>,
    /// Base image instead of the recipe's (an engine image name).
    pub base: Option<String>,
    /// Build arguments over the recipe's defaults.
    pub build_args: BTreeMap<String, String>,
    pub review: ReviewPolicy,
    pub allow_unreviewed: bool,
    /// Network of the RUN steps (`none` for offline builds).
    pub network: Option<String>,
    pub pull: PullPolicy,
    pub no_cache: bool,
    /// Registry repository to push each site's image to.
    pub push: Option<RegistryRef>,
    pub ctx: Context,
}

/// The base image as the engine resolved it.
#[derive(Debug, Clone, Serialize)]
pub struct BaseResolved {
    pub name: String,
    /// Registry digest (`sha256:...` of the manifest) when the engine has
    /// one, else the engine's image id.
    pub digest: String,
    pub image_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SiteImage {
    pub site: String,
    /// Names in the store (`store:NAME`).
    pub store_names: Vec<String>,
    pub manifest_digest: String,
    pub config_digest: String,
    pub overlay_digest: String,
    pub overlay_files: usize,
    pub pushed: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub recipe: String,
    pub reviewed: bool,
    pub commit: Option<String>,
    pub input_digest: String,
    pub base: BaseResolved,
    /// The engine's image as it was read (`docker-daemon:gridship-build/NAME:latest`).
    pub engine_image: String,
    pub labels: BTreeMap<String, String>,
    pub sites: Vec<SiteImage>,
    pub seconds: f64,
}

/// Ask the engine for `name` per `pull`.
pub fn resolve_base(
    name: &str,
    pull: PullPolicy,
    creds: Option<&(String, String)>,
) -> Result<BaseResolved> {
    let found = match pull {
        PullPolicy::Always => engine::pull(name, creds)?,
        PullPolicy::Missing => match engine::inspect_image(name) {
            Err(Error::NotFound { .. }) => engine::pull(name, creds)?,
            other => other?,
        },
        PullPolicy::Never => engine::inspect_image(name).map_err(|e| match e {
            Error::NotFound { what, .. } => Error::NotFound {
                what,
                detail: "--pull never: load or build the base first, or allow a pull".into(),
            },
            e => e,
        })?,
    };
    // A repo digest of this very name when the engine has one.
    let repo = name.split('@').next().unwrap_or(name);
    let repo = match repo.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => r,
        _ => repo,
    };
    let digest = found
        .repo_digests
        .iter()
        .find_map(|d| {
            d.split_once('@')
                .filter(|(r, _)| *r == repo)
                .map(|(_, d)| d.to_string())
        })
        .unwrap_or_else(|| found.id.clone());
    Ok(BaseResolved {
        name: name.to_string(),
        digest,
        image_id: found.id,
    })
}

/// The store names of a recipe's image for a site: `recipe/NAME:SITE` and
/// `recipe/NAME:SITE-TAG` for each of the recipe's tags.
pub fn store_names(recipe: &Recipe, site: &str) -> Vec<String> {
    std::iter::once(format!("recipe/{}:{site}", recipe.name))
        .chain(
            recipe
                .spec
                .tags
                .iter()
                .map(|t| format!("recipe/{}:{site}-{t}", recipe.name)),
        )
        .collect()
}

/// Everything before the engine runs: the review and the overlays, so a
/// refused recipe or a broken site fails in a second, not after a build.
pub struct Prepared {
    pub labels: BTreeMap<String, String>,
    pub commit: Option<String>,
    pub overlays: Vec<SiteOverlay>,
    pub input_digest: Digest,
}

pub fn prepare(recipe: &Recipe, opts: &BuildOptions) -> Result<Prepared> {
    let (mut labels, commit) = if opts.allow_unreviewed {
        (unreviewed_labels(recipe), None)
    } else {
        let review = check_review(recipe, &opts.review)?;
        (review.labels(), Some(review.commit.clone()))
    };
    let input_digest = recipe.input_digest()?;
    labels.insert("gridship.recipe.digest".into(), input_digest.to_string());
    let sites = if opts.sites.is_empty() {
        recipe.spec.sites.clone()
    } else {
        opts.sites.clone()
    };
    if sites.is_empty() {
        return Err(Error::BadInput {
            input: recipe.dir.join("recipe.yaml").display().to_string(),
            place: "sites: ".into(),
            reason: "no target site".into(),
            hint: Some("list sites in recipe.yaml or pass --site SITE".into()),
        });
    }
    let overlays = sites
        .iter()
        .map(|s| SiteOverlay::load(&opts.sites_path, s))
        .collect::<Result<Vec<_>>>()?;
    Ok(Prepared {
        labels,
        commit,
        overlays,
        input_digest,
    })
}

/// Build `recipe` with the engine (once), then its site images.
pub fn build_recipe(
    recipe: &Recipe,
    opts: &BuildOptions,
    log: &mut dyn FnMut(&str),
) -> Result<BuildReport> {
    let started = std::time::Instant::now();
    let prepared = prepare(recipe, opts)?;
    let base_name = opts
        .base
        .clone()
        .unwrap_or_else(|| recipe.spec.base.image.clone());
    let base = resolve_base(&base_name, opts.pull, opts.ctx.registry.creds.as_ref())?;
    let built = build_in_engine(recipe, opts, &prepared, &base, log)?;
    let sites = prepared
        .overlays
        .iter()
        .map(|o| site_image(recipe, opts, &built, o, &prepared, &BTreeMap::new()))
        .collect::<Result<Vec<_>>>()?;
    Ok(BuildReport {
        recipe: recipe.name.clone(),
        reviewed: prepared.commit.is_some(),
        commit: prepared.commit.clone(),
        input_digest: prepared.input_digest.to_string(),
        base,
        engine_image: built.name.clone(),
        labels: prepared.labels,
        sites,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn now_rfc3339() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    crate::clock::rfc3339_utc(t).unwrap_or_default()
}

/// The engine build: the recipe directory (exactly the reviewed files) as
/// the context, the base as the recipe's base argument, provenance labels.
/// The result is read into the store once, for every site's image.
pub fn build_in_engine(
    recipe: &Recipe,
    opts: &BuildOptions,
    prepared: &Prepared,
    base: &BaseResolved,
    log: &mut dyn FnMut(&str),
) -> Result<Image> {
    let files = recipe.context_files()?;
    let context_tar = deterministic_tar(&recipe.dir, &files)?;
    let mut build_args = recipe.spec.build_args.clone();
    build_args.extend(opts.build_args.clone());
    build_args.insert(recipe.spec.base.arg.clone(), base.name.clone());
    let mut labels = prepared.labels.clone();
    labels.insert("org.opencontainers.image.created".into(), now_rfc3339());
    labels.insert(
        "org.opencontainers.image.base.name".into(),
        base.name.clone(),
    );
    labels.insert(
        "org.opencontainers.image.base.digest".into(),
        base.digest.clone(),
    );
    let tag = format!("gridship-build/{}:latest", recipe.name);
    let base_registry = engine::registry_of(&base.name);
    let id = engine::build(
        &BuildRequest {
            context_tar,
            dockerfile: "Dockerfile".into(),
            tag: tag.clone(),
            build_args,
            labels,
            network: opts.network.clone(),
            // The base was resolved just now; the build uses that one.
            pull: false,
            no_cache: opts.no_cache,
            base_registry: Some(base_registry),
            creds: opts.ctx.registry.creds.clone(),
        },
        log,
    )?;
    tracing::info!("recipe {} built as {id} ({tag})", recipe.name);
    transport::open(&ImageRef::DockerDaemon(tag), &opts.ctx)
}

/// The engine's image + the site's overlay layer, into the store; pushed.
pub fn site_image(
    recipe: &Recipe,
    opts: &BuildOptions,
    built: &Image,
    overlay: &SiteOverlay,
    prepared: &Prepared,
    extra_labels: &BTreeMap<String, String>,
) -> Result<SiteImage> {
    let store = opts.ctx.store()?;
    let names = store_names(recipe, &overlay.site);
    let created = now_rfc3339();
    let image = append_layer(
        built,
        &store,
        &NewLayer {
            tar: &overlay.layer,
            created_by: format!(
                "gridship site overlay {} ({} entries)",
                overlay.site, overlay.entries
            ),
            comment: Some(overlay.digest().to_string()),
        },
        &created,
        |config| {
            overlay.apply_config(config);
            let labels = config.config.labels.get_or_insert_with(BTreeMap::new);
            labels.extend(prepared.labels.clone());
            labels.extend(extra_labels.clone());
            labels.insert("org.opencontainers.image.created".into(), created.clone());
        },
        &names[0],
    )?;
    for n in &names[1..] {
        store.set_ref(n, &image.manifest_desc)?;
    }
    let mut pushed = Vec::new();
    if let Some(dest) = &opts.push {
        let tags: Vec<String> = match &dest.tag {
            Some(t) => vec![t.clone()],
            None if recipe.spec.tags.is_empty() => vec!["latest".into()],
            None => recipe.spec.tags.clone(),
        };
        for t in tags {
            let d = dest.with_tag(&format!("{t}-{}", overlay.site));
            transport::copy(
                &ImageRef::Store(names[0].clone()),
                &ImageRef::Registry(d.clone()),
                &opts.ctx,
            )?;
            pushed.push(format!("docker://{d}"));
        }
    }
    Ok(SiteImage {
        site: overlay.site.clone(),
        store_names: names,
        manifest_digest: image.manifest_desc.digest.to_string(),
        config_digest: image.manifest.config.digest.to_string(),
        overlay_digest: overlay.digest().to_string(),
        overlay_files: overlay.entries,
        pushed,
    })
}
