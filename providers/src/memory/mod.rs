//! The `memory` provider: every record in process memory — for tests and examples, not durable
//! (everything is gone when the store is dropped).
//!
//! It is the reference implementation of the [`stowage_core::StorageBackend`]
//! contract: every operation is supported with exact semantics (versions, tombstones, restore,
//! purge, conditional writes under one lock, search by scan, content-addressed dedup, `gc`,
//! `verify`), so it is what the conformance kit is checked against.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use stowage_core::{Metadata, Stowage};
//! let backend = stowage_providers::memory::MemoryBackend::new();
//! let store = Stowage::from_backend(std::sync::Arc::new(backend));
//! let tenant = store.namespace("acme").unwrap();
//! tenant.put("notes/a.txt", "hello", Metadata::new()).await.unwrap();
//! let (info, bytes) = tenant.get_bytes("notes/a.txt").await.unwrap();
//! assert_eq!((info.version, &bytes[..]), (1, &b"hello"[..]));
//! # });
//! ```

mod backend;

use std::sync::Arc;

use serde::Deserialize;
use stowage_core::{
    async_trait, parse_config, Capabilities, Result, StorageBackend, StorageProviderFactory,
};

pub use backend::MemoryBackend;

/// The provider's name in configs (`provider = "memory"`).
pub const NAME: &str = "memory";

/// The `memory` provider's config: it has no settings (`[storage.config]` must be empty).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {}

/// Makes [`MemoryBackend`]s; each `create` gives a new, empty store.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryFactory;

/// The `memory` provider's factory, as registered in the built-in registry.
pub fn factory() -> Arc<dyn StorageProviderFactory> {
    Arc::new(MemoryFactory)
}

stowage_core::inventory::submit! {
    stowage_core::BuiltinProvider { factory }
}

#[async_trait]
impl StorageProviderFactory for MemoryFactory {
    fn name(&self) -> &str {
        NAME
    }

    fn description(&self) -> &str {
        "in-memory reference provider, for tests and examples (not durable)"
    }

    fn config_schema(&self) -> serde_json::Value {
        serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "memory provider config",
            "description": "The memory provider has no settings; records live until the process ends.",
            "type": "object",
            "properties": {},
            "additionalProperties": false
        })
    }

    fn capabilities(&self) -> Capabilities {
        MemoryBackend::CAPABILITIES
    }

    fn validate(&self, config: &serde_json::Value) -> Result<()> {
        parse_config::<MemoryConfig>(NAME, config).map(|_| ())
    }

    async fn create(&self, config: serde_json::Value) -> Result<Arc<dyn StorageBackend>> {
        let MemoryConfig {} = parse_config(NAME, &config)?;
        Ok(Arc::new(MemoryBackend::new()))
    }
}
