//! `latest.json`: beside a document's data files, the `RecordInfo` of its latest version, so
//! `list`, `search` and `namespaces` need not load every document.
//!
//! The file is a cache, never the truth. It names the data files the info was computed from;
//! those names are content hashes and a document is exactly the union of its data files, so
//! the info is a pure function of that set of names. A reader lists the folder (no lock, no
//! file contents) and uses the cache only if the names match; otherwise — a write by an older
//! build, a sync, a compaction, a crash before the cache was rewritten, a torn or damaged
//! file — it loads the document and rewrites the cache. Hence no fsync and no lock: an old or
//! half-written cache is never used, it is only replaced.
//!
//! ```text
//! <64 hex: blake3 of the JSON below>\n
//! {"files":["incremental-….amc","snapshot-….am"],"info":{…RecordInfo…} | null}
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use stowage_core::RecordInfo;

use crate::atomic_file::{write_atomic, Durability};

const LISTING_FILE: &str = "latest.json";

#[derive(Serialize, Deserialize)]
struct Listing {
    /// The data file names the info was computed from, sorted.
    files: Vec<String>,
    /// The latest version's info; `null` when the document has no version.
    info: Option<RecordInfo>,
}

/// The cached latest info of the document in `dir` if it was computed from exactly the data
/// files `on_disk` (`Some(None)`: the document has no version); `None` when there is no usable
/// cache.
pub(crate) fn read(dir: &Path, on_disk: &BTreeMap<String, u64>) -> Option<Option<RecordInfo>> {
    let bytes = std::fs::read(dir.join(LISTING_FILE)).ok()?;
    let newline = bytes.iter().position(|b| *b == b'\n')?;
    let (check, json) = (&bytes[..newline], &bytes[newline + 1..]);
    if check != blake3::hash(json).to_hex().as_bytes() {
        return None;
    }
    let listing: Listing = serde_json::from_slice(json).ok()?;
    if !listing.files.iter().eq(on_disk.keys()) {
        return None;
    }
    // serde_json's default float parser may miss an attribute's f64 by one ulp: serve the
    // cache only if what was read writes back to the very same bytes.
    (encode(&listing.files, listing.info.as_ref())? == json).then_some(listing.info)
}

fn encode(files: &[impl Serialize], info: Option<&RecordInfo>) -> Option<Vec<u8>> {
    serde_json::to_vec(&serde_json::json!({ "files": files, "info": info })).ok()
}

/// Replaces the cache of the document in `dir`: `info` is its latest version's info as the
/// data files `files` (its whole set) give it. A failure is logged, not returned: the write it
/// follows has succeeded, and a missing cache only makes the next listing load the document.
pub(crate) fn write<'a>(
    dir: &Path,
    files: impl Iterator<Item = &'a String>,
    info: Option<&RecordInfo>,
) {
    let mut files: Vec<&String> = files.collect();
    files.sort();
    let Some(json) = encode(&files, info) else {
        tracing::warn!(dir = %dir.display(), "could not encode latest.json");
        return;
    };
    let mut bytes = Vec::with_capacity(json.len() + 65);
    bytes.extend_from_slice(blake3::hash(&json).to_hex().as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(&json);
    let path = dir.join(LISTING_FILE);
    if let Err(e) = write_atomic(&path, &bytes, Durability::NoSync) {
        tracing::warn!(path = %path.display(), error = %e, "could not write latest.json");
    }
}
