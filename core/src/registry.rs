//! [`Registry`]: provider factories by name, process-wide or isolated.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use crate::backend::StorageBackend;
use crate::error::{Error, Result};
use crate::factory::StorageProviderFactory;

/// A built-in provider, submitted with `inventory::submit!` by the crate that defines it.
///
/// ```text
/// inventory::submit! { stowage_core::BuiltinProvider { factory: || Arc::new(MyFactory) } }
/// ```
pub struct BuiltinProvider {
    /// Makes the factory.
    pub factory: fn() -> Arc<dyn StorageProviderFactory>,
}

inventory::collect!(BuiltinProvider);

/// Provider factories by name.
///
/// ```
/// use stowage_core::Registry;
/// let registry = Registry::new();
/// assert!(registry.names().is_empty());
/// let err = registry.get("nope").err().unwrap();
/// assert!(err.to_string().contains("unknown provider"));
/// ```
#[derive(Default)]
pub struct Registry {
    factories: RwLock<HashMap<String, Arc<dyn StorageProviderFactory>>>,
}

impl Registry {
    /// An empty, isolated registry (for tests and embedders).
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry holding every provider submitted with `inventory` in this binary.
    pub fn with_builtins() -> Self {
        let registry = Self::new();
        for builtin in inventory::iter::<BuiltinProvider> {
            // Two built-ins of one name would be a bug in this binary's crates; keep the first.
            let _ = registry.register((builtin.factory)());
        }
        registry
    }

    /// The process-wide registry, built-ins pre-loaded.
    pub fn global() -> Arc<Registry> {
        static GLOBAL: OnceLock<Arc<Registry>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| Arc::new(Registry::with_builtins()))
            .clone()
    }

    /// Adds a factory; a name already taken is `ProviderExists`.
    pub fn register(&self, factory: Arc<dyn StorageProviderFactory>) -> Result<()> {
        let mut map = self.factories.write().unwrap_or_else(|e| e.into_inner());
        let name = factory.name().to_string();
        if let Some(existing) = map.get(&name) {
            return Err(Error::ProviderExists {
                name,
                origin: Some(existing.origin().to_string()),
            });
        }
        map.insert(name, factory);
        Ok(())
    }

    /// Removes a factory, returning it.
    pub fn unregister(&self, name: &str) -> Option<Arc<dyn StorageProviderFactory>> {
        self.factories
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
    }

    /// The factory called `name`; an unknown name lists the known ones.
    pub fn get(&self, name: &str) -> Result<Arc<dyn StorageProviderFactory>> {
        let map = self.factories.read().unwrap_or_else(|e| e.into_inner());
        match map.get(name) {
            Some(f) => Ok(f.clone()),
            None => {
                let mut known: Vec<String> = map.keys().cloned().collect();
                known.sort();
                Err(Error::UnknownProvider {
                    name: name.to_string(),
                    known,
                })
            }
        }
    }

    /// Whether a factory called `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.factories
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(name)
    }

    /// Every registered name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .factories
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// Every registered factory, sorted by name.
    pub fn factories(&self) -> Vec<Arc<dyn StorageProviderFactory>> {
        let mut all: Vec<_> = self
            .factories
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// Validates `config` with the factory called `name`, then creates a backend.
    pub async fn create(
        &self,
        name: &str,
        config: serde_json::Value,
    ) -> Result<Arc<dyn StorageBackend>> {
        let factory = self.get(name)?;
        factory.validate(&config)?;
        factory.create(config).await
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("providers", &self.names())
            .finish()
    }
}
