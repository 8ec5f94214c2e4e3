//! Every backend call passes through one place in core (`Stowage::call`): one `stowage.call`
//! span per operation with provider, namespace, operation, key, bytes and outcome, and the
//! optional metrics counters — for a built-in provider and for a plugin provider alike.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use stowage_core::{DeleteOptions, ListOptions, Metadata, Metrics, Query, Registry, Stowage};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Fields of every `stowage.call` span, as strings, in the order the spans closed.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<BTreeMap<String, String>>>>);

struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            format!("{value:?}").trim_matches('"').to_string(),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Captured {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "stowage.call" {
            return;
        }
        let mut f = Fields(BTreeMap::new());
        attrs.record(&mut f);
        ctx.span(id).unwrap().extensions_mut().insert(f);
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(f) = span.extensions_mut().get_mut::<Fields>() {
                values.record(f);
            }
        }
    }
    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            if let Some(f) = span.extensions_mut().remove::<Fields>() {
                self.0.lock().unwrap().push(f.0);
            }
        }
    }
}

/// Runs a fixed workload on `store` and returns the captured spans.
async fn workload(store: &Stowage) -> Vec<BTreeMap<String, String>> {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let h = store.namespace("obs").unwrap();
    h.put("a/b", vec![7u8; 4096], Metadata::new().with_tag("x"))
        .await
        .unwrap();
    let (_, body) = h.get("a/b").await.unwrap();
    assert_eq!(body.into_bytes().await.unwrap().len(), 4096);
    h.head("a/b", None).await.unwrap();
    h.list(ListOptions::default()).await.unwrap();
    if store.capabilities().search {
        h.search(&Query::new().tag("x")).await.unwrap();
    }
    h.delete("a/b", DeleteOptions::default()).await.unwrap();
    assert!(h.get("a/b").await.is_err());
    let spans = captured.0.lock().unwrap().clone();
    spans
}

fn check(spans: &[BTreeMap<String, String>], provider: &str, search: bool) {
    let ops: Vec<&str> = spans.iter().map(|s| s["operation"].as_str()).collect();
    let mut expected = vec!["put", "get", "head", "list"];
    if search {
        expected.push("search");
    }
    expected.extend(["delete", "get"]);
    assert_eq!(ops, expected, "exactly one span per operation, in order");
    for s in spans {
        assert_eq!(s["provider"], provider);
        assert_eq!(s["namespace"], "obs");
        assert!(s.contains_key("micros"), "{s:?}");
    }
    assert_eq!(spans[0]["key"], "a/b");
    assert_eq!(spans[0]["outcome"], "ok");
    assert_eq!(spans[0]["bytes"], "4096", "put reports the bytes it stored");
    assert_eq!(spans[1]["bytes"], "4096", "get reports the bytes it serves");
    assert_eq!(spans.last().unwrap()["outcome"], "NotFound");
}

#[tokio::test]
async fn one_span_per_operation_for_a_built_in_provider_and_metrics_count() {
    let registry = Arc::new(Registry::new());
    stowage_providers::register_all(&registry).unwrap();
    let metrics = Arc::new(Metrics::new());
    let store = Stowage::builder()
        .registry(registry)
        .with_storage("memory", serde_json::json!({}))
        .metrics(metrics.clone())
        .build()
        .await
        .unwrap();
    let spans = workload(&store).await;
    check(&spans, "memory", true);
    let snap = metrics.snapshot();
    let mem = &snap["memory"];
    assert_eq!(mem["put"].calls, 1);
    assert_eq!(mem["put"].bytes, 4096);
    assert_eq!(mem["get"].calls, 2);
    assert_eq!(mem["get"].errors, 1);
    assert_eq!(mem["get"].bytes, 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_span_per_operation_for_a_plugin_provider() {
    let ext = if cfg!(target_os = "macos") {
        "dylib"
    } else {
        "so"
    };
    let lib = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/plugins")
        .join(format!("libstowage_plugin_kv.{ext}"));
    assert!(
        lib.is_file(),
        "{} is missing: run `scripts/build-plugin-fixtures` before `cargo test`",
        lib.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Stowage::builder()
        .registry(Arc::new(Registry::new()))
        .load_plugin(lib)
        .with_storage(
            "kv",
            serde_json::json!({ "path": dir.path().join("kv.redb"), "sync": false }),
        )
        .build()
        .await
        .unwrap();
    let spans = workload(&store).await;
    check(&spans, "kv", store.capabilities().search);
}
