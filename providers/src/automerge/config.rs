//! The `automerge` provider's configuration.

use std::path::PathBuf;

use automerge::ActorId;
use serde::Deserialize;
use stowage_core::{Error, Result};

/// Configuration of an `automerge` store (`[storage.config]`).
///
/// ```toml
/// [storage]
/// provider = "automerge"
/// [storage.config]
/// root = "stowage-data/automerge"
/// actor = "8f1e5c0a9b7d4e2f8a6c3b1d0e9f7a5c"   # optional
/// blob_min_bytes = 1048576                      # optional
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutomergeConfig {
    /// Directory holding one folder per document (created when missing).
    pub root: PathBuf,
    /// Actor id of this replica's changes, as hex (1–32 bytes). Absent: a random actor per
    /// backend instance. Two replicas that edit apart must never share an actor id.
    #[serde(default)]
    pub actor: Option<String>,
    /// fsync every change file, snapshot and directory before a write returns (default true).
    /// `false` keeps writes atomic against a process crash but may lose the newest changes on
    /// a power cut.
    #[serde(default = "default_fsync")]
    pub fsync: bool,
    /// Incremental change files of one document are compacted into a snapshot once their
    /// total size exceeds both the snapshot's size and this many bytes (default 4096).
    #[serde(default = "default_compact_min_bytes")]
    pub compact_min_bytes: u64,
    /// A byte payload (one not reconciled as JSON) of at least this many bytes is streamed to
    /// a content-addressed file under `<root>/blobs/` and the document holds only a reference
    /// to it; smaller ones live in the document. Default 1 MiB, at most
    /// [`MAX_BLOB_MIN_BYTES`]; `0` puts every byte payload in a file.
    #[serde(default = "default_blob_min_bytes")]
    pub blob_min_bytes: u64,
}

/// The largest `blob_min_bytes` accepted (16 MiB): payloads below the threshold are held whole
/// in memory, in the document and in every snapshot of it.
pub const MAX_BLOB_MIN_BYTES: u64 = 16 << 20;

fn default_fsync() -> bool {
    true
}

fn default_compact_min_bytes() -> u64 {
    4096
}

fn default_blob_min_bytes() -> u64 {
    1 << 20
}

impl AutomergeConfig {
    /// A configuration with defaults for everything but `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        AutomergeConfig {
            root: root.into(),
            actor: None,
            fsync: default_fsync(),
            compact_min_bytes: default_compact_min_bytes(),
            blob_min_bytes: default_blob_min_bytes(),
        }
    }

    /// Parses and checks a JSON config without I/O; errors name the field.
    pub fn from_json(config: &serde_json::Value) -> Result<Self> {
        let parsed: AutomergeConfig = stowage_core::parse_config(super::PROVIDER, config)?;
        if parsed.root.as_os_str().is_empty() {
            return Err(Error::invalid_config(
                "storage.config.root",
                "must name a directory (e.g. \"stowage-data/automerge\")",
            ));
        }
        parsed.actor_id()?;
        if parsed.blob_min_bytes > MAX_BLOB_MIN_BYTES {
            return Err(Error::invalid_config(
                "storage.config.blob_min_bytes",
                format!(
                    "is {} bytes, above the limit of {MAX_BLOB_MIN_BYTES} (16 MiB): byte payloads below it are held whole in memory; give at most {MAX_BLOB_MIN_BYTES}, or 0 to put every byte payload in a file",
                    parsed.blob_min_bytes
                ),
            ));
        }
        Ok(parsed)
    }

    /// The configured actor id, or a fresh random one.
    pub fn actor_id(&self) -> Result<ActorId> {
        match &self.actor {
            None => Ok(ActorId::random()),
            Some(hex_actor) => {
                let bytes = hex::decode(hex_actor).map_err(|e| {
                    Error::invalid_config(
                        "storage.config.actor",
                        format!("{hex_actor:?} is not hex ({e}); give 2–64 hex digits or leave it out for a random actor"),
                    )
                })?;
                if bytes.is_empty() || bytes.len() > 32 {
                    return Err(Error::invalid_config(
                        "storage.config.actor",
                        format!(
                            "must be 1–32 bytes (2–64 hex digits), got {} bytes",
                            bytes.len()
                        ),
                    ));
                }
                Ok(ActorId::from(bytes))
            }
        }
    }

    /// The JSON Schema of this configuration.
    pub fn schema() -> serde_json::Value {
        serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "automerge provider config",
            "type": "object",
            "additionalProperties": false,
            "required": ["root"],
            "properties": {
                "root": {"type": "string", "description": "Directory holding one folder per document."},
                "actor": {"type": "string", "pattern": "^([0-9a-fA-F]{2}){1,32}$",
                          "description": "Hex actor id of this replica; random per backend when absent."},
                "fsync": {"type": "boolean", "default": true,
                          "description": "fsync change files, snapshots and directories before a write returns."},
                "compact_min_bytes": {"type": "integer", "minimum": 0, "default": 4096,
                          "description": "Compact incremental files into a snapshot once they exceed the snapshot and this size."},
                "blob_min_bytes": {"type": "integer", "minimum": 0, "maximum": MAX_BLOB_MIN_BYTES, "default": 1048576,
                          "description": "Byte (non-JSON) payloads of at least this size are streamed to content-addressed files under blobs/; 0 = all of them."}
            }
        })
    }
}
