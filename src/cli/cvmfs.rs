//! `cvmfs publish | gc | ls`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use super::image::{AccessOpts, human_bytes};
use super::{GlobalOpts, print_json};
use crate::pipeline::publish::PublishPlan;
use crate::reference::{ImageRef, RegistryRef};
use crate::sink::cvmfs::{self, BackendKind, PublicName, Repo, RepoConfig};
use crate::{Error, Result};

#[derive(Debug, Subcommand)]
pub enum CvmfsCommand {
    /// Publish images as unpacked trees (DUCC layout) into a repository.
    Publish(Box<PublishArgs>),
    /// Remove trees and layers no longer published, after a grace period.
    Gc(GcArgs),
    /// List the published images and whether each is complete.
    Ls(RepoArgs),
    /// Write an OCI runtime bundle (config.json) that runs a published
    /// image's tree with runc or crun, the tree read-only as its root.
    Bundle(Box<BundleArgs>),
}

/// The names one command gives [`CvmfsRepoArgs`]' options: `cvmfs`'s
/// own (`--repo`), or prefixed where they sit among other options
/// (`promote --cvmfs-repo`, whose `--backend` is the smoke runner's).
pub trait RepoOptionNames: Clone + std::fmt::Debug {
    const REPO: &'static str;
    const REPO_VALUE: &'static str;
    const REPO_HELP: &'static str;
    const ROOT: &'static str;
    const ROOT_HELP: Option<&'static str>;
    const BACKEND: &'static str;
    const BACKEND_VALUE: &'static str;
    const BACKEND_HELP: &'static str;
}

/// Which CVMFS repository and how to write it: `cvmfs` and `promote`
/// share it, under the names `N` gives.
#[derive(Debug, Clone, Args)]
pub struct CvmfsRepoArgs<N: RepoOptionNames> {
    #[arg(id = N::REPO, long = N::REPO, value_name = N::REPO_VALUE, help = N::REPO_HELP)]
    pub name: Option<String>,
    #[arg(id = N::ROOT, long = N::ROOT, value_name = "DIR", help = N::ROOT_HELP)]
    pub root: Option<PathBuf>,
    #[arg(
        id = N::BACKEND,
        long = N::BACKEND,
        value_name = N::BACKEND_VALUE,
        help = N::BACKEND_HELP,
        value_parser = clap::value_parser!(BackendKind)
    )]
    pub backend: Option<BackendKind>,
    /// Where repositories are mounted (cvmfs-server and ingest backends).
    #[arg(long, value_name = "DIR")]
    pub cvmfs_mount: Option<PathBuf>,
    #[arg(skip)]
    names: std::marker::PhantomData<N>,
}

impl<N: RepoOptionNames> CvmfsRepoArgs<N> {
    /// The repository to write, and how. Name, backend and root: the
    /// option, else config.yaml's cvmfs.* (its repo only when `named`, a
    /// wishlist's, names none), else dir and MOUNT/REPO. A name still
    /// missing is `named`, else `fallback`'s, which is told whether this
    /// machine can publish (a server backend, or a root for dir). `None`:
    /// no repository named at all.
    pub fn resolve(
        &self,
        named: Option<&str>,
        fallback: impl FnOnce(bool) -> Option<String>,
    ) -> Result<Option<RepoConfig>> {
        let d = super::defaults()?;
        let given = self.name.clone().or_else(|| {
            named
                .is_none()
                .then(|| d.cvmfs_repo.as_ref().map(|s| s.value.clone()))
                .flatten()
        });
        let backend = d.cvmfs_backend(self.backend.as_ref())?;
        let root = d.cvmfs_root(self.root.as_deref());
        let name = match (given, named) {
            (Some(a), Some(b)) if a != b => {
                return Err(Error::bad_input(
                    format!("--{} {a}", N::REPO),
                    format!("the wishlist names cvmfs_repo {b:?}"),
                ));
            }
            (Some(a), _) => a,
            (None, Some(b)) => b.to_string(),
            (None, None) => {
                let publishable = backend != BackendKind::Dir || root.is_some();
                match fallback(publishable) {
                    Some(name) => name,
                    None => return Ok(None),
                }
            }
        };
        RepoConfig::new(&name, backend, root, self.cvmfs_mount.clone()).map(Some)
    }
}

/// `gridship cvmfs ...`'s names: `--repo`, `--root`, `--backend`.
#[derive(Debug, Clone)]
pub struct CvmfsNames;

impl RepoOptionNames for CvmfsNames {
    const REPO: &'static str = "repo";
    const REPO_VALUE: &'static str = "REPO";
    const REPO_HELP: &'static str = "Repository name, e.g. unpacked.example.org (or from the wishlist; \
        default: cvmfs.repo of config.yaml)";
    const ROOT: &'static str = "root";
    const ROOT_HELP: Option<&'static str> = Some(
        "The repository's tree (required for --backend dir; default cvmfs.root of config.yaml, \
         else MOUNT/REPO)",
    );
    const BACKEND: &'static str = "backend";
    const BACKEND_VALUE: &'static str = "BACKEND";
    const BACKEND_HELP: &'static str = "dir (a plain directory), cvmfs-server (transaction/publish on a \
        publisher), ingest (cvmfs_server ingest of tar streams). Default: cvmfs.backend of \
        config.yaml, else dir";
}

/// Which repository and how to write it; flattened into every cvmfs command.
#[derive(Debug, Clone, Args)]
pub struct RepoArgs {
    #[command(flatten)]
    pub repo: CvmfsRepoArgs<CvmfsNames>,
    /// How long to wait for another publisher: its image (dir backend),
    /// the repository (gc; server backends) or an open transaction.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub lock_timeout: u64,
}

impl RepoArgs {
    fn open(&self, wishlist: Option<&str>) -> Result<Repo> {
        Repo::open(self.config(wishlist)?)
    }

    fn config(&self, wishlist: Option<&str>) -> Result<RepoConfig> {
        let mut config = self
            .repo
            .resolve(wishlist, |_| None)?
            .ok_or_else(|| Error::BadInput {
                input: "gridship cvmfs".into(),
                place: String::new(),
                reason: "no repository given".into(),
                hint: Some("add --repo NAME (or cvmfs_repo in the wishlist)".into()),
            })?;
        config.lock_timeout = std::time::Duration::from_secs(self.lock_timeout);
        Ok(config)
    }
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Images to publish (docker://REG/REPO:TAG; other transports need --name).
    pub images: Vec<String>,
    /// A DUCC wishlist (version 1 YAML); `*` in tags matches the registry's tags.
    #[arg(long, value_name = "FILE")]
    pub wishlist: Option<PathBuf>,
    /// Public name REG/REPO:TAG for one image from a non-registry transport.
    #[arg(long, value_name = "REG/REPO:TAG")]
    pub name: Option<String>,
    /// Also write each layer under .layers/xx/DIGEST/layerfs.
    #[arg(long)]
    pub layers: bool,
    /// Also enter each image in the podman additional image store
    /// podmanStore/ (podman --storage-opt additionalimagestore=REPO/podmanStore
    /// run NAME runs the published tree, nothing pulled). Wishlist key:
    /// `podman: true`.
    #[arg(long)]
    pub podman: bool,
    /// For a multi-arch image (an index), publish only this platform
    /// (amd64, arm64/v8, linux/arm/v7; repeat for several). Default: every
    /// Linux platform of the index. Wishlist key: `platforms: [...]`.
    #[arg(long = "platform", value_name = "PLATFORM")]
    pub platforms: Vec<String>,
    /// Write every file anew instead of hardlinking unchanged ones from an
    /// earlier tree (dir backend).
    #[arg(long)]
    pub no_reuse: bool,
    #[command(flatten)]
    pub readable: super::sif::WorldReadableArg,
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub access: AccessOpts,
}

/// DUCC's wishlist, version 1.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wishlist {
    version: u32,
    #[serde(default)]
    #[allow(dead_code)] // the account DUCC pushes thin images as; gridship makes none
    user: Option<String>,
    cvmfs_repo: String,
    #[serde(default)]
    #[allow(dead_code)] // thin-image names; gridship makes no thin images
    output_format: Option<String>,
    input: Vec<String>,
    /// gridship's: also write the podman store (as --podman).
    #[serde(default)]
    podman: bool,
    /// gridship's: the platforms of multi-arch inputs (as --platform).
    #[serde(default)]
    platforms: Vec<String>,
}

/// One wishlist input: `[https://|http://]REG/REPO:TAG` (tags may hold `*`).
fn parse_input(s: &str, file: &std::path::Path, line: usize) -> Result<(RegistryRef, bool)> {
    let (rest, plain_http) = match s.split_once("://") {
        Some(("https", r)) => (r, false),
        Some(("http", r)) => (r, true),
        Some((scheme, _)) => {
            return Err(Error::BadInput {
                input: file.display().to_string(),
                place: format!("input {line}: "),
                reason: format!("scheme {scheme:?} is not http or https"),
                hint: None,
            });
        }
        None => (s, false),
    };
    // `*` is not a tag character: parse with a placeholder, put it back.
    let parsed =
        crate::reference::parse_registry(&rest.replace('*', "WILDCARD0STAR")).map_err(|e| {
            Error::BadInput {
                input: file.display().to_string(),
                place: format!("input {line} ({s}): "),
                reason: e,
                hint: Some(
                    "write it like https://registry.example.org/group/image:tag or :v1.*".into(),
                ),
            }
        })?;
    let mut r = parsed;
    r.tag = r.tag.map(|t| t.replace("WILDCARD0STAR", "*"));
    if r.registry.contains("WILDCARD0STAR") || r.repository.contains("WILDCARD0STAR") {
        return Err(Error::BadInput {
            input: file.display().to_string(),
            place: format!("input {line} ({s}): "),
            reason: "`*` is allowed in tags only".into(),
            hint: None,
        });
    }
    if r.tag.is_none() && r.digest.is_none() {
        r.tag = Some("latest".into());
    }
    Ok((r, plain_http))
}

/// A glob with `*` matching the whole tag, as DUCC's `.*` regex does.
fn glob_match(pattern: &str, tag: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == tag;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !tag.starts_with(first)
        || !tag[first.len()..].ends_with(last)
        || tag.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &tag[first.len()..tag.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[derive(Serialize)]
struct PublishView {
    repo: String,
    root: PathBuf,
    backend: String,
    published: Vec<cvmfs::PublishReport>,
    failed: Vec<Failure>,
}

#[derive(Serialize)]
struct Failure {
    image: String,
    error: String,
}

pub fn publish(global: &GlobalOpts, args: &PublishArgs) -> anyhow::Result<()> {
    let mut ctx = args.access.context(global);
    // (image, public name, plain http?)
    let mut work: Vec<(ImageRef, PublicName, bool)> = Vec::new();
    let mut wish_repo = None;
    let mut podman = args.podman;
    let mut platform_args = args.platforms.clone();
    if let Some(file) = &args.wishlist {
        let text = std::fs::read_to_string(file).map_err(|e| Error::io_path(file, "reading", e))?;
        let w: Wishlist = serde_saphyr::from_str(&text).map_err(|e| Error::BadInput {
            input: file.display().to_string(),
            place: String::new(),
            reason: format!("not a DUCC wishlist: {e}"),
            hint: Some("version: 1, cvmfs_repo: NAME, input: [https://REG/REPO:TAG, ...]".into()),
        })?;
        if w.version != 1 {
            return Err(Error::bad_input(
                file.display().to_string(),
                format!("wishlist version {} is not supported (1 is)", w.version),
            )
            .into());
        }
        wish_repo = Some(w.cvmfs_repo.clone());
        podman |= w.podman;
        if platform_args.is_empty() {
            platform_args = w.platforms.clone();
        }
        // Refuse a mismatch before contacting any registry.
        if let Some(r) = &args.repo.repo.name
            && *r != w.cvmfs_repo
        {
            return Err(Error::BadInput {
                input: file.display().to_string(),
                place: "cvmfs_repo: ".into(),
                reason: format!("names {:?}, but --repo is {r:?}", w.cvmfs_repo),
                hint: Some("drop --repo, or publish with the wishlist's repository".into()),
            }
            .into());
        }
        for (i, input) in w.input.iter().enumerate() {
            let (r, plain) = parse_input(input, file, i + 1)?;
            let tag = r.tag.clone().unwrap_or_default();
            if tag.contains('*') {
                let mut opts = ctx.registry.clone();
                if plain {
                    opts.tls_verify = false;
                }
                let mut tags = crate::registry::list_tags(&r, &opts)?;
                tags.retain(|t| glob_match(&tag, t));
                tags.sort();
                if tags.is_empty() {
                    tracing::warn!("{input}: no tag matches");
                }
                for t in tags {
                    let rr = r.with_tag(&t);
                    work.push((
                        ImageRef::Registry(rr.clone()),
                        PublicName::from_ref(&rr)?,
                        plain,
                    ));
                }
            } else {
                work.push((
                    ImageRef::Registry(r.clone()),
                    PublicName::from_ref(&r)?,
                    plain,
                ));
            }
        }
    }
    for s in &args.images {
        let r: ImageRef = s.parse()?;
        let name = match (&r, &args.name) {
            (_, Some(n)) if args.images.len() == 1 => PublicName::parse(n)?,
            (ImageRef::Registry(rr), None) => PublicName::from_ref(rr)?,
            _ => {
                return Err(Error::BadInput {
                    input: s.clone(),
                    place: String::new(),
                    reason: "CVMFS publishes images under REG/REPO:TAG".into(),
                    hint: Some(
                        "publish one non-registry image at a time with --name REG/REPO:TAG".into(),
                    ),
                }
                .into());
            }
        };
        work.push((r, name, false));
    }
    if work.is_empty() {
        return Err(Error::BadInput {
            input: "gridship cvmfs publish".into(),
            place: String::new(),
            reason: "no images".into(),
            hint: Some("give IMAGE arguments or --wishlist FILE".into()),
        }
        .into());
    }
    let platforms = platform_args
        .iter()
        .map(|p| crate::image::PlatformWanted::parse(p))
        .collect::<Result<Vec<_>>>()?;
    let mut repo = args.repo.open(wish_repo.as_deref())?;
    let plan = PublishPlan {
        layers: args.layers,
        reuse: !args.no_reuse,
        podman,
        world_readable: args.readable.world_readable,
        epoch: super::sif::source_date_epoch()?,
        platforms,
        store: ctx.store().ok(),
    };
    let mut view = PublishView {
        repo: repo.config.name.clone(),
        root: repo.root().to_path_buf(),
        backend: format!("{:?}", repo.config.backend).to_lowercase(),
        published: Vec::new(),
        failed: Vec::new(),
    };
    let verify = ctx.registry.tls_verify;
    for (r, name, plain) in &work {
        ctx.registry.tls_verify = verify && !plain;
        let result = crate::pipeline::publish::publish(&mut repo, r, name, &ctx, &plan)
            .map(|(reports, _)| reports);
        match result {
            Ok(reports) => {
                for report in reports {
                    if !global.json {
                        println!(
                            "published {} -> {} ({}{}{}) in {:.1}s",
                            report.name,
                            report.flat.display(),
                            report.flat_status,
                            if report.reused_files > 0 {
                                format!(", {} files reused", report.reused_files)
                            } else {
                                String::new()
                            },
                            if args.layers {
                                format!(
                                    ", layers: {} new, {} present",
                                    report.layers_built.len(),
                                    report.layers_present.len()
                                )
                            } else {
                                String::new()
                            },
                            report.seconds
                        );
                        for t in &report.transforms {
                            let what = match t.rule.as_str() {
                                "cvmfs-publishable" => "owner rw/rwx",
                                "world-readable" => "the owner's r/x for all",
                                _ => continue,
                            };
                            if !t.changed.is_empty() {
                                println!(
                                    "  {}: {} entries widened ({what})",
                                    t.rule,
                                    t.changed.len()
                                );
                            }
                        }
                        if let Some(old) = &report.replaced {
                            println!("  the tag moved: {} is scheduled for gc", old.display());
                        }
                        if let Some(p) = &report.platform {
                            println!("  platform {p}");
                        }
                        if let Some(id) = &report.podman_image {
                            println!("  podmanStore image {id}");
                        }
                    }
                    view.published.push(report);
                }
            }
            Err(e) => {
                eprintln!("error: {r}: {e}");
                view.failed.push(Failure {
                    image: r.to_string(),
                    error: e.to_string(),
                });
            }
        }
    }
    if global.json {
        print_json(&view)?;
    }
    if !view.failed.is_empty() {
        return Err(Error::Other(format!(
            "{} of {} images failed to publish",
            view.failed.len(),
            work.len()
        ))
        .into());
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Remove only what has been unused for this many days.
    #[arg(long, default_value_t = 30)]
    pub grace_period: u64,
    /// Unpublish dated names (REG/REPO:SITE-nightly-YYYYMMDDTHHMMSSZ, as
    /// `gridship nightly` pushes them) this many days after their build;
    /// the newest of each REG/REPO:SITE always stays. Their trees then go
    /// after --grace-period like any unused tree. The clock is the
    /// system's, or GRIDSHIP_NOW (Unix seconds or RFC 3339) for tests and
    /// what-if runs.
    #[arg(long, value_name = "DAYS")]
    pub retention_days: Option<u64>,
    /// List what would be removed, with sizes; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub repo: RepoArgs,
}

pub fn gc(global: &GlobalOpts, args: &GcArgs) -> anyhow::Result<()> {
    let mut config = args.repo.config(None)?;
    config.exclusive = true;
    let mut repo = Repo::open(config)?;
    let opts = cvmfs::GcOptions {
        grace_days: args.grace_period,
        retention_days: args.retention_days,
        dry_run: args.dry_run,
        now: crate::clock::now()?,
    };
    let items = cvmfs::gc_with(&mut repo, &opts)?;
    if global.json {
        return print_json(&items);
    }
    if items.is_empty() {
        println!("nothing unused in {}", repo.config.name);
    }
    for i in &items {
        println!(
            "{:<22} {:>10}  {}",
            i.action,
            human_bytes(i.bytes),
            i.path.display()
        );
    }
    Ok(())
}

pub fn ls(global: &GlobalOpts, args: &RepoArgs) -> anyhow::Result<()> {
    let repo = args.open(None)?;
    let items = cvmfs::list(&repo)?;
    if global.json {
        return print_json(&items);
    }
    for i in &items {
        let state = match (i.complete, i.committed) {
            (true, true) => "ok",
            (true, false) => "tree ok, manifest missing",
            (false, _) => "BROKEN: no tree",
        };
        println!(
            "{:<60} {}  {}",
            i.name,
            i.config_digest.as_deref().unwrap_or("-"),
            state
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct BundleArgs {
    /// The published name, REG/REPO:TAG.
    pub name: String,
    /// The bundle directory: config.json is written there (runc run -b DIR ID).
    pub dir: PathBuf,
    /// The command to run instead of the image's Cmd (after the Entrypoint).
    #[arg(last = true)]
    pub args: Vec<String>,
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub access: AccessOpts,
}

pub fn bundle(global: &GlobalOpts, args: &BundleArgs) -> anyhow::Result<()> {
    let name = PublicName::parse(&args.name)?;
    let repo = args.repo.open(None)?;
    let store = args.access.context(global).store().ok();
    let image = cvmfs::bundle::find(&repo, &name, store.as_ref())?;
    let path = cvmfs::bundle::write(&image, &args.dir, Some(&args.args))?;
    if global.json {
        return print_json(&serde_json::json!({
            "name": name.to_string(),
            "config": path,
            "root": image.root,
            "config_digest": image.config_digest.to_string(),
        }));
    }
    println!(
        "wrote {} (root {} read-only); run it with: runc run -b {} ID",
        path.display(),
        image.root.display(),
        args.dir.display()
    );
    Ok(())
}

pub fn run(global: &GlobalOpts, cmd: &CvmfsCommand) -> anyhow::Result<()> {
    match cmd {
        CvmfsCommand::Publish(a) => publish(global, a),
        CvmfsCommand::Gc(a) => gc(global, a),
        CvmfsCommand::Ls(a) => ls(global, a),
        CvmfsCommand::Bundle(a) => bundle(global, a),
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_match_whole_tags() {
        assert!(glob_match("1.*", "1.2"));
        assert!(glob_match("1.*", "1."));
        assert!(!glob_match("1.*", "11.2"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("v*-gpu", "v2-gpu"));
        assert!(!glob_match("v*-gpu", "v2-gpu-x"));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(!glob_match("a*b*c", "aXc"));
        assert!(glob_match("exact", "exact") && !glob_match("exact", "exact2"));
    }
}
