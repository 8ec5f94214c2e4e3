//! The `memory` provider: the whole conformance kit (one test per behaviour), what only this
//! provider has (its config, exact dedup, corruption noticed by `verify`), and proof that the
//! kit catches real bugs: a memory store with one rule broken must fail the matching behaviour.

use std::sync::Arc;

use stowage_core::testkit::{self, Outcome};
use stowage_core::{
    async_trait, Body, Capabilities, ContentHash, DeleteOptions, ErrorKind, GcReport, GetOptions,
    Key, ListOptions, Metadata, Namespace, NoProgress, Page, Progress, PutMode, Query, RecordInfo,
    Result, StorageBackend, Stowage, VerifyReport, Version,
};
use stowage_providers::memory::{self, MemoryBackend};

mod conformance {
    stowage_core::conformance_tests!(async {
        let backend = stowage_providers::memory::factory()
            .create(serde_json::json!({}))
            .await
            .expect("creating a memory store");
        stowage_core::Stowage::from_backend(backend)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_passes_and_reports_skips() {
    let report = testkit::run_all(memory::factory(), serde_json::json!({})).await;
    report.assert_passed();
    assert_eq!(report.provider, "memory");
    assert_eq!(report.results.len(), testkit::behaviours().len() + 1);
    let skipped: Vec<&str> = report.skipped().iter().map(|(name, _)| *name).collect();
    assert_eq!(
        skipped,
        ["race_base_merge", "unsupported_operations_say_so"]
    );
    assert!(report
        .to_string()
        .contains("SKIP race_base_merge: capabilities().merge is false"));
}

#[tokio::test]
async fn one_store_can_run_the_suite_twice() {
    // Every behaviour uses a fresh namespace, so a second run over the same data passes too.
    let store = Stowage::from_backend(Arc::new(MemoryBackend::new()));
    testkit::run_behaviours(&store).await.assert_passed();
    testkit::run_behaviours(&store).await.assert_passed();
}

#[test]
fn config_is_an_empty_object() {
    let factory = memory::factory();
    assert_eq!(factory.name(), "memory");
    assert!(factory.description().contains("not durable"));
    factory.validate(&serde_json::json!({})).unwrap();
    factory.validate(&serde_json::Value::Null).unwrap();
    let err = factory
        .validate(&serde_json::json!({"path": "/tmp/x"}))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    let message = err.to_string();
    assert!(
        message.contains("path") && message.contains("memory"),
        "{message}"
    );
    let err = factory
        .validate(&serde_json::json!(["not", "an", "object"]))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    let schema = factory.config_schema();
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["additionalProperties"], false);
    let caps = factory.capabilities();
    assert!(!caps.durable && !caps.merge && !caps.sync);
    assert!(
        caps.versions && caps.search && caps.dedup && caps.gc && caps.verify && caps.if_version
    );
}

#[tokio::test]
async fn each_create_is_a_new_empty_store() {
    let factory = memory::factory();
    let first = Stowage::from_backend(factory.create(serde_json::json!({})).await.unwrap());
    first
        .namespace("a")
        .unwrap()
        .put("k", "v", Metadata::new())
        .await
        .unwrap();
    let second = Stowage::from_backend(factory.create(serde_json::json!({})).await.unwrap());
    let err = second.namespace("a").unwrap().get("k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(second.namespaces().await.unwrap().is_empty());
}

#[tokio::test]
async fn identical_payloads_are_stored_once() {
    let backend = Arc::new(MemoryBackend::new());
    let store = Stowage::from_backend(backend.clone());
    let (a, b) = (store.namespace("a").unwrap(), store.namespace("b").unwrap());
    for ns in [&a, &b] {
        for key in ["x", "y/z"] {
            ns.put(key, "same bytes", Metadata::new()).await.unwrap();
        }
    }
    a.put("x", "other bytes", Metadata::new()).await.unwrap();
    assert_eq!(backend.blob_count(), 2);
    for ns in [&a, &b] {
        for key in ["x", "y/z"] {
            ns.purge(key).await.unwrap();
        }
    }
    assert_eq!(backend.blob_count(), 2, "purge leaves payloads for gc");
    let report = store.gc(&NoProgress).await.unwrap();
    assert_eq!(
        report,
        GcReport {
            blobs_removed: 2,
            bytes_freed: 21,
            blobs_kept: 0
        }
    );
    assert_eq!(backend.blob_count(), 0);
    assert!(store.namespaces().await.unwrap().is_empty());
}

#[tokio::test]
async fn verify_reports_a_tampered_payload() {
    let backend = Arc::new(MemoryBackend::new());
    let store = Stowage::from_backend(backend.clone());
    let ns = store.namespace("t").unwrap();
    let info = ns.put("doc", "original", Metadata::new()).await.unwrap();
    ns.put("doc", "second", Metadata::new()).await.unwrap();
    assert!(store.verify(&NoProgress).await.unwrap().is_clean());

    assert!(backend.tamper_blob(&info.hash, "0riginal"));
    assert!(!backend.tamper_blob(&ContentHash::of(b"never stored"), "x"));
    let report = store.verify(&NoProgress).await.unwrap();
    assert_eq!(report.records_checked, 2);
    assert_eq!(report.blobs_checked, 2);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].problem, "corrupt");
    assert_eq!(report.problems[0].hash, Some(info.hash));

    assert!(backend.tamper_blob(&info.hash, "short"));
    let report = store.verify(&NoProgress).await.unwrap();
    let problems: Vec<&str> = report.problems.iter().map(|p| p.problem.as_str()).collect();
    assert_eq!(problems, ["corrupt", "size"]);
    assert_eq!(report.problems[1].key.as_deref(), Some("doc"));
    assert_eq!(report.problems[1].version, Some(1));
}

#[tokio::test]
async fn progress_is_reported() {
    use std::sync::atomic::{AtomicU64, Ordering};
    #[derive(Default)]
    struct Count {
        total: AtomicU64,
        done: AtomicU64,
    }
    impl Progress for Count {
        fn set_total(&self, total: u64) {
            self.total.store(total, Ordering::Relaxed);
        }
        fn inc(&self, n: u64) {
            self.done.fetch_add(n, Ordering::Relaxed);
        }
    }
    let store = Stowage::from_backend(Arc::new(MemoryBackend::new()));
    let ns = store.namespace("p").unwrap();
    for i in 0..5 {
        ns.put(&format!("k{i}"), format!("v{i}"), Metadata::new())
            .await
            .unwrap();
    }
    let count = Count::default();
    store.verify(&count).await.unwrap();
    assert_eq!(count.total.load(Ordering::Relaxed), 10);
    assert_eq!(count.done.load(Ordering::Relaxed), 10);
}

/// One rule of the contract a [`Broken`] store gets wrong.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Defect {
    /// `IfVersion`/`Base`/`Create` are ignored: every put overwrites.
    IgnoresPreconditions,
    /// Reads and deletes look in one shared namespace whatever the handle's is.
    SharesNamespaces,
    /// `list` returns keys in reverse order.
    ListsBackwards,
    /// `delete` purges instead of writing a tombstone.
    HardDeletes,
    /// `get` returns at most 1 MiB of a payload.
    TruncatesReads,
    /// Metadata loses its attributes on the way in.
    DropsAttributes,
    /// `gc` reports three times the bytes it frees (as if payloads were stored per key).
    CountsCopies,
    /// `search` ignores the tag filter.
    IgnoresTags,
    /// `list` cursors restart from the beginning.
    CursorRestarts,
    /// Preconditions are checked, then the write happens later without holding a lock (the
    /// classic check-then-act race).
    CheckThenWrite,
}

/// A memory store with one [`Defect`]: the kit must catch it.
struct Broken {
    inner: MemoryBackend,
    defect: Defect,
}

impl Broken {
    fn ns<'a>(&self, ns: &'a Namespace, shared: &'a Namespace) -> &'a Namespace {
        if self.defect == Defect::SharesNamespaces {
            shared
        } else {
            ns
        }
    }
}

fn shared() -> Namespace {
    Namespace::new("shared").unwrap()
}

#[async_trait]
impl StorageBackend for Broken {
    fn provider(&self) -> &str {
        "broken-memory"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn put(
        &self,
        ns: &Namespace,
        key: &Key,
        body: Body,
        mut metadata: Metadata,
        mode: PutMode,
    ) -> Result<RecordInfo> {
        let mode = if self.defect == Defect::IgnoresPreconditions {
            PutMode::Overwrite
        } else {
            mode
        };
        if self.defect == Defect::DropsAttributes {
            metadata.attributes.clear();
        }
        if self.defect == Defect::CheckThenWrite && mode != PutMode::Overwrite {
            let latest = self
                .inner
                .versions(ns, key)
                .await
                .ok()
                .and_then(|v| v.last().cloned());
            let ok = match mode {
                PutMode::Create => latest.as_ref().is_none_or(|l| l.is_deleted()),
                PutMode::IfVersion(v) | PutMode::Base(v) => {
                    latest.as_ref().map(|l| l.version) == Some(v)
                }
                PutMode::Overwrite => true,
            };
            if !ok {
                return Err(stowage_core::Error::Conflict {
                    namespace: ns.to_string(),
                    key: key.to_string(),
                    expected: format!("{mode:?}"),
                    current: latest.map(|l| l.version),
                });
            }
            tokio::task::yield_now().await;
            return self
                .inner
                .put(ns, key, body, metadata, PutMode::Overwrite)
                .await;
        }
        let s = shared();
        self.inner
            .put(self.ns(ns, &s), key, body, metadata, mode)
            .await
    }
    async fn get(
        &self,
        ns: &Namespace,
        key: &Key,
        options: GetOptions,
    ) -> Result<(RecordInfo, Body)> {
        let s = shared();
        let (info, body) = self.inner.get(self.ns(ns, &s), key, options).await?;
        if self.defect == Defect::TruncatesReads {
            let bytes = body.into_bytes().await?;
            return Ok((
                info,
                Body::from_bytes(bytes.slice(..bytes.len().min(1 << 20))),
            ));
        }
        Ok((info, body))
    }
    async fn head(
        &self,
        ns: &Namespace,
        key: &Key,
        version: Option<Version>,
    ) -> Result<RecordInfo> {
        let s = shared();
        self.inner.head(self.ns(ns, &s), key, version).await
    }
    async fn delete(
        &self,
        ns: &Namespace,
        key: &Key,
        options: DeleteOptions,
    ) -> Result<RecordInfo> {
        let s = shared();
        let ns = self.ns(ns, &s);
        if self.defect == Defect::HardDeletes {
            let info = self.inner.head(ns, key, None).await?;
            self.inner.purge(ns, key).await?;
            return Ok(info);
        }
        self.inner.delete(ns, key, options).await
    }
    async fn list(&self, ns: &Namespace, mut options: ListOptions) -> Result<Page<RecordInfo>> {
        if self.defect == Defect::CursorRestarts {
            options.cursor = None;
        }
        let mut page = self.inner.list(ns, options).await?;
        if self.defect == Defect::ListsBackwards {
            page.items.reverse();
        }
        Ok(page)
    }
    async fn search(&self, ns: &Namespace, query: &Query) -> Result<Page<RecordInfo>> {
        let mut query = query.clone();
        if self.defect == Defect::IgnoresTags {
            query.tags.clear();
        }
        self.inner.search(ns, &query).await
    }
    async fn versions(&self, ns: &Namespace, key: &Key) -> Result<Vec<RecordInfo>> {
        let s = shared();
        self.inner.versions(self.ns(ns, &s), key).await
    }
    async fn restore(
        &self,
        ns: &Namespace,
        key: &Key,
        version: Option<Version>,
    ) -> Result<RecordInfo> {
        let s = shared();
        self.inner.restore(self.ns(ns, &s), key, version).await
    }
    async fn purge(&self, ns: &Namespace, key: &Key) -> Result<u64> {
        let s = shared();
        self.inner.purge(self.ns(ns, &s), key).await
    }
    async fn gc(&self, progress: &dyn Progress) -> Result<GcReport> {
        let mut report = self.inner.gc(progress).await?;
        if self.defect == Defect::CountsCopies {
            report.bytes_freed *= 3;
        }
        Ok(report)
    }
    async fn verify(&self, progress: &dyn Progress) -> Result<VerifyReport> {
        self.inner.verify(progress).await
    }
    async fn namespaces(&self) -> Result<Vec<Namespace>> {
        self.inner.namespaces().await
    }
}

/// Runs the behaviours `caught` against a store with `defect` and requires each to fail, with
/// a message saying what differed.
async fn kit_catches(defect: Defect, caught: &[&str]) {
    let store = Stowage::from_backend(Arc::new(Broken {
        inner: MemoryBackend::new(),
        defect,
    }));
    for behaviour in testkit::behaviours()
        .into_iter()
        .filter(|b| caught.contains(&b.name))
    {
        let report = testkit::run_behaviour(&store, behaviour).await;
        match report.result {
            Err(failure) => assert!(
                !failure.message().is_empty(),
                "{} failed without saying why",
                behaviour.name
            ),
            Ok(outcome) => panic!(
                "the kit did not catch {defect:?} in {}: {outcome:?}",
                behaviour.name
            ),
        }
    }
    let known: Vec<&str> = testkit::behaviours().iter().map(|b| b.name).collect();
    for name in caught {
        assert!(known.contains(name), "no behaviour named {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kit_catches_ignored_preconditions() {
    kit_catches(
        Defect::IgnoresPreconditions,
        &[
            "put_create",
            "put_if_version",
            "put_base_without_merge",
            "race_if_version",
        ],
    )
    .await;
}

#[tokio::test]
async fn kit_catches_shared_namespaces() {
    kit_catches(Defect::SharesNamespaces, &["namespace_isolation"]).await;
}

#[tokio::test]
async fn kit_catches_unsorted_lists() {
    kit_catches(
        Defect::ListsBackwards,
        &[
            "list_pagination",
            "list_prefix_and_start_after",
            "long_and_unicode_keys",
        ],
    )
    .await;
}

#[tokio::test]
async fn kit_catches_hard_deletes() {
    kit_catches(
        Defect::HardDeletes,
        &["tombstones", "restore_default_version"],
    )
    .await;
}

#[tokio::test]
async fn kit_catches_truncated_reads() {
    kit_catches(Defect::TruncatesReads, &["round_trip_large_streamed"]).await;
}

#[tokio::test]
async fn kit_catches_dropped_attributes() {
    kit_catches(
        Defect::DropsAttributes,
        &["metadata_round_trip", "search_filters"],
    )
    .await;
}

#[tokio::test]
async fn kit_catches_miscounted_gc() {
    kit_catches(Defect::CountsCopies, &["dedup_across_keys_and_namespaces"]).await;
}

#[tokio::test]
async fn kit_catches_ignored_tag_filters() {
    kit_catches(Defect::IgnoresTags, &["search_filters"]).await;
}

#[tokio::test]
async fn kit_catches_cursors_that_restart() {
    kit_catches(Defect::CursorRestarts, &["list_pagination"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kit_catches_check_then_write_races() {
    kit_catches(Defect::CheckThenWrite, &["race_if_version", "race_create"]).await;
}

#[tokio::test]
async fn a_panicking_provider_is_a_failure_not_a_crash() {
    struct Panics;
    #[async_trait]
    impl StorageBackend for Panics {
        fn provider(&self) -> &str {
            "panics"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
        async fn put(
            &self,
            _: &Namespace,
            _: &Key,
            _: Body,
            _: Metadata,
            _: PutMode,
        ) -> Result<RecordInfo> {
            panic!("put exploded")
        }
        async fn get(
            &self,
            ns: &Namespace,
            key: &Key,
            _: GetOptions,
        ) -> Result<(RecordInfo, Body)> {
            Err(stowage_core::Error::not_found(ns, key, None))
        }
        async fn head(&self, ns: &Namespace, key: &Key, _: Option<Version>) -> Result<RecordInfo> {
            Err(stowage_core::Error::not_found(ns, key, None))
        }
        async fn list(&self, _: &Namespace, _: ListOptions) -> Result<Page<RecordInfo>> {
            Ok(Page::default())
        }
    }
    let store = Stowage::from_backend(Arc::new(Panics));
    let report = testkit::run_behaviours(&store).await;
    let (name, failure) = report.failures()[0];
    assert_eq!(name, "round_trip_empty");
    assert!(failure.message().contains("put exploded"), "{failure}");
    // Behaviours the capabilities rule out are skipped, visibly.
    assert!(report
        .skipped()
        .iter()
        .any(|(name, _)| *name == "tombstones"));
    assert!(!report.is_success());
}

#[test]
fn skips_are_outcomes_not_passes() {
    assert_ne!(Outcome::Passed, Outcome::Skipped("reason".into()));
}

#[test]
fn a_guard_returned_with_the_store_lives_until_the_behaviour_ran() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    struct Guard;
    impl Drop for Guard {
        fn drop(&mut self) {
            DROPPED.fetch_add(1, Ordering::SeqCst);
        }
    }
    testkit::run_test(
        "round_trip_one_byte",
        |store| {
            Box::pin(async move {
                // The guard must still be alive while the behaviour runs.
                assert_eq!(DROPPED.load(Ordering::SeqCst), 0);
                testkit::round_trip_one_byte(store).await
            })
        },
        async { (Stowage::from_backend(Arc::new(MemoryBackend::new())), Guard) },
    );
    assert_eq!(DROPPED.load(Ordering::SeqCst), 1);
}
