//! The `fs` provider repairs a damaged payload when the same bytes are put again: a payload
//! file bit-flipped or truncated on disk, inline bytes bit-flipped in the index log, each
//! repaired by an in-memory and by a streamed put, under the same key and under another one.
//! Every version with that hash then reads back byte-exact and `verify` is clean. A healthy
//! duplicate stays a duplicate: no second file, no second copy in the log.
#![cfg(feature = "fs")]

use std::path::{Path, PathBuf};

use stowage_core::testkit::{chunked_body, pattern};
use stowage_core::{
    Body, ContentHash, ErrorKind, GetOptions, Key, Metadata, Namespace, NoProgress, PutMode,
    RecordInfo, StorageBackend,
};
use stowage_providers::fs::{FsBackend, FsConfig};

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

/// The payload as one in-memory body, or as a stream of 4 KiB chunks with no size given.
fn body(bytes: &[u8], streamed: bool) -> Body {
    if streamed {
        chunked_body(bytes, 4096)
    } else {
        Body::from(bytes.to_vec())
    }
}

async fn put(store: &FsBackend, k: &str, bytes: &[u8], streamed: bool) -> RecordInfo {
    store
        .put(
            &Namespace::default(),
            &key(k),
            body(bytes, streamed),
            Metadata::new(),
            PutMode::Overwrite,
        )
        .await
        .unwrap()
}

async fn read(store: &FsBackend, k: &str, version: u64) -> stowage_core::Result<Vec<u8>> {
    let (_, body) = store
        .get(
            &Namespace::default(),
            &key(k),
            GetOptions {
                version: Some(version),
                range: None,
            },
        )
        .await?;
    Ok(body.into_bytes().await?.to_vec())
}

fn blob_path(root: &Path, hash: &ContentHash) -> PathBuf {
    let hex = hash.to_hex();
    root.join("blobs").join(&hex[..2]).join(&hex[2..])
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

fn log_path(root: &Path) -> PathBuf {
    root.join("index.log")
}

/// How many times `needle` occurs in the index log.
fn copies_in_log(root: &Path, needle: &[u8]) -> usize {
    let log = std::fs::read(log_path(root)).unwrap();
    log.windows(needle.len()).filter(|w| *w == needle).count()
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// One bit flipped in the middle: same size, other content.
    Flip,
    /// Cut to half its size.
    Truncate,
}

fn damage_file(path: &Path, damage: Damage) {
    let mut bytes = std::fs::read(path).unwrap();
    match damage {
        Damage::Flip => {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x10;
        }
        Damage::Truncate => bytes.truncate(bytes.len() / 2),
    }
    std::fs::write(path, bytes).unwrap();
}

/// Asserts that `versions` (key, version) all read `payload` and that `verify` is clean.
async fn assert_healed(store: &FsBackend, versions: &[(&str, u64)], payload: &[u8], case: &str) {
    for &(k, v) in versions {
        assert_eq!(
            read(store, k, v)
                .await
                .unwrap_or_else(|e| panic!("{case}: {k} v{v}: {e}")),
            payload,
            "{case}: {k} v{v}"
        );
    }
    let report = store.verify(&NoProgress).await.unwrap();
    assert!(report.is_clean(), "{case}: {:?}", report.problems);
}

/// `get` of each version is `Corrupt`, and `verify` names each one and tells the repair.
async fn assert_damaged(store: &FsBackend, versions: &[(&str, u64)], case: &str) {
    for &(k, v) in versions {
        let err = read(store, k, v).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{case}: {k} v{v}: {err}");
    }
    let problems = store.verify(&NoProgress).await.unwrap().problems;
    assert_eq!(problems.len(), versions.len(), "{case}: {problems:?}");
    for p in &problems {
        assert!(
            p.detail
                .contains("put the original bytes again under any key"),
            "{case}: {p:?}"
        );
    }
}

#[tokio::test]
async fn a_re_put_repairs_a_damaged_payload_file() {
    let payload = pattern(7, 300_000);
    for damage in [Damage::Flip, Damage::Truncate] {
        for streamed in [false, true] {
            for repair_key in ["a", "c"] {
                let case = format!("{damage:?}, streamed {streamed}, re-put under {repair_key}");
                let dir = tempfile::tempdir().unwrap();
                let store = open_with(dir.path(), serde_json::json!({})).await;
                let info = put(&store, "a", &payload, false).await;
                put(&store, "b", &payload, true).await;
                let blob = blob_path(dir.path(), &info.hash);
                damage_file(&blob, damage);
                assert_damaged(&store, &[("a", 1), ("b", 1)], &case).await;

                let again = put(&store, repair_key, &payload, streamed).await;
                assert_eq!(again.hash, info.hash, "{case}");
                let mut versions = vec![("a", 1), ("b", 1)];
                versions.push((repair_key, if repair_key == "a" { 2 } else { 1 }));
                assert_healed(&store, &versions, &payload, &case).await;
                assert_eq!(std::fs::read(&blob).unwrap(), payload, "{case}");
                // One payload file, no temporary file left, nothing for gc to remove.
                assert_eq!(files(&dir.path().join("blobs")).len(), 1, "{case}");
                assert!(files(&dir.path().join("tmp")).is_empty(), "{case}");
                let gc = store.gc(&NoProgress).await.unwrap();
                assert_eq!((gc.blobs_removed, gc.blobs_kept), (0, 1), "{case}: {gc:?}");
                // Another process opening the store reads the repaired file.
                drop(store);
                let store = open_with(dir.path(), serde_json::json!({})).await;
                assert_healed(&store, &versions, &payload, &case).await;
            }
        }
    }
}

#[tokio::test]
async fn a_re_put_stores_a_missing_payload_file_again() {
    let payload = pattern(8, 100_000);
    for streamed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with(dir.path(), serde_json::json!({})).await;
        let info = put(&store, "a", &payload, streamed).await;
        std::fs::remove_file(blob_path(dir.path(), &info.hash)).unwrap();
        let problems = store.verify(&NoProgress).await.unwrap().problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].problem, "missing");
        assert!(problems[0].detail.contains("put the original bytes again"));
        put(&store, "other", &payload, streamed).await;
        assert_healed(&store, &[("a", 1), ("other", 1)], &payload, "missing").await;
    }
}

#[tokio::test]
async fn a_re_put_repairs_damaged_inline_bytes_in_the_log() {
    let payload = pattern(9, 3000);
    for streamed in [false, true] {
        for repair_key in ["a", "c"] {
            let case = format!("streamed {streamed}, re-put under {repair_key}");
            let dir = tempfile::tempdir().unwrap();
            {
                let store = open_with(dir.path(), serde_json::json!({})).await;
                put(&store, "a", &payload, false).await;
                put(&store, "b", &payload, streamed).await;
                put(&store, "z", &pattern(1, 3000), false).await;
            }
            assert_eq!(copies_in_log(dir.path(), &payload), 1, "{case}");
            let mut log = std::fs::read(log_path(dir.path())).unwrap();
            let at = log
                .windows(payload.len())
                .position(|w| w == &payload[..])
                .unwrap();
            log[at + 1500] ^= 0x01;
            std::fs::write(log_path(dir.path()), &log).unwrap();

            let store = open_with(dir.path(), serde_json::json!({})).await;
            // A second process with the store open before the repair.
            let other = open_with(dir.path(), serde_json::json!({})).await;
            assert_damaged(&store, &[("a", 1), ("b", 1)], &case).await;

            put(&store, repair_key, &payload, streamed).await;
            let mut versions = vec![("a", 1), ("b", 1), ("z", 1)];
            if repair_key == "a" {
                versions.push(("a", 2));
            } else {
                versions.push(("c", 1));
            }
            let read_versions: Vec<_> = versions
                .iter()
                .copied()
                .filter(|(k, _)| *k != "z")
                .collect();
            assert_healed(&store, &read_versions, &payload, &case).await;
            assert_healed(&other, &read_versions, &payload, &case).await;
            assert_eq!(
                read(&store, "z", 1).await.unwrap(),
                pattern(1, 3000),
                "{case}"
            );
            assert_eq!(copies_in_log(dir.path(), &payload), 1, "{case}");
            assert!(files(&dir.path().join("blobs")).is_empty(), "{case}");

            // Replay takes the later copy; a compaction keeps it and drops the damaged one.
            drop((store, other));
            let store = open_with(dir.path(), serde_json::json!({})).await;
            assert_healed(&store, &read_versions, &payload, &case).await;
            let compacted = store.compact().await.unwrap();
            assert!(
                compacted.bytes_after + 3000 <= compacted.bytes_before,
                "{case}: {compacted:?}"
            );
            assert_eq!(copies_in_log(dir.path(), &payload), 1, "{case}");
            assert_healed(&store, &read_versions, &payload, &case).await;
            drop(store);
            let store = open_with(dir.path(), serde_json::json!({})).await;
            assert_healed(&store, &read_versions, &payload, &case).await;
        }
    }
}

/// A payload stored as a file (`inline_max = 0`) and damaged is repaired by a small put once
/// the store keeps such payloads inline: the bytes go into the log, which reads prefer.
#[tokio::test]
async fn a_small_re_put_repairs_a_damaged_file_by_keeping_the_bytes_inline() {
    let payload = pattern(3, 5000);
    let dir = tempfile::tempdir().unwrap();
    let info = {
        let store = open_with(dir.path(), serde_json::json!({ "inline_max": 0 })).await;
        put(&store, "a", &payload, false).await
    };
    damage_file(&blob_path(dir.path(), &info.hash), Damage::Flip);
    let store = open_with(dir.path(), serde_json::json!({})).await;
    assert_damaged(&store, &[("a", 1)], "file, inline re-put").await;
    put(&store, "b", &payload, false).await;
    assert_healed(
        &store,
        &[("a", 1), ("b", 1)],
        &payload,
        "file, inline re-put",
    )
    .await;
    assert_eq!(copies_in_log(dir.path(), &payload), 1);
}

#[tokio::test]
async fn a_healthy_duplicate_stays_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), serde_json::json!({})).await;
    let large = pattern(5, 200_000);
    let info = put(&store, "large/1", &large, false).await;
    let blob = blob_path(dir.path(), &info.hash);
    let modified = std::fs::metadata(&blob).unwrap().modified().unwrap();
    // An in-memory duplicate compares and writes nothing: the same file, untouched.
    #[cfg(unix)]
    let inode = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&blob).unwrap().ino()
    };
    put(&store, "large/2", &large, false).await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&blob).unwrap().ino(), inode);
    }
    assert_eq!(
        std::fs::metadata(&blob).unwrap().modified().unwrap(),
        modified
    );
    // A streamed duplicate replaces the file with its own copy: still one file.
    put(&store, "large/3", &large, true).await;
    assert_eq!(files(&dir.path().join("blobs")).len(), 1);
    assert!(files(&dir.path().join("tmp")).is_empty());

    let small = pattern(6, 2000);
    put(&store, "small/1", &small, false).await;
    let before = std::fs::metadata(log_path(dir.path())).unwrap().len();
    put(&store, "small/2", &small, false).await;
    put(&store, "small/3", &small, true).await;
    let grew = std::fs::metadata(log_path(dir.path())).unwrap().len() - before;
    assert!(grew < 400, "two references, no second copy: +{grew} bytes");
    assert_eq!(copies_in_log(dir.path(), &small), 1);

    let gc = store.gc(&NoProgress).await.unwrap();
    assert_eq!((gc.blobs_removed, gc.blobs_kept), (0, 2), "{gc:?}");
    assert!(store.verify(&NoProgress).await.unwrap().is_clean());
    for (k, bytes) in [
        ("large/1", &large),
        ("large/2", &large),
        ("large/3", &large),
        ("small/1", &small),
        ("small/2", &small),
        ("small/3", &small),
    ] {
        assert_eq!(&read(&store, k, 1).await.unwrap(), bytes, "{k}");
    }
}
