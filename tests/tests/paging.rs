//! The namespace handle checks every page a provider returns: a provider that pages wrongly (a
//! buggy or hostile plugin) is an error, not a listing that never ends or shows another
//! tenant's records.

use std::sync::{Arc, Mutex};

use stowage_core::{
    async_trait, Body, Capabilities, DeleteOptions, ErrorKind, GetOptions, Key, ListOptions,
    Metadata, Namespace, Page, PutMode, Query, RecordInfo, Result, StorageBackend, Stowage,
    Version,
};

/// A memory store whose `list` and `search` answer with scripted pages (records taken from
/// the memory store by key), one per call.
struct Scripted {
    inner: Arc<dyn StorageBackend>,
    pages: Mutex<Script>,
}

/// Pages to answer with: the `(namespace, key)` of each record, and the `next` cursor.
type Script = Vec<(Vec<(&'static str, &'static str)>, Option<&'static str>)>;

impl Scripted {
    async fn next_page(&self) -> Result<Page<RecordInfo>> {
        let (items, next) = self.pages.lock().unwrap().remove(0);
        let mut records = Vec::new();
        for (ns, key) in items {
            let ns = Namespace::new(ns).unwrap();
            records.push(self.inner.head(&ns, &Key::new(key)?, None).await?);
        }
        Ok(Page {
            items: records,
            next: next.map(String::from),
        })
    }
}

#[async_trait]
impl StorageBackend for Scripted {
    fn provider(&self) -> &str {
        "scripted"
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
        self.inner.put(ns, key, body, meta, mode).await
    }
    async fn get(&self, ns: &Namespace, key: &Key, o: GetOptions) -> Result<(RecordInfo, Body)> {
        self.inner.get(ns, key, o).await
    }
    async fn head(&self, ns: &Namespace, key: &Key, v: Option<Version>) -> Result<RecordInfo> {
        self.inner.head(ns, key, v).await
    }
    async fn delete(&self, ns: &Namespace, key: &Key, o: DeleteOptions) -> Result<RecordInfo> {
        self.inner.delete(ns, key, o).await
    }
    async fn list(&self, _: &Namespace, _: ListOptions) -> Result<Page<RecordInfo>> {
        self.next_page().await
    }
    async fn search(&self, _: &Namespace, _: &Query) -> Result<Page<RecordInfo>> {
        self.next_page().await
    }
    async fn versions(&self, ns: &Namespace, key: &Key) -> Result<Vec<RecordInfo>> {
        self.inner.versions(ns, key).await
    }
    async fn verify(&self, p: &dyn stowage_core::Progress) -> Result<stowage_core::VerifyReport> {
        self.inner.verify(p).await
    }
}

async fn scripted(pages: Script) -> Stowage {
    let registry = Arc::new(stowage_core::Registry::new());
    stowage_providers::register_all(&registry).unwrap();
    let memory = Stowage::builder()
        .registry(registry)
        .with_storage("memory", serde_json::json!({}))
        .build()
        .await
        .unwrap();
    for (ns, key) in [
        ("default", "a"),
        ("default", "b"),
        ("default", "p/c"),
        ("other", "z"),
    ] {
        memory
            .namespace(ns)
            .unwrap()
            .put(key, "x", Metadata::new())
            .await
            .unwrap();
    }
    Stowage::from_backend(Arc::new(Scripted {
        inner: memory.backend().clone(),
        pages: Mutex::new(pages),
    }))
}

async fn list_fails(pages: Script, options: ListOptions, says: &str) {
    let store = scripted(pages).await;
    let err = store
        .default_namespace()
        .list_all(options)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    assert!(err.to_string().contains(says), "{says:?} not in: {err}");
}

#[tokio::test]
async fn a_well_formed_walk_passes() {
    let store = scripted(vec![
        (vec![("default", "a")], Some("c1")),
        (vec![("default", "b")], Some("c2")),
        (vec![], None),
    ])
    .await;
    let all = store
        .default_namespace()
        .list_all(ListOptions::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
}

#[tokio::test]
async fn pages_that_would_loop_or_leak_are_refused() {
    // The cursor given comes back at once, or later (a cycle).
    list_fails(
        vec![(vec![("default", "a")], Some("c1")); 2],
        ListOptions {
            cursor: Some("c1".into()),
            ..Default::default()
        },
        "equal to the cursor it was given",
    )
    .await;
    list_fails(
        vec![
            (vec![], Some("c1")),
            (vec![], Some("c2")),
            (vec![], Some("c1")),
        ],
        ListOptions::default(),
        "came back",
    )
    .await;
    // Another tenant's record.
    list_fails(
        vec![(vec![("other", "z")], None)],
        ListOptions::default(),
        "namespace \"other\"",
    )
    .await;
    // Out of order within a page, and across pages.
    list_fails(
        vec![(vec![("default", "b"), ("default", "a")], None)],
        ListOptions::default(),
        "strictly ascending",
    )
    .await;
    list_fails(
        vec![
            (vec![("default", "b")], Some("c1")),
            (vec![("default", "a")], None),
        ],
        ListOptions::default(),
        "not after the previous page",
    )
    .await;
    // Outside the prefix, not after start_after, over the limit.
    list_fails(
        vec![(vec![("default", "a")], None)],
        ListOptions {
            prefix: Some("p/".into()),
            ..Default::default()
        },
        "outside the requested prefix",
    )
    .await;
    list_fails(
        vec![(vec![("default", "a")], None)],
        ListOptions {
            start_after: Some("a".into()),
            ..Default::default()
        },
        "not after start_after",
    )
    .await;
    list_fails(
        vec![(vec![("default", "a"), ("default", "b")], None)],
        ListOptions {
            limit: Some(1),
            ..Default::default()
        },
        "2 items for a limit of 1",
    )
    .await;
    // Search pages: another namespace, a cursor that does not move.
    let store = scripted(vec![(vec![("other", "z")], None)]).await;
    let err = store
        .default_namespace()
        .search(&Query::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("namespace \"other\""), "{err}");
    let store = scripted(vec![(vec![], Some("same"))]).await;
    let err = store
        .default_namespace()
        .search(&Query {
            cursor: Some("same".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("equal to the cursor it was given"),
        "{err}"
    );
}
