//! Benchmarks of the `s3` provider against the test server (`scripts/s3-server start`), each
//! beside a raw OpenDAL operator doing the same puts and gets on the same server in the same
//! run:
//!
//! - `s3_64KiB`: stowage put / get of a 64 KiB payload vs one raw `write` / `read` of a 64 KiB
//!   object, and vs the same requests stowage sends for a key it has seen, sent raw (put: blob
//!   create ∥ one HEAD probe, then the metadata create; get: two HEAD probes ∥ the blob read);
//! - an interleaved pass (A, B, A, B …, so server drift hits both alike) printing the median of
//!   each and the ratios;
//! - peak RSS of a 1 GiB put + get, measured in a child process (`VmHWM`), for stowage and for
//!   a raw OpenDAL streaming writer/reader (`STOWAGE_S3_BENCH_BIG_MIB` changes the size,
//!   `STOWAGE_S3_BENCH_SKIP_RSS=1` skips it).
//!
//! Run: `scripts/s3-server start && cargo bench -p stowage-providers --no-default-features
//! --features s3 --bench s3; scripts/s3-server stop`

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, Criterion, Throughput};
use futures::StreamExt;
use opendal::Operator;
use serde_json::{json, Value};
use stowage_core::{Body, ContentHasher, Metadata, NamespaceHandle, Stowage};
use stowage_providers::s3::{factory, operator, S3Config};
use support::{generated, runtime, vm_hwm_kib, BigTransfer};

const SIZE: usize = 64 * 1024;
const RSS_CHILD: &str = "STOWAGE_S3_BENCH_RSS_CHILD";
const ROUNDS: usize = 60;

fn server_config(root: &str) -> Option<Value> {
    if std::env::var("STOWAGE_SKIP_S3").as_deref() == Ok("1") {
        println!("s3 benchmarks SKIPPED: STOWAGE_SKIP_S3=1 is set");
        return None;
    }
    let mut vars: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("STOWAGE_TEST_S3_"))
        .collect();
    if !vars.contains_key("STOWAGE_TEST_S3_ENDPOINT") {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
        let path = target.join("s3-server.env");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "no S3 test server ({} unreadable: {e}); run `scripts/s3-server start` first",
                path.display()
            )
        });
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                vars.entry(k.to_string()).or_insert_with(|| v.to_string());
            }
        }
    }
    let get = |k: &str| vars.get(k).cloned().unwrap_or_default();
    Some(json!({
        "bucket": get("STOWAGE_TEST_S3_BUCKET"),
        "endpoint": get("STOWAGE_TEST_S3_ENDPOINT"),
        "region": get("STOWAGE_TEST_S3_REGION"),
        "access_key_id": get("STOWAGE_TEST_S3_ACCESS_KEY_ID"),
        "secret_access_key": get("STOWAGE_TEST_S3_SECRET_ACCESS_KEY"),
        "root": root,
        "retries": 2,
        // The bench purges what it wrote and runs gc to free the server's memory at once; no
        // writer runs beside that gc, so the grace that protects concurrent puts is not needed.
        "gc_grace_secs": 0,
    }))
}

fn unique_root(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("bench/{label}-{nanos}")
}

/// A 64 KiB payload that differs per call, so dedup never turns a put into a no-op.
fn payload(counter: &AtomicU64) -> Bytes {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let mut v = vec![0x5au8; SIZE];
    v[..8].copy_from_slice(&n.to_le_bytes());
    Bytes::from(v)
}

struct Fixture {
    handle: NamespaceHandle,
    raw: Operator,
    counter: AtomicU64,
    raw_version: AtomicU64,
}

impl Fixture {
    async fn new(cfg: Value) -> Self {
        let raw = operator(&S3Config::parse(&cfg).unwrap()).unwrap();
        let backend = factory().create(cfg).await.unwrap();
        let store = Stowage::from_backend(backend);
        let handle = store.namespace("bench").unwrap();
        let f = Fixture {
            handle,
            raw,
            counter: AtomicU64::new(0),
            raw_version: AtomicU64::new(0),
        };
        f.stowage_put().await;
        f.raw_put().await;
        f
    }

    async fn stowage_put(&self) {
        self.handle
            .put("k64", payload(&self.counter), Metadata::new())
            .await
            .unwrap();
    }

    async fn stowage_get(&self) {
        let (_, body) = self.handle.get("k64").await.unwrap();
        assert_eq!(body.into_bytes().await.unwrap().len(), SIZE);
    }

    async fn raw_put(&self) {
        self.raw
            .write("raw/k64", payload(&self.counter))
            .await
            .unwrap();
    }

    async fn raw_get(&self) {
        assert_eq!(self.raw.read("raw/k64").await.unwrap().len(), SIZE);
    }

    /// The requests a versioned put of a key seen before issues, sent raw: blob create ∥ one
    /// HEAD of the latest version (`If-Match` its ETag), then the metadata create.
    async fn raw_versioned_put(&self) {
        let bytes = payload(&self.counter);
        let blob = format!("raw-versioned/blobs/{}", blake3::hash(&bytes).to_hex());
        let v = self.raw_version.fetch_add(1, Ordering::Relaxed);
        let (current, next) = (
            format!("raw-versioned/meta/k64/{v:020}.json"),
            format!("raw-versioned/meta/k64/{:020}.json", v + 1),
        );
        let (written, _) = futures::join!(
            async { self.raw.write_with(&blob, bytes).if_not_exists(true).await },
            async { self.raw.stat(&current).await }
        );
        written.unwrap();
        self.raw
            .write_with(&next, format!("{{\"blob\":\"{blob}\"}}"))
            .if_not_exists(true)
            .await
            .unwrap();
    }

    /// The requests a get of a key seen before issues, sent raw: the two probes ∥ the blob read.
    async fn raw_versioned_get(&self) {
        let v = self.raw_version.load(Ordering::Relaxed);
        let (current, next) = (
            format!("raw-versioned/meta/k64/{v:020}.json"),
            format!("raw-versioned/meta/k64/{:020}.json", v + 1),
        );
        let (_, _, read) = futures::join!(
            async { self.raw.stat(&current).await },
            async { self.raw.stat(&next).await },
            async { self.raw.read("raw/k64").await }
        );
        assert_eq!(read.unwrap().len(), SIZE);
    }
}

fn bench_64k(c: &mut Criterion) {
    let Some(cfg) = server_config(&unique_root("64k")) else {
        return;
    };
    let rt = runtime();
    let f = rt.block_on(Fixture::new(cfg));
    let mut g = c.benchmark_group("s3_64KiB");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.bench_function("stowage put", |b| b.to_async(&rt).iter(|| f.stowage_put()));
    g.bench_function("raw OpenDAL write", |b| {
        b.to_async(&rt).iter(|| f.raw_put())
    });
    g.bench_function("raw OpenDAL versioned-put requests", |b| {
        b.to_async(&rt).iter(|| f.raw_versioned_put())
    });
    g.bench_function("stowage get", |b| b.to_async(&rt).iter(|| f.stowage_get()));
    g.bench_function("raw OpenDAL read", |b| b.to_async(&rt).iter(|| f.raw_get()));
    g.bench_function("raw OpenDAL versioned-get requests", |b| {
        b.to_async(&rt).iter(|| f.raw_versioned_get())
    });
    g.finish();
    interleaved(&rt, &f);
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Times each operation `ROUNDS` times, interleaved, and prints medians and ratios.
fn interleaved(rt: &tokio::runtime::Runtime, f: &Fixture) {
    let mut times: HashMap<&str, Vec<Duration>> = HashMap::new();
    rt.block_on(async {
        for _ in 0..ROUNDS {
            let t = Instant::now();
            f.stowage_put().await;
            times.entry("stowage put").or_default().push(t.elapsed());
            let t = Instant::now();
            f.raw_put().await;
            times.entry("raw write").or_default().push(t.elapsed());
            let t = Instant::now();
            f.raw_versioned_put().await;
            times
                .entry("raw versioned-put requests")
                .or_default()
                .push(t.elapsed());
            let t = Instant::now();
            f.stowage_get().await;
            times.entry("stowage get").or_default().push(t.elapsed());
            let t = Instant::now();
            f.raw_get().await;
            times.entry("raw read").or_default().push(t.elapsed());
            let t = Instant::now();
            f.raw_versioned_get().await;
            times
                .entry("raw versioned-get requests")
                .or_default()
                .push(t.elapsed());
        }
    });
    let m: HashMap<&str, Duration> = times.into_iter().map(|(k, v)| (k, median(v))).collect();
    let ms = |k: &str| m[k].as_secs_f64() * 1000.0;
    println!("s3 64 KiB, {ROUNDS} interleaved rounds, medians:");
    for k in [
        "stowage put",
        "raw write",
        "raw versioned-put requests",
        "stowage get",
        "raw read",
        "raw versioned-get requests",
    ] {
        println!("  {k:<28} {:8.2} ms", ms(k));
    }
    println!(
        "  ratios: put {:.2}x raw write ({:.2}x the same requests sent raw); get {:.2}x raw read ({:.2}x the same requests sent raw)",
        ms("stowage put") / ms("raw write"),
        ms("stowage put") / ms("raw versioned-put requests"),
        ms("stowage get") / ms("raw read"),
        ms("stowage get") / ms("raw versioned-get requests"),
    );
}

fn big_size() -> u64 {
    std::env::var("STOWAGE_S3_BENCH_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024u64)
        << 20
}

/// In a child process: a big put (streamed from a generator) and get (streamed, hashed) through
/// stowage (`which = stowage`) or a raw OpenDAL writer/reader (`which = raw`).
fn rss_child(which: &str) {
    let Some(cfg) = server_config(&unique_root("big")) else {
        return;
    };
    let total = big_size();
    let rt = runtime();
    rt.block_on(async {
        let raw = operator(&S3Config::parse(&cfg).unwrap()).unwrap();
        let backend = factory().create(cfg.clone()).await.unwrap();
        let store = Stowage::from_backend(backend);
        let handle = store.namespace("big").unwrap();
        store.initialize().await.unwrap();
        let before = vm_hwm_kib();
        let t = Instant::now();
        let mut hasher = ContentHasher::new();
        let (put_time, get_time) = if which == "stowage" {
            handle
                .put(
                    "big",
                    Body::from_stream(generated(total, 1 << 20), Some(total)),
                    Metadata::new(),
                )
                .await
                .unwrap();
            let put_time = t.elapsed();
            let t = Instant::now();
            let (_, mut body) = handle.get("big").await.unwrap();
            while let Some(chunk) = body.next_chunk().await {
                hasher.update(&chunk.unwrap());
            }
            (put_time, t.elapsed())
        } else {
            let mut w = raw
                .writer_with("raw/big")
                .chunk(8 << 20)
                .concurrent(2)
                .await
                .unwrap();
            let mut gen = Box::pin(generated(total, 1 << 20));
            while let Some(chunk) = gen.next().await {
                w.write(chunk.unwrap()).await.unwrap();
            }
            w.close().await.unwrap();
            let put_time = t.elapsed();
            let t = Instant::now();
            let mut s = raw
                .reader("raw/big")
                .await
                .unwrap()
                .into_bytes_stream(..)
                .await
                .unwrap();
            while let Some(chunk) = s.next().await {
                hasher.update(&chunk.unwrap());
            }
            (put_time, t.elapsed())
        };
        assert_eq!(hasher.finish().1, total);
        let peak = vm_hwm_kib();
        // Free the server's memory (moto keeps objects in RAM).
        if which == "stowage" {
            handle.purge("big").await.unwrap();
            store.gc(&stowage_core::NoProgress).await.unwrap();
        } else {
            raw.delete("raw/big").await.unwrap();
        }
        BigTransfer {
            before_kib: before,
            peak_kib: peak,
            put: put_time,
            get: get_time,
        }
        .print();
    });
}

fn rss_parent(which: &str) {
    if let Some(m) = BigTransfer::run_child(RSS_CHILD, which) {
        let mib = big_size() as f64 / (1 << 20) as f64;
        println!("{}", m.describe(&format!("s3 {which}"), mib));
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench_64k
}

fn main() {
    if let Ok(which) = std::env::var(RSS_CHILD) {
        rss_child(&which);
        return;
    }
    let listing = std::env::args().any(|a| a == "--list");
    if std::env::var("STOWAGE_S3_BENCH_SKIP_RSS").as_deref() != Ok("1") && !listing {
        rss_parent("stowage");
        rss_parent("raw");
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
