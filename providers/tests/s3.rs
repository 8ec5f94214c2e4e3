//! Tests of the `s3` provider against a real S3-protocol server (moto) on 127.0.0.1.
//!
//! Run `scripts/s3-server start` first (it writes `target/s3-server.env`), and
//! `scripts/s3-server stop` after. Without that file or `STOWAGE_TEST_S3_ENDPOINT` these tests
//! fail, saying so; `STOWAGE_SKIP_S3=1` skips them explicitly (printing that it did).
//!
//! Each test works under its own `root` prefix in the shared bucket, so they run in parallel
//! and `gc` in one never sees another's blobs. The fault test starts a moto of its own, with
//! moto's request recorder on, because it kills and restarts that server.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use stowage_core::{
    Body, ContentHash, DeleteOptions, Error, ErrorKind, GetOptions, Key, ListOptions, Metadata,
    Namespace, PutMode, StorageBackend, Stowage,
};
use stowage_providers::s3::{factory, operator, S3Config};

/// Connection details of the test server.
#[derive(Clone, Debug)]
struct Server {
    endpoint: String,
    bucket: String,
    region: String,
    access_key_id: String,
    secret_access_key: String,
    python: Option<String>,
}

fn env_file() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("s3-server.env")
}

/// The server to test against; `None` only when `STOWAGE_SKIP_S3=1` says to skip.
fn server() -> Option<Server> {
    if std::env::var("STOWAGE_SKIP_S3").as_deref() == Ok("1") {
        eprintln!("s3 test SKIPPED: STOWAGE_SKIP_S3=1 is set");
        return None;
    }
    let mut vars: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("STOWAGE_TEST_S3_"))
        .collect();
    if !vars.contains_key("STOWAGE_TEST_S3_ENDPOINT") {
        let path = env_file();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "no S3 test server: STOWAGE_TEST_S3_ENDPOINT is unset and {} cannot be read ({e}). \
                 Run `scripts/s3-server start` first (and `scripts/s3-server stop` after), \
                 or set STOWAGE_SKIP_S3=1 to skip the s3 tests on purpose.",
                path.display()
            )
        });
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                vars.entry(k.trim().to_string())
                    .or_insert_with(|| v.trim().to_string());
            }
        }
    }
    let get = |k: &str, default: &str| vars.get(k).cloned().unwrap_or_else(|| default.to_string());
    Some(Server {
        endpoint: get("STOWAGE_TEST_S3_ENDPOINT", ""),
        bucket: get("STOWAGE_TEST_S3_BUCKET", "stowage-test"),
        region: get("STOWAGE_TEST_S3_REGION", "us-east-1"),
        access_key_id: get("STOWAGE_TEST_S3_ACCESS_KEY_ID", "stowage-test"),
        secret_access_key: get("STOWAGE_TEST_S3_SECRET_ACCESS_KEY", "stowage-test-secret"),
        python: vars.get("STOWAGE_TEST_S3_PYTHON").cloned(),
    })
}

/// A root prefix no other test (or earlier run) uses.
fn unique_root(label: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "t/{label}-{nanos}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn config(server: &Server, root: &str) -> Value {
    json!({
        "bucket": server.bucket,
        "endpoint": server.endpoint,
        "region": server.region,
        "root": root,
        "access_key_id": server.access_key_id,
        "secret_access_key": server.secret_access_key,
        "timeout_ms": 60_000,
        "retries": 2,
        "part_size_mib": 5,
    })
}

/// `config` with gc's grace period set to `secs` (0 turns it off).
fn with_grace(mut config: Value, secs: u64) -> Value {
    config["gc_grace_secs"] = json!(secs);
    config
}

async fn store(config: Value) -> Stowage {
    let backend = factory()
        .create(config)
        .await
        .expect("creating the s3 backend");
    Stowage::from_backend(backend)
}

/// Two backends on one bucket and root under a root of their own, as two processes see the
/// store: each keeps its own cache.
async fn two_processes(
    server: &Server,
    label: &str,
) -> (Arc<dyn StorageBackend>, Arc<dyn StorageBackend>) {
    let cfg = config(server, &unique_root(label));
    let a = factory().create(cfg.clone()).await;
    let b = factory().create(cfg).await;
    (
        a.expect("creating the first s3 backend"),
        b.expect("creating the second s3 backend"),
    )
}

/// Paths of every object under `prefix` of the store's root, read with a raw OpenDAL operator.
async fn objects(config: &Value, prefix: &str) -> Vec<String> {
    let op = operator(&S3Config::parse(config).unwrap()).unwrap();
    let mut paths: Vec<String> = op
        .list_with(prefix)
        .recursive(true)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.path().to_string())
        .filter(|p| !p.ends_with('/'))
        .collect();
    paths.sort();
    paths
}

/// The server's LastModified of an object of the store, read with a raw OpenDAL operator.
async fn last_modified(config: &Value, path: &str) -> std::time::SystemTime {
    let op = operator(&S3Config::parse(config).unwrap()).unwrap();
    let meta = op.stat(path).await.unwrap();
    meta.last_modified()
        .expect("the server gives LastModified")
        .into()
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A body streamed in 1 MiB chunks (no size hint), so the provider cannot see its size.
fn streamed(data: Arc<Vec<u8>>) -> Body {
    let chunks = (0..data.len()).step_by(1 << 20).map(move |i| {
        let end = (i + (1 << 20)).min(data.len());
        Ok(Bytes::copy_from_slice(&data[i..end]))
    });
    Body::from_stream(futures::stream::iter(chunks.collect::<Vec<_>>()), None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_kit_passes() {
    let Some(server) = server() else { return };
    // The kit counts what gc reclaims right after purging, so it runs with the grace period
    // off (the explicit opt-in); `gc_spares_young_unreferenced_payloads` tests the grace.
    let cfg = with_grace(config(&server, &unique_root("ck")), 0);
    let report = stowage_core::testkit::run_all(factory(), cfg).await;
    eprintln!(
        "s3 conformance: passed {:?}, skipped {:?}",
        report.passed(),
        report.skipped()
    );
    report.assert_passed();
}

/// A write is never refused on what one process cached while another wrote: `Create` after
/// the other's delete, and `IfVersion` of the version the other wrote, both succeed; a stale
/// `IfVersion` names the real current version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_cache_never_refuses_a_write() {
    let Some(server) = server() else { return };
    let (a, b) = two_processes(&server, "stale").await;
    let (ns, k) = (Namespace::new("n").unwrap(), Key::new("doc").unwrap());
    let put = |backend: &Arc<dyn StorageBackend>, text: &'static str, mode: PutMode| {
        let (backend, ns, k) = (backend.clone(), ns.clone(), k.clone());
        async move {
            backend
                .put(&ns, &k, Body::from(text), Metadata::new(), mode)
                .await
        }
    };
    put(&a, "one", PutMode::Overwrite).await.unwrap();
    // `a` now caches version 1 as the latest; `b` deletes it.
    a.head(&ns, &k, None).await.unwrap();
    b.delete(&ns, &k, DeleteOptions::default()).await.unwrap();
    let created = put(&a, "two", PutMode::Create).await.unwrap();
    assert_eq!(created.version, 3, "Create after another process's delete");
    // `b` writes version 4 behind `a`'s back.
    put(&b, "four", PutMode::Overwrite).await.unwrap();
    let err = put(&a, "stale", PutMode::IfVersion(3)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Conflict {
                current: Some(4),
                ..
            }
        ),
        "a stale IfVersion names the real current version: {err:?}"
    );
    put(&b, "five", PutMode::Overwrite).await.unwrap();
    let next = put(&a, "six", PutMode::IfVersion(5)).await.unwrap();
    assert_eq!(
        next.version, 6,
        "IfVersion of the version another process wrote"
    );
}

/// A byte range is judged against the latest version, not against the one this process
/// cached: a range past the end of the cached payload but inside the one another process
/// wrote since is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_cache_never_refuses_a_read_range() {
    let Some(server) = server() else { return };
    let (a, b) = two_processes(&server, "stale-range").await;
    let (ns, k) = (Namespace::new("n").unwrap(), Key::new("doc").unwrap());
    a.put(
        &ns,
        &k,
        Body::from("short"),
        Metadata::new(),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    a.head(&ns, &k, None).await.unwrap();
    let long = "0123456789".repeat(10);
    b.put(
        &ns,
        &k,
        Body::from(long.clone()),
        Metadata::new(),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    let range = stowage_core::ByteRange {
        start: 50,
        end: Some(60),
    };
    let (info, body) = a
        .get(
            &ns,
            &k,
            GetOptions {
                version: None,
                range: Some(range),
            },
        )
        .await
        .unwrap();
    assert_eq!(info.version, 2);
    assert_eq!(
        &body.into_bytes().await.unwrap()[..],
        &long.as_bytes()[50..60]
    );
}

/// With no grace period (`gc_grace_secs = 0`), a put of a payload that is stored but no
/// longer referenced, joined with a `gc` of the same backend, lands with its payload intact:
/// the gc waits for the put to claim its version rather than delete the payload it found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_grace_a_gc_never_takes_the_payload_of_a_put_in_flight() {
    let Some(server) = server() else { return };
    let cfg = with_grace(config(&server, &unique_root("gc-race")), 0);
    let store = Stowage::from_backend(factory().create(cfg).await.unwrap());
    let ns = store.namespace("n").unwrap();
    for round in 0..12u32 {
        let payload = format!("payload of round {round}").repeat(50);
        // Stored, then left unreferenced: the next put finds it and skips the upload.
        ns.put("old", payload.clone(), Metadata::new())
            .await
            .unwrap();
        ns.purge("old").await.unwrap();
        let (put, gc) = tokio::join!(
            ns.put("k", payload.clone(), Metadata::new()),
            store.gc(&stowage_core::NoProgress)
        );
        gc.unwrap();
        put.unwrap();
        let (_, read) = ns.get_bytes("k").await.unwrap();
        assert_eq!(&read[..], payload.as_bytes(), "round {round}");
    }
}

/// Two backends on one bucket and root (two processes' view): the kit's random walk, each step
/// through either one, against one model, so a version or metadata cache one of them keeps
/// must notice the other's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_backends_on_one_root_agree_with_the_model() {
    let Some(server) = server() else { return };
    let (a, b) = two_processes(&server, "shared").await;
    let (a, b) = (Stowage::from_backend(a), Stowage::from_backend(b));
    let result = stowage_core::testkit::random_operations_shared(&a, &b).await;
    assert!(result.is_ok(), "{}", result.unwrap_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_and_dedup_across_namespaces() {
    let Some(server) = server() else { return };
    let cfg = config(&server, &unique_root("layout"));
    let store = store(cfg.clone()).await;
    let payload = pattern(1, 100_000);
    let hash = ContentHash::of(&payload);
    for ns in ["alpha", "beta"] {
        let handle = store.namespace(ns).unwrap();
        handle
            .put("same/bytes", payload.clone(), Metadata::new())
            .await
            .unwrap();
        handle
            .put("same/bytes", payload.clone(), Metadata::new())
            .await
            .unwrap();
    }
    assert_eq!(
        objects(&cfg, "blobs/").await,
        vec![format!("blobs/{}", hash.to_hex())],
        "one blob for four versions"
    );
    let key_hex = hex::encode("same/bytes");
    assert_eq!(
        objects(&cfg, "meta/alpha/").await,
        vec![
            format!("meta/alpha/{key_hex}/00000000000000000001.json"),
            format!("meta/alpha/{key_hex}/00000000000000000002.json"),
        ]
    );
    let report = store.backend().gc(&stowage_core::NoProgress).await.unwrap();
    assert_eq!((report.blobs_removed, report.blobs_kept), (0, 1));
    assert!(objects(&cfg, "staging/").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payload_streams_through_multipart_and_ranges() {
    let Some(server) = server() else { return };
    let cfg = config(&server, &unique_root("large"));
    let store = store(cfg.clone()).await;
    let handle = store.namespace("big").unwrap();
    let data = Arc::new(pattern(2, 23 * 1024 * 1024 + 17));
    let info = handle
        .put("blob", streamed(data.clone()), Metadata::new())
        .await
        .unwrap();
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(info.hash, ContentHash::of(&data));
    let (_, body) = handle
        .get_with("blob", GetOptions::default())
        .await
        .unwrap();
    let back = body.into_bytes().await.unwrap();
    assert!(
        back[..] == data[..],
        "23 MiB payload did not read back byte-exact"
    );
    let range = stowage_core::ByteRange {
        start: 6 * 1024 * 1024 - 3,
        end: Some(6 * 1024 * 1024 + 5),
    };
    let (_, body) = handle
        .get_with(
            "blob",
            GetOptions {
                version: None,
                range: Some(range),
            },
        )
        .await
        .unwrap();
    let part = body.into_bytes().await.unwrap();
    assert_eq!(&part[..], &data[6 * 1024 * 1024 - 3..6 * 1024 * 1024 + 5]);
    assert!(
        objects(&cfg, "staging/").await.is_empty(),
        "the staging object was not removed"
    );
    // Dedup of a large payload: the second upload finds blobs/<hash> and copies nothing.
    handle
        .put("blob-again", streamed(data.clone()), Metadata::new())
        .await
        .unwrap();
    assert_eq!(objects(&cfg, "blobs/").await.len(), 1);
    let report = store
        .backend()
        .verify(&stowage_core::NoProgress)
        .await
        .unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.blobs_checked, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_body_leaves_nothing_behind() {
    let Some(server) = server() else { return };
    let cfg = config(&server, &unique_root("abort"));
    let store = store(cfg.clone()).await;
    let handle = store.namespace("n").unwrap();
    handle.put("k", "first", Metadata::new()).await.unwrap();
    // 12 MiB arrive (two parts uploaded), then the caller's stream fails.
    let chunks = (0..12)
        .map(|i| Ok(Bytes::from(pattern(i, 1 << 20))))
        .chain(std::iter::once(Err(stowage_core::Error::io(
            "reading the caller's file",
            std::io::Error::other("disk gone"),
        ))));
    let err = handle
        .put(
            "k",
            Body::from_stream(futures::stream::iter(chunks.collect::<Vec<_>>()), None),
            Metadata::new(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("disk gone"), "{err}");
    let versions = handle.versions("k").await.unwrap();
    assert_eq!(versions.len(), 1, "a failed upload created a version");
    assert_eq!(
        objects(&cfg, "blobs/").await.len(),
        1,
        "a failed upload left a blob"
    );
    assert!(
        objects(&cfg, "staging/").await.is_empty(),
        "a failed upload left a staging object"
    );
    let (_, body) = handle.get_with("k", GetOptions::default()).await.unwrap();
    assert_eq!(&body.into_bytes().await.unwrap()[..], b"first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_overwrites_lose_no_update() {
    let Some(server) = server() else { return };
    let store = Arc::new(store(config(&server, &unique_root("race"))).await);
    let writers: Vec<_> = (0..16u64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let handle = store.namespace("race").unwrap();
                handle
                    .put_with(
                        "hot",
                        format!("writer {i}"),
                        Metadata::new(),
                        PutMode::Overwrite,
                    )
                    .await
                    .unwrap()
                    .version
            })
        })
        .collect();
    let mut got: Vec<u64> = Vec::new();
    for w in writers {
        got.push(w.await.unwrap());
    }
    got.sort();
    assert_eq!(
        got,
        (1..=16).collect::<Vec<_>>(),
        "each writer must get its own version"
    );
    let handle = store.namespace("race").unwrap();
    let versions: Vec<u64> = handle
        .versions("hot")
        .await
        .unwrap()
        .iter()
        .map(|r| r.version)
        .collect();
    assert_eq!(versions, (1..=16).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_follow_key_byte_order() {
    let Some(server) = server() else { return };
    let store = store(config(&server, &unique_root("list"))).await;
    let handle = store.namespace("l").unwrap();
    let keys = ["a", "a/b", "a0", "ab", "b", "b/\u{e9}t\u{e9}", "c"];
    for k in keys.iter().rev() {
        handle.put(k, *k, Metadata::new()).await.unwrap();
    }
    handle
        .delete("b", stowage_core::DeleteOptions::default())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .backend()
            .list(
                &stowage_core::Namespace::new("l").unwrap(),
                ListOptions {
                    limit: Some(2),
                    cursor: cursor.clone(),
                    ..ListOptions::default()
                },
            )
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|r| r.key.to_string()));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, vec!["a", "a/b", "a0", "ab", "b/\u{e9}t\u{e9}", "c"]);
    let prefixed = store
        .backend()
        .list(
            &stowage_core::Namespace::new("l").unwrap(),
            ListOptions {
                prefix: Some("a".into()),
                start_after: Some("a/b".into()),
                ..ListOptions::default()
            },
        )
        .await
        .unwrap();
    let got: Vec<String> = prefixed.items.iter().map(|r| r.key.to_string()).collect();
    assert_eq!(got, vec!["a0", "ab"]);
}

// ---- errors: each names the endpoint and the bucket ----

fn assert_backend_error(err: &stowage_core::Error, endpoint: &str, bucket: &str, also: &str) {
    let text = err.to_string();
    let line = err.chain();
    eprintln!("error as the user sees it: {line}");
    // The cause is quoted once, without the HTTP response's headers.
    assert_eq!(line, text, "a source is repeated after the message");
    assert_eq!(text.matches("cause:").count(), 1, "{text}");
    for noise in ["x-amz", "headers", "Parts {", "request_id", "context: {"] {
        assert!(!text.contains(noise), "error carries {noise:?}: {text}");
    }
    assert!(text.len() < 700, "error of {} bytes: {text}", text.len());
    assert_eq!(err.kind(), ErrorKind::Backend, "{text}");
    assert!(
        text.contains(endpoint),
        "error does not name the endpoint {endpoint}: {text}"
    );
    assert!(
        text.contains(bucket),
        "error does not name the bucket {bucket}: {text}"
    );
    assert!(text.contains(also), "error does not say {also:?}: {text}");
    assert!(
        !text.contains("stowage-test-secret"),
        "error leaks the secret: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_is_a_clear_error_after_retries() {
    let Some(server) = server() else { return };
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut cfg = config(&server, "down");
    cfg["endpoint"] = json!(endpoint);
    cfg["retries"] = json!(2);
    let store = store(cfg).await;
    let err = store
        .namespace("n")
        .unwrap()
        .put("k", "v", Metadata::new())
        .await
        .unwrap_err();
    assert_backend_error(&err, &endpoint, &server.bucket, "up to 2 retries");
    assert!(err.to_string().contains("is it running"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bucket_is_named() {
    let Some(server) = server() else { return };
    let mut cfg = config(&server, "x");
    cfg["bucket"] = json!("no-such-bucket-for-stowage");
    let store = store(cfg).await;
    let err = store
        .namespace("n")
        .unwrap()
        .head("k", None)
        .await
        .unwrap_err();
    assert_backend_error(
        &err,
        &server.endpoint,
        "no-such-bucket-for-stowage",
        "does not exist",
    );
    // The S3 error code and message stay, once.
    let text = err.to_string();
    assert_eq!(text.matches("NoSuchBucket").count(), 1, "{text}");
    assert!(
        text.contains("The specified bucket does not exist"),
        "{text}"
    );
    // The full OpenDAL error is still there for a debugging reader.
    assert!(format!("{err:?}").contains("NoSuchBucket"), "{err:?}");
}

/// The provider speaks TLS (an `https://` endpoint is what AWS, R2 and most hosted stores
/// take): against the plain-http test server the handshake is tried and fails, said so by name.
/// Without a TLS client the request would not be sent at all ("scheme is not http").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_a_plain_http_server_fails_its_tls_handshake_by_name() {
    let Some(server) = server() else { return };
    let endpoint = server.endpoint.replacen("http://", "https://", 1);
    let mut cfg = config(&server, "tls");
    cfg["endpoint"] = json!(endpoint);
    cfg["retries"] = json!(1);
    let store = store(cfg).await;
    let err = store
        .namespace("n")
        .unwrap()
        .head("k", None)
        .await
        .unwrap_err();
    assert_backend_error(&err, &endpoint, &server.bucket, "TLS handshake failed");
    assert!(err.to_string().contains("up to 1 retry)"), "{err}");
    assert!(!err.to_string().contains("scheme is not http"), "{err}");
}

/// An endpoint with a path makes every bucket look missing: the hint says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_with_a_path_is_named_as_the_likely_mistake() {
    let Some(server) = server() else { return };
    let endpoint = format!("{}/some/path", server.endpoint);
    let mut cfg = config(&server, "path");
    cfg["endpoint"] = json!(endpoint);
    let store = store(cfg).await;
    let err = store
        .namespace("n")
        .unwrap()
        .head("k", None)
        .await
        .unwrap_err();
    assert_backend_error(&err, &endpoint, &server.bucket, "the endpoint has a path");
}

/// `root = "a//b"` is the store `root = "a/b"` names (OpenDAL collapses the empty segment):
/// the longest keys, whose object names are cut to fit, land on the same objects in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_with_an_empty_segment_is_the_same_store() {
    let Some(server) = server() else { return };
    let unique = format!("doubled-{}", std::process::id());
    // Two lengths of root: the cut-off length of a key moves by one for every second byte of
    // root, so one of them would show a root measured with its extra `/`.
    for leaf in ["r", "rr"] {
        let mut single = config(&server, "x");
        single["root"] = json!(format!("{unique}/{leaf}"));
        let mut doubled = single.clone();
        doubled["root"] = json!(format!("{unique}//{leaf}"));
        let (a, b) = (store(single).await, store(doubled).await);
        for len in [100, 480, 487, 488, 489, 490, 491, 492, 600, 1024] {
            let key = "z".repeat(len);
            a.namespace("n")
                .unwrap()
                .put(&key, format!("written through a/b, {len}"), Metadata::new())
                .await
                .unwrap();
            let err = b
                .namespace("n")
                .unwrap()
                .put_with(&key, "other", Metadata::new(), PutMode::Create)
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Conflict, "key of {len} bytes: {err}");
            let (_, body) = b.namespace("n").unwrap().get(&key).await.unwrap();
            assert_eq!(
                body.into_bytes().await.unwrap(),
                format!("written through a/b, {len}").as_bytes()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_times_out() {
    let Some(server) = server() else { return };
    // Accepts connections and never answers: only the timeout can end the request.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let _keeper = std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().take(16).flatten() {
            held.push(conn);
        }
    });
    let mut cfg = config(&server, "silent");
    cfg["endpoint"] = json!(endpoint);
    cfg["timeout_ms"] = json!(300);
    cfg["retries"] = json!(1);
    let store = store(cfg).await;
    let err = store
        .namespace("n")
        .unwrap()
        .head("k", None)
        .await
        .unwrap_err();
    assert_backend_error(&err, &endpoint, &server.bucket, "timeout_ms = 300");
}

/// A server that answers every request with an S3 error (500, `Connection: keep-alive`): the
/// message says the server answered with an error, not that it did not answer (the old hint
/// matched "connect" in the response headers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_500_is_not_reported_as_silent() {
    let Some(server) = server() else { return };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let body = "<?xml version=\"1.0\"?><Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>";
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(1..) = conn.read(&mut buf) {
                    let answer = format!(
                        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/xml\r\nconnection: keep-alive\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if conn.write_all(answer.as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let mut cfg = config(&server, "erring");
    cfg["endpoint"] = json!(endpoint);
    cfg["retries"] = json!(1);
    let store = store(cfg).await;
    let err = store
        .namespace("n")
        .unwrap()
        .head("k", None)
        .await
        .unwrap_err();
    assert_backend_error(&err, &endpoint, &server.bucket, "answered HTTP 500");
    assert!(!err.to_string().contains("did not answer"), "{err}");
}

// ---- fault: the server killed in the middle of a large upload ----

/// A moto server of this test's own, recording every request to a file so a restart can
/// replay them (moto keeps objects in memory only).
struct OwnServer {
    python: String,
    port: u16,
    recording: PathBuf,
    extra_env: Vec<(String, String)>,
    child: Option<Child>,
}

impl OwnServer {
    fn start(python: &str, dir: &std::path::Path) -> Self {
        let s = Self::start_with(python, dir, Vec::new());
        http(s.port, "PUT", "/fault-bucket").expect("creating the bucket");
        s
    }

    fn start_with(python: &str, dir: &std::path::Path, extra_env: Vec<(String, String)>) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = OwnServer {
            python: python.to_string(),
            port,
            recording: dir.join("moto-recording.jsonl"),
            extra_env,
            child: None,
        };
        s.spawn();
        s
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
            ])
            .env("MOTO_ENABLE_RECORDING", "True")
            .env("MOTO_RECORDER_FILEPATH", &self.recording)
            .envs(self.extra_env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto (scripts/s3-server start installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while http(self.port, "GET", "/moto-api/").is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not come up on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: no shutdown, requests in flight are cut.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts on the same port and replays the recorded requests; `false` when moto cannot
    /// replay its own recording (a request cut mid-way by the kill can make its replay fail;
    /// that is a limit of the test server, not of the store under test).
    fn restart(&mut self) -> bool {
        // moto records a request before handling it, one JSON line each; a kill during that
        // write leaves a torn last line for a request that was never handled: drop it.
        let mut log = std::fs::read(&self.recording).unwrap_or_default();
        let whole = log.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        log.truncate(whole);
        std::fs::write(&self.recording, log).unwrap();
        self.spawn();
        match http(self.port, "POST", "/moto-api/recorder/replay-recording") {
            Ok(_) => true,
            Err(e) => {
                eprintln!("moto could not replay its recording ({e}); running the scenario again");
                false
            }
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One plain HTTP/1.0 request with an empty body; the status code.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<u16> {
    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        conn,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {answer:.80}")))?;
    if code >= 400 {
        return Err(std::io::Error::other(format!(
            "{method} {path} answered {code}"
        )));
    }
    Ok(code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_upload_keeps_the_earlier_version() {
    let Some(server) = server() else { return };
    let python = server
        .python
        .clone()
        .unwrap_or_else(|| "python3".to_string());
    // The whole scenario runs again (at most three times) only when moto fails to replay its
    // own recording after the restart; every assertion on the store runs on the run that
    // replayed.
    let mut attempt = 0;
    let (_dir, _server, cfg, first) = loop {
        attempt += 1;
        let dir = tempfile::tempdir().unwrap();
        let mut own = OwnServer::start(&python, dir.path());
        let endpoint = own.endpoint();
        let mut cfg = config(&server, "fault");
        cfg["endpoint"] = json!(endpoint);
        cfg["bucket"] = json!("fault-bucket");
        cfg["retries"] = json!(1);
        cfg["timeout_ms"] = json!(10_000);

        let first = pattern(7, 3 * 1024 * 1024 + 5);
        {
            let store = store(cfg.clone()).await;
            let handle = store.namespace("f").unwrap();
            let info = handle
                .put("tape", first.clone(), Metadata::new().with_tag("v1"))
                .await
                .unwrap();
            assert_eq!(info.version, 1);

            // 40 MiB in 1 MiB chunks; after 17 MiB the server is killed, the rest keeps coming.
            let (reached, killed) = (
                Arc::new(tokio::sync::Notify::new()),
                Arc::new(tokio::sync::Notify::new()),
            );
            let (reached2, killed2) = (reached.clone(), killed.clone());
            let chunks = futures::stream::unfold(0u64, move |i| {
                let (reached, killed) = (reached2.clone(), killed2.clone());
                async move {
                    if i == 40 {
                        return None;
                    }
                    if i == 17 {
                        reached.notify_one();
                        killed.notified().await;
                    }
                    Some((Ok(Bytes::from(pattern(100 + i, 1 << 20))), i + 1))
                }
            });
            let mut upload = tokio::spawn({
                let store_handle = store.namespace("f").unwrap();
                async move {
                    store_handle
                        .put("tape", Body::from_stream(chunks, None), Metadata::new())
                        .await
                }
            });
            tokio::select! {
                _ = reached.notified() => {}
                early = &mut upload => panic!("the upload ended before the server was killed: {early:?}"),
            }
            own.kill();
            killed.notify_one();
            let err = upload
                .await
                .unwrap()
                .expect_err("the upload must fail when the server dies");
            assert_backend_error(&err, &endpoint, "fault-bucket", "up to 1 retry)");
        }

        if own.restart() {
            break (dir, own, cfg, first);
        }
        assert!(
            attempt < 3,
            "moto failed to replay its recording three times"
        );
    };
    let store = store(cfg.clone()).await;
    let handle = store.namespace("f").unwrap();
    let versions = handle.versions("tape").await.unwrap();
    assert_eq!(
        versions.iter().map(|r| r.version).collect::<Vec<_>>(),
        vec![1],
        "an orphan version is visible"
    );
    let (info, body) = handle
        .get_with("tape", GetOptions::default())
        .await
        .unwrap();
    assert!(info.metadata.tags.contains("v1"));
    assert!(
        body.into_bytes().await.unwrap() == first,
        "version 1 does not read back byte-exact"
    );
    let listed = handle.list(ListOptions::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].version, 1);
    assert_eq!(
        objects(&cfg, "blobs/").await,
        vec![format!("blobs/{}", ContentHash::of(&first).to_hex())]
    );
    assert!(
        objects(&cfg, "staging/").await.is_empty(),
        "a half-uploaded payload is visible"
    );
    // The store works on: the next write is version 2.
    let again = handle
        .put("tape", "after restart", Metadata::new())
        .await
        .unwrap();
    assert_eq!(again.version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_writers_changes_are_seen_through_the_cache() {
    let Some(server) = server() else { return };
    let (a, b) = two_processes(&server, "cache").await;
    let (a, b) = (Stowage::from_backend(a), Stowage::from_backend(b));
    let (ha, hb) = (a.namespace("c").unwrap(), b.namespace("c").unwrap());
    ha.put("k", "one", Metadata::new()).await.unwrap();
    assert_eq!(&ha.get_bytes("k").await.unwrap().1[..], b"one");
    hb.put("k", "two", Metadata::new()).await.unwrap();
    let (info, bytes) = ha.get_bytes("k").await.unwrap();
    assert_eq!(
        (info.version, &bytes[..]),
        (2, &b"two"[..]),
        "a stale cached version was served"
    );
    // Purge and rewrite: same object names, new contents; `a` must not serve its cache.
    assert_eq!(hb.purge("k").await.unwrap(), 2);
    hb.put("k", "fresh", Metadata::new()).await.unwrap();
    hb.put("k", "fresher", Metadata::new()).await.unwrap();
    let (info, bytes) = ha.get_bytes("k").await.unwrap();
    assert_eq!((info.version, &bytes[..]), (2, &b"fresher"[..]));
    // A conditional put from `a` against what it last saw wins exactly when nothing changed.
    let won = ha
        .put_with("k", "from a", Metadata::new(), PutMode::IfVersion(2))
        .await
        .unwrap();
    assert_eq!(won.version, 3);
    hb.delete("k", stowage_core::DeleteOptions::default())
        .await
        .unwrap();
    let err = ha.get_bytes("k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = ha
        .put_with("k", "late", Metadata::new(), PutMode::IfVersion(3))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_of_a_key_another_writer_made_is_a_conflict_and_writes_nothing() {
    let Some(server) = server() else { return };
    let cfg = config(&server, &unique_root("create"));
    // `b` has never seen the keys, so its creates claim version 1 without listing first.
    let (a, b) = (store(cfg.clone()).await, store(cfg.clone()).await);
    let (ha, hb) = (a.namespace("c").unwrap(), b.namespace("c").unwrap());
    ha.put("live", "one", Metadata::new()).await.unwrap();
    ha.put("live", "two", Metadata::new()).await.unwrap();
    let err = hb
        .put_with("live", "late", Metadata::new(), PutMode::Create)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    let (info, bytes) = ha.get_bytes("live").await.unwrap();
    assert_eq!((info.version, &bytes[..]), (2, &b"two"[..]));
    // A key whose latest version is a tombstone may be created again: as version 3.
    ha.put("gone", "x", Metadata::new()).await.unwrap();
    ha.delete("gone", stowage_core::DeleteOptions::default())
        .await
        .unwrap();
    let c = store(cfg).await;
    let made = c
        .namespace("c")
        .unwrap()
        .put_with("gone", "again", Metadata::new(), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(made.version, 3);
    // And a new key is version 1, with its history intact.
    let made = hb
        .put_with("new", "first", Metadata::new(), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(made.version, 1);
    assert_eq!(ha.versions("new").await.unwrap().len(), 1);
    assert_eq!(ha.versions("live").await.unwrap().len(), 2);
}

/// Makes a bucket, an IAM user with an access key and an S3 policy on a moto whose first four
/// requests are unauthenticated; prints the key id and secret.
const AUTH_SETUP: &str = r#"
import sys, json, boto3
kw = dict(endpoint_url=sys.argv[1], aws_access_key_id="setup", aws_secret_access_key="setup", region_name="us-east-1")
boto3.client("s3", **kw).create_bucket(Bucket="auth-bucket")
iam = boto3.client("iam", **kw)
iam.create_user(UserName="stowage")
key = iam.create_access_key(UserName="stowage")["AccessKey"]
iam.put_user_policy(UserName="stowage", PolicyName="s3", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
print(key["AccessKeyId"], key["SecretAccessKey"])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_refused_with_a_hint() {
    let Some(server) = server() else { return };
    let python = server
        .python
        .clone()
        .unwrap_or_else(|| "python3".to_string());
    let dir = tempfile::tempdir().unwrap();
    // The shared test server accepts any signature; this one checks them (moto's IAM mode,
    // on after the four setup requests).
    let own = OwnServer::start_with(
        &python,
        dir.path(),
        vec![("INITIAL_NO_AUTH_ACTION_COUNT".into(), "4".into())],
    );
    let out = Command::new(&python)
        .args(["-c", AUTH_SETUP, &own.endpoint()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "IAM setup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (id, secret) = text.trim().split_once(' ').expect("key id and secret");
    let mut cfg = config(&server, "auth");
    cfg["endpoint"] = json!(own.endpoint());
    cfg["bucket"] = json!("auth-bucket");
    cfg["access_key_id"] = json!(id);
    cfg["secret_access_key"] = json!(secret);
    // The right key is accepted: the refusal below is about the key, not the server. (Only
    // raw requests here: moto's signature check rejects any listing whose prefix holds a `/`,
    // even from boto3, so stowage itself cannot run on moto with IAM checks on.)
    let op = operator(&S3Config::parse(&cfg).unwrap()).unwrap();
    op.write("auth/probe", "signed")
        .await
        .expect("moto refused the right key");
    assert_eq!(op.read("auth/probe").await.unwrap().to_vec(), b"signed");

    // An access key the server does not know: refused before any signature is computed, so
    // this is the credential check itself, not moto's listing quirk above.
    cfg["access_key_id"] = json!("AKIASTOWAGEUNKNOWN01");
    let bad = store(cfg).await;
    let err = bad
        .namespace("a")
        .unwrap()
        .put("k", "forged", Metadata::new())
        .await
        .unwrap_err();
    assert_backend_error(
        &err,
        &own.endpoint(),
        "auth-bucket",
        "refused the credentials",
    );
    assert!(
        !err.to_string().contains(secret),
        "the error leaks the right secret"
    );
    assert_eq!(
        err.to_string().matches("InvalidAccessKeyId").count(),
        1,
        "{err}"
    );
    let blob = format!("blobs/{}", ContentHash::of(b"forged").to_hex());
    let absent = op.stat(&blob).await.unwrap_err();
    assert_eq!(
        absent.kind(),
        opendal::ErrorKind::NotFound,
        "the refused put stored its payload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_conditional_puts_upload_nothing() {
    let Some(server) = server() else { return };
    let cfg = config(&server, &unique_root("precheck"));
    let writer = store(cfg.clone()).await;
    let w = writer.namespace("p").unwrap();
    w.put("live", "one", Metadata::new()).await.unwrap();
    let before = objects(&cfg, "blobs/").await;
    // A fresh process has not seen `live`; a small and a multipart payload, each refused.
    let fresh = store(cfg.clone()).await;
    let f = fresh.namespace("p").unwrap();
    let small = f
        .put_with("live", "never stored", Metadata::new(), PutMode::Create)
        .await
        .unwrap_err();
    assert_eq!(small.kind(), ErrorKind::Conflict, "{small}");
    let large = f
        .put_with(
            "live",
            streamed(Arc::new(pattern(7, 6 << 20))),
            Metadata::new(),
            PutMode::Create,
        )
        .await
        .unwrap_err();
    assert_eq!(large.kind(), ErrorKind::Conflict, "{large}");
    // The writer that knows the key, and a stale `IfVersion`.
    let known = w
        .put_with("live", "also never", Metadata::new(), PutMode::Create)
        .await
        .unwrap_err();
    assert_eq!(known.kind(), ErrorKind::Conflict, "{known}");
    let stale = f
        .put_with("live", "stale", Metadata::new(), PutMode::IfVersion(7))
        .await
        .unwrap_err();
    assert_eq!(stale.kind(), ErrorKind::Conflict, "{stale}");
    assert_eq!(
        objects(&cfg, "blobs/").await,
        before,
        "a refused conditional put uploaded its payload"
    );
    assert!(objects(&cfg, "staging/").await.is_empty());
    // A create of a new key still works from a fresh process, as version 1.
    let made = f
        .put_with("new", "first", Metadata::new(), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(made.version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_metadata_object_spoils_only_its_key() {
    let Some(server) = server() else { return };
    let cfg = config(&server, &unique_root("badmeta"));
    let writer = store(cfg.clone()).await;
    let w = writer.namespace("m").unwrap();
    for key in ["x", "y", "z"] {
        w.put(key, key, Metadata::new()).await.unwrap();
    }
    // Rewrite `record.key` of y's metadata object so it names another key.
    let op = operator(&S3Config::parse(&cfg).unwrap()).unwrap();
    let path = format!("meta/m/{}/{:020}.json", hex::encode("y"), 1);
    let mut object: Value =
        serde_json::from_slice(&op.read(&path).await.unwrap().to_vec()).unwrap();
    object["record"]["key"] = json!("x");
    op.write(&path, serde_json::to_vec(&object).unwrap())
        .await
        .unwrap();

    let fresh = store(cfg.clone()).await;
    let f = fresh.namespace("m").unwrap();
    let listed: Vec<String> = f
        .list(ListOptions::default())
        .await
        .expect("ls fails because of another record's metadata")
        .items
        .into_iter()
        .map(|r| r.key.to_string())
        .collect();
    assert_eq!(listed, vec!["x", "z"], "the broken record is skipped");
    let err = f.head("y", None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains(&path), "{err}");
    assert_eq!(f.get_bytes("x").await.unwrap().1, &b"x"[..]);

    let report = fresh
        .backend()
        .verify(&stowage_core::NoProgress)
        .await
        .expect("verify stops at the bad metadata object");
    assert_eq!(report.records_checked, 2, "{report:?}");
    assert_eq!(report.blobs_checked, 2, "{report:?}");
    assert_eq!(report.problems.len(), 1, "{report:?}");
    let problem = &report.problems[0];
    assert_eq!(problem.key.as_deref(), Some("y"));
    assert_eq!(problem.version, Some(1));
    assert!(problem.detail.contains(&path), "{problem:?}");
    // gc cannot know which blob the broken object references, so it deletes nothing.
    let err = fresh
        .backend()
        .gc(&stowage_core::NoProgress)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(
        err.to_string()
            .contains("1 metadata object cannot be read, so which payload it references"),
        "{err}"
    );
    assert_eq!(objects(&cfg, "blobs/").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_too_long_for_hex_names_live_under_their_hash_and_list_in_order() {
    let Some(server) = server() else { return };
    let root = unique_root("keylen");
    let cfg = with_grace(config(&server, &root), 0);
    let s = store(cfg.clone()).await;
    let ns = "tenant-a";
    let h = s.namespace(ns).unwrap();
    // `<root>/meta/<ns>/<2 hex digits per key byte>/<20 digits>.json` may be 1024 bytes: keys
    // up to `max` are named by their hex, longer ones (up to 1024 bytes) by their hash.
    let fixed = root.len() + 1 + "meta/".len() + ns.len() + 1 + 1 + 20 + ".json".len();
    let max = (1024 - fixed) / 2;
    let longest_hex = "k".repeat(max);
    let shortest_hashed = "k".repeat(max + 1);
    let keys: Vec<String> = vec![
        "a".into(),
        "a".repeat(600),
        "a/b".into(),
        longest_hex.clone(),
        shortest_hashed.clone(),
        format!("m{}", "x".repeat(700)),
        "m".into(),
        "z".into(),
        "z".repeat(1024),
        "\u{65e5}".repeat(341), // 1023 bytes
        "\u{e9}".into(),
        "e\u{301}".into(),
        "\u{1f980}/x.json".into(),
    ];
    for (i, key) in keys.iter().enumerate() {
        let meta = if i % 2 == 0 {
            Metadata::new().with_tag("even")
        } else {
            Metadata::new()
        };
        h.put(key, key.clone(), meta).await.unwrap();
    }
    // Every object name fits in the 1024 bytes AWS takes (moto itself does not check).
    let names = objects(&cfg, "").await;
    assert_eq!(names.len(), keys.len() * 2, "a blob and a version each");
    for name in &names {
        assert!(
            root.len() + 1 + name.len() <= 1024,
            "{} bytes: {name}",
            name.len()
        );
    }
    let hashed = names.iter().filter(|n| n.contains("/~")).count();
    assert_eq!(
        hashed, 5,
        "the five keys over {max} bytes are named by hash"
    );
    for key in &keys {
        let (info, bytes) = h.get_bytes(key).await.unwrap();
        assert_eq!(
            (info.key.as_str(), &bytes[..]),
            (key.as_str(), key.as_bytes())
        );
    }
    let mut sorted = keys.clone();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let listed = |opts: ListOptions| {
        let h = h.clone();
        async move {
            h.list_all(opts)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.key.to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        listed(ListOptions::default()).await,
        sorted,
        "one merged order"
    );
    // Page by page (one key a page), the cursor crosses between the two kinds of name.
    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let page = h
            .list(ListOptions {
                limit: Some(1),
                cursor: cursor.take(),
                ..Default::default()
            })
            .await
            .unwrap();
        paged.extend(page.items.into_iter().map(|r| r.key.to_string()));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(paged.len() <= keys.len(), "paging does not end: {paged:?}");
    }
    assert_eq!(paged, sorted, "pages of one");
    for (prefix, after) in [
        ("a", None),
        ("aaaa", None),
        ("k", None),
        ("z", None),
        (&*"z".repeat(600), None),
        ("", Some(shortest_hashed.as_str())),
        ("", Some(longest_hex.as_str())),
        ("", Some(&*"a".repeat(600))),
        ("m", Some("m")),
    ] {
        let want: Vec<String> = sorted
            .iter()
            .filter(|k| k.starts_with(prefix) && after.is_none_or(|a| k.as_str() > a))
            .cloned()
            .collect();
        let got = listed(ListOptions {
            prefix: Some(prefix.to_string()),
            start_after: after.map(str::to_string),
            ..Default::default()
        })
        .await;
        assert_eq!(got, want, "prefix {prefix:.20?}, after {after:.20?}");
    }
    let found: Vec<String> = h
        .search(&stowage_core::Query::new().tag("even"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|r| r.key.to_string())
        .collect();
    let mut even: Vec<String> = keys.iter().step_by(2).cloned().collect();
    even.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(found, even, "search over both kinds of name");

    // A long key's whole life: versions, tombstone, restore, purge.
    let long = "z".repeat(1024);
    h.put(&long, "v2", Metadata::new()).await.unwrap();
    assert_eq!(h.versions(&long).await.unwrap().len(), 2);
    h.delete(&long, stowage_core::DeleteOptions::default())
        .await
        .unwrap();
    assert_eq!(h.get(&long).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert!(!listed(ListOptions::default()).await.contains(&long));
    let restored = h.restore(&long, None).await.unwrap();
    assert_eq!(restored.version, 4);
    assert_eq!(&h.get_bytes(&long).await.unwrap().1[..], b"v2");
    assert_eq!(h.purge(&long).await.unwrap(), 4);
    assert_eq!(
        h.head(&long, None).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let report = s.backend().verify(&stowage_core::NoProgress).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let gc = s.backend().gc(&stowage_core::NoProgress).await.unwrap();
    assert_eq!(gc.blobs_removed, 2, "the purged key's two payloads");
    // The other namespaces and keys are untouched.
    sorted.retain(|k| *k != long);
    assert_eq!(listed(ListOptions::default()).await, sorted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_blob_reads_as_corrupt() {
    let Some(server) = server() else { return };
    let cfg = config(&server, &unique_root("trunc"));
    let s = store(cfg.clone()).await;
    let h = s.namespace("t").unwrap();
    let payload = pattern(3, 100_000);
    h.put("k", payload.clone(), Metadata::new()).await.unwrap();
    let blob = format!("blobs/{}", ContentHash::of(&payload).to_hex());
    let op = operator(&S3Config::parse(&cfg).unwrap()).unwrap();
    op.write(&blob, payload[..40_000].to_vec()).await.unwrap();

    let fresh = store(cfg.clone()).await;
    let f = fresh.namespace("t").unwrap();
    let whole = async {
        let (_, body) = f.get_with("k", GetOptions::default()).await?;
        body.into_bytes().await
    };
    let ranged = async {
        let options = GetOptions {
            range: Some(stowage_core::ByteRange {
                start: 30_000,
                end: Some(50_000),
            }),
            ..GetOptions::default()
        };
        let (_, body) = f.get_with("k", options).await?;
        body.into_bytes().await
    };
    // A range that starts past the blob's end (the server refuses it).
    let beyond = async {
        let options = GetOptions {
            range: Some(stowage_core::ByteRange {
                start: 60_000,
                end: Some(70_000),
            }),
            ..GetOptions::default()
        };
        let (_, body) = f.get_with("k", options).await?;
        body.into_bytes().await
    };
    for (what, result) in [
        ("whole", whole.await),
        ("range", ranged.await),
        ("beyond", beyond.await),
    ] {
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{what}: {err}");
        let text = err.to_string();
        assert!(text.contains(&blob), "{what}: {text}");
        assert!(text.contains("100000"), "{what}: {text}");
    }
}

/// The exploratory tester's scenario, in-process: puts of distinct payloads while gc runs in
/// a loop (default grace period). gc lists payloads and versions at different moments, so a
/// payload uploaded but not yet claimed looks unreferenced; the grace period keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_running_beside_writers_loses_no_payload() {
    let Some(server) = server() else { return };
    let store = store(config(&server, &unique_root("gc-race"))).await;
    let handle = store.namespace("race").unwrap();
    let writer = {
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut written = Vec::new();
            for i in 0..40u64 {
                let key = format!("k{}", i % 4);
                let payload = pattern(1_000 + i, 20_000);
                let info = handle.put(&key, payload.clone(), Metadata::new()).await;
                written.push((key, info.expect("put beside gc").version, payload));
            }
            written
        })
    };
    let sweeper = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..15 {
                store.gc(&stowage_core::NoProgress).await.expect("gc");
            }
        })
    };
    let (written, swept) = tokio::join!(writer, sweeper);
    swept.unwrap();
    let written = written.unwrap();
    let report = store.verify(&stowage_core::NoProgress).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.records_checked, 40, "{report:?}");
    for (key, version, payload) in written {
        let options = GetOptions {
            version: Some(version),
            range: None,
        };
        let (_, body) = handle.get_with(&key, options).await.unwrap();
        let bytes = body.into_bytes().await.unwrap();
        assert!(
            bytes[..] == payload[..],
            "{key} version {version} reads back"
        );
    }
}

/// With a short grace period, gc removes an unreferenced payload older than it and keeps one
/// written just now (which could belong to a put that has not claimed its version yet).
/// Staging leftovers `gc` removes are counted with their bytes, as payloads removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_counts_the_staging_leftovers_it_removes() {
    let Some(server) = server() else { return };
    let cfg = with_grace(config(&server, &unique_root("gc-staging")), 0);
    let store = store(cfg.clone()).await;
    store
        .namespace("g")
        .unwrap()
        .put("k", pattern(23, 1_000), Metadata::new())
        .await
        .unwrap();
    let op = operator(&S3Config::parse(&cfg).unwrap()).unwrap();
    op.write("staging/0123456789abcdef", vec![1u8; 5_000])
        .await
        .unwrap();
    op.write("staging/fedcba9876543210", vec![2u8; 3_000])
        .await
        .unwrap();
    let report = store.gc(&stowage_core::NoProgress).await.unwrap();
    assert_eq!(
        (report.blobs_removed, report.bytes_freed, report.blobs_kept),
        (2, 8_000, 1),
        "{report:?}"
    );
    assert!(objects(&cfg, "staging/").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_spares_young_unreferenced_payloads() {
    let Some(server) = server() else { return };
    let cfg = with_grace(config(&server, &unique_root("gc-grace")), 1);
    let store = store(cfg.clone()).await;
    let handle = store.namespace("g").unwrap();
    let (old, young) = (pattern(21, 3_000), pattern(22, 4_000));
    handle
        .put("old", old.clone(), Metadata::new())
        .await
        .unwrap();
    handle.purge("old").await.unwrap();
    // Past the grace period plus the second LastModified is rounded to.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    handle
        .put("young", young.clone(), Metadata::new())
        .await
        .unwrap();
    handle.purge("young").await.unwrap();
    let report = store.gc(&stowage_core::NoProgress).await.unwrap();
    assert_eq!(
        (report.blobs_removed, report.bytes_freed, report.blobs_kept),
        (1, 3_000, 1),
        "{report:?}"
    );
    assert_eq!(
        objects(&cfg, "blobs/").await,
        vec![format!("blobs/{}", ContentHash::of(&young).to_hex())]
    );
    // gc's clock probe leaves nothing behind.
    assert!(objects(&cfg, "staging/").await.is_empty());
}

/// A put whose payload is stored already (dedup, nothing uploaded) refreshes an old blob
/// before claiming, so a gc deciding by age keeps it. Without the refresh this blob, left
/// unreferenced by a purge and aged past the grace period, would be deleted under the new
/// version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedup_hit_on_an_old_blob_refreshes_it_before_the_claim() {
    let Some(server) = server() else { return };
    let cfg = with_grace(config(&server, &unique_root("gc-refresh")), 1);
    let store = store(cfg.clone()).await;
    let handle = store.namespace("d").unwrap();
    let small = pattern(31, 20_000);
    // Larger than one part (5 MiB here): the multipart path, whose refresh is the copy.
    let large = Arc::new(pattern(32, (5 << 20) + 1_000));
    handle
        .put("small", small.clone(), Metadata::new())
        .await
        .unwrap();
    handle
        .put("large", streamed(large.clone()), Metadata::new())
        .await
        .unwrap();
    handle.purge("small").await.unwrap();
    handle.purge("large").await.unwrap();
    let paths = [&small[..], &large[..]].map(|p| format!("blobs/{}", ContentHash::of(p).to_hex()));
    let before = [
        last_modified(&cfg, &paths[0]).await,
        last_modified(&cfg, &paths[1]).await,
    ];
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    handle
        .put("small", small.clone(), Metadata::new())
        .await
        .unwrap();
    handle
        .put("large", streamed(large.clone()), Metadata::new())
        .await
        .unwrap();
    // The claim follows the refresh, so a gc that listed the versions before the claim would
    // see this LastModified in its check right before deleting, and keep the blob.
    for (path, before) in paths.iter().zip(before) {
        let after = last_modified(&cfg, path).await;
        assert!(
            after > before,
            "{path} was not refreshed: {before:?} then {after:?}"
        );
    }
    let report = store.gc(&stowage_core::NoProgress).await.unwrap();
    assert_eq!(
        (report.blobs_removed, report.blobs_kept),
        (0, 2),
        "{report:?}"
    );
    assert_eq!(&handle.get_bytes("small").await.unwrap().1[..], &small[..]);
    assert!(handle.get_bytes("large").await.unwrap().1[..] == large[..]);
    assert!(objects(&cfg, "staging/").await.is_empty());
}

/// Reads version `version` of `key` whole.
async fn read_version(
    h: &stowage_core::NamespaceHandle,
    key: &str,
    version: u64,
) -> stowage_core::Result<Bytes> {
    let options = GetOptions {
        version: Some(version),
        ..GetOptions::default()
    };
    let (_, body) = h.get_with(key, options).await?;
    body.into_bytes().await
}

/// Each version reads `payload` byte for byte and `verify` is clean.
async fn assert_healed(
    s: &Stowage,
    h: &stowage_core::NamespaceHandle,
    versions: &[(&str, u64)],
    payload: &[u8],
    case: &str,
) {
    for &(k, v) in versions {
        let got = read_version(h, k, v)
            .await
            .unwrap_or_else(|e| panic!("{case}: {k} v{v}: {e}"));
        assert!(got[..] == payload[..], "{case}: {k} v{v} reads other bytes");
    }
    let report = s.verify(&stowage_core::NoProgress).await.unwrap();
    assert!(report.is_clean(), "{case}: {:?}", report.problems);
}

/// Puts `payload` under `a` and `b`, damages its blob with `damage` (a raw write of other
/// bytes), checks that reads fail and `verify` tells the repair, puts it again under
/// `repair_key`, then checks every version reads and the bucket holds one blob.
async fn damage_and_repair(
    cfg: &Value,
    payload: &Arc<Vec<u8>>,
    damage: Vec<u8>,
    stream: bool,
    repair_key: &str,
    case: &str,
) {
    let s = store(cfg.clone()).await;
    let h = s.namespace("heal").unwrap();
    let body = |stream: bool| -> Body {
        if stream {
            streamed(payload.clone())
        } else {
            Body::from(payload.to_vec())
        }
    };
    h.put("a", body(false), Metadata::new()).await.unwrap();
    h.put("b", body(true), Metadata::new()).await.unwrap();
    let blob = format!("blobs/{}", ContentHash::of(payload).to_hex());
    let op = operator(&S3Config::parse(cfg).unwrap()).unwrap();
    op.write(&blob, damage).await.unwrap();

    for k in ["a", "b"] {
        let err = read_version(&h, k, 1).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{case}: {k}: {err}");
    }
    let problems = s.verify(&stowage_core::NoProgress).await.unwrap().problems;
    assert_eq!(problems.len(), 2, "{case}: {problems:?}");
    for p in &problems {
        assert!(
            p.detail
                .contains("to repair it, put the original bytes again under any key"),
            "{case}: {p:?}"
        );
    }

    h.put(repair_key, body(stream), Metadata::new())
        .await
        .unwrap();
    let mut versions = vec![("a", 1), ("b", 1)];
    versions.push((repair_key, if repair_key == "a" { 2 } else { 1 }));
    assert_healed(&s, &h, &versions, payload, case).await;
    assert_eq!(objects(cfg, "blobs/").await, [blob], "{case}");
    assert!(objects(cfg, "staging/").await.is_empty(), "{case}");
    // Another process reads the repaired blob too.
    let other = store(cfg.clone()).await;
    let h = other.namespace("heal").unwrap();
    assert_healed(&other, &h, &versions, payload, case).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_put_repairs_a_truncated_or_overwritten_small_blob() {
    let Some(server) = server() else { return };
    let payload = Arc::new(pattern(41, 100_000));
    for (damage, what) in [
        (payload[..40_000].to_vec(), "truncated"),
        (pattern(42, 100_001), "overwritten, one byte longer"),
    ] {
        for stream in [false, true] {
            for repair_key in ["a", "c"] {
                // The default grace period (its dedup check is the HEAD that also reads the
                // size), and none (the HEAD is sent for the size alone).
                for grace in [3600, 0] {
                    let case = format!(
                        "small, {what}, streamed {stream}, re-put under {repair_key}, grace {grace}"
                    );
                    let cfg = with_grace(config(&server, &unique_root("heal-small")), grace);
                    damage_and_repair(&cfg, &payload, damage.clone(), stream, repair_key, &case)
                        .await;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_put_repairs_a_truncated_or_overwritten_multipart_blob() {
    let Some(server) = server() else { return };
    // Larger than one part (5 MiB here): the staging upload and its copy.
    let payload = Arc::new(pattern(43, (5 << 20) + 1_000));
    for (damage, what, stream, repair_key) in [
        (payload[..1 << 20].to_vec(), "truncated", true, "a"),
        (pattern(44, 3_000), "overwritten", false, "c"),
    ] {
        let case = format!("multipart, {what}, streamed {stream}, re-put under {repair_key}");
        let cfg = config(&server, &unique_root("heal-large"));
        damage_and_repair(&cfg, &payload, damage, stream, repair_key, &case).await;
    }
}

/// Damage that keeps the blob's size is not seen by a put (that would take reading it back);
/// `verify` says so and names the repair that works: delete the object, put the bytes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_repair_of_a_same_size_overwrite() {
    let Some(server) = server() else { return };
    let cfg = config(&server, &unique_root("heal-same-size"));
    let s = store(cfg.clone()).await;
    let h = s.namespace("heal").unwrap();
    let payload = pattern(45, 50_000);
    h.put("a", payload.clone(), Metadata::new()).await.unwrap();
    let blob = format!("blobs/{}", ContentHash::of(&payload).to_hex());
    let op = operator(&S3Config::parse(&cfg).unwrap()).unwrap();
    let mut bent = payload.clone();
    bent[25_000] ^= 0x20;
    op.write(&blob, bent).await.unwrap();
    let problems = s.verify(&stowage_core::NoProgress).await.unwrap().problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0]
            .detail
            .contains(&format!("delete the object {blob}")),
        "{problems:?}"
    );
    op.delete(&blob).await.unwrap();
    h.put("other", payload.clone(), Metadata::new())
        .await
        .unwrap();
    assert_healed(
        &s,
        &h,
        &[("a", 1), ("other", 1)],
        &payload,
        "same size, deleted, put again",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_duplicate_stays_one_blob_untouched() {
    let Some(server) = server() else { return };
    let cfg = config(&server, &unique_root("heal-healthy"));
    let s = store(cfg.clone()).await;
    let h = s.namespace("heal").unwrap();
    let small = Arc::new(pattern(46, 30_000));
    let large = Arc::new(pattern(47, (5 << 20) + 10));
    h.put("small/1", small.to_vec(), Metadata::new())
        .await
        .unwrap();
    h.put("large/1", streamed(large.clone()), Metadata::new())
        .await
        .unwrap();
    let paths = [&small[..], &large[..]].map(|p| format!("blobs/{}", ContentHash::of(p).to_hex()));
    let before = [
        last_modified(&cfg, &paths[0]).await,
        last_modified(&cfg, &paths[1]).await,
    ];
    // LastModified counts seconds: a rewrite after this would show.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    h.put("small/2", small.to_vec(), Metadata::new())
        .await
        .unwrap();
    h.put("small/3", streamed(small.clone()), Metadata::new())
        .await
        .unwrap();
    h.put("large/2", streamed(large.clone()), Metadata::new())
        .await
        .unwrap();
    for (path, before) in paths.iter().zip(before) {
        assert_eq!(
            last_modified(&cfg, path).await,
            before,
            "{path} was written again"
        );
    }
    let mut expected = paths.to_vec();
    expected.sort();
    assert_eq!(objects(&cfg, "blobs/").await, expected);
    assert!(objects(&cfg, "staging/").await.is_empty());
    let report = s.gc(&stowage_core::NoProgress).await.unwrap();
    assert_eq!(
        (report.blobs_removed, report.blobs_kept),
        (0, 2),
        "{report:?}"
    );
    assert_healed(&s, &h, &[("small/1", 1), ("small/3", 1)], &small, "healthy").await;
    assert_healed(&s, &h, &[("large/1", 1), ("large/2", 1)], &large, "healthy").await;
}

// ---- a version claim whose answer is lost ----

/// What [`faulty_proxy`] does to a request it picks.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// Sends it on (it takes effect) and swallows the whole answer.
    LoseAnswer,
    /// Sends it on and passes the answer's headers only: a body that stalls.
    StallBody,
    /// Never sends it (it does not take effect), and never answers.
    LoseRequest,
}

/// A proxy in front of the server that passes every request on, except the first `limit`
/// requests whose first line `hits`, which get `fault`. Once a connection carried a picked
/// request, nothing more passes on it.
fn faulty_proxy(upstream: &str, hits: fn(&str) -> bool, limit: usize, fault: Fault) -> String {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    let upstream = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let left = Arc::new(AtomicUsize::new(limit));
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let faulty = Arc::new(AtomicBool::new(false));
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (flag, left) = (faulty.clone(), left.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = c_in.read(&mut buf) {
                    let head = String::from_utf8_lossy(&buf[..n.min(2048)]);
                    if hits(head.lines().next().unwrap_or(""))
                        && left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1))
                            .is_ok()
                    {
                        flag.store(true, Ordering::SeqCst);
                    }
                    if fault == Fault::LoseRequest && flag.load(Ordering::SeqCst) {
                        continue;
                    }
                    if s_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let mut sent_headers = false;
                while let Ok(n @ 1..) = s_in.read(&mut buf) {
                    let mut pass = &buf[..n];
                    if faulty.load(Ordering::SeqCst) {
                        let end = buf[..n].windows(4).position(|w| w == b"\r\n\r\n");
                        pass = match (fault == Fault::StallBody && !sent_headers, end) {
                            (true, Some(at)) => &buf[..at + 4],
                            _ => &[],
                        };
                        sent_headers |= !pass.is_empty();
                    }
                    if c_out.write_all(pass).is_err() {
                        break;
                    }
                }
            });
        }
    });
    endpoint
}

/// [`faulty_proxy`] swallowing the answers to the first `swallow` writes of a metadata object.
fn answer_swallowing_proxy(upstream: &str, swallow: usize) -> String {
    faulty_proxy(
        upstream,
        |line| line.starts_with("PUT ") && line.contains("/meta/"),
        swallow,
        Fault::LoseAnswer,
    )
}

/// A payload whose body stalls after its headers fails `verify` in the form a failed `get`
/// has: endpoint, bucket, retries and the timeout's hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_payload_fails_verify_naming_endpoint_and_timeout() {
    let Some(server) = server() else { return };
    let root = unique_root("stalled-verify");
    let direct = store(config(&server, &root)).await;
    direct
        .namespace("n")
        .unwrap()
        .put("k", Body::from(vec![7u8; 100_000]), Metadata::new())
        .await
        .unwrap();
    let mut cfg = config(&server, &root);
    let endpoint = faulty_proxy(
        &server.endpoint,
        |line| line.starts_with("GET ") && line.contains("/blobs/"),
        usize::MAX,
        Fault::StallBody,
    );
    cfg["endpoint"] = json!(endpoint);
    cfg["timeout_ms"] = json!(500);
    cfg["retries"] = json!(1);
    let err = store(cfg)
        .await
        .verify(&stowage_core::NoProgress)
        .await
        .unwrap_err();
    assert_backend_error(&err, &endpoint, &server.bucket, "timeout_ms = 500");
}

/// A claim that reached the server but whose answer was lost is sent again by the retry
/// layer and refused (the object exists): that is the claim's own object, not a lost race. So
/// the put succeeds once, with one version, and a conditional put does not report a conflict
/// after it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_answer_is_lost_counts_once_and_is_not_a_conflict() {
    let Some(server) = server() else { return };
    let root = unique_root("lost-claim-answer");
    let direct = store(config(&server, &root)).await;
    let d = direct.namespace("n").unwrap();
    d.put("k", Body::from(&b"one"[..]), Metadata::new())
        .await
        .unwrap();
    let lossy = |swallow: usize| {
        let mut cfg = config(&server, &root);
        cfg["endpoint"] = json!(answer_swallowing_proxy(&server.endpoint, swallow));
        cfg["timeout_ms"] = json!(1000);
        cfg["retries"] = json!(2);
        cfg
    };
    let versions =
        |n: Vec<stowage_core::RecordInfo>| n.iter().map(|r| r.version).collect::<Vec<_>>();

    let s = store(lossy(1)).await;
    let written = s
        .namespace("n")
        .unwrap()
        .put_with(
            "k",
            Body::from(&b"two"[..]),
            Metadata::new(),
            PutMode::IfVersion(1),
        )
        .await
        .expect("a conditional put whose claim answer was lost");
    assert_eq!(written.version, 2);
    assert_eq!(versions(d.versions("k").await.unwrap()), [1, 2]);

    let s = store(lossy(1)).await;
    let written = s
        .namespace("n")
        .unwrap()
        .put("k", Body::from(&b"three"[..]), Metadata::new())
        .await
        .unwrap();
    assert_eq!(written.version, 3);
    assert_eq!(versions(d.versions("k").await.unwrap()), [1, 2, 3]);

    // Every claim's answer lost in turn (each retry's answer too): the put still ends, after
    // its retries, and leaves at most the one version it made.
    // (The timeout only keeps a put that loops, as it did, from hanging the test run.)
    let s = store(lossy(usize::MAX)).await;
    let h = s.namespace("n").unwrap();
    let outcome = tokio::time::timeout(
        Duration::from_secs(300),
        h.put_with(
            "fresh",
            Body::from(&b"new"[..]),
            Metadata::new(),
            PutMode::Create,
        ),
    )
    .await
    .expect("the put never ended");
    let err = outcome.expect_err("no answer ever came back");
    // It may have landed: the message says so, so a retry is not made blind.
    assert!(err.to_string().contains("may have landed"), "{err}");
    let made = d.versions("fresh").await.map(versions).unwrap_or_default();
    assert!(made.len() <= 1, "{made:?}");
    assert_eq!(
        d.get("k").await.unwrap().1.into_bytes().await.unwrap(),
        &b"three"[..]
    );
}

/// The third and later deletes of metadata objects: a purge that stops after two.
fn third_meta_delete_on(line: &str) -> bool {
    static SEEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    line.starts_with("DELETE ")
        && line.contains("/meta/")
        && SEEN.fetch_add(1, Ordering::SeqCst) >= 2
}

/// A key whose purge was interrupted keeps its newest versions and not version 1: a `Create`
/// must still see the live version (and number after the latest), not take the key for new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_after_an_interrupted_purge_sees_the_versions_left() {
    let Some(server) = server() else { return };
    let cfg = config(&server, &unique_root("interrupted-purge"));
    let s = store(cfg.clone()).await;
    let h = s.namespace("n").unwrap();
    for body in ["one", "two", "three"] {
        h.put("k", Body::from(body.as_bytes().to_vec()), Metadata::new())
            .await
            .unwrap();
    }
    // A purge whose third delete never gets an answer: versions 1 and 2 go, 3 stays.
    let mut cut = cfg.clone();
    cut["endpoint"] = json!(faulty_proxy(
        &server.endpoint,
        third_meta_delete_on,
        usize::MAX,
        Fault::LoseRequest
    ));
    cut["timeout_ms"] = json!(500);
    cut["retries"] = json!(1);
    let err = store(cut)
        .await
        .namespace("n")
        .unwrap()
        .purge("k")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    let metas = objects(&cfg, "meta/").await;
    assert_eq!(metas.len(), 1, "{metas:?}");
    assert!(metas[0].ends_with("00000000000000000003.json"), "{metas:?}");
    let fresh = store(cfg.clone()).await;
    let f = fresh.namespace("n").unwrap();
    let err = f
        .put_with(
            "k",
            Body::from(&b"created"[..]),
            Metadata::new(),
            PutMode::Create,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("current version is 3"), "{err}");
    assert_eq!(
        f.get("k").await.unwrap().1.into_bytes().await.unwrap(),
        &b"three"[..]
    );
    // A key never purged is created with version 1, as before.
    let written = f
        .put_with(
            "other",
            Body::from(&b"x"[..]),
            Metadata::new(),
            PutMode::Create,
        )
        .await
        .unwrap();
    assert_eq!(written.version, 1);
    // Deleted, the key takes a create again: as version 5, after the tombstone.
    f.delete("k", Default::default()).await.unwrap();
    let fresh = store(cfg).await;
    let written = fresh
        .namespace("n")
        .unwrap()
        .put_with(
            "k",
            Body::from(&b"created"[..]),
            Metadata::new(),
            PutMode::Create,
        )
        .await
        .unwrap();
    assert_eq!(written.version, 5);
}
