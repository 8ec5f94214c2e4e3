//! Benchmarks of the `automerge` provider, each beside its baseline in the same run:
//!
//! - `automerge_put`: one JSON put on a record with 10 changes of history vs one with 10 000
//!   (saving must be incremental, so the two should be close);
//! - `automerge_load`: opening a 10 000-change record after compaction (a fresh backend, then
//!   `head`) vs `Automerge::load` of one `save()` blob of the same document.
//!
//! Ratios are printed at the end. fsync is off so the figures show the provider's own work,
//! not the disk's flush latency.
//!
//! Run: `cargo bench -p stowage-providers --no-default-features --features automerge --bench automerge`

mod support;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::Criterion;
use stowage_core::{Key, Metadata, Namespace, PutMode, StorageBackend};
use stowage_providers::automerge::{AutomergeBackend, AutomergeConfig};
use support::runtime;

const LONG: u64 = 10_000;
const SHORT: u64 = 10;
/// A short record is replaced by a fresh one after this many measured puts, so its history
/// stays between 10 and 60 changes.
const SHORT_ROTATE: u64 = 50;

fn store(root: &Path) -> AutomergeBackend {
    let mut config = AutomergeConfig::new(root);
    config.fsync = false;
    AutomergeBackend::new(config).unwrap()
}

fn bench_root(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "stowage-automerge-bench-{label}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The same shape of record at every history length: a few fields, one of them changing.
fn record(n: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "counter": n,
        "title": "a record that is edited often",
        "owner": {"name": "bench", "team": "storage"},
        "labels": ["a", "b", "c"],
    }))
    .unwrap()
}

fn json() -> Metadata {
    Metadata::new().with_content_type("application/json")
}

async fn fill(store: &AutomergeBackend, key: &Key, changes: u64) {
    let ns = Namespace::default();
    for n in 0..changes {
        store
            .put(&ns, key, record(n).into(), json(), PutMode::Overwrite)
            .await
            .unwrap();
    }
}

fn mean(d: Duration, iters: u64) -> f64 {
    d.as_secs_f64() * 1e6 / iters.max(1) as f64
}

fn main() {
    let rt = runtime();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let ns = Namespace::default();
    // name → (total time, iterations) over every run of the benchmark, warm-up included.
    let results: Mutex<std::collections::BTreeMap<&'static str, (Duration, u64)>> =
        Mutex::new(Default::default());
    let record_time = |name: &'static str, d: Duration, iters: u64| {
        let mut r = results.lock().unwrap();
        let e = r.entry(name).or_default();
        e.0 += d;
        e.1 += iters;
    };

    // --- put latency at 10 and at 10 000 changes of history --------------------------------
    let root = bench_root("put");
    let am = store(&root);
    let long_key = Key::new("long.json").unwrap();
    let filled = Instant::now();
    rt.block_on(fill(&am, &long_key, LONG));
    println!(
        "filled a {LONG}-change record in {:.1} s",
        filled.elapsed().as_secs_f64()
    );
    // Each iteration times one put on a short record and one on the long record, alternately,
    // so noise from other processes on the machine hits both the same way.
    let mut group = c.benchmark_group("automerge_put");
    let mut short_generation = 0u64;
    let mut short_key = Key::new("short-0.json").unwrap();
    let mut short_puts = 0u64;
    group.bench_function("history_10_and_10000_alternating", |b| {
        b.iter_custom(|iters| {
            let (mut short_total, mut long_total) = (Duration::ZERO, Duration::ZERO);
            for i in 0..iters {
                if short_puts.is_multiple_of(SHORT_ROTATE) {
                    short_generation += 1;
                    short_key = Key::new(format!("short-{short_generation}.json")).unwrap();
                    rt.block_on(fill(&am, &short_key, SHORT));
                }
                short_puts += 1;
                let started = Instant::now();
                rt.block_on(am.put(
                    &ns,
                    &short_key,
                    record(1_000_000 + i).into(),
                    json(),
                    PutMode::Overwrite,
                ))
                .unwrap();
                short_total += started.elapsed();
                let started = Instant::now();
                rt.block_on(am.put(
                    &ns,
                    &long_key,
                    record(2_000_000 + i).into(),
                    json(),
                    PutMode::Overwrite,
                ))
                .unwrap();
                long_total += started.elapsed();
            }
            record_time("put_10", short_total, iters);
            record_time("put_10000", long_total, iters);
            short_total + long_total
        })
    });
    group.finish();

    // --- load of a compacted 10 000-change record vs Automerge::load of one save() ----------
    let load_root = bench_root("load");
    let writer = store(&load_root);
    let key = Key::new("loaded.json").unwrap();
    rt.block_on(fill(&writer, &key, LONG));
    rt.block_on(writer.compact_all()).unwrap();
    let folder = std::fs::read_dir(load_root.join("docs").join("default"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let snapshot = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("snapshot-")
        })
        .expect("compaction wrote a snapshot");
    // The baseline's blob: the same document saved in one piece.
    let blob = automerge::Automerge::load(&std::fs::read(&snapshot).unwrap())
        .unwrap()
        .save();
    println!(
        "compacted {LONG}-change record: {} bytes in one save() blob",
        blob.len()
    );

    let mut group = c.benchmark_group("automerge_load");
    group.bench_function("stowage_open_head_and_automerge_load_alternating", |b| {
        b.iter_custom(|iters| {
            let (mut ours, mut baseline) = (Duration::ZERO, Duration::ZERO);
            for _ in 0..iters {
                let started = Instant::now();
                let fresh = store(&load_root);
                let info = rt.block_on(fresh.head(&ns, &key, None)).unwrap();
                ours += started.elapsed();
                assert_eq!(info.version, LONG);
                let started = Instant::now();
                let doc = automerge::Automerge::load(&blob).unwrap();
                baseline += started.elapsed();
                std::hint::black_box(&doc);
            }
            record_time("load_stowage", ours, iters);
            record_time("load_baseline", baseline, iters);
            ours + baseline
        })
    });
    group.finish();

    let results = results.into_inner().unwrap();
    let last = |name: &str| {
        results
            .get(name)
            .map(|(d, n)| mean(*d, *n))
            .unwrap_or(f64::NAN)
    };
    let (p10, p10k) = (last("put_10"), last("put_10000"));
    let (ls, lb) = (last("load_stowage"), last("load_baseline"));
    println!("put at {SHORT} changes: {p10:.1} µs; at {LONG} changes: {p10k:.1} µs; ratio {:.2}x (goal <= 2x)", p10k / p10);
    println!("load after compaction: {ls:.0} µs; Automerge::load of save(): {lb:.0} µs; ratio {:.2}x (goal <= 1.2x)", ls / lb);
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&load_root);
}
