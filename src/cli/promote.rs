//! `gridship promote`: a live session to grid-ready artifacts.

use std::path::PathBuf;

use clap::Args;

use super::build::ProjectDirs;
use super::cvmfs::{CvmfsRepoArgs, RepoOptionNames};
use super::image::{AccessOpts, human_bytes};
use super::{GlobalOpts, print_json};
use crate::Error;
use crate::encode::squashfs::{Compression, SquashfsOptions};
use crate::pipeline::promote::{CvmfsTarget, PromoteOptions, PromoteReport, Targets, promote};
use crate::reference::{ImageRef, RegistryRef, parse_registry};
use crate::sink::cvmfs::PublicName;

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The session: a container name or id (running or stopped), or any
    /// image reference (docker://..., oci:DIR:TAG, ...). Left out inside a
    /// session started by `gridship serve`: this session, through the
    /// service.
    #[arg(value_name = "CONTAINER", value_parser = parse_source)]
    pub source: Option<ImageRef>,
    /// What the promotion makes; the options a session's user may also give
    /// through `gridship serve`.
    #[command(flatten)]
    pub job: PromoteJobArgs,
    /// Where the SIF, the job descriptions, the report and (by default)
    /// the CVMFS tree go. Through the service: ~/gridship/TAG.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Push the OCI image to this registry reference (with --to oci).
    /// Default with --to oci: push: of config.yaml + /NAME:TAG.
    #[arg(long, value_name = "REG/REPO:TAG", value_parser = parse_push)]
    pub push: Option<RegistryRef>,
    #[command(flatten)]
    pub cvmfs: CvmfsRepoArgs<PromoteCvmfsNames>,
    /// Public name in the repository (default gridship.local/promoted/NAME:TAG).
    #[arg(long, value_name = "REG/REPO:TAG")]
    pub cvmfs_name: Option<String>,
    // How smoke run checks execute the image (they run when a GPU is visible).
    #[command(flatten)]
    pub runtime: super::smoke::RuntimeArgs,
    #[command(flatten)]
    pub dirs: ProjectDirs,
    #[command(flatten)]
    pub templates: super::TemplatesOpt,
    #[command(flatten)]
    pub suites: super::SuitesOpt,
    #[command(flatten)]
    pub access: AccessOpts,
    #[command(flatten)]
    pub service: super::serve::ServiceArgs,
}

/// The options of a promotion that name no host path: what a session's
/// user may give through `gridship serve`, which parses them with these
/// same definitions and validators.
#[derive(Debug, Clone, Args)]
pub struct PromoteJobArgs {
    /// The site (`gridship sites` lists them): overlay, slim and secrets
    /// overrides, GPU queues. Default: site: of config.yaml.
    #[arg(long)]
    pub site: Option<String>,
    /// Artifacts to make (comma-separated): sif, cvmfs, oci (the store, --push), dir
    /// (OUT/NAME, the tree unpacked), tar (OUT/NAME.tar).
    #[arg(long, default_value = "sif,cvmfs", value_parser = parse_targets)]
    pub to: Targets,
    /// The site's GPU queue for the job description and the CUDA check
    /// (default: queue: of config.yaml, else the site's first).
    #[arg(long, value_name = "QUEUE")]
    pub queue: Option<String>,
    /// Artifact name (default: the container's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Artifact tag (default: the UTC time, YYYYMMDDTHHMMSSZ).
    #[arg(long)]
    pub tag: Option<String>,
    /// OCI output: keep the session's base image layers and add one change
    /// layer, instead of one flattened layer.
    #[arg(long)]
    pub keep_base: bool,
    /// Refuse to publish when a secret is found (nothing is written),
    /// instead of removing it.
    #[arg(long)]
    pub fail_on_secrets: bool,
    /// Report what would be removed and made; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Never slim paths matching PATTERN (e.g. '/usr/share/doc/mypkg/**'); repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub keep: Vec<String>,
    /// Turn on an opt-in slim rule: huggingface-cache, torch-hub (models
    /// a job may need; off, they are only reported with their sizes),
    /// julia-compiled (~/.julia/compiled), static-archives (*.a), headers
    /// (for jobs that compile nothing at run time), foreign-gpu-backends
    /// (triton's AMD backend, JAX ROCm plugins); repeatable.
    #[arg(long, value_name = "RULE")]
    pub enable_slim: Vec<String>,
    /// Leave modes as the session had them, instead of giving group and
    /// others the owner's read and execute/search bits (the world-readable
    /// rule; grid jobs run as pool accounts, not as the session's user).
    #[arg(long)]
    pub no_world_readable: bool,
    /// Bytes of each file the secret scan reads.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub scan_limit: usize,
    /// Where the CE fetches the SIF, for a SIF job description.
    #[arg(long, value_name = "URL")]
    pub sif_url: Option<String>,
    /// Smoke-test suite: a name (`gridship suites`) or a YAML file
    /// (default: the session's recipe's own suite, else gpu-basic).
    #[arg(long, value_name = "NAME|FILE")]
    pub suite: Option<String>,
    /// What the job description runs and brings back.
    #[command(flatten)]
    pub work: super::arc::WorkArgs,
}

/// promote's names for the CVMFS repository options, `cvmfs-` before
/// each: `--backend` here is the smoke runner's.
#[derive(Debug, Clone)]
pub struct PromoteCvmfsNames;

impl RepoOptionNames for PromoteCvmfsNames {
    const REPO: &'static str = "cvmfs-repo";
    const REPO_VALUE: &'static str = "NAME";
    const REPO_HELP: &'static str = "CVMFS repository to publish into (default: cvmfs.repo of \
        config.yaml, else a directory tree under --out); with --cvmfs-backend and --cvmfs-root";
    const ROOT: &'static str = "cvmfs-root";
    const ROOT_HELP: Option<&'static str> = None;
    const BACKEND: &'static str = "cvmfs-backend";
    const BACKEND_VALUE: &'static str = "CVMFS_BACKEND";
    const BACKEND_HELP: &'static str = "dir, cvmfs-server or ingest (see `gridship cvmfs publish`; \
        default: cvmfs.backend of config.yaml, else dir)";
}

fn parse_source(s: &str) -> std::result::Result<ImageRef, String> {
    const TRANSPORTS: &[&str] = &[
        "docker://",
        "docker-daemon:",
        "container:",
        "oci:",
        "oci-archive:",
        "docker-archive:",
        "store:",
    ];
    if TRANSPORTS.iter().any(|t| s.starts_with(t)) {
        super::image::parse_ref(s)
    } else if s.is_empty() {
        Err("name a container".into())
    } else {
        Ok(ImageRef::Container(s.to_string()))
    }
}

fn parse_targets(s: &str) -> std::result::Result<Targets, String> {
    Targets::parse(s).map_err(|e| e.to_string())
}

fn parse_push(s: &str) -> std::result::Result<RegistryRef, String> {
    parse_registry(s.strip_prefix("docker://").unwrap_or(s))
}

pub fn run(global: &GlobalOpts, a: &PromoteArgs) -> anyhow::Result<()> {
    // No container, or a service named: promote through `gridship serve`.
    // Inside a session the service started, a named container is asked of
    // the service too (which answers only for this session).
    let in_session = crate::serve::client::session_socket().is_some();
    let source = match (&a.source, &a.service.service) {
        (Some(ImageRef::Container(_)), None) if in_session => {
            return super::serve::promote_remote(global, a);
        }
        (Some(s), None) => s.clone(),
        _ => return super::serve::promote_remote(global, a),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let epoch = super::sif::source_date_epoch()?;
    let created = epoch.unwrap_or(now);
    let tag = match &a.job.tag {
        Some(t) => t.clone(),
        None => crate::clock::compact_stamp(created)?,
    };
    a.runtime.check()?;
    if a.push.is_some() && !a.job.to.has("oci") {
        return Err(Error::bad_input("--push", "needs oci in --to").into());
    }
    let d = super::defaults()?;
    let site = super::require_site(a.job.site.as_deref())?;
    let queue = super::or_config(a.job.queue.as_deref(), &d.queue);
    // A push prefix from config.yaml: PREFIX/NAME:TAG, when an OCI image is made.
    let push_prefix = match (&a.push, &d.push) {
        (None, Some(prefix)) if a.job.to.has("oci") => Some(prefix.value.clone()),
        _ => None,
    };
    // The repository: --cvmfs-repo, else config.yaml's, else the site's own
    // when this machine can publish into it (a server backend, or a root
    // for the dir backend); without one the tree stays local and the job
    // uses the SIF (the pipeline warns).
    let cvmfs_repo = a.cvmfs.resolve(None, |publishable| {
        crate::site::SiteProfile::load(&a.dirs.overlays.search(), &site)
            .ok()
            .and_then(|p| p.cvmfs)
            .map(|c| c.repo)
            .filter(|_| publishable)
    })?;
    let cvmfs = match cvmfs_repo {
        None => None,
        Some(repo) => Some(CvmfsTarget {
            repo,
            name: a.cvmfs_name.as_deref().map(PublicName::parse).transpose()?,
        }),
    };
    let mut squashfs = SquashfsOptions::new(Compression::parse("gzip", None)?);
    if epoch.is_some() {
        let t = created.clamp(0, u32::MAX as i64) as u32;
        squashfs.mkfs_time = t;
        squashfs.clamp_mtime = Some(t);
    }
    let mut ctx = a.access.context(global);
    ctx.pause_containers = a.access.pause;
    let opts = PromoteOptions {
        source,
        site,
        sites: a.dirs.overlays.search(),
        recipes_dir: Some(
            a.dirs
                .recipes
                .clone()
                .unwrap_or_else(crate::recipe::default_recipes_dir),
        ),
        queue,
        targets: a.job.to.clone(),
        out: a.out.clone().unwrap_or_else(|| PathBuf::from("promoted")),
        name: a.job.name.clone(),
        tag,
        keep_base: a.job.keep_base,
        fail_on_secrets: a.job.fail_on_secrets,
        dry_run: a.job.dry_run,
        keep: a.job.keep.clone(),
        enable_slim: a.job.enable_slim.clone(),
        scan_limit: a.job.scan_limit,
        world_readable: !a.job.no_world_readable,
        cvmfs,
        push: a.push.clone(),
        push_prefix,
        sif_url: a.job.sif_url.clone(),
        templates: a.templates.search(),
        work: a.job.work.work(),
        gpus: a.job.work.gpus,
        smoke_suite: a.job.suite.clone(),
        suites: a.suites.search(),
        smoke_backend: a.runtime.backend,
        smoke_apptainer: a.runtime.apptainer.clone(),
        gpu: crate::smoke::runtime::gpu_visible(),
        created,
        reproducible: epoch.is_some(),
        squashfs,
        ctx,
    };
    let report = promote(&opts)?;
    if global.json {
        print_json(&report)?;
    } else if !global.quiet {
        print!("{}", human(&report));
    }
    if !report.ok {
        return Err(anyhow::Error::new(Error::Other(
            "promote finished with failures (see the smoke tests above)".into(),
        )));
    }
    Ok(())
}

/// Changes (in path order) grouped under the topmost changed path: each
/// with how many changes below it.
fn changes_by_tree(
    changes: &[crate::transform::Change],
) -> Vec<(&crate::transform::Change, usize)> {
    let mut groups: Vec<(&crate::transform::Change, usize)> = Vec::new();
    for c in changes {
        match groups.last_mut() {
            Some((top, n))
                if c.path
                    .strip_prefix(top.path.as_str())
                    .is_some_and(|r| r.starts_with('/')) =>
            {
                *n += 1
            }
            _ => groups.push((c, 0)),
        }
    }
    groups
}

/// The final report for a terminal.
pub fn human(r: &PromoteReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} {} for site {} as {}",
        if r.dry_run {
            "dry run: would promote"
        } else {
            "promoted"
        },
        r.source,
        r.site,
        r.name
    );
    let _ = writeln!(
        s,
        "  snapshot {} ({} layers, {} base, {} from the merge cache); scanned {} files, {} in {:.1}s",
        &r.snapshot_digest[..r.snapshot_digest.len().min(19)],
        r.layers,
        r.base_layers,
        r.merge_cached_layers,
        r.scan.files,
        human_bytes(r.scan.bytes),
        r.scan.seconds
    );
    let _ = writeln!(s, "rules:");
    for rule in &r.rules {
        let mut status = format!(
            "{} removed ({}), {} changed, {} added",
            rule.removed.len(),
            human_bytes(rule.bytes_removed()),
            rule.changed.len(),
            rule.added.len()
        );
        if !rule.kept.is_empty() {
            status = format!(
                "{status}, {} kept ({})",
                rule.kept.len(),
                human_bytes(rule.bytes_kept())
            );
        }
        if let Some(w) = rule.warnings.first() {
            status = format!("{w}: {status}");
        }
        let _ = writeln!(s, "  {:<22} {status}", rule.rule);
        let user_install = rule
            .rule
            .strip_prefix("slim:")
            .is_some_and(|n| crate::transform::slim::USER_INSTALL_RULES.contains(&n));
        if user_install {
            for (sign, list) in [("-", &rule.removed), ("=", &rule.kept)] {
                for c in list.iter().take(10) {
                    let _ = writeln!(
                        s,
                        "      {sign} {} ({}): {}",
                        c.path,
                        human_bytes(c.bytes),
                        c.reason
                    );
                }
                if list.len() > 10 {
                    let _ = writeln!(s, "      ... {} more (see --json)", list.len() - 10);
                }
            }
        } else if rule.rule.starts_with("slim:") {
            for c in rule.kept.iter().take(5) {
                let _ = writeln!(
                    s,
                    "      = {} ({}): {}",
                    c.path,
                    human_bytes(c.bytes),
                    c.reason
                );
            }
            if rule.kept.len() > 5 {
                let _ = writeln!(
                    s,
                    "      ... {} more kept (see --json)",
                    rule.kept.len() - 5
                );
            }
        }
        if rule.rule == "strip-sshd" || rule.rule == "scrub-secrets" {
            for c in rule.removed.iter().take(25) {
                let _ = writeln!(s, "      - {} ({})", c.path, c.reason);
            }
            if rule.removed.len() > 25 {
                let _ = writeln!(s, "      ... {} more (see --json)", rule.removed.len() - 25);
            }
            for c in &rule.changed {
                let _ = writeln!(s, "      ~ {}: {}", c.path, c.reason);
            }
        }
        if rule.rule == "world-readable" {
            let groups = changes_by_tree(&rule.changed);
            for (c, below) in groups.iter().take(10) {
                let more = if *below > 0 {
                    format!(" (and {below} below)")
                } else {
                    String::new()
                };
                let _ = writeln!(s, "      ~ {}: {}{more}", c.path, c.reason);
            }
            if groups.len() > 10 {
                let _ = writeln!(s, "      ... {} more (see --json)", groups.len() - 10);
            }
        }
    }
    let _ = writeln!(
        s,
        "size: {} -> {} ({} removed)",
        human_bytes(r.sizes.before),
        human_bytes(r.sizes.after),
        human_bytes(r.sizes.removed)
    );
    if !r.largest_dirs.is_empty() {
        let _ = writeln!(
            s,
            "largest directories left (bytes of the files below each, hardlinks once; a directory shown as its subdirectory holding half or more):"
        );
        for d in &r.largest_dirs {
            let by = match (&d.rule, &d.kept_because) {
                (Some(rule), Some(why)) => format!("  [{rule}: {why}]"),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "  {:>10}  {} ({} file{}){by}",
                human_bytes(d.bytes),
                d.path,
                d.files,
                if d.files == 1 { "" } else { "s" }
            );
        }
    }
    if !r.artifacts.is_empty() {
        let _ = writeln!(s, "artifacts:");
        for a in &r.artifacts {
            let _ = writeln!(
                s,
                "  {:<11} {}{}",
                a.kind,
                a.path,
                a.digest
                    .as_ref()
                    .map(|d| format!("  {d}"))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(sm) = &r.smoke {
        let _ = writeln!(
            s,
            "smoke ({}): {} passed, {} failed, {} skipped",
            sm.suite, sm.passed, sm.failed, sm.skipped
        );
        for c in &sm.checks {
            let _ = writeln!(s, "  {:<5} {:<24} {}", c.status.name(), c.name, c.detail);
        }
    }
    for w in &r.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    let _ = writeln!(
        s,
        "{:.1}s: {}",
        r.seconds,
        r.stages
            .iter()
            .map(|(n, t)| format!("{n} {t:.1}s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    s
}

#[cfg(test)]
mod tests {
    use crate::transform::Change;

    #[test]
    fn changes_group_under_the_topmost_changed_path() {
        let c = |p: &str| Change {
            path: p.into(),
            bytes: 0,
            reason: "mode 0700 -> 0755".into(),
        };
        let changes = [
            c("/home/bob"),
            c("/home/bob/a"),
            c("/home/bob/a/b"),
            c("/home/bobby"),
            c("/root"),
            c("/srv/x"),
            c("/srv/x/y"),
        ];
        let got: Vec<(&str, usize)> = super::changes_by_tree(&changes)
            .into_iter()
            .map(|(c, n)| (c.path.as_str(), n))
            .collect();
        assert_eq!(
            got,
            [
                ("/home/bob", 2),
                ("/home/bobby", 0),
                ("/root", 0),
                ("/srv/x", 1)
            ]
        );
    }
}
