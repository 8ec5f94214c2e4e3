//! Progress bars on stderr: [`BarProgress`] (the core's [`Progress`], for `verify` and `gc`)
//! and [`CopyProgress`] (the core's [`CopyObserver`], for `copy`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use stowage_core::copy::CopyObserver;
use stowage_core::{Namespace, Progress, RecordInfo};

use crate::output::human_size;

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

/// The `copy` progress bar: versions written and skipped, payload bytes written and their rate.
///
/// With `--versions latest` each key is one step, so the bar has a length (the keys found so
/// far); with whole histories the number of versions is not known up front, so it counts.
pub struct CopyProgress {
    bar: ProgressBar,
    started: Instant,
    keys: AtomicU64,
    copied: AtomicU64,
    skipped: AtomicU64,
    bytes: AtomicU64,
    per_key: bool,
}

impl CopyProgress {
    /// A bar drawn on stderr when `visible`; `per_key` when each key is copied as one version.
    pub fn new(visible: bool, per_key: bool) -> Self {
        let bar = if visible {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            let template = if per_key {
                "copy: [{bar:30}] {human_pos}/{human_len} keys, {msg} ({elapsed}, {eta} left)"
            } else {
                "{spinner} copy: {human_pos} versions, {msg} ({elapsed})"
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .map(|s| s.progress_chars("=> "))
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            ProgressBar::hidden()
        };
        let progress = CopyProgress {
            bar,
            started: Instant::now(),
            keys: AtomicU64::new(0),
            copied: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            per_key,
        };
        progress.refresh();
        progress
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Versions written to the target so far.
    pub fn versions_copied(&self) -> u64 {
        self.copied.load(Ordering::Relaxed)
    }

    /// `N copied, M skipped, SIZE at RATE/s, K keys found`.
    fn message(&self) -> String {
        let bytes = self.bytes.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        format!(
            "{} copied, {} skipped, {} at {}/s, {} keys found",
            self.copied.load(Ordering::Relaxed),
            self.skipped.load(Ordering::Relaxed),
            human_size(bytes),
            human_size((bytes as f64 / secs) as u64),
            self.keys.load(Ordering::Relaxed)
        )
    }

    fn refresh(&self) {
        if !self.bar.is_hidden() {
            self.bar.set_message(self.message());
        }
    }
}

impl Drop for CopyProgress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

impl CopyObserver for CopyProgress {
    fn found(&self, _namespace: &Namespace, keys: u64, _bytes: u64) {
        let total = self.keys.fetch_add(keys, Ordering::Relaxed) + keys;
        if self.per_key {
            self.bar.set_length(total);
        }
        self.refresh();
    }

    fn copied(&self, info: &RecordInfo) {
        self.copied.fetch_add(1, Ordering::Relaxed);
        if !info.is_deleted() {
            self.bytes.fetch_add(info.size, Ordering::Relaxed);
        }
        // A key copied as a tombstone may take two versions (what it deleted, then itself);
        // a bar of keys must not run past its length for it.
        if !self.per_key
            || self
                .bar
                .length()
                .is_none_or(|len| self.bar.position() < len)
        {
            self.bar.inc(1);
        }
        self.refresh();
    }

    fn skipped(&self, _info: &RecordInfo) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        self.bar.inc(1);
        self.refresh();
    }
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

    fn record(size: u64, deleted: bool) -> RecordInfo {
        let now = stowage_core::Timestamp::now();
        RecordInfo {
            namespace: Namespace::default(),
            key: stowage_core::Key::new("k").unwrap(),
            version: 1,
            hash: stowage_core::ContentHash::of(b"x"),
            size,
            created_at: now,
            updated_at: now,
            deleted_at: deleted.then_some(now),
            metadata: stowage_core::Metadata::new(),
            conflicts: Vec::new(),
        }
    }

    #[test]
    fn copy_bar_counts_versions_and_payload_bytes_but_not_tombstones() {
        let p = CopyProgress::new(false, true);
        p.found(&Namespace::default(), 3, 0);
        p.found(&Namespace::new("other").unwrap(), 2, 0);
        assert_eq!(p.bar.length(), Some(5));
        p.copied(&record(2048, false));
        p.copied(&record(999, true));
        p.skipped(&record(7, false));
        assert_eq!(p.bar.position(), 3);
        let message = p.message();
        assert!(
            message.starts_with("2 copied, 1 skipped, 2.0 KiB at "),
            "{message}"
        );
        assert!(message.ends_with("/s, 5 keys found"), "{message}");
        // Whole histories: the number of versions is unknown, so no length.
        let p = CopyProgress::new(false, false);
        p.found(&Namespace::default(), 3, 0);
        assert_eq!(p.bar.length(), None);
    }
}
