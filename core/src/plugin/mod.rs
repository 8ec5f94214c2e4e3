//! Drop-in provider plugins over the C ABI of `stowage-plugin-abi`.
//!
//! - Host side ([`PluginLibrary`]): loads a shared library, checks its descriptor (entry
//!   symbol, ABI major and minor, struct sizes, target) and registers one factory per provider
//!   it offers. Plugin calls run on tokio's blocking threads, never on async workers.
//! - Guest side ([`crate::export_plugin!`]): turns any [`crate::StorageProviderFactory`] into a
//!   plugin, catching panics at every entry point and running the async trait methods on a
//!   runtime the plugin owns.
//!
//! Everything that crosses the boundary is C: function pointers, opaque handles, borrowed
//! bytes, owned buffers with their own `free`, and JSON for structured values (the shapes are
//! the serde forms below; `docs/plugins.md` lists them for C authors) — except on the hot path
//! of ABI 1.1's `get_first`, whose options and record info are `#[repr(C)]` structs, so a
//! small get crosses in one call without JSON.
//!
//! Libraries are never unloaded: a Rust plugin's runtime threads and thread-locals would run
//! code from an unmapped image. Every proxy still holds an `Arc<PluginLibrary>`, so the
//! descriptor it points into is provably alive while it is used.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use stowage_plugin_abi::{flags, status, StowageGetOptions, StowageRecordInfo};

use crate::config::PluginsConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::hash::ContentHash;
use crate::key::{Key, Namespace};
use crate::model::{
    ByteRange, Conflict, GetOptions, Metadata, PutMode, RecordInfo, Timestamp, Version,
};
use crate::registry::Registry;

#[doc(hidden)]
pub mod guest;
mod host;

pub use host::{PluginDescription, PluginLibrary, PluginProviderInfo};
pub use stowage_plugin_abi as abi;

/// Loads every plugin named by a `[plugins]` section into `registry`: the files of `paths`,
/// then the shared libraries (`.so`, `.dylib`, `.dll`) of each of `dirs` in name order (a
/// library's name there that holds no file, such as a link to nothing, is refused, not
/// skipped; folders are skipped). A file named twice is loaded once. Returns the libraries
/// loaded.
///
/// ```
/// use stowage_core::{plugin::load_plugins, PluginsConfig, Registry};
/// let loaded = load_plugins(&Registry::new(), &PluginsConfig::default()).unwrap();
/// assert!(loaded.is_empty());
/// ```
pub fn load_plugins(
    registry: &Registry,
    config: &PluginsConfig,
) -> Result<Vec<Arc<PluginLibrary>>> {
    let mut files: Vec<PathBuf> = config.paths.clone();
    for dir in &config.dirs {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            Error::io(
                format!(
                    "reading plugin folder {} (from [plugins] dirs)",
                    dir.display()
                ),
                e,
            )
        })?;
        let mut found = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|e| Error::io(format!("reading plugin folder {}", dir.display()), e))?
                .path();
            // A library's name that holds no file (a link to nothing, a pipe) is loaded, and so
            // refused by name: skipping it would hide a plugin the operator meant to deploy.
            if is_shared_library_name(&path) && !path.is_dir() {
                found.push(path);
            }
        }
        found.sort();
        files.extend(found);
    }
    let mut seen = HashSet::new();
    let mut loaded = Vec::new();
    for file in files {
        let canonical = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
        if !seen.insert(canonical) {
            continue;
        }
        let library = PluginLibrary::load(&file)?;
        library.register(registry)?;
        loaded.push(library);
    }
    Ok(loaded)
}

/// Whether a file name has this platform's (or any common) shared-library extension.
fn is_shared_library_name(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("so" | "dylib" | "dll")
    )
}

/// `put` options on the wire.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct WirePut {
    pub mode: PutMode,
    pub size_hint: Option<u64>,
}

/// `get` options on the wire.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct WireGet {
    pub version: Option<Version>,
    pub range: Option<ByteRange>,
}

/// `get` options in the binary form of `get_first` (ABI 1.1).
pub(crate) fn get_options_to_wire(options: &GetOptions) -> StowageGetOptions {
    let mut wire = StowageGetOptions {
        struct_size: std::mem::size_of::<StowageGetOptions>() as u32,
        ..StowageGetOptions::default()
    };
    if let Some(v) = options.version {
        wire.flags |= flags::GET_VERSION;
        wire.version = v;
    }
    if let Some(range) = options.range {
        wire.flags |= flags::GET_RANGE;
        wire.range_start = range.start;
        if let Some(end) = range.end {
            wire.flags |= flags::GET_RANGE_END;
            wire.range_end = end;
        }
    }
    wire
}

/// Reads binary `get` options, refusing a struct too small for its fields or unknown flags.
pub(crate) fn get_options_from_wire(wire: &StowageGetOptions) -> Result<GetOptions> {
    let size = std::mem::size_of::<StowageGetOptions>();
    if (wire.struct_size as usize) < size {
        return Err(Error::invalid_input(format!(
            "get options struct_size is {} bytes, ABI 1.1 needs {size}",
            wire.struct_size
        )));
    }
    let known = flags::GET_VERSION | flags::GET_RANGE | flags::GET_RANGE_END;
    if wire.flags & !known != 0 {
        return Err(Error::invalid_input(format!(
            "get options carry unknown flags {:#x}; the host is newer than this plugin's ABI",
            wire.flags & !known
        )));
    }
    let set = |bit: u32| wire.flags & bit != 0;
    Ok(GetOptions {
        version: set(flags::GET_VERSION).then_some(wire.version),
        range: set(flags::GET_RANGE).then_some(ByteRange {
            start: wire.range_start,
            end: set(flags::GET_RANGE_END).then_some(wire.range_end),
        }),
    })
}

/// The RecordInfo fields [`StowageRecordInfo`] carries as JSON (`rest_json`), as read.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct WireRest {
    pub metadata: Metadata,
    pub conflicts: Vec<Conflict>,
}

/// [`WireRest`] as written, borrowing the record's fields.
#[derive(Serialize)]
struct WireRestRef<'a> {
    metadata: &'a Metadata,
    #[serde(skip_serializing_if = "<[Conflict]>::is_empty")]
    conflicts: &'a [Conflict],
}

/// `info` in binary, with its `rest_json` (empty when metadata and conflicts are empty, so a
/// plain record crosses without JSON) handed over by `owned`.
pub(crate) fn info_to_wire(
    info: &RecordInfo,
    owned: impl FnOnce(Vec<u8>) -> stowage_plugin_abi::StowageOwned,
) -> StowageRecordInfo {
    let rest = if info.metadata.is_empty() && info.conflicts.is_empty() {
        Vec::new()
    } else {
        serde_json::to_vec(&WireRestRef {
            metadata: &info.metadata,
            conflicts: &info.conflicts,
        })
        .expect("metadata always serialises")
    };
    StowageRecordInfo {
        struct_size: std::mem::size_of::<StowageRecordInfo>() as u32,
        flags: if info.deleted_at.is_some() {
            flags::INFO_DELETED
        } else {
            0
        },
        version: info.version,
        size: info.size,
        created_at: info.created_at.as_micros(),
        updated_at: info.updated_at.as_micros(),
        deleted_at: info.deleted_at.map_or(0, |t| t.as_micros()),
        hash: *info.hash.as_bytes(),
        rest_json: owned(rest),
    }
}

/// Rebuilds the RecordInfo of `ns`/`key` from the binary form and its `rest_json`.
pub(crate) fn info_from_wire(
    ns: Namespace,
    key: Key,
    fixed: &StowageRecordInfo,
    rest: &[u8],
) -> std::result::Result<RecordInfo, String> {
    if fixed.flags & !flags::INFO_DELETED != 0 {
        return Err(format!("unknown record flags {:#x}", fixed.flags));
    }
    let rest: WireRest = if rest.is_empty() {
        WireRest::default()
    } else {
        serde_json::from_slice(rest).map_err(|e| format!("malformed rest_json: {e}"))?
    };
    Ok(RecordInfo {
        namespace: ns,
        key,
        version: fixed.version,
        hash: ContentHash::from_bytes(fixed.hash),
        size: fixed.size,
        created_at: Timestamp::from_micros(fixed.created_at),
        updated_at: Timestamp::from_micros(fixed.updated_at),
        deleted_at: (fixed.flags & flags::INFO_DELETED != 0)
            .then(|| Timestamp::from_micros(fixed.deleted_at)),
        metadata: rest.metadata,
        conflicts: rest.conflicts,
    })
}

/// How many payload bytes a get of `info` with `options` yields, when the range is valid.
pub(crate) fn expected_len(info: &RecordInfo, options: &GetOptions) -> Option<u64> {
    match options.range {
        None => Some(info.size),
        Some(range) => range.resolve(info.size).ok().map(|(_, len)| len),
    }
}

/// `head` and `restore` options on the wire.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct WireVersion {
    pub version: Option<Version>,
}

/// `delete` options on the wire.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct WireDelete {
    pub if_version: Option<Version>,
}

/// `list` options on the wire.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct WireList {
    pub prefix: Option<String>,
    pub start_after: Option<String>,
    pub limit: Option<usize>,
    pub include_deleted: bool,
    pub cursor: Option<String>,
}

/// A `list`/`search` page on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WirePage {
    pub items: Vec<RecordInfo>,
    #[serde(default)]
    pub next: Option<String>,
}

/// The result of `purge` on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WirePurged {
    pub removed: u64,
}

/// The status code of an error kind.
pub(crate) fn code_of(kind: ErrorKind) -> u32 {
    match kind {
        ErrorKind::InvalidKey => status::INVALID_KEY,
        ErrorKind::InvalidNamespace => status::INVALID_NAMESPACE,
        ErrorKind::InvalidInput => status::INVALID_INPUT,
        ErrorKind::NotFound => status::NOT_FOUND,
        ErrorKind::Conflict => status::CONFLICT,
        ErrorKind::InvalidConfig => status::INVALID_CONFIG,
        ErrorKind::Unsupported => status::UNSUPPORTED,
        ErrorKind::ProviderExists => status::PROVIDER_EXISTS,
        ErrorKind::UnknownProvider => status::UNKNOWN_PROVIDER,
        ErrorKind::Corrupt => status::CORRUPT,
        ErrorKind::Locked => status::LOCKED,
        ErrorKind::Io => status::IO,
        ErrorKind::Backend => status::BACKEND,
        ErrorKind::Plugin => status::PLUGIN,
        ErrorKind::Panicked => status::PANICKED,
    }
}

/// An error as a status code and a JSON message holding its fields (plus `error`, the whole
/// sentence), so the host rebuilds the same variant.
pub(crate) fn encode_error(error: &Error) -> (u32, String) {
    let fields = match error {
        Error::InvalidKey { key, reason } => json!({ "key": key, "reason": reason }),
        Error::InvalidNamespace { namespace, reason } => {
            json!({ "namespace": namespace, "reason": reason })
        }
        Error::InvalidInput { message } => json!({ "message": message }),
        Error::NotFound {
            namespace,
            key,
            version,
        } => {
            json!({ "namespace": namespace, "key": key, "version": version })
        }
        Error::Conflict {
            namespace,
            key,
            expected,
            current,
        } => {
            json!({ "namespace": namespace, "key": key, "expected": expected, "current": current })
        }
        Error::InvalidConfig {
            source_name,
            field,
            message,
        } => {
            json!({ "source_name": source_name, "field": field, "message": message })
        }
        Error::Unsupported {
            operation,
            provider,
        } => {
            json!({ "operation": operation, "provider": provider })
        }
        Error::ProviderExists { name, origin } => json!({ "name": name, "origin": origin }),
        Error::UnknownProvider { name, known } => json!({ "name": name, "known": known }),
        Error::Corrupt { provider, message } => json!({ "provider": provider, "message": message }),
        Error::Locked { path, message } => json!({ "path": path, "message": message }),
        Error::Io { context, source } => {
            json!({ "context": context, "source": source.to_string() })
        }
        Error::Backend {
            provider,
            message,
            source,
        } => json!({
            "provider": provider,
            "message": message,
            "source": source.as_ref().map(|s| s.to_string()),
        }),
        Error::Plugin { path, message } => json!({ "path": path, "message": message }),
        Error::Panicked { provider, message } => {
            json!({ "provider": provider, "message": message })
        }
    };
    let mut fields = fields;
    fields["error"] = Value::String(error.to_string());
    (code_of(error.kind()), fields.to_string())
}

/// What the host knew about a call, to fill fields a plugin's message leaves out.
pub(crate) struct CallContext<'a> {
    pub provider: &'a str,
    pub namespace: Option<&'a str>,
    pub key: Option<&'a str>,
}

/// Rebuilds an error from a status code and its message (a JSON object from
/// [`encode_error`], or plain text from a C plugin).
pub(crate) fn decode_error(code: u32, message: &[u8], cx: &CallContext<'_>) -> Error {
    let text = String::from_utf8_lossy(message).into_owned();
    let obj = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let plain = obj
        .get("message")
        .or_else(|| obj.get("error"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| {
            if obj.is_empty() {
                text.clone()
            } else {
                String::new()
            }
        });
    let s = |name: &str| obj.get(name).and_then(Value::as_str).map(str::to_string);
    let u = |name: &str| obj.get(name).and_then(Value::as_u64);
    let or = |v: Option<String>, d: Option<&str>| v.or(d.map(str::to_string)).unwrap_or_default();
    let provider = || s("provider").unwrap_or_else(|| cx.provider.to_string());
    match code {
        status::INVALID_KEY => Error::InvalidKey {
            key: or(s("key"), cx.key),
            reason: s("reason").unwrap_or(plain),
        },
        status::INVALID_NAMESPACE => Error::InvalidNamespace {
            namespace: or(s("namespace"), cx.namespace),
            reason: s("reason").unwrap_or(plain),
        },
        status::INVALID_INPUT => Error::InvalidInput { message: plain },
        status::NOT_FOUND => Error::NotFound {
            namespace: or(s("namespace"), cx.namespace),
            key: or(s("key"), cx.key),
            version: u("version"),
        },
        status::CONFLICT => Error::Conflict {
            namespace: or(s("namespace"), cx.namespace),
            key: or(s("key"), cx.key),
            expected: s("expected").unwrap_or(plain),
            current: u("current"),
        },
        status::INVALID_CONFIG => Error::InvalidConfig {
            source_name: s("source_name"),
            field: s("field").unwrap_or_else(|| format!("storage.config ({})", cx.provider)),
            message: plain,
        },
        status::UNSUPPORTED => Error::Unsupported {
            operation: s("operation").unwrap_or(plain),
            provider: provider(),
        },
        status::PROVIDER_EXISTS => Error::ProviderExists {
            name: s("name").unwrap_or(plain),
            origin: s("origin"),
        },
        status::UNKNOWN_PROVIDER => Error::UnknownProvider {
            name: s("name").unwrap_or(plain),
            known: obj
                .get("known")
                .and_then(|k| serde_json::from_value(k.clone()).ok())
                .unwrap_or_default(),
        },
        status::CORRUPT => Error::Corrupt {
            provider: provider(),
            message: plain,
        },
        status::LOCKED => Error::Locked {
            path: s("path").map(PathBuf::from).unwrap_or_default(),
            message: plain,
        },
        status::IO => Error::Io {
            context: s("context").unwrap_or_else(|| format!("provider `{}`", cx.provider)),
            source: std::io::Error::other(s("source").unwrap_or(plain)),
        },
        status::PLUGIN => Error::Plugin {
            path: s("path").map(PathBuf::from).unwrap_or_default(),
            message: plain,
        },
        status::PANICKED => Error::Panicked {
            provider: provider(),
            message: plain,
        },
        status::BACKEND => Error::Backend {
            provider: provider(),
            message: plain,
            source: s("source").map(|m| m.into()),
        },
        other => Error::Backend {
            provider: provider(),
            message: format!("plugin returned unknown status code {other}: {text}"),
            source: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(error: Error) -> Error {
        let (code, message) = encode_error(&error);
        let cx = CallContext {
            provider: "p",
            namespace: None,
            key: None,
        };
        decode_error(code, message.as_bytes(), &cx)
    }

    #[test]
    fn errors_keep_their_variant_and_fields_across_the_boundary() {
        let e = roundtrip(Error::Conflict {
            namespace: "ns".into(),
            key: "a/b".into(),
            expected: "version 3".into(),
            current: Some(4),
        });
        match e {
            Error::Conflict {
                namespace,
                key,
                expected,
                current,
            } => {
                assert_eq!(
                    (namespace.as_str(), key.as_str(), expected.as_str(), current),
                    ("ns", "a/b", "version 3", Some(4))
                );
            }
            other => panic!("wrong variant: {other:?}"),
        }
        let e = roundtrip(Error::NotFound {
            namespace: "n".into(),
            key: "k".into(),
            version: Some(2),
        });
        assert!(
            matches!(
                e,
                Error::NotFound {
                    version: Some(2),
                    ..
                }
            ),
            "{e:?}"
        );
        let e = roundtrip(Error::backend(
            "kv",
            "disk full",
            std::io::Error::other("ENOSPC"),
        ));
        assert_eq!(e.to_string(), "provider `kv` failed: disk full");
        assert_eq!(std::error::Error::source(&e).unwrap().to_string(), "ENOSPC");
        let e = roundtrip(Error::invalid_config("storage.config.path", "must be set"));
        assert!(
            matches!(&e, Error::InvalidConfig { field, .. } if field == "storage.config.path"),
            "{e:?}"
        );
    }

    #[test]
    fn plain_text_messages_from_c_plugins_use_the_call_context() {
        let cx = CallContext {
            provider: "cmem",
            namespace: Some("default"),
            key: Some("x"),
        };
        let e = decode_error(status::NOT_FOUND, b"no such record", &cx);
        assert_eq!(e.to_string(), "record default/x not found");
        let e = decode_error(status::BACKEND, b"out of memory", &cx);
        assert_eq!(e.to_string(), "provider `cmem` failed: out of memory");
        let e = decode_error(99, b"?", &cx);
        assert!(e.to_string().contains("unknown status code 99"), "{e}");
    }
}
