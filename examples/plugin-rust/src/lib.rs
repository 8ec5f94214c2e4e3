//! `kv`: a versioned, content-addressed key-value provider on [redb], shipped as a drop-in
//! stowage plugin (`libstowage_plugin_kv.so`).
//!
//! A redb file is open in one place at a time: a second store on the same file (another
//! process, or another backend in this one) waits for it, up to `lock_timeout_ms`, so
//! processes that share a file take turns, one open at a time. It is an example, not a server.
//!
//! Plugin authors write exactly what a built-in provider writes, a [`StorageProviderFactory`]
//! and a [`StorageBackend`], and end the crate with one line:
//! `stowage_core::export_plugin!(KvFactory);`. No `extern "C"`, no `unsafe`.
//!
//! ```toml
//! [storage]
//! provider = "kv"
//! [storage.config]
//! path = "data/kv.redb"
//! [plugins]
//! paths = ["plugins/libstowage_plugin_kv.so"]
//! ```

mod backend;

use std::sync::Arc;

use serde::Deserialize;
use stowage_core::{
    async_trait, parse_config, Capabilities, Result, StorageBackend, StorageProviderFactory,
};

pub use backend::KvBackend;

/// The provider name configs select.
pub const PROVIDER: &str = "kv";

/// `[storage.config]` of the `kv` provider.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvConfig {
    /// The redb database file; created (with its folder) when absent.
    pub path: std::path::PathBuf,
    /// Whether each commit waits for fsync (default). `false` is for benchmarks and scratch
    /// stores: the last commits may be lost if the machine crashes.
    #[serde(default = "sync_default")]
    pub sync: bool,
    /// How long opening waits for the file while another store has it open (redb allows one at
    /// a time), in milliseconds, before failing with `Locked`. Default 5000; 0 fails at once.
    #[serde(default = "lock_timeout_ms_default")]
    pub lock_timeout_ms: u64,
}

fn sync_default() -> bool {
    true
}

fn lock_timeout_ms_default() -> u64 {
    5_000
}

/// Makes [`KvBackend`]s.
#[derive(Debug, Default, Clone, Copy)]
pub struct KvFactory;

#[async_trait]
impl StorageProviderFactory for KvFactory {
    fn name(&self) -> &str {
        PROVIDER
    }

    fn description(&self) -> &str {
        "versioned key-value store in one redb file (example plugin)"
    }

    fn config_schema(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "object",
            "properties": {
                "path": { "type": "string", "description": "the redb database file" },
                "sync": { "type": "boolean", "default": true, "description": "fsync every commit" },
                "lock_timeout_ms": { "type": "integer", "minimum": 0, "default": 5000,
                                     "description": "how long opening waits while another store has the file open (one at a time)" }
            },
            "required": ["path"],
            "additionalProperties": false
        })
    }

    fn capabilities(&self) -> Capabilities {
        backend::CAPABILITIES
    }

    fn validate(&self, config: &serde_json::Value) -> Result<()> {
        let cfg: KvConfig = parse_config(PROVIDER, config)?;
        if cfg.path.as_os_str().is_empty() {
            return Err(stowage_core::Error::invalid_config(
                "storage.config.path",
                "must not be empty",
            ));
        }
        Ok(())
    }

    async fn create(&self, config: serde_json::Value) -> Result<Arc<dyn StorageBackend>> {
        let cfg: KvConfig = parse_config(PROVIDER, &config)?;
        let lock_timeout = std::time::Duration::from_millis(cfg.lock_timeout_ms);
        Ok(Arc::new(
            KvBackend::open(cfg.path, cfg.sync, lock_timeout).await?,
        ))
    }
}

stowage_core::export_plugin!(KvFactory);
