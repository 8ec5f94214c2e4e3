//! The `fs` provider: the whole conformance kit (one test per behaviour), then what only this
//! provider has: a store re-opened from disk, damage to the index log and to blobs reported
//! without a panic, hostile keys that never reach outside the root, compaction, and two real
//! processes sharing one root.

mod conformance {
    stowage_core::conformance_tests!(async {
        // Each test's store lives under cargo's per-target scratch directory, kept after the
        // test (the macro has no place to hold a guard) and wiped by `cargo clean`.
        let root = tempfile::Builder::new()
            .prefix("fs-ck-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("creating a scratch directory")
            .keep();
        let backend = stowage_providers::fs::factory()
            .create(serde_json::json!({ "root": root }))
            .await
            .expect("creating an fs store");
        stowage_core::Stowage::from_backend(backend)
    });
}

/// The same suite without fsync: writes then commit on the caller's task when the commit
/// thread is idle, so this covers that path and its races with the queued one.
mod conformance_no_fsync {
    stowage_core::conformance_tests!(async {
        let root = tempfile::Builder::new()
            .prefix("fs-ck-nofsync-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("creating a scratch directory")
            .keep();
        let backend = stowage_providers::fs::factory()
            .create(serde_json::json!({ "root": root, "fsync": "never" }))
            .await
            .expect("creating an fs store");
        stowage_core::Stowage::from_backend(backend)
    });
}

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use stowage_core::{
    Body, ErrorKind, GetOptions, Key, Metadata, Namespace, NoProgress, PutMode, Query,
    StorageBackend, Stowage,
};
use stowage_providers::fs::{FsBackend, FsConfig};

fn config(root: &Path) -> FsConfig {
    FsConfig::from_json(&serde_json::json!({ "root": root })).unwrap()
}

async fn open(root: &Path) -> FsBackend {
    FsBackend::open(config(root)).await.unwrap()
}

fn key(k: &str) -> Key {
    Key::new(k).unwrap()
}

async fn put(store: &FsBackend, k: &str, body: &'static str) -> stowage_core::RecordInfo {
    store
        .put(
            &Namespace::default(),
            &key(k),
            Body::from(body),
            Metadata::new().with_tag("t"),
            PutMode::Overwrite,
        )
        .await
        .unwrap()
}

async fn read(store: &FsBackend, k: &str) -> stowage_core::Result<Vec<u8>> {
    let (_, body) = store
        .get(&Namespace::default(), &key(k), GetOptions::default())
        .await?;
    Ok(body.into_bytes().await?.to_vec())
}

fn log_path(root: &Path) -> PathBuf {
    root.join("index.log")
}

#[tokio::test]
async fn reopened_store_serves_every_version_and_tag() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).await;
        put(&store, "a", "one").await;
        put(&store, "a", "two").await;
        put(&store, "b", "bee").await;
        store
            .delete(&Namespace::default(), &key("b"), Default::default())
            .await
            .unwrap();
    }
    let store = open(dir.path()).await;
    assert_eq!(read(&store, "a").await.unwrap(), b"two");
    let (_, v1) = store
        .get(
            &Namespace::default(),
            &key("a"),
            GetOptions {
                version: Some(1),
                range: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(&v1.into_bytes().await.unwrap()[..], b"one");
    assert_eq!(
        read(&store, "b").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let found = store
        .search(&Namespace::default(), &Query::new().tag("t"))
        .await
        .unwrap();
    assert_eq!(found.items.len(), 1);
    assert_eq!(found.items[0].key.as_str(), "a");
    assert!(store.recovery_notes().await.unwrap().is_empty());
}

#[tokio::test]
async fn truncated_log_tail_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).await;
        put(&store, "keep/1", "first").await;
        put(&store, "keep/2", "second").await;
        put(&store, "lost", "third").await;
    }
    let len = std::fs::metadata(log_path(dir.path())).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(log_path(dir.path()))
        .unwrap();
    f.set_len(len - 5).unwrap();
    drop(f);

    let store = open(dir.path()).await;
    let notes = store.recovery_notes().await.unwrap();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("torn tail"), "{}", notes[0]);
    assert_eq!(read(&store, "keep/1").await.unwrap(), b"first");
    assert_eq!(read(&store, "keep/2").await.unwrap(), b"second");
    assert_eq!(
        read(&store, "lost").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(store.verify(&NoProgress).await.unwrap().is_clean());
    // The cut was made for good: new writes append after it and a re-open finds no damage.
    put(&store, "lost", "again").await;
    drop(store);
    let store = open(dir.path()).await;
    assert!(store.recovery_notes().await.unwrap().is_empty());
    assert_eq!(read(&store, "lost").await.unwrap(), b"again");
}

#[tokio::test]
async fn flipped_byte_in_log_tail_is_saved_aside_and_verify_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).await;
        put(&store, "keep", "first").await;
        put(&store, "damaged", "second").await;
    }
    let mut bytes = std::fs::read(log_path(dir.path())).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x20;
    std::fs::write(log_path(dir.path()), &bytes).unwrap();

    let store = open(dir.path()).await;
    let notes = store.recovery_notes().await.unwrap();
    assert!(
        notes.len() == 1 && notes[0].contains("corrupt record"),
        "{notes:?}"
    );
    assert_eq!(read(&store, "keep").await.unwrap(), b"first");
    assert_eq!(
        read(&store, "damaged").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let report = store.verify(&NoProgress).await.unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].problem, "log-corrupt");
    assert!(
        report.problems[0].detail.contains("index.log.damaged-"),
        "{}",
        report.problems[0].detail
    );
}

#[tokio::test]
async fn deleted_and_altered_blobs_are_reported_by_key_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let gone = put(&store, "gone", "payload that vanishes").await;
    let bent = put(&store, "bent", "payload that changes").await;
    put(&store, "fine", "payload that stays").await;
    let blob = |h: &stowage_core::ContentHash| {
        let hex = h.to_hex();
        dir.path().join("blobs").join(&hex[..2]).join(&hex[2..])
    };
    std::fs::remove_file(blob(&gone.hash)).unwrap();
    std::fs::write(blob(&bent.hash), "payload that CHANGES").unwrap();

    let err = read(&store, "gone").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(
        err.to_string().contains("default/gone version 1") && err.to_string().contains("missing"),
        "{err}"
    );
    let err = read(&store, "bent").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert_eq!(read(&store, "fine").await.unwrap(), b"payload that stays");

    let mut problems = store.verify(&NoProgress).await.unwrap().problems;
    problems.sort_by(|a, b| a.key.cmp(&b.key));
    let summary: Vec<_> = problems
        .iter()
        .map(|p| {
            (
                p.key.as_deref().unwrap(),
                p.version.unwrap(),
                p.problem.as_str(),
            )
        })
        .collect();
    assert_eq!(summary, [("bent", 1, "corrupt"), ("gone", 1, "missing")]);
}

/// Every path under `dir`, recursively (symlinks not followed).
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.push(e.path());
        if e.file_type().unwrap().is_dir() {
            out.extend(tree(&e.path()));
        }
    }
    out
}

#[tokio::test]
async fn hostile_keys_never_reach_outside_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "do not touch").unwrap();
    let store = Stowage::from_backend(std::sync::Arc::new(open(&root).await));
    let ns = store.namespace("default").unwrap();

    for hostile in [
        "..",
        "../outside/secret",
        "a/../../outside/x",
        "/etc/passwd",
        "/tmp/x",
        "a\\..\\b",
        "a/./b",
        "x\0y",
    ] {
        let err = ns.put(hostile, "x", Metadata::new()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidKey, "{hostile:?}: {err}");
        assert_eq!(
            ns.get(hostile).await.unwrap_err().kind(),
            ErrorKind::InvalidKey
        );
    }
    let long = "k".repeat(1024);
    ns.put(long.as_str(), "long", Metadata::new())
        .await
        .unwrap();
    assert_eq!(
        &ns.get(long.as_str())
            .await
            .unwrap()
            .1
            .into_bytes()
            .await
            .unwrap()[..],
        b"long"
    );
    let too_long = "k".repeat(1025);
    assert_eq!(
        ns.put(too_long.as_str(), "x", Metadata::new())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidKey
    );

    // Symlinks planted inside the root under names a key could map to: keys are indexed,
    // never turned into paths, so writing and reading those keys never follows them.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&outside, root.join("outside")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("default")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("secret")).unwrap();
        for k in [
            "outside/secret",
            "default/secret",
            "secret",
            "blobs/secret",
            "index.log",
        ] {
            ns.put(k, "mine", Metadata::new()).await.unwrap();
            assert_eq!(
                &ns.get(k).await.unwrap().1.into_bytes().await.unwrap()[..],
                b"mine"
            );
        }
        assert_eq!(
            std::fs::read(outside.join("secret")).unwrap(),
            b"do not touch"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);

        // A fan-out directory replaced by a link out of the root is refused, with its name.
        drop(store);
        let fan = root.join("blobs").join("00");
        std::fs::remove_dir_all(&fan).unwrap();
        std::os::unix::fs::symlink(&outside, &fan).unwrap();
        let err = FsBackend::open(config(&root))
            .await
            .err()
            .expect("a symlinked fan-out dir must be refused");
        assert!(
            err.to_string().contains("blobs/00") && err.to_string().contains("symlink"),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    }
    // No file anywhere in the root is named after a key.
    for path in tree(&root) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.contains("kkkk"),
            "{} is named after a key",
            path.display()
        );
    }
}

#[tokio::test]
async fn compaction_drops_purged_records_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let ns = Namespace::default();
    for i in 0..60 {
        let meta = Metadata::new()
            .with_tag(format!("t{}", i % 3))
            .with_attribute("i", i);
        for _ in 0..2 {
            store
                .put(
                    &ns,
                    &key(&format!("k/{i:03}")),
                    Body::from(format!("value {i}")),
                    meta.clone(),
                    PutMode::Overwrite,
                )
                .await
                .unwrap();
        }
    }
    for i in 0..50 {
        assert_eq!(
            store.purge(&ns, &key(&format!("k/{i:03}"))).await.unwrap(),
            2
        );
    }
    let report = store.compact().await.unwrap();
    assert!(report.bytes_after * 3 < report.bytes_before, "{report:?}");
    drop(store);
    let store = open(dir.path()).await;
    for i in 0..60 {
        let k = format!("k/{i:03}");
        match read(&store, &k).await {
            Ok(bytes) if i >= 50 => assert_eq!(bytes, format!("value {i}").as_bytes()),
            Err(e) if i < 50 => assert_eq!(e.kind(), ErrorKind::NotFound),
            other => panic!("{k}: unexpected {other:?}"),
        }
    }
    let versions = store.versions(&ns, &key("k/055")).await.unwrap();
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1, 2]
    );
    let tagged = store.search(&ns, &Query::new().tag("t1")).await.unwrap();
    assert_eq!(
        tagged
            .items
            .iter()
            .map(|i| i.key.as_str())
            .collect::<Vec<_>>(),
        ["k/052", "k/055", "k/058"]
    );
    // gc now frees the purged payloads.
    let gc = store.gc(&NoProgress).await.unwrap();
    assert_eq!((gc.blobs_removed, gc.blobs_kept), (50, 10));
}

// ---------------------------------------------------------------------------------------------
// Two real processes on one root: this binary re-executes itself as the second process.

const CHILD_ROOT: &str = "STOWAGE_FS_TWO_PROC_ROOT";
const CHILD_ID: &str = "STOWAGE_FS_TWO_PROC_ID";
const ROUNDS: u64 = 40;
const INCREMENTS: u64 = 40;

/// One of the two processes. Does nothing in a normal test run.
#[test]
fn two_process_child() {
    let (Ok(root), Ok(id)) = (std::env::var(CHILD_ROOT), std::env::var(CHILD_ID)) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = open(Path::new(&root)).await;
        let ns = Namespace::default();
        let mut wins = Vec::new();
        // Interleave the exactly-one-winner races with read-modify-write increments.
        for round in 0..ROUNDS.max(INCREMENTS) {
            if round < ROUNDS {
                let race = key(&format!("race/{round}"));
                match store
                    .put(
                        &ns,
                        &race,
                        Body::from(id.to_string()),
                        Metadata::new(),
                        PutMode::IfVersion(1),
                    )
                    .await
                {
                    Ok(info) => {
                        assert_eq!(info.version, 2);
                        wins.push(round);
                    }
                    Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e}"),
                }
            }
            if round < INCREMENTS {
                let counter = key("counter");
                loop {
                    let (info, body) = store
                        .get(&ns, &counter, GetOptions::default())
                        .await
                        .unwrap();
                    let n: u64 = String::from_utf8(body.into_bytes().await.unwrap().to_vec())
                        .unwrap()
                        .parse()
                        .unwrap();
                    match store
                        .put(
                            &ns,
                            &counter,
                            Body::from((n + 1).to_string()),
                            Metadata::new(),
                            PutMode::IfVersion(info.version),
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e}"),
                    }
                }
            }
            store
                .put(
                    &ns,
                    &key(&format!("own/{id}/{round}")),
                    Body::from(format!("{id}-{round}")),
                    Metadata::new().with_tag(format!("p{id}")),
                    PutMode::Overwrite,
                )
                .await
                .unwrap();
        }
        println!(
            "WINS {}",
            wins.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
    });
}

#[tokio::test]
async fn two_processes_share_one_root_without_lost_updates() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let ns = Namespace::default();
    {
        let store = open(&root).await;
        put(&store, "counter", "0").await;
        for round in 0..ROUNDS {
            store
                .put(
                    &ns,
                    &key(&format!("race/{round}")),
                    Body::from("seed"),
                    Metadata::new(),
                    PutMode::Overwrite,
                )
                .await
                .unwrap();
        }
    }
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|id| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "two_process_child",
                    "--nocapture",
                    "--test-threads=1",
                    "--quiet",
                ])
                .env(CHILD_ROOT, &root)
                .env(CHILD_ID, id.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut wins: Vec<u64> = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("WINS "))
            .expect("child printed its wins");
        wins.extend(
            line.split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<u64>().unwrap()),
        );
    }
    wins.sort_unstable();
    assert_eq!(
        wins,
        (0..ROUNDS).collect::<Vec<_>>(),
        "each race has exactly one winner across both processes"
    );

    let store = open(&root).await;
    assert_eq!(
        read(&store, "counter").await.unwrap(),
        (2 * INCREMENTS).to_string().as_bytes(),
        "no increment was lost"
    );
    assert_eq!(
        store.versions(&ns, &key("counter")).await.unwrap().len() as u64,
        2 * INCREMENTS + 1
    );
    for round in 0..ROUNDS {
        assert_eq!(
            store
                .versions(&ns, &key(&format!("race/{round}")))
                .await
                .unwrap()
                .len(),
            2
        );
    }
    for id in 0..2 {
        let own = store
            .search(&ns, &Query::new().tag(format!("p{id}")))
            .await
            .unwrap();
        assert_eq!(own.items.len() as u64, ROUNDS.max(INCREMENTS));
    }
    assert!(store.verify(&NoProgress).await.unwrap().is_clean());
}

#[tokio::test]
async fn a_second_backend_sees_writes_of_the_first_without_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path()).await;
    let b = open(dir.path()).await;
    put(&a, "x", "from a").await;
    assert_eq!(read(&b, "x").await.unwrap(), b"from a");
    let info = b
        .put(
            &Namespace::default(),
            &key("x"),
            Body::from("from b"),
            Metadata::new(),
            PutMode::IfVersion(1),
        )
        .await
        .unwrap();
    assert_eq!(info.version, 2);
    let err = a
        .put(
            &Namespace::default(),
            &key("x"),
            Body::from("stale"),
            Metadata::new(),
            PutMode::IfVersion(1),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    // Compaction in one is picked up by the other (a new log file).
    b.purge(&Namespace::default(), &key("x")).await.unwrap();
    put(&b, "y", "after").await;
    b.compact().await.unwrap();
    assert_eq!(read(&a, "x").await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(read(&a, "y").await.unwrap(), b"after");
    put(&a, "z", "appended after compaction").await;
    assert_eq!(read(&b, "z").await.unwrap(), b"appended after compaction");
}

#[tokio::test]
async fn config_is_checked_before_any_io() {
    let factory = stowage_providers::fs::factory();
    let err = factory
        .validate(&serde_json::json!({ "root": "x", "fsync": "maybe" }))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(err.to_string().contains("fsync"), "{err}");
    assert!(factory
        .validate(&serde_json::json!({}))
        .unwrap_err()
        .to_string()
        .contains("root"));
    assert!(stowage_core::Registry::global().contains("fs"));
}
