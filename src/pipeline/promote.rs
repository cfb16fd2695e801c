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
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::config::search::SearchPath;
use crate::image::Image;
use crate::index::{FsIndex, cache};
use crate::reference::{ImageRef, RegistryRef};
use crate::sink::cvmfs::{self, PublicName, PublishOptions, Repo, RepoConfig};
use crate::site::SiteProfile;
use crate::smoke::{self, Status};
use crate::transform::paths::{PathPattern, PatternSet};
use crate::transform::scan::{self, ScanOptions, ScanStats};
use crate::transform::secrets::{self, ScrubSecrets};
use crate::transform::slim::{self, Policy};
use crate::transform::sshd::{self, StripSshd};
use crate::transform::{RuleReport, overlay::SiteOverlay};
use crate::transport::{self, Context};
use crate::{Error, Result};

/// Which artifacts to make.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Targets {
    pub sif: bool,
    pub cvmfs: bool,
    pub oci: bool,
}

impl Targets {
    pub fn parse(list: &str) -> Result<Targets> {
        let mut t = Targets::default();
        for w in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match w {
                "sif" => t.sif = true,
                "cvmfs" => t.cvmfs = true,
                "oci" => t.oci = true,
                _ => {
                    return Err(Error::BadInput {
                        input: format!("--to {list}"),
                        place: format!("{w:?}: "),
                        reason: "not an artifact kind".into(),
                        hint: Some("use a comma-separated list of sif, cvmfs, oci".into()),
                    });
                }
            }
        }
        if !(t.sif || t.cvmfs || t.oci) {
            return Err(Error::bad_input(
                format!("--to {list}"),
                "names no artifact",
            ));
        }
        Ok(t)
    }
}

/// Where the CVMFS tree goes.
#[derive(Debug, Clone)]
pub struct CvmfsTarget {
    pub repo: RepoConfig,
    /// Default: gridship.local/promoted/NAME:TAG.
    pub name: Option<PublicName>,
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
    pub squashfs: crate::sink::squashfs::SquashfsOptions,
    pub ctx: Context,
}

#[derive(Debug, Clone, Serialize)]
pub struct Artifact {
    pub kind: String,
    pub path: String,
    pub digest: Option<String>,
    pub bytes: u64,
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

/// Stage timing, and each stage's progress (crate::progress).
struct Stages {
    done: Vec<(String, f64)>,
    merged: Vec<(String, u64)>,
    current: Option<(crate::progress::Stage, u64)>,
}

impl Stages {
    fn start(&mut self, name: &str) {
        self.finish();
        self.current = Some((
            crate::progress::stage(name, None),
            crate::index::layers_merged(),
        ));
    }
    fn finish(&mut self) {
        if let Some((stage, merged)) = self.current.take() {
            let name = stage.name().to_string();
            let s = stage.finish();
            self.merged
                .push((name.clone(), crate::index::layers_merged() - merged));
            self.done.push((name, s));
        }
    }
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

pub fn promote(opts: &PromoteOptions) -> Result<PromoteReport> {
    let started = Instant::now();
    let mut stages = Stages {
        done: Vec::new(),
        merged: Vec::new(),
        current: None,
    };
    let mut warnings = Vec::new();
    let site = SiteProfile::load(&opts.sites, &opts.site)?;
    let overlay = SiteOverlay::from_profile(&site)?;
    // Every override is checked before the session is touched.
    let mut policy = Policy::new()?;
    policy.apply_site(&site.chain)?;
    for k in &opts.keep {
        policy.keep(k)?;
    }
    for name in &opts.enable_slim {
        policy.enable(name, &format!("--enable-slim {name}"), "")?;
    }
    let store = opts.ctx.store()?;
    let mut work = WorkRefs {
        store: &store,
        names: Vec::new(),
    };

    // Snapshot: commit + read into the store (the container keeps running).
    stages.start("snapshot");
    let snapshot = transport::open(&opts.source, &opts.ctx)?;
    let (base_layers, source_name) = match &opts.source {
        ImageRef::Container(c) => {
            let info = crate::engine::inspect_container(c)?;
            (
                crate::engine::inspect_image(&info.image_id)?.layers,
                info.name,
            )
        }
        other => (
            snapshot.layers().len().saturating_sub(1),
            other
                .to_string()
                .rsplit(['/', ':'])
                .next()
                .unwrap_or("image")
                .to_string(),
        ),
    };
    let base_layers = base_layers.min(snapshot.layers().len());
    let name = artifact_name(opts.name.as_deref().unwrap_or(&source_name));
    let push_dest = match (&opts.push, &opts.push_prefix) {
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
    };

    // Site overlay: one more layer, env and labels.
    stages.start("site overlay");
    let work_name = format!("gridship-promote/work-{}:{}", std::process::id(), opts.tag);
    work.names.push(work_name.clone());
    let created_rfc = crate::clock::rfc3339_utc(opts.created)?;
    let image = crate::sink::oci::append_layer(
        &snapshot,
        &store,
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
        &work_name,
    )?;
    let overlay_paths = {
        let raw = FsIndex::from_layer(&image, image.layers().len() - 1)?;
        let mut set = PatternSet::default();
        for (k, _, n) in raw.iter() {
            if !k.is_empty() && !n.kind.is_dir() {
                set.push(PathPattern::literal(k));
            }
        }
        set
    };

    // Merge (lower layers from the cache when an earlier promote or publish
    // of the same base merged them).
    stages.start("merge");
    crate::progress::set_total(image.layers().iter().map(|l| l.size).sum());
    let cache_dir = cvmfs::merge_cache_dir(&store);
    let (lower, mut index, cached) = if opts.keep_base {
        let (l, i, c) = cache::from_image_split(&image, &cache_dir, base_layers)?;
        (Some(l), i, c)
    } else {
        let (i, c) = cache::from_image(&image, &cache_dir)?;
        (None, i, c)
    };
    let before = index.content_bytes();

    // Content scan, once, for every rule.
    stages.start("scan");
    let mut config = image.config.clone();
    let scripts = sshd::entry_scripts(&index, &config);
    let scan = scan::scan(
        &index,
        &image,
        &ScanOptions {
            limit: opts.scan_limit,
            keep_content: scripts.iter().map(|(_, id)| *id).collect(),
            ..Default::default()
        },
    )?;
    let script_texts: HashMap<String, Vec<u8>> = scripts
        .iter()
        .filter_map(|(p, id)| scan.contents.get(id).map(|c| (p.clone(), c.clone())))
        .collect();

    // Rules.
    stages.start("rules");
    let recipe_label = config
        .config
        .labels
        .as_ref()
        .and_then(|l| l.get("gridship.recipe"))
        .cloned();
    if let (Some(dir), Some(name)) = (&opts.recipes_dir, recipe_label) {
        // A session from a recipe gridship built: that recipe's protected
        // paths and slim overrides, when this checkout has it.
        match crate::recipe::Recipe::load(dir, &name) {
            Ok(recipe) => policy.apply_recipe(&recipe)?,
            Err(e) => warnings.push(format!(
                "the session's image comes from recipe {name}, whose overrides were not applied: {e}"
            )),
        }
    }
    let strip = StripSshd {
        scripts: &script_texts,
    };
    let scrub = ScrubSecrets {
        findings: &scan.findings,
        policy: &policy.secrets,
    };
    let mut reports = crate::transform::apply_all(&[&strip, &scrub], &mut index, &mut config)?;
    if opts.fail_on_secrets && !reports[1].removed.is_empty() {
        return Err(secrets::refuse(
            &reports[1].removed,
            &opts.source.to_string(),
        ));
    }
    // What the job runs is known now (sshd stripped): refuse a job with
    // nothing to run, or a missing input, before the long work starts.
    let image_command = crate::jobdesc::work::ImageCommand::Config {
        entrypoint: config.config.entrypoint.clone().unwrap_or_default(),
        cmd: config.config.cmd.clone().unwrap_or_default(),
    };
    if !site.gpu_queues.is_empty() {
        crate::jobdesc::work::executable_and_args(opts.work.command.as_ref(), &image_command)?;
        crate::jobdesc::work::input_files(&opts.work.inputs)?;
        crate::jobdesc::work::output_files(&opts.work.outputs)?;
    }
    if let Some(lower) = &lower {
        // Kept base layers still carry what was removed from them.
        for c in reports.iter().flat_map(|r| &r.removed) {
            if c.path.starts_with('/') && lower.lookup(&c.path).is_some() {
                warnings.push(format!(
                    "--keep-base: {} ({}) is removed from the tree but stays in a base layer of the OCI image; the SIF and CVMFS trees do not carry it",
                    c.path, c.reason
                ));
            }
        }
    }
    reports.extend(slim::apply(
        &mut index,
        &config,
        &policy.slim,
        &scan.findings,
        &overlay_paths,
    ));
    if opts.world_readable {
        reports.extend(crate::transform::apply_all(
            &[&crate::transform::readable::WorldReadable],
            &mut index,
            &mut config,
        )?);
    }
    let largest_dirs = slim::largest_dirs(&index, &reports, slim::LARGEST_DIRS);
    let rules = reports;
    let labels = config.config.labels.get_or_insert_with(BTreeMap::new);
    labels.insert("gridship.promoted.from".into(), opts.source.to_string());
    labels.insert("gridship.promoted.site".into(), opts.site.clone());
    labels.insert(
        "org.opencontainers.image.created".into(),
        created_rfc.clone(),
    );
    config.created = Some(created_rfc.clone());
    let after = index.content_bytes();
    stages.finish();

    let mut report = PromoteReport {
        source: opts.source.to_string(),
        site: opts.site.clone(),
        name: format!("{}:{}", name, opts.tag),
        dry_run: opts.dry_run,
        snapshot_digest: snapshot.manifest_desc.digest.to_string(),
        layers: snapshot.layers().len(),
        base_layers,
        merge_cached_layers: cached,
        scan: scan.stats,
        rules,
        sizes: Sizes {
            before,
            after,
            removed: before.saturating_sub(after),
        },
        largest_dirs,
        artifacts: Vec::new(),
        smoke: None,
        warnings: Vec::new(),
        stages: Vec::new(),
        layers_merged: Vec::new(),
        seconds: 0.0,
        ok: true,
    };
    if opts.dry_run {
        report.warnings = warnings;
        report.stages = stages.done;
        report.layers_merged = stages.merged;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| Error::io_path(&opts.out, "creating the output directory", e))?;

    // The promoted image as the sinks see it: the transformed tree over
    // the working image's layers, with the promoted config.
    let mut view = image.clone();
    view.config = config.clone();
    view.config_raw = serde_json::to_vec(&config).expect("config serializes");
    view.name = format!("promoted/{}:{}", name, opts.tag);

    let mut promoted: Option<Image> = None;
    if opts.targets.oci || opts.targets.cvmfs {
        stages.start(if opts.targets.oci {
            "oci image"
        } else {
            "image digests"
        });
        let store_name = format!("promoted/{}:{}", name, opts.tag);
        let keep = if opts.keep_base { base_layers } else { 0 };
        let diff;
        let layer_index = match &lower {
            Some(l) => {
                diff = index.diff_from(l);
                &diff
            }
            None => &index,
        };
        let history = serde_json::json!({
            "created": created_rfc,
            "created_by": format!(
                "gridship promote {} --site {}{}",
                opts.source,
                opts.site,
                if opts.keep_base { " --keep-base" } else { "" }
            ),
        });
        // The CVMFS metadata names the flattened image by its digests:
        // without --to oci its layer is hashed, none of it kept.
        let img = crate::sink::oci::write_image(
            &image,
            keep,
            &store,
            config.clone(),
            history,
            |w| {
                crate::sink::tar::write_tar(
                    layer_index,
                    &image,
                    w,
                    &crate::sink::tar::TarOptions::default(),
                )
                .map(|_| ())
            },
            &store_name,
            if opts.targets.oci {
                crate::sink::oci::WriteMode::Named
            } else {
                crate::sink::oci::WriteMode::DigestsOnly
            },
        )?;
        if opts.targets.oci {
            report.artifacts.push(Artifact {
                kind: "oci".into(),
                path: format!("{}:{}", store.root().display(), store_name),
                digest: Some(img.manifest_desc.digest.to_string()),
                bytes: img.layers().iter().map(|l| l.size).sum(),
            });
            if let Some(dest) = &push_dest {
                stages.start("push");
                transport::copy(
                    &ImageRef::Store(store_name.clone()),
                    &ImageRef::Registry(dest.clone()),
                    &opts.ctx,
                )?;
                report.artifacts.push(Artifact {
                    kind: "oci-pushed".into(),
                    path: format!("docker://{dest}"),
                    digest: Some(img.manifest_desc.digest.to_string()),
                    bytes: 0,
                });
            }
        }
        promoted = Some(img);
    }

    let mut sif_path = None;
    if opts.targets.sif {
        stages.start("sif");
        let dest = opts.out.join(format!("{}.sif", name));
        let build = crate::sink::sif::SifBuild {
            uri: format!("docker://promoted/{}:{}", name, opts.tag),
            base: None,
            created: opts.created,
            reproducible: opts.reproducible,
            squashfs: opts.squashfs.clone(),
        };
        let r = crate::sink::sif::build_sif(&view, index.clone(), &dest, &build)?;
        report.rules.push(r.transform);
        report.artifacts.push(Artifact {
            kind: "sif".into(),
            path: dest.display().to_string(),
            digest: Some(crate::digest::Digest::of_file(&dest)?.to_string()),
            bytes: std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0),
        });
        sif_path = Some(dest);
    }

    let mut cvmfs_path = None;
    if opts.targets.cvmfs {
        stages.start("cvmfs");
        let img = promoted.as_ref().expect("written for cvmfs");
        let repo_config = match &opts.cvmfs {
            Some(t) => t.repo.clone(),
            None => RepoConfig::new(
                "promoted.gridship.local",
                cvmfs::BackendKind::Dir,
                Some(opts.out.join("cvmfs")),
                None,
            )?,
        };
        let public = match opts.cvmfs.as_ref().and_then(|t| t.name.clone()) {
            Some(n) => n,
            None => PublicName::parse(&format!("gridship.local/promoted/{name}:{}", opts.tag))?,
        };
        if repo_config.backend == cvmfs::BackendKind::Dir {
            std::fs::create_dir_all(&repo_config.root)
                .map_err(|e| Error::io_path(&repo_config.root, "creating", e))?;
        }
        let repo_name = repo_config.name.clone();
        let mut repo = Repo::open(repo_config)?;
        // The tree merged and transformed above, under the written image's
        // digests: the session's layers are not read and merged again.
        let r = cvmfs::publish_prepared(
            &mut repo,
            &public,
            img,
            &cvmfs::Prepared {
                index: &index,
                data: &image,
            },
            &PublishOptions {
                layers: false,
                created: opts.created,
                reuse: true,
                store: Some(store.clone()),
                // Already applied to the promoted tree, as --no-world-readable says.
                world_readable: false,
                podman: false,
            },
        )?;
        let tree = repo.root().join(&r.flat);
        report.artifacts.push(Artifact {
            kind: "cvmfs".into(),
            path: tree.display().to_string(),
            digest: Some(r.config_digest.clone()),
            bytes: report.sizes.after,
        });
        // Only a repository the user, config.yaml or the site named is one
        // worker nodes mount; the local tree under --out is not.
        if opts.cvmfs.is_some() {
            let public = Path::new("/cvmfs")
                .join(&repo_name)
                .join(public.link_path());
            report.artifacts.push(Artifact {
                kind: "cvmfs-link".into(),
                path: public.display().to_string(),
                digest: None,
                bytes: 0,
            });
            cvmfs_path = Some(public);
        } else {
            warnings.push(format!(
                "the CVMFS tree under {} is local: no repository was named (--cvmfs-repo, cvmfs.repo of config.yaml, or cvmfs.repo of site {}), so no worker node mounts it and the job description does not use it",
                repo.root().display(),
                opts.site
            ));
        }
    }

    // GPU smoke tests: the static checks always; the run checks when a GPU
    // is visible (skipped, never passed, when none is).
    stages.start("smoke");
    let mut suite = match &opts.smoke_suite {
        Some(s) => crate::smoke::suite::Suite::find(s, &opts.suites)?,
        None => {
            crate::smoke::suite::for_image(&view, opts.recipes_dir.as_deref(), &opts.suites)?.suite
        }
    };
    let mut queues = Vec::new();
    for (n, q) in &site.gpu_queues {
        if opts.queue.as_ref().is_none_or(|w| w == n) {
            queues.push((opts.site.clone(), n.clone(), q.clone()));
        }
    }
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
    let mut sr = smoke::run(
        &view,
        &index,
        &suite,
        &smoke::Options {
            backend: opts.smoke_backend,
            apptainer: opts.smoke_apptainer.clone(),
            allow_no_gpu: true,
            queues,
            gpu: opts.gpu.clone(),
        },
    )?;
    sr.skipped += skipped.len();
    sr.checks.extend(skipped);
    let smoke_ok = sr.ok();
    if !smoke_ok {
        warnings.push(format!(
            "smoke tests failed ({} of {}): no job description written",
            sr.failed,
            sr.checks.len()
        ));
    }
    report.smoke = Some(sr);

    // Job description for the site's GPU queue.
    stages.start("jobdesc");
    let queue = match &opts.queue {
        Some(q) => Some(q.clone()),
        None => site.gpu_queues.keys().next().cloned(),
    };
    let job_image = match (&cvmfs_path, &opts.sif_url, &sif_path) {
        (Some(p), _, _) => Some(JobImage::Cvmfs(p.display().to_string())),
        (None, Some(u), Some(_)) => Some(JobImage::SifUrl(u.clone())),
        // No URL: `gridship submit` uploads the SIF with the job.
        (None, None, Some(sif)) => Some(JobImage::SifStaged(
            std::path::absolute(sif).map_err(|e| Error::io_path(sif, "resolving", e))?,
        )),
        _ => None,
    };
    match &job_image {
        Some(JobImage::SifStaged(abs)) => warnings.push(format!(
            "the job uses the SIF, staged: it uploads {} with every job; give --sif-url (where the CE fetches it) or a CVMFS repository (--cvmfs-repo) for many jobs",
            abs.display()
        )),
        Some(JobImage::SifUrl(u)) if opts.targets.cvmfs => warnings.push(format!(
            "the job uses the SIF from {u}, not the CVMFS tree"
        )),
        _ => {}
    }
    match (smoke_ok, queue, job_image) {
        (false, _, _) => report.ok = false,
        (true, None, _) => warnings.push(format!(
            "site {} has no gpu_queues: no job description written",
            opts.site
        )),
        (true, Some(_), None) => warnings.push(if opts.targets.cvmfs {
            "no job description: the CVMFS tree is local and no SIF was made (name a repository with --cvmfs-repo, or add sif to --to)".into()
        } else {
            "no job description: no SIF or CVMFS tree was made (add sif or cvmfs to --to)".into()
        }),
        (true, Some(q), Some(job_image)) => {
            let (tname, image_ref) = job_image.template_and_ref();
            let template = crate::jobdesc::template::Template::load(&opts.templates, tname)?;
            let jobs = crate::jobdesc::for_image(
                &site,
                &q,
                &image_ref,
                &template,
                &crate::jobdesc::Request {
                    gpus: opts.gpus,
                    work: opts.work.clone(),
                    image_command: image_command.clone(),
                },
            )?;
            for (format, ext) in [
                (crate::jobdesc::Format::Xrsl, "xrsl"),
                (crate::jobdesc::Format::Adl, "adl"),
            ] {
                let path = opts.out.join(format!("{}.{ext}", name));
                let text = crate::jobdesc::render(&jobs, format);
                crate::fsutil::write_atomic(&path, text.as_bytes(), 0o644)?;
                report.artifacts.push(Artifact {
                    kind: ext.into(),
                    path: path.display().to_string(),
                    digest: Some(crate::digest::Digest::of_bytes(text.as_bytes()).to_string()),
                    bytes: text.len() as u64,
                });
            }
        }
    }
    stages.finish();
    report.warnings = warnings;
    report.stages = stages.done;
    report.layers_merged = stages.merged;
    report.seconds = started.elapsed().as_secs_f64();
    let json = serde_json::to_vec_pretty(&report).expect("report serializes");
    crate::fsutil::write_atomic(
        &opts.out.join(format!("{}.promote.json", name)),
        &json,
        0o644,
    )?;
    drop(work);
    Ok(report)
}

/// What the job description runs: chosen from the artifacts made, never
/// from the shape of a path.
enum JobImage {
    /// A tree in a repository worker nodes mount (/cvmfs/REPO/...).
    Cvmfs(String),
    /// A SIF the CE fetches from a URL.
    SifUrl(String),
    /// A SIF uploaded with every job.
    SifStaged(PathBuf),
}

impl JobImage {
    /// The job template's name and the image reference it is given.
    fn template_and_ref(self) -> (&'static str, String) {
        match self {
            JobImage::Cvmfs(p) => ("gpu-cvmfs", p),
            JobImage::SifUrl(u) => ("gpu-sif-staged", u),
            JobImage::SifStaged(p) => ("gpu-sif-staged", format!("file://{}", p.display())),
        }
    }
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
        assert!(t.sif && t.oci && !t.cvmfs);
        let e = Targets::parse("sif,tar").unwrap_err().to_string();
        assert!(e.contains("--to sif,tar") && e.contains("\"tar\""), "{e}");
        assert!(Targets::parse(",").is_err());
    }
}
