//! Where things live inside the bucket (under the configured `root`), and the metadata object
//! format. `docs/formats.md` (`## s3`) describes the same layout for people.
//!
//! ```text
//! blobs/<64 hex of blake3>                         payload bytes, content-addressed
//! staging/<32 hex>                                 a large payload while it uploads and hashes
//! meta/<namespace>/<hex of key>/<20-digit version>.json   one object per version
//! meta/<namespace>/~<64 hex of blake3 of key>/<20-digit version>.json   the same, long keys
//! ```
//!
//! Keys are hex-encoded so the byte order of keys is the lexicographic order of object names
//! (hex digits all sort after `/`, so a key sorts before every longer key it is a prefix of),
//! and any key is a safe object name. A key whose hex would make names longer than S3 takes
//! is named by its hash instead ([`Layout`]). The 20-digit zero-padded version makes the
//! versions of a key list oldest first.

use serde::{Deserialize, Serialize};
use stowage_core::{ContentHash, Error, Namespace, RecordInfo, Result, Version};

use super::PROVIDER;

/// The version of the metadata object format; written into every metadata object.
pub(crate) const META_FORMAT: u32 = 1;

/// Prefix of all payload blobs.
pub(crate) const BLOBS: &str = "blobs/";
/// Prefix of large payloads still being uploaded.
pub(crate) const STAGING: &str = "staging/";
/// Prefix of all metadata objects.
pub(crate) const META: &str = "meta/";
/// Prefix of the marks `purge` leaves on a key it purged (see [`Layout::purged_path`]).
pub(crate) const PURGED: &str = "purged/";

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

/// The listing bound that skips the key whose UTF-8 bytes are `key`, and every version of
/// it, but no longer key.
pub(crate) fn after_key(ns: &Namespace, key: &[u8]) -> String {
    // '~' sorts after every version file name; a longer key continues with a hex digit where
    // this has '/', and hex digits sort after '/'.
    format!("{}{}/~", namespace_prefix(ns), hex::encode(key))
}

/// The longest object name S3 accepts (AWS refuses longer ones; some servers do not check).
pub(crate) const MAX_OBJECT_NAME: usize = 1024;

/// Bytes of a metadata object name beyond the root, the namespace and the key's segment:
/// `meta/`, `/` after the namespace, `/` after the key, 20 digits and `.json`.
const META_NAME_OVERHEAD: usize = META.len() + 1 + 1 + 20 + ".json".len();

/// The first character of a hashed key segment: `~` sorts after every hex digit, so the keys
/// named by hash list after every key named by its hex.
pub(crate) const HASHED_MARK: char = '~';

/// Length of a hashed key segment: the mark and 64 hex digits of a blake3 hash.
const HASHED_SEGMENT_LEN: usize = 1 + 64;

/// The longest root (object-name prefix) a store may have: every namespace (at most 63 bytes)
/// and every key (hashed when long) then fits in [`MAX_OBJECT_NAME`].
pub(crate) const MAX_ROOT_LEN: usize = 512;

/// How keys become object names under one root.
///
/// A key is named by its hex (which keeps the byte order of keys as the order of names, so a
/// listing walks keys in order) when its metadata object names fit in [`MAX_OBJECT_NAME`];
/// a longer key — up to the 1024 bytes any key may have — is named `~` + the hex of the
/// blake3 hash of its bytes. Which keys are hashed depends only on the root, the namespace
/// and the key's length, so every process agrees; their names carry no order, so listings
/// read them apart and merge them in (see the backend's `scan_latest`).
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    /// The object-name prefix of the store (`""` or ending in `/`, no leading `/`).
    root: String,
}

impl Layout {
    /// The layout under `root` (at most [`MAX_ROOT_LEN`] bytes; the config checks it).
    pub(crate) fn new(root: String) -> Self {
        Layout { root }
    }

    /// The longest key (in bytes) named by its hex in `ns`; longer keys are hashed.
    pub(crate) fn max_hex_key_len(&self, ns: &Namespace) -> usize {
        MAX_OBJECT_NAME.saturating_sub(self.root.len() + ns.as_str().len() + META_NAME_OVERHEAD) / 2
    }

    /// The key's segment in object names: its hex, or `~` + the hex of its hash when long.
    pub(crate) fn key_segment(&self, ns: &Namespace, key: &str) -> String {
        if key.len() <= self.max_hex_key_len(ns) {
            hex::encode(key)
        } else {
            format!("{HASHED_MARK}{}", blake3::hash(key.as_bytes()).to_hex())
        }
    }

    /// The mark `purge` writes before deleting any version of the key, and leaves: a key
    /// without version 1 and without this mark has no version at all (versions are claimed
    /// from 1 up and only purge deletes them), so a create can tell a new key with one HEAD
    /// of each instead of a listing.
    pub(crate) fn purged_path(&self, ns: &Namespace, key: &str) -> String {
        format!("{PURGED}{}/{}", ns.as_str(), self.key_segment(ns, key))
    }

    /// The prefix (a "folder") holding every version of one key.
    pub(crate) fn key_dir(&self, ns: &Namespace, key: &str) -> String {
        format!("{}{}/", namespace_prefix(ns), self.key_segment(ns, key))
    }

    /// The metadata object of one version.
    pub(crate) fn meta_path(&self, ns: &Namespace, key: &str, version: Version) -> String {
        format!("{}{version:020}.json", self.key_dir(ns, key))
    }

    /// Parses a metadata object read from `path` (found as key segment `segment` and
    /// `version`), checking it belongs where it was found.
    pub(crate) fn decode_meta(
        &self,
        path: &str,
        bytes: &[u8],
        ns: &Namespace,
        segment: &str,
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
        if &r.namespace != ns
            || self.key_segment(ns, r.key.as_str()) != segment
            || r.version != version
        {
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
}

/// A metadata object found in a listing: which key (hex) and version it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MetaName {
    /// The object's path.
    pub path: String,
    /// The key's segment in the path: its hex, or `~` and the hex of its hash.
    pub segment: String,
    /// The version number.
    pub version: Version,
}

/// Parses `meta/<ns>/<key segment>/<version>.json` (under the namespace prefix `ns_prefix`).
pub(crate) fn parse_meta_path(ns_prefix: &str, path: &str) -> Option<MetaName> {
    let rest = path.strip_prefix(ns_prefix)?;
    let (segment, file) = rest.split_once('/')?;
    let digits = file.strip_suffix(".json")?;
    let hex_digits = match segment.strip_prefix(HASHED_MARK) {
        Some(hash) if segment.len() == HASHED_SEGMENT_LEN => hash,
        Some(_) => return None,
        None => segment,
    };
    if hex_digits.is_empty()
        || !hex_digits.bytes().all(|b| b.is_ascii_hexdigit())
        || digits.len() != 20
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some(MetaName {
        path: path.to_string(),
        segment: segment.to_string(),
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
    /// Random, different for every claim: tells a claim that a retried request of its own
    /// already made (its answer was lost) from one another writer made. Absent in objects
    /// written before it existed; readers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
}

/// A fresh claim token: 128 random bits as hex (the standard library's per-process random
/// hash keys, over a counter).
pub(crate) fn claim_token() -> String {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = std::collections::hash_map::RandomState::new();
    let (a, b) = (random.hash_one((n, 0u8)), random.hash_one((n, 1u8)));
    format!("{a:016x}{b:016x}")
}

/// Serialises a version's metadata object for a claim made with `claim` ([`claim_token`]).
pub(crate) fn encode_meta(record: &RecordInfo, claim: &str) -> Result<Vec<u8>> {
    let object = MetaObject {
        format: META_FORMAT,
        record: record.clone(),
        claim: Some(claim.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use stowage_core::Key;

    fn layout(root: &str) -> Layout {
        Layout::new(root.to_string())
    }

    #[test]
    fn object_names_sort_like_keys() {
        let ns = Namespace::new("n").unwrap();
        let l = layout("");
        let mut keys = vec!["b", "a/b", "a", "ab", "a\u{e9}", "a0", "z/\u{7f}x"];
        let mut names: Vec<(String, &str)> =
            keys.iter().map(|k| (l.meta_path(&ns, k, 7), *k)).collect();
        names.sort();
        keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        assert_eq!(names.iter().map(|(_, k)| *k).collect::<Vec<_>>(), keys);
    }

    #[test]
    fn after_key_skips_only_that_key() {
        let ns = Namespace::new("n").unwrap();
        let l = layout("");
        let bound = after_key(&ns, b"a");
        assert!(l.meta_path(&ns, "a", u64::MAX) < bound);
        assert!(l.meta_path(&ns, "a/", 1) > bound);
        assert!(l.meta_path(&ns, "ab", 1) > bound);
        assert!(l.meta_path(&ns, "b", 1) > bound);
    }

    #[test]
    fn versions_sort_numerically_and_parse_back() {
        let ns = Namespace::new("n").unwrap();
        let l = layout("");
        assert!(l.meta_path(&ns, "k", 9) < l.meta_path(&ns, "k", 10));
        let name = parse_meta_path(&namespace_prefix(&ns), &l.meta_path(&ns, "k", 10)).unwrap();
        assert_eq!((name.segment.as_str(), name.version), ("6b", 10));
        assert!(parse_meta_path(&namespace_prefix(&ns), "meta/n/6b/").is_none());
        assert!(parse_meta_path(&namespace_prefix(&ns), "meta/n/6b/12.json").is_none());
        assert!(parse_meta_path(
            &namespace_prefix(&ns),
            "meta/n/~zz/00000000000000000001.json"
        )
        .is_none());
    }

    #[test]
    fn keys_up_to_the_limit_are_hex_and_longer_ones_hashed_so_every_name_fits() {
        let ns = Namespace::new("default").unwrap();
        for root in ["", "stores/prod/", "t/", &"r".repeat(MAX_ROOT_LEN - 1)] {
            let root = if root.ends_with('/') || root.is_empty() {
                root.to_string()
            } else {
                format!("{root}/")
            };
            let l = layout(&root);
            let max = l.max_hex_key_len(&ns);
            let at_max = "k".repeat(max);
            let name = format!("{root}{}", l.meta_path(&ns, &at_max, u64::MAX));
            assert!(name.len() <= MAX_OBJECT_NAME && name.len() + 2 > MAX_OBJECT_NAME);
            assert_eq!(l.key_segment(&ns, &at_max), hex::encode(&at_max));
            for long in ["k".repeat(max + 1), "\u{e9}".repeat(512)] {
                let segment = l.key_segment(&ns, &long);
                assert!(segment.starts_with(HASHED_MARK) && segment.len() == HASHED_SEGMENT_LEN);
                let path = l.meta_path(&ns, &long, u64::MAX);
                assert!(root.len() + path.len() <= MAX_OBJECT_NAME, "{root}{path}");
                let parsed = parse_meta_path(&namespace_prefix(&ns), &path).unwrap();
                assert_eq!(parsed.segment, segment);
            }
        }
        assert_eq!(layout("").max_hex_key_len(&ns), 492);
        // The longest namespace under the longest root still leaves room for a hashed name.
        let ns = Namespace::new("n".repeat(63)).unwrap();
        let root = format!("{}/", "r".repeat(MAX_ROOT_LEN - 1));
        let path = layout(&root).meta_path(&ns, &"k".repeat(1024), u64::MAX);
        assert!(root.len() + path.len() <= MAX_OBJECT_NAME);
    }

    #[test]
    fn a_metadata_object_must_sit_under_its_own_key() {
        let ns = Namespace::new("n").unwrap();
        let l = layout("");
        let long = "x".repeat(600);
        let record = RecordInfo {
            namespace: ns.clone(),
            key: Key::new(long.clone()).unwrap(),
            version: 3,
            hash: ContentHash::of(b"x"),
            size: 1,
            created_at: stowage_core::Timestamp::from_micros(1),
            updated_at: stowage_core::Timestamp::from_micros(1),
            deleted_at: None,
            metadata: stowage_core::Metadata::new(),
            conflicts: Vec::new(),
        };
        let bytes = encode_meta(&record, &claim_token()).unwrap();
        let segment = l.key_segment(&ns, &long);
        assert!(l.decode_meta("p", &bytes, &ns, &segment, 3).is_ok());
        let other = l.key_segment(&ns, &"y".repeat(600));
        let err = l.decode_meta("p", &bytes, &ns, &other, 3).unwrap_err();
        assert_eq!(err.kind(), stowage_core::ErrorKind::Corrupt);
    }

    #[test]
    fn blob_paths_round_trip() {
        let h = ContentHash::of(b"x");
        assert_eq!(hash_of_blob_path(&blob_path(&h)), Some(h));
        assert_eq!(hash_of_blob_path("blobs/zz"), None);
        assert_ne!(staging_path(), staging_path());
    }
}
