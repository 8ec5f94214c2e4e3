//! 4 KiB get and put through the `kv` provider loaded as a plugin
//! (`target/plugins/release/libstowage_plugin_kv.so`, built by
//! `scripts/build-plugin-fixtures --release`) beside the same provider linked in directly, in
//! the same run. The ratio plugin/direct is the cost of the C ABI (JSON, copies, blocking-thread
//! hops); docs/benchmarks.md records it.

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
    let ext = if cfg!(target_os = "macos") { "dylib" } else { "so" };
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
    let plugin_factory = library.factories().into_iter().find(|f| f.name() == "kv").unwrap();
    let backends: Vec<(&str, Arc<dyn StorageBackend>)> = runtime.block_on(async {
        vec![
            ("direct", KvFactory.create(json!({ "path": dir.path().join("direct.redb") })).await.unwrap()),
            ("plugin", plugin_factory.create(json!({ "path": dir.path().join("plugin.redb") })).await.unwrap()),
        ]
    });
    let ns = Namespace::new("bench").unwrap();
    let payload = bytes::Bytes::from(vec![7u8; 4096]);

    let mut group = c.benchmark_group("plugin_4k");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, backend) in &backends {
        let key = Key::new("bench/read").unwrap();
        runtime
            .block_on(backend.put(&ns, &key, Body::from(payload.clone()), Metadata::new(), PutMode::Overwrite))
            .unwrap();
        group.bench_with_input(BenchmarkId::new("get", name), backend, |b, backend| {
            b.to_async(&runtime).iter(|| async {
                let (_, body) = backend.get(&ns, &key, GetOptions::default()).await.unwrap();
                assert_eq!(body.into_bytes().await.unwrap().len(), 4096);
            })
        });
        let key = Key::new("bench/write").unwrap();
        group.bench_with_input(BenchmarkId::new("put", name), backend, |b, backend| {
            b.to_async(&runtime).iter(|| async {
                backend
                    .put(&ns, &key, Body::from(payload.clone()), Metadata::new(), PutMode::Overwrite)
                    .await
                    .unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
