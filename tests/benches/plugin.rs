//! 4 KiB get and put through the `kv` provider loaded as a plugin
//! (`target/plugins/release/libstowage_plugin_kv.so`, built by
//! `scripts/build-plugin-fixtures --release`) beside the same provider linked in directly, in
//! the same run. The ratio plugin/direct is the cost of the C ABI (JSON, copies, blocking-thread
//! hops); docs/benchmarks.md records it. Puts run twice: with an fsync per commit (the default)
//! and without (`"sync": false`), where the ABI's share of the cost is visible.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use serde_json::json;
use stowage_core::{
    Body, GetOptions, Key, Metadata, Namespace, PluginLibrary, PutMode, StorageBackend,
    StorageProviderFactory,
};
use stowage_plugin_kv::KvFactory;

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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
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
        runtime
            .block_on(backend.put(
                &ns,
                &read_key,
                Body::from(payload.clone()),
                Metadata::new(),
                PutMode::Overwrite,
            ))
            .unwrap();
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
                backend
                    .put(
                        &ns,
                        &write_key,
                        Body::from(payload.clone()),
                        Metadata::new(),
                        PutMode::Overwrite,
                    )
                    .await
                    .unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
