//! Progress: bars on a terminal (indicatif), one line a stage elsewhere.
//!
//! The CLI turns progress on; library code asks for a bar and gets a hidden
//! one when it is off, so no function needs a progress parameter. A long
//! pipeline runs in named stages ([`stage`]): on a terminal each shows the
//! bytes read so far, the rate and (with a known total) an ETA; without a
//! terminal (a batch job, a CI log) each prints one line when it ends, with
//! its time and bytes. Readers deep in the pipeline count what they read
//! with [`advance`] (or wrap their reader in [`Counted`]); the count goes to
//! the stage that is running.

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

static MULTI: OnceLock<MultiProgress> = OnceLock::new();
/// Progress is on but stderr is no terminal: one line a stage.
static LINES: AtomicBool = AtomicBool::new(false);
/// The running stage (its number) and bar, which [`advance`] moves.
static CURRENT: Mutex<Option<(u64, ProgressBar)>> = Mutex::new(None);
/// Stages started so far: each stage's number.
static STAGES: AtomicU64 = AtomicU64::new(0);
/// Bytes counted by [`advance`] since the process started.
static COUNTED: AtomicU64 = AtomicU64::new(0);

/// Show bars on stderr when it is a terminal and `enabled` (not --quiet,
/// not --json); one line a stage when it is not a terminal.
pub fn init(enabled: bool) {
    use std::io::IsTerminal;
    if !enabled {
        return;
    }
    if std::io::stderr().is_terminal() {
        let _ = MULTI.set(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
    } else {
        LINES.store(true, Ordering::Relaxed);
    }
}

/// A byte-counting bar (hidden when progress is off).
pub fn bytes(total: u64, message: impl Into<String>) -> ProgressBar {
    let Some(multi) = MULTI.get() else {
        return ProgressBar::hidden();
    };
    let bar = multi.add(ProgressBar::new(total));
    bar.set_style(
        ProgressStyle::with_template("{msg:40!} {bar:30} {binary_bytes:>10}/{binary_total_bytes:<10} {binary_bytes_per_sec:>12} ETA {eta}")
            .expect("valid template"),
    );
    bar.set_message(message.into());
    bar
}

/// Count `n` bytes read for the running stage.
pub fn advance(n: u64) {
    COUNTED.fetch_add(n, Ordering::Relaxed);
    if let Ok(c) = CURRENT.lock()
        && let Some((_, bar)) = c.as_ref()
    {
        bar.inc(n);
    }
}

/// Give the running stage the total it is heading for (bytes), once known.
pub fn set_total(total: u64) {
    if let Ok(c) = CURRENT.lock()
        && let Some((_, bar)) = c.as_ref()
    {
        bar.set_length(total);
        bar.set_style(stage_style(true));
    }
}

/// A reader that counts what passes through it with [`advance`].
pub struct Counted<R>(pub R);

impl<R> Counted<R> {
    pub fn into_inner(self) -> R {
        self.0
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        advance(n as u64);
        Ok(n)
    }
}

fn stage_style(with_total: bool) -> ProgressStyle {
    let template = if with_total {
        "{msg:16!} {bar:30} {binary_bytes:>10}/{binary_total_bytes:<10} {binary_bytes_per_sec:>12} ETA {eta:<4} {elapsed}"
    } else {
        "{spinner} {msg:14!} {binary_bytes:>10} {binary_bytes_per_sec:>12} {elapsed}"
    };
    ProgressStyle::with_template(template).expect("valid template")
}

/// A running pipeline stage; see the module comment.
pub struct Stage {
    id: u64,
    name: String,
    started: Instant,
    counted_at_start: u64,
    bar: ProgressBar,
}

/// Start stage `name`, heading for `total` bytes when known. It becomes
/// the stage [`advance`] counts for, until it ends.
pub fn stage(name: &str, total: Option<u64>) -> Stage {
    let bar = match (MULTI.get(), total) {
        (None, _) => ProgressBar::hidden(),
        (Some(multi), Some(t)) => {
            let bar = multi.add(ProgressBar::new(t));
            bar.set_style(stage_style(true));
            bar
        }
        (Some(multi), None) => {
            let bar = multi.add(ProgressBar::no_length());
            bar.set_style(stage_style(false));
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        }
    };
    bar.set_message(name.to_string());
    let id = STAGES.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut c) = CURRENT.lock() {
        *c = Some((id, bar.clone()));
    }
    Stage {
        id,
        name: name.to_string(),
        started: Instant::now(),
        counted_at_start: COUNTED.load(Ordering::Relaxed),
        bar,
    }
}

impl Stage {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// End the stage: its bar stays with the time taken, or (without a
    /// terminal) one line is printed. Returns the seconds it took.
    pub fn finish(self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64();
        let read = COUNTED.load(Ordering::Relaxed) - self.counted_at_start;
        if let Ok(mut c) = CURRENT.lock()
            && c.as_ref().is_some_and(|(id, _)| *id == self.id)
        {
            *c = None;
        }
        let line = stage_line(&self.name, secs, read);
        if LINES.load(Ordering::Relaxed) {
            eprintln!("{line}");
        } else {
            self.bar
                .set_style(ProgressStyle::with_template("  {msg}").expect("valid template"));
            self.bar.finish_with_message(line);
        }
        secs
    }
}

/// "merge: 19.2s, 8.4 GiB read (448 MiB/s)": a stage's end.
pub fn stage_line(name: &str, secs: f64, read: u64) -> String {
    if read == 0 {
        return format!("{name}: {secs:.1}s");
    }
    let rate = if secs > 0.0 {
        format!(
            " ({}/s)",
            indicatif::BinaryBytes((read as f64 / secs) as u64)
        )
    } else {
        String::new()
    };
    format!(
        "{name}: {secs:.1}s, {} read{rate}",
        indicatif::BinaryBytes(read)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_lines_say_time_bytes_and_rate() {
        assert_eq!(stage_line("scan", 0.04, 0), "scan: 0.0s");
        assert_eq!(
            stage_line("merge", 2.0, 3 << 30),
            "merge: 2.0s, 3.00 GiB read (1.50 GiB/s)"
        );
    }

    #[test]
    fn counted_readers_advance_the_count() {
        let before = COUNTED.load(Ordering::Relaxed);
        let mut r = Counted(&b"0123456789"[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 10);
        assert!(COUNTED.load(Ordering::Relaxed) - before >= 10);
    }
}
