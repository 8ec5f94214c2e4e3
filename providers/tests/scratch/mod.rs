//! Scratch directories for the provider tests that keep their stores after the run (for a look
//! at a failure) under cargo's per-target temporary directory, which `cargo clean` wipes.

use std::path::{Path, PathBuf};

/// A path under cargo's per-target temporary directory that no other test (of any process)
/// uses, named `<prefix>-<label>-…`; nothing is there yet.
pub fn fresh_root(prefix: &str, label: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{prefix}-{label}-{}-{n}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
