//! # stowage-core
//!
//! The core of stowage, a framework for pluggable record storage: the data model ([`Key`],
//! [`Namespace`], [`Metadata`], [`RecordInfo`], [`Body`]), the [`StorageBackend`] trait every
//! provider implements, the [`StorageProviderFactory`] that makes backends from config, the
//! [`Registry`] of factories, the TOML [`StowageConfig`], and the [`Stowage`] builder and
//! namespace-scoped handles applications use. This crate names no concrete provider.
//!
//! ```
//! # async fn demo() -> stowage_core::Result<()> {
//! use stowage_core::{Metadata, Stowage};
//! // Built-in providers come from `stowage-providers` (here, the in-memory one).
//! let store = Stowage::builder()
//!     .with_storage("memory", serde_json::json!({}))
//!     .build()
//!     .await?;
//! let tenant = store.namespace("acme")?;
//! let info = tenant.put("notes/hello.txt", "hi", Metadata::new()).await?;
//! assert_eq!(info.version, 1);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod backend;
mod blocking;
mod body;
mod config;
pub mod copy;
mod error;
pub mod exact_json;
mod factory;
mod hash;
mod key;
mod metrics;
mod model;
pub mod plugin;
mod query;
mod registry;
mod stowage;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use backend::StorageBackend;
pub use blocking::{run_blocking, run_on_pool};
pub use body::{Body, CHUNK_SIZE, WRITE_HOLDBACK};
pub use config::{PluginsConfig, StorageConfig, StowageConfig};
pub use error::{BoxError, Error, ErrorKind, Result};
pub use factory::{parse_config, ProviderOrigin, StorageProviderFactory};
pub use hash::{ContentHash, ContentHasher};
pub use key::{Key, Namespace, MAX_KEY_LEN};
pub use metrics::{Metrics, OperationStats, PayloadBytes};
pub use model::{
    is_json_content_type, ByteRange, Capabilities, Conflict, DeleteOptions, GcReport, GetOptions,
    ListOptions, Metadata, NoProgress, Page, Progress, PutMode, RecordInfo, Timestamp,
    VerifyProblem, VerifyReport, Version,
};
pub use plugin::{load_plugins, PluginDescription, PluginLibrary};
pub use query::{compare_json, AttrFilter, CursorPos, Order, Query, TimeRange};
pub use registry::{BuiltinProvider, Registry};
pub use stowage::{NamespaceHandle, Stowage, StowageBuilder};

/// Re-exported so provider crates use the same `inventory` and `async_trait` as the core.
pub use async_trait::async_trait;
pub use inventory;
