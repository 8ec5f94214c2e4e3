//! [`FsConfig`]: the `[storage.config]` of the `fs` provider.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use stowage_core::{parse_config, Error, Result};

use super::PROVIDER;

/// Configuration of the `fs` provider.
///
/// ```toml
/// [storage]
/// provider = "fs"
/// [storage.config]
/// root = "stowage-data/fs"   # created if missing
/// fsync = "always"            # or "never"
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The store's directory; created (with parents) if missing.
    pub root: PathBuf,
    /// When writes are forced to stable storage.
    #[serde(default)]
    pub fsync: FsyncMode,
}

/// Whether a write is on stable storage before it is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// Every acknowledged write survives a power cut: payload file, its directory entry and the
    /// index log record are fsynced before `put` returns (concurrent writers share one log
    /// fsync). The default.
    #[default]
    Always,
    /// No fsync at all: several times faster for small writes and still safe against a crashed
    /// *process* (the page cache survives it, and every file appears whole or not at all), but
    /// a power cut or kernel crash may lose the last seconds of acknowledged writes. For caches
    /// and scratch data.
    Never,
}

impl FsConfig {
    /// Parses and checks a JSON config; every error names the field.
    pub fn from_json(config: &serde_json::Value) -> Result<Self> {
        let cfg: FsConfig = parse_config(PROVIDER, config)?;
        if cfg.root.as_os_str().is_empty() {
            return Err(Error::invalid_config(
                "storage.config.root",
                "is empty; give the directory the fs provider should keep its data in",
            ));
        }
        Ok(cfg)
    }

    /// The JSON Schema of this config.
    pub fn schema() -> serde_json::Value {
        serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "fs provider config",
            "type": "object",
            "additionalProperties": false,
            "required": ["root"],
            "properties": {
                "root": {
                    "type": "string",
                    "description": "Directory of the store; created if missing."
                },
                "fsync": {
                    "type": "string",
                    "enum": ["always", "never"],
                    "default": "always",
                    "description": "`always`: acknowledged writes survive a power cut. `never`: faster, survives process crashes only."
                }
            }
        })
    }

    /// Whether writes are fsynced.
    pub fn fsync(&self) -> bool {
        self.fsync == FsyncMode::Always
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_errors_name_the_field() {
        let cfg = FsConfig::from_json(&json!({"root": "x"})).unwrap();
        assert_eq!(cfg.fsync, FsyncMode::Always);
        let cfg = FsConfig::from_json(&json!({"root": "x", "fsync": "never"})).unwrap();
        assert!(!cfg.fsync());
        let err = FsConfig::from_json(&json!({"root": "x", "fsync": "sometimes"})).unwrap_err();
        assert!(err.to_string().contains("fsync"), "{err}");
        let err = FsConfig::from_json(&json!({"rot": "x"})).unwrap_err();
        assert!(err.to_string().contains("rot"), "{err}");
        let err = FsConfig::from_json(&json!({"root": ""})).unwrap_err();
        assert!(err.to_string().contains("root"), "{err}");
    }
}
