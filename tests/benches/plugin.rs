//! 4 KiB get and put through the `kv` provider loaded as a plugin
//! (`target/plugins/release/libstowage_plugin_kv.so`, built by
//! `scripts/build-plugin-fixtures --release`) beside the same provider linked in directly, in
//! the same run. The ratio plugin/direct is the cost of the C ABI (the call, the plugin's own
//! checks and copies of names and record, the payload's owner); docs/benchmarks.md records it.
//! Puts run twice: with an fsync per commit (the default) and without (`"sync": false`), where
//! the ABI's share of the cost is visible.

#[path = "../../providers/benches/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use serde_json::json;
use stowage_core::{
    GetOptions, Key, Namespace, PluginLibrary, StorageBackend, StorageProviderFactory,
};
use stowage_plugin_kv::KvFactory;
use support::{mean_and_median_us, put_plain};

fn release_plugin() -> PathBuf {
    let ext = if cfg!(target_os = "macos") {
        "dylib"
    } else {
        "so"
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/plugins/release")
        .join(format!("libstowage_plugin_kv.{ext}"));
    assert!(
        path.is_file(),
        "{} is missing: run `scripts/build-plugin-fixtures --release` first (the benchmark compares optimised builds)",
        path.display()
    );
    path
}

fn bench(c: &mut Criterion) {
    let runtime = support::runtime();
    let dir = tempfile::tempdir().unwrap();
    let library = PluginLibrary::load(release_plugin()).unwrap();
    let plugin_factory = library
        .factories()
        .into_iter()
        .find(|f| f.name() == "kv")
        .unwrap();
    // (variant, fsync each commit, backend)
    let backends: Vec<(&str, bool, Arc<dyn StorageBackend>)> = runtime.block_on(async {
        let mut all = Vec::new();
        for sync in [true, false] {
            let config = |name: &str| json!({ "path": dir.path().join(format!("{name}-{sync}.redb")), "sync": sync });
            all.push(("direct", sync, KvFactory.create(config("direct")).await.unwrap()));
            all.push(("plugin", sync, plugin_factory.create(config("plugin")).await.unwrap()));
        }
        all
    });
    let ns = Namespace::new("bench").unwrap();
    let payload = bytes::Bytes::from(vec![7u8; 4096]);

    let mut group = c.benchmark_group("plugin_4k");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    // Each operation's two variants run back to back, so they see the same machine load.
    let read_key = Key::new("bench/read").unwrap();
    for (_, _, backend) in &backends {
        runtime.block_on(put_plain(&**backend, &ns, &read_key, payload.clone()));
    }
    for (name, _, backend) in backends.iter().filter(|(_, sync, _)| *sync) {
        group.bench_with_input(BenchmarkId::new("get", name), backend, |b, backend| {
            b.to_async(&runtime).iter(|| async {
                let (_, body) = backend
                    .get(&ns, &read_key, GetOptions::default())
                    .await
                    .unwrap();
                assert_eq!(body.into_bytes().await.unwrap().len(), 4096);
            })
        });
    }
    let write_key = Key::new("bench/write").unwrap();
    for (name, sync, backend) in &backends {
        let op = if *sync { "put" } else { "put_nosync" };
        group.bench_with_input(BenchmarkId::new(op, name), backend, |b, backend| {
            b.to_async(&runtime).iter(|| async {
                put_plain(&**backend, &ns, &write_key, payload.clone()).await;
            })
        });
    }
    group.finish();
    paired(&runtime, &backends, &ns, &payload);
    concurrent(&runtime, &backends, &ns);
}

/// Throughput of 4 KiB gets with 16 tasks at once on the 2-worker runtime, direct and plugin
/// alternating in rounds: the host calls plugins with `block_in_place`, which hands the
/// worker's queue to another thread on every call, so this is where that choice would cost.
fn concurrent(
    runtime: &tokio::runtime::Runtime,
    backends: &[(&str, bool, Arc<dyn StorageBackend>)],
    ns: &Namespace,
) {
    const TASKS: usize = 16;
    const PER_TASK: usize = 200;
    const ROUNDS: usize = 10;
    let read_key = Key::new("bench/read").unwrap();
    let mut elapsed = [Duration::ZERO, Duration::ZERO];
    for round in 0..ROUNDS {
        for side in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
            let name = ["direct", "plugin"][side];
            let backend = backends
                .iter()
                .find(|(n, sync, _)| *n == name && *sync)
                .map(|(_, _, b)| b.clone())
                .unwrap();
            let t = Instant::now();
            runtime.block_on(async {
                let tasks: Vec<_> = (0..TASKS)
                    .map(|_| {
                        let (backend, ns, key) = (backend.clone(), ns.clone(), read_key.clone());
                        tokio::spawn(async move {
                            for _ in 0..PER_TASK {
                                let (_, body) =
                                    backend.get(&ns, &key, GetOptions::default()).await.unwrap();
                                std::hint::black_box(body.into_bytes().await.unwrap());
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
            });
            elapsed[side] += t.elapsed();
        }
    }
    let ops = (TASKS * PER_TASK * ROUNDS) as f64;
    let [d, p] = elapsed.map(|e| ops / e.as_secs_f64());
    println!(
        "16 concurrent 4 KiB gets, {ops} per side: plugin {p:.0} ops/s vs direct {d:.0} ops/s = {:.2}x the time",
        d / p
    );
}

/// Direct and plugin alternate inside one loop, so the machine's load hits both alike; prints
/// the mean and the median of each side and their ratios (docs/benchmarks.md quotes them).
fn paired(
    runtime: &tokio::runtime::Runtime,
    backends: &[(&str, bool, Arc<dyn StorageBackend>)],
    ns: &Namespace,
    payload: &bytes::Bytes,
) {
    const ROUNDS: usize = 3000;
    let pick = |name: &str, sync: bool| {
        backends
            .iter()
            .find(|(n, s, _)| *n == name && *s == sync)
            .map(|(_, _, b)| b.clone())
            .unwrap()
    };
    let read_key = Key::new("bench/read").unwrap();
    let write_key = Key::new("bench/paired").unwrap();
    for (op, sync) in [("get", true), ("put_nosync", false), ("put", true)] {
        let (direct, plugin) = (pick("direct", sync), pick("plugin", sync));
        // A get takes microseconds: many rounds, so one burst of machine load moves the
        // ratio little. A durable put takes milliseconds: fewer.
        let rounds = match op {
            "get" => ROUNDS * 10,
            "put" => ROUNDS / 10,
            _ => ROUNDS,
        };
        let mut times = [Vec::with_capacity(rounds), Vec::with_capacity(rounds)];
        runtime.block_on(async {
            for round in 0..rounds {
                // Alternate which side goes first, so neither always runs on a warmer cache.
                let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
                for side in order {
                    let backend = if side == 0 { &direct } else { &plugin };
                    let t = Instant::now();
                    if op == "get" {
                        let (_, body) = backend
                            .get(ns, &read_key, GetOptions::default())
                            .await
                            .unwrap();
                        std::hint::black_box(body.into_bytes().await.unwrap());
                    } else {
                        put_plain(&**backend, ns, &write_key, payload.clone()).await;
                    }
                    times[side].push(t.elapsed());
                }
            }
        });
        let [mut d, mut p] = times;
        let ((d_mean, d_med), (p_mean, p_med)) =
            (mean_and_median_us(&mut d), mean_and_median_us(&mut p));
        println!(
            "paired 4 KiB {op}, {rounds} rounds: plugin mean {p_mean:.1} µs vs direct {d_mean:.1} µs = {:.2}x; median {p_med:.1} µs vs {d_med:.1} µs = {:.2}x",
            p_mean / d_mean,
            p_med / d_med
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
