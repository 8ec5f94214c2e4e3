//! The `fs` provider: a store in one directory, built as a small storage engine.
//!
//! - Small payloads (at most `inline_max` bytes, 16 KiB by default) are kept inside the index
//!   log, right after the record of the version that first stores them: a small durable put is
//!   one append and one `fdatasync`. Reads are one positioned read of the log, checked against
//!   the payload's blake3 hash.
//! - Larger payloads are content-addressed files under `blobs/ab/cdef…`, written to a temporary
//!   file while hashed, fsynced, linked to their hash name and the directory fsynced; streamed
//!   both ways, range reads seek.
//! - Either way a payload is stored once per hash (dedup). A put of a stored hash checks the
//!   stored copy (inline bytes compared, an in-memory payload's file compared, a streamed one's
//!   file replaced by the copy just written), so putting the original bytes again repairs a
//!   payload damaged on disk.
//! - Metadata lives in `index.log`, an append-only log of checksummed records, replayed into an
//!   in-memory index on open, so `list`, `search`, `head` and `versions` never read payloads.
//!   A torn tail is cut off; a corrupt record is saved aside and stepped over, so the records
//!   after it are kept (the log is then rewritten without it); both are reported.
//!   The log is compacted when purged garbage outweighs live records.
//! - Several processes can use one root: an exclusive lock file serialises write transactions
//!   and every operation first reads what other processes committed.
//! - Concurrent writers share one log fsync (group commit).
//!
//! The on-disk format is described in `docs/formats.md` (section `fs`).
//!
//! ```toml
//! [storage]
//! provider = "fs"
//! [storage.config]
//! root = "stowage-data/fs"
//! fsync = "always"   # default; "never" trades power-cut durability for speed
//! inline_max = 16384 # default; payloads up to this size live in the index log, 0 = never
//! ```

mod backend;
mod blob_store;
mod config;
mod index;
mod index_log;
mod lock;

use std::sync::Arc;

use async_trait::async_trait;
use stowage_core::{BuiltinProvider, Capabilities, Result, StorageBackend, StorageProviderFactory};

pub use backend::{CompactReport, FsBackend};
pub use config::{FsConfig, FsyncMode, DEFAULT_INLINE_MAX, MAX_INLINE};

/// The provider name (`provider = "fs"`).
pub const PROVIDER: &str = "fs";

/// Makes [`FsBackend`]s from config.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsFactory;

/// The factory of the `fs` provider.
pub fn factory() -> Arc<dyn StorageProviderFactory> {
    Arc::new(FsFactory)
}

inventory::submit! {
    BuiltinProvider { factory }
}

fn capabilities() -> Capabilities {
    Capabilities {
        versions: true,
        delete: true,
        restore: true,
        purge: true,
        search: true,
        search_is_scan: false,
        range_reads: true,
        create_only: true,
        if_version: true,
        merge: false,
        dedup: true,
        gc: true,
        verify: true,
        list_namespaces: true,
        sync: false,
        durable: true,
    }
}

#[async_trait]
impl StorageProviderFactory for FsFactory {
    fn name(&self) -> &str {
        PROVIDER
    }

    fn description(&self) -> &str {
        "a directory: a crash-safe, checksummed index log holding small payloads, content-addressed files for large ones"
    }

    fn config_schema(&self) -> serde_json::Value {
        FsConfig::schema()
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    fn validate(&self, config: &serde_json::Value) -> Result<()> {
        FsConfig::from_json(config).map(|_| ())
    }

    async fn create(&self, config: serde_json::Value) -> Result<Arc<dyn StorageBackend>> {
        Ok(Arc::new(FsBackend::new(FsConfig::from_json(&config)?)))
    }
}
