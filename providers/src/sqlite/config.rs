//! [`SqliteConfig`]: the `[storage.config]` table of the `sqlite` provider.

use std::path::PathBuf;

use serde::Deserialize;
use stowage_core::{parse_config, Error, Result};

use super::PROVIDER;

/// Smallest accepted `chunk_size`: below this the per-row overhead dominates.
pub const MIN_CHUNK_SIZE: usize = 4 * 1024;
/// Largest accepted `chunk_size`: SQLite's default limit on one value is 1 GB; stay far below.
pub const MAX_CHUNK_SIZE: usize = 64 * 1024 * 1024;
/// Default `chunk_size`.
pub const DEFAULT_CHUNK_SIZE: usize = 256 * 1024;
/// Default `busy_timeout_ms`.
pub const DEFAULT_BUSY_TIMEOUT_MS: u64 = 5_000;
/// Default `max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 8;

/// Configuration of the `sqlite` provider.
///
/// ```
/// let cfg = stowage_providers::sqlite::SqliteConfig::from_json(&serde_json::json!({
///     "path": "stowage-data/stowage.db",
///     "chunk_size": 65536,
/// })).unwrap();
/// assert_eq!(cfg.chunk_size(), 65536);
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SqliteConfig {
    /// The database file; missing parent directories are created on first use.
    pub path: PathBuf,
    /// Most connections open at once: one for writing (writers take turns on it), the others
    /// for reading in parallel; at least one reads, so `1` opens two. Default 8.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// How long a writer waits for another process or connection holding the write lock before
    /// failing, in milliseconds. Default 5000.
    #[serde(default)]
    pub busy_timeout_ms: Option<u64>,
    /// Size in bytes of the pieces payloads are stored in (4 KiB to 64 MiB). Default 256 KiB.
    /// Changing it later is safe: every payload remembers the size it was written with.
    #[serde(default)]
    pub chunk_size: Option<usize>,
    /// Durability of a commit: `full` (default) survives power loss; `normal` may lose the last
    /// commits on power loss (never on a process crash) but writes faster.
    #[serde(default)]
    pub synchronous: Option<Synchronous>,
}

/// The `synchronous` setting.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Sync the write-ahead log on every commit.
    #[default]
    Full,
    /// Sync only at checkpoints.
    Normal,
}

impl SqliteConfig {
    /// A config for the file at `path`, every other field at its default.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteConfig {
            path: path.into(),
            max_connections: None,
            busy_timeout_ms: None,
            chunk_size: None,
            synchronous: None,
        }
    }

    /// Parses and validates the JSON form (no I/O).
    pub fn from_json(config: &serde_json::Value) -> Result<Self> {
        let cfg: SqliteConfig = parse_config(PROVIDER, config)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every field's value (no I/O).
    pub fn validate(&self) -> Result<()> {
        if self.path.as_os_str().is_empty() {
            return Err(Error::invalid_config(
                "storage.config.path",
                "is empty; give the database file, e.g. \"stowage-data/stowage.db\"",
            ));
        }
        if self.path.to_str() == Some(":memory:") {
            return Err(Error::invalid_config(
                "storage.config.path",
                "\":memory:\" is not supported (each connection would see its own database); use the `memory` provider",
            ));
        }
        if self.max_connections == Some(0) {
            return Err(Error::invalid_config(
                "storage.config.max_connections",
                "must be at least 1",
            ));
        }
        if let Some(size) = self.chunk_size {
            if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size) {
                return Err(Error::invalid_config(
                    "storage.config.chunk_size",
                    format!("{size} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE} bytes"),
                ));
            }
        }
        Ok(())
    }

    /// The chunk size in effect.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE)
    }

    /// The busy timeout in effect.
    pub fn busy_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.busy_timeout_ms.unwrap_or(DEFAULT_BUSY_TIMEOUT_MS))
    }

    /// The pool size in effect.
    pub fn max_connections(&self) -> u32 {
        self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS)
    }

    /// The JSON Schema of this config.
    pub fn json_schema() -> serde_json::Value {
        serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "sqlite provider config",
            "type": "object",
            "additionalProperties": false,
            "required": ["path"],
            "properties": {
                "path": {
                    "type": "string",
                    "minLength": 1,
                    "description": "The database file; missing parent directories are created on first use."
                },
                "max_connections": {
                    "type": "integer",
                    "minimum": 1,
                    "default": DEFAULT_MAX_CONNECTIONS,
                    "description": "Most connections open at once: one for writing, the others (at least one) for reading."
                },
                "busy_timeout_ms": {
                    "type": "integer",
                    "minimum": 0,
                    "default": DEFAULT_BUSY_TIMEOUT_MS,
                    "description": "How long a writer waits for the write lock, in milliseconds."
                },
                "chunk_size": {
                    "type": "integer",
                    "minimum": MIN_CHUNK_SIZE,
                    "maximum": MAX_CHUNK_SIZE,
                    "default": DEFAULT_CHUNK_SIZE,
                    "description": "Size in bytes of the pieces payloads are stored in."
                },
                "synchronous": {
                    "type": "string",
                    "enum": ["full", "normal"],
                    "default": "full",
                    "description": "full: a commit survives power loss; normal: faster, may lose the last commits on power loss."
                }
            }
        })
    }
}
