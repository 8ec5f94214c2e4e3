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

/// Set in a first-open child: the database it opens.
const FIRST_OPEN_PATH: &str = "STOWAGE_SQLITE_FIRST_OPEN_PATH";
/// Set in a first-open child: its number.
const FIRST_OPEN_ID: &str = "STOWAGE_SQLITE_FIRST_OPEN_ID";
/// How many processes open one new file at once.
const FIRST_OPENERS: usize = 16;

/// A first-open child: waits for the go (a file beside the database), then opens the
/// database, which may not exist yet, and writes one record; exits 0, or with the error on
/// stderr and status 1. Does nothing in a normal test run.
#[test]
fn first_open_child() {
    use stowage_core::{Body, Key, Metadata, Namespace, PutMode, StorageBackend};
    let (Ok(path), Ok(id)) = (std::env::var(FIRST_OPEN_PATH), std::env::var(FIRST_OPEN_ID)) else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    let config = SqliteConfig::from_json(&serde_json::json!({ "path": path })).unwrap();
    let store = SqliteBackend::new(config);
    let go = path.with_extension("go");
    while !go.exists() {
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let written = runtime.block_on(async {
        store.initialize().await?;
        store
            .put(
                &Namespace::default(),
                &Key::new(format!("opener/{id}")).unwrap(),
                Body::from(id.clone()),
                Metadata::new(),
                PutMode::Overwrite,
            )
            .await?;
        store.close().await
    });
    if let Err(e) = written {
        eprintln!("opener {id}: {e}");
        std::process::exit(1);
    }
}

/// Many processes started together on a database that does not exist yet (16 `stowage`
/// commands at once): every one opens it and writes, whichever of them switches the new file
/// to WAL mode and creates the schema; the file ends up a whole stowage database.
#[test]
fn processes_opening_a_new_database_at_once_all_succeed() {
    use sqlx::Connection;
    use std::process::{Command, Stdio};
    use stowage_core::{ListOptions, Namespace, StorageBackend};
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for round in 0..8 {
        let path = dir.path().join(format!("round{round}.db"));
        let children: Vec<_> = (0..FIRST_OPENERS)
            .map(|id| {
                Command::new(&exe)
                    .args([
                        "--exact",
                        "first_open_child",
                        "--nocapture",
                        "--test-threads=1",
                        "--quiet",
                    ])
                    .env(FIRST_OPEN_PATH, &path)
                    .env(FIRST_OPEN_ID, id.to_string())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        std::fs::write(path.with_extension("go"), b"").unwrap();
        let failures: Vec<String> = children
            .into_iter()
            .map(|child| child.wait_with_output().unwrap())
            .filter(|out| !out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stderr).into_owned())
            .collect();
        assert!(failures.is_empty(), "round {round}: {failures:#?}");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let config = SqliteConfig::from_json(&serde_json::json!({ "path": path })).unwrap();
            let store = SqliteBackend::new(config);
            let page = store
                .list(&Namespace::default(), ListOptions::default())
                .await
                .unwrap();
            assert_eq!(page.items.len(), FIRST_OPENERS, "round {round}");
            assert_eq!(
                stowage_providers::sqlite::schema::schema_version_of(&path)
                    .await
                    .unwrap(),
                stowage_providers::sqlite::schema::SCHEMA_VERSION
            );
            store.close().await.unwrap();
            // Whoever created the tables did so with incremental auto-vacuum (for `gc`).
            let mut conn = sqlx::SqliteConnection::connect_with(
                &sqlx::sqlite::SqliteConnectOptions::new().filename(&path),
            )
            .await
            .unwrap();
            let auto_vacuum: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            assert_eq!(auto_vacuum, 2, "round {round}: incremental");
        });
    }
}
