//! Progress bars on a terminal (indicatif). The CLI turns them on; library
//! code asks for a bar and gets a hidden one when they are off, so no
//! function needs a progress parameter.

use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

static MULTI: OnceLock<MultiProgress> = OnceLock::new();

/// Show bars on stderr when it is a terminal and `enabled` (not --quiet,
/// not --json).
pub fn init(enabled: bool) {
    use std::io::IsTerminal;
    if enabled && std::io::stderr().is_terminal() {
        let _ = MULTI.set(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
    }
}

/// A byte-counting bar (hidden when progress is off).
pub fn bytes(total: u64, message: impl Into<String>) -> ProgressBar {
    let Some(multi) = MULTI.get() else {
        return ProgressBar::hidden();
    };
    let bar = multi.add(ProgressBar::new(total));
    bar.set_style(
        ProgressStyle::with_template("{msg:40!} {bar:30} {binary_bytes:>10}/{binary_total_bytes:<10} {binary_bytes_per_sec:>12}")
            .expect("valid template"),
    );
    bar.set_message(message.into());
    bar
}

/// A spinner for work of unknown size.
pub fn spinner(message: impl Into<String>) -> ProgressBar {
    let Some(multi) = MULTI.get() else {
        return ProgressBar::hidden();
    };
    let bar = multi.add(ProgressBar::new_spinner());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar.set_message(message.into());
    bar
}
