//! `stowage_core::copy`: between providers, resumable, refusing targets, final check.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use stowage_core::copy::{copy, CopyOptions, CopyVersions, NoCopyObserver};
use stowage_core::{
    async_trait, Body, Capabilities, DeleteOptions, Error, ErrorKind, GetOptions, Key, ListOptions,
    Metadata, Namespace, Page, PutMode, RecordInfo, Registry, Result, StorageBackend, Stowage,
    Version,
};

async fn store(provider: &str, dir: &tempfile::TempDir) -> Stowage {
    let registry = Arc::new(Registry::new());
    stowage_providers::register_all(&registry).unwrap();
    let config = match provider {
        "sqlite" => serde_json::json!({ "path": dir.path().join("s.db") }),
        "fs" => serde_json::json!({ "root": dir.path().join("fs") }),
        _ => serde_json::json!({}),
    };
    Stowage::builder()
        .registry(registry)
        .with_storage(provider, config)
        .build()
        .await
        .unwrap()
}

/// Fills `store` with records in three namespaces: several versions, tombstones, restores.
async fn populate(store: &Stowage) -> u64 {
    let mut written = 0;
    for ns in ["default", "acme", "globex"] {
        let h = store.namespace(ns).unwrap();
        for i in 0..30u32 {
            let key = format!("docs/{i:03}");
            let size = (i as usize * 977) % 70_000;
            let payload: Vec<u8> = (0..size).map(|b| (b as u32 * 31 + i) as u8).collect();
            let meta = Metadata::new()
                .with_tag(format!("t{}", i % 3))
                .with_attribute("i", i)
                .with_content_type("application/octet-stream");
            h.put(&key, payload, meta.clone()).await.unwrap();
            written += 1;
            if i % 4 == 0 {
                h.put(&key, format!("second {i}"), meta).await.unwrap();
                written += 1;
            }
            if i % 5 == 0 {
                h.delete(&key, DeleteOptions::default()).await.unwrap();
                written += 1;
            }
            if i % 10 == 0 {
                h.restore(&key, None).await.unwrap();
                written += 1;
            }
        }
    }
    written
}

async fn assert_same(source: &Stowage, target: &Stowage) {
    for ns in ["default", "acme", "globex"] {
        let s = source.namespace(ns).unwrap();
        let t = target.namespace(ns).unwrap();
        let opts = ListOptions {
            include_deleted: true,
            ..Default::default()
        };
        let sl = s.list_all(opts.clone()).await.unwrap();
        let tl = t.list_all(opts).await.unwrap();
        assert_eq!(sl.len(), tl.len(), "namespace {ns}");
        for (a, b) in sl.iter().zip(&tl) {
            assert_eq!(
                (&a.key, a.version, a.hash, a.is_deleted(), &a.metadata),
                (&b.key, b.version, b.hash, b.is_deleted(), &b.metadata)
            );
            let sv = s.versions(a.key.as_str()).await.unwrap();
            let tv = t.versions(a.key.as_str()).await.unwrap();
            let strip = |v: &[RecordInfo]| {
                v.iter()
                    .map(|i| (i.version, i.hash, i.is_deleted()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(strip(&sv), strip(&tv), "history of {ns}/{}", a.key);
        }
    }
    assert!(target
        .verify(&stowage_core::NoProgress)
        .await
        .unwrap()
        .is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_every_version_between_providers_and_skips_on_rerun() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = store("sqlite", &d1).await;
    let target = store("memory", &d2).await;
    let written = populate(&source).await;
    let options = CopyOptions {
        all_namespaces: true,
        ..Default::default()
    };
    let first = copy(&source, &target, &options, &NoCopyObserver)
        .await
        .unwrap();
    assert_eq!(first.namespaces, 3);
    assert_eq!(first.keys, 90);
    assert!(first.mismatches.is_empty(), "{:?}", first.mismatches);
    assert_eq!(first.versions_copied, written);
    assert_same(&source, &target).await;

    let again = copy(&source, &target, &options, &NoCopyObserver)
        .await
        .unwrap();
    assert_eq!(again.versions_copied, 0, "a re-run copies nothing");
    assert_eq!(again.versions_skipped, written);

    // New writes in the source: only they are copied.
    source
        .namespace("acme")
        .unwrap()
        .put("docs/new", "fresh", Metadata::new())
        .await
        .unwrap();
    source
        .namespace("acme")
        .unwrap()
        .put("docs/001", "changed", Metadata::new())
        .await
        .unwrap();
    let third = copy(&source, &target, &options, &NoCopyObserver)
        .await
        .unwrap();
    assert_eq!(third.versions_copied, 2);
    assert_same(&source, &target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_only_copies_the_current_state() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = store("memory", &d1).await;
    let target = store("sqlite", &d2).await;
    populate(&source).await;
    let options = CopyOptions {
        all_namespaces: false,
        prefix: Some("docs/00".into()),
        versions: CopyVersions::Latest,
        ..Default::default()
    };
    let report = copy(&source, &target, &options, &NoCopyObserver)
        .await
        .unwrap();
    assert_eq!(report.namespaces, 1);
    assert_eq!(report.keys, 10, "prefix docs/00 selects docs/000..docs/009");
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
    let t = target.default_namespace();
    let all = t
        .list_all(ListOptions {
            include_deleted: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 10);
    let s = source.default_namespace();
    for info in all {
        let src = s
            .list_all(ListOptions {
                prefix: Some(info.key.to_string()),
                include_deleted: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(src[0].hash, info.hash);
        assert_eq!(src[0].is_deleted(), info.is_deleted());
    }
    assert!(target
        .namespace("acme")
        .unwrap()
        .list(ListOptions::default())
        .await
        .unwrap()
        .items
        .is_empty());
    let again = copy(&source, &target, &options, &NoCopyObserver)
        .await
        .unwrap();
    assert_eq!(again.versions_copied, 0);
}

/// A backend that refuses every write after `budget` of them, as a full disk or a revoked
/// credential would.
struct RefusingAfter {
    inner: Arc<dyn StorageBackend>,
    budget: AtomicU64,
    refusing: std::sync::atomic::AtomicBool,
}

impl RefusingAfter {
    fn take(&self, key: &Key) -> Result<()> {
        if self.refusing.load(Ordering::SeqCst)
            && self
                .budget
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
                .is_err()
        {
            return Err(Error::Backend {
                provider: "refusing".into(),
                message: format!("write of {key} refused: quota exhausted"),
                source: None,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl StorageBackend for RefusingAfter {
    fn provider(&self) -> &str {
        "refusing"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn put(
        &self,
        ns: &Namespace,
        key: &Key,
        body: Body,
        meta: Metadata,
        mode: PutMode,
    ) -> Result<RecordInfo> {
        self.take(key)?;
        self.inner.put(ns, key, body, meta, mode).await
    }
    async fn get(&self, ns: &Namespace, key: &Key, o: GetOptions) -> Result<(RecordInfo, Body)> {
        self.inner.get(ns, key, o).await
    }
    async fn head(&self, ns: &Namespace, key: &Key, v: Option<Version>) -> Result<RecordInfo> {
        self.inner.head(ns, key, v).await
    }
    async fn delete(&self, ns: &Namespace, key: &Key, o: DeleteOptions) -> Result<RecordInfo> {
        self.take(key)?;
        self.inner.delete(ns, key, o).await
    }
    async fn list(&self, ns: &Namespace, o: ListOptions) -> Result<Page<RecordInfo>> {
        self.inner.list(ns, o).await
    }
    async fn versions(&self, ns: &Namespace, key: &Key) -> Result<Vec<RecordInfo>> {
        self.inner.versions(ns, key).await
    }
    async fn verify(&self, p: &dyn stowage_core::Progress) -> Result<stowage_core::VerifyReport> {
        self.inner.verify(p).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_refuses_stops_the_copy_naming_the_record_and_a_rerun_completes() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = store("sqlite", &d1).await;
    let written = populate(&source).await;
    let before: Vec<_> = source
        .namespace("acme")
        .unwrap()
        .list_all(ListOptions::default())
        .await
        .unwrap();
    let memory = store("memory", &d2).await;
    let refusing = Arc::new(RefusingAfter {
        inner: memory.backend().clone(),
        budget: AtomicU64::new(25),
        refusing: true.into(),
    });
    let target = Stowage::from_backend(refusing.clone());
    let options = CopyOptions {
        all_namespaces: true,
        concurrency: Some(1),
        ..Default::default()
    };
    let err = copy(&source, &target, &options, &NoCopyObserver)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Backend, "{msg}");
    assert!(
        msg.contains("docs/") && msg.contains("version") && msg.contains("quota"),
        "names the record: {msg}"
    );
    // The source is untouched.
    let after: Vec<_> = source
        .namespace("acme")
        .unwrap()
        .list_all(ListOptions::default())
        .await
        .unwrap();
    assert_eq!(before, after);
    // The fault clears; the re-run completes and copies only what was missing.
    refusing.refusing.store(false, Ordering::SeqCst);
    let report = copy(&source, &target, &options, &NoCopyObserver)
        .await
        .unwrap();
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
    assert_eq!(report.versions_skipped, 25);
    assert_eq!(report.versions_copied, written - 25);
    assert_same(&source, &target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_only_never_overwrites_a_state_the_source_never_had() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = store("sqlite", &d1).await;
    let target = store("memory", &d2).await;
    let (s, t) = (source.default_namespace(), target.default_namespace());
    s.put("k", "one", Metadata::new()).await.unwrap();
    let options = CopyOptions {
        versions: CopyVersions::Latest,
        ..Default::default()
    };
    copy(&source, &target, &options, &NoCopyObserver)
        .await
        .unwrap();
    // The target is behind the source: it is brought up to date.
    s.put("k", "two", Metadata::new()).await.unwrap();
    let report = copy(&source, &target, &options, &NoCopyObserver)
        .await
        .unwrap();
    assert_eq!(report.versions_copied, 1);
    // The target is written by someone else: the copy stops and keeps that write.
    let theirs = t.put("k", "theirs", Metadata::new()).await.unwrap();
    let err = copy(&source, &target, &options, &NoCopyObserver)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("default/k"), "{err}");
    assert_eq!(t.head("k", None).await.unwrap().hash, theirs.hash);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_state_differing_only_in_metadata_is_named_so_by_both_modes() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = store("sqlite", &d1).await;
    let target = store("sqlite", &d2).await;
    let (s, t) = (source.default_namespace(), target.default_namespace());
    s.put("k", "same bytes", Metadata::new().with_tag("a"))
        .await
        .unwrap();
    copy(&source, &target, &CopyOptions::default(), &NoCopyObserver)
        .await
        .unwrap();
    let theirs = t
        .put("k", "same bytes", Metadata::new().with_tag("b"))
        .await
        .unwrap();
    // --versions latest: the target's v2 is the source's v1 but for its tags.
    let options = CopyOptions {
        versions: CopyVersions::Latest,
        ..Default::default()
    };
    let err = copy(&source, &target, &options, &NoCopyObserver)
        .await
        .unwrap_err();
    let latest_msg = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{latest_msg}");
    assert!(
        latest_msg.contains("the source's version 1")
            && !latest_msg.contains("which no version of the source has"),
        "{latest_msg}"
    );
    assert_eq!(t.head("k", None).await.unwrap(), theirs);
    // --versions all, onto a target whose v1 has other tags: the same words.
    let d3 = tempfile::tempdir().unwrap();
    let other = store("sqlite", &d3).await;
    other
        .default_namespace()
        .put("k", "same bytes", Metadata::new().with_tag("b"))
        .await
        .unwrap();
    let err = copy(&source, &other, &CopyOptions::default(), &NoCopyObserver)
        .await
        .unwrap_err();
    let all_msg = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{all_msg}");
    for msg in [&latest_msg, &all_msg] {
        assert!(msg.contains("their tags differ"), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_only_counts_both_versions_a_tombstone_takes() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = store("sqlite", &d1).await;
    let target = store("sqlite", &d2).await;
    let s = source.default_namespace();
    s.put("k", "ten bytes!", Metadata::new()).await.unwrap();
    s.delete("k", DeleteOptions::default()).await.unwrap();
    let options = CopyOptions {
        versions: CopyVersions::Latest,
        ..Default::default()
    };
    let report = copy(&source, &target, &options, &NoCopyObserver)
        .await
        .unwrap();
    let written = target.default_namespace().versions("k").await.unwrap();
    assert_eq!(written.len(), 2, "{written:?}");
    assert_eq!(report.versions_copied, 2, "{report:?}");
    assert_eq!(report.bytes_copied, 10, "{report:?}");
    // A target tombstone of an older state: the payload is brought back, then deleted again.
    let d3 = tempfile::tempdir().unwrap();
    let behind = store("sqlite", &d3).await;
    let b = behind.default_namespace();
    s.restore("k", None).await.unwrap();
    copy(&source, &behind, &options, &NoCopyObserver)
        .await
        .unwrap();
    b.delete("k", DeleteOptions::default()).await.unwrap();
    s.put("k", "newer", Metadata::new()).await.unwrap();
    s.delete("k", DeleteOptions::default()).await.unwrap();
    let report = copy(&source, &behind, &options, &NoCopyObserver)
        .await
        .unwrap();
    assert!(report.mismatches.is_empty(), "{report:?}");
    assert_eq!(report.versions_copied, 2, "{report:?}");
    assert_eq!(report.bytes_copied, 5, "{report:?}");
}

/// A target that, on the first write this copy makes, lets another copy of the same source
/// run to the end first: the race of two `stowage copy` runs at once, made deterministic.
struct OvertakenOnce {
    inner: Arc<dyn StorageBackend>,
    source: Stowage,
    options: CopyOptions,
    first: std::sync::atomic::AtomicBool,
    /// Instead of another copy, writes to the source `(key, payload)`, one on the copy's
    /// first listing of the target, the next on its first write.
    source_writes: Mutex<Vec<(&'static str, &'static str)>>,
}

impl OvertakenOnce {
    /// The next scripted write to the source, if any is left; whether there was one.
    async fn write_the_source(&self) -> bool {
        let next = {
            let mut writes = self.source_writes.lock().unwrap();
            if writes.is_empty() {
                return false;
            }
            writes.remove(0)
        };
        let s = self.source.default_namespace();
        s.put(next.0, next.1, Metadata::new()).await.unwrap();
        true
    }

    async fn let_the_other_copy_finish(&self) {
        if self.write_the_source().await {
            return;
        }
        if self.first.swap(false, Ordering::SeqCst) {
            let other = Stowage::from_backend(self.inner.clone());
            copy(&self.source, &other, &self.options, &NoCopyObserver)
                .await
                .unwrap();
        }
    }
}

#[async_trait]
impl StorageBackend for OvertakenOnce {
    fn provider(&self) -> &str {
        "overtaken"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn put(
        &self,
        ns: &Namespace,
        key: &Key,
        body: Body,
        meta: Metadata,
        mode: PutMode,
    ) -> Result<RecordInfo> {
        self.let_the_other_copy_finish().await;
        self.inner.put(ns, key, body, meta, mode).await
    }
    async fn get(&self, ns: &Namespace, key: &Key, o: GetOptions) -> Result<(RecordInfo, Body)> {
        self.inner.get(ns, key, o).await
    }
    async fn head(&self, ns: &Namespace, key: &Key, v: Option<Version>) -> Result<RecordInfo> {
        self.inner.head(ns, key, v).await
    }
    async fn delete(&self, ns: &Namespace, key: &Key, o: DeleteOptions) -> Result<RecordInfo> {
        self.let_the_other_copy_finish().await;
        self.inner.delete(ns, key, o).await
    }
    async fn list(&self, ns: &Namespace, o: ListOptions) -> Result<Page<RecordInfo>> {
        self.write_the_source().await;
        self.inner.list(ns, o).await
    }
    async fn versions(&self, ns: &Namespace, key: &Key) -> Result<Vec<RecordInfo>> {
        self.inner.versions(ns, key).await
    }
    async fn verify(&self, p: &dyn stowage_core::Progress) -> Result<stowage_core::VerifyReport> {
        self.inner.verify(p).await
    }
}

/// Two copies of one source at once: the one overtaken finds the other's work and finishes,
/// and a deleted record is never written again after its tombstone (a first version written
/// as `Create` would land after the other copy's tombstone, as a live version the source
/// never had).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_overtaken_by_another_finishes_without_writing_twice() {
    for versions in [CopyVersions::All, CopyVersions::Latest] {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source = store("sqlite", &d1).await;
        let s = source.default_namespace();
        s.put("gone", "was here", Metadata::new()).await.unwrap();
        s.delete("gone", DeleteOptions::default()).await.unwrap();
        s.put("kept", "one", Metadata::new()).await.unwrap();
        s.put("kept", "two", Metadata::new()).await.unwrap();
        let options = CopyOptions {
            versions,
            concurrency: Some(1),
            ..Default::default()
        };
        let memory = store("memory", &d2).await;
        let target = Stowage::from_backend(Arc::new(OvertakenOnce {
            inner: memory.backend().clone(),
            source: source.clone(),
            options: options.clone(),
            first: true.into(),
            source_writes: Mutex::new(Vec::new()),
        }));
        let report = copy(&source, &target, &options, &NoCopyObserver)
            .await
            .unwrap();
        assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
        // Every version is counted once, copied or skipped: as many as a re-run over the
        // finished target finds there (the other copy's count too, not only its own).
        let rerun = copy(&source, &memory, &options, &NoCopyObserver)
            .await
            .unwrap();
        assert_eq!(rerun.versions_copied, 0);
        assert_eq!(
            report.versions_copied + report.versions_skipped,
            rerun.versions_skipped,
            "{versions:?}: {report:?}"
        );
        let t = memory.default_namespace();
        let history = |v: Vec<RecordInfo>| {
            v.iter()
                .map(|i| (i.version, i.is_deleted()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            history(t.versions("gone").await.unwrap()),
            [(1, false), (2, true)],
            "{versions:?}"
        );
        let kept = history(t.versions("kept").await.unwrap());
        match versions {
            CopyVersions::All => assert_eq!(kept, [(1, false), (2, false)]),
            CopyVersions::Latest => assert_eq!(kept, [(1, false)]),
        }
        assert_eq!(
            &t.get("kept").await.unwrap().1.into_bytes().await.unwrap()[..],
            b"two"
        );
    }
}

/// `copy` runs in a spawned task: its future is `Send`.
#[tokio::test]
async fn a_copy_can_run_in_a_spawned_task() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (source, target) = (store("sqlite", &d1).await, store("memory", &d2).await);
    source
        .default_namespace()
        .put("k", "v", Metadata::new())
        .await
        .unwrap();
    let report = tokio::spawn(async move {
        copy(&source, &target, &CopyOptions::default(), &NoCopyObserver).await
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(report.versions_copied, 1);
}

/// The source written to while the copy runs: the final check's mismatch says so, with the
/// versions, and that a re-run copies what changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_written_during_the_copy_is_named_in_the_final_check() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = store("sqlite", &d1).await;
    source
        .default_namespace()
        .put("moving", "one", Metadata::new())
        .await
        .unwrap();
    let memory = store("memory", &d2).await;
    let options = CopyOptions {
        concurrency: Some(1),
        ..Default::default()
    };
    let target = Stowage::from_backend(Arc::new(OvertakenOnce {
        inner: memory.backend().clone(),
        source: source.clone(),
        options: options.clone(),
        first: false.into(),
        source_writes: Mutex::new(vec![("moving", "two"), ("moving", "three")]),
    }));
    let report = copy(&source, &target, &options, &NoCopyObserver)
        .await
        .unwrap();
    let [m] = &report.mismatches[..] else {
        panic!("one mismatch expected: {:?}", report.mismatches);
    };
    assert_eq!(m.key, "moving");
    assert!(
        m.detail
            .contains("latest versions differ (source v3, target v2)")
            && m.detail
                .contains("written meanwhile (v1 when the copy listed it, v3 now)"),
        "{}",
        m.detail
    );
    let again = copy(&source, &target, &options, &NoCopyObserver)
        .await
        .unwrap();
    assert!(again.mismatches.is_empty(), "{:?}", again.mismatches);
    assert_eq!(
        again.versions_copied, 1,
        "the version written after the copy read the history"
    );
}
