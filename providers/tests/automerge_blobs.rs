//! Byte payloads of the `automerge` provider at or above `blob_min_bytes` live in
//! content-addressed files under `<root>/blobs/`, streamed in and out: peak memory of a big put
//! and get (measured in a child process), range reads, versions mixing file and inline
//! payloads, dedup, purge + gc, gc beside writers, verify of damaged files, version-1 stores,
//! and sync copying the files.
#![cfg(feature = "automerge")]

#[path = "../benches/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use stowage_core::{
    Body, ByteRange, ContentHash, ContentHasher, ErrorKind, GetOptions, Key, Metadata, Namespace,
    NoProgress, PutMode, StorageBackend, StorageProviderFactory,
};
use stowage_providers::automerge::{
    sync_stores, AutomergeBackend, AutomergeConfig, AutomergeFactory,
};

mod scratch;

/// A fresh directory under cargo's per-target temporary directory.
fn fresh_root(label: &str) -> PathBuf {
    scratch::fresh_root("automerge-blobs", label)
}

fn ns() -> Namespace {
    Namespace::new("default").unwrap()
}

fn key(k: &str) -> Key {
    Key::new(k).unwrap()
}

/// `total` bytes made chunk by chunk as they are read (each chunk distinct), so the payload is
/// never whole in memory; with the hash of the whole.
fn generated(seed: u64, total: u64) -> (Body, ContentHash) {
    const CHUNK: u64 = 256 * 1024;
    let chunk_of = move |i: u64| {
        let len = CHUNK.min(total - i * CHUNK) as usize;
        let mut chunk = vec![(i.wrapping_add(seed) % 251) as u8; len];
        let tag = (i ^ seed.rotate_left(17)).to_le_bytes();
        chunk[..8.min(len)].copy_from_slice(&tag[..8.min(len)]);
        Bytes::from(chunk)
    };
    let mut hasher = ContentHasher::new();
    for i in 0..total.div_ceil(CHUNK) {
        hasher.update(&chunk_of(i));
    }
    let stream = futures::stream::iter(0..total.div_ceil(CHUNK)).map(move |i| Ok(chunk_of(i)));
    (Body::from_stream(stream, None), hasher.finish().0)
}

/// Hash and size of a body, read chunk by chunk.
async fn hash_of(mut body: Body) -> stowage_core::Result<(ContentHash, u64)> {
    let mut hasher = ContentHasher::new();
    while let Some(chunk) = body.next_chunk().await {
        hasher.update(&chunk?);
    }
    Ok(hasher.finish())
}

const RSS_CHILD: &str = "STOWAGE_AM_BLOB_RSS_CHILD";
const BIG: u64 = 64 * 1024 * 1024;

/// The child's side of `a_big_payload_streams_in_and_out_in_bounded_memory`: a no-op unless
/// the parent started this binary with [`RSS_CHILD`] set to a root. Prints one line,
/// `RSS base=<KiB> put=<KiB> get=<KiB>` (`VmHWM` before, after the put, after the get).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_child() {
    let Ok(root) = std::env::var(RSS_CHILD) else {
        return;
    };
    let store = AutomergeBackend::new(AutomergeConfig::new(&root)).unwrap();
    store
        .put(
            &ns(),
            &key("warm-up"),
            Body::from("x"),
            Metadata::new(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let base = support::vm_hwm_kib();
    let (body, hash) = generated(7, BIG);
    let info = store
        .put(
            &ns(),
            &key("big.bin"),
            body,
            Metadata::new(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    assert_eq!((info.hash, info.size), (hash, BIG));
    let put = support::vm_hwm_kib();
    let (got, body) = store
        .get(&ns(), &key("big.bin"), GetOptions::default())
        .await
        .unwrap();
    assert_eq!((got.hash, got.size), (hash, BIG));
    assert_eq!(
        hash_of(body).await.unwrap(),
        (hash, BIG),
        "payload read back"
    );
    let get = support::vm_hwm_kib();
    println!("RSS base={base} put={put} get={get}");
}

#[test]
fn a_big_payload_streams_in_and_out_in_bounded_memory() {
    if support::vm_hwm_kib() == 0 {
        eprintln!("SKIPPED: no /proc/self/status here to read peak memory from");
        return;
    }
    let root = fresh_root("rss");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "rss_child", "--nocapture", "--test-threads", "1"])
        .env(RSS_CHILD, &root)
        .output()
        .expect("starting the child process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| {
            l.split_once("RSS base=")
                .map(|(_, rest)| format!("base={rest}"))
        })
        .unwrap_or_else(|| panic!("the child printed no RSS line:\n{stdout}"));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    let (base, put, get) = (field("base"), field("put"), field("get"));
    eprintln!(
        "peak RSS growth for a {} MiB payload: put {} MiB, put + get {} MiB",
        BIG >> 20,
        (put - base) >> 10,
        (get - base) >> 10
    );
    // Streaming keeps a few chunks in flight; the old code held the payload several times.
    let bound = (BIG / 4) >> 10;
    assert!(
        put - base < bound && get - base < bound,
        "peak memory grew by {} KiB (put) / {} KiB (put + get) for a {} KiB payload; expected under {bound} KiB",
        put - base,
        get - base,
        BIG >> 10
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// A store over `root` whose byte payloads of at least `threshold` bytes go to files.
fn store(root: &Path, threshold: u64) -> AutomergeBackend {
    let mut config = AutomergeConfig::new(root);
    config.fsync = false;
    config.blob_min_bytes = threshold;
    AutomergeBackend::new(config).unwrap()
}

/// Every payload file under `<root>/blobs/`.
fn blob_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(fans) = std::fs::read_dir(root.join("blobs")) else {
        return out;
    };
    for fan in fans {
        for file in std::fs::read_dir(fan.unwrap().path()).unwrap() {
            out.push(file.unwrap().path());
        }
    }
    out.sort();
    out
}

/// Where the payload file of `hash` lives.
fn blob_path(root: &Path, hash: &ContentHash) -> PathBuf {
    let hex = hash.to_hex();
    root.join("blobs").join(&hex[..2]).join(&hex[2..])
}

/// Total size of the data files of every document (everything under `docs/`).
fn docs_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            docs_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

/// `len` pseudo-random bytes, distinct per seed.
fn payload(seed: u64, len: usize) -> Vec<u8> {
    stowage_core::testkit::pattern(seed, len)
}

async fn put(store: &AutomergeBackend, k: &str, bytes: &[u8]) -> stowage_core::RecordInfo {
    store
        .put(
            &ns(),
            &key(k),
            Body::from(bytes.to_vec()),
            Metadata::new(),
            PutMode::Overwrite,
        )
        .await
        .unwrap()
}

/// A put its precondition refuses writes nothing, a payload file included: a conditional put of
/// a payload for a file is checked before the payload is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_conditional_put_of_a_payload_for_a_file_reads_and_writes_none_of_it() {
    let root = fresh_root("refused-conditional");
    let store = store(&root, 1024);
    put(&store, "k", &payload(1, 5000)).await;
    let files = blob_files(&root);
    assert_eq!(files.len(), 1);
    // A body that fails if anything reads it: the refusal must come first.
    let unread = |hint: Option<u64>| {
        let chunks: Vec<stowage_core::Result<Bytes>> = vec![
            Ok(Bytes::from(payload(2, 4000))),
            Err(stowage_core::Error::invalid_input(
                "the refused put read its payload",
            )),
        ];
        Body::from_stream(futures::stream::iter(chunks), hint)
    };
    for (mode, hint) in [
        (PutMode::IfVersion(7), Some(8000)),
        (PutMode::IfVersion(0), None),
        (PutMode::Create, None),
    ] {
        let err = store
            .put(&ns(), &key("k"), unread(hint), Metadata::new(), mode)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict, "{mode:?}: {err}");
        assert!(err.to_string().contains("current version is 1"), "{err}");
    }
    assert_eq!(
        blob_files(&root),
        files,
        "a refused put left a payload file"
    );
    // Once the key is deleted, Create holds again and stores the payload.
    store
        .delete(&ns(), &key("k"), Default::default())
        .await
        .unwrap();
    let bytes = payload(3, 6000);
    let written = store
        .put(
            &ns(),
            &key("k"),
            Body::from(bytes.clone()),
            Metadata::new(),
            PutMode::Create,
        )
        .await
        .unwrap();
    assert_eq!(written.version, 3);
    assert_eq!(blob_files(&root).len(), 2);
}

async fn get_all(
    store: &AutomergeBackend,
    k: &str,
    version: Option<u64>,
) -> stowage_core::Result<Vec<u8>> {
    let (_, body) = store
        .get(
            &ns(),
            &key(k),
            GetOptions {
                version,
                range: None,
            },
        )
        .await?;
    Ok(body.into_bytes().await?.to_vec())
}

fn format_of(root: &Path) -> String {
    std::fs::read_to_string(root.join("FORMAT")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_passes_with_every_payload_in_a_file() {
    for threshold in [0u64, 1000] {
        let root = fresh_root(&format!("run-all-{threshold}"));
        let report = stowage_core::testkit::run_all(
            stowage_providers::automerge::factory(),
            json!({ "root": root, "fsync": false, "blob_min_bytes": threshold }),
        )
        .await;
        report.assert_passed();
        assert!(
            !blob_files(&root).is_empty(),
            "threshold {threshold}: the kit's payloads should have gone through files"
        );
        assert_eq!(format_of(&root), "stowage-automerge 2\n");
    }
}

#[test]
fn blob_min_bytes_is_validated() {
    let f = AutomergeFactory;
    let err = f
        .validate(&json!({"root": "x", "blob_min_bytes": 1u64 << 30}))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blob_min_bytes") && err.contains("16777216"),
        "{err}"
    );
    let err = f
        .validate(&json!({"root": "x", "blob_min_bytes": -1}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("blob_min_bytes"), "{err}");
    f.validate(&json!({"root": "x", "blob_min_bytes": 0}))
        .unwrap();
    let schema = f.config_schema();
    assert_eq!(schema["properties"]["blob_min_bytes"]["default"], 1048576);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reads_of_a_payload_in_a_file() {
    let root = fresh_root("ranges");
    let s = store(&root, 1 << 20);
    let bytes = payload(1, 3 * (1 << 20) + 17);
    let info = put(&s, "big", &bytes).await;
    assert_eq!(
        (info.hash, info.size),
        (ContentHash::of(&bytes), bytes.len() as u64)
    );
    assert_eq!(blob_files(&root), vec![blob_path(&root, &info.hash)]);
    assert!(
        docs_bytes(&root.join("docs")) < 64 * 1024,
        "the document must hold a reference, not the payload"
    );
    let n = bytes.len() as u64;
    for (start, end) in [
        (0, Some(1)),
        (0, Some(300_000)),
        (1_048_575, Some(1_048_577)),
        (2_000_000, None),
        (n - 1, None),
        (5, Some(n + 100)),
    ] {
        let (got_info, body) = s
            .get(
                &ns(),
                &key("big"),
                GetOptions {
                    version: None,
                    range: Some(ByteRange { start, end }),
                },
            )
            .await
            .unwrap();
        assert_eq!(got_info, info);
        let e = end.unwrap_or(n).min(n);
        assert_eq!(
            body.into_bytes().await.unwrap().to_vec(),
            bytes[start as usize..e as usize].to_vec(),
            "range {start}..{end:?}"
        );
    }
    let err = s
        .get(
            &ns(),
            &key("big"),
            GetOptions {
                version: None,
                range: Some(ByteRange {
                    start: n,
                    end: None,
                }),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert_eq!(get_all(&s, "big", None).await.unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_alternating_file_and_inline_payloads() {
    let root = fresh_root("alternating");
    let s = store(&root, 1000);
    let big1 = payload(10, 5000);
    let small = payload(11, 999);
    let big2 = payload(12, 1000);
    let json_big = serde_json::to_vec(&json!({"list": (0..500).collect::<Vec<_>>()})).unwrap();
    let not_json_big = [b"{not json ".as_slice(), &payload(13, 2000)].concat();
    let mut written = vec![
        put(&s, "k", &big1).await,
        put(&s, "k", &small).await,
        put(&s, "k", &big2).await,
        put(&s, "k", &[]).await,
        put(&s, "k", &big1).await,
    ];
    let json_meta = Metadata::new().with_content_type("application/json");
    written.push(
        s.put(
            &ns(),
            &key("k"),
            Body::from(json_big.clone()),
            json_meta.clone(),
            PutMode::Overwrite,
        )
        .await
        .unwrap(),
    );
    written.push(
        s.put(
            &ns(),
            &key("k"),
            Body::from(not_json_big.clone()),
            json_meta,
            PutMode::Overwrite,
        )
        .await
        .unwrap(),
    );
    let expected: Vec<Vec<u8>> = vec![
        big1.clone(),
        small.clone(),
        big2.clone(),
        vec![],
        big1.clone(),
        json_big.clone(),
        not_json_big.clone(),
    ];
    // Files: big1 (once, shared by versions 1 and 5), big2 and the undeclarable "JSON".
    assert_eq!(blob_files(&root).len(), 3, "{:?}", blob_files(&root));
    let versions = s.versions(&ns(), &key("k")).await.unwrap();
    assert_eq!(versions, written);
    for (i, want) in expected.iter().enumerate() {
        let v = i as u64 + 1;
        assert_eq!(
            (versions[i].hash, versions[i].size),
            (ContentHash::of(want), want.len() as u64),
            "version {v}"
        );
        assert_eq!(
            &get_all(&s, "k", Some(v)).await.unwrap(),
            want,
            "version {v}"
        );
        assert_eq!(s.head(&ns(), &key("k"), Some(v)).await.unwrap(), written[i]);
    }
    // A reopened store (no cache) and a listing (latest.json) agree.
    let again = store(&root, 1000);
    assert_eq!(again.versions(&ns(), &key("k")).await.unwrap(), written);
    let listed = again.list(&ns(), Default::default()).await.unwrap().items;
    assert_eq!(listed, vec![written[6].clone()]);
    // Restoring a version held in a file refers to the same file again.
    let restored = again.restore(&ns(), &key("k"), Some(3)).await.unwrap();
    assert_eq!(
        (restored.hash, restored.size),
        (ContentHash::of(&big2), 1000)
    );
    assert_eq!(get_all(&again, "k", None).await.unwrap(), big2);
    assert_eq!(blob_files(&root).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_in_two_keys_is_one_file_and_gc_removes_it_only_when_unreferenced() {
    let root = fresh_root("dedup-gc");
    let s = store(&root, 1000);
    let shared = payload(20, 70_000);
    let other = payload(21, 30_000);
    let old = payload(22, 40_000);
    let a = put(&s, "a", &shared).await;
    let b = put(&s, "b", &shared).await;
    assert_eq!(a.hash, b.hash);
    put(&s, "c", &other).await;
    put(&s, "d", &old).await;
    put(&s, "d", b"small now").await;
    s.delete(&ns(), &key("c"), Default::default())
        .await
        .unwrap();
    assert_eq!(blob_files(&root).len(), 3, "one file per distinct payload");

    let report = s.gc(&NoProgress).await.unwrap();
    assert_eq!((report.blobs_removed, report.bytes_freed), (0, 0));
    assert!(report.blobs_kept >= 4, "{report:?}");

    s.purge(&ns(), &key("a")).await.unwrap();
    let report = s.gc(&NoProgress).await.unwrap();
    assert_eq!(
        (report.blobs_removed, report.bytes_freed),
        (0, 0),
        "b still refers to the shared file"
    );
    assert!(
        blob_path(&root, &a.hash).exists(),
        "purge leaves the file to gc"
    );
    assert_eq!(get_all(&s, "b", None).await.unwrap(), shared);

    s.purge(&ns(), &key("b")).await.unwrap();
    let report = s.gc(&NoProgress).await.unwrap();
    assert_eq!((report.blobs_removed, report.bytes_freed), (1, 70_000));
    assert!(!blob_path(&root, &a.hash).exists());
    // The tombstoned key's payload and an old version's payload stay.
    assert_eq!(get_all(&s, "c", Some(1)).await.unwrap(), other);
    assert_eq!(get_all(&s, "d", Some(1)).await.unwrap(), old);
    assert_eq!(s.gc(&NoProgress).await.unwrap().blobs_removed, 0);
    assert!(s.verify(&NoProgress).await.unwrap().is_clean());

    // Written again after gc: stored again.
    let again = put(&s, "e", &shared).await;
    assert_eq!(again.hash, a.hash);
    assert_eq!(get_all(&s, "e", None).await.unwrap(), shared);

    // An abandoned temporary file goes; a stray file in blobs/ is never touched.
    let tmp = root.join("tmp").join(".tmp-999999-0-0");
    std::fs::write(&tmp, b"left by a crash").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(600))
        .unwrap();
    let stray = root.join("blobs").join("zz-notes.txt");
    std::fs::write(&stray, b"mine").unwrap();
    s.gc(&NoProgress).await.unwrap();
    assert!(!tmp.exists(), "an abandoned temporary file survived gc");
    assert!(stray.exists());
}

/// A body that yields `bytes` in chunks, pausing `pause` before each.
fn slow_body(bytes: Vec<u8>, chunk: usize, pause: std::time::Duration) -> Body {
    let chunks: Vec<Bytes> = bytes.chunks(chunk).map(Bytes::copy_from_slice).collect();
    let stream = futures::stream::iter(chunks).then(move |c| async move {
        tokio::time::sleep(pause).await;
        Ok(c)
    });
    Body::from_stream(stream, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_racing_writers_never_breaks_a_record() {
    let root = fresh_root("gc-race");
    let s = store(&root, 1000);
    let shared = payload(30, 200_000);
    // A slow writer: gc runs many times while its payload is half received.
    let slow = payload(31, 300_000);
    let writer = {
        let (s, slow) = (s.clone(), slow.clone());
        tokio::spawn(async move {
            s.put(
                &ns(),
                &key("slow"),
                slow_body(slow, 16 * 1024, std::time::Duration::from_millis(20)),
                Metadata::new(),
                PutMode::Overwrite,
            )
            .await
        })
    };
    for round in 0..60u64 {
        // The shared payload's file is unreferenced (purged) when the puts start: gc may take
        // it away before a put links its copy, never after a put counted on it.
        put(&s, "victim", &shared).await;
        s.purge(&ns(), &key("victim")).await.unwrap();
        let keys: Vec<String> = (0..4).map(|i| format!("k{round}-{i}")).collect();
        let puts = futures::future::join_all(keys.iter().map(|k| {
            let (s, shared, k) = (s.clone(), shared.clone(), k.clone());
            tokio::spawn(async move {
                s.put(
                    &ns(),
                    &key(&k),
                    Body::from(shared),
                    Metadata::new(),
                    PutMode::Overwrite,
                )
                .await
            })
        }));
        let gcs = futures::future::join_all((0..2).map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.gc(&NoProgress).await })
        }));
        let (puts, gcs) = tokio::join!(puts, gcs);
        for written in puts {
            written.unwrap().unwrap();
        }
        for gc in gcs {
            gc.unwrap().unwrap();
        }
        for k in &keys {
            assert_eq!(
                get_all(&s, k, None).await.unwrap(),
                shared,
                "round {round}, {k}"
            );
            s.purge(&ns(), &key(k)).await.unwrap();
        }
    }
    writer.await.unwrap().unwrap();
    s.gc(&NoProgress).await.unwrap();
    assert_eq!(get_all(&s, "slow", None).await.unwrap(), slow);
    let report = s.verify(&NoProgress).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(
        std::fs::read_dir(root.join("tmp")).unwrap().count(),
        0,
        "no temporary file left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_get_report_a_damaged_or_missing_payload_file() {
    let root = fresh_root("damaged");
    let s = store(&root, 1000);
    let one = payload(40, 10_000);
    let two = payload(41, 20_000);
    let three = payload(42, 30_000);
    let i1 = put(&s, "one", &one).await;
    let i2 = put(&s, "two", &two).await;
    let i3 = put(&s, "three", &three).await;
    assert!(s.verify(&NoProgress).await.unwrap().is_clean());

    // Same length, one byte flipped.
    let p1 = blob_path(&root, &i1.hash);
    let mut damaged = std::fs::read(&p1).unwrap();
    damaged[5000] ^= 0xff;
    std::fs::write(&p1, &damaged).unwrap();
    // Gone.
    let p2 = blob_path(&root, &i2.hash);
    std::fs::remove_file(&p2).unwrap();
    // Truncated.
    let p3 = blob_path(&root, &i3.hash);
    std::fs::write(&p3, &three[..100]).unwrap();

    let report = s.verify(&NoProgress).await.unwrap();
    let mut found: Vec<(String, String, Option<ContentHash>)> = report
        .problems
        .iter()
        .map(|p| (p.key.clone().unwrap(), p.problem.clone(), p.hash))
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            ("one".into(), "corrupt".into(), Some(i1.hash)),
            ("three".into(), "corrupt".into(), Some(i3.hash)),
            ("two".into(), "missing".into(), Some(i2.hash)),
        ],
        "{:?}",
        report.problems
    );
    for p in &report.problems {
        assert!(
            p.detail.contains("blobs"),
            "the detail names the file: {p:?}"
        );
        assert!(
            p.detail.contains("put the original bytes again"),
            "the detail says how to repair: {p:?}"
        );
    }

    let err = get_all(&s, "one", None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains(&p1.display().to_string()), "{err}");
    let err = get_all(&s, "two", None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains(&p2.display().to_string()), "{err}");
    let err = get_all(&s, "three", None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains(&p3.display().to_string()), "{err}");
    // head, list and versions still answer from the document.
    assert_eq!(s.head(&ns(), &key("two"), None).await.unwrap(), i2);

    // Writing the payload again (streamed or from memory) repairs its file.
    let streamed = stowage_core::testkit::chunked_body(&one, 1000);
    s.put(
        &ns(),
        &key("one-again"),
        streamed,
        Metadata::new(),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    put(&s, "two-again", &two).await;
    put(&s, "three-again", &three).await;
    assert_eq!(get_all(&s, "one", None).await.unwrap(), one);
    assert_eq!(get_all(&s, "two", None).await.unwrap(), two);
    assert_eq!(get_all(&s, "three", None).await.unwrap(), three);
    let report = s.verify(&NoProgress).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_store_reads_and_moves_to_version_2_only_with_a_file() {
    let root = fresh_root("format");
    // A store as a version-1 build leaves it: every payload in its document, even big ones.
    let old = store(&root, stowage_providers::automerge::MAX_BLOB_MIN_BYTES);
    let big_inline = payload(50, 2 << 20);
    let v1 = put(&old, "k", &big_inline).await;
    put(&old, "small", b"tiny").await;
    assert_eq!(format_of(&root), "stowage-automerge 1\n");
    assert!(blob_files(&root).is_empty());
    drop(old);

    let s = store(&root, 1 << 20);
    let stowage = stowage_core::Stowage::from_backend(std::sync::Arc::new(store(&root, 1 << 20)));
    stowage.initialize().await.unwrap();
    assert_eq!(get_all(&s, "k", None).await.unwrap(), big_inline);
    assert_eq!(s.head(&ns(), &key("k"), None).await.unwrap(), v1);
    assert!(s.verify(&NoProgress).await.unwrap().is_clean());
    // Small writes keep version 1 (older builds can still open the store).
    put(&s, "small", b"still tiny").await;
    assert_eq!(format_of(&root), "stowage-automerge 1\n");
    // The first payload in a file moves it to version 2; the inline one stays readable.
    let big_file = payload(51, 2 << 20);
    put(&s, "k", &big_file).await;
    assert_eq!(format_of(&root), "stowage-automerge 2\n");
    assert_eq!(blob_files(&root).len(), 1);
    assert_eq!(get_all(&s, "k", Some(1)).await.unwrap(), big_inline);
    assert_eq!(get_all(&s, "k", Some(2)).await.unwrap(), big_file);
    let reopened = store(&root, 1 << 20);
    assert_eq!(get_all(&reopened, "k", None).await.unwrap(), big_file);

    // A format this build does not know is refused.
    std::fs::write(root.join("FORMAT"), "stowage-automerge 3\n").unwrap();
    let err = store(&root, 1 << 20).initialize().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("stowage-automerge 3"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_copies_payload_files_the_other_side_lacks() {
    let (root_a, root_b) = (fresh_root("sync-a"), fresh_root("sync-b"));
    let a = store(&root_a, 1000);
    let b = store(&root_b, 1000);
    let x = payload(60, 50_000);
    let y = payload(61, 60_000);
    let ix = put(&a, "x", &x).await;
    put(&a, "x", b"small after").await;
    put(&b, "small", b"only small things here").await;
    assert_eq!(format_of(&root_b), "stowage-automerge 1\n");

    sync_stores(&a, &b).await.unwrap();
    assert_eq!(format_of(&root_b), "stowage-automerge 2\n");
    assert!(blob_path(&root_b, &ix.hash).exists());
    assert_eq!(get_all(&b, "x", Some(1)).await.unwrap(), x);
    assert_eq!(
        b.versions(&ns(), &key("x")).await.unwrap(),
        a.versions(&ns(), &key("x")).await.unwrap()
    );
    assert!(b.verify(&NoProgress).await.unwrap().is_clean());

    let iy = put(&b, "y", &y).await;
    let report = sync_stores(&b, &a).await.unwrap();
    assert!(report.documents_changed >= 1);
    assert!(blob_path(&root_a, &iy.hash).exists());
    assert_eq!(get_all(&a, "y", None).await.unwrap(), y);
    // A file both have is not copied again; nothing else appears.
    assert_eq!(blob_files(&root_a).len(), 2);
    assert_eq!(blob_files(&root_b).len(), 2);

    // A damaged file is not propagated: the sync stops before the change referring to it.
    let root_c = fresh_root("sync-c");
    let c = store(&root_c, 1000);
    let z = payload(62, 40_000);
    let iz = put(&a, "z", &z).await;
    let pz = blob_path(&root_a, &iz.hash);
    let mut damaged = std::fs::read(&pz).unwrap();
    damaged[0] ^= 1;
    std::fs::write(&pz, damaged).unwrap();
    let err = sync_stores(&a, &c).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains(&pz.display().to_string()), "{err}");
    let err = c.head(&ns(), &key("z"), None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(!blob_path(&root_c, &iz.hash).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_payload_files_conflict_by_reference_and_both_files_stay() {
    let (root_a, root_b) = (fresh_root("conflict-a"), fresh_root("conflict-b"));
    let a = store(&root_a, 1000);
    let b = store(&root_b, 1000);
    let base = put(&a, "k", b"small base").await;
    sync_stores(&a, &b).await.unwrap();
    let (x, y) = (payload(70, 10_000), payload(71, 12_000));
    let ix = a
        .put(
            &ns(),
            &key("k"),
            Body::from(x.clone()),
            Metadata::new(),
            PutMode::Base(base.version),
        )
        .await
        .unwrap();
    let iy = b
        .put(
            &ns(),
            &key("k"),
            Body::from(y.clone()),
            Metadata::new(),
            PutMode::Base(base.version),
        )
        .await
        .unwrap();
    sync_stores(&a, &b).await.unwrap();
    for (root, s) in [(&root_a, &a), (&root_b, &b)] {
        let head = s.head(&ns(), &key("k"), None).await.unwrap();
        assert_eq!(head.conflicts.len(), 1, "{:?}", head.conflicts);
        let mut values = head.conflicts[0].values.clone();
        values.sort_by_key(|v| v.to_string());
        let mut want = vec![
            json!({"hash": ix.hash.to_string(), "size": 10_000}),
            json!({"hash": iy.hash.to_string(), "size": 12_000}),
        ];
        want.sort_by_key(|v| v.to_string());
        assert_eq!(
            values, want,
            "conflict values are the references, not the bytes"
        );
        let winner = get_all(s, "k", None).await.unwrap();
        assert!(winner == x || winner == y);
        assert_eq!(
            (head.hash, head.size),
            (ContentHash::of(&winner), winner.len() as u64)
        );
        // The losing value is still referred to by a change: gc keeps its file.
        s.gc(&NoProgress).await.unwrap();
        assert!(blob_path(root, &ix.hash).exists() && blob_path(root, &iy.hash).exists());
        assert!(s.verify(&NoProgress).await.unwrap().is_clean());
    }
    assert_eq!(
        get_all(&a, "k", None).await.unwrap(),
        get_all(&b, "k", None).await.unwrap()
    );
}
