//! [`Stowage`] (a configured store), its [`StowageBuilder`], and [`NamespaceHandle`] (a handle
//! scoped to one tenant). Every backend call of an application goes through here: keys are
//! validated before any I/O, the backend is initialized lazily once, and each call is traced.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::OnceCell;
use tracing::Instrument;

use crate::backend::StorageBackend;
use crate::body::Body;
use crate::config::StowageConfig;
use crate::error::{Error, Result};
use crate::key::{Key, Namespace};
use crate::metrics::{Metrics, PayloadBytes};
use crate::model::{
    Capabilities, DeleteOptions, GcReport, GetOptions, ListOptions, Metadata, Page, Progress,
    PutMode, RecordInfo, VerifyReport, Version,
};
use crate::query::Query;
use crate::registry::Registry;

/// A configured store.
///
/// ```
/// # async fn demo() -> stowage_core::Result<()> {
/// use stowage_core::{Stowage, Metadata};
/// let store = Stowage::builder()
///     .with_storage("memory", serde_json::json!({}))
///     .build()
///     .await?;
/// let tenant = store.namespace("acme")?;
/// tenant.put("tapes/a.json", "{}", Metadata::new().with_tag("demo")).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Stowage {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn StorageBackend>,
    default_namespace: Namespace,
    init: OnceCell<()>,
    metrics: Option<Arc<Metrics>>,
}

impl Stowage {
    /// Starts building a store.
    pub fn builder() -> StowageBuilder {
        StowageBuilder::default()
    }

    /// Wraps an already-created backend.
    pub fn from_backend(backend: Arc<dyn StorageBackend>) -> Self {
        Stowage {
            inner: Arc::new(Inner {
                backend,
                default_namespace: Namespace::default(),
                init: OnceCell::new(),
                metrics: None,
            }),
        }
    }

    /// The provider name of the backend.
    pub fn provider(&self) -> &str {
        self.inner.backend.provider()
    }

    /// What the backend supports.
    pub fn capabilities(&self) -> Capabilities {
        self.inner.backend.capabilities()
    }

    /// The backend itself (not scoped to a namespace).
    pub fn backend(&self) -> &Arc<dyn StorageBackend> {
        &self.inner.backend
    }

    /// A handle scoped to namespace `ns`; it can never reach another namespace.
    pub fn namespace(&self, ns: &str) -> Result<NamespaceHandle> {
        Ok(NamespaceHandle {
            store: self.clone(),
            namespace: Namespace::new(ns)?,
        })
    }

    /// A handle on the configured default namespace.
    pub fn default_namespace(&self) -> NamespaceHandle {
        NamespaceHandle {
            store: self.clone(),
            namespace: self.inner.default_namespace.clone(),
        }
    }

    /// Initializes the backend now rather than at the first operation.
    pub async fn initialize(&self) -> Result<()> {
        self.inner
            .init
            .get_or_try_init(|| self.inner.backend.initialize())
            .await
            .map(|_| ())
    }

    /// The metrics this store feeds, if any were attached.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.inner.metrics.as_ref()
    }

    /// Runs one backend call — the one place every call of an application passes through: lazy
    /// initialize, then the call inside a `tracing` span (target `stowage_core`, name
    /// `stowage.call`) with fields provider, namespace, operation, key, bytes, outcome and
    /// micros, and the optional [`Metrics`] counters.
    pub async fn call<T, F, Fut>(
        &self,
        operation: &'static str,
        ns: Option<&Namespace>,
        key: Option<&Key>,
        f: F,
    ) -> Result<T>
    where
        T: PayloadBytes,
        F: FnOnce(Arc<dyn StorageBackend>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let span = tracing::info_span!(
            "stowage.call",
            provider = self.provider(),
            operation,
            namespace = ns.map(|n| n.as_str()),
            key = key.map(|k| k.as_str()),
            bytes = tracing::field::Empty,
            outcome = tracing::field::Empty,
            micros = tracing::field::Empty,
        );
        async {
            self.initialize().await?;
            let started = Instant::now();
            let result = f(self.inner.backend.clone()).await;
            let micros = started.elapsed().as_micros() as u64;
            let span = tracing::Span::current();
            span.record("micros", micros);
            let outcome = match &result {
                Ok(value) => {
                    let bytes = value.payload_bytes(operation);
                    span.record("bytes", bytes);
                    span.record("outcome", "ok");
                    tracing::debug!("{operation} ok");
                    Ok(bytes)
                }
                Err(e) => {
                    span.record("outcome", tracing::field::debug(e.kind()));
                    tracing::debug!(error = %e, "{operation} failed");
                    Err(e.kind())
                }
            };
            if let Some(m) = &self.inner.metrics {
                m.record(self.provider(), operation, outcome, micros);
            }
            result
        }
        .instrument(span)
        .await
    }

    /// Closes the backend cleanly (e.g. checkpoints and closes a SQLite pool). Further calls
    /// through this store or its clones are the backend's to refuse.
    pub async fn close(&self) -> Result<()> {
        if self.inner.init.initialized() {
            self.inner.backend.close().await
        } else {
            Ok(())
        }
    }

    /// Reclaims payload bytes no version references.
    pub async fn gc(&self, progress: &dyn Progress) -> Result<GcReport> {
        self.call("gc", None, None, |b| async move { b.gc(progress).await })
            .await
    }

    /// Re-hashes every stored payload and checks every reference.
    pub async fn verify(&self, progress: &dyn Progress) -> Result<VerifyReport> {
        self.call(
            "verify",
            None,
            None,
            |b| async move { b.verify(progress).await },
        )
        .await
    }

    /// Namespaces holding records.
    pub async fn namespaces(&self) -> Result<Vec<Namespace>> {
        self.call(
            "namespaces",
            None,
            None,
            |b| async move { b.namespaces().await },
        )
        .await
    }
}

impl std::fmt::Debug for Stowage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stowage")
            .field("provider", &self.provider())
            .field("default_namespace", &self.inner.default_namespace)
            .finish()
    }
}

/// Builds a [`Stowage`] from a registry and a provider choice (in code or from a config file).
#[derive(Default)]
pub struct StowageBuilder {
    registry: Option<Arc<Registry>>,
    storage: Option<(String, serde_json::Value)>,
    config: Option<StowageConfig>,
    config_file: Option<PathBuf>,
    plugin_files: Vec<PathBuf>,
    namespace: Option<String>,
    metrics: Option<Arc<Metrics>>,
}

impl StowageBuilder {
    /// Uses this registry instead of [`Registry::global`].
    pub fn registry(mut self, registry: Arc<Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Chooses provider `name` with its JSON config.
    pub fn with_storage(mut self, name: impl Into<String>, config: serde_json::Value) -> Self {
        self.storage = Some((name.into(), config));
        self
    }

    /// Reads the provider choice from a TOML file.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }

    /// Loads a plugin library before the provider is chosen (beside the config's `[plugins]`);
    /// its providers join the registry.
    pub fn load_plugin(mut self, path: impl Into<PathBuf>) -> Self {
        self.plugin_files.push(path.into());
        self
    }

    /// Uses an already-parsed config.
    pub fn config(mut self, config: StowageConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// Feeds these counters from every call of the store.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Sets the default namespace (overrides the config's).
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// The config this builder will use, read from its file if one was named. Naming the
    /// storage two ways (`with_storage`, `config`, `config_file`) is an error, not a silent
    /// choice of one: the other's provider, namespace and plugins would be dropped.
    pub fn resolve_config(&self) -> Result<StowageConfig> {
        let named: Vec<&str> = [
            (self.storage.is_some(), "with_storage"),
            (self.config.is_some(), "config"),
            (self.config_file.is_some(), "config_file"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if named.len() > 1 {
            return Err(Error::invalid_input(format!(
                "the builder was given the storage by both {}: call only one of them",
                named.join(" and ")
            )));
        }
        if let Some((name, cfg)) = &self.storage {
            let mut c = StowageConfig::embedded_default();
            c.storage.provider = name.clone();
            c.storage.config = cfg.clone();
            c.source = format!("the builder's with_storage(\"{name}\")");
            return Ok(c);
        }
        if let Some(c) = &self.config {
            return Ok(c.clone());
        }
        if let Some(path) = &self.config_file {
            return StowageConfig::from_file(path);
        }
        Ok(StowageConfig::embedded_default())
    }

    /// Creates the backend (validating its config first; no I/O before that). The backend is
    /// initialized lazily at the first operation.
    pub async fn build(self) -> Result<Stowage> {
        let config = self.resolve_config()?;
        let registry = self.registry.clone().unwrap_or_else(Registry::global);
        let mut plugins = config.plugins.clone();
        plugins.paths.extend(self.plugin_files.iter().cloned());
        crate::plugin::load_plugins(&registry, &plugins)?;
        let default_namespace = match &self.namespace {
            Some(ns) => Namespace::new(ns.clone())?,
            None => config.storage.namespace.clone(),
        };
        let factory = registry
            .get(&config.storage.provider)
            .map_err(|e| match e {
                Error::UnknownProvider { name, known } => Error::InvalidConfig {
                    source_name: Some(config.source.clone()),
                    field: "storage.provider".into(),
                    message: format!(
                        "unknown provider `{name}`; {}",
                        crate::error::known_providers(&known)
                    ),
                },
                other => other,
            })?;
        let with_source = |e: Error| match e {
            Error::InvalidConfig {
                source_name: None,
                field,
                message,
            } => Error::InvalidConfig {
                source_name: Some(config.source.clone()),
                field,
                message,
            },
            other => other,
        };
        factory
            .validate(&config.storage.config)
            .map_err(with_source)?;
        let backend = factory
            .create(config.storage.config.clone())
            .await
            .map_err(with_source)?;
        Ok(Stowage {
            inner: Arc::new(Inner {
                backend,
                default_namespace,
                init: OnceCell::new(),
                metrics: self.metrics,
            }),
        })
    }
}

/// A handle scoped to one namespace: whatever key it is given, it reads, lists, searches and
/// deletes only its own namespace's records.
#[derive(Clone, Debug)]
pub struct NamespaceHandle {
    store: Stowage,
    namespace: Namespace,
}

impl NamespaceHandle {
    /// The namespace of this handle.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The store this handle belongs to.
    pub fn store(&self) -> &Stowage {
        &self.store
    }

    /// Writes a new version (overwriting).
    pub async fn put(
        &self,
        key: &str,
        body: impl Into<Body>,
        metadata: Metadata,
    ) -> Result<RecordInfo> {
        self.put_with(key, body, metadata, PutMode::Overwrite).await
    }

    /// Writes a new version under a [`PutMode`] precondition.
    pub async fn put_with(
        &self,
        key: &str,
        body: impl Into<Body>,
        metadata: Metadata,
        mode: PutMode,
    ) -> Result<RecordInfo> {
        let key = Key::new(key)?;
        metadata.validate()?;
        let k = &key;
        let body = body.into().exact();
        let ns = &self.namespace;
        self.store
            .call("put", Some(ns), Some(&key), |b| async move {
                b.put(ns, k, body, metadata, mode).await
            })
            .await
    }

    /// Reads the latest live version.
    pub async fn get(&self, key: &str) -> Result<(RecordInfo, Body)> {
        self.get_with(key, GetOptions::default()).await
    }

    /// Reads a version and/or byte range.
    pub async fn get_with(&self, key: &str, options: GetOptions) -> Result<(RecordInfo, Body)> {
        let key = Key::new(key)?;
        let k = &key;
        let ns = &self.namespace;
        self.store
            .call("get", Some(ns), Some(&key), |b| async move {
                b.get(ns, k, options).await
            })
            .await
    }

    /// Reads the latest live version whole into memory.
    pub async fn get_bytes(&self, key: &str) -> Result<(RecordInfo, bytes::Bytes)> {
        let (info, body) = self.get(key).await?;
        Ok((info, body.into_bytes().await?))
    }

    /// Info of a version (default: latest live).
    pub async fn head(&self, key: &str, version: Option<Version>) -> Result<RecordInfo> {
        let key = Key::new(key)?;
        let k = &key;
        let ns = &self.namespace;
        self.store
            .call("head", Some(ns), Some(&key), |b| async move {
                b.head(ns, k, version).await
            })
            .await
    }

    /// Writes a tombstone.
    pub async fn delete(&self, key: &str, options: DeleteOptions) -> Result<RecordInfo> {
        let key = Key::new(key)?;
        let k = &key;
        let ns = &self.namespace;
        self.store
            .call("delete", Some(ns), Some(&key), |b| async move {
                b.delete(ns, k, options).await
            })
            .await
    }

    /// One page of the listing.
    ///
    /// The page is checked before it is returned: records of this namespace only, keys in
    /// strictly ascending order, under the prefix and after `start_after`, no more than the
    /// limit, and a `next` cursor other than the one given. A provider breaking that (a buggy
    /// or hostile plugin) is a `Backend` error, not a listing that loops for ever or shows
    /// another tenant's records.
    pub async fn list(&self, options: ListOptions) -> Result<Page<RecordInfo>> {
        let ns = &self.namespace;
        let asked = options.clone();
        let page = self
            .store
            .call("list", Some(ns), None, |b| async move {
                b.list(ns, options).await
            })
            .await?;
        self.check_page(
            "list",
            &page,
            &crate::model::PageRules {
                prefix: asked.prefix.as_deref(),
                start_after: asked.start_after.as_deref(),
                limit: asked.limit,
                cursor: asked.cursor.as_deref(),
                by_key: true,
            },
        )?;
        Ok(page)
    }

    /// A page breaking [`crate::model::page_problem`]'s rules is a `Backend` error.
    fn check_page(
        &self,
        operation: &str,
        page: &Page<RecordInfo>,
        rules: &crate::model::PageRules<'_>,
    ) -> Result<()> {
        match crate::model::page_problem(
            self.namespace.as_str(),
            &page.items,
            page.next.as_deref(),
            rules,
        ) {
            Some(problem) => Err(self.malformed(operation, problem)),
            None => Ok(()),
        }
    }

    fn malformed(&self, operation: &str, what: String) -> Error {
        Error::Backend {
            provider: self.store.provider().to_string(),
            message: format!("{operation} in namespace {} failed: {what}", self.namespace),
            source: None,
        }
    }

    /// Every record of the listing, following cursors. A cursor met twice, or a page whose
    /// keys do not come after the previous page's, is a `Backend` error (the walk would never
    /// end, or repeat records).
    pub async fn list_all(&self, mut options: ListOptions) -> Result<Vec<RecordInfo>> {
        let mut all: Vec<RecordInfo> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        loop {
            let page = self.list(options.clone()).await?;
            if let (Some(last), Some(first)) = (all.last(), page.items.first()) {
                if first.key <= last.key {
                    return Err(self.malformed(
                        "list",
                        format!(
                            "a page starts at key {:?}, not after the previous page's last key {:?}",
                            first.key.as_str(),
                            last.key.as_str()
                        ),
                    ));
                }
            }
            all.extend(page.items);
            match page.next {
                Some(next) if !seen.insert(next.clone()) => {
                    return Err(self.malformed(
                        "list",
                        format!("its cursor {next:?} came back: following it would never end"),
                    ))
                }
                Some(next) => options.cursor = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// One page of search results, checked as [`Self::list`] checks its pages (namespace,
    /// limit, a cursor that moves on).
    pub async fn search(&self, query: &Query) -> Result<Page<RecordInfo>> {
        let ns = &self.namespace;
        let page = self
            .store
            .call("search", Some(ns), None, |b| async move {
                b.search(ns, query).await
            })
            .await?;
        self.check_page(
            "search",
            &page,
            &crate::model::PageRules {
                prefix: query.prefix.as_deref(),
                limit: query.limit,
                cursor: query.cursor.as_deref(),
                ..Default::default()
            },
        )?;
        Ok(page)
    }

    /// Every version of a key, oldest first.
    pub async fn versions(&self, key: &str) -> Result<Vec<RecordInfo>> {
        let key = Key::new(key)?;
        let k = &key;
        let ns = &self.namespace;
        self.store
            .call("versions", Some(ns), Some(&key), |b| async move {
                b.versions(ns, k).await
            })
            .await
    }

    /// Undeletes a key.
    pub async fn restore(&self, key: &str, version: Option<Version>) -> Result<RecordInfo> {
        let key = Key::new(key)?;
        let k = &key;
        let ns = &self.namespace;
        self.store
            .call("restore", Some(ns), Some(&key), |b| async move {
                b.restore(ns, k, version).await
            })
            .await
    }

    /// Removes every version of a key for good.
    pub async fn purge(&self, key: &str) -> Result<u64> {
        let key = Key::new(key)?;
        let k = &key;
        let ns = &self.namespace;
        self.store
            .call("purge", Some(ns), Some(&key), |b| async move {
                b.purge(ns, k).await
            })
            .await
    }
}
