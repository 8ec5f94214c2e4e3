//! Crash tests of the `fs` provider with real processes (the harness: `crash/mod.rs`).
//!
//! Most payloads are small, so most kills land in appends of records carrying their payload
//! inline; some generations keep every payload in a file (`inline_max = 0`), so the store also
//! mixes both kinds, and large payloads always take the file path. Compactions get killed too.
//!
//! Replay a failure with `STOWAGE_CRASH_SEED=<seed printed by the failing run>`.

mod crash;

use std::path::Path;

use stowage_providers::fs::{FsBackend, FsConfig};

const KILLS: u64 = 60;

fn open(root: &Path, fsync: &str, inline_max: u64) -> FsBackend {
    let config = FsConfig::from_json(
        &serde_json::json!({ "root": root, "fsync": fsync, "inline_max": inline_max }),
    )
    .unwrap();
    FsBackend::new(config)
}

/// One generation in three keeps every payload in a file; the others keep small ones (most of
/// them) in the log.
fn inline_max(generation: u64) -> u64 {
    if generation % 3 == 2 {
        0
    } else {
        stowage_providers::fs::DEFAULT_INLINE_MAX
    }
}

/// Even generations write with fsync, odd ones without (their commits then run on the
/// writer's task): a SIGKILL must not lose an acknowledged write in either mode, since the
/// page cache outlives the process.
fn fsync_mode(generation: u64) -> &'static str {
    if generation & 1 == 0 {
        "always"
    } else {
        "never"
    }
}

/// The writer child. Does nothing in a normal test run.
#[test]
fn crash_child() {
    crash::run_child(
        |root, generation| open(root, fsync_mode(generation), inline_max(generation)),
        |store| async move {
            store.compact().await.unwrap();
        },
    );
}

#[test]
fn sigkill_at_random_points_loses_no_acknowledged_write() {
    crash::kill_repeatedly("crash_child", KILLS, |root| {
        open(root, "always", stowage_providers::fs::DEFAULT_INLINE_MAX)
    });
}
