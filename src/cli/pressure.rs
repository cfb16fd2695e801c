//! `gridship pressure`: keep a CE's queue supplied with copies of a job.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::GlobalOpts;
use super::arc::CeAuthArgs;
use crate::ce::pressure::{self, CycleReport, Options};

#[derive(Debug, Args)]
#[command(
    after_help = "CONFIG keys: job (or promote, with site/queue), ce or site, max_running, max_idle \
(required), max_submit_per_cycle (10), cycle_seconds (60), max_backoff_seconds (900), budget_hours, \
stop_after, demand, jobname, state, get. Each cycle prints: running, idle, submitted, finished, failed."
)]
pub struct PressureArgs {
    /// The pressure config (YAML or JSON): job description, CE, limits;
    /// read again every cycle. Keys: below, and README.md (section "pressure").
    pub config: PathBuf,
    /// Run one cycle and exit (for cron).
    #[arg(long)]
    pub once: bool,
    /// The job list (default: state: of the config, else CONFIG.state.json).
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    #[command(flatten)]
    pub overlays: super::SiteOverlaysOpt,
    #[command(flatten)]
    pub auth: CeAuthArgs,
}

pub fn run(g: &GlobalOpts, a: PressureArgs) -> anyhow::Result<()> {
    let opts = Options {
        config: a.config.clone(),
        state: a.state.clone(),
        once: a.once,
        auth: a.auth.config()?,
        sites: a.overlays.search(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let json = g.json;
    let quiet = g.quiet;
    let last = rt.block_on(pressure::run(opts, |r: &CycleReport| {
        // One line per cycle on stdout, flushed: it is read by monitors and
        // by people tailing a log.
        let mut out = std::io::stdout().lock();
        if json {
            let _ = writeln!(out, "{}", serde_json::to_string(r).unwrap_or_default());
        } else {
            if let Some(e) = &r.config_error {
                let _ = writeln!(out, "config: keeping the last good config: {e}");
            }
            if !quiet {
                for c in &r.config_changes {
                    let _ = writeln!(out, "config: {c}");
                }
            }
            let _ = writeln!(out, "{}", r.line());
        }
        let _ = out.flush();
    }))?;
    // For cron: a cycle that failed says so in its exit status.
    if a.once && (!last.errors.is_empty() || last.config_error.is_some()) {
        return Err(crate::error::Error::Other(format!(
            "the cycle had errors: {}",
            last.errors
                .iter()
                .chain(&last.config_error)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ))
        .into());
    }
    Ok(())
}
