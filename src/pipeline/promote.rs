//! `gridship promote`: a live development session to grid-ready artifacts.
//!
//! snapshot → site overlay → merge → content scan → strip sshd → scrub
//! secrets → slim → world-readable → sinks (SIF, CVMFS tree, OCI image) → GPU smoke tests →
//! job description. Nothing is written before every rule has run, so
//! `--fail-on-secrets` and `--dry-run` leave no file behind; each artifact
//! is written under a temporary name and renamed into place by its sink.
//!
//! The store keeps only what was asked for or is needed again: the
//! snapshot, under the source's name (a later promote of the session reuses
//! its layers; `gridship store gc` removes it), and the flattened image only
//! with `--to oci`. The working image's name is removed when promote ends,
//! whatever the outcome.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::stages::{Prepared, Run, image_summary};
use crate::config::search::SearchPath;
use crate::image::Image;
use crate::index::{FsIndex, cache};
use crate::reference::{ImageRef, RegistryRef};
pub use crate::sink::Artifact;
pub use crate::sink::cvmfs::CvmfsTarget;
use crate::sink::oci::{OciSink, WriteMode};
use crate::sink::{JobImage, Sink, Spec};
use crate::site::SiteProfile;
use crate::smoke::{self, Status};
use crate::transform::paths::{PathPattern, PatternSet};
use crate::transform::scan::{self, ScanOptions, ScanStats};
use crate::transform::secrets::{self, ScrubSecrets};
use crate::transform::slim::{self, Policy};
use crate::transform::sshd::{self, StripSshd};
use crate::transform::{Chain, RuleReport, Step, Transform, overlay::SiteOverlay};
use crate::transport::{self, Context};
use crate::{Error, Result};

/// Which artifacts to make: kinds of crate::sink::KINDS.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Targets {
    kinds: Vec<&'static str>,
}

impl Targets {
    pub fn parse(list: &str) -> Result<Targets> {
        let mut t = Targets::default();
        for w in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match crate::sink::KINDS.iter().find(|(k, _)| *k == w) {
                Some((k, _)) if !t.kinds.contains(k) => t.kinds.push(k),
                Some(_) => {}
                None => {
                    return Err(Error::BadInput {
                        input: format!("--to {list}"),
                        place: format!("{w:?}: "),
                        reason: "not an artifact kind".into(),
                        hint: Some(format!(
                            "use a comma-separated list of {}",
                            crate::sink::kind_names().join(", ")
                        )),
                    });
                }
            }
        }
        if t.kinds.is_empty() {
            return Err(Error::bad_input(
                format!("--to {list}"),
                "names no artifact",
            ));
        }
        Ok(t)
    }

    pub fn has(&self, kind: &str) -> bool {
        self.kinds.contains(&kind)
    }
}

#[derive(Debug, Clone)]
pub struct PromoteOptions {
    pub source: ImageRef,
    pub site: String,
    /// The sites search path.
    pub sites: SearchPath,
    /// Recipes directory: the session's recipe (label gridship.recipe)
    /// gives protected paths, slim overrides and its smoke suite.
    pub recipes_dir: Option<PathBuf>,
    pub queue: Option<String>,
    pub targets: Targets,
    pub out: PathBuf,
    /// Artifact base name (default: the container's name) and tag
    /// (store: promoted/NAME:TAG).
    pub name: Option<String>,
    pub tag: String,
    pub keep_base: bool,
    pub fail_on_secrets: bool,
    pub dry_run: bool,
    pub keep: Vec<String>,
    /// Opt-in slim rules to turn on (`--enable-slim`).
    pub enable_slim: Vec<String>,
    pub scan_limit: usize,
    /// Run the world-readable rule (after the secrets are scrubbed): grid
    /// jobs run as pool accounts, not as the session's user.
    pub world_readable: bool,
    /// Default: a dir backend under OUT/cvmfs.
    pub cvmfs: Option<CvmfsTarget>,
    pub push: Option<RegistryRef>,
    /// Without `push`: push to PREFIX/NAME:TAG (config.yaml's push:).
    pub push_prefix: Option<String>,
    /// Where the CE fetches the SIF (for the job description of a SIF).
    pub sif_url: Option<String>,
    pub templates: SearchPath,
    /// The job's command, files, walltime and memory.
    pub work: crate::jobdesc::work::Work,
    /// GPUs per job (default: the queue's).
    pub gpus: Option<u32>,
    /// A suite name or file; default: the recipe's own (label
    /// gridship.recipe), else gpu-basic.
    pub smoke_suite: Option<String>,
    pub suites: SearchPath,
    pub smoke_backend: crate::smoke::runtime::Backend,
    /// The apptainer program for the apptainer backend (None: on PATH).
    pub smoke_apptainer: Option<PathBuf>,
    /// Whether a GPU is visible (decided by the caller).
    pub gpu: std::result::Result<String, String>,
    pub created: i64,
    pub reproducible: bool,
    pub squashfs: crate::encode::squashfs::SquashfsOptions,
    pub ctx: Context,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Sizes {
    /// Regular-file bytes of the snapshot's merged tree (with the overlay).
    pub before: u64,
    pub after: u64,
    pub removed: u64,
}

#[derive(Debug, Serialize)]
pub struct PromoteReport {
    pub source: String,
    pub site: String,
    pub name: String,
    pub dry_run: bool,
    pub snapshot_digest: String,
    pub layers: usize,
    pub base_layers: usize,
    pub merge_cached_layers: usize,
    pub scan: ScanStats,
    pub rules: Vec<RuleReport>,
    pub sizes: Sizes,
    /// The directories that make the promoted tree big, largest first (see
    /// [`slim::largest_dirs`]), with the slim rule that would remove each.
    pub largest_dirs: Vec<slim::LargeDir>,
    pub artifacts: Vec<Artifact>,
    pub smoke: Option<smoke::Report>,
    pub warnings: Vec<String>,
    /// Seconds per stage, in order.
    pub stages: Vec<(String, f64)>,
    /// Layers read and merged per stage (the merge cache's hits are not
    /// reads): the session's layers are merged once, in "merge".
    pub layers_merged: Vec<(String, u64)>,
    pub seconds: f64,
    /// Whether everything asked for was made and every smoke check passed
    /// or was skipped.
    pub ok: bool,
}

/// Store names promote works under, removed when it ends.
struct WorkRefs<'a> {
    store: &'a crate::store::Layout,
    names: Vec<String>,
}

impl Drop for WorkRefs<'_> {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.names);
        if let Err(e) = self.store.update_index(|i| {
            i.manifests
                .retain(|d| !d.ref_name().is_some_and(|n| names.iter().any(|w| w == n)))
        }) {
            tracing::warn!("could not drop promote's working names from the store: {e}");
        }
    }
}

/// What is decided before the session is touched: every override checked.
struct Plan {
    site: SiteProfile,
    overlay: SiteOverlay,
    policy: Policy,
}

impl Plan {
    fn new(opts: &PromoteOptions) -> Result<Plan> {
        let site = SiteProfile::load(&opts.sites, &opts.site)?;
        let overlay = SiteOverlay::from_profile(&site)?;
        let mut policy = Policy::new()?;
        policy.apply_site(&site.chain)?;
        for k in &opts.keep {
            policy.keep(k)?;
        }
        for name in &opts.enable_slim {
            policy.enable(name, &format!("--enable-slim {name}"), "")?;
        }
        Ok(Plan {
            site,
            overlay,
            policy,
        })
    }
}

pub fn promote(opts: &PromoteOptions) -> Result<PromoteReport> {
    let started = Instant::now();
    let mut run = Run::new();
    let mut plan = Plan::new(opts)?;
    let store = opts.ctx.store()?;
    let mut work = WorkRefs {
        store: &store,
        names: Vec::new(),
    };
    let snap = run.stage_said("snapshot", || snapshot(opts), |s| image_summary(&s.image))?;
    let name = artifact_name(opts.name.as_deref().unwrap_or(&snap.source_name));
    let push_dest = push_destination(opts, &name)?;
    let work_name = format!("gridship-promote/work-{}:{}", std::process::id(), opts.tag);
    work.names.push(work_name.clone());
    let (image, overlay_paths) = run.stage("site overlay", || {
        site_overlay(opts, &plan.overlay, &snap.image, &store, &work_name)
    })?;
    let merged = run.stage("merge", || merge(opts, &image, &store, snap.base_layers))?;
    let before = merged.index.content_bytes();
    let scanned = run.stage("scan", || scan_once(opts, &merged.index, &image))?;
    let ruled = run.stage("rules", || {
        rules(opts, &mut plan, merged, &image, &scanned, &overlay_paths)
    })?;
    let mut report = rules_report(opts, &name, &snap, before, scanned.stats, &ruled);
    if opts.dry_run {
        return Ok(finish(report, run, started));
    }
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| Error::io_path(&opts.out, "creating the output directory", e))?;
    // The promoted image as the sinks see it: the transformed tree over
    // the working image's layers, with the promoted config.
    let mut view = image.clone();
    view.config = ruled.config.clone();
    view.config_raw = serde_json::to_vec(&ruled.config).expect("config serializes");
    view.name = format!("promoted/{}:{}", name, opts.tag);
    let trees = Prepared {
        index: &ruled.index,
        chain: &ruled.chain,
        data: &image,
        kept_base: ruled.lower.map(|l| (snap.base_layers, Arc::new(l))),
    };
    let mut sinks = sinks_for(opts, &name, &store)?;
    let mut refs: Vec<&mut dyn Sink> = sinks.iter_mut().map(|s| s.as_mut() as _).collect();
    report.artifacts = run.sinks(&mut refs, &view, &trees)?;
    for s in &sinks {
        report.rules.extend(s.rules());
    }
    if let Some(dest) = push_dest.filter(|_| opts.targets.has("oci")) {
        let pushed = run.stage("push", || push(opts, &name, &dest))?;
        report.artifacts.push(pushed);
    }
    let smoke = run.stage("smoke", || {
        smoke_tests(opts, &plan.site, &view, &ruled.index)
    })?;
    let smoke_ok = smoke.ok();
    if !smoke_ok {
        run.warnings.push(format!(
            "smoke tests failed ({} of {}): no job description written",
            smoke.failed,
            smoke.checks.len()
        ));
        report.ok = false;
    }
    report.smoke = Some(smoke);
    let (made, warnings) = run.stage("jobdesc", || {
        job_descriptions(
            opts,
            &plan.site,
            &name,
            &report.artifacts,
            &ruled.image_command,
            smoke_ok,
        )
    })?;
    report.artifacts.extend(made);
    run.warnings.extend(warnings);
    let report = finish(report, run, started);
    let json = serde_json::to_vec_pretty(&report).expect("report serializes");
    crate::fsutil::write_atomic(
        &opts.out.join(format!("{}.promote.json", name)),
        &json,
        0o644,
    )?;
    drop(work);
    Ok(report)
}

/// The report as far as the rules: what a dry run says.
fn rules_report(
    opts: &PromoteOptions,
    name: &str,
    snap: &Snapshot,
    before: u64,
    scan: ScanStats,
    ruled: &Ruled,
) -> PromoteReport {
    let after = ruled.index.content_bytes();
    PromoteReport {
        source: opts.source.to_string(),
        site: opts.site.clone(),
        name: format!("{}:{}", name, opts.tag),
        dry_run: opts.dry_run,
        snapshot_digest: snap.image.manifest_desc.digest.to_string(),
        layers: snap.image.layers().len(),
        base_layers: snap.base_layers,
        merge_cached_layers: ruled.cached,
        scan,
        rules: ruled.chain.reports.clone(),
        sizes: Sizes {
            before,
            after,
            removed: before.saturating_sub(after),
        },
        largest_dirs: slim::largest_dirs(&ruled.index, &ruled.chain.reports, slim::LARGEST_DIRS),
        artifacts: Vec::new(),
        smoke: None,
        warnings: ruled.warnings.clone(),
        stages: Vec::new(),
        layers_merged: Vec::new(),
        seconds: 0.0,
        ok: true,
    }
}

/// The report with the stages' times and warnings.
fn finish(mut report: PromoteReport, run: Run, started: Instant) -> PromoteReport {
    report.warnings.extend(run.warnings);
    report.stages = run.stages;
    report.layers_merged = run.layers_merged;
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// The source stage: a container's snapshot (committed and read into the
/// store; the container keeps running), or an image.
struct Snapshot {
    image: Image,
    /// Layers of the session's base image (the rest are the session's).
    base_layers: usize,
    /// The container's or image's name: the artifacts' default name.
    source_name: String,
}

fn snapshot(opts: &PromoteOptions) -> Result<Snapshot> {
    let image = transport::open(&opts.source, &opts.ctx)?;
    let (base_layers, source_name) = match &opts.source {
        ImageRef::Container(c) => {
            let info = crate::engine::inspect_container(c)?;
            (
                crate::engine::inspect_image(&info.image_id)?.layers,
                info.name,
            )
        }
        other => (
            image.layers().len().saturating_sub(1),
            other
                .to_string()
                .rsplit(['/', ':'])
                .next()
                .unwrap_or("image")
                .to_string(),
        ),
    };
    Ok(Snapshot {
        base_layers: base_layers.min(image.layers().len()),
        image,
        source_name,
    })
}

/// `--push`, else config.yaml's push prefix: PREFIX/NAME:TAG.
fn push_destination(opts: &PromoteOptions, name: &str) -> Result<Option<RegistryRef>> {
    Ok(match (&opts.push, &opts.push_prefix) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(prefix)) => Some(
            crate::reference::parse_registry(&format!(
                "{}/{name}:{}",
                prefix.trim_end_matches('/'),
                opts.tag
            ))
            .map_err(|e| Error::bad_input(format!("push prefix {prefix}"), e))?,
        ),
        (None, None) => None,
    })
}

/// The site overlay stage: one more layer, env and labels, as the working
/// image; and the overlay's files, which no slim rule removes.
fn site_overlay(
    opts: &PromoteOptions,
    overlay: &SiteOverlay,
    snapshot: &Image,
    store: &crate::store::Layout,
    work_name: &str,
) -> Result<(Image, PatternSet)> {
    let created_rfc = crate::clock::rfc3339_utc(opts.created)?;
    let image = crate::sink::oci::append_layer(
        snapshot,
        store,
        &crate::sink::oci::NewLayer {
            tar: &overlay.layer,
            created_by: format!(
                "gridship site overlay {} ({} entries)",
                overlay.site, overlay.entries
            ),
            comment: Some(overlay.digest().to_string()),
        },
        &created_rfc,
        |config| overlay.apply_config(config),
        work_name,
    )?;
    let raw = FsIndex::from_layer(&image, image.layers().len() - 1)?;
    let mut paths = PatternSet::default();
    for (k, _, n) in raw.iter() {
        if !k.is_empty() && !n.kind.is_dir() {
            paths.push(PathPattern::literal(k));
        }
    }
    Ok((image, paths))
}

/// The merge stage's tree, and with --keep-base the base layers' own.
struct Merged {
    index: FsIndex,
    lower: Option<FsIndex>,
    cached: usize,
}

/// Merge the working image (lower layers from the cache when an earlier
/// promote or publish of the same base merged them).
fn merge(
    opts: &PromoteOptions,
    image: &Image,
    store: &crate::store::Layout,
    base_layers: usize,
) -> Result<Merged> {
    crate::event::set_total(image.layers().iter().map(|l| l.size).sum());
    let cache_dir = store.merge_cache_dir();
    Ok(if opts.keep_base {
        let (lower, index, cached) = cache::from_image_split(image, &cache_dir, base_layers)?;
        Merged {
            index,
            lower: Some(lower),
            cached,
        }
    } else {
        let (index, cached) = cache::from_image(image, &cache_dir)?;
        Merged {
            index,
            lower: None,
            cached,
        }
    })
}

/// The content scan, once for every rule, with the text of the scripts
/// the image's entrypoint runs (for strip-sshd).
struct Scanned {
    stats: ScanStats,
    findings: HashMap<crate::index::NodeId, scan::Finding>,
    scripts: HashMap<String, Vec<u8>>,
}

fn scan_once(opts: &PromoteOptions, index: &FsIndex, image: &Image) -> Result<Scanned> {
    let scripts = sshd::entry_scripts(index, &image.config);
    let scan = scan::scan(
        index,
        image,
        &ScanOptions {
            limit: opts.scan_limit,
            keep_content: scripts.iter().map(|(_, id)| *id).collect(),
            ..Default::default()
        },
    )?;
    let texts = scripts
        .iter()
        .filter_map(|(p, id)| scan.contents.get(id).map(|c| (p.clone(), c.clone())))
        .collect();
    Ok(Scanned {
        stats: scan.stats,
        findings: scan.findings,
        scripts: texts,
    })
}

/// The rules stage's result: the transformed tree and config.
struct Ruled {
    index: FsIndex,
    lower: Option<FsIndex>,
    cached: usize,
    config: crate::image::ImageConfig,
    chain: Chain,
    /// What the job runs when --run is not given.
    image_command: crate::jobdesc::work::ImageCommand,
    warnings: Vec<String>,
}

/// The rules, in the chain's order: strip sshd and scrub secrets (then
/// refuse what --fail-on-secrets and the job's command refuse, before the
/// long work), slim, world-readable; then the promoted labels.
fn rules(
    opts: &PromoteOptions,
    plan: &mut Plan,
    merged: Merged,
    image: &Image,
    scanned: &Scanned,
    overlay_paths: &PatternSet,
) -> Result<Ruled> {
    let Merged {
        mut index,
        lower,
        cached,
    } = merged;
    let mut config = image.config.clone();
    let mut warnings = recipe_overrides(opts, plan, &config)?;
    let strip = StripSshd {
        scripts: &scanned.scripts,
    };
    let scrub = ScrubSecrets {
        findings: &scanned.findings,
        policy: &plan.policy.secrets,
    };
    let scrub_rule = scrub.name();
    let mut chain = Chain::new();
    chain.apply(
        vec![Step::StripSshd(strip), Step::ScrubSecrets(scrub)],
        &mut index,
        &mut config,
    )?;
    let scrubbed = chain.report(scrub_rule).map(|r| &r.removed);
    if opts.fail_on_secrets
        && let Some(removed) = scrubbed.filter(|r| !r.is_empty())
    {
        return Err(secrets::refuse(removed, &opts.source.to_string()));
    }
    // What the job runs is known now (sshd stripped): refuse a job with
    // nothing to run, or a missing input, before the long work starts.
    let image_command = crate::jobdesc::work::ImageCommand::Config {
        entrypoint: config.config.entrypoint.clone().unwrap_or_default(),
        cmd: config.config.cmd.clone().unwrap_or_default(),
    };
    if !plan.site.gpu_queues.is_empty() {
        crate::jobdesc::work::executable_and_args(opts.work.command.as_ref(), &image_command)?;
        crate::jobdesc::work::input_files(&opts.work.inputs)?;
        crate::jobdesc::work::output_files(&opts.work.outputs)?;
    }
    if let Some(lower) = &lower {
        warnings.extend(kept_in_base(&chain.reports, lower));
    }
    let mut rest = vec![Step::Slim {
        policy: &plan.policy.slim,
        findings: &scanned.findings,
        spare: overlay_paths,
    }];
    if opts.world_readable {
        rest.push(Step::WorldReadable);
    }
    chain.apply(rest, &mut index, &mut config)?;
    let created_rfc = crate::clock::rfc3339_utc(opts.created)?;
    let labels = config.config.labels.get_or_insert_with(BTreeMap::new);
    labels.insert("gridship.promoted.from".into(), opts.source.to_string());
    labels.insert("gridship.promoted.site".into(), opts.site.clone());
    labels.insert(
        "org.opencontainers.image.created".into(),
        created_rfc.clone(),
    );
    config.created = Some(created_rfc);
    Ok(Ruled {
        index,
        lower,
        cached,
        config,
        chain,
        image_command,
        warnings,
    })
}

/// A session from a recipe gridship built: that recipe's protected paths
/// and slim overrides, when this checkout has it.
fn recipe_overrides(
    opts: &PromoteOptions,
    plan: &mut Plan,
    config: &crate::image::ImageConfig,
) -> Result<Vec<String>> {
    let label = config
        .config
        .labels
        .as_ref()
        .and_then(|l| l.get("gridship.recipe"));
    let (Some(dir), Some(name)) = (&opts.recipes_dir, label) else {
        return Ok(Vec::new());
    };
    match crate::recipe::Recipe::load(dir, name) {
        Ok(recipe) => {
            plan.policy.apply_recipe(&recipe)?;
            Ok(Vec::new())
        }
        Err(e) => Ok(vec![format!(
            "the session's image comes from recipe {name}, whose overrides were not applied: {e}"
        )]),
    }
}

/// --keep-base: what sshd and secrets removed still sits in a kept base
/// layer of the OCI image.
fn kept_in_base(reports: &[RuleReport], lower: &FsIndex) -> Vec<String> {
    reports
        .iter()
        .flat_map(|r| &r.removed)
        .filter(|c| c.path.starts_with('/') && lower.lookup(&c.path).is_some())
        .map(|c| format!(
            "--keep-base: {} ({}) is removed from the tree but stays in a base layer of the OCI image; the SIF and CVMFS trees do not carry it",
            c.path, c.reason
        ))
        .collect()
}

/// The sinks `--to` asks for, in the order of crate::sink::KINDS; a sink
/// named by digests without an OCI image gets the image's digests first.
fn sinks_for(
    opts: &PromoteOptions,
    name: &str,
    store: &crate::store::Layout,
) -> Result<Vec<Box<dyn Sink>>> {
    let spec = Spec {
        out: opts.out.clone(),
        name: name.to_string(),
        tag: opts.tag.clone(),
        created: opts.created,
        reproducible: opts.reproducible,
        squashfs: opts.squashfs.clone(),
        cvmfs: opts.cvmfs.clone(),
        store: store.clone(),
        site: opts.site.clone(),
        created_by: format!(
            "gridship promote {} --site {}{}",
            opts.source,
            opts.site,
            if opts.keep_base { " --keep-base" } else { "" }
        ),
    };
    let mut sinks = Vec::new();
    for (kind, make) in crate::sink::KINDS {
        if opts.targets.has(kind) {
            sinks.push(make(&spec)?);
        }
    }
    if sinks.iter().any(|s| s.named_by_digests()) && !opts.targets.has("oci") {
        sinks.insert(
            0,
            Box::new(OciSink::for_spec(&spec, WriteMode::DigestsOnly)?),
        );
    }
    Ok(sinks)
}

/// The push stage: the promoted image from the store to the registry.
fn push(opts: &PromoteOptions, name: &str, dest: &RegistryRef) -> Result<Artifact> {
    let store_name = format!("promoted/{}:{}", name, opts.tag);
    transport::copy(
        &ImageRef::Store(store_name.clone()),
        &ImageRef::Registry(dest.clone()),
        &opts.ctx,
    )?;
    let store = opts.ctx.store()?;
    let desc = store.resolve(Some(&store_name))?;
    Ok(Artifact {
        kind: "oci-pushed".into(),
        path: format!("docker://{dest}"),
        digest: Some(desc.digest.to_string()),
        bytes: 0,
        runs_as: None,
    })
}

/// GPU smoke tests: the static checks always; the run checks when a GPU is
/// visible (skipped, never passed, when none is).
fn smoke_tests(
    opts: &PromoteOptions,
    site: &SiteProfile,
    view: &Image,
    index: &FsIndex,
) -> Result<smoke::Report> {
    let mut suite = match &opts.smoke_suite {
        Some(s) => crate::smoke::suite::Suite::find(s, &opts.suites)?,
        None => {
            crate::smoke::suite::for_image(view, opts.recipes_dir.as_deref(), &opts.suites)?.suite
        }
    };
    let queues = site
        .gpu_queues
        .iter()
        .filter(|(n, _)| opts.queue.as_ref().is_none_or(|w| w == *n))
        .map(|(n, q)| (opts.site.clone(), n.clone(), q.clone()))
        .collect();
    let mut skipped = Vec::new();
    if let Err(why) = &opts.gpu {
        suite.checks.retain(|c| {
            let keep = c.kind == crate::smoke::suite::CheckKind::Static;
            if !keep {
                skipped.push(smoke::CheckResult {
                    name: c.name.clone(),
                    kind: c.kind.name(),
                    status: Status::Skip,
                    detail: format!("no GPU visible: {why}"),
                    seconds: 0.0,
                });
            }
            keep
        });
    }
    let mut report = smoke::run(
        view,
        index,
        &suite,
        &smoke::Options {
            backend: opts.smoke_backend,
            apptainer: opts.smoke_apptainer.clone(),
            allow_no_gpu: true,
            queues,
            gpu: opts.gpu.clone(),
        },
    )?;
    report.skipped += skipped.len();
    report.checks.extend(skipped);
    Ok(report)
}

/// The job description for the site's GPU queue, in xRSL and ADL, when
/// the smoke tests passed. Its image is chosen from the artifacts made, by
/// what their sinks say a job runs (a mounted CVMFS tree first), never
/// from the shape of a path.
fn job_descriptions(
    opts: &PromoteOptions,
    site: &SiteProfile,
    name: &str,
    artifacts: &[Artifact],
    image_command: &crate::jobdesc::work::ImageCommand,
    smoke_ok: bool,
) -> Result<(Vec<Artifact>, Vec<String>)> {
    let mut warnings = Vec::new();
    let queue = match &opts.queue {
        Some(q) => Some(q.clone()),
        None => site.gpu_queues.keys().next().cloned(),
    };
    let runs: Vec<&JobImage> = artifacts
        .iter()
        .filter_map(|a| a.runs_as.as_ref())
        .collect();
    let cvmfs = runs.iter().find_map(|r| match r {
        JobImage::Cvmfs(p) => Some(p.display().to_string()),
        JobImage::Sif(_) => None,
    });
    let sif = runs.iter().find_map(|r| match r {
        JobImage::Sif(p) => Some(p),
        JobImage::Cvmfs(_) => None,
    });
    // (template, image reference)
    let job_image = match (cvmfs, &opts.sif_url, sif) {
        (Some(p), _, _) => Some(("gpu-cvmfs", p)),
        (None, Some(u), Some(_)) => {
            if opts.targets.has("cvmfs") {
                warnings.push(format!("the job uses the SIF from {u}, not the CVMFS tree"));
            }
            Some(("gpu-sif-staged", u.clone()))
        }
        // No URL: `gridship submit` uploads the SIF with the job.
        (None, None, Some(sif)) => {
            let abs = std::path::absolute(sif).map_err(|e| Error::io_path(sif, "resolving", e))?;
            warnings.push(format!(
                "the job uses the SIF, staged: it uploads {} with every job; give --sif-url (where the CE fetches it) or a CVMFS repository (--cvmfs-repo) for many jobs",
                abs.display()
            ));
            Some(("gpu-sif-staged", format!("file://{}", abs.display())))
        }
        (None, _, None) => None,
    };
    if !smoke_ok {
        return Ok((Vec::new(), warnings));
    }
    let (Some(q), Some((tname, image_ref))) = (&queue, job_image) else {
        warnings.push(if queue.is_none() {
            format!("site {} has no gpu_queues: no job description written", opts.site)
        } else if opts.targets.has("cvmfs") {
            "no job description: the CVMFS tree is local and no SIF was made (name a repository with --cvmfs-repo, or add sif to --to)".into()
        } else {
            "no job description: no SIF or CVMFS tree was made (add sif or cvmfs to --to)".into()
        });
        return Ok((Vec::new(), warnings));
    };
    let template = crate::jobdesc::template::Template::load(&opts.templates, tname)?;
    let jobs = crate::jobdesc::for_image(
        site,
        q,
        &image_ref,
        &template,
        &crate::jobdesc::Request {
            gpus: opts.gpus,
            work: opts.work.clone(),
            image_command: image_command.clone(),
        },
    )?;
    let mut made = Vec::new();
    for (format, ext) in [
        (crate::jobdesc::Format::Xrsl, "xrsl"),
        (crate::jobdesc::Format::Adl, "adl"),
    ] {
        let path = opts.out.join(format!("{}.{ext}", name));
        let text = crate::jobdesc::render(&jobs, format);
        crate::fsutil::write_atomic(&path, text.as_bytes(), 0o644)?;
        made.push(Artifact {
            kind: ext.into(),
            path: path.display().to_string(),
            digest: Some(crate::digest::Digest::of_bytes(text.as_bytes()).to_string()),
            bytes: text.len() as u64,
            runs_as: None,
        });
    }
    Ok((made, warnings))
}

/// A name for artifacts: lower case, `[a-z0-9._-]`.
pub fn artifact_name(s: &str) -> String {
    let n: String = s
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let n = n
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    if n.is_empty() { "session".into() } else { n }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_targets() {
        assert_eq!(artifact_name("/My Session_1"), "my-session_1");
        assert_eq!(artifact_name("///"), "session");
        let t = Targets::parse("sif, oci").unwrap();
        assert!(t.has("sif") && t.has("oci") && !t.has("cvmfs"));
        let e = Targets::parse("sif,zip").unwrap_err().to_string();
        assert!(e.contains("--to sif,zip") && e.contains("\"zip\""), "{e}");
        assert!(e.contains("oci, sif, cvmfs, dir, tar"), "{e}");
        assert!(Targets::parse(",").is_err());
    }
}
