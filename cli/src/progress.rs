//! [`BarProgress`]: the core's [`Progress`] drawn as an indicatif bar on stderr.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use stowage_core::Progress;

/// A progress bar for `verify`, `gc` and other long work; hidden when not wanted.
pub struct BarProgress {
    bar: ProgressBar,
}

impl BarProgress {
    /// A bar labelled `label`, drawn on stderr when `visible`.
    pub fn new(label: &'static str, visible: bool) -> Self {
        if !visible {
            return BarProgress {
                bar: ProgressBar::hidden(),
            };
        }
        // Until the provider reports a total the bar is a spinner counting work done.
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(spinner_style());
        bar.set_message(label);
        bar.enable_steady_tick(Duration::from_millis(120));
        BarProgress { bar }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for BarProgress {
    fn drop(&mut self) {
        // An error path must not leave a half-drawn bar under the error line.
        self.bar.finish_and_clear();
    }
}

impl Progress for BarProgress {
    fn set_total(&self, total: u64) {
        self.bar.set_style(bar_style());
        self.bar.set_length(total);
    }

    fn inc(&self, n: u64) {
        self.bar.inc(n);
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg}: {human_pos} done ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg}: [{bar:40}] {human_pos}/{human_len} ({eta} left)")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_bar_still_counts() {
        let p = BarProgress::new("verify", false);
        p.set_total(10);
        p.inc(3);
        p.inc(4);
        assert_eq!(p.bar.position(), 7);
        assert_eq!(p.bar.length(), Some(10));
        p.finish();
    }
}
