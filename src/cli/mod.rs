//! Command-line interface: argument definitions (each option defined once, in
//! an `Args` group that commands flatten) and the dispatch to the library.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Defaults, Kind, SearchPath};

pub mod arc;
pub mod build;
pub mod config;
pub mod cvmfs;
pub mod export;
pub mod image;
pub mod pressure;
pub mod promote;
pub mod serve;
pub mod sif;
pub mod smoke;
pub mod store;

/// Options every command understands.
#[derive(Debug, Clone, Args)]
pub struct GlobalOpts {
    /// Local image store (an OCI image layout directory).
    /// Default: $XDG_CACHE_HOME/gridship/store.
    #[arg(long, global = true, env = "GRIDSHIP_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,

    /// Print one JSON document on stdout instead of human output.
    #[arg(long, global = true)]
    pub json: bool,

    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// No progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Every stage's start, progress and end as one JSON line each on
    /// stderr (for a service that runs gridship and shows its progress),
    /// instead of bars.
    #[arg(long, global = true)]
    pub events: bool,
}

/// Where site profiles and overlays are looked up first (SITE/{site.yaml,files/}).
#[derive(Debug, Clone, Args)]
pub struct SiteOverlaysOpt {
    /// Directory of site profiles searched first; then $GRIDSHIP_SITE_OVERLAYS,
    /// ~/.config/gridship/sites, /etc/gridship/sites, the built-in ones.
    #[arg(long, value_name = "DIR")]
    pub site_overlays: Option<PathBuf>,
}

impl SiteOverlaysOpt {
    pub fn search(&self) -> SearchPath {
        SearchPath::new(Kind::Sites, self.site_overlays.as_deref())
    }
}

/// Where xRSL templates are looked up first (NAME.xrsl).
#[derive(Debug, Clone, Args)]
pub struct TemplatesOpt {
    /// Directory of xRSL templates searched first; then $GRIDSHIP_XRSL_TEMPLATES,
    /// ~/.config/gridship/templates, /etc/gridship/templates, the built-in ones.
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
}

impl TemplatesOpt {
    pub fn search(&self) -> SearchPath {
        SearchPath::new(Kind::Templates, self.templates.as_deref())
    }
}

/// Where smoke-test suites are looked up first (NAME.yaml).
#[derive(Debug, Clone, Args)]
pub struct SuitesOpt {
    /// Directory of smoke-test suites searched first; then $GRIDSHIP_SMOKE_SUITES,
    /// ~/.config/gridship/smoke-suites, /etc/gridship/smoke-suites, the built-in ones.
    #[arg(long, value_name = "DIR")]
    pub suites: Option<PathBuf>,
}

impl SuitesOpt {
    pub fn search(&self) -> SearchPath {
        SearchPath::new(Kind::Suites, self.suites.as_deref())
    }
}

/// The config files' defaults, read once per run.
pub fn defaults() -> crate::Result<&'static Defaults> {
    static DEFAULTS: std::sync::OnceLock<Defaults> = std::sync::OnceLock::new();
    if let Some(d) = DEFAULTS.get() {
        return Ok(d);
    }
    let d = Defaults::load()?;
    Ok(DEFAULTS.get_or_init(|| d))
}

/// An option's value: the command line's, else the config file's.
pub fn or_config(
    given: Option<&str>,
    setting: &Option<crate::config::file::Setting<String>>,
) -> Option<String> {
    given
        .map(str::to_string)
        .or_else(|| setting.as_ref().map(|s| s.value.clone()))
}

/// `--site`, else `site:` of a config file, else an error that says both.
pub fn require_site(given: Option<&str>) -> crate::Result<String> {
    let d = defaults()?;
    or_config(given, &d.site).ok_or_else(|| crate::Error::BadInput {
        input: "--site".into(),
        place: String::new(),
        reason: "no site given".into(),
        hint: Some(format!(
            "pass --site SITE (gridship sites lists them), or set site: in {}",
            crate::config::file::config_files()
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        )),
    })
}

#[derive(Debug, Parser)]
#[command(
    name = "gridship",
    version = crate::config::builtin::VERSION,
    about = "Take development containers and reviewed recipes to the grid"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy an image between transports (registry, engine, OCI layout, archives, store).
    Copy(image::CopyArgs),
    /// Show an image's manifest, layers, sizes and config.
    Inspect(image::InspectArgs),
    /// Write an image's merged filesystem tree into a directory.
    Unpack(image::UnpackArgs),
    /// Write an image's merged filesystem as one tar (whiteouts applied), to a file or stdout.
    Export(export::ExportArgs),
    /// Convert an image to an Apptainer SIF file (squashfs, streamed, reproducible).
    Sif(sif::SifArgs),
    /// Show a SIF file's header and objects.
    SifInfo(sif::SifInfoArgs),
    /// Publish images as unpacked trees in a CernVM-FS repository (DUCC layout).
    #[command(subcommand)]
    Cvmfs(cvmfs::CvmfsCommand),
    /// Build a reviewed recipe with the Docker Engine, one image per site with its overlay.
    Build(build::BuildArgs),
    /// Capture a container (running or stopped) into the store, without stopping it.
    Snapshot(build::SnapshotArgs),
    /// Rebuild every recipe for its sites when its inputs changed; keep the last builds.
    Nightly(build::NightlyArgs),
    /// Take a development session to the grid: snapshot, strip sshd, scrub secrets, slim, SIF/CVMFS/OCI, smoke tests, job description.
    Promote(Box<promote::PromoteArgs>),
    /// The development node's session service: the only holder of engine
    /// access; users promote and manage their sessions through it (HTTPS
    /// with grid certificates, proxies or tokens; a socket inside each session).
    Serve(serve::ServeArgs),
    /// Your sessions through `gridship serve`: list, show, stop, start, remove, snapshot, new.
    Session(serve::SessionArgs),
    /// Operations of `gridship serve` (promote, snapshot, new session): list, show, cancel, wait.
    #[command(subcommand)]
    Operation(serve::OperationCommand),
    /// What the local store holds (ls, du) and cleaning it (gc).
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Check that an image will run on a site's GPUs: driver libraries, glibc, CUDA vs driver, and commands on the GPU.
    Smoke(smoke::SmokeArgs),
    /// Write the ARC job description (xRSL, ADL or JSON) that runs an image on a site's GPU queue.
    Jobdesc(arc::JobdescArgs),
    /// Check a job description and submit it to an ARC CE over REST.
    Submit(arc::SubmitArgs),
    /// Show the state of submitted ARC jobs; --wait until they end.
    Status(arc::StatusArgs),
    /// Download a job's outputs, stdout and stderr into DIR/JOBID/ (like arcget).
    Get(arc::GetArgs),
    /// Cancel ARC jobs.
    Kill(arc::JobsArgs),
    /// Remove finished ARC jobs from the CE (and from the local list).
    Clean(arc::JobsArgs),
    /// Keep a CE's queue supplied with copies of a job (pilots), within limits
    /// read again from CONFIG every cycle.
    Pressure(pressure::PressureArgs),
    /// List the site profiles and where each comes from; `sites show NAME` prints one, resolved.
    Sites(config::SitesArgs),
    /// List the xRSL templates; `templates show NAME` prints one.
    Templates(config::TemplatesArgs),
    /// List the smoke-test suites; `suites show NAME` prints one, includes resolved.
    Suites(config::SuitesArgs),
    /// Show the effective defaults (config.yaml) and the search paths, and where each comes from.
    Config,
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell.
    Completions(config::CompletionsArgs),
    /// Print the manual page (roff) for gridship and its commands.
    Man(config::ManArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    serve::die_with_parent();
    let global = &cli.global;
    crate::progress::init(match (global.events, global.quiet || global.json) {
        (true, _) => crate::progress::Show::JsonLines,
        (false, true) => crate::progress::Show::Off,
        (false, false) => crate::progress::Show::Human,
    });
    match cli.command {
        Command::Copy(args) => image::copy(global, &args),
        Command::Inspect(args) => image::inspect(global, &args),
        Command::Unpack(args) => image::unpack(global, &args),
        Command::Export(args) => export::export(global, &args),
        Command::Sif(args) => sif::sif(global, &args),
        Command::SifInfo(args) => sif::sif_info(global, &args),
        Command::Cvmfs(cmd) => cvmfs::run(global, &cmd),
        Command::Build(a) => build::build(global, &a),
        Command::Snapshot(a) => build::snapshot(global, &a),
        Command::Nightly(a) => build::nightly(global, &a),
        Command::Promote(a) => promote::run(global, &a),
        Command::Serve(a) => serve::serve(global, &a),
        Command::Session(a) => serve::session(global, &a),
        Command::Operation(c) => serve::operation(global, &c),
        Command::Smoke(a) => smoke::smoke(global, &a),
        Command::Store(c) => store::run(global, &c),
        Command::Jobdesc(a) => arc::jobdesc(global, a),
        Command::Submit(a) => arc::submit(global, a),
        Command::Status(a) => arc::status(global, a),
        Command::Get(a) => arc::get(global, a),
        Command::Kill(a) => arc::kill(global, a),
        Command::Clean(a) => arc::clean(global, a),
        Command::Pressure(a) => pressure::run(global, a),
        Command::Sites(a) => config::sites(global, &a),
        Command::Templates(a) => config::templates(global, &a),
        Command::Suites(a) => config::suites(global, &a),
        Command::Config => config::show_config(global),
        Command::Completions(a) => config::completions(&a),
        Command::Man(a) => config::man(&a),
    }
}

/// Print a value as the one JSON document of `--json`.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Logs go to stderr through `tracing`; `-v` raises the level, RUST_LOG wins.
pub fn init_logging(global: &GlobalOpts) {
    let default = match global.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // With --events, stderr is JSON lines only: each record is an event.
    let _ = if global.events {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .without_time()
            .with_writer(|| LogEvent(Vec::new()))
            .try_init()
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init()
    };
}

/// One log record, sent as an event when the record is written.
struct LogEvent(Vec<u8>);

impl std::io::Write for LogEvent {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogEvent {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            crate::event::log(&String::from_utf8_lossy(&self.0));
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks: no option defined twice in one
    /// command, defaults that parse, and so on.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
