//! Command-line interface: argument definitions (each option defined once, in
//! an `Args` group that commands flatten) and the dispatch to the library.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub mod arc;

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
}

#[derive(Debug, Parser)]
#[command(
    name = "gridship",
    version,
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
    /// Write the ARC job description (xRSL, ADL or JSON) that runs an image on a site's GPU queue.
    Jobdesc(arc::JobdescArgs),
    /// Check a job description and submit it to an ARC CE over REST.
    Submit(arc::SubmitArgs),
    /// Show the state of submitted ARC jobs.
    Status(arc::StatusArgs),
    /// Cancel ARC jobs.
    Kill(arc::JobsArgs),
    /// Remove finished ARC jobs from the CE (and from the local list).
    Clean(arc::JobsArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Jobdesc(a) => arc::jobdesc(g, a),
        Command::Submit(a) => arc::submit(g, a),
        Command::Status(a) => arc::status(g, a),
        Command::Kill(a) => arc::kill(g, a),
        Command::Clean(a) => arc::clean(g, a),
    }
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
