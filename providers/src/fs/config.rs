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
/// inline_max = 16384          # payloads up to this many bytes live in the index log; 0 = never
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The store's directory; created (with parents) if missing.
    pub root: PathBuf,
    /// When writes are forced to stable storage.
    #[serde(default)]
    pub fsync: FsyncMode,
    /// Payloads of at most this many bytes are kept inside the index log instead of a file of
    /// their own, so a small durable put costs one `fsync` instead of three. `0` keeps every
    /// payload in a file; at most [`MAX_INLINE`].
    #[serde(default = "default_inline_max")]
    pub inline_max: u64,
}

/// The default of [`FsConfig::inline_max`]: 16 KiB.
pub const DEFAULT_INLINE_MAX: u64 = 16 * 1024;

/// The largest accepted [`FsConfig::inline_max`]: 1 MiB (the index log is replayed at open, and
/// payloads larger than this gain nothing from skipping their own file).
pub const MAX_INLINE: u64 = 1 << 20;

fn default_inline_max() -> u64 {
    DEFAULT_INLINE_MAX
}

/// Whether a write is on stable storage before it is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// Every acknowledged write survives a power cut: the index log record (with a small
    /// payload kept inline) is fsynced before `put` returns, and a larger payload's file and its
    /// directory entry before that (concurrent writers share one log fsync). The default.
    #[default]
    Always,
    /// No fsync at all: several times faster for small writes and still safe against a crashed
    /// *process* (the page cache survives it, and every file appears whole or not at all), but
    /// a power cut or kernel crash may lose the last seconds of acknowledged writes. For caches
    /// and scratch data.
    Never,
}

/// `"always"` or `"never"`; a boolean (what the other providers' `fsync` takes) is refused
/// with the two words to write instead.
impl<'de> Deserialize<'de> for FsyncMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Words;
        impl serde::de::Visitor<'_> for Words {
            type Value = FsyncMode;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"always\" or \"never\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<FsyncMode, E> {
                match v {
                    "always" => Ok(FsyncMode::Always),
                    "never" => Ok(FsyncMode::Never),
                    other => Err(E::custom(format!(
                        "is {other:?}; write \"always\" or \"never\""
                    ))),
                }
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> std::result::Result<FsyncMode, E> {
                let word = if v { "always" } else { "never" };
                Err(E::custom(format!(
                    "is the boolean {v}; the fs provider takes a word: write fsync = \"{word}\""
                )))
            }
        }
        d.deserialize_any(Words)
    }
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
        if cfg.inline_max > MAX_INLINE {
            return Err(Error::invalid_config(
                "storage.config.inline_max",
                format!(
                    "is {} bytes, over the 1 MiB ({MAX_INLINE} bytes) limit; payloads that large are better kept in files: use at most {MAX_INLINE}, or 0 to keep every payload in a file",
                    cfg.inline_max
                ),
            ));
        }
        Ok(cfg)
    }

    /// A config for `root` with every other setting at its default.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FsConfig {
            root: root.into(),
            fsync: FsyncMode::default(),
            inline_max: DEFAULT_INLINE_MAX,
        }
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
                },
                "inline_max": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": MAX_INLINE,
                    "default": DEFAULT_INLINE_MAX,
                    "description": "Payloads of at most this many bytes are stored inside the index log (one fsync per durable put instead of three); 0 = every payload in a file of its own."
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
        assert!(err.to_string().contains("\"always\" or \"never\""), "{err}");
        let err = FsConfig::from_json(&json!({"root": "x", "fsync": true})).unwrap_err();
        assert!(
            err.to_string().contains("fsync") && err.to_string().contains("fsync = \"always\""),
            "{err}"
        );
        let err = FsConfig::from_json(&json!({"root": "x", "fsync": 1})).unwrap_err();
        assert!(err.to_string().contains("\"always\" or \"never\""), "{err}");
        let err = FsConfig::from_json(&json!({"rot": "x"})).unwrap_err();
        assert!(err.to_string().contains("rot"), "{err}");
        let err = FsConfig::from_json(&json!({"root": ""})).unwrap_err();
        assert!(err.to_string().contains("root"), "{err}");
        assert_eq!(cfg.inline_max, DEFAULT_INLINE_MAX);
        let cfg = FsConfig::from_json(&json!({"root": "x", "inline_max": 0})).unwrap();
        assert_eq!(cfg.inline_max, 0);
        let cfg = FsConfig::from_json(&json!({"root": "x", "inline_max": MAX_INLINE})).unwrap();
        assert_eq!(cfg.inline_max, MAX_INLINE);
        let err =
            FsConfig::from_json(&json!({"root": "x", "inline_max": MAX_INLINE + 1})).unwrap_err();
        assert!(
            err.to_string().contains("storage.config.inline_max")
                && err.to_string().contains("1 MiB"),
            "{err}"
        );
        let err = FsConfig::from_json(&json!({"root": "x", "inline_max": -1})).unwrap_err();
        assert!(err.to_string().contains("inline_max"), "{err}");
        assert_eq!(
            FsConfig::new("x"),
            FsConfig::from_json(&json!({"root": "x"})).unwrap()
        );
    }
}
