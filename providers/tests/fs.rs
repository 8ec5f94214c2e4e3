//! The `fs` provider: the whole conformance kit (one test per behaviour; small payloads kept in
//! the log, and again with every payload in a file), then what only this provider has: a store
//! re-opened from disk, damage to the index log, to inline payloads and to blobs reported
//! without a panic, hostile keys that never reach outside the root, compaction (with readers
//! in flight), dedup of inline payloads, a version-1 log upgraded, and two real processes
//! sharing one root.

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

/// The suite again with every payload in a file of its own (`inline_max = 0`), the path large
/// payloads always take.
mod conformance_payload_files {
    stowage_core::conformance_tests!(async {
        let root = tempfile::Builder::new()
            .prefix("fs-ck-files-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("creating a scratch directory")
            .keep();
        let backend = stowage_providers::fs::factory()
            .create(serde_json::json!({ "root": root, "inline_max": 0 }))
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

/// Opens with extra settings (a JSON object merged over `root`).
async fn open_with(root: &Path, extra: serde_json::Value) -> FsBackend {
    let mut json = serde_json::json!({ "root": root });
    for (k, v) in extra.as_object().unwrap() {
        json[k] = v.clone();
    }
    FsBackend::open(FsConfig::from_json(&json).unwrap())
        .await
        .unwrap()
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

/// Offsets of every occurrence of `needle` in `haystack`.
fn occurrences(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// Flips one bit of the index log at `at`.
fn flip_log_byte(root: &Path, at: usize) {
    let mut bytes = std::fs::read(log_path(root)).unwrap();
    bytes[at] ^= 0x08;
    std::fs::write(log_path(root), &bytes).unwrap();
}

/// Flips one bit of the one log record holding the inline payload `payload` (its length, just
/// before the bytes), so the record's checksum no longer matches; returns the damaged log.
fn damage_record_of(root: &Path, payload: &[u8]) -> Vec<u8> {
    let log = std::fs::read(log_path(root)).unwrap();
    let at = occurrences(&log, payload);
    assert_eq!(
        at.len(),
        1,
        "{:?} is in the log once",
        String::from_utf8_lossy(payload)
    );
    flip_log_byte(root, at[0] - 2);
    std::fs::read(log_path(root)).unwrap()
}

async fn history(store: &FsBackend, k: &str) -> Vec<u64> {
    store
        .versions(&Namespace::default(), &key(k))
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect()
}

#[tokio::test]
async fn a_corrupt_record_inside_the_log_costs_that_record_only() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).await;
        put(&store, "before", "written before the damage").await;
        put(&store, "a", "payload of a, version 1").await;
        put(&store, "a", "payload of a, version 2").await;
        put(&store, "a", "payload of a, version 3").await;
        put(&store, "after", "written after the damage").await;
    }
    // One bit of version 2's record: the records after it must not be lost with it.
    damage_record_of(dir.path(), b"payload of a, version 2");

    let store = open(dir.path()).await;
    let notes = store.recovery_notes().await.unwrap();
    assert!(
        notes.len() == 1 && notes[0].contains("stepped over") && notes[0].contains("saved to"),
        "{notes:?}"
    );
    assert_eq!(
        read(&store, "before").await.unwrap(),
        b"written before the damage"
    );
    assert_eq!(
        read(&store, "after").await.unwrap(),
        b"written after the damage"
    );
    assert_eq!(read(&store, "a").await.unwrap(), b"payload of a, version 3");
    assert_eq!(history(&store, "a").await, [1, 3]);
    let report = store.verify(&NoProgress).await.unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].problem, "log-corrupt");
    let saved: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("index.log.damaged-"))
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert!(report.problems[0].detail.contains(&saved[0]));
    // The log was rewritten without the damage, with version 3 marked as following a lost
    // one: format 3, which releases expecting whole histories refuse rather than misread.
    let log = std::fs::read(log_path(dir.path())).unwrap();
    assert_eq!(log[8], 3);
    assert!(occurrences(&log, b"payload of a, version 2").is_empty());

    // The store goes on: the next version follows the latest, and a re-open finds nothing
    // wrong and the same history.
    put(&store, "a", "payload of a, version 4").await;
    drop(store);
    let store = open(dir.path()).await;
    assert!(store.recovery_notes().await.unwrap().is_empty());
    assert_eq!(history(&store, "a").await, [1, 3, 4]);
    assert_eq!(read(&store, "a").await.unwrap(), b"payload of a, version 4");
    assert_eq!(
        read(&store, "after").await.unwrap(),
        b"written after the damage"
    );

    // Once the key with the gap is purged, a compaction writes format 2 again.
    store.purge(&Namespace::default(), &key("a")).await.unwrap();
    store.compact().await.unwrap();
    assert_eq!(std::fs::read(log_path(dir.path())).unwrap()[8], 2);
    drop(store);
    let store = open(dir.path()).await;
    assert!(store.recovery_notes().await.unwrap().is_empty());
    assert_eq!(
        read(&store, "before").await.unwrap(),
        b"written before the damage"
    );
}

/// A process that opened the store before the damage and only reads: its catch-up stops at a
/// corrupt record while a writer holds the lock (the bytes may be an append in progress), and
/// repairs it as a writer would once none does, so it serves what was written after the
/// damage without waiting for some process to write.
#[tokio::test]
async fn a_reader_catching_up_repairs_a_corrupt_record_once_no_writer_is_at_work() {
    let dir = tempfile::tempdir().unwrap();
    let reader = open(dir.path()).await;
    put(&reader, "before", "written before the damage").await;
    {
        let writer = open(dir.path()).await;
        put(&writer, "a", "payload of a, version 1").await;
        put(&writer, "a", "payload of a, version 2").await;
        put(&writer, "after", "written after the damage").await;
    }
    let damaged = damage_record_of(dir.path(), b"payload of a, version 2");

    // Another process's writer lock, held: the reader serves up to the damage only.
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.path().join("lock"))
        .unwrap();
    lock.try_lock().expect("no writer holds the lock");
    assert_eq!(
        read(&reader, "a").await.unwrap(),
        b"payload of a, version 1"
    );
    let err = read(&reader, "after").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(reader.recovery_notes().await.unwrap().is_empty());
    assert_eq!(std::fs::read(log_path(dir.path())).unwrap(), damaged);

    // Released: the next read repairs, and everything but the damaged record is back.
    lock.unlock().unwrap();
    assert_eq!(
        read(&reader, "after").await.unwrap(),
        b"written after the damage"
    );
    assert_eq!(
        read(&reader, "a").await.unwrap(),
        b"payload of a, version 1"
    );
    assert_eq!(history(&reader, "a").await, [1]);
    let notes = reader.recovery_notes().await.unwrap();
    assert!(
        notes.len() == 1 && notes[0].contains("saved to"),
        "{notes:?}"
    );
    let report = reader.verify(&NoProgress).await.unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].problem, "log-corrupt");
    // The repaired log reads the same in a new process, which finds nothing more to repair.
    drop(reader);
    let store = open(dir.path()).await;
    assert!(store.recovery_notes().await.unwrap().is_empty());
    assert_eq!(
        read(&store, "after").await.unwrap(),
        b"written after the damage"
    );
    assert_eq!(history(&store, "a").await, [1]);
}

#[tokio::test]
async fn a_lost_purge_and_a_lost_length_field_are_stepped_over_too() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).await;
        put(&store, "purged-key", "first life, version 1").await;
        put(&store, "purged-key", "first life, version 2").await;
        store
            .purge(&Namespace::default(), &key("purged-key"))
            .await
            .unwrap();
        put(&store, "purged-key", "second life, version 1").await;
        put(
            &store,
            "bent-length",
            "its record's length field is damaged",
        )
        .await;
        put(&store, "last", "the last record").await;
    }
    let log = std::fs::read(log_path(dir.path())).unwrap();
    // The purge record is the third record naming the key: damage a byte of that name.
    let names = occurrences(&log, b"purged-key");
    assert_eq!(names.len(), 4, "two versions, the purge, a new version");
    flip_log_byte(dir.path(), names[2] + 3);
    // The length field is the first byte of a frame: 4 + 4 + kind + namespace length +
    // "default" + key length before the key.
    let bent = occurrences(&log, b"bent-length");
    assert_eq!(bent.len(), 1);
    flip_log_byte(dir.path(), bent[0] - (4 + 4 + 1 + 1 + 7 + 2) + 1);

    let store = open(dir.path()).await;
    let notes = store.recovery_notes().await.unwrap();
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(
        notes.iter().all(|n| n.contains("stepped over")),
        "{notes:?}"
    );
    // The version 1 after the lost purge starts the key's history again.
    assert_eq!(history(&store, "purged-key").await, [1]);
    assert_eq!(
        read(&store, "purged-key").await.unwrap(),
        b"second life, version 1"
    );
    assert_eq!(
        read(&store, "bent-length").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(read(&store, "last").await.unwrap(), b"the last record");
    let report = store.verify(&NoProgress).await.unwrap();
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert!(report.problems.iter().all(|p| p.problem == "log-corrupt"));
    // No gap left behind (the purge was lost, not a version): format 2.
    assert_eq!(std::fs::read(log_path(dir.path())).unwrap()[8], 2);
    drop(store);
    let store = open(dir.path()).await;
    assert!(store.recovery_notes().await.unwrap().is_empty());
    assert_eq!(history(&store, "purged-key").await, [1]);
}

/// Single bit flips at seeded places all over a log of many records, one store per flip: the
/// store always opens, at most one key reads differently from what was written (an older
/// version, not found, or `Corrupt` for a flip in its inline payload bytes), every other key
/// keeps its whole history, and a second open finds nothing left to repair and the same state.
#[tokio::test]
async fn a_bit_flip_anywhere_in_the_log_costs_at_most_one_record() {
    let template = tempfile::tempdir().unwrap();
    // key -> payloads of its versions, oldest first.
    let mut written: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    {
        let store = open_with(template.path(), serde_json::json!({ "fsync": "never" })).await;
        for i in 0..20usize {
            let k = format!("key-{i:02}");
            let mut versions = Vec::new();
            for v in 0..1 + i % 3 {
                let payload = format!("payload of {k}, version {} ", v + 1).repeat(1 + (i + v) % 4);
                let payload = payload.into_bytes();
                put_bytes(&store, &Namespace::default(), &k, payload.clone()).await;
                versions.push(payload);
            }
            written.push((k, versions));
        }
        // A purged key whose numbering starts again.
        put(&store, "key-purged", "the first life of a purged key").await;
        store
            .purge(&Namespace::default(), &key("key-purged"))
            .await
            .unwrap();
        put(&store, "key-purged", "the second life of a purged key").await;
        written.push((
            "key-purged".into(),
            vec![b"the second life of a purged key".to_vec()],
        ));
    }
    let log = std::fs::read(log_path(template.path())).unwrap();

    /// What one key reads as: its latest payload (or the error kind) and its version count.
    async fn state_of(
        store: &FsBackend,
        k: &str,
    ) -> (std::result::Result<Vec<u8>, ErrorKind>, usize) {
        let latest = read(store, k).await.map_err(|e| e.kind());
        let versions = match store.versions(&Namespace::default(), &key(k)).await {
            Ok(v) => v.len(),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::NotFound, "{k}: {e}");
                0
            }
        };
        (latest, versions)
    }

    // How many rounds repaired something, and how many left a key reading differently.
    let (mut repaired, mut with_a_change) = (0, 0);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for round in 0..40 {
        // xorshift64: the same flips on every run.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = 16 + (seed % (log.len() as u64 - 16)) as usize; // never the header
        let bit = 1u8 << ((seed >> 40) % 8);
        let dir = tempfile::tempdir().unwrap();
        let mut damaged = log.clone();
        damaged[at] ^= bit;
        std::fs::write(log_path(dir.path()), &damaged).unwrap();
        let what = format!(
            "round {round}: bit {bit:#04x} of byte {at} of {}",
            log.len()
        );

        let store = open(dir.path()).await;
        repaired += usize::from(!store.recovery_notes().await.unwrap().is_empty());
        let mut states = Vec::new();
        let mut changed = Vec::new();
        for (k, versions) in &written {
            let state = state_of(&store, k).await;
            if state != (Ok(versions.last().unwrap().clone()), versions.len()) {
                changed.push(k.clone());
                match &state.0 {
                    Ok(bytes) => assert!(
                        versions.contains(bytes),
                        "{what}: {k} reads as bytes it never had"
                    ),
                    Err(kind) => assert!(
                        matches!(kind, ErrorKind::NotFound | ErrorKind::Corrupt),
                        "{what}: {k} fails with {kind:?}"
                    ),
                }
                assert!(state.1 <= versions.len(), "{what}: {k} gained versions");
            }
            states.push(state);
        }
        assert!(
            changed.len() <= 1,
            "{what}: more than one key changed: {changed:?}"
        );
        with_a_change += changed.len();
        drop(store);
        let store = open(dir.path()).await;
        assert_eq!(
            store.recovery_notes().await.unwrap(),
            Vec::<String>::new(),
            "{what}: the first open left something to repair"
        );
        for ((k, _), before) in written.iter().zip(&states) {
            assert_eq!(
                &state_of(&store, k).await,
                before,
                "{what}: {k} changed on re-open"
            );
        }
    }
    eprintln!("{repaired} of 40 flips needed a repair; {with_a_change} changed a key");
    // The flips hit records (not only inline payload bytes), and some cost a key its latest.
    assert!(
        repaired >= 10,
        "only {repaired} of 40 flips needed a repair"
    );
    assert!(
        with_a_change >= 5,
        "only {with_a_change} of 40 flips changed a key"
    );
}

#[tokio::test]
async fn deleted_and_altered_blobs_are_reported_by_key_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), serde_json::json!({ "inline_max": 0 })).await;
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
    // The payloads are small, so they lived in the log: the 50 purged ones went with it.
    assert_eq!(report.payloads_dropped, 50, "{report:?}");
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
    // The compaction freed them already; gc keeps the 10 live ones.
    let gc = store.gc(&NoProgress).await.unwrap();
    assert_eq!((gc.blobs_removed, gc.blobs_kept), (0, 10));
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

/// A put and a `gc` joined in one task (`join!`) both finish, whichever waits for the other:
/// neither blocks the task's thread while it waits for the payload lock (before, `gc` waited in
/// place for the put's pin while the put, on the same thread, could not run to release it).
#[test]
fn a_put_and_a_gc_joined_in_one_task_both_finish() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            for inline_max in [16 * 1024, 0] {
                let store = stowage_core::Stowage::builder()
                    .with_storage(
                        "fs",
                        serde_json::json!({ "root": dir.path().join(inline_max.to_string()), "inline_max": inline_max }),
                    )
                    .build()
                    .await
                    .unwrap();
                let ns = store.namespace("n").unwrap();
                for round in 0..20u32 {
                    let payload = vec![round as u8; 20_000 + round as usize];
                    let (put, gc) = tokio::join!(
                        ns.put("k", payload.clone(), Metadata::new()),
                        store.gc(&stowage_core::NoProgress)
                    );
                    gc.unwrap();
                    put.unwrap();
                    let (_, read) = ns.get_bytes("k").await.unwrap();
                    assert_eq!(&read[..], &payload[..], "round {round}");
                    if round % 2 == 0 {
                        ns.purge("k").await.unwrap();
                    }
                }
            }
        });
        let _ = tx.send(());
    });
    rx.recv_timeout(std::time::Duration::from_secs(120))
        .expect("a put and a gc joined in one task did not finish within 120 s (deadlock)");
}

/// Two backends on one root (two processes' view, in one process): the kit's random walk, each
/// step through either one, against one model — inline payloads, then payload files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_backends_on_one_root_agree_with_the_model() {
    for inline_max in [16 * 1024, 0] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let open = || async {
            let backend = stowage_providers::fs::factory()
                .create(serde_json::json!({ "root": root, "inline_max": inline_max }))
                .await
                .expect("creating an fs store");
            stowage_core::Stowage::from_backend(backend)
        };
        let (a, b) = (open().await, open().await);
        let result = stowage_core::testkit::random_operations_shared(&a, &b).await;
        assert!(
            result.is_ok(),
            "inline_max {inline_max}: {}",
            result.unwrap_err()
        );
    }
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
    // A root that is a file is the config's fault, named as such.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("afile");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = FsBackend::open(config(&file)).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(
        err.to_string().contains("storage.config.root")
            && err.to_string().contains("not a directory"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
}

// ---------------------------------------------------------------------------------------------
// Payloads kept inline in the index log.

fn log_len(root: &Path) -> u64 {
    std::fs::metadata(log_path(root)).unwrap().len()
}

/// Payload files under `blobs/`.
fn blob_files(root: &Path) -> usize {
    tree(&root.join("blobs"))
        .into_iter()
        .filter(|p| p.is_file())
        .count()
}

/// A put its precondition refuses writes nothing, a payload file included: a conditional put of
/// a payload too large for the log is checked before the payload is read, so a stale writer of
/// a large payload neither uploads it nor leaves a file for `gc`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_conditional_put_of_a_large_payload_reads_and_writes_none_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), serde_json::json!({ "inline_max": 1000 })).await;
    let ns = Namespace::default();
    put_bytes(&store, &ns, "k", patterned(1, 5000)).await;
    let (files, log) = (blob_files(dir.path()), log_len(dir.path()));
    assert_eq!(files, 1);
    // A body that fails if anything reads it: the refusal must come first.
    let unread = || {
        let chunks: Vec<stowage_core::Result<bytes::Bytes>> = vec![
            Ok(bytes::Bytes::from(patterned(2, 4000))),
            Err(stowage_core::Error::invalid_input(
                "the refused put read its payload",
            )),
        ];
        Body::from_stream(futures::stream::iter(chunks), Some(8000))
    };
    for mode in [PutMode::IfVersion(7), PutMode::Create, PutMode::Base(0)] {
        let err = store
            .put(&ns, &key("k"), unread(), Metadata::new(), mode)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict, "{mode:?}: {err}");
        assert!(err.to_string().contains("current version is 1"), "{err}");
    }
    assert_eq!(
        blob_files(dir.path()),
        files,
        "a refused put left a payload file"
    );
    assert_eq!(log_len(dir.path()), log);
    // The same puts with a precondition that holds do read and store it.
    let mut bytes = patterned(2, 4000);
    bytes.extend(patterned(3, 4000));
    let written = store
        .put(
            &ns,
            &key("k"),
            Body::from(bytes.clone()),
            Metadata::new(),
            PutMode::IfVersion(1),
        )
        .await
        .unwrap();
    assert_eq!(written.version, 2);
    assert_eq!(read_in(&store, &ns, "k").await.unwrap(), bytes);
    assert_eq!(blob_files(dir.path()), files + 1);
}

fn patterned(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn put_bytes(store: &FsBackend, ns: &Namespace, k: &str, bytes: Vec<u8>) {
    store
        .put(
            ns,
            &key(k),
            Body::from(bytes),
            Metadata::new(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
}

async fn read_in(store: &FsBackend, ns: &Namespace, k: &str) -> stowage_core::Result<Vec<u8>> {
    let (_, body) = store.get(ns, &key(k), GetOptions::default()).await?;
    Ok(body.into_bytes().await?.to_vec())
}

#[tokio::test]
async fn small_payloads_live_in_the_log_and_are_stored_once_per_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let (one, two) = (
        Namespace::new("one").unwrap(),
        Namespace::new("two").unwrap(),
    );
    let payload = patterned(1, 4000);

    let before = log_len(dir.path());
    put_bytes(&store, &one, "a", payload.clone()).await;
    let first = log_len(dir.path()) - before;
    assert!(
        first > 4000,
        "the first put appends the payload: {first} bytes"
    );
    for (ns, k) in [(&one, "b"), (&two, "a"), (&one, "a")] {
        let before = log_len(dir.path());
        put_bytes(&store, ns, k, payload.clone()).await;
        let grew = log_len(dir.path()) - before;
        assert!(
            grew < 300,
            "{ns}/{k}: a known payload is referenced, not copied: +{grew} bytes"
        );
    }
    assert_eq!(
        blob_files(dir.path()),
        0,
        "no payload file for small payloads"
    );

    // A second backend on the root (as another process would) reads them from the log.
    let other = open(dir.path()).await;
    for (ns, k) in [(&one, "a"), (&one, "b"), (&two, "a")] {
        assert_eq!(read_in(&other, ns, k).await.unwrap(), payload, "{ns}/{k}");
    }
    // Range reads slice the inline bytes.
    let (_, body) = other
        .get(
            &one,
            &key("b"),
            GetOptions {
                version: None,
                range: Some(stowage_core::ByteRange {
                    start: 100,
                    end: Some(110),
                }),
            },
        )
        .await
        .unwrap();
    assert_eq!(&body.into_bytes().await.unwrap()[..], &payload[100..110]);

    // While one reference is left the bytes stay, through compaction and re-open.
    store.purge(&one, &key("a")).await.unwrap();
    store.purge(&one, &key("b")).await.unwrap();
    let compacted = store.compact().await.unwrap();
    assert_eq!(compacted.payloads_dropped, 0, "{compacted:?}");
    assert_eq!(read_in(&other, &two, "a").await.unwrap(), payload);
    drop(store);
    let store = open(dir.path()).await;
    assert_eq!(read_in(&store, &two, "a").await.unwrap(), payload);

    // With the last reference gone, the next put of the same bytes stores them again.
    store.purge(&two, &key("a")).await.unwrap();
    let before = log_len(dir.path());
    put_bytes(&store, &one, "c", payload.clone()).await;
    assert!(log_len(dir.path()) - before > 4000);
    assert_eq!(read_in(&other, &one, "c").await.unwrap(), payload);
    // gc drops the purged copy with a compaction and reports it as a freed payload.
    let gc = store.gc(&NoProgress).await.unwrap();
    assert_eq!((gc.blobs_removed, gc.bytes_freed), (1, 4000), "{gc:?}");
    assert_eq!(read_in(&other, &one, "c").await.unwrap(), payload);
    assert!(store.verify(&NoProgress).await.unwrap().is_clean());
}

#[tokio::test]
async fn the_inline_limit_decides_where_a_payload_goes_for_bytes_and_streams() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), serde_json::json!({ "inline_max": 1000 })).await;
    let ns = Namespace::default();
    let chunked = |bytes: Vec<u8>, hint: Option<u64>| {
        let chunks: Vec<stowage_core::Result<bytes::Bytes>> = bytes
            .chunks(300)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        Body::from_stream(futures::stream::iter(chunks), hint)
    };
    let cases = [
        (
            "bytes at the limit",
            Body::from(patterned(2, 1000)),
            patterned(2, 1000),
            0,
        ),
        (
            "bytes over the limit",
            Body::from(patterned(3, 1001)),
            patterned(3, 1001),
            1,
        ),
        (
            "stream within, no size",
            chunked(patterned(4, 999), None),
            patterned(4, 999),
            0,
        ),
        (
            "stream over, no size",
            chunked(patterned(5, 2500), None),
            patterned(5, 2500),
            1,
        ),
        (
            "stream over, sized",
            chunked(patterned(6, 2500), Some(2500)),
            patterned(6, 2500),
            1,
        ),
        ("empty", Body::empty(), Vec::new(), 0),
    ];
    for (i, (what, body, expected, files)) in cases.into_iter().enumerate() {
        let before = blob_files(dir.path());
        let k = format!("k{i}");
        let info = store
            .put(&ns, &key(&k), body, Metadata::new(), PutMode::Overwrite)
            .await
            .unwrap();
        assert_eq!(info.size, expected.len() as u64, "{what}");
        assert_eq!(
            blob_files(dir.path()) - before,
            files,
            "{what}: payload files written"
        );
        assert_eq!(read_in(&store, &ns, &k).await.unwrap(), expected, "{what}");
    }
    // A payload stored as a file already is referenced, not inlined again.
    store
        .put(
            &ns,
            &key("copy"),
            Body::from(patterned(3, 1001)),
            Metadata::new(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let small_store = open_with(dir.path(), serde_json::json!({ "inline_max": 4096 })).await;
    let before = log_len(dir.path());
    put_bytes(&small_store, &ns, "copy2", patterned(3, 1001)).await;
    assert!(
        log_len(dir.path()) - before < 300,
        "the payload file is reused"
    );
    assert_eq!(
        read_in(&store, &ns, "copy2").await.unwrap(),
        patterned(3, 1001)
    );
}

#[tokio::test]
async fn torn_inline_bytes_at_the_end_of_the_log_are_cut_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).await;
        put_bytes(&store, &Namespace::default(), "keep", patterned(7, 3000)).await;
        put_bytes(&store, &Namespace::default(), "torn", patterned(8, 3000)).await;
    }
    // Cut inside the second payload's bytes: its record frame is whole, its bytes are not.
    let len = log_len(dir.path());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(log_path(dir.path()))
        .unwrap();
    f.set_len(len - 1000).unwrap();
    drop(f);

    let store = open(dir.path()).await;
    let notes = store.recovery_notes().await.unwrap();
    assert!(
        notes.len() == 1 && notes[0].contains("torn tail"),
        "{notes:?}"
    );
    let ns = Namespace::default();
    assert_eq!(
        read_in(&store, &ns, "keep").await.unwrap(),
        patterned(7, 3000)
    );
    assert_eq!(
        read_in(&store, &ns, "torn").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(store.verify(&NoProgress).await.unwrap().is_clean());
    put_bytes(&store, &ns, "torn", patterned(9, 3000)).await;
    drop(store);
    let store = open(dir.path()).await;
    assert!(store.recovery_notes().await.unwrap().is_empty());
    assert_eq!(
        read_in(&store, &ns, "torn").await.unwrap(),
        patterned(9, 3000)
    );
}

#[tokio::test]
async fn a_flipped_inline_byte_is_corrupt_for_that_payload_only() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Namespace::default();
    let bent = patterned(10, 2000);
    {
        let store = open(dir.path()).await;
        put_bytes(&store, &ns, "before", patterned(11, 2000)).await;
        put_bytes(&store, &ns, "bent", bent.clone()).await;
        put_bytes(&store, &ns, "bent-too", bent.clone()).await;
        put_bytes(&store, &ns, "after", patterned(12, 2000)).await;
    }
    let mut bytes = std::fs::read(log_path(dir.path())).unwrap();
    let at = bytes
        .windows(bent.len())
        .position(|w| w == &bent[..])
        .expect("the payload is in the log");
    bytes[at + 1234] ^= 0x08;
    std::fs::write(log_path(dir.path()), &bytes).unwrap();

    let store = open(dir.path()).await;
    // Replay does not read payload bytes: nothing to repair at open.
    assert!(store.recovery_notes().await.unwrap().is_empty());
    for k in ["bent", "bent-too"] {
        let err = read_in(&store, &ns, k).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        assert!(
            err.to_string().contains(&format!("default/{k} version 1"))
                && err.to_string().contains("index.log"),
            "{err}"
        );
    }
    assert_eq!(
        read_in(&store, &ns, "before").await.unwrap(),
        patterned(11, 2000)
    );
    assert_eq!(
        read_in(&store, &ns, "after").await.unwrap(),
        patterned(12, 2000)
    );
    let mut problems = store.verify(&NoProgress).await.unwrap().problems;
    problems.sort_by(|a, b| a.key.cmp(&b.key));
    let summary: Vec<_> = problems
        .iter()
        .map(|p| {
            (
                p.namespace.as_deref().unwrap(),
                p.key.as_deref().unwrap(),
                p.version.unwrap(),
                p.problem.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("default", "bent", 1, "corrupt"),
            ("default", "bent-too", 1, "corrupt")
        ]
    );
    // The store stays writable, and the new payload lands after the damaged one.
    put_bytes(&store, &ns, "fresh", patterned(13, 2000)).await;
    assert_eq!(
        read_in(&store, &ns, "fresh").await.unwrap(),
        patterned(13, 2000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_under_readers_in_flight_never_serves_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(open(dir.path()).await);
    let ns = Namespace::default();
    for i in 0..40u8 {
        put_bytes(
            &store,
            &ns,
            &format!("live/{i}"),
            patterned(i, 1500 + i as usize),
        )
        .await;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4u8)
        .map(|r| {
            let (store, stop, ns) = (store.clone(), stop.clone(), ns.clone());
            tokio::spawn(async move {
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let i = (reads as u8).wrapping_mul(7).wrapping_add(r) % 40;
                    let got = read_in(&store, &ns, &format!("live/{i}")).await.unwrap();
                    assert_eq!(got, patterned(i, 1500 + i as usize), "live/{i}");
                    reads += 1;
                    tokio::task::yield_now().await;
                }
                reads
            })
        })
        .collect();
    // Another backend on the root compacts too: this one notices a new log file mid-read.
    let other = open(dir.path()).await;
    for round in 0..30u8 {
        let scratch = format!("scratch/{round}");
        put_bytes(
            &store,
            &ns,
            &scratch,
            patterned(round.wrapping_add(100), 5000),
        )
        .await;
        store.purge(&ns, &key(&scratch)).await.unwrap();
        if round % 2 == 0 {
            store.compact().await.unwrap();
        } else {
            other.compact().await.unwrap();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
    assert!(store.verify(&NoProgress).await.unwrap().is_clean());
}

#[tokio::test]
async fn a_version_1_log_is_read_and_upgraded_on_the_first_write() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Namespace::default();
    // A version-1 store: payloads in files, records without inline bytes, version byte 1.
    {
        let store = open_with(dir.path(), serde_json::json!({ "inline_max": 0 })).await;
        put_bytes(&store, &ns, "old/a", patterned(20, 100)).await;
        put_bytes(&store, &ns, "old/a", patterned(21, 200)).await;
        put_bytes(&store, &ns, "old/b", patterned(22, 300)).await;
    }
    let mut bytes = std::fs::read(log_path(dir.path())).unwrap();
    assert_eq!(&bytes[..9], b"STOWFSIX\x02");
    bytes[8] = 1;
    std::fs::write(log_path(dir.path()), &bytes).unwrap();

    let store = open(dir.path()).await;
    assert!(store.recovery_notes().await.unwrap().is_empty());
    assert_eq!(
        read_in(&store, &ns, "old/a").await.unwrap(),
        patterned(21, 200)
    );
    assert_eq!(
        read_in(&store, &ns, "old/b").await.unwrap(),
        patterned(22, 300)
    );
    assert_eq!(
        std::fs::read(log_path(dir.path())).unwrap()[8],
        1,
        "reads change nothing"
    );

    put_bytes(&store, &ns, "new", patterned(23, 400)).await;
    // A payload stored as a file before the upgrade is still reused, not inlined.
    let before = log_len(dir.path());
    put_bytes(&store, &ns, "old/c", patterned(22, 300)).await;
    assert!(log_len(dir.path()) - before < 300);
    let upgraded = std::fs::read(log_path(dir.path())).unwrap();
    assert_eq!(upgraded[8], 2, "the first write raises the version byte");
    assert_eq!(
        upgraded[9..bytes.len()],
        bytes[9..],
        "old records are left as they were"
    );
    drop(store);
    let store = open(dir.path()).await;
    for (k, p) in [
        ("old/a", patterned(21, 200)),
        ("old/b", patterned(22, 300)),
        ("old/c", patterned(22, 300)),
        ("new", patterned(23, 400)),
    ] {
        assert_eq!(read_in(&store, &ns, k).await.unwrap(), p, "{k}");
    }
    assert_eq!(store.versions(&ns, &key("old/a")).await.unwrap().len(), 2);
    assert!(store.verify(&NoProgress).await.unwrap().is_clean());

    // A version this release does not know is refused with both versions named.
    drop(store);
    let mut future = std::fs::read(log_path(dir.path())).unwrap();
    future[8] = 4;
    std::fs::write(log_path(dir.path()), &future).unwrap();
    let err = FsBackend::open(config(dir.path())).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(
        err.to_string().contains("version 4") && err.to_string().contains("1 to 3"),
        "{err}"
    );
}

#[tokio::test]
async fn inline_max_is_checked_and_named() {
    let factory = stowage_providers::fs::factory();
    for bad in [
        serde_json::json!({ "root": "x", "inline_max": 2 * 1024 * 1024 }),
        serde_json::json!({ "root": "x", "inline_max": (1 << 20) + 1 }),
    ] {
        let err = factory.validate(&bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert!(
            err.to_string().contains("storage.config.inline_max"),
            "{err}"
        );
    }
    for bad in [
        serde_json::json!({ "root": "x", "inline_max": -1 }),
        serde_json::json!({ "root": "x", "inline_max": "16k" }),
    ] {
        let err = factory.validate(&bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert!(err.to_string().contains("inline_max"), "{err}");
    }
    for good in [0, 1, 16384, 1 << 20] {
        factory
            .validate(&serde_json::json!({ "root": "x", "inline_max": good }))
            .unwrap();
    }
    let schema = factory.config_schema();
    assert_eq!(schema["properties"]["inline_max"]["default"], 16384);
    assert_eq!(schema["properties"]["inline_max"]["maximum"], 1 << 20);
}

/// Sets a file's modification time `secs` seconds into the past.
fn backdate(path: &Path, secs: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(secs))
        .unwrap();
}

fn tmp_files(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// What a writer killed mid-put leaves: a temporary file nobody holds, quiet for ten minutes.
fn abandoned_tmp_file(root: &Path, n: u32, len: usize) -> PathBuf {
    let path = root.join("tmp").join(format!(".tmp-999999-{n}-0"));
    std::fs::write(&path, patterned(2, len)).unwrap();
    backdate(&path, 600);
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_of_killed_writers_are_removed_but_not_a_paused_one() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        std::sync::Arc::new(open_with(dir.path(), serde_json::json!({ "inline_max": 0 })).await);
    let ns = Namespace::default();

    // A put whose producer pauses after its first chunk, for as long as the test likes.
    let (tx, rx) = tokio::sync::mpsc::channel::<stowage_core::Result<bytes::Bytes>>(1);
    let body = Body::from_stream(
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) }),
        None,
    );
    let paused = {
        let (store, ns) = (store.clone(), ns.clone());
        tokio::spawn(async move {
            store
                .put(&ns, &key("slow"), body, Metadata::new(), PutMode::Overwrite)
                .await
        })
    };
    tx.send(Ok(bytes::Bytes::from(patterned(1, 70_000))))
        .await
        .unwrap();
    let live = loop {
        if let Some(f) = tmp_files(dir.path()).pop() {
            break f;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    // Its producer has been quiet for two hours, as far as the file's time says.
    backdate(&live, 7200);
    let dead = abandoned_tmp_file(dir.path(), 7, 5000);

    // Another process opening the root cleans up.
    let other = open_with(dir.path(), serde_json::json!({ "inline_max": 0 })).await;
    assert!(
        !dead.exists(),
        "the killed writer's file is removed at open"
    );
    assert!(live.exists(), "the paused writer's file is kept");
    // gc does not wait for a producer that pauses (the minute is a deadlock guard only), and
    // keeps the paused writer's file as well.
    let dead = abandoned_tmp_file(dir.path(), 9, 3000);
    let report = tokio::time::timeout(std::time::Duration::from_secs(60), other.gc(&NoProgress))
        .await
        .expect("gc waited for a paused put")
        .unwrap();
    assert_eq!((report.blobs_removed, report.bytes_freed), (1, 3000));
    assert!(!dead.exists());
    assert!(live.exists(), "gc keeps the paused writer's file");

    tx.send(Ok(bytes::Bytes::from(patterned(3, 30_000))))
        .await
        .unwrap();
    drop(tx);
    paused.await.unwrap().unwrap();
    let mut want = patterned(1, 70_000);
    want.extend(patterned(3, 30_000));
    assert_eq!(read_in(&other, &ns, "slow").await.unwrap(), want);
    assert!(tmp_files(dir.path()).is_empty());

    // gc removes them too, and counts their bytes as freed.
    let dead = abandoned_tmp_file(dir.path(), 8, 4000);
    let report = store.gc(&NoProgress).await.unwrap();
    assert!(!dead.exists());
    assert_eq!((report.blobs_removed, report.bytes_freed), (1, 4000));
    assert_eq!(read_in(&store, &ns, "slow").await.unwrap(), want);
    assert!(store.verify(&NoProgress).await.unwrap().is_clean());
}

/// Compacted logs left in the root itself by builds that wrote them there (a compaction killed
/// mid-way): removed at open and by `gc`, counted by `gc`, under the same rule as `tmp/` — one
/// a live process holds, or one written to a moment ago, stays. (A compaction killed now leaves
/// its file in `tmp/`: `fs_crash.rs` kills real ones.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_logs_left_in_the_root_by_killed_compactions_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root).unwrap();
    let leftover = |n: u32, len: usize, age: u64| {
        let path = root.join(format!(".tmp-999999-{n}-0"));
        std::fs::write(&path, patterned(4, len)).unwrap();
        if age > 0 {
            backdate(&path, age);
        }
        path
    };
    let dead = leftover(1, 70_000, 600);
    // Held by a live process (a compaction still writing, however slowly).
    let live = leftover(2, 1000, 7200);
    let holder = std::fs::File::open(&live).unwrap();
    holder.lock().unwrap();
    // Nobody holds it, but written a moment ago: a writer may not have locked it yet.
    let fresh = leftover(3, 10, 0);

    let store = open(root).await;
    assert!(
        !dead.exists(),
        "the killed compaction's log is removed at open"
    );
    assert!(live.exists() && fresh.exists());
    put(&store, "a", "alive").await;

    let dead = leftover(4, 50_000, 600);
    let report = store.gc(&NoProgress).await.unwrap();
    assert!(!dead.exists(), "gc removes it too");
    assert_eq!((report.blobs_removed, report.bytes_freed), (1, 50_000));
    assert!(
        live.exists() && fresh.exists(),
        "gc keeps what may be alive"
    );
    assert_eq!(read(&store, "a").await.unwrap(), b"alive");

    // Once its holder is gone, a quiet file goes as well.
    drop(holder);
    let report = store.gc(&NoProgress).await.unwrap();
    assert!(!live.exists());
    assert_eq!((report.blobs_removed, report.bytes_freed), (1, 1000));
    assert!(fresh.exists());
    // A compaction leaves nothing in the root or in `tmp/`.
    store.compact().await.unwrap();
    assert!(tmp_files(root).is_empty());
    let in_root: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert_eq!(in_root, vec![fresh.file_name().unwrap().to_string_lossy()]);
}

/// Warnings (and errors) logged by this test binary, as `field=value` text, for tests that
/// check a warning was given. Installed once, process-wide: a lock waiter's warning comes from
/// the provider's watcher thread, not from the test's.
fn captured_warnings() -> &'static std::sync::Mutex<Vec<String>> {
    use std::fmt::Write as _;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};

    static WARNINGS: std::sync::OnceLock<std::sync::Mutex<Vec<String>>> =
        std::sync::OnceLock::new();
    struct Capture;
    struct Text(String);
    impl Visit for Text {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            let _ = write!(self.0, "{}={value:?} ", field.name());
        }
    }
    impl tracing::Subscriber for Capture {
        fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
            *metadata.level() <= tracing::Level::WARN
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut text = Text(String::new());
            event.record(&mut text);
            WARNINGS.get().unwrap().lock().unwrap().push(text.0);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
    WARNINGS.get_or_init(|| {
        let _ = tracing::subscriber::set_global_default(Capture);
        std::sync::Mutex::new(Vec::new())
    })
}

/// Waits until a captured warning names `lock` (a minute at most: a machine that busy is
/// still far from it; the warning comes after about a second).
async fn warning_naming(lock: &Path) -> String {
    let name = lock.display().to_string();
    for _ in 0..1200 {
        if let Some(w) = captured_warnings()
            .lock()
            .unwrap()
            .iter()
            .find(|w| w.contains(&name))
        {
            return w.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no warning named {name} within a minute of waiting for it");
}

/// A writer waiting for `lock` or `gc.lock`, held by another process (here: another open file
/// of this one, which `flock` treats the same), says so once, naming the file, and goes on
/// waiting; it finishes once the holder lets go: a put for `lock`, a put of a payload file
/// while a `gc` holds `gc.lock`, and a `gc` while a write holds it shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_waiting_for_another_processes_lock_warns_once_and_goes_on() {
    captured_warnings();
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(open_with(dir.path(), serde_json::json!({})).await);
    let ns = Namespace::default();
    let other_process = |name: &str| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.path().join(name))
            .unwrap()
    };

    // A write transaction of another process.
    let holder = other_process("lock");
    holder.lock().unwrap();
    let waiting = {
        let (store, ns) = (store.clone(), ns.clone());
        tokio::spawn(async move {
            store
                .put(
                    &ns,
                    &key("w"),
                    Body::from("waited"),
                    Metadata::new(),
                    PutMode::Overwrite,
                )
                .await
        })
    };
    let warning = warning_naming(&dir.path().join("lock")).await;
    assert!(warning.contains("another process"), "{warning}");
    assert!(
        !waiting.is_finished(),
        "the put cannot commit while the lock is held"
    );
    holder.unlock().unwrap();
    assert_eq!(waiting.await.unwrap().unwrap().version, 1);
    assert_eq!(read(&store, "w").await.unwrap(), b"waited");

    // A gc of another process: a payload file's put waits to pin it.
    let holder = other_process("gc.lock");
    holder.lock().unwrap();
    let big = patterned(5, 100_000);
    let waiting = {
        let (store, ns, big) = (store.clone(), ns.clone(), big.clone());
        tokio::spawn(async move {
            store
                .put(
                    &ns,
                    &key("big"),
                    Body::from(big),
                    Metadata::new(),
                    PutMode::Overwrite,
                )
                .await
        })
    };
    let warning = warning_naming(&dir.path().join("gc.lock")).await;
    assert!(warning.contains("gc"), "{warning}");
    assert!(!waiting.is_finished());
    holder.unlock().unwrap();
    waiting.await.unwrap().unwrap();
    assert_eq!(read_in(&store, &ns, "big").await.unwrap(), big);

    // A write of another process between storing a payload file and committing it: gc waits.
    captured_warnings().lock().unwrap().clear();
    let holder = other_process("gc.lock");
    holder.lock_shared().unwrap();
    let gc = {
        let store = store.clone();
        tokio::spawn(async move { store.gc(&NoProgress).await })
    };
    let warning = warning_naming(&dir.path().join("gc.lock")).await;
    assert!(warning.contains("writes"), "{warning}");
    assert!(
        !gc.is_finished(),
        "gc cannot start while a write holds the pin"
    );
    holder.unlock().unwrap();
    let report = gc.await.unwrap().unwrap();
    assert_eq!(report.blobs_removed, 0);
    assert!(store.verify(&NoProgress).await.unwrap().is_clean());
    // Once per wait: each wait above warned once.
    let named = captured_warnings()
        .lock()
        .unwrap()
        .iter()
        .filter(|w| w.contains(&dir.path().join("gc.lock").display().to_string()))
        .count();
    assert_eq!(named, 1, "one warning per wait");
}

/// A put whose caller stops waiting (its task aborted) while the commit thread has its record,
/// beside a `gc` running over and over: the payload file stays pinned until the record is in
/// the log, so every version the store ends up with reads (was: versions whose payload file
/// gc had deleted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_put_beside_gc_never_leaves_a_version_without_its_payload() {
    let dir = tempfile::tempdir().unwrap();
    let store = Stowage::from_backend(std::sync::Arc::new(open(dir.path()).await));
    let h = store.namespace("acme").unwrap();
    let collecting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let gc = {
        let (store, collecting) = (store.clone(), collecting.clone());
        tokio::spawn(async move {
            while collecting.load(std::sync::atomic::Ordering::Relaxed) {
                store.gc(&NoProgress).await.unwrap();
            }
        })
    };
    for i in 0..300u32 {
        let h2 = h.clone();
        // Over inline_max (16 KiB): each payload is a file gc could take.
        let task = tokio::spawn(async move {
            h2.put(
                &format!("k{}", i % 10),
                vec![i as u8; 30_000 + i as usize],
                Metadata::new(),
            )
            .await
        });
        tokio::time::sleep(std::time::Duration::from_micros((i as u64 * 37) % 5000)).await;
        task.abort();
        let _ = task.await;
    }
    collecting.store(false, std::sync::atomic::Ordering::Relaxed);
    gc.await.unwrap();
    let report = store.verify(&NoProgress).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    for i in 0..10 {
        let key = format!("k{i}");
        for v in h.versions(&key).await.unwrap_or_default() {
            let (_, body) = h
                .get_with(
                    &key,
                    GetOptions {
                        version: Some(v.version),
                        range: None,
                    },
                )
                .await
                .unwrap();
            assert_eq!(body.into_bytes().await.unwrap().len() as u64, v.size);
        }
    }
}
