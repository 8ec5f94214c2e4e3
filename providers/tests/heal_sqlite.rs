//! The `sqlite` provider repairs a damaged payload when the same bytes are put again: a small
//! payload's `blobs.data` changed or cut short, a chunked payload's chunk changed, cut short
//! or deleted, each repaired by an in-memory and by a streamed put, under the same key and
//! under another one. Every version with that hash then reads back byte-exact and `verify` is
//! clean. A healthy duplicate stays one row: no rewrite, no second copy.
#![cfg(feature = "sqlite")]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sqlx::{Connection, Executor};
use stowage_core::testkit::{chunked_body, pattern};
use stowage_core::{
    Body, ContentHash, ErrorKind, GetOptions, Key, Metadata, Namespace, NoProgress, PutMode,
    RecordInfo, StorageBackend, StorageProviderFactory,
};
use stowage_providers::sqlite::SqliteFactory;

fn fresh_db() -> PathBuf {
    tempfile::Builder::new()
        .prefix("sqlite-heal-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("creating a temp dir")
        .keep()
        .join("heal.db")
}

async fn backend_at(path: &Path, chunk_size: usize) -> Arc<dyn StorageBackend> {
    let backend = SqliteFactory
        .create(serde_json::json!({ "path": path, "chunk_size": chunk_size }))
        .await
        .expect("creating the sqlite backend");
    backend.initialize().await.unwrap();
    backend
}

fn key(k: &str) -> Key {
    Key::new(k).unwrap()
}

/// The payload as one in-memory body, or as a stream of 1000-byte pieces with no size given.
fn body(bytes: &[u8], streamed: bool) -> Body {
    if streamed {
        chunked_body(bytes, 1000)
    } else {
        Body::from(bytes.to_vec())
    }
}

async fn put(b: &dyn StorageBackend, k: &str, bytes: &[u8], streamed: bool) -> RecordInfo {
    b.put(
        &Namespace::default(),
        &key(k),
        body(bytes, streamed),
        Metadata::new(),
        PutMode::Overwrite,
    )
    .await
    .unwrap()
}

async fn read(b: &dyn StorageBackend, k: &str, version: u64) -> stowage_core::Result<Vec<u8>> {
    let (_, body) = b
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

/// Runs `sql` (with `{hash}` replaced by the payload's hash as a blob literal) on a connection of
/// its own, as a user with the sqlite3 shell would.
async fn tamper(path: &Path, hash: &ContentHash, sql: &str) {
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    let sql = sql.replace("{hash}", &format!("X'{}'", hash.to_hex()));
    let done = conn.execute(sql.as_str()).await.unwrap();
    assert!(done.rows_affected() > 0, "{sql} changed nothing");
    conn.close().await.unwrap();
}

async fn scalar(path: &Path, sql: &str) -> i64 {
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
}

/// `get` of each version is `Corrupt` (at the call or while reading), and `verify` names each
/// one and tells the repair.
async fn assert_damaged(b: &dyn StorageBackend, versions: &[(&str, u64)], case: &str) {
    for &(k, v) in versions {
        let err = read(b, k, v).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{case}: {k} v{v}: {err}");
    }
    let problems = b.verify(&NoProgress).await.unwrap().problems;
    assert_eq!(problems.len(), versions.len(), "{case}: {problems:?}");
    for p in &problems {
        assert!(
            p.detail
                .contains("put the original bytes again under any key"),
            "{case}: {p:?}"
        );
    }
}

async fn assert_healed(
    b: &dyn StorageBackend,
    versions: &[(&str, u64)],
    payload: &[u8],
    case: &str,
) {
    for &(k, v) in versions {
        assert_eq!(
            read(b, k, v)
                .await
                .unwrap_or_else(|e| panic!("{case}: {k} v{v}: {e}")),
            payload,
            "{case}: {k} v{v}"
        );
    }
    let report = b.verify(&NoProgress).await.unwrap();
    assert!(report.is_clean(), "{case}: {:?}", report.problems);
}

/// Damages `payload` as `damage` says, re-puts it as `streamed` under `repair_key`, and checks
/// the repair: every version reads, `verify` is clean, one blob row for the hash.
async fn damage_and_repair(
    chunk_size: usize,
    payload: &[u8],
    damage: &str,
    streamed: bool,
    repair_key: &str,
) {
    let case = format!(
        "{} bytes in chunks of {chunk_size}, {damage}, streamed {streamed}, re-put under {repair_key}",
        payload.len()
    );
    let path = fresh_db();
    let b = backend_at(&path, chunk_size).await;
    let info = put(&*b, "a", payload, false).await;
    put(&*b, "b", payload, true).await;
    tamper(&path, &info.hash, damage).await;
    assert_damaged(&*b, &[("a", 1), ("b", 1)], &case).await;

    let again = put(&*b, repair_key, payload, streamed).await;
    assert_eq!(again.hash, info.hash, "{case}");
    let mut versions = vec![("a", 1), ("b", 1)];
    versions.push((repair_key, if repair_key == "a" { 2 } else { 1 }));
    assert_healed(&*b, &versions, payload, &case).await;
    assert_eq!(
        scalar(&path, "SELECT count(*) FROM blobs").await,
        1,
        "{case}"
    );
    let gc = b.gc(&NoProgress).await.unwrap();
    assert_eq!((gc.blobs_removed, gc.blobs_kept), (0, 1), "{case}: {gc:?}");
    // Another process opening the file reads the repaired payload.
    drop(b);
    let b = backend_at(&path, chunk_size).await;
    assert_healed(&*b, &versions, payload, &case).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_put_repairs_a_damaged_small_payload() {
    let payload = pattern(1, 3000);
    for damage in [
        // One bit flipped: same size.
        "UPDATE blobs SET data = CAST(substr(data, 1, 1499) || x'ff' || substr(data, 1501) AS BLOB) WHERE hash = {hash}",
        // Cut short.
        "UPDATE blobs SET data = substr(data, 1, 1000) WHERE hash = {hash}",
    ] {
        for streamed in [false, true] {
            for repair_key in ["a", "c"] {
                damage_and_repair(4096, &payload, damage, streamed, repair_key).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_put_repairs_a_damaged_chunked_payload() {
    // Three chunks of 4 KiB: small enough for the claim to compare it byte for byte.
    let payload = pattern(2, 10_000);
    for damage in [
        "UPDATE chunks SET data = CAST(substr(data, 1, 99) || x'00' || substr(data, 101) AS BLOB)
         WHERE idx = 1 AND blob_id = (SELECT id FROM blobs WHERE hash = {hash})",
        "UPDATE chunks SET data = substr(data, 1, 10)
         WHERE idx = 2 AND blob_id = (SELECT id FROM blobs WHERE hash = {hash})",
        "DELETE FROM chunks WHERE idx = 0 AND blob_id = (SELECT id FROM blobs WHERE hash = {hash})",
    ] {
        for streamed in [false, true] {
            for repair_key in ["a", "c"] {
                damage_and_repair(4096, &payload, damage, streamed, repair_key).await;
            }
        }
    }
}

/// Past the size the claim compares byte for byte, damage that changes a chunk's length or
/// the chunk count is still found from the layout alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_put_repairs_a_cut_chunk_of_a_payload_too_large_to_compare() {
    let payload = pattern(3, 1_200_000);
    for damage in [
        "UPDATE chunks SET data = substr(data, 1, 10)
         WHERE idx = 5 AND blob_id = (SELECT id FROM blobs WHERE hash = {hash})",
        "DELETE FROM chunks WHERE idx = 18 AND blob_id = (SELECT id FROM blobs WHERE hash = {hash})",
    ] {
        damage_and_repair(65536, &payload, damage, true, "c").await;
    }
}

/// A payload chunked under a smaller `chunk_size` and then put as a small payload (one chunk
/// under the new size): healthy, the row is left as it is; damaged, the put writes the bytes
/// into the row's `data`, which reads then use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_re_put_repairs_a_payload_chunked_under_a_smaller_chunk_size() {
    let payload = pattern(4, 10_000);
    let path = fresh_db();
    let info = put(&*backend_at(&path, 4096).await, "a", &payload, false).await;
    let b = backend_at(&path, 16384).await;
    put(&*b, "b", &payload, false).await;
    assert_eq!(
        scalar(&path, "SELECT count(*) FROM blobs WHERE data IS NULL").await,
        1,
        "a healthy chunked row is not rewritten"
    );
    assert_healed(&*b, &[("a", 1), ("b", 1)], &payload, "healthy").await;
    tamper(
        &path,
        &info.hash,
        "UPDATE chunks SET data = substr(data, 1, 10)
         WHERE idx = 1 AND blob_id = (SELECT id FROM blobs WHERE hash = {hash})",
    )
    .await;
    assert_damaged(&*b, &[("a", 1), ("b", 1)], "chunked, small re-put").await;
    put(&*b, "c", &payload, false).await;
    assert_healed(
        &*b,
        &[("a", 1), ("b", 1), ("c", 1)],
        &payload,
        "chunked, small re-put",
    )
    .await;
    assert_eq!(scalar(&path, "SELECT count(*) FROM blobs").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_duplicate_stays_one_row_untouched() {
    let path = fresh_db();
    let b = backend_at(&path, 4096).await;
    let small = pattern(5, 3000);
    let large = pattern(6, 10_000);
    let mut hashes = Vec::new();
    for (k, bytes) in [("small", &small), ("large", &large)] {
        hashes.push(put(&*b, &format!("{k}/1"), bytes, false).await.hash);
    }
    let rows = "SELECT count(*) FROM blobs";
    let ids = "SELECT sum(id) FROM blobs";
    let chunks = "SELECT count(*) FROM chunks";
    let before = (
        scalar(&path, rows).await,
        scalar(&path, ids).await,
        scalar(&path, chunks).await,
    );
    assert_eq!((before.0, before.2), (2, 3));
    // Counts every rewrite of a blob row's payload (the small put's upsert firing).
    {
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
        let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
        conn.execute(
            "CREATE TABLE test_rewrites (hash BLOB);
             CREATE TRIGGER test_count_rewrites AFTER UPDATE OF data ON blobs
             BEGIN INSERT INTO test_rewrites VALUES (new.hash); END;",
        )
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    for n in 2..=4 {
        for streamed in [false, true] {
            put(&*b, &format!("small/{n}{streamed}"), &small, streamed).await;
            put(&*b, &format!("large/{n}{streamed}"), &large, streamed).await;
        }
    }
    let after = (
        scalar(&path, rows).await,
        scalar(&path, ids).await,
        scalar(&path, chunks).await,
    );
    assert_eq!(
        after, before,
        "the same rows, ids and chunks: no second copy, no swap"
    );
    assert_eq!(
        scalar(&path, "SELECT count(*) FROM test_rewrites").await,
        0,
        "no payload rewritten"
    );
    let gc = b.gc(&NoProgress).await.unwrap();
    assert_eq!((gc.blobs_removed, gc.blobs_kept), (0, 2), "{gc:?}");
    assert_eq!(scalar(&path, chunks).await, 3);
    let report = b.verify(&NoProgress).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.blobs_checked, 2);
    assert_healed(
        &*b,
        &[("small/1", 1), ("small/4true", 1)],
        &small,
        "healthy",
    )
    .await;
    assert_healed(
        &*b,
        &[("large/1", 1), ("large/4false", 1)],
        &large,
        "healthy",
    )
    .await;
}

/// Past the size the claim compares byte for byte, a flipped bit that leaves every chunk its
/// length is not seen by a put: `verify` says so and gives the repair that works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_tells_how_to_repair_a_flip_no_put_can_see() {
    let payload = pattern(7, 1_200_000);
    let path = fresh_db();
    let b = backend_at(&path, 65536).await;
    let info = put(&*b, "a", &payload, true).await;
    tamper(
        &path,
        &info.hash,
        "UPDATE chunks SET data = CAST(substr(data, 1, 99) || x'00' || substr(data, 101) AS BLOB)
         WHERE idx = 3 AND blob_id = (SELECT id FROM blobs WHERE hash = {hash})",
    )
    .await;
    let problems = b.verify(&NoProgress).await.unwrap().problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].detail.contains("purge every version")
            && !problems[0].detail.contains("under any key"),
        "{problems:?}"
    );
    b.purge(&Namespace::default(), &key("a")).await.unwrap();
    b.gc(&NoProgress).await.unwrap();
    put(&*b, "a", &payload, true).await;
    assert_healed(
        &*b,
        &[("a", 1)],
        &payload,
        "purged, collected and put again",
    )
    .await;
}
