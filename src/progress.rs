//! Progress as the CLI shows it: the pipeline's events (crate::event) as
//! bars on a terminal (indicatif), one line a stage elsewhere, or JSON
//! lines (`--events`).
//!
//! On a terminal each stage shows the bytes read so far, the rate and
//! (with a known total) an ETA, and each item (a blob pulled or pushed) a
//! bar of its own while it runs; without a terminal (a batch job, a CI
//! log) each stage prints one line when it ends, with its time and bytes.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::event::{self, Event};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Nothing (--quiet, --json).
    Off,
    /// Bars on a terminal, one line a stage otherwise.
    Human,
    /// Every event as one JSON line on stderr (`--events`), for a service
    /// that runs gridship and shows its progress.
    JsonLines,
}

/// Show the events on stderr, for the rest of the process.
pub fn init(show: Show) {
    use std::io::IsTerminal;
    match show {
        Show::Off => {}
        Show::JsonLines => event::listen(|e| {
            if let Ok(line) = serde_json::to_string(e) {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
        })
        .forever(),
        Show::Human if std::io::stderr().is_terminal() => {
            let bars = Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                stage: Mutex::new(None),
                items: Mutex::new(HashMap::new()),
            };
            event::listen(move |e| bars.show(e)).forever()
        }
        Show::Human => event::listen(|e| {
            if let Event::End {
                stage,
                seconds,
                bytes,
                ..
            } = e
            {
                eprintln!("{}", stage_line(stage, *seconds, *bytes));
            }
        })
        .forever(),
    }
}

/// The terminal's bars: the running stage's and one per running item.
struct Bars {
    multi: MultiProgress,
    stage: Mutex<Option<ProgressBar>>,
    items: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    fn show(&self, e: &Event) {
        match e {
            Event::Start { stage, total } => {
                let bar = match total {
                    Some(t) => self.multi.add(ProgressBar::new(*t)),
                    None => {
                        let bar = self.multi.add(ProgressBar::no_length());
                        bar.enable_steady_tick(std::time::Duration::from_millis(120));
                        bar
                    }
                };
                bar.set_style(stage_style(total.is_some()));
                bar.set_message(stage.clone());
                if let Ok(mut s) = self.stage.lock() {
                    *s = Some(bar);
                }
            }
            Event::Progress { bytes, total, .. } => {
                if let Ok(s) = self.stage.lock()
                    && let Some(bar) = s.as_ref()
                {
                    if let Some(t) = total
                        && bar.length() != Some(*t)
                    {
                        bar.set_length(*t);
                        bar.set_style(stage_style(true));
                    }
                    bar.set_position(*bytes);
                }
            }
            Event::End {
                stage,
                seconds,
                bytes,
                ..
            } => {
                if let Ok(mut s) = self.stage.lock()
                    && let Some(bar) = s.take()
                {
                    bar.set_style(ProgressStyle::with_template("  {msg}").expect("valid template"));
                    bar.finish_with_message(stage_line(stage, *seconds, *bytes));
                }
            }
            Event::Log { .. } => {}
            Event::Item {
                item,
                bytes,
                total,
                done,
            } => {
                let Ok(mut items) = self.items.lock() else {
                    return;
                };
                if *done {
                    if let Some(bar) = items.remove(item) {
                        bar.finish_and_clear();
                    }
                    return;
                }
                let bar = items.entry(item.clone()).or_insert_with(|| {
                    let bar = self.multi.add(ProgressBar::new(*total));
                    bar.set_style(item_style());
                    bar.set_message(item.clone());
                    bar
                });
                bar.set_position(*bytes);
            }
        }
    }
}

fn item_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg:40!} {bar:30} {binary_bytes:>10}/{binary_total_bytes:<10} {binary_bytes_per_sec:>12} ETA {eta}",
    )
    .expect("valid template")
}

fn stage_style(with_total: bool) -> ProgressStyle {
    let template = if with_total {
        "{msg:16!} {bar:30} {binary_bytes:>10}/{binary_total_bytes:<10} {binary_bytes_per_sec:>12} ETA {eta:<4} {elapsed}"
    } else {
        "{spinner} {msg:14!} {binary_bytes:>10} {binary_bytes_per_sec:>12} {elapsed}"
    };
    ProgressStyle::with_template(template).expect("valid template")
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
}
