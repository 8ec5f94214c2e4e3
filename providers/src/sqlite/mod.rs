//! The `sqlite` provider: every record in one SQLite file, through sqlx. The embedded default.
//!
//! - WAL mode, foreign keys on, a busy timeout; writers of one process take turns on one write
//!   connection, writers of several processes on SQLite's file lock; reads use a pool.
//! - The schema is versioned (`PRAGMA user_version`, [`schema::MIGRATIONS`]) and migrated in one
//!   transaction on first use; a file that is not a stowage database is refused, never changed.
//! - Payloads are content-addressed (blake3) and stored once per store in chunks of
//!   `chunk_size` bytes: puts stream chunk by chunk while hashing, gets stream chunk by chunk
//!   and read only the chunks a byte range covers. A payload of one chunk sits in its blob row.
//!   A put of a stored hash checks the stored row in the statements it runs anyway and writes
//!   the payload again if the row was damaged (see `docs/formats.md`, **Repair by re-put**).
//! - A larger payload is staged one chunk per short transaction and claimed by the put's final
//!   transaction, so a slow producer keeps no other writer, in this process or another, waiting;
//!   `gc` removes staging left by a process killed mid-stream once it is an hour old.
//! - Opening a file already at this schema version only reads, so a store opens while another
//!   process holds a long write.
//! - Every version is a row of `versions`; the `latest` table, with `tags` and `attrs`, is kept
//!   by a trigger and indexed, so `list` and `search` are SQL, not scans.
//! - A put of a payload that fits one chunk is one round trip to SQLite; small puts that wait
//!   for the write lock at the same moment share one transaction and one round trip (group
//!   commit).
//!
//! ```toml
//! [storage]
//! provider = "sqlite"
//! [storage.config]
//! path = "stowage-data/stowage.db"
//! ```
//!
//! The file format is described in `docs/formats.md`.

use std::sync::Arc;

use stowage_core::{async_trait, Capabilities, Result, StorageBackend, StorageProviderFactory};

mod backend;
mod blobs;
mod commit;
mod config;
mod error;
mod records;
pub mod schema;
mod search;
mod writer;

pub use backend::SqliteBackend;
pub use config::{SqliteConfig, Synchronous, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};

/// The provider name.
pub const PROVIDER: &str = "sqlite";

/// What every `sqlite` backend supports.
pub fn capabilities() -> Capabilities {
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

/// The factory of the `sqlite` provider.
#[derive(Debug, Default, Clone, Copy)]
pub struct SqliteFactory;

#[async_trait]
impl StorageProviderFactory for SqliteFactory {
    fn name(&self) -> &str {
        PROVIDER
    }

    fn description(&self) -> &str {
        "a SQLite database file (WAL, chunked content-addressed payloads, indexed search); the embedded default"
    }

    fn config_schema(&self) -> serde_json::Value {
        SqliteConfig::json_schema()
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    fn validate(&self, config: &serde_json::Value) -> Result<()> {
        SqliteConfig::from_json(config).map(|_| ())
    }

    async fn create(&self, config: serde_json::Value) -> Result<Arc<dyn StorageBackend>> {
        let config = SqliteConfig::from_json(&config)?;
        Ok(Arc::new(SqliteBackend::new(config)))
    }
}

/// The factory, for registries and tests.
pub fn factory() -> Arc<dyn StorageProviderFactory> {
    Arc::new(SqliteFactory)
}

stowage_core::inventory::submit! {
    stowage_core::BuiltinProvider { factory }
}
