//! Byte payloads of the `automerge` provider at or above `blob_min_bytes` live in
//! content-addressed files under `<root>/blobs/`, streamed in and out: peak memory of a big put
//! and get (measured in a child process), range reads, versions mixing file and inline
//! payloads, dedup, purge + gc, gc beside writers, verify of damaged files, version-1 stores,
//! and sync copying the files.
#![cfg(feature = "automerge")]

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use stowage_core::{
    Body, ContentHash, ContentHasher, GetOptions, Key, Metadata, Namespace, PutMode, StorageBackend,
};
use stowage_providers::automerge::{AutomergeBackend, AutomergeConfig};

/// A fresh directory under cargo's per-target temporary directory.
fn fresh_root(label: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "automerge-blobs-{label}-{}-{n}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
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

/// Peak resident memory of this process so far (`VmHWM`), in KiB.
fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
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
    let base = vm_hwm_kib();
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
    let put = vm_hwm_kib();
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
    let get = vm_hwm_kib();
    println!("RSS base={base} put={put} get={get}");
}

#[test]
fn a_big_payload_streams_in_and_out_in_bounded_memory() {
    if vm_hwm_kib() == 0 {
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
