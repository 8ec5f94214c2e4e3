//! Turning rows of `versions` and `latest` into [`RecordInfo`].

use std::path::Path;

use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use stowage_core::{Error, Key, Metadata, Namespace, RecordInfo, Result, Timestamp};

use super::blobs::hash_from;
use super::PROVIDER;

/// The record columns every query selects first, in this order (`decode` reads them by index).
pub(crate) const RECORD_COLUMNS: &str =
    "key, version, hash, size, created_at, updated_at, deleted_at, metadata";

/// Same as [`RECORD_COLUMNS`], qualified by the table alias `r`.
pub(crate) const RECORD_COLUMNS_R: &str =
    "r.key, r.version, r.hash, r.size, r.created_at, r.updated_at, r.deleted_at, r.metadata";

/// Reads the [`RECORD_COLUMNS`] of `row` as a record of namespace `ns`.
pub(crate) fn decode(ns: &Namespace, row: &SqliteRow, path: &Path) -> Result<RecordInfo> {
    let bad = |what: String| {
        Error::corrupt(
            PROVIDER,
            format!("{what} in {}; run `stowage verify`", path.display()),
        )
    };
    let get_err = |e: sqlx::Error| bad(format!("unreadable record row ({e})"));
    let key: String = row.try_get(0).map_err(get_err)?;
    let key =
        Key::new(key.clone()).map_err(|e| bad(format!("stored key {key:?} is invalid ({e})")))?;
    let version: i64 = row.try_get(1).map_err(get_err)?;
    let hash_bytes: Vec<u8> = row.try_get(2).map_err(get_err)?;
    let hash = hash_from(&hash_bytes)
        .ok_or_else(|| bad(format!("record {ns}/{key} has a malformed hash")))?;
    let size: i64 = row.try_get(3).map_err(get_err)?;
    let created_at: i64 = row.try_get(4).map_err(get_err)?;
    let updated_at: i64 = row.try_get(5).map_err(get_err)?;
    let deleted_at: Option<i64> = row.try_get(6).map_err(get_err)?;
    let metadata: String = row.try_get(7).map_err(get_err)?;
    let metadata: Metadata = serde_json::from_str(&metadata).map_err(|e| {
        bad(format!(
            "metadata of {ns}/{key} version {version} is not valid ({e})"
        ))
    })?;
    Ok(RecordInfo {
        namespace: ns.clone(),
        key,
        version: version as u64,
        hash,
        size: size as u64,
        created_at: Timestamp::from_micros(created_at),
        updated_at: Timestamp::from_micros(updated_at),
        deleted_at: deleted_at.map(Timestamp::from_micros),
        metadata,
        conflicts: Vec::new(),
    })
}

/// Metadata as stored in the `metadata` column (the triggers index its tags and attributes).
pub(crate) fn encode_metadata(metadata: &Metadata) -> Result<String> {
    serde_json::to_string(metadata)
        .map_err(|e| Error::invalid_input(format!("metadata cannot be stored as JSON: {e}")))
}
