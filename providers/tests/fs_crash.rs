//! Crash tests of the `fs` provider with real processes (the harness: `crash/mod.rs`).
//!
//! Most payloads are small, so most kills land in appends of records carrying their payload
//! inline; some generations keep every payload in a file (`inline_max = 0`), so the store also
//! mixes both kinds, and large payloads always take the file path. Compactions get killed too.
//!
//! Replay a failure with `STOWAGE_CRASH_SEED=<seed printed by the failing run>`.

mod crash;

use std::path::Path;

use stowage_providers::fs::{FsBackend, FsConfig, DEFAULT_INLINE_MAX};

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

/// Set in the compaction child: the store root it compacts.
const COMPACT_CHILD_ROOT: &str = "STOWAGE_FS_COMPACT_CHILD_ROOT";

/// The compacting child: compacts the log of its root over and over until killed. Does
/// nothing in a normal test run.
#[test]
fn compaction_child() {
    let Ok(root) = std::env::var(COMPACT_CHILD_ROOT) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = open(Path::new(&root), "always", DEFAULT_INLINE_MAX);
        loop {
            store.compact().await.unwrap();
        }
    });
}

/// The temporary files (`.tmp-…`) directly in `dir`, with their sizes.
fn tmp_files_in(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .map(|e| (e.path(), e.metadata().unwrap().len()))
        .collect()
}

/// A compaction killed with SIGKILL mid-way (as `stowage gc` killed, or a put that compacts)
/// leaves its half-written log where open and `gc` clean up: in `tmp/`, not in the root, where
/// it stayed for good. `gc` removes it once it is quiet and counts it; the store is intact.
#[test]
fn a_killed_compaction_leaves_nothing_behind_for_good() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    use stowage_core::StorageBackend;
    use stowage_core::{Body, GetOptions, Key, Metadata, Namespace, NoProgress, PutMode};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let ns = Namespace::default();
    // A log of about 12 MiB (inline payloads), so a compaction takes a while to write.
    let store = runtime.block_on(async {
        let store = open(&root, "never", DEFAULT_INLINE_MAX);
        for batch in 0..30u32 {
            let puts = (0..50u32).map(|i| {
                let n = batch * 50 + i;
                let bytes: Vec<u8> = (0..8000u32)
                    .map(|b| (b ^ n.wrapping_mul(31)) as u8)
                    .collect();
                let key = Key::new(format!("k{n}")).unwrap();
                let (store, ns) = (&store, &ns);
                async move {
                    store
                        .put(
                            ns,
                            &key,
                            Body::from(bytes),
                            Metadata::new(),
                            PutMode::Overwrite,
                        )
                        .await
                        .unwrap()
                }
            });
            futures::future::join_all(puts).await;
        }
        store
    });

    let exe = std::env::current_exe().unwrap();
    let mut leftovers = Vec::new();
    for attempt in 0..20 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "compaction_child",
                "--nocapture",
                "--test-threads=1",
                "--quiet",
            ])
            .env(COMPACT_CHILD_ROOT, &root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill it as soon as a compacted log is being written (a bounded look: a child that
        // never gets that far fails the test below, not here).
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            let writing = tmp_files_in(&root.join("tmp"))
                .into_iter()
                .chain(tmp_files_in(&root))
                .any(|(_, len)| len > 0);
            if writing {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        assert!(
            tmp_files_in(&root).is_empty(),
            "attempt {attempt}: a compaction's temporary log is written in the root, where nothing cleans it"
        );
        leftovers = tmp_files_in(&root.join("tmp"));
        if !leftovers.is_empty() {
            break;
        }
    }
    assert!(
        !leftovers.is_empty(),
        "no kill in 20 landed while a compaction was writing"
    );
    // Nobody holds it any more (its process is dead); once it has been quiet for a while, it
    // goes. A minute is the rule, so its time is put back rather than waited for.
    for (path, _) in &leftovers {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.set_modified(std::time::SystemTime::now() - Duration::from_secs(120))
            .unwrap();
    }
    let bytes: u64 = leftovers.iter().map(|(_, len)| len).sum();
    runtime.block_on(async {
        let report = store.gc(&NoProgress).await.unwrap();
        assert_eq!(
            (report.blobs_removed, report.bytes_freed),
            (leftovers.len() as u64, bytes),
            "gc counts the killed compaction's log it removed"
        );
        for (path, _) in &leftovers {
            assert!(!path.exists(), "{} is left behind", path.display());
        }
        assert!(tmp_files_in(&root.join("tmp")).is_empty());
        for n in [0u32, 777, 1499] {
            let (info, body) = store
                .get(
                    &ns,
                    &Key::new(format!("k{n}")).unwrap(),
                    GetOptions::default(),
                )
                .await
                .unwrap();
            assert_eq!(info.version, 1);
            let want: Vec<u8> = (0..8000u32)
                .map(|b| (b ^ n.wrapping_mul(31)) as u8)
                .collect();
            assert_eq!(&body.into_bytes().await.unwrap()[..], &want[..]);
        }
        assert!(store.verify(&NoProgress).await.unwrap().is_clean());
    });
}
