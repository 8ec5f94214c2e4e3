//! Where things live inside the bucket (under the configured `root`), and the metadata object
//! format. `docs/formats.md` (`## s3`) describes the same layout for people.
//!
//! ```text
//! blobs/<64 hex of blake3>                         payload bytes, content-addressed
//! staging/<32 hex>                                 a large payload while it uploads and hashes
//! meta/<namespace>/<hex of key>/<20-digit version>.json   one object per version
//! ```
//!
//! Keys are hex-encoded so the byte order of keys is the lexicographic order of object names
//! (hex digits all sort after `/`, so a key sorts before every longer key it is a prefix of),
//! and any key is a safe object name. The 20-digit zero-padded version makes the versions of
//! a key list oldest first.

use serde::{Deserialize, Serialize};
use stowage_core::{ContentHash, Error, Key, Namespace, RecordInfo, Result, Version};

use super::PROVIDER;

/// The version of the metadata object format; written into every metadata object.
pub(crate) const META_FORMAT: u32 = 1;

/// Prefix of all payload blobs.
pub(crate) const BLOBS: &str = "blobs/";
/// Prefix of large payloads still being uploaded.
pub(crate) const STAGING: &str = "staging/";
/// Prefix of all metadata objects.
pub(crate) const META: &str = "meta/";

/// The object holding the payload of `hash`.
pub(crate) fn blob_path(hash: &ContentHash) -> String {
    format!("{BLOBS}{}", hash.to_hex())
}

/// The hash named by a blob object's path, if it is one.
pub(crate) fn hash_of_blob_path(path: &str) -> Option<ContentHash> {
    let hex_digits = path.strip_prefix(BLOBS)?;
    (hex_digits.len() == 64)
        .then(|| ContentHash::from_hex(hex_digits).ok())
        .flatten()
}

/// A fresh staging object name (unique per process, time and call).
pub(crate) fn staging_path() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut seed = blake3::Hasher::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    seed.update(&now.to_le_bytes());
    seed.update(&std::process::id().to_le_bytes());
    seed.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    format!(
        "{STAGING}{}",
        hex::encode(&seed.finalize().as_bytes()[..16])
    )
}

/// The prefix of every metadata object of a namespace.
pub(crate) fn namespace_prefix(ns: &Namespace) -> String {
    format!("{META}{}/", ns.as_str())
}

/// The prefix of every metadata object of keys starting with `key_prefix` (bytes).
pub(crate) fn key_prefix_prefix(ns: &Namespace, key_prefix: &str) -> String {
    format!("{}{}", namespace_prefix(ns), hex::encode(key_prefix))
}

/// The prefix (a "folder") holding every version of one key.
pub(crate) fn key_dir(ns: &Namespace, key: &str) -> String {
    format!("{}{}/", namespace_prefix(ns), hex::encode(key))
}

/// A listing `start_after` that skips `key` and every version of it, but no longer key.
pub(crate) fn after_key(ns: &Namespace, key: &str) -> String {
    // '~' sorts after every version file name; a longer key continues with a hex digit where
    // this has '/', and hex digits sort after '/'.
    format!("{}~", key_dir(ns, key))
}

/// The longest object name S3 accepts (AWS refuses longer ones; some servers do not check).
pub(crate) const MAX_OBJECT_NAME: usize = 1024;

/// Bytes of a metadata object name beyond the root, the namespace and the hex key:
/// `meta/`, `/` after the namespace, `/` after the key, 20 digits and `.json`.
const META_NAME_OVERHEAD: usize = META.len() + 1 + 1 + 20 + ".json".len();

/// The longest key (in bytes) whose metadata object names fit in [`MAX_OBJECT_NAME`] under
/// `root` (the object-name prefix, e.g. `stores/prod/`) and namespace `ns`. Every other name
/// (`blobs/…`, `staging/…`) is shorter.
pub(crate) fn max_key_len(root: &str, ns: &Namespace) -> usize {
    MAX_OBJECT_NAME.saturating_sub(root.len() + ns.as_str().len() + META_NAME_OVERHEAD) / 2
}

/// Refuses a key whose object names would be longer than S3 accepts (no I/O).
pub(crate) fn check_key_fits(root: &str, ns: &Namespace, key: &Key) -> Result<()> {
    let max = max_key_len(root, ns);
    let len = key.as_str().len();
    if len <= max {
        return Ok(());
    }
    Err(Error::InvalidKey {
        key: key.to_string(),
        reason: format!(
            "is {len} bytes, but this s3 store (root `{root}`, namespace `{ns}`) takes keys of at most {max} bytes: the key is hex-encoded (2 bytes per key byte) into object names, which S3 limits to {MAX_OBJECT_NAME} bytes"
        ),
    })
}

/// The metadata object of one version.
pub(crate) fn meta_path(ns: &Namespace, key: &str, version: Version) -> String {
    format!("{}{version:020}.json", key_dir(ns, key))
}

/// A metadata object found in a listing: which key (hex) and version it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MetaName {
    /// The object's path.
    pub path: String,
    /// The key, hex-encoded as in the path.
    pub key_hex: String,
    /// The version number.
    pub version: Version,
}

/// Parses `meta/<ns>/<hex key>/<version>.json` (under the namespace prefix `ns_prefix`).
pub(crate) fn parse_meta_path(ns_prefix: &str, path: &str) -> Option<MetaName> {
    let rest = path.strip_prefix(ns_prefix)?;
    let (key_hex, file) = rest.split_once('/')?;
    let digits = file.strip_suffix(".json")?;
    if key_hex.is_empty() || digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(MetaName {
        path: path.to_string(),
        key_hex: key_hex.to_string(),
        version: digits.parse().ok()?,
    })
}

/// The body of a metadata object: the format version and the record info of that version.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MetaObject {
    /// [`META_FORMAT`] when written.
    pub format: u32,
    /// The version's record info, as `head` returns it.
    pub record: RecordInfo,
}

/// Serialises a version's metadata object.
pub(crate) fn encode_meta(record: &RecordInfo) -> Result<Vec<u8>> {
    let object = MetaObject {
        format: META_FORMAT,
        record: record.clone(),
    };
    serde_json::to_vec(&object).map_err(|e| {
        Error::corrupt(
            PROVIDER,
            format!(
                "cannot encode metadata of {}/{}: {e}",
                record.namespace, record.key
            ),
        )
    })
}

/// Parses a metadata object read from `path`, checking it belongs where it was found.
pub(crate) fn decode_meta(
    path: &str,
    bytes: &[u8],
    ns: &Namespace,
    key_hex: &str,
    version: Version,
) -> Result<RecordInfo> {
    let object: MetaObject = serde_json::from_slice(bytes).map_err(|e| {
        Error::corrupt(
            PROVIDER,
            format!("metadata object {path} is not valid JSON of format {META_FORMAT}: {e}"),
        )
    })?;
    if object.format != META_FORMAT {
        return Err(Error::corrupt(
            PROVIDER,
            format!("metadata object {path} has format {} but this stowage reads format {META_FORMAT}; upgrade stowage", object.format),
        ));
    }
    let r = &object.record;
    if &r.namespace != ns || hex::encode(r.key.as_str()) != key_hex || r.version != version {
        return Err(Error::corrupt(
            PROVIDER,
            format!(
                "metadata object {path} holds {}/{} version {}, not what its name says",
                r.namespace, r.key, r.version
            ),
        ));
    }
    Ok(object.record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_sort_like_keys() {
        let ns = Namespace::new("n").unwrap();
        let mut keys = vec!["b", "a/b", "a", "ab", "a\u{e9}", "a0", "z/\u{7f}x"];
        let mut names: Vec<(String, &str)> =
            keys.iter().map(|k| (meta_path(&ns, k, 7), *k)).collect();
        names.sort();
        keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        assert_eq!(names.iter().map(|(_, k)| *k).collect::<Vec<_>>(), keys);
    }

    #[test]
    fn after_key_skips_only_that_key() {
        let ns = Namespace::new("n").unwrap();
        let bound = after_key(&ns, "a");
        assert!(meta_path(&ns, "a", u64::MAX) < bound);
        assert!(meta_path(&ns, "a/", 1) > bound);
        assert!(meta_path(&ns, "ab", 1) > bound);
        assert!(meta_path(&ns, "b", 1) > bound);
    }

    #[test]
    fn versions_sort_numerically_and_parse_back() {
        let ns = Namespace::new("n").unwrap();
        assert!(meta_path(&ns, "k", 9) < meta_path(&ns, "k", 10));
        let name = parse_meta_path(&namespace_prefix(&ns), &meta_path(&ns, "k", 10)).unwrap();
        assert_eq!((name.key_hex.as_str(), name.version), ("6b", 10));
        assert!(parse_meta_path(&namespace_prefix(&ns), "meta/n/6b/").is_none());
        assert!(parse_meta_path(&namespace_prefix(&ns), "meta/n/6b/12.json").is_none());
    }

    #[test]
    fn the_longest_key_fills_1024_bytes_with_its_root() {
        let ns = Namespace::new("default").unwrap();
        for root in ["", "stores/prod/", "t/"] {
            let max = max_key_len(root, &ns);
            let name = format!("{root}{}", meta_path(&ns, &"k".repeat(max), u64::MAX));
            assert!(name.len() <= MAX_OBJECT_NAME && name.len() + 2 > MAX_OBJECT_NAME);
            assert!(check_key_fits(root, &ns, &Key::new("k".repeat(max)).unwrap()).is_ok());
            let err = check_key_fits(root, &ns, &Key::new("k".repeat(max + 1)).unwrap());
            assert_eq!(err.unwrap_err().kind(), stowage_core::ErrorKind::InvalidKey);
        }
        assert_eq!(max_key_len("", &ns), 492);
    }

    #[test]
    fn blob_paths_round_trip() {
        let h = ContentHash::of(b"x");
        assert_eq!(hash_of_blob_path(&blob_path(&h)), Some(h));
        assert_eq!(hash_of_blob_path("blobs/zz"), None);
        assert_ne!(staging_path(), staging_path());
    }
}
