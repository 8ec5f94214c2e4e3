//! [`StorageBackend`]: the trait every provider implements.

use async_trait::async_trait;

use crate::body::Body;
use crate::error::{Error, Result};
use crate::key::{Key, Namespace};
use crate::model::{
    Capabilities, DeleteOptions, GcReport, GetOptions, ListOptions, Metadata, Page, Progress,
    PutMode, RecordInfo, VerifyReport, Version,
};
use crate::query::Query;

/// A storage backend: one configured instance of a provider.
///
/// Object-safe and used as `Arc<dyn StorageBackend>`. Every method receives a validated
/// [`Namespace`] and [`Key`], so a backend never sees a hostile name. Optional operations
/// default to [`Error::Unsupported`]; [`StorageBackend::capabilities`] says which ones a
/// provider really has.
///
/// Semantics every provider keeps (the conformance kit checks them):
/// - a put creates version `latest + 1` (1 for a new or purged key), tombstones included;
/// - `get`/`head` without a version return the latest version, or `NotFound` if it is a
///   tombstone; with a version, that version unless it is a tombstone;
/// - `delete` on a key without a live version is `NotFound`;
/// - `restore(v)` writes a new version with the payload and metadata of live version `v`
///   (default: the newest live one);
/// - a failed precondition is `Conflict` and writes nothing.
///
/// ```
/// use std::sync::Arc;
/// use stowage_core::StorageBackend;
/// fn takes_any(_backend: Arc<dyn StorageBackend>) {}
/// ```
#[async_trait]
pub trait StorageBackend: Send + Sync + 'static {
    /// The provider name this backend was created by.
    fn provider(&self) -> &str;

    /// What this backend supports.
    fn capabilities(&self) -> Capabilities;

    /// Prepares the backend (creates files, tables, buckets prefixes). Idempotent; the
    /// [`crate::Stowage`] handle calls it once, lazily, before the first operation.
    async fn initialize(&self) -> Result<()> {
        Ok(())
    }

    /// Writes a new version of `key`.
    async fn put(
        &self,
        ns: &Namespace,
        key: &Key,
        body: Body,
        metadata: Metadata,
        mode: PutMode,
    ) -> Result<RecordInfo>;

    /// Reads a version of `key` (by default the latest), optionally a byte range of it.
    async fn get(
        &self,
        ns: &Namespace,
        key: &Key,
        options: GetOptions,
    ) -> Result<(RecordInfo, Body)>;

    /// Reads the info of a version of `key` without its payload.
    async fn head(&self, ns: &Namespace, key: &Key, version: Option<Version>)
        -> Result<RecordInfo>;

    /// Writes a tombstone for `key`, returning it.
    async fn delete(
        &self,
        ns: &Namespace,
        key: &Key,
        options: DeleteOptions,
    ) -> Result<RecordInfo> {
        let _ = (ns, key, options);
        Err(Error::unsupported("delete", self.provider()))
    }

    /// Lists the latest version of each key, in byte order of key.
    async fn list(&self, ns: &Namespace, options: ListOptions) -> Result<Page<RecordInfo>>;

    /// Searches the latest versions by metadata.
    async fn search(&self, ns: &Namespace, query: &Query) -> Result<Page<RecordInfo>> {
        let _ = (ns, query);
        Err(Error::unsupported("search", self.provider()))
    }

    /// Every version of `key`, oldest first, tombstones included.
    async fn versions(&self, ns: &Namespace, key: &Key) -> Result<Vec<RecordInfo>> {
        let _ = (ns, key);
        Err(Error::unsupported("versions", self.provider()))
    }

    /// Undeletes `key` by writing a new version equal to live version `version` (default: the
    /// newest live one).
    async fn restore(
        &self,
        ns: &Namespace,
        key: &Key,
        version: Option<Version>,
    ) -> Result<RecordInfo> {
        let _ = (ns, key, version);
        Err(Error::unsupported("restore", self.provider()))
    }

    /// Removes every version of `key` for good; returns how many were removed.
    async fn purge(&self, ns: &Namespace, key: &Key) -> Result<u64> {
        let _ = (ns, key);
        Err(Error::unsupported("purge", self.provider()))
    }

    /// Reclaims payload bytes no version references.
    async fn gc(&self, progress: &dyn Progress) -> Result<GcReport> {
        let _ = progress;
        Err(Error::unsupported("gc", self.provider()))
    }

    /// Re-hashes stored payloads and checks every version's references.
    async fn verify(&self, progress: &dyn Progress) -> Result<VerifyReport> {
        let _ = progress;
        Err(Error::unsupported("verify", self.provider()))
    }

    /// Releases what the backend holds (connections, file handles, locks) cleanly. Called by
    /// [`crate::Stowage::close`]; the backend must not be used afterwards. The default does
    /// nothing, since dropping a backend must also be safe.
    async fn close(&self) -> Result<()> {
        Ok(())
    }

    /// The namespaces that hold at least one record (tombstones included).
    async fn namespaces(&self) -> Result<Vec<Namespace>> {
        Err(Error::unsupported("namespaces", self.provider()))
    }
}
