//! `gridship nightly`: every reviewed recipe for each of its sites. A cache
//! key from the recipe's files, the base image's digest, the site overlay
//! and the build arguments decides whether anything is built: unchanged
//! inputs cost a review check and a registry round trip, nothing more.
//! One failing recipe or site never stops the others.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::build::{self, BuildOptions, SiteImage};
use super::stages::Run;
use crate::digest::Digest;
use crate::recipe::Recipe;
use crate::reference::{ImageRef, RegistryRef};
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct NightlyOptions {
    /// Recipes to build; empty: every recipe in the recipes directory.
    pub recipes: Vec<String>,
    /// Only these sites (of each recipe's own list); empty: all of them.
    pub sites: Vec<String>,
    /// Options shared with `build` (`sites`, `base` and `push` are set per recipe).
    pub build: BuildOptions,
    /// Registry prefix: each recipe goes to PREFIX/RECIPE:TAG-SITE.
    pub push_prefix: Option<RegistryRef>,
    /// Dated builds kept per recipe and site (the newest is always kept).
    pub keep: usize,
    /// Dated builds older than this many days are dropped.
    pub keep_days: u64,
    /// Where the cache keys of earlier builds are kept.
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Built,
    Unchanged,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct NightlyItem {
    pub recipe: String,
    pub site: String,
    pub outcome: Outcome,
    pub key: Option<String>,
    pub manifest_digest: Option<String>,
    /// When the image now current for this pair was built (RFC 3339).
    pub built_at: Option<String>,
    /// Its dated tag in the registry (`docker://PREFIX/RECIPE:SITE-nightly-STAMP`).
    pub dated: Option<String>,
    /// The moving tags that name it (`TAG-SITE` for the recipe's tags, `latest-SITE`).
    pub moving: Vec<String>,
    pub image: Option<SiteImage>,
    pub error: Option<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NightlyReport {
    pub started: String,
    pub items: Vec<NightlyItem>,
    pub built: usize,
    pub unchanged: usize,
    pub failed: usize,
    /// Store names dropped by the retention rules.
    pub pruned: Vec<String>,
    /// Blobs no name refers to any more, removed from the store.
    pub blobs_removed: usize,
    pub seconds: f64,
}

/// What a key built, kept between runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    #[serde(default)]
    builds: BTreeMap<String, StateEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateEntry {
    recipe: String,
    site: String,
    manifest_digest: Digest,
    manifest_media_type: String,
    manifest_size: u64,
    built: String,
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("nightly-state.json")
}

fn load_state(dir: &Path) -> Result<State> {
    let path = state_path(dir);
    match std::fs::read(&path) {
        Ok(data) => serde_json::from_slice(&data).map_err(|e| Error::BadInput {
            input: path.display().to_string(),
            place: format!("line {} column {}: ", e.line(), e.column()),
            reason: e.to_string(),
            hint: Some("remove it: the next nightly then rebuilds everything once".into()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(Error::io_path(&path, "reading", e)),
    }
}

fn save_state(dir: &Path, state: &State) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io_path(dir, "creating", e))?;
    let data = serde_json::to_vec_pretty(state).expect("state serializes");
    crate::fsutil::write_atomic(&state_path(dir), &data, 0o644)
}

/// The cache key of one recipe × site build.
fn cache_key(
    recipe: &Recipe,
    site: &str,
    prepared: &build::Prepared,
    overlay: &crate::transform::overlay::SiteOverlay,
    base: &build::BaseResolved,
    build_args: &BTreeMap<String, String>,
) -> Digest {
    let doc = serde_json::json!({
        "format": "gridship nightly 1",
        "recipe": recipe.name,
        "site": site,
        "recipe_files": prepared.input_digest.to_string(),
        "reviewed": prepared.commit.is_some(),
        "base": base.digest,
        "overlay": overlay.digest().to_string(),
        "build_args": build_args,
    });
    Digest::of_bytes(doc.to_string().as_bytes())
}

/// The dated store name of a nightly build: sorts by time.
#[cfg(test)]
fn dated_name(recipe: &str, site: &str, stamp: &str) -> String {
    // 2026-11-22T04:00:00Z -> 20261122T040000Z (a valid tag).
    let compact: String = stamp.chars().filter(|c| *c != '-' && *c != ':').collect();
    format!("recipe/{recipe}:{}", dated_tag(site, &compact))
}

/// The dated tag of a build (store and registry): `SITE-nightly-20261122T040000Z`.
pub fn dated_tag(site: &str, compact: &str) -> String {
    format!("{site}-nightly-{compact}")
}

/// The moving tags of a recipe × site: `TAG-SITE` for each of the recipe's
/// tags, and `latest-SITE` (always, last: the tag whose labels decide
/// "unchanged", so a run killed while pushing builds again).
pub fn moving_tags(recipe: &Recipe, site: &str) -> Vec<String> {
    let mut tags: Vec<String> = recipe
        .spec
        .tags
        .iter()
        .filter(|t| *t != "latest")
        .map(|t| format!("{t}-{site}"))
        .collect();
    tags.push(format!("latest-{site}"));
    tags
}

/// Labels of every nightly image: the cache key of its inputs and when it
/// was built, so the registry alone tells whether a rebuild is due.
pub const LABEL_KEY: &str = "gridship.nightly.key";
pub const LABEL_BUILT: &str = "gridship.nightly.built";

/// The build that is current for these inputs, if any: from the registry
/// when the nightly pushes (the only state runners share), else from the
/// local state. An unreachable registry is an error, never "unchanged".
fn decide(
    opts: &NightlyOptions,
    recipe: &Recipe,
    site: &str,
    key: &Digest,
    state: &State,
    store: &crate::store::Layout,
) -> Result<Option<StateEntry>> {
    let Some(prefix) = &opts.push_prefix else {
        return Ok(state
            .builds
            .get(&key.to_string())
            .filter(|p| store.has_blob(&p.manifest_digest, Some(p.manifest_size)))
            .cloned());
    };
    let probe = RegistryRef {
        repository: format!("{}/{}", prefix.repository, recipe.name),
        tag: Some(format!("latest-{site}")),
        digest: None,
        ..prefix.clone()
    };
    let found = crate::registry::fetch_config(&probe, &opts.build.ctx.registry).map_err(|e| {
        Error::Other(format!(
            "cannot tell whether docker://{probe} is current: {e}\n  hint: the nightly decides \"unchanged\" from the registry; make it reachable and run again"
        ))
    })?;
    let Some((desc, config)) = found else {
        return Ok(None);
    };
    let labels = config.config.labels.unwrap_or_default();
    if labels.get(LABEL_KEY) != Some(&key.to_string()) {
        return Ok(None);
    }
    Ok(Some(StateEntry {
        recipe: recipe.name.clone(),
        site: site.to_string(),
        manifest_digest: desc.digest,
        manifest_media_type: desc.media_type,
        manifest_size: desc.size,
        built: labels.get(LABEL_BUILT).cloned().unwrap_or_default(),
    }))
}

/// The recipes a nightly of `opts` covers: those asked for, else every
/// recipe directory; none is an error.
fn recipe_names(opts: &NightlyOptions) -> Result<Vec<String>> {
    let names = if opts.recipes.is_empty() {
        Recipe::list(&opts.build.recipes_dir)
    } else {
        opts.recipes.clone()
    };
    if names.is_empty() {
        return Err(Error::bad_input(
            opts.build.recipes_dir.display().to_string(),
            "no recipes (directories with a recipe.yaml)",
        ));
    }
    Ok(names)
}

/// One night: what its recipes share.
struct Night<'a> {
    opts: &'a NightlyOptions,
    store: crate::store::Layout,
    /// When the night started: RFC 3339 and compact (for tags).
    stamp: String,
    compact: String,
    state: State,
    run: Run,
    items: Vec<NightlyItem>,
}

/// One recipe of the night: its build options and what its sites share.
struct RecipeBuild {
    recipe: Recipe,
    bopts: BuildOptions,
    prepared: build::Prepared,
    base: build::BaseResolved,
    build_args: BTreeMap<String, String>,
    /// Built (and read into the store) once, for the sites that need it.
    built: Option<std::result::Result<crate::image::Image, String>>,
}

pub fn run_nightly(opts: &NightlyOptions, log: &mut dyn FnMut(&str)) -> Result<NightlyReport> {
    let started = std::time::Instant::now();
    let now = crate::clock::now()?;
    let names = recipe_names(opts)?;
    let mut night = Night {
        opts,
        store: opts.build.ctx.store()?,
        stamp: crate::clock::rfc3339_utc(now)?,
        compact: crate::clock::compact_stamp(now)?,
        state: load_state(&opts.state_dir)?,
        run: Run::new(),
        items: Vec::new(),
    };
    for name in &names {
        let t0 = std::time::Instant::now();
        match night.recipe(name, log) {
            Ok(None) => {}
            Ok(Some(mut r)) => {
                for i in 0..r.prepared.overlays.len() {
                    let item = night.site(&mut r, i, log)?;
                    night.items.push(item);
                }
            }
            // One failing recipe never stops the others.
            Err((sites, e)) => {
                for site in sites {
                    night.items.push(NightlyItem::failed(name, &site, &e, t0));
                }
            }
        }
    }
    let pruned = prune(
        &night.store,
        &mut night.state,
        opts.keep,
        opts.keep_days,
        now,
    )?;
    save_state(&opts.state_dir, &night.state)?;
    let blobs_removed = if pruned.is_empty() {
        0
    } else {
        night
            .store
            .remove_unreferenced_blobs(std::time::Duration::from_secs(3600))?
    };
    let items = night.items;
    let count = |o| items.iter().filter(|i| i.outcome == o).count();
    Ok(NightlyReport {
        started: night.stamp,
        built: count(Outcome::Built),
        unchanged: count(Outcome::Unchanged),
        failed: count(Outcome::Failed),
        items,
        pruned,
        blobs_removed,
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl NightlyItem {
    fn new(recipe: &str, site: &str) -> NightlyItem {
        NightlyItem {
            recipe: recipe.to_string(),
            site: site.to_string(),
            outcome: Outcome::Unchanged,
            key: None,
            manifest_digest: None,
            built_at: None,
            dated: None,
            moving: Vec::new(),
            image: None,
            error: None,
            seconds: 0.0,
        }
    }

    fn failed(recipe: &str, site: &str, e: &Error, since: std::time::Instant) -> NightlyItem {
        NightlyItem {
            outcome: Outcome::Failed,
            error: Some(e.to_string()),
            seconds: since.elapsed().as_secs_f64(),
            ..NightlyItem::new(recipe, site)
        }
    }
}

impl Night<'_> {
    /// A recipe's sites and what they share (None: no site of it is
    /// asked for). A recipe that does not load or prepare fails its sites
    /// (`*` when its sites are unknown).
    fn recipe(
        &mut self,
        name: &str,
        log: &mut dyn FnMut(&str),
    ) -> std::result::Result<Option<RecipeBuild>, (Vec<String>, Error)> {
        let opts = self.opts;
        let recipe =
            Recipe::load(&opts.build.recipes_dir, name).map_err(|e| (vec!["*".into()], e))?;
        let sites: Vec<String> = recipe
            .spec
            .sites
            .iter()
            .filter(|s| opts.sites.is_empty() || opts.sites.contains(s))
            .cloned()
            .collect();
        if sites.is_empty() {
            return Ok(None);
        }
        log(&format!("recipe {name}: sites {}", sites.join(", ")));
        let mut bopts = opts.build.clone();
        bopts.sites = sites.clone();
        bopts.base = None;
        bopts.push = opts.push_prefix.as_ref().map(|p| RegistryRef {
            repository: format!("{}/{}", p.repository, recipe.name),
            tag: None,
            digest: None,
            ..p.clone()
        });
        let prepared = build::prepare(&recipe, &bopts).map_err(|e| (sites.clone(), e))?;
        let base = build::resolve_base(
            &recipe.spec.base.image,
            bopts.pull,
            bopts.ctx.registry.creds.as_ref(),
        )
        .map_err(|e| (sites.clone(), e))?;
        let mut build_args = recipe.spec.build_args.clone();
        build_args.extend(bopts.build_args.clone());
        Ok(Some(RecipeBuild {
            recipe,
            bopts,
            prepared,
            base,
            build_args,
            built: None,
        }))
    }

    /// Site `i` of a recipe: unchanged (its cache key is current), built,
    /// or failed.
    fn site(
        &mut self,
        r: &mut RecipeBuild,
        i: usize,
        log: &mut dyn FnMut(&str),
    ) -> Result<NightlyItem> {
        let t1 = std::time::Instant::now();
        let overlay = &r.prepared.overlays[i];
        let site = overlay.site.clone();
        let key = cache_key(
            &r.recipe,
            &site,
            &r.prepared,
            overlay,
            &r.base,
            &r.build_args,
        );
        let mut item = NightlyItem {
            key: Some(key.to_string()),
            ..NightlyItem::new(&r.recipe.name, &site)
        };
        match decide(self.opts, &r.recipe, &site, &key, &self.state, &self.store) {
            Err(e) => {
                log(&format!("  {site}: FAILED: {e}"));
                item.outcome = Outcome::Failed;
                item.error = Some(e.to_string());
            }
            Ok(Some(prev)) => {
                self.unchanged(r, &site, &prev, &mut item)?;
                log(&format!("  {site}: unchanged ({})", prev.built));
                self.state.builds.insert(key.to_string(), prev);
            }
            Ok(None) => match self.build_site(r, i, &key, log) {
                Ok((image, desc)) => {
                    self.state.builds.insert(
                        key.to_string(),
                        StateEntry {
                            recipe: r.recipe.name.clone(),
                            site: site.clone(),
                            manifest_digest: desc.digest.clone(),
                            manifest_media_type: desc.media_type.clone(),
                            manifest_size: desc.size,
                            built: self.stamp.clone(),
                        },
                    );
                    save_state(&self.opts.state_dir, &self.state)?;
                    item.outcome = Outcome::Built;
                    item.manifest_digest = Some(desc.digest.to_string());
                    item.built_at = Some(self.stamp.clone());
                    if r.bopts.push.is_some() {
                        item.dated = image.pushed.first().cloned();
                        item.moving = image.pushed[1..].to_vec();
                    }
                    item.image = Some(image);
                    log(&format!("  {site}: built {}", desc.digest));
                }
                Err(e) => {
                    log(&format!("  {site}: FAILED: {e}"));
                    item.outcome = Outcome::Failed;
                    item.error = Some(e);
                }
            },
        }
        item.seconds = t1.elapsed().as_secs_f64();
        Ok(item)
    }

    /// An unchanged build: the local names point at it again when the
    /// store has it (a retention run may have moved them).
    fn unchanged(
        &self,
        r: &RecipeBuild,
        site: &str,
        prev: &StateEntry,
        item: &mut NightlyItem,
    ) -> Result<()> {
        if self
            .store
            .has_blob(&prev.manifest_digest, Some(prev.manifest_size))
        {
            let desc = crate::store::Descriptor::new(
                prev.manifest_media_type.clone(),
                prev.manifest_digest.clone(),
                prev.manifest_size,
            );
            for n in build::store_names(&r.recipe, site) {
                self.store.set_ref(&n, &desc)?;
            }
        }
        if let Some(dest) = &r.bopts.push {
            let compact = crate::clock::parse_time(&prev.built)
                .and_then(|t| crate::clock::compact_stamp(t).ok())
                .unwrap_or_default();
            item.dated = Some(format!(
                "docker://{}",
                dest.with_tag(&dated_tag(site, &compact))
            ));
            item.moving = moving_tags(&r.recipe, site)
                .iter()
                .map(|t| format!("docker://{}", dest.with_tag(t)))
                .collect();
        }
        item.manifest_digest = Some(prev.manifest_digest.to_string());
        item.built_at = Some(prev.built.clone());
        Ok(())
    }

    /// Build site `i`'s image: the recipe built in the engine (source,
    /// once a night), the site overlay over it (transforms), its names in
    /// the store and the registry (sinks): dated tag first, the moving
    /// tags, whose labels decide "unchanged", last.
    fn build_site(
        &mut self,
        r: &mut RecipeBuild,
        i: usize,
        key: &Digest,
        log: &mut dyn FnMut(&str),
    ) -> std::result::Result<(SiteImage, crate::store::Descriptor), String> {
        let name = r.recipe.name.clone();
        let overlay = &r.prepared.overlays[i];
        let built = match &r.built {
            Some(b) => b.clone(),
            None => {
                log(&format!("  building {name} from {}", r.base.name));
                let b = self
                    .run
                    .stage(&format!("build {name}"), || {
                        build::build_in_engine(
                            &r.recipe,
                            &r.bopts,
                            &r.prepared,
                            &r.base,
                            &mut |l| tracing::info!("{l}"),
                        )
                    })
                    .map_err(|e| e.to_string());
                r.built = Some(b.clone());
                b
            }
        }?;
        let labels = BTreeMap::from([
            (LABEL_KEY.to_string(), key.to_string()),
            (LABEL_BUILT.to_string(), self.stamp.clone()),
        ]);
        let mut local = r.bopts.clone();
        // Pushed below, dated tag first.
        local.push = None;
        let stage = format!("site image {name} {}", overlay.site);
        let (mut image, desc) = self
            .run
            .stage(&stage, || {
                let image =
                    build::site_image(&r.recipe, &local, &built, overlay, &r.prepared, &labels)?;
                let desc = self.store.resolve(Some(&image.store_names[0]))?;
                let dated = format!("recipe/{name}:{}", dated_tag(&overlay.site, &self.compact));
                self.store.set_ref(&dated, &desc)?;
                Ok((image, desc))
            })
            .map_err(|e| e.to_string())?;
        if let Some(dest) = &r.bopts.push {
            let mut tags = vec![dated_tag(&overlay.site, &self.compact)];
            tags.extend(moving_tags(&r.recipe, &overlay.site));
            let from = ImageRef::Store(image.store_names[0].clone());
            let pushed = self
                .run
                .stage(&format!("push {name} {}", overlay.site), || {
                    let mut pushed = Vec::new();
                    for t in tags {
                        let d = dest.with_tag(&t);
                        crate::transport::copy(
                            &from,
                            &ImageRef::Registry(d.clone()),
                            &r.bopts.ctx,
                        )?;
                        pushed.push(format!("docker://{d}"));
                    }
                    Ok(pushed)
                })
                .map_err(|e| e.to_string())?;
            image.pushed.extend(pushed);
        }
        Ok((image, desc))
    }
}

/// One job of a CI matrix: a recipe and one of its sites.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MatrixPair {
    #[serde(rename = "RECIPE")]
    pub recipe: String,
    #[serde(rename = "SITE")]
    pub site: String,
}

/// The recipe × site pairs a nightly of `opts` builds, in order: one CI job
/// each (`nightly --recipe R --site S`). A recipe that does not load is an
/// error here: the matrix must not silently lose it.
pub fn matrix(opts: &NightlyOptions) -> Result<Vec<MatrixPair>> {
    let names = recipe_names(opts)?;
    let mut out = Vec::new();
    for name in &names {
        let recipe = Recipe::load(&opts.build.recipes_dir, name)?;
        for site in &recipe.spec.sites {
            if opts.sites.is_empty() || opts.sites.contains(site) {
                out.push(MatrixPair {
                    recipe: name.clone(),
                    site: site.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// A DUCC wishlist (version 1) for CVMFS repository `repo`: for every pair
/// of the matrix, the dated tag of its current build and its moving tags,
/// as the registry's labels say now. Pairs the registry has no nightly
/// image of are left out and returned (a recipe whose first build failed).
pub fn wishlist(opts: &NightlyOptions, repo: &str) -> Result<(String, Vec<MatrixPair>)> {
    let Some(prefix) = &opts.push_prefix else {
        return Err(Error::BadInput {
            input: "gridship nightly --wishlist-for".into(),
            place: String::new(),
            reason: "needs the registry the nightly pushes to".into(),
            hint: Some("add --push-prefix docker://REG/PREFIX (or push: in config.yaml)".into()),
        });
    };
    let mut inputs = Vec::new();
    let mut missing = Vec::new();
    for pair in matrix(opts)? {
        let recipe = Recipe::load(&opts.build.recipes_dir, &pair.recipe)?;
        let repo_ref = RegistryRef {
            repository: format!("{}/{}", prefix.repository, recipe.name),
            tag: None,
            digest: None,
            ..prefix.clone()
        };
        let probe = repo_ref.with_tag(&format!("latest-{}", pair.site));
        let built = crate::registry::fetch_config(&probe, &opts.build.ctx.registry)?
            .and_then(|(_, c)| c.config.labels.unwrap_or_default().remove(LABEL_BUILT))
            .and_then(|b| crate::clock::parse_time(&b));
        let Some(built) = built else {
            missing.push(pair);
            continue;
        };
        let compact = crate::clock::compact_stamp(built)?;
        inputs.push(
            repo_ref
                .with_tag(&dated_tag(&pair.site, &compact))
                .to_string(),
        );
        for t in moving_tags(&recipe, &pair.site) {
            inputs.push(repo_ref.with_tag(&t).to_string());
        }
    }
    let doc = serde_json::json!({
        "version": 1,
        "cvmfs_repo": repo,
        "input": inputs,
    });
    // JSON is YAML: the wishlist reader takes it as it is.
    let mut text = serde_json::to_string_pretty(&doc).expect("wishlist serializes");
    text.push('\n');
    Ok((text, missing))
}

/// Drop dated nightly names beyond `keep` per recipe and site, or older
/// than `keep_days`; the newest always stays. State entries whose manifest
/// no name holds any more go too.
fn prune(
    store: &crate::store::Layout,
    state: &mut State,
    keep: usize,
    keep_days: u64,
    now: i64,
) -> Result<Vec<String>> {
    let horizon = now - (keep_days as i64) * 86_400;
    let horizon_name = crate::clock::rfc3339_utc(horizon.max(0))
        .unwrap_or_default()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect::<String>();
    let index = store.read_index()?;
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in &index.manifests {
        if let Some(n) = d.ref_name()
            && let Some((group, _)) = n.split_once("-nightly-")
            && n.starts_with("recipe/")
        {
            groups
                .entry(group.to_string())
                .or_default()
                .push(n.to_string());
        }
    }
    let mut drop = Vec::new();
    for names in groups.values_mut() {
        names.sort();
        names.reverse(); // newest first
        for (i, n) in names.iter().enumerate().skip(1) {
            let stamp = n.rsplit("-nightly-").next().unwrap_or("");
            if i >= keep.max(1) || stamp < horizon_name.as_str() {
                drop.push(n.clone());
            }
        }
    }
    if drop.is_empty() {
        return Ok(drop);
    }
    let kept = store.update_index(|index| {
        index
            .manifests
            .retain(|d| d.ref_name().is_none_or(|n| !drop.iter().any(|x| x == n)));
        index
            .manifests
            .iter()
            .map(|d| d.digest.clone())
            .collect::<std::collections::HashSet<_>>()
    })?;
    state
        .builds
        .retain(|_, e| kept.contains(&e.manifest_digest));
    Ok(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Descriptor, Layout};

    fn stamp_days_ago(days: i64) -> String {
        let now = crate::clock::now().unwrap();
        crate::clock::rfc3339_utc(now - days * 86_400).unwrap()
    }

    #[test]
    fn retention_keeps_the_newest_n_within_the_days_and_always_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Layout::open_or_create(tmp.path()).unwrap();
        let mut state = State::default();
        let mut name_of = BTreeMap::new();
        for (site, days) in [
            ("glasgow", 1),
            ("glasgow", 2),
            ("glasgow", 3),
            ("glasgow", 40),
            ("bonn", 60),
        ] {
            let (digest, size) = store
                .put_blob(format!("{{\"manifest\": \"{site}-{days}\"}}").as_bytes())
                .unwrap();
            let desc = Descriptor::new(crate::image::media::OCI_MANIFEST, digest.clone(), size);
            let name = dated_name("dev", site, &stamp_days_ago(days));
            store.set_ref(&name, &desc).unwrap();
            state.builds.insert(
                format!("key-{site}-{days}"),
                StateEntry {
                    recipe: "dev".into(),
                    site: site.into(),
                    manifest_digest: digest,
                    manifest_media_type: desc.media_type.clone(),
                    manifest_size: size,
                    built: String::new(),
                },
            );
            name_of.insert((site, days), name);
        }
        // 30 days, many builds: only the 40-day-old glasgow build goes;
        // bonn's one build is older but the newest of its group.
        let dropped = prune(&store, &mut state, 10, 30, crate::clock::now().unwrap()).unwrap();
        assert_eq!(dropped, vec![name_of[&("glasgow", 40)].clone()]);
        assert!(!state.builds.contains_key("key-glasgow-40"));
        assert!(state.builds.contains_key("key-bonn-60"));
        // Keep 2: the third newest glasgow build goes too.
        let dropped = prune(&store, &mut state, 2, 30, crate::clock::now().unwrap()).unwrap();
        assert_eq!(dropped, vec![name_of[&("glasgow", 3)].clone()]);
        let names: Vec<String> = store
            .read_index()
            .unwrap()
            .manifests
            .iter()
            .filter_map(|d| d.ref_name().map(str::to_string))
            .collect();
        let mut want = vec![
            name_of[&("glasgow", 1)].clone(),
            name_of[&("glasgow", 2)].clone(),
            name_of[&("bonn", 60)].clone(),
        ];
        want.sort();
        let mut names = names;
        names.sort();
        assert_eq!(names, want);
        // The blobs of dropped builds go with an unreferenced-blob sweep.
        assert_eq!(
            store
                .remove_unreferenced_blobs(std::time::Duration::ZERO)
                .unwrap(),
            2
        );
    }
}
