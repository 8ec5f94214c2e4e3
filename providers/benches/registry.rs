//! Registry look-up on a registry of ten providers (goal: well under 1 µs), beside a bare
//! `HashMap` look-up as the baseline; and 4 KiB put/get on the memory provider, beside a
//! `RwLock<HashMap>` that also hashes with blake3 (the least any content-addressed store does).
//!
//! `cargo bench -p stowage-providers --no-default-features --features memory --bench registry`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use stowage_core::{
    async_trait, Capabilities, ContentHash, Metadata, Registry, Result, StorageBackend,
    StorageProviderFactory, Stowage,
};
use stowage_providers::memory::{self, MemoryBackend};

/// A factory that only has a name: fills the registry to a realistic size.
struct Named(&'static str);

#[async_trait]
impl StorageProviderFactory for Named {
    fn name(&self) -> &str {
        self.0
    }
    fn description(&self) -> &str {
        "bench filler"
    }
    fn config_schema(&self) -> serde_json::Value {
        serde_json::json!({"type": "object"})
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    fn validate(&self, _config: &serde_json::Value) -> Result<()> {
        Ok(())
    }
    async fn create(&self, _config: serde_json::Value) -> Result<Arc<dyn StorageBackend>> {
        Ok(Arc::new(MemoryBackend::new()))
    }
}

const FILLERS: [&str; 9] = [
    "sqlite",
    "fs",
    "s3",
    "automerge",
    "redis",
    "postgres",
    "azure-blob",
    "gcs",
    "plugin-kv",
];

fn registry_lookup(c: &mut Criterion) {
    let registry = Registry::new();
    registry.register(memory::factory()).unwrap();
    for name in FILLERS {
        registry.register(Arc::new(Named(name))).unwrap();
    }
    let baseline: HashMap<String, Arc<dyn StorageProviderFactory>> = registry
        .factories()
        .into_iter()
        .map(|f| (f.name().to_string(), f))
        .collect();

    let mut group = c.benchmark_group("registry_get_10_providers");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    group.bench_function("baseline_hashmap_get", |b| {
        b.iter(|| baseline.get(black_box("memory")).cloned())
    });
    group.bench_function("registry_get", |b| {
        b.iter(|| registry.get(black_box("memory")).unwrap())
    });
    group.bench_function("registry_get_unknown", |b| {
        b.iter(|| registry.get(black_box("nope")).is_err())
    });
    group.finish();
}

fn memory_put_get(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = Stowage::from_backend(Arc::new(MemoryBackend::new()));
    let tenant = store.namespace("bench").unwrap();
    let payload = Bytes::from(vec![7u8; 4096]);
    let keys: Vec<String> = (0..1024).map(|i| format!("records/{i:04}")).collect();
    runtime.block_on(async {
        for key in &keys {
            tenant
                .put(key, payload.clone(), Metadata::new())
                .await
                .unwrap();
        }
    });
    let baseline: RwLock<HashMap<String, Bytes>> = RwLock::new(HashMap::new());

    let mut group = c.benchmark_group("memory_4kib");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    group.throughput(Throughput::Bytes(4096));
    let mut i = 0usize;
    group.bench_function("baseline_hash_and_insert", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let hash = ContentHash::of(&payload);
            baseline
                .write()
                .unwrap()
                .insert(keys[i].clone(), payload.clone());
            hash
        })
    });
    group.bench_function("put", |b| {
        b.to_async(&runtime).iter(|| {
            i = (i + 1) % keys.len();
            let (tenant, key, payload) = (&tenant, &keys[i], payload.clone());
            async move { tenant.put(key, payload, Metadata::new()).await.unwrap() }
        })
    });
    group.bench_function("baseline_get", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            baseline.read().unwrap().get(&keys[i]).cloned()
        })
    });
    group.bench_function("get", |b| {
        b.to_async(&runtime).iter(|| {
            i = (i + 1) % keys.len();
            let (tenant, key) = (&tenant, &keys[i]);
            async move { tenant.get_bytes(key).await.unwrap() }
        })
    });
    group.finish();
}

criterion_group!(benches, registry_lookup, memory_put_get);
criterion_main!(benches);
