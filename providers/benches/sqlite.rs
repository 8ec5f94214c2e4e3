//! The `sqlite` provider beside a raw sqlx baseline in the same run:
//!
//! - 4 KiB put and get, one writer and 16 concurrent writers. The baseline is what an
//!   application would write by hand with sqlx: one table `plain(key PRIMARY KEY, data)`, an
//!   upsert per put and a select per get, on a pool with the same pragmas (WAL,
//!   `synchronous = NORMAL` on both sides, so the figures show overhead rather than fsync),
//!   and its concurrent writers take turns on an async lock as the provider's do.
//!   Goals: get within 1.3×, put within 1.5× of the baseline.
//! - Search by tag + attribute over 100 000 records (goal < 10 ms); `STOWAGE_BENCH_SEARCH=0`
//!   skips it (loading takes about half a minute).
//! - A 1 GiB streamed put and get, run once before criterion starts, with the peak resident
//!   memory (`VmHWM`) printed (goal < 100 MiB). `STOWAGE_BENCH_LARGE_MIB` changes the size;
//!   `0` skips it.
//!
//! `cargo bench -p stowage-providers --no-default-features --features sqlite --bench sqlite`

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use futures::future::join_all;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use stowage_core::{
    Body, ContentHasher, GetOptions, Key, Metadata, Namespace, PutMode, Query, StorageBackend,
    StorageProviderFactory,
};
use stowage_providers::sqlite::{SqliteBackend, SqliteConfig, SqliteFactory, Synchronous};
use support::{generated, runtime, vm_hwm_kib};
use tokio::runtime::Runtime;
use tokio::sync::Mutex;

const PAYLOAD: usize = 4096;
const KEYS: u64 = 1000;
const WRITERS: usize = 16;
const SEARCH_RECORDS: u64 = 100_000;

/// A fresh directory under the target dir, removed when dropped (a run writes hundreds of MiB).
fn bench_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sqlite-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("creating a temp dir")
}

async fn provider(path: &Path) -> Arc<dyn StorageBackend> {
    let backend = SqliteFactory
        .create(serde_json::json!({ "path": path, "synchronous": "normal" }))
        .await
        .expect("creating the backend");
    backend.initialize().await.expect("initializing");
    backend
}

/// The hand-written baseline: one table, same pragmas, same pool size.
struct Baseline {
    pool: SqlitePool,
    writer: Mutex<()>,
}

impl Baseline {
    async fn open(path: &Path) -> Self {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .expect("baseline pool");
        sqlx::query("CREATE TABLE IF NOT EXISTS plain (key TEXT PRIMARY KEY, data BLOB NOT NULL)")
            .execute(&pool)
            .await
            .expect("baseline table");
        Baseline {
            pool,
            writer: Mutex::new(()),
        }
    }

    async fn put(&self, key: &str, data: &[u8]) {
        let _turn = self.writer.lock().await;
        sqlx::query("INSERT INTO plain (key, data) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET data = excluded.data")
            .bind(key)
            .bind(data)
            .execute(&self.pool)
            .await
            .expect("baseline put");
    }

    async fn get(&self, key: &str) -> Vec<u8> {
        sqlx::query_scalar("SELECT data FROM plain WHERE key = ?1")
            .bind(key)
            .fetch_one(&self.pool)
            .await
            .expect("baseline get")
    }
}

/// A distinct 4 KiB payload per call, so neither side can skip a write as a duplicate.
fn payload(counter: &AtomicU64) -> Bytes {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let mut data = vec![0x5au8; PAYLOAD];
    data[..8].copy_from_slice(&n.to_le_bytes());
    Bytes::from(data)
}

fn key_for(n: u64) -> String {
    format!("bench/{:04}", n % KEYS)
}

fn put_get(c: &mut Criterion, rt: &Runtime) {
    let dir = bench_dir();
    let (backend, baseline) = rt.block_on(async {
        (
            provider(&dir.path().join("provider.db")).await,
            Baseline::open(&dir.path().join("baseline.db")).await,
        )
    });
    let baseline = Arc::new(baseline);
    let ns = Namespace::new("bench").unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        for i in 0..KEYS {
            let k = key_for(i);
            let data = payload(&counter);
            support::put_plain(&*backend, &ns, &Key::new(k.clone()).unwrap(), data.clone()).await;
            baseline.put(&k, &data).await;
        }
    });

    paired(rt, &backend, &baseline, &ns, &counter);

    let mut group = c.benchmark_group("sqlite_4k");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500))
        .throughput(Throughput::Bytes(PAYLOAD as u64));

    let seq = AtomicU64::new(0);
    group.bench_function("put/provider", |b| {
        b.to_async(rt).iter(|| async {
            let n = seq.fetch_add(1, Ordering::Relaxed);
            let key = Key::new(key_for(n)).unwrap();
            support::put_plain(&*backend, &ns, &key, payload(&counter)).await
        })
    });
    group.bench_function("put/baseline", |b| {
        b.to_async(rt).iter(|| async {
            let n = seq.fetch_add(1, Ordering::Relaxed);
            baseline.put(&key_for(n), &payload(&counter)).await
        })
    });
    group.bench_function("get/provider", |b| {
        b.to_async(rt).iter(|| async {
            let n = seq.fetch_add(1, Ordering::Relaxed);
            let key = Key::new(key_for(n)).unwrap();
            let (_, body) = backend.get(&ns, &key, GetOptions::default()).await.unwrap();
            body.into_bytes().await.unwrap()
        })
    });
    group.bench_function("get/baseline", |b| {
        b.to_async(rt).iter(|| async {
            let n = seq.fetch_add(1, Ordering::Relaxed);
            baseline.get(&key_for(n)).await
        })
    });
    group.finish();

    let mut group = c.benchmark_group("sqlite_4k_16_writers");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500))
        .throughput(Throughput::Bytes((PAYLOAD * WRITERS) as u64));
    group.bench_function("put/provider", |b| {
        b.to_async(rt).iter(|| async {
            let base = seq.fetch_add(WRITERS as u64, Ordering::Relaxed);
            concurrent_provider_puts(&backend, &ns, &counter, base).await
        })
    });
    group.bench_function("put/baseline", |b| {
        b.to_async(rt).iter(|| async {
            let base = seq.fetch_add(WRITERS as u64, Ordering::Relaxed);
            concurrent_baseline_puts(&baseline, &counter, base).await
        })
    });
    group.finish();
}

/// One put per writer on the provider, all at once, keys `base..base + WRITERS`.
async fn concurrent_provider_puts(
    backend: &Arc<dyn StorageBackend>,
    ns: &Namespace,
    counter: &AtomicU64,
    base: u64,
) {
    join_all((0..WRITERS as u64).map(|i| {
        let (backend, ns, data) = (backend.clone(), ns.clone(), payload(counter));
        tokio::spawn(async move {
            let key = Key::new(key_for(base + i)).unwrap();
            support::put_plain(&*backend, &ns, &key, data).await;
        })
    }))
    .await;
}

/// The same on the baseline.
async fn concurrent_baseline_puts(baseline: &Arc<Baseline>, counter: &AtomicU64, base: u64) {
    join_all((0..WRITERS as u64).map(|i| {
        let (baseline, data) = (baseline.clone(), payload(counter));
        tokio::spawn(async move { baseline.put(&key_for(base + i), &data).await })
    }))
    .await;
}

/// Provider and baseline alternating inside one loop, so load from other processes hits both
/// alike: the ratio of the means is steadier than two criterion runs taken minutes apart.
fn paired(
    rt: &Runtime,
    backend: &Arc<dyn StorageBackend>,
    baseline: &Arc<Baseline>,
    ns: &Namespace,
    counter: &AtomicU64,
) {
    const ROUNDS: u64 = 3000;
    let (mut put_p, mut put_b, mut get_p, mut get_b) = (
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
    );
    rt.block_on(async {
        for n in 0..ROUNDS {
            let name = key_for(n);
            let key = Key::new(name.clone()).unwrap();
            let (data_p, data_b) = (payload(counter), payload(counter));
            let t = Instant::now();
            support::put_plain(&**backend, ns, &key, data_p).await;
            put_p += t.elapsed();
            let t = Instant::now();
            baseline.put(&name, &data_b).await;
            put_b += t.elapsed();
            let t = Instant::now();
            let (_, body) = backend.get(ns, &key, GetOptions::default()).await.unwrap();
            std::hint::black_box(body.into_bytes().await.unwrap());
            get_p += t.elapsed();
            let t = Instant::now();
            std::hint::black_box(baseline.get(&name).await);
            get_b += t.elapsed();
        }
    });
    report("", ROUNDS, &[("put", put_p, put_b), ("get", get_p, get_b)]);

    // The same for WRITERS concurrent puts: a round is one put per writer, all at once, on
    // each side in turn.
    const CONCURRENT_ROUNDS: u64 = 300;
    let (mut conc_p, mut conc_b) = (Duration::ZERO, Duration::ZERO);
    rt.block_on(async {
        for n in 0..CONCURRENT_ROUNDS {
            let base = n * WRITERS as u64;
            let t = Instant::now();
            concurrent_provider_puts(backend, ns, counter, base).await;
            conc_p += t.elapsed();
            let t = Instant::now();
            concurrent_baseline_puts(baseline, counter, base).await;
            conc_b += t.elapsed();
        }
    });
    report(
        &format!("{WRITERS} concurrent writers, "),
        CONCURRENT_ROUNDS,
        &[("put round", conc_p, conc_b)],
    );
}

/// Prints a paired loop's means: each operation's time a round on both sides, and the ratio.
fn report(what: &str, rounds: u64, sides: &[(&str, Duration, Duration)]) {
    let us = |d: &Duration| d.as_secs_f64() * 1e6 / rounds as f64;
    let parts: Vec<String> = sides
        .iter()
        .map(|(op, p, b)| {
            format!(
                "{op} {:.1} µs vs baseline {:.1} µs = {:.2}x",
                us(p),
                us(b),
                p.as_secs_f64() / b.as_secs_f64()
            )
        })
        .collect();
    eprintln!("paired 4 KiB, {what}{rounds} rounds: {}", parts.join("; "));
}

fn search(c: &mut Criterion, rt: &Runtime) {
    let dir = bench_dir();
    let ns = Namespace::new("search").unwrap();
    let backend = rt.block_on(async {
        let backend = SqliteBackend::new(SqliteConfig {
            synchronous: Some(Synchronous::Normal),
            ..SqliteConfig::new(dir.path().join("search.db"))
        });
        let started = Instant::now();
        // Loaded with `put_many`, 10 000 records per transaction.
        for batch in 0..SEARCH_RECORDS / 10_000 {
            let records = (batch * 10_000..(batch + 1) * 10_000).map(|i| {
                let meta = Metadata::new()
                    .with_tag(format!("t{}", i % 10))
                    .with_attribute("status", [200, 404, 500][(i % 3) as usize])
                    .with_attribute("n", i % 1000)
                    .with_content_type("application/json");
                let key = Key::new(format!("rec/{i:06}")).unwrap();
                (key, Bytes::from(format!("{{\"i\":{i}}}")), meta)
            });
            backend.put_many(&ns, records).await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "loaded {SEARCH_RECORDS} records with put_many in {secs:.1} s ({:.0} records/s)",
            SEARCH_RECORDS as f64 / secs
        );
        backend
    });
    let by_tag_and_eq = Query::new().tag("t3").attr_eq("status", 404).limit(100);
    let by_tag_and_range = Query::new()
        .tag("t7")
        .attr_range(
            "n",
            Some(serde_json::json!(100)),
            Some(serde_json::json!(200)),
        )
        .limit(100);
    let selective = Query::new()
        .tag("t1")
        .attr_eq("n", 421)
        .attr_eq("status", 500);
    let hits = rt.block_on(async {
        (
            backend
                .search(&ns, &by_tag_and_eq)
                .await
                .unwrap()
                .items
                .len(),
            backend
                .search(&ns, &by_tag_and_range)
                .await
                .unwrap()
                .items
                .len(),
            backend.search(&ns, &selective).await.unwrap().items.len(),
        )
    });
    assert_eq!(hits.0, 100);
    assert_eq!(hits.1, 100);
    assert!(hits.2 > 0);

    let mut group = c.benchmark_group("sqlite_search_100k");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for (name, q) in [
        ("tag+attr_eq/limit100", &by_tag_and_eq),
        ("tag+attr_range/limit100", &by_tag_and_range),
        ("tag+2attr_eq/selective", &selective),
    ] {
        group.bench_function(name, |b| {
            b.to_async(rt)
                .iter(|| async { backend.search(&ns, q).await.unwrap() })
        });
    }
    group.finish();
}

fn large_streamed(rt: &Runtime) {
    let mib: u64 = std::env::var("STOWAGE_BENCH_LARGE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    if mib == 0 {
        return;
    }
    let total = mib << 20;
    let dir = bench_dir();
    let before = vm_hwm_kib();
    rt.block_on(async {
        let backend = provider(&dir.path().join("large.db")).await;
        let ns = Namespace::new("large").unwrap();
        let key = Key::new("large.bin").unwrap();
        let pieces = generated(total, 64 * 1024);
        let started = Instant::now();
        let info = backend
            .put(&ns, &key, Body::from_stream(pieces, Some(total)), Metadata::new(), PutMode::Overwrite)
            .await
            .expect("large put");
        let put_secs = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let (_, mut body) = backend.get(&ns, &key, GetOptions::default()).await.expect("large get");
        let mut hasher = ContentHasher::new();
        while let Some(chunk) = body.next_chunk().await {
            hasher.update(&chunk.expect("large get chunk"));
        }
        let get_secs = started.elapsed().as_secs_f64();
        assert_eq!(hasher.finish(), (info.hash, total));
        eprintln!(
            "large streamed payload: {mib} MiB put in {put_secs:.1} s ({:.0} MiB/s), get in {get_secs:.1} s ({:.0} MiB/s)",
            mib as f64 / put_secs,
            mib as f64 / get_secs
        );
    });
    let after = vm_hwm_kib();
    eprintln!(
        "peak RSS (VmHWM): {} MiB before, {} MiB after the {mib} MiB put + get",
        before / 1024,
        after / 1024,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let rt = runtime();
    // First, so the peak memory it reports is its own and not the other benches'.
    large_streamed(&rt);
    let mut criterion = Criterion::default().configure_from_args();
    put_get(&mut criterion, &rt);
    if std::env::var("STOWAGE_BENCH_SEARCH").as_deref() != Ok("0") {
        search(&mut criterion, &rt);
    }
    criterion.final_summary();
}
