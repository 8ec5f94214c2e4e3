//! Tests of the `sqlite` provider: the conformance kit on a fresh database file, then what only
//! this provider has to prove (persistence, migrations, refusing foreign or damaged files,
//! racing writers from separate pools, large streamed payloads, dedup, SQL search equal to
//! `Query::apply`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use stowage_core::{
    Body, ByteRange, ContentHash, ErrorKind, GetOptions, Key, ListOptions, Metadata, Namespace,
    NoProgress, Order, PutMode, Query, RecordInfo, StorageBackend, StorageProviderFactory,
    Timestamp,
};
use stowage_providers::sqlite::{self, schema, SqliteFactory};

/// A fresh directory under cargo's per-target temp dir; kept so a failing test can be inspected.
fn fresh_dir() -> PathBuf {
    tempfile::Builder::new()
        .prefix("sqlite-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("creating a temp dir")
        .keep()
}

async fn backend_at(path: &Path, extra: serde_json::Value) -> Arc<dyn StorageBackend> {
    let mut config = serde_json::json!({ "path": path });
    if let serde_json::Value::Object(extra) = extra {
        for (k, v) in extra {
            config[k] = v;
        }
    }
    SqliteFactory
        .create(config)
        .await
        .expect("creating the sqlite backend")
}

async fn fresh_backend() -> (PathBuf, Arc<dyn StorageBackend>) {
    let path = fresh_dir().join("nested").join("stowage.db");
    let backend = backend_at(&path, serde_json::json!({})).await;
    backend.initialize().await.expect("initializing");
    (path, backend)
}

fn ns(name: &str) -> Namespace {
    Namespace::new(name).unwrap()
}

fn key(name: &str) -> Key {
    Key::new(name).unwrap()
}

/// `body` under `key`, no metadata, overwriting; panics on error.
async fn put_plain(
    b: &dyn StorageBackend,
    ns: &Namespace,
    key: &Key,
    body: impl Into<Body>,
) -> RecordInfo {
    b.put(ns, key, body.into(), Metadata::new(), PutMode::Overwrite)
        .await
        .unwrap()
}

async fn read_all(body: Body) -> Vec<u8> {
    body.into_bytes().await.expect("reading body").to_vec()
}

mod conformance {
    stowage_core::conformance_tests!(async {
        let dir = super::fresh_dir();
        let backend = stowage_core::StorageProviderFactory::create(
            &stowage_providers::sqlite::SqliteFactory,
            serde_json::json!({ "path": dir.join("conformance.db") }),
        )
        .await
        .expect("creating the sqlite backend");
        stowage_core::Stowage::from_backend(backend)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_run_all_through_the_factory() {
    let path = fresh_dir().join("run_all.db");
    let report =
        stowage_core::testkit::run_all(sqlite::factory(), serde_json::json!({ "path": path }))
            .await;
    report.assert_passed();
}

#[test]
fn config_is_validated_without_io() {
    let f = SqliteFactory;
    assert!(f.validate(&serde_json::json!({"path": "x/y.db"})).is_ok());
    let unknown = f
        .validate(&serde_json::json!({"path": "x.db", "pth": 1}))
        .unwrap_err();
    assert_eq!(unknown.kind(), ErrorKind::InvalidConfig);
    assert!(unknown.to_string().contains("pth"), "{unknown}");
    let missing = f.validate(&serde_json::json!({})).unwrap_err();
    assert!(missing.to_string().contains("path"), "{missing}");
    let small = f
        .validate(&serde_json::json!({"path": "x.db", "chunk_size": 10}))
        .unwrap_err();
    assert!(small.to_string().contains("chunk_size"), "{small}");
    let sync = f
        .validate(&serde_json::json!({"path": "x.db", "synchronous": "sometimes"}))
        .unwrap_err();
    assert!(sync.to_string().contains("synchronous"), "{sync}");
    let zero = f
        .validate(&serde_json::json!({"path": "x.db", "max_connections": 0}))
        .unwrap_err();
    assert!(zero.to_string().contains("max_connections"), "{zero}");
    assert!(f
        .validate(&serde_json::json!({"path": "x.db", "synchronous": "normal", "busy_timeout_ms": 10, "chunk_size": 4096, "max_connections": 2}))
        .is_ok());
    let schema = f.config_schema();
    assert_eq!(schema["required"][0], "path");
    assert_eq!(schema["additionalProperties"], false);
    for field in [
        "path",
        "max_connections",
        "busy_timeout_ms",
        "chunk_size",
        "synchronous",
    ] {
        assert!(
            schema["properties"][field].is_object(),
            "schema lacks {field}"
        );
    }
}

#[test]
fn builtin_registry_knows_sqlite() {
    let registry = stowage_core::Registry::with_builtins();
    assert!(registry.contains("sqlite"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_reopen() {
    let dir = fresh_dir();
    let path = dir.join("reopen.db");
    let n = ns("tenant");
    {
        let b = backend_at(&path, serde_json::json!({})).await;
        b.put(
            &n,
            &key("a/1"),
            Body::from("one"),
            Metadata::new().with_tag("t"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
        put_plain(&*b, &n, &key("a/1"), Body::from("two")).await;
    }
    let b = backend_at(&path, serde_json::json!({})).await;
    let (info, body) = b.get(&n, &key("a/1"), GetOptions::default()).await.unwrap();
    assert_eq!(info.version, 2);
    assert_eq!(read_all(body).await, b"two");
    let (old, body) = b
        .get(
            &n,
            &key("a/1"),
            GetOptions {
                version: Some(1),
                range: None,
            },
        )
        .await
        .unwrap();
    assert!(old.metadata.tags.contains("t"));
    assert_eq!(read_all(body).await, b"one");
    assert_eq!(
        schema::schema_version_of(&path).await.unwrap(),
        schema::SCHEMA_VERSION
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_upgrade_old_files() {
    use sqlx::{Connection, Executor};
    let dir = fresh_dir();
    // A file at schema version 1, as an older build left it, with one record.
    let path = dir.join("v1.db");
    {
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
        conn.execute(schema::MIGRATIONS[0].sql).await.unwrap();
        conn.execute(
            format!(
                "PRAGMA application_id = {}; PRAGMA user_version = 1;",
                schema::APPLICATION_ID
            )
            .as_str(),
        )
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    assert_eq!(schema::schema_version_of(&path).await.unwrap(), 1);
    let b = backend_at(&path, serde_json::json!({})).await;
    b.initialize().await.unwrap();
    assert_eq!(
        schema::schema_version_of(&path).await.unwrap(),
        schema::SCHEMA_VERSION
    );
    let n = ns("default");
    b.put(
        &n,
        &key("k"),
        Body::from("v"),
        Metadata::new().with_attribute("n", 3),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    // A streamed payload is staged in the column migration 4 added, and claimed.
    let streamed = vec![9u8; 3 * sqlite::DEFAULT_CHUNK_SIZE + 1];
    let pieces = streamed
        .chunks(100_000)
        .map(|p| Ok(Bytes::copy_from_slice(p)))
        .collect::<Vec<_>>();
    let body = Body::from_stream(futures::stream::iter(pieces), None);
    put_plain(&*b, &n, &key("streamed"), body).await;
    let (_, body) = b
        .get(&n, &key("streamed"), GetOptions::default())
        .await
        .unwrap();
    assert!(read_all(body).await == streamed);
    drop(b);
    // Opening again, from several backends at once, applies nothing twice.
    let mut opens = Vec::new();
    for _ in 0..4 {
        let path = path.clone();
        opens.push(tokio::spawn(async move {
            let b = backend_at(&path, serde_json::json!({})).await;
            b.initialize().await.map(|_| b)
        }));
    }
    for open in opens {
        let b = open.await.unwrap().expect("reopening");
        let page = b.search(&n, &Query::new().attr_eq("n", 3)).await.unwrap();
        assert_eq!(page.items.len(), 1);
    }
    assert_eq!(
        schema::schema_version_of(&path).await.unwrap(),
        schema::SCHEMA_VERSION
    );
    let indexes: Vec<String> = {
        let mut conn = read_only(&path).await;
        sqlx::query_scalar(
            "SELECT name FROM sqlite_schema WHERE type = 'index' AND name = 'attrs_by_num'",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap()
    };
    assert_eq!(
        indexes,
        vec!["attrs_by_num".to_string()],
        "migration 2 ran exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_newer_and_damaged_files_are_refused() {
    use sqlx::{Connection, Executor};
    let dir = fresh_dir();
    let opts = |p: &Path| {
        sqlx::sqlite::SqliteConnectOptions::new()
            .filename(p)
            .create_if_missing(true)
    };

    // Another application's SQLite database: refused and left untouched.
    let foreign = dir.join("foreign.db");
    {
        let mut conn = sqlx::SqliteConnection::connect_with(&opts(&foreign))
            .await
            .unwrap();
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let before = std::fs::read(&foreign).unwrap();
    let err = backend_at(&foreign, serde_json::json!({}))
        .await
        .initialize()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("foreign.db") && msg.contains("invoices"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(&foreign).unwrap(),
        before,
        "a foreign file must not change"
    );

    // A stowage database from a newer build.
    let newer = dir.join("newer.db");
    {
        let mut conn = sqlx::SqliteConnection::connect_with(&opts(&newer))
            .await
            .unwrap();
        conn.execute(
            format!(
                "PRAGMA application_id = {}; PRAGMA user_version = {};",
                schema::APPLICATION_ID,
                schema::SCHEMA_VERSION + 1
            )
            .as_str(),
        )
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    let err = backend_at(&newer, serde_json::json!({}))
        .await
        .initialize()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(
        err.to_string().contains("newer stowage") && err.to_string().contains("newer.db"),
        "{err}"
    );

    // Not SQLite at all.
    let text = dir.join("notes.txt");
    std::fs::write(&text, vec![b'x'; 8192]).unwrap();
    let err = backend_at(&text, serde_json::json!({}))
        .await
        .initialize()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("notes.txt"), "{err}");

    // A stowage database whose pages were overwritten: an error naming the file, no panic.
    let damaged = dir.join("damaged.db");
    {
        let b = backend_at(&damaged, serde_json::json!({})).await;
        let n = ns("default");
        for i in 0..200 {
            b.put(
                &n,
                &key(&format!("k/{i}")),
                Body::from(vec![i as u8; 3000]),
                Metadata::new().with_tag("x"),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        }
    }
    {
        // Fold the WAL into the main file so the damage below hits the only copy.
        let mut conn = sqlx::SqliteConnection::connect_with(&opts(&damaged))
            .await
            .unwrap();
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let mut bytes = std::fs::read(&damaged).unwrap();
    assert!(bytes.len() > 64 * 1024);
    let end = bytes.len() - 4096;
    for b in &mut bytes[8192..end] {
        *b = 0xA5;
    }
    std::fs::write(&damaged, &bytes).unwrap();
    let b = backend_at(&damaged, serde_json::json!({})).await;
    let n = ns("default");
    let outcome = async {
        b.initialize().await?;
        b.list(&n, ListOptions::default()).await?;
        let (_, body) = b.get(&n, &key("k/5"), GetOptions::default()).await?;
        body.into_bytes().await?;
        b.verify(&NoProgress).await
    }
    .await;
    let err = outcome.expect_err("a damaged file must not read back as sound");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("damaged.db"), "{err}");
}

/// Two backends on one database file (two processes' view): the kit's random walk, each step
/// through either one, against one model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_backends_on_one_file_agree_with_the_model() {
    let path = fresh_dir().join("shared.db");
    let a = stowage_core::Stowage::from_backend(backend_at(&path, serde_json::json!({})).await);
    let b = stowage_core::Stowage::from_backend(backend_at(&path, serde_json::json!({})).await);
    let result = stowage_core::testkit::random_operations_shared(&a, &b).await;
    assert!(result.is_ok(), "{}", result.unwrap_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_if_version_writers_from_separate_pools() {
    let dir = fresh_dir();
    let path = dir.join("race.db");
    let n = ns("race");
    let k = key("counter");
    let first = backend_at(&path, serde_json::json!({})).await;
    put_plain(&*first, &n, &k, Body::from("0")).await;
    let writers = 16;
    let mut backends = Vec::new();
    for _ in 0..writers {
        let b = backend_at(
            &path,
            serde_json::json!({"max_connections": 2, "busy_timeout_ms": 30000}),
        )
        .await;
        b.initialize().await.unwrap();
        backends.push(b);
    }
    for round in 1..=3u64 {
        let barrier = Arc::new(tokio::sync::Barrier::new(writers));
        let mut tasks = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            let b = b.clone();
            let (n, k, barrier) = (n.clone(), k.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                // Half the writers send a multi-chunk streamed payload (the other code path).
                let body = if i % 2 == 0 {
                    Body::from(format!("{round}-{i}"))
                } else {
                    let chunks = (0..3).map(move |_| Ok(Bytes::from(vec![i as u8; 200 * 1024])));
                    Body::from_stream(futures::stream::iter(chunks), None)
                };
                b.put(&n, &k, body, Metadata::new(), PutMode::IfVersion(round))
                    .await
            }));
        }
        let mut winners = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(info) => {
                    assert_eq!(info.version, round + 1);
                    winners += 1;
                }
                Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e}"),
            }
        }
        assert_eq!(winners, 1, "round {round}: exactly one writer wins");
    }
    let versions = first.versions(&n, &k).await.unwrap();
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_streamed_payload_with_range_reads() {
    let (path, b) = fresh_backend().await;
    let n = ns("big");
    let k = key("blob.bin");
    const TOTAL: usize = 64 << 20;
    const PIECE: usize = 100_003; // deliberately not a multiple of the chunk size
    let byte_at = |i: usize| (i.wrapping_mul(31) ^ (i >> 11)) as u8;
    let mut hasher = stowage_core::ContentHasher::new();
    let pieces = (0..TOTAL).step_by(PIECE).map(move |start| {
        let end = (start + PIECE).min(TOTAL);
        Ok(Bytes::from((start..end).map(byte_at).collect::<Vec<u8>>()))
    });
    for p in pieces.clone() {
        hasher.update(&p.as_ref().unwrap()[..]);
    }
    let (expected, _) = hasher.finish();
    let body = Body::from_stream(futures::stream::iter(pieces), Some(TOTAL as u64));
    let info = put_plain(&*b, &n, &k, body).await;
    assert_eq!(info.size, TOTAL as u64);
    assert_eq!(info.hash, expected);

    // Whole read streams chunk by chunk (no chunk larger than the configured size).
    let (_, body) = b.get(&n, &k, GetOptions::default()).await.unwrap();
    let mut stream = body.into_stream();
    let mut got = stowage_core::ContentHasher::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.len() <= sqlite::DEFAULT_CHUNK_SIZE);
        got.update(&chunk);
    }
    assert_eq!(got.finish(), (expected, TOTAL as u64));

    for (start, end) in [
        (0u64, 10u64),
        (262_143, 262_145),
        (5_000_000, 5_700_000),
        (TOTAL as u64 - 7, TOTAL as u64),
    ] {
        let (_, body) = b
            .get(
                &n,
                &k,
                GetOptions {
                    version: None,
                    range: Some(ByteRange {
                        start,
                        end: Some(end),
                    }),
                },
            )
            .await
            .unwrap();
        let bytes = read_all(body).await;
        let want: Vec<u8> = (start as usize..end as usize).map(byte_at).collect();
        assert_eq!(bytes, want, "range {start}..{end}");
    }
    let (_, tail) = b
        .get(
            &n,
            &k,
            GetOptions {
                version: None,
                range: Some(ByteRange {
                    start: TOTAL as u64 - 3,
                    end: None,
                }),
            },
        )
        .await
        .unwrap();
    assert_eq!(read_all(tail).await.len(), 3);

    let chunks = count(&path, "chunks").await;
    assert_eq!(
        chunks,
        (TOTAL as u64).div_ceil(sqlite::DEFAULT_CHUNK_SIZE as u64) as i64
    );
}

/// A read-only connection to the database at `path`, for looking behind the provider.
async fn read_only(path: &Path) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true);
    sqlx::SqliteConnection::connect_with(&opts).await.unwrap()
}

/// `SELECT count(*) FROM {rows}` in the database at `path`; `rows` is a table, optionally with
/// a `WHERE` clause.
async fn count(path: &Path, rows: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {rows}"))
        .fetch_one(&mut read_only(path).await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_is_visible_in_the_chunks_table() {
    let dir = fresh_dir();
    let path = dir.join("dedup.db");
    let b = backend_at(&path, serde_json::json!({"chunk_size": 4096})).await;
    let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let (a, c) = (ns("alpha"), ns("beta"));
    // Same bytes: in memory, streamed in odd pieces, in another namespace.
    put_plain(&*b, &a, &key("x"), Body::from(payload.clone())).await;
    let pieces: Vec<_> = payload
        .chunks(777)
        .map(|p| Ok(Bytes::copy_from_slice(p)))
        .collect();
    b.put(
        &a,
        &key("y"),
        Body::from_stream(futures::stream::iter(pieces), None),
        Metadata::new(),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    put_plain(&*b, &c, &key("z"), Body::from(payload.clone())).await;
    assert_eq!(count(&path, "blobs").await, 1);
    assert_eq!(
        count(&path, "chunks").await,
        3,
        "10 000 bytes in 4 KiB chunks, stored once"
    );
    // A small payload shared by two keys is one blob and one chunk too.
    put_plain(&*b, &a, &key("s1"), Body::from("tiny")).await;
    put_plain(&*b, &c, &key("s2"), Body::from("tiny")).await;
    assert_eq!(count(&path, "blobs").await, 2);
    assert_eq!(
        count(&path, "chunks").await,
        3,
        "a payload of one chunk lives in its blob row"
    );
    assert_eq!(count(&path, "blobs WHERE data IS NOT NULL").await, 1);
    let (_, body) = b.get(&a, &key("y"), GetOptions::default()).await.unwrap();
    assert_eq!(read_all(body).await, payload);

    // Purging every user of a payload lets gc reclaim it, chunks included.
    for (n, k) in [(&a, "x"), (&a, "y"), (&c, "z")] {
        b.purge(n, &key(k)).await.unwrap();
    }
    let report = b.gc(&NoProgress).await.unwrap();
    assert_eq!(report.blobs_removed, 1);
    assert_eq!(report.bytes_freed, 10_000);
    assert_eq!(report.blobs_kept, 1);
    assert_eq!(count(&path, "chunks").await, 0);
    assert_eq!(count(&path, "blobs WHERE data IS NOT NULL").await, 1);
    assert!(b.verify(&NoProgress).await.unwrap().is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_records_of_a_damaged_payload() {
    use sqlx::{Connection, Executor};
    let dir = fresh_dir();
    let path = dir.join("verify.db");
    let b = backend_at(&path, serde_json::json!({})).await;
    let n = ns("v");
    put_plain(&*b, &n, &key("good"), Body::from("fine")).await;
    let bad = put_plain(&*b, &n, &key("bad"), Body::from("original")).await;
    let clean = b.verify(&NoProgress).await.unwrap();
    assert!(clean.is_clean());
    assert_eq!(clean.blobs_checked, 2);
    assert_eq!(clean.records_checked, 2);
    {
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
        let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
        let sql = format!(
            "UPDATE blobs SET data = CAST('tampered' AS BLOB) WHERE hash = X'{}'",
            bad.hash.to_hex()
        );
        conn.execute(sql.as_str()).await.unwrap();
        conn.close().await.unwrap();
    }
    let report = b.verify(&NoProgress).await.unwrap();
    assert_eq!(report.problems.len(), 1, "{report:?}");
    let p = &report.problems[0];
    assert_eq!(p.key.as_deref(), Some("bad"));
    assert_eq!(p.version, Some(1));
    assert_eq!(p.problem, "corrupt");
    // A read of the damaged record fails (at `get` or while reading) instead of serving wrong bytes.
    let read = async {
        let (_, body) = b.get(&n, &key("bad"), GetOptions::default()).await?;
        body.into_bytes().await
    };
    let err = read.await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
}

/// A tiny deterministic generator, so a failing case can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn random_value(rng: &mut Rng) -> serde_json::Value {
    match rng.below(8) {
        0 | 1 => serde_json::json!(rng.below(20) as i64 - 5),
        2 => serde_json::json!((rng.below(40) as f64) / 4.0),
        3 | 4 => serde_json::json!(*rng.pick(&["a", "b", "B", "ä", "ab", "", "zz"])),
        5 => serde_json::json!(rng.below(2) == 0),
        6 => serde_json::Value::Null,
        _ => serde_json::json!([rng.below(3)]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_and_list_equal_the_reference_rules() {
    let (_, b) = fresh_backend().await;
    let n = ns("search");
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let keys = [
        "a", "a/b", "a/c", "ab", "b/1", "b/2", "b/10", "é/x", "日本/1", "z", "a~x", "Z", "𝄞/x",
    ];
    // Writes, overwrites and deletes across keys so `latest` differs from first versions.
    for step in 0..160 {
        let k: &str = rng.pick::<&str>(&keys[..]);
        let k = key(k);
        if rng.below(7) == 0 {
            let _ = b.delete(&n, &k, Default::default()).await;
            continue;
        }
        let mut meta = Metadata::new();
        for t in ["red", "green", "blue"] {
            if rng.below(2) == 0 {
                meta = meta.with_tag(t);
            }
        }
        if rng.below(3) > 0 {
            meta = meta.with_content_type(*rng.pick(&["text/plain", "application/json"]));
        }
        for name in ["n", "s", "m"] {
            if rng.below(3) > 0 {
                meta = meta.with_attribute(name, random_value(&mut rng));
            }
        }
        b.put(
            &n,
            &k,
            Body::from(format!("payload {step}")),
            meta,
            PutMode::Overwrite,
        )
        .await
        .unwrap();
        if step % 16 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
    // Every key's latest version, deleted ones included: the reference's candidates.
    let mut candidates: Vec<RecordInfo> = Vec::new();
    for k in keys {
        if let Ok(vs) = b.versions(&n, &key(k)).await {
            candidates.push(vs.last().unwrap().clone());
        }
    }
    let times: Vec<Timestamp> = candidates.iter().map(|c| c.updated_at).collect();
    let (mut non_empty, mut paged) = (0, 0);
    for case in 0..400 {
        let mut q = Query::new();
        if rng.below(3) == 0 {
            q.prefix = Some(
                rng.pick(&["a", "a/", "b/1", "", "é", "日", "z", "𝄞", "a~"])
                    .to_string(),
            );
        }
        for t in ["red", "green", "blue"] {
            if rng.below(4) == 0 {
                q.tags.insert(t.to_string());
            }
        }
        for _ in 0..rng.below(3) {
            let name = rng.pick(&["n", "s", "m", "missing"]).to_string();
            if rng.below(2) == 0 {
                q.attributes.push(stowage_core::AttrFilter::Eq {
                    name,
                    value: random_value(&mut rng),
                });
            } else {
                let min = (rng.below(3) > 0).then(|| random_value(&mut rng));
                let max = (rng.below(3) > 0).then(|| random_value(&mut rng));
                q.attributes
                    .push(stowage_core::AttrFilter::Range { name, min, max });
            }
        }
        if rng.below(4) == 0 {
            q.content_type = Some(rng.pick(&["text/plain", "application/json"]).to_string());
        }
        if rng.below(4) == 0 {
            q.updated.since = Some(*rng.pick(&times));
        }
        if rng.below(4) == 0 {
            q.created.until = Some(*rng.pick(&times));
        }
        q.order = *rng.pick(&[Order::Key, Order::Created, Order::Updated]);
        q.descending = rng.below(2) == 0;
        q.include_deleted = rng.below(3) == 0;
        if rng.below(2) == 0 {
            q.limit = Some(rng.below(5) as usize);
        }
        // Walk every page; each must equal the reference's page for the same cursor.
        let mut pages = 0;
        loop {
            let want = q.apply(candidates.clone()).unwrap();
            let got = b.search(&n, &q).await.unwrap();
            assert_eq!(
                got.items
                    .iter()
                    .map(|i| (i.key.to_string(), i.version))
                    .collect::<Vec<_>>(),
                want.items
                    .iter()
                    .map(|i| (i.key.to_string(), i.version))
                    .collect::<Vec<_>>(),
                "case {case}: {q:?}"
            );
            assert_eq!(got.items, want.items, "case {case}");
            assert_eq!(got.next, want.next, "case {case}: {q:?}");
            non_empty += usize::from(!want.items.is_empty());
            paged += usize::from(want.next.is_some());
            pages += 1;
            match want.next {
                Some(c) if pages < 20 => q.cursor = Some(c),
                _ => break,
            }
        }
    }
    // The random queries must exercise matches and pages, not only empty results.
    assert!(
        non_empty > 150 && paged > 50,
        "weak cases: {non_empty} non-empty, {paged} paged"
    );
    for case in 0..200 {
        let mut o = ListOptions::default();
        if rng.below(2) == 0 {
            o.prefix = Some(rng.pick(&["a", "a/", "b/", "", "日", "zz"]).to_string());
        }
        if rng.below(3) == 0 {
            o.start_after = Some(rng.pick(&keys[..]).to_string());
        }
        o.include_deleted = rng.below(2) == 0;
        if rng.below(2) == 0 {
            o.limit = Some(rng.below(4) as usize);
        }
        let mut pages = 0;
        loop {
            let want = o.apply(candidates.clone()).unwrap();
            let got = b.list(&n, o.clone()).await.unwrap();
            assert_eq!(got, want, "list case {case}: {o:?}");
            pages += 1;
            match want.next {
                Some(c) if pages < 20 => o.cursor = Some(c),
                _ => break,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_hash_of_stored_payload_matches() {
    let (_, b) = fresh_backend().await;
    let n = ns("h");
    let info = b
        .put(
            &n,
            &key("k"),
            Body::from("hello"),
            Metadata::new(),
            PutMode::Create,
        )
        .await
        .unwrap();
    assert_eq!(info.hash, ContentHash::of(b"hello"));
    let err = b
        .put(
            &n,
            &key("k"),
            Body::from("again"),
            Metadata::new(),
            PutMode::Create,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            stowage_core::Error::Conflict {
                current: Some(1),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(b.namespaces().await.unwrap(), vec![n]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_many_writes_all_or_nothing() {
    use stowage_providers::sqlite::{SqliteBackend, SqliteConfig};
    let path = fresh_dir().join("many.db");
    let b = SqliteBackend::new(SqliteConfig::new(&path));
    let n = ns("bulk");
    put_plain(&b, &n, &key("k/1"), Body::from("old")).await;
    let written = b
        .put_many(
            &n,
            (1..=3).map(|i| {
                (
                    key(&format!("k/{i}")),
                    Bytes::from(format!("v{i}")),
                    Metadata::new().with_tag("bulk"),
                )
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        written.iter().map(|w| w.version).collect::<Vec<_>>(),
        vec![2, 1, 1]
    );
    let found = b.search(&n, &Query::new().tag("bulk")).await.unwrap();
    assert_eq!(found.items, written);
    let (_, body) = b.get(&n, &key("k/1"), GetOptions::default()).await.unwrap();
    assert_eq!(read_all(body).await, b"v1");

    // One payload too large for a chunk: refused, and the records before it are not kept.
    let too_big = Bytes::from(vec![7u8; sqlite::DEFAULT_CHUNK_SIZE + 1]);
    let err = b
        .put_many(
            &n,
            [(key("k/4"), Bytes::from("ok")), (key("k/5"), too_big)]
                .map(|(k, d)| (k, d, Metadata::new())),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert_eq!(
        b.head(&n, &key("k/4"), None).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_on_one_backend_share_commits_correctly() {
    let (_, b) = fresh_backend().await;
    let n = ns("group");
    // Many small puts at once on one backend are written in shared transactions; each must
    // still see the ones before it: one Create wins, one IfVersion(1) wins, overwrites count up.
    let mut tasks = Vec::new();
    for i in 0..48u64 {
        let b = b.clone();
        let n = n.clone();
        tasks.push(tokio::spawn(async move {
            let (k, mode) = match i % 3 {
                0 => ("create-race", PutMode::Create),
                1 => ("counter", PutMode::Overwrite),
                _ => ("if-version", PutMode::IfVersion(0)),
            };
            let r = b
                .put(
                    &n,
                    &key(k),
                    Body::from(format!("w{i}")),
                    Metadata::new(),
                    mode,
                )
                .await;
            (i % 3, r)
        }));
    }
    let mut wins = [0usize; 3];
    let mut counter_versions = Vec::new();
    for t in tasks {
        let (kind, r) = t.await.unwrap();
        match r {
            Ok(info) => {
                wins[kind as usize] += 1;
                if kind == 1 {
                    counter_versions.push(info.version);
                }
            }
            Err(e) => {
                assert_ne!(kind, 1, "an overwrite failed: {e}");
                assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
            }
        }
    }
    assert_eq!(wins, [1, 16, 1]);
    counter_versions.sort_unstable();
    assert_eq!(counter_versions, (1..=16).collect::<Vec<u64>>());
    let (info, body) = b
        .get(&n, &key("counter"), GetOptions::default())
        .await
        .unwrap();
    assert_eq!(info.version, 16);
    assert!(read_all(body).await.starts_with(b"w"));
    assert!(b.verify(&NoProgress).await.unwrap().is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_put_that_fails_inside_a_shared_commit_fails_alone() {
    use sqlx::Connection;
    let (path, b) = fresh_backend().await;
    let n = ns("group");
    // Another program's trigger refuses one key: its put fails at the SQL level, inside
    // whatever batch it shares. A batch written in one round trip must then be undone and
    // written again put by put, so that only the refused put fails.
    let mut conn = sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(&path),
    )
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON versions WHEN NEW.key = 'poison'
         BEGIN SELECT RAISE(ABORT, 'poisoned by a test'); END",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    for round in 0..8u64 {
        let mut tasks = Vec::new();
        for i in 0..24u64 {
            let (b, n) = (b.clone(), n.clone());
            tasks.push(tokio::spawn(async move {
                let k = if i == 7 {
                    "poison".to_string()
                } else {
                    format!("k/{i}")
                };
                let r = b
                    .put(
                        &n,
                        &key(&k),
                        Body::from(format!("r{round}w{i}")),
                        Metadata::new(),
                        PutMode::Overwrite,
                    )
                    .await;
                (k, r)
            }));
        }
        for t in tasks {
            let (k, r) = t.await.unwrap();
            match r {
                Ok(info) => {
                    assert_ne!(k, "poison", "the refused put was written");
                    assert_eq!(info.version, round + 1, "{k}");
                }
                Err(e) => {
                    assert_eq!(k, "poison", "a put sharing the commit failed: {e}");
                    let chain = e.chain();
                    assert!(chain.contains("poisoned by a test"), "{chain}");
                }
            }
        }
    }
    for i in (0..24u64).filter(|&i| i != 7) {
        let (info, body) = b
            .get(&n, &key(&format!("k/{i}")), GetOptions::default())
            .await
            .unwrap();
        assert_eq!(info.version, 8);
        assert_eq!(read_all(body).await, format!("r7w{i}").into_bytes());
    }
    assert_eq!(
        b.head(&n, &key("poison"), None).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(count(&path, "versions WHERE key = 'poison'").await, 0);
    assert!(b.verify(&NoProgress).await.unwrap().is_clean());
}

/// Writes a record as schema version 2 stored it: the payload in rows of `chunks` under a blob
/// row without `data`, the version numbered after the key's last one; `None` writes a tombstone,
/// which copies the last version's payload reference and metadata, as `delete` does.
async fn put_in_v2_layout(
    conn: &mut sqlx::SqliteConnection,
    (n, k): (&str, &str),
    payload: Option<&[u8]>,
    metadata: &Metadata,
) {
    const CHUNK: usize = 4096;
    let at = Timestamp::now().as_micros();
    let Some(payload) = payload else {
        sqlx::query(
            "INSERT INTO versions (ns, key, version, hash, size, created_at, updated_at, deleted_at, metadata)
             SELECT ns, key, version + 1, hash, size, created_at, ?3, ?3, metadata FROM latest
             WHERE ns = ?1 AND key = ?2",
        )
        .bind(n)
        .bind(k)
        .bind(at)
        .execute(&mut *conn)
        .await
        .unwrap();
        return;
    };
    let hash = ContentHash::of(payload);
    let new_blob: Option<i64> = sqlx::query_scalar(
        "INSERT INTO blobs (hash, size, chunk_size, chunk_count) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (hash) DO NOTHING RETURNING id",
    )
    .bind(&hash.as_bytes()[..])
    .bind(payload.len() as i64)
    .bind(CHUNK as i64)
    .bind(payload.len().div_ceil(CHUNK) as i64)
    .fetch_optional(&mut *conn)
    .await
    .unwrap();
    if let Some(id) = new_blob {
        for (idx, piece) in payload.chunks(CHUNK).enumerate() {
            sqlx::query("INSERT INTO chunks (blob_id, idx, data) VALUES (?1, ?2, ?3)")
                .bind(id)
                .bind(idx as i64)
                .bind(piece)
                .execute(&mut *conn)
                .await
                .unwrap();
        }
    }
    sqlx::query(
        "INSERT INTO versions (ns, key, version, hash, size, created_at, updated_at, deleted_at, metadata)
         SELECT ?1, ?2, coalesce(max(version), 0) + 1, ?3, ?4, coalesce(min(created_at), ?5), ?5,
                NULL, ?6
         FROM versions WHERE ns = ?1 AND key = ?2",
    )
    .bind(n)
    .bind(k)
    .bind(&hash.as_bytes()[..])
    .bind(payload.len() as i64)
    .bind(at)
    .bind(serde_json::to_string(metadata).unwrap())
    .execute(&mut *conn)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_file_migrates_in_place_and_reads_back_byte_exact() {
    use sqlx::{Connection, Executor};
    let dir = fresh_dir();
    let path = dir.join("v2.db");
    let big: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let tagged = Metadata::new().with_tag("old").with_attribute("n", 1);
    // (namespace, key, payload; None for a tombstone), in the order written.
    let writes: Vec<(&str, &str, Option<Vec<u8>>)> = vec![
        ("old", "small", Some(b"first small".to_vec())),
        ("old", "small", Some(b"second small".to_vec())),
        ("old", "big", Some(big.clone())),
        ("old", "gone", Some(b"bye".to_vec())),
        ("old", "gone", None),
        ("old", "shared", Some(b"first small".to_vec())),
        ("other", "empty", Some(Vec::new())),
    ];
    {
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
        for step in &schema::MIGRATIONS[..2] {
            conn.execute(step.sql).await.unwrap();
        }
        conn.execute(
            format!(
                "PRAGMA application_id = {}; PRAGMA user_version = 2;",
                schema::APPLICATION_ID
            )
            .as_str(),
        )
        .await
        .unwrap();
        for (n, k, payload) in &writes {
            put_in_v2_layout(&mut conn, (n, k), payload.as_deref(), &tagged).await;
        }
        conn.close().await.unwrap();
    }
    assert_eq!(schema::schema_version_of(&path).await.unwrap(), 2);
    let (blobs_before, chunks_before) = (count(&path, "blobs").await, count(&path, "chunks").await);
    assert_eq!(
        (blobs_before, chunks_before),
        (5, 6),
        "the fixture is in the old layout"
    );

    let b = backend_at(&path, serde_json::json!({})).await;
    b.initialize().await.unwrap();
    assert_eq!(
        schema::schema_version_of(&path).await.unwrap(),
        schema::SCHEMA_VERSION
    );
    // Every version reads back byte-exact, by number and (when live) as the latest.
    let mut numbers = std::collections::HashMap::<(&str, &str), u64>::new();
    for (n, k, payload) in &writes {
        let v = numbers.entry((n, k)).or_default();
        *v += 1;
        let Some(payload) = payload else {
            let err = b
                .get(&ns(n), &key(k), GetOptions::default())
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
            continue;
        };
        let (info, body) = b
            .get(
                &ns(n),
                &key(k),
                GetOptions {
                    version: Some(*v),
                    range: None,
                },
            )
            .await
            .unwrap();
        assert_eq!((info.version, info.size), (*v, payload.len() as u64));
        assert_eq!(info.hash, ContentHash::of(payload));
        assert_eq!(info.metadata, tagged);
        assert_eq!(&read_all(body).await, payload, "{n}/{k} version {v}");
    }
    let (_, latest) = b
        .get(&ns("old"), &key("small"), GetOptions::default())
        .await
        .unwrap();
    assert_eq!(read_all(latest).await, b"second small");
    let (_, piece) = b
        .get(
            &ns("old"),
            &key("big"),
            GetOptions {
                version: None,
                range: Some(ByteRange {
                    start: 4000,
                    end: Some(8200),
                }),
            },
        )
        .await
        .unwrap();
    assert_eq!(read_all(piece).await, &big[4000..8200]);
    let found = b
        .search(&ns("old"), &Query::new().tag("old").attr_eq("n", 1))
        .await
        .unwrap();
    let found: Vec<_> = found
        .items
        .iter()
        .map(|r| r.key.as_str().to_string())
        .collect();
    assert_eq!(found, ["big", "shared", "small"]);
    let report = b.verify(&NoProgress).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.blobs_checked, 5);

    // New writes dedup against payloads stored the old way, and new payloads go inline.
    let again = put_plain(&*b, &ns("new"), &key("again"), Body::from("first small")).await;
    assert_eq!(again.hash, ContentHash::of(b"first small"));
    assert_eq!(count(&path, "blobs").await, blobs_before);
    put_plain(&*b, &ns("new"), &key("fresh"), Body::from("fresh bytes")).await;
    assert_eq!(count(&path, "blobs WHERE data IS NOT NULL").await, 1);
    let (_, body) = b
        .get(&ns("new"), &key("again"), GetOptions::default())
        .await
        .unwrap();
    assert_eq!(read_all(body).await, b"first small");

    // gc still reclaims a payload stored the old way, chunks included.
    b.purge(&ns("old"), &key("big")).await.unwrap();
    let gc = b.gc(&NoProgress).await.unwrap();
    assert_eq!((gc.blobs_removed, gc.bytes_freed), (1, big.len() as u64));
    assert_eq!(count(&path, "chunks").await, chunks_before - 3);
    assert!(b.verify(&NoProgress).await.unwrap().is_clean());
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_put_is_written_whole_or_not_at_all() {
    use futures::FutureExt;
    let dir = fresh_dir();
    let path = dir.join("cancel.db");
    // One connection in all: the pool keeps one for reading, the writer its own.
    let b = backend_at(&path, serde_json::json!({"max_connections": 1})).await;
    let n = ns("cancel");
    let tags = Metadata::new().with_tag("t").with_attribute("i", 1);
    let mut kept = Vec::new();
    for i in 0..24u32 {
        // A put that completes first, so the write connection is open and the cancelled put
        // below gets as far as handing its statements to SQLite within its first poll.
        put_plain(&*b, &n, &key("between"), Body::from(format!("b{i}"))).await;
        let k = key(&format!("k{i:02}"));
        let payload = format!("payload {i}");
        let put = b.put(
            &n,
            &k,
            Body::from(payload.clone()),
            tags.clone(),
            PutMode::Overwrite,
        );
        // Dropped after one poll, or after a short while, whatever stage it reached.
        let finished = if i % 2 == 0 {
            put.now_or_never().is_some()
        } else {
            tokio::time::timeout(std::time::Duration::from_micros(50 * i as u64), put)
                .await
                .is_ok()
        };
        if finished {
            kept.push(k.clone());
        }
    }
    // Nothing holds SQLite's write lock: another backend on the file writes at once.
    let other = backend_at(&path, serde_json::json!({"busy_timeout_ms": 10000})).await;
    put_plain(&*other, &n, &key("other"), Body::from("o")).await;
    put_plain(&*b, &n, &key("after"), Body::from("a")).await;
    // Each cancelled put is there whole (version, payload, tags index) or not at all.
    let mut present = Vec::new();
    for i in 0..24u32 {
        let k = key(&format!("k{i:02}"));
        match b.get(&n, &k, GetOptions::default()).await {
            Ok((info, body)) => {
                assert_eq!(info.version, 1);
                assert_eq!(info.metadata, tags);
                assert_eq!(read_all(body).await, format!("payload {i}").into_bytes());
                present.push(k);
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound, "{e}"),
        }
    }
    for k in &kept {
        assert!(present.contains(k), "{k} completed but is missing");
    }
    let indexed = b
        .search(&n, &Query::new().tag("t").attr_eq("i", 1))
        .await
        .unwrap();
    let indexed: Vec<Key> = indexed.items.into_iter().map(|r| r.key).collect();
    assert_eq!(
        indexed, present,
        "the tag and attribute indexes match the records"
    );
    let versions = b.versions(&n, &key("between")).await.unwrap();
    assert_eq!(versions.len(), 24);
    assert!(b.verify(&NoProgress).await.unwrap().is_clean());
    b.close().await.unwrap();
    other.close().await.unwrap();
    let late = b
        .put(
            &n,
            &key("late"),
            Body::from("x"),
            Metadata::new(),
            PutMode::Overwrite,
        )
        .await;
    assert!(
        late.is_err(),
        "a closed backend opens no new write connection"
    );
}

/// A connection of its own to the database at `path` holding SQLite's write lock (an open
/// `BEGIN IMMEDIATE` with a row written), as another process's long write would.
async fn hold_write_lock(path: &Path) -> sqlx::SqliteConnection {
    use sqlx::{Connection, Executor};
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    conn.execute("BEGIN IMMEDIATE").await.unwrap();
    conn.execute(
        "INSERT INTO blobs (hash, size, chunk_size, chunk_count) VALUES (zeroblob(32), 0, 1, 0)",
    )
    .await
    .unwrap();
    conn
}

/// A version stamped later than this process's clock (another process that read its clock
/// after this one but committed first, or one whose clock runs ahead) is never followed by an
/// earlier `updated_at`: small and streamed puts, deletes and restores all write at least the
/// previous version's time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updated_at_never_goes_back_after_another_writer_stamped_later() {
    use sqlx::{Connection, Executor};
    let (path, backend) = fresh_backend().await;
    let (ns, k) = (ns("n"), key("doc"));
    let big = vec![7u8; 3 << 20];
    let steps: [&str; 4] = ["small put", "streamed put", "delete", "restore"];
    let mut previous = put_plain(&*backend, &ns, &k, "one").await;
    for step in steps {
        // Another writer's version, one minute ahead of this clock.
        let ahead = previous.updated_at.as_micros() + 60_000_000;
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
        let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
        for table in ["versions", "latest"] {
            conn.execute(
                sqlx::query(&format!(
                    "UPDATE {table} SET updated_at = ?1, deleted_at = CASE WHEN deleted_at IS NULL THEN NULL ELSE ?1 END
                     WHERE ns = 'n' AND key = 'doc' AND version = ?2"
                ))
                .bind(ahead)
                .bind(previous.version as i64),
            )
            .await
            .unwrap();
        }
        conn.close().await.unwrap();
        let next = match step {
            "small put" => put_plain(&*backend, &ns, &k, "two").await,
            "streamed put" => backend
                .put(
                    &ns,
                    &k,
                    Body::from_stream(
                        futures::stream::iter(
                            big.chunks(1 << 20)
                                .map(|c| Ok(Bytes::copy_from_slice(c)))
                                .collect::<Vec<_>>(),
                        ),
                        None,
                    ),
                    Metadata::new(),
                    PutMode::Overwrite,
                )
                .await
                .unwrap(),
            "delete" => backend.delete(&ns, &k, Default::default()).await.unwrap(),
            _ => backend.restore(&ns, &k, None).await.unwrap(),
        };
        assert!(
            next.updated_at.as_micros() >= ahead,
            "{step}: updated_at {} is before the previous version's {}",
            next.updated_at.as_micros(),
            ahead
        );
        if step == "delete" {
            assert_eq!(next.deleted_at, Some(next.updated_at), "{step}: deleted_at");
        }
        let read = backend.versions(&ns, &k).await.unwrap();
        assert_eq!(read.last(), Some(&next), "{step}: stored as returned");
        previous = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_and_reading_do_not_wait_for_another_writer() {
    use sqlx::Executor;
    let dir = fresh_dir();
    let path = dir.join("busy.db");
    let n = ns("busy");
    let first = backend_at(&path, serde_json::json!({})).await;
    put_plain(&*first, &n, &key("k"), Body::from("value")).await;
    first.close().await.unwrap();
    let mut holder = hold_write_lock(&path).await;
    // A busy timeout of 0: anything that asks for the write lock fails at once instead of
    // waiting, so the open and the reads below prove they never ask for it.
    let reader = backend_at(&path, serde_json::json!({"busy_timeout_ms": 0})).await;
    reader
        .initialize()
        .await
        .expect("opening while another connection writes");
    let (info, body) = reader
        .get(&n, &key("k"), GetOptions::default())
        .await
        .expect("reading while another connection writes");
    assert_eq!(info.version, 1);
    assert_eq!(read_all(body).await, b"value");
    assert_eq!(
        reader
            .list(&n, ListOptions::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    // A write does wait for the lock, and says so.
    let err = reader
        .put(
            &n,
            &key("k"),
            Body::from("w"),
            Metadata::new(),
            PutMode::Overwrite,
        )
        .await
        .expect_err("the write lock is held elsewhere");
    assert!(err.to_string().contains("locked"), "{err}");
    holder.execute("ROLLBACK").await.unwrap();
    put_plain(&*reader, &n, &key("k"), Body::from("w")).await;
    reader.close().await.unwrap();
}

/// A body the test feeds through a channel: a put reading it stays parked mid-stream until the
/// test sends more, and ends when the sender is dropped. The counter says how many pieces the
/// put has taken.
fn channel_body() -> (
    futures::channel::mpsc::UnboundedSender<Bytes>,
    Body,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (tx, rx) = futures::channel::mpsc::unbounded::<Bytes>();
    let taken = Arc::new(AtomicUsize::new(0));
    let counter = taken.clone();
    let stream = rx.map(move |piece| {
        counter.fetch_add(1, Ordering::SeqCst);
        Ok(piece)
    });
    (tx, Body::from_stream(stream, None), taken)
}

/// The chunk size of the streaming tests below.
const STREAM_CHUNK: usize = 64 * 1024;

/// `len` bytes derived from `seed`, so every read-back is checked byte for byte.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(131) as u8) ^ seed ^ (i >> 16) as u8)
        .collect()
}

/// Chunks committed under staged payloads (blob rows with no hash yet) in the file at `path`.
async fn staged_chunks(path: &Path) -> i64 {
    count(
        path,
        "chunks WHERE blob_id IN (SELECT id FROM blobs WHERE hash IS NULL)",
    )
    .await
}

/// Waits until `n` chunks are staged: the streaming put has committed them and is parked,
/// waiting for the test to send more.
async fn until_staged(path: &Path, n: i64) {
    for _ in 0..3000 {
        if staged_chunks(path).await == n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{n} chunks were never staged");
}

/// Guards a call that must not wait for the parked stream: with the bug it would wait forever.
async fn without_hanging<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(120), f)
        .await
        .unwrap_or_else(|_| panic!("{what} waited for the parked stream"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_streamed_put_blocks_no_other_writer() {
    let dir = fresh_dir();
    let path = dir.join("slow.db");
    let n = ns("slow");
    let a = backend_at(&path, serde_json::json!({"chunk_size": STREAM_CHUNK})).await;
    put_plain(&*a, &n, &key("before"), Body::from("before")).await;

    // A put whose producer stops after three chunks and a bit, and stays silent.
    let slow = pattern(1, 5 * STREAM_CHUNK + 123);
    let (tx, body, _) = channel_body();
    for piece in slow[..3 * STREAM_CHUNK + 10].chunks(STREAM_CHUNK) {
        tx.unbounded_send(Bytes::copy_from_slice(piece)).unwrap();
    }
    let parked = {
        let (a, n) = (a.clone(), n.clone());
        tokio::spawn(async move {
            a.put(&n, &key("slow"), body, Metadata::new(), PutMode::Overwrite)
                .await
        })
    };
    until_staged(&path, 3).await;

    // (a) Another process (its own connections, the default busy timeout) opens, reads and
    // writes, small and streamed, while the stream is parked.
    let b = backend_at(&path, serde_json::json!({"chunk_size": STREAM_CHUNK})).await;
    without_hanging("another process's open", b.initialize())
        .await
        .expect("opening beside a parked stream");
    let (_, body) = b
        .get(&n, &key("before"), GetOptions::default())
        .await
        .unwrap();
    assert_eq!(read_all(body).await, b"before");
    let from_b = pattern(2, 3 * STREAM_CHUNK + 7);
    without_hanging("another process's put", async {
        put_plain(&*b, &n, &key("from-b"), Body::from("small from b")).await;
        put_plain(&*b, &n, &key("big-from-b"), Body::from(from_b.clone())).await;
    })
    .await;

    // (b) This backend's other writers go between the parked stream's chunks.
    let from_a = pattern(3, 2 * STREAM_CHUNK + 1);
    without_hanging("this backend's put", async {
        put_plain(&*a, &n, &key("from-a"), Body::from("small from a")).await;
        put_plain(&*a, &n, &key("big-from-a"), Body::from(from_a.clone())).await;
        a.delete(&n, &key("before"), Default::default())
            .await
            .unwrap();
    })
    .await;

    // The staged payload is neither corruption nor garbage while its put lives.
    let report = a.verify(&NoProgress).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    let gc = a.gc(&NoProgress).await.unwrap();
    assert_eq!(gc.blobs_removed, 0);
    assert_eq!(staged_chunks(&path).await, 3);
    assert!(!parked.is_finished(), "the stream is still open");

    for piece in slow[3 * STREAM_CHUNK + 10..].chunks(50_000) {
        tx.unbounded_send(Bytes::copy_from_slice(piece)).unwrap();
    }
    drop(tx);
    let info = parked.await.unwrap().expect("the slow put completes");
    assert_eq!(info.size, slow.len() as u64);
    assert_eq!(info.hash, ContentHash::of(&slow));
    assert_eq!(info.version, 1);

    for reader in [&a, &b] {
        for (k, want) in [
            ("slow", &slow[..]),
            ("big-from-b", &from_b[..]),
            ("big-from-a", &from_a[..]),
            ("from-b", b"small from b"),
            ("from-a", b"small from a"),
        ] {
            let (_, body) = reader
                .get(&n, &key(k), GetOptions::default())
                .await
                .unwrap();
            assert!(read_all(body).await == want, "{k} reads back byte-exact");
        }
    }
    assert_eq!(count(&path, "blobs WHERE hash IS NULL").await, 0);
    assert_eq!(
        count(&path, "chunks").await,
        6 + 4 + 3,
        "each streamed payload's chunks, once"
    );
    let report = b.verify(&NoProgress).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_streamed_put_fails_before_reading_its_stream() {
    let dir = fresh_dir();
    let path = dir.join("refused.db");
    let n = ns("refused");
    let a = backend_at(&path, serde_json::json!({"chunk_size": STREAM_CHUNK})).await;
    put_plain(&*a, &n, &key("live"), Body::from("v1")).await;

    for mode in [PutMode::Create, PutMode::IfVersion(7)] {
        // One chunk and one byte: just enough to be a streamed put. The sender stays open, so
        // a put that read on would wait forever.
        let (tx, body, taken) = channel_body();
        tx.unbounded_send(Bytes::from(vec![1u8; STREAM_CHUNK]))
            .unwrap();
        tx.unbounded_send(Bytes::from_static(b"x")).unwrap();
        let err = without_hanging(
            "a refused put",
            a.put(&n, &key("live"), body, Metadata::new(), mode),
        )
        .await
        .expect_err("the precondition fails");
        assert_eq!(err.kind(), ErrorKind::Conflict, "{mode:?}: {err}");
        assert_eq!(
            taken.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "{mode:?}: nothing read past the first chunk"
        );
        assert_eq!(
            count(&path, "blobs WHERE hash IS NULL").await,
            0,
            "{mode:?}"
        );
        drop(tx);
    }

    // A Create that passes the first check but loses the key while it streams fails at the
    // claim, and its staged payload goes with it.
    let (tx, body, _) = channel_body();
    tx.unbounded_send(Bytes::from(pattern(4, 2 * STREAM_CHUNK)))
        .unwrap();
    let parked = {
        let (a, n) = (a.clone(), n.clone());
        tokio::spawn(async move {
            a.put(&n, &key("raced"), body, Metadata::new(), PutMode::Create)
                .await
        })
    };
    until_staged(&path, 2).await;
    put_plain(&*a, &n, &key("raced"), Body::from("first")).await;
    tx.unbounded_send(Bytes::from_static(b"tail")).unwrap();
    drop(tx);
    let err = parked
        .await
        .unwrap()
        .expect_err("the key was taken meanwhile");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert_eq!(count(&path, "blobs WHERE hash IS NULL").await, 0);
    assert_eq!(count(&path, "chunks").await, 0);
    let (_, body) = a
        .get(&n, &key("raced"), GetOptions::default())
        .await
        .unwrap();
    assert_eq!(read_all(body).await, b"first");
    a.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_abandoned_staging_but_never_a_live_stream() {
    use sqlx::{Connection, Executor};
    let dir = fresh_dir();
    let path = dir.join("staging.db");
    let n = ns("staging");
    let a = backend_at(&path, serde_json::json!({"chunk_size": STREAM_CHUNK})).await;
    put_plain(
        &*a,
        &n,
        &key("kept"),
        Body::from(pattern(5, 2 * STREAM_CHUNK + 5)),
    )
    .await;

    let (tx, body, _) = channel_body();
    tx.unbounded_send(Bytes::from(pattern(6, 2 * STREAM_CHUNK + 1)))
        .unwrap();
    let parked = {
        let (a, n) = (a.clone(), n.clone());
        tokio::spawn(async move {
            a.put(
                &n,
                &key("stalled"),
                body,
                Metadata::new(),
                PutMode::Overwrite,
            )
            .await
        })
    };
    until_staged(&path, 2).await;
    let gc = a.gc(&NoProgress).await.unwrap();
    assert_eq!(
        (gc.blobs_removed, gc.bytes_freed),
        (0, 0),
        "a live stream is kept"
    );
    assert_eq!(staged_chunks(&path).await, 2);

    // The same staging, as a process killed two hours ago would have left it.
    {
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
        let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
        conn.execute("UPDATE blobs SET staged_at = staged_at - 7200000000 WHERE hash IS NULL")
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let report = a.verify(&NoProgress).await.unwrap();
    assert!(
        report.is_clean(),
        "abandoned staging is no corruption: {:?}",
        report.problems
    );
    assert_eq!(report.blobs_checked, 1);
    let gc = a.gc(&NoProgress).await.unwrap();
    assert_eq!(
        (gc.blobs_removed, gc.bytes_freed, gc.blobs_kept),
        (1, 2 * STREAM_CHUNK as u64, 1)
    );
    assert_eq!(count(&path, "blobs WHERE hash IS NULL").await, 0);
    assert_eq!(count(&path, "chunks").await, 3, "only the kept payload's");

    // The put whose staging was taken fails instead of writing a record without a payload.
    tx.unbounded_send(Bytes::from_static(b"more")).unwrap();
    drop(tx);
    let err = parked
        .await
        .unwrap()
        .expect_err("its staged payload is gone");
    assert!(err.to_string().contains("removed"), "{err}");
    let gone = a.get(&n, &key("stalled"), GetOptions::default()).await;
    assert_eq!(gone.err().map(|e| e.kind()), Some(ErrorKind::NotFound));

    // A put cancelled mid-stream removes its own staging.
    let (tx, body, _) = channel_body();
    tx.unbounded_send(Bytes::from(pattern(7, 3 * STREAM_CHUNK)))
        .unwrap();
    let cancelled = {
        let (a, n) = (a.clone(), n.clone());
        tokio::spawn(async move {
            a.put(
                &n,
                &key("cancelled"),
                body,
                Metadata::new(),
                PutMode::Overwrite,
            )
            .await
        })
    };
    until_staged(&path, 3).await;
    cancelled.abort();
    assert!(cancelled.await.unwrap_err().is_cancelled());
    until_staged(&path, 0).await;
    assert_eq!(count(&path, "blobs WHERE hash IS NULL").await, 0);
    drop(tx);
    let report = a.verify(&NoProgress).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    a.close().await.unwrap();
}

/// After `close`, a read says the backend was closed, as a write does, not that reading failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_close_say_the_backend_was_closed() {
    let path = fresh_dir().join("closed.db");
    let store = stowage_core::Stowage::from_backend(backend_at(&path, serde_json::json!({})).await);
    let h = store.namespace("n").unwrap();
    h.put("c", "bytes", stowage_core::Metadata::new())
        .await
        .unwrap();
    store.close().await.unwrap();
    let err = h.get("c").await.map(|(info, _)| info).unwrap_err();
    assert!(err.to_string().contains("backend was closed"), "{err}");
    let err = h
        .put("d", "more", stowage_core::Metadata::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("backend was closed"), "{err}");
}

/// A connection of its own to the database at `path` (another process's, or a tool's).
async fn connect(path: &Path) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    sqlx::SqliteConnection::connect_with(&opts).await.unwrap()
}

async fn pragma(conn: &mut sqlx::SqliteConnection, name: &str) -> i64 {
    sqlx::query_scalar(&format!("PRAGMA {name}"))
        .fetch_one(conn)
        .await
        .unwrap()
}

/// A `gc` killed after its deletes committed but before its vacuum leaves the freed pages in
/// the file's freelist; the next `gc` finds nothing to delete and still hands them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_returns_free_pages_left_by_a_gc_killed_before_its_vacuum() {
    use sqlx::{Connection, Executor};
    let (path, backend) = fresh_backend().await;
    let ns = ns("n");
    // About 36 MB of payloads, purged: several vacuum steps' worth of pages.
    for i in 0..60u32 {
        let k = key(&format!("k{i}"));
        put_plain(&*backend, &ns, &k, vec![i as u8; 600_000]).await;
        backend.purge(&ns, &k).await.unwrap();
    }
    put_plain(&*backend, &ns, &key("kept"), vec![9u8; 300_000]).await;
    // What the killed gc did: its deletes, committed.
    let mut conn = connect(&path).await;
    conn.execute(
        "DELETE FROM blobs WHERE NOT EXISTS (SELECT 1 FROM versions v WHERE v.hash = blobs.hash)",
    )
    .await
    .unwrap();
    let free = pragma(&mut conn, "freelist_count").await;
    let pages = pragma(&mut conn, "page_count").await;
    assert!(free > 4096 * 2, "the deletes freed {free} pages");
    conn.close().await.unwrap();

    let report = backend.gc(&NoProgress).await.unwrap();
    assert_eq!(report.blobs_removed, 0, "nothing was left to delete");
    let mut conn = connect(&path).await;
    assert_eq!(pragma(&mut conn, "freelist_count").await, 0);
    assert!(
        pragma(&mut conn, "page_count").await <= pages - free,
        "the free pages left the file"
    );
    conn.close().await.unwrap();
    let (_, body) = backend
        .get(&ns, &key("kept"), GetOptions::default())
        .await
        .unwrap();
    assert_eq!(read_all(body).await, vec![9u8; 300_000]);
    assert!(backend.verify(&NoProgress).await.unwrap().is_clean());
}

/// The payload of garbage blob `i` of the gc tests: distinct, 1 KiB.
fn garbage(i: u32) -> Vec<u8> {
    let mut bytes = vec![(i % 251) as u8; 1024];
    bytes[..4].copy_from_slice(&i.to_le_bytes());
    bytes
}

/// Puts `count` small payloads ([`garbage`]) and `large` payloads of 17 MiB (more than one
/// gc step holds, so each goes in pieces), then purges them all: garbage for `gc`. Returns the
/// bytes of garbage.
async fn make_garbage(backend: &dyn StorageBackend, ns: &Namespace, large: u32, count: u32) -> u64 {
    let mut bytes = 0;
    for i in 0..large {
        let k = key(&format!("large/{i}"));
        put_plain(backend, ns, &k, vec![i as u8 + 1; 17 << 20]).await;
        backend.purge(ns, &k).await.unwrap();
        bytes += 17 << 20;
    }
    for i in 0..count {
        let k = key(&format!("small/{i}"));
        put_plain(backend, ns, &k, garbage(i)).await;
        backend.purge(ns, &k).await.unwrap();
        bytes += 1024;
    }
    bytes
}

/// Between two steps, `gc` holds no lock: each time it reports progress (after a step), a put
/// from another backend that gives up at once on a locked database (`busy_timeout_ms = 0`)
/// succeeds. The first one puts again a garbage payload that a later step would remove, which
/// that step then keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_holds_no_lock_between_its_steps_and_keeps_what_is_referenced_again() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{mpsc, Mutex};

    let path = fresh_dir().join("stowage.db");
    let backend = backend_at(&path, serde_json::json!({ "chunk_size": 65536 })).await;
    let ns = ns("n");
    let garbage_bytes = make_garbage(&*backend, &ns, 2, 600).await;
    put_plain(&*backend, &ns, &key("kept"), "kept").await;

    // Another process, as it were: its own backend, on a thread and runtime of its own, asked
    // to put between gc's steps (the progress reports).
    let (ask, asked) = mpsc::channel::<u64>();
    let (answer, answers) = mpsc::channel::<std::result::Result<(), String>>();
    let other = {
        let (path, ns) = (path.clone(), ns.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let other = backend_at(&path, serde_json::json!({ "busy_timeout_ms": 0 })).await;
                for n in asked {
                    // The newest garbage payload: the last one a gc step reaches.
                    let body = if n == 0 {
                        garbage(599)
                    } else {
                        format!("between {n}").into_bytes()
                    };
                    let result = other
                        .put(
                            &ns,
                            &key(&format!("between/{n}")),
                            Body::from(body),
                            Metadata::new(),
                            PutMode::Overwrite,
                        )
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string());
                    answer.send(result).unwrap();
                }
                other.close().await.unwrap();
            });
        })
    };
    struct PutBetweenSteps {
        ask: Mutex<mpsc::Sender<u64>>,
        answers: Mutex<mpsc::Receiver<std::result::Result<(), String>>>,
        steps: AtomicU64,
        failures: Mutex<Vec<String>>,
    }
    impl stowage_core::Progress for PutBetweenSteps {
        fn set_total(&self, _: u64) {}
        fn inc(&self, _: u64) {
            let n = self.steps.fetch_add(1, Ordering::SeqCst);
            self.ask.lock().unwrap().send(n).unwrap();
            if let Err(e) = self.answers.lock().unwrap().recv().unwrap() {
                self.failures
                    .lock()
                    .unwrap()
                    .push(format!("put after step {n}: {e}"));
            }
        }
    }
    let progress = PutBetweenSteps {
        ask: Mutex::new(ask),
        answers: Mutex::new(answers),
        steps: AtomicU64::new(0),
        failures: Mutex::new(Vec::new()),
    };
    let report = backend.gc(&progress).await.unwrap();
    let steps = progress.steps.load(Ordering::SeqCst);
    assert!(
        progress.failures.lock().unwrap().is_empty(),
        "{:?}",
        progress.failures.lock().unwrap()
    );
    drop(progress);
    other.join().unwrap();
    // Two large payloads one by one, 600 small ones in steps of at most 256, the kept rest.
    assert!(steps >= 5, "gc reported progress {steps} times");
    assert_eq!(report.blobs_removed, 2 + 600 - 1);
    assert_eq!(report.bytes_freed, garbage_bytes - 1024);
    let (_, body) = backend
        .get(&ns, &key("between/0"), GetOptions::default())
        .await
        .unwrap();
    assert_eq!(read_all(body).await, garbage(599));
    for n in 1..steps {
        let (_, body) = backend
            .get(&ns, &key(&format!("between/{n}")), GetOptions::default())
            .await
            .unwrap();
        assert_eq!(read_all(body).await, format!("between {n}").into_bytes());
    }
    assert!(backend.verify(&NoProgress).await.unwrap().is_clean());
    let mut conn = connect(&path).await;
    assert_eq!(pragma(&mut conn, "freelist_count").await, 0, "gc vacuumed");
    let blobs: i64 = sqlx::query_scalar("SELECT count(*) FROM blobs")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        blobs as u64,
        1 + steps,
        "kept, and one per put between steps"
    );
}

/// `gc` of much garbage while another backend (another process's, as it were) puts all along,
/// some of them payloads being collected: every put succeeds, reads back, and `verify` is
/// clean after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_during_a_long_gc_all_succeed() {
    let path = fresh_dir().join("stowage.db");
    let backend = backend_at(&path, serde_json::json!({ "chunk_size": 65536 })).await;
    let ns = ns("n");
    make_garbage(&*backend, &ns, 2, 1500).await;
    let other = backend_at(&path, serde_json::json!({})).await;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (other, ns, done) = (other.clone(), ns.clone(), done.clone());
        tokio::spawn(async move {
            let mut written = Vec::new();
            let mut n = 0u32;
            // At least a few, and on until gc is done.
            while n < 20 || !done.load(std::sync::atomic::Ordering::SeqCst) {
                // Every third one is a payload gc is collecting (or has collected).
                let body = if n.is_multiple_of(3) {
                    garbage(n * 7 % 1500)
                } else {
                    format!("during {n}").into_bytes()
                };
                let k = key(&format!("during/{n}"));
                other
                    .put(
                        &ns,
                        &k,
                        Body::from(body.clone()),
                        Metadata::new(),
                        PutMode::Overwrite,
                    )
                    .await
                    .unwrap_or_else(|e| panic!("put {n} during gc: {e}"));
                written.push((k, body));
                n += 1;
            }
            written
        })
    };
    let report = backend.gc(&NoProgress).await.unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = writer.await.unwrap();
    assert!(report.blobs_removed > 1000, "{report:?}");
    for (k, body) in &written {
        let (_, read) = backend.get(&ns, k, GetOptions::default()).await.unwrap();
        assert_eq!(&read_all(read).await, body, "{k}");
    }
    assert!(backend.verify(&NoProgress).await.unwrap().is_clean());
    // What gc left is what the puts reference.
    let report = backend.gc(&NoProgress).await.unwrap();
    assert_eq!(report.blobs_removed, 0);
}

/// A reader part-way through a chunked payload whose record is purged, collected by `gc`, and
/// whose freed row id goes to another namespace's new payload: the read stops with an error
/// saying the payload was removed, and never yields the other record's bytes.
#[tokio::test]
async fn a_read_whose_payload_is_collected_midway_never_yields_another_records_bytes() {
    let dir = fresh_dir();
    let store = backend_at(
        &dir.join("reuse.db"),
        serde_json::json!({ "chunk_size": 65536 }),
    )
    .await;
    let (acme, other) = (ns("acme"), ns("other"));
    let mine: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    let theirs: Vec<u8> = (0..600_000u32).map(|i| (i % 241) as u8 ^ 0x5a).collect();
    put_plain(&*store, &acme, &key("x"), Body::from(mine.clone())).await;
    let (_, mut body) = store
        .get(&acme, &key("x"), GetOptions::default())
        .await
        .unwrap();
    let mut got = body.next_chunk().await.unwrap().unwrap().to_vec();
    assert!(
        got.len() < mine.len(),
        "the payload must span several chunks"
    );
    store.purge(&acme, &key("x")).await.unwrap();
    store.gc(&NoProgress).await.unwrap();
    put_plain(&*store, &other, &key("secret"), Body::from(theirs.clone())).await;
    let mut failed = None;
    while let Some(chunk) = body.next_chunk().await {
        match chunk {
            Ok(c) => got.extend_from_slice(&c),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let err = failed.expect("the read must fail once its payload is gone");
    assert!(err.to_string().contains("removed"), "{err}");
    assert!(
        got.iter().zip(&mine).all(|(a, b)| a == b),
        "bytes other than the record's were read"
    );
}

/// Streamed puts cancelled at every moment (their futures dropped by a timeout), including
/// while a chunk's commit is on SQLite's thread: each removes its staged rows as it goes, so
/// none is left for `gc` to find an hour later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_streamed_puts_leave_no_staged_rows() {
    use sqlx::Connection;
    let dir = fresh_dir();
    let path = dir.join("cancel.db");
    let store = backend_at(&path, serde_json::json!({ "chunk_size": 65536 })).await;
    let n = ns("n");
    let big = key("big");
    for i in 0..30u64 {
        let chunks = futures::stream::iter(
            (0..128u32).map(move |c| Ok(Bytes::from(vec![(c as u64 + i) as u8; 65536]))),
        );
        let body = Body::from_stream(chunks, Some(128 * 65536));
        let put = store.put(&n, &big, body, Metadata::new(), PutMode::Overwrite);
        let _ = tokio::time::timeout(std::time::Duration::from_millis(1 + (i * 7) % 90), put).await;
    }
    // The clean-ups run on tasks of their own once each put is dropped: wait for them (no
    // time is asserted; a minute only bounds a failure).
    let mut conn = sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(&path),
    )
    .await
    .unwrap();
    let mut staged: i64 = -1;
    for _ in 0..600 {
        staged = sqlx::query_scalar("SELECT count(*) FROM blobs WHERE hash IS NULL")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if staged == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(staged, 0, "staged rows of cancelled puts were left behind");
    conn.close().await.unwrap();
    assert!(store.verify(&NoProgress).await.unwrap().is_clean());
}
