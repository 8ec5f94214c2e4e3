//! The `automerge` provider: every record is an [Automerge](https://automerge.org) document, so
//! concurrent writers — threads, processes on one root, or replicas synced later — merge
//! field by field instead of overwriting each other, and every past state stays readable.
//!
//! # Records as documents
//! A JSON payload (`application/json` or `application/*+json`) is reconciled into the
//! document as Automerge maps, lists and scalars: only the fields that differ from the state
//! the write is based on produce operations, so two writers that change different fields both
//! survive. JSON strings are scalar registers (a concurrent edit of one string field is a
//! conflict with both values kept, not a character interleaving nobody wrote). JSON whose
//! values a document cannot hold exactly — an integer beyond `i64`/`u64`, a number with more
//! precision than an `f64`, a repeated object key — is refused with `InvalidInput` naming the
//! JSON path, before anything is written. Any other payload, or one declared JSON that does
//! not parse, is bytes: one byte scalar in the document, or, from `blob_min_bytes` bytes up
//! (default 1 MiB), a file (see *Payload files*). `get` returns a JSON record as compact JSON
//! with object keys in byte order (so two replicas holding the same changes return
//! byte-identical payloads); `hash` and `size` are those of the bytes `get` returns. Content
//! type, tags (a map tag → true) and attributes live in the document too and merge per field.
//! See `docs/formats.md` for the schema and the files.
//!
//! # Versions
//! Every write (put, delete, restore) is one Automerge change with a message and a time.
//! Version `N` is the state after the `N`th change of a deterministic topological order of the
//! change graph: among changes whose dependencies are placed, the one with the smallest
//! `(time, change hash)` comes next. Replicas with the same changes number them identically.
//! A write on one root is made on top of everything stored (it reloads under the document
//! lock), so it always takes the next number and existing numbers do not move; a change merged
//! in later that is concurrent with known ones (a sync, or a `Base` put of an old version)
//! can sort between them and shift the numbers of later concurrent changes.
//!
//! # Write modes
//! - `Overwrite`: diff against the current state.
//! - `Base(v)`: the writer read version `v`. The change is made *at* `v` (an Automerge
//!   transaction isolated at the heads of `v`) and merged: fields changed after `v` by others
//!   stay; a field both changed is a conflict, one value wins and `RecordInfo::conflicts`
//!   lists both. `v` must exist (else `Conflict`). A delete made after `v` is a change too:
//!   the merged record stays deleted (the returned info says so) until a plain put or a
//!   restore.
//! - `IfVersion(v)` and `Create`: checked under the document's exclusive lock after
//!   reloading, so on one root they are atomic (of racing writers exactly one wins). Replicas
//!   apart cannot see each other's versions until they sync: there, use `Base`.
//!
//! # Storage and concurrency
//! Each document has a folder named after a hash of namespace and key, holding immutable
//! content-addressed change files and a snapshot that replaces them once they outweigh it
//! (`docs/formats.md`, section `automerge`). A write holds the document's lock file only while
//! it reloads, commits one change and writes its file. Compaction removes covered change files
//! as it goes. A purge first moves the record's whole folder out of the way in one rename, then
//! deletes it, so a purge killed part-way leaves the record either as it was or gone, never
//! an older version. Listings read folders without locks and look again (then under the
//! lock) when a file vanishes under them. Each backend caches the documents it has opened in memory.
//! Beside its data files each folder keeps `latest.json`, the latest version's `RecordInfo`
//! keyed by the data file names it was computed from, so `list` and `search` read one small
//! file per record instead of loading its document (a stale cache is detected and rebuilt).
//!
//! # Payload files
//! A byte payload of at least `blob_min_bytes` bytes (`0`: every byte payload) is streamed to a
//! content-addressed file `blobs/<2 hex>/<62 hex>` (its blake3) while it is hashed, never whole
//! in memory; the document's `body` then holds a reference (an Automerge scalar of an unknown
//! type naming hash and size) instead of the bytes. `get` streams the file (a byte range reads
//! only those bytes; a whole read is re-hashed and ends with `Corrupt` naming the file on a
//! mismatch). One file serves every version and key with those bytes; smaller payloads stay in
//! their documents, so `capabilities().dedup` is false. A writer holds `gc.lock` shared from
//! linking its file until its change is committed; `gc` holds it exclusive and removes the
//! files no change of any document refers to (after `purge`) and abandoned temporary files.
//! `verify` re-hashes the files. A JSON payload is parsed and reconciled whole, so it is always
//! held in memory. `FORMAT` says `2` from the first reference on (see `docs/formats.md`).
//!
//! # Replication
//! [`sync_stores`] runs Automerge's sync protocol between two stores for every document, in
//! both directions, copying the payload files one side's changes refer to first.

mod backend;
mod blobs;
mod config;
mod document;
mod history;
mod listing;
mod record;
mod storage;
mod sync;

use std::sync::Arc;

use stowage_core::{
    async_trait, BuiltinProvider, Capabilities, Result, StorageBackend, StorageProviderFactory,
};

pub use backend::{AutomergeBackend, ChangeInfo};
pub use config::{AutomergeConfig, MAX_BLOB_MIN_BYTES};
pub use sync::{sync_stores, SyncReport};

/// The provider name.
pub const PROVIDER: &str = "automerge";

/// What an `automerge` backend supports.
pub fn capabilities() -> Capabilities {
    Capabilities {
        versions: true,
        delete: true,
        restore: true,
        purge: true,
        search: true,
        search_is_scan: true,
        range_reads: true,
        create_only: true,
        if_version: true,
        merge: true,
        dedup: false,
        gc: true,
        verify: true,
        list_namespaces: true,
        sync: true,
        durable: true,
    }
}

/// The factory of the `automerge` provider.
#[derive(Debug, Default, Clone, Copy)]
pub struct AutomergeFactory;

/// The factory, for [`crate::builtin_factories`].
pub fn factory() -> Arc<dyn StorageProviderFactory> {
    Arc::new(AutomergeFactory)
}

#[async_trait]
impl StorageProviderFactory for AutomergeFactory {
    fn name(&self) -> &str {
        PROVIDER
    }

    fn description(&self) -> &str {
        "records as Automerge documents that merge instead of overwrite, with their whole history"
    }

    fn config_schema(&self) -> serde_json::Value {
        AutomergeConfig::schema()
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    fn validate(&self, config: &serde_json::Value) -> Result<()> {
        AutomergeConfig::from_json(config).map(|_| ())
    }

    async fn create(&self, config: serde_json::Value) -> Result<Arc<dyn StorageBackend>> {
        Ok(Arc::new(AutomergeBackend::from_config(&config)?))
    }
}

stowage_core::inventory::submit! {
    BuiltinProvider { factory }
}
