//! Crash tests of the `sqlite` provider with real processes (the harness: `crash/mod.rs`).
//!
//! Three writers at once, so kills land inside group-commit batches (many puts in one
//! transaction sent in one round trip) as well as in lone puts. Payloads over 64 KiB stream in
//! chunks (the chunk size here is 64 KiB), so kills land in chunk streams too, and in `gc`.
//! Each chunk of a stream is committed on its own before the put claims the payload, so a kill
//! mid-stream leaves staged chunks behind: the check after every kill runs `verify` over them
//! (they are no damage; `gc` reclaims them after an hour) besides reading every acknowledged
//! write back.
//! Even generations write with `synchronous = full`, odd ones with `normal`: a killed process
//! must not lose an acknowledged write in either, since the WAL outlives it in the page cache.
//!
//! Replay a failure with `STOWAGE_CRASH_SEED=<seed printed by the failing run>`.

mod crash;

use std::path::Path;

use stowage_core::NoProgress;
use stowage_providers::sqlite::{SqliteBackend, SqliteConfig};

const KILLS: u64 = 40;

fn open(root: &Path, synchronous: &str) -> SqliteBackend {
    let config = SqliteConfig::from_json(&serde_json::json!({
        "path": root.join("stowage.db"),
        "synchronous": synchronous,
        "chunk_size": 64 * 1024,
    }))
    .unwrap();
    SqliteBackend::new(config)
}

/// The writer child. Does nothing in a normal test run.
#[test]
fn crash_child() {
    crash::run_child(
        |root, generation| {
            open(
                root,
                if generation & 1 == 0 {
                    "full"
                } else {
                    "normal"
                },
            )
        },
        |store| async move {
            stowage_core::StorageBackend::gc(&*store, &NoProgress)
                .await
                .unwrap();
        },
    );
}

#[test]
fn sigkill_at_random_points_loses_no_acknowledged_write() {
    crash::kill_repeatedly("crash_child", KILLS, |root| open(root, "full"));
}
