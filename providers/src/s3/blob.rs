//! [`BlobStore`]: content-addressed payloads at `blobs/<hash>`, written once per hash.
//!
//! A payload of at most one part is hashed in memory and written with one conditional create
//! (`If-None-Match: *`: a 412 means the same bytes are there already). A larger one streams
//! into a multipart upload of a staging object while it is hashed (no payload is held whole),
//! and is then server-side copied to `blobs/<hash>` unless that exists; the staging object is
//! removed either way. A failed upload is aborted, so a half-written payload is never visible
//! under `blobs/`.
//!
//! A payload found stored already (dedup) whose LastModified is older than half of gc's grace
//! period is written again before [`BlobStore::put`] returns, so its LastModified is fresh when
//! the caller claims the version: gc deletes only payloads older than the grace period (see
//! `S3Backend::gc`), and without the refresh a gc that listed the versions before the claim
//! could delete a payload the new version needs.
//!
//! A payload found stored whose size is not the payload's (truncated, or overwritten by
//! something else since) is written again too, so a put of the original bytes repairs it. The
//! size comes with the `HeadObject` a dedup hit sends anyway (for the age above). Damage that
//! keeps the size cannot be seen without reading the object back, which would cost a dedup hit
//! as much as the upload it saves; `verify` names such a blob and the way to repair it
//! (delete the object, then put the bytes again).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use opendal::{Buffer, Operator};
use stowage_core::{Body, ContentHash, ContentHasher, Error, Result};

use super::error::{is_not_found, is_precondition_failed, Target};
use super::layout::{blob_path, staging_path};
use super::PROVIDER;

/// A payload a version references is not in the bucket.
fn missing(path: &str, bucket: &str) -> Error {
    Error::corrupt(
        PROVIDER,
        format!("payload {path} is missing from bucket `{bucket}` although a version references it; run verify"),
    )
}

/// Whether a read failed because the blob holds fewer bytes than asked for. Ranges are
/// resolved against the size the version records, so on a content-addressed blob this means
/// the object was truncated: OpenDAL checks the length it receives against the one it asked for
/// ("reader got too little data"), and the server refuses a range that starts past the end
/// (416 `InvalidRange`).
fn is_short_read(e: &opendal::Error) -> bool {
    if e.kind() == opendal::ErrorKind::RangeNotSatisfied {
        return true;
    }
    let text = e.to_string();
    text.contains("too little data")
        || text.contains("InvalidRange")
        || text.contains("status: 416")
}

/// The `Corrupt` error of a blob shorter than its versions say.
fn truncated(path: &str, size: u64) -> Error {
    Error::corrupt(
        PROVIDER,
        format!("payload {path} is truncated: its versions say {size} bytes but it holds fewer; run verify"),
    )
}

/// How many parts of one upload are in flight at once (memory: about this + 1 parts).
const UPLOAD_CONCURRENCY: usize = 2;

/// Payload blobs of one store.
#[derive(Clone, Debug)]
pub(crate) struct BlobStore {
    op: Operator,
    target: Target,
    part_size: usize,
    /// A stored payload older than this is refreshed on a dedup hit (half of gc's grace
    /// period); `None` when gc's grace is zero and nothing is protected anyway.
    refresh_after: Option<Duration>,
}

/// What went wrong while streaming into a writer: the caller's body or the server.
enum UploadError {
    Body(Error),
    Server(opendal::Error),
}

impl BlobStore {
    /// A blob store over `op` with multipart parts of `part_size` bytes, for a store whose gc
    /// spares unreferenced payloads younger than `gc_grace`.
    pub(crate) fn new(op: Operator, target: Target, part_size: usize, gc_grace: Duration) -> Self {
        BlobStore {
            op,
            target,
            part_size,
            refresh_after: (!gc_grace.is_zero()).then(|| gc_grace / 2),
        }
    }

    /// Whether the stored payload at `path` (one `HeadObject`) must be written again, with
    /// the `size` bytes of this put, before a version may claim it: it is gone (a gc took it
    /// since the dedup hit), old enough for gc to take it before the claim, or not `size`
    /// bytes long (damaged: a truncated or overwritten object).
    ///
    /// The age is measured with this host's clock against the server's LastModified, so
    /// clock skew shifts the threshold: S3 refuses requests signed more than 15 minutes off
    /// the server's clock, which leaves the default hour's half at least a quarter hour of
    /// margin. LastModified is truncated to the second, which only overstates the age.
    async fn needs_rewrite(&self, path: &str, size: u64) -> Result<bool> {
        match self.op.stat(path).await {
            Ok(meta) => Ok(self.is_damaged(path, &meta, size) || self.is_stale(&meta)),
            Err(e) if is_not_found(&e) => Ok(true),
            Err(e) => Err(self
                .target
                .error(format_args!("checking payload {path}"), e)),
        }
    }

    /// Whether the stored payload at `path`, described by `meta`, is not the `size` bytes its
    /// name stands for (logged: the put that found it writes it again).
    fn is_damaged(&self, path: &str, meta: &opendal::Metadata, size: u64) -> bool {
        let stored = meta.content_length();
        if stored == size {
            return false;
        }
        tracing::warn!(target: "stowage_providers::s3", %path, stored, size, "the stored payload has the wrong size (damaged); writing it again");
        true
    }

    /// Whether a stored payload with this metadata is older than the refresh threshold.
    fn is_stale(&self, meta: &opendal::Metadata) -> bool {
        let Some(refresh_after) = self.refresh_after else {
            return false;
        };
        let Some(modified) = meta.last_modified() else {
            return true;
        };
        SystemTime::now()
            .duration_since(SystemTime::from(modified))
            .is_ok_and(|age| age > refresh_after)
    }

    /// Stores `body` (streamed) and returns its hash and size.
    pub(crate) async fn put(&self, mut body: Body) -> Result<(ContentHash, u64)> {
        if let Some(bytes) = body.as_bytes() {
            if bytes.len() <= self.part_size {
                let hash = ContentHash::of(bytes);
                let size = bytes.len() as u64;
                self.put_small(&hash, Buffer::from(bytes.clone())).await?;
                return Ok((hash, size));
            }
        }
        let mut hasher = ContentHasher::new();
        let mut head: Vec<Bytes> = Vec::new();
        let mut buffered = 0usize;
        while buffered <= self.part_size {
            match body.next_chunk().await {
                None => {
                    let (hash, size) = hasher.finish();
                    self.put_small(&hash, Buffer::from(head)).await?;
                    return Ok((hash, size));
                }
                Some(chunk) => {
                    let chunk = chunk?;
                    hasher.update(&chunk);
                    buffered += chunk.len();
                    head.push(chunk);
                }
            }
        }
        self.put_large(head, body, hasher).await
    }

    async fn put_small(&self, hash: &ContentHash, bytes: Buffer) -> Result<()> {
        let path = blob_path(hash);
        match self
            .op
            .write_with(&path, bytes.clone())
            .if_not_exists(true)
            .await
        {
            Ok(_) => Ok(()),
            // Same name, same bytes: the payload is stored already (dedup). An old one is
            // written again to renew its LastModified, and one of another size (damaged) to
            // repair it. Re-sending the bytes (at most one part, already in memory) is the one
            // refresh every S3 takes: a copy onto itself is refused by S3 unless it replaces
            // the object's metadata, and OpenDAL refuses it outright (`IsSameFile`).
            // Overwriting a content-addressed object with the same bytes changes nothing a
            // reader can see.
            Err(e) if is_precondition_failed(&e) => {
                if !self.needs_rewrite(&path, bytes.len() as u64).await? {
                    return Ok(());
                }
                self.op.write(&path, bytes).await.map(|_| ()).map_err(|e| {
                    self.target
                        .error(format_args!("writing payload {path} again"), e)
                })
            }
            Err(e) => Err(self
                .target
                .error(format_args!("uploading payload {path}"), e)),
        }
    }

    async fn put_large(
        &self,
        head: Vec<Bytes>,
        mut body: Body,
        mut hasher: ContentHasher,
    ) -> Result<(ContentHash, u64)> {
        let staging = staging_path();
        let mut writer = self
            .op
            .writer_with(&staging)
            .chunk(self.part_size)
            .concurrent(UPLOAD_CONCURRENCY)
            .await
            .map_err(|e| {
                self.target
                    .error(format_args!("starting the upload of {staging}"), e)
            })?;
        let streamed: std::result::Result<(), UploadError> = async {
            for chunk in head {
                writer.write(chunk).await.map_err(UploadError::Server)?;
            }
            while let Some(chunk) = body.next_chunk().await {
                let chunk = chunk.map_err(UploadError::Body)?;
                hasher.update(&chunk);
                writer.write(chunk).await.map_err(UploadError::Server)?;
            }
            writer.close().await.map_err(UploadError::Server)?;
            Ok(())
        }
        .await;
        if let Err(failure) = streamed {
            // Best effort: with the server gone the abort fails too, and the bucket's
            // lifecycle rule for incomplete multipart uploads reclaims the parts.
            if let Err(abort) = writer.abort().await {
                tracing::warn!(target: "stowage_providers::s3", %staging, error = %abort, "aborting a failed multipart upload failed");
            }
            return Err(match failure {
                UploadError::Body(e) => e,
                UploadError::Server(e) => self
                    .target
                    .error(format_args!("uploading payload to {staging}"), e),
            });
        }
        let (hash, size) = hasher.finish();
        let result = self.commit_staging(&staging, &hash, size).await;
        if let Err(e) = self.op.delete(&staging).await {
            tracing::warn!(target: "stowage_providers::s3", %staging, error = %e, "removing a staging object failed; gc removes it later");
        }
        result.map(|()| (hash, size))
    }

    async fn commit_staging(&self, staging: &str, hash: &ContentHash, size: u64) -> Result<()> {
        let path = blob_path(hash);
        // A stored duplicate that is old is overwritten by the copy too (same bytes, fresh
        // LastModified): a server-side copy, the cheapest refresh there is. So is one of
        // another size (damaged), which the copy repairs.
        let exists_fresh = match self.op.stat(&path).await {
            Ok(meta) => !self.is_damaged(&path, &meta, size) && !self.is_stale(&meta),
            Err(e) if is_not_found(&e) => false,
            Err(e) => {
                return Err(self
                    .target
                    .error(format_args!("checking payload {path}"), e))
            }
        };
        if exists_fresh {
            return Ok(());
        }
        self.op.copy(staging, &path).await.map_err(|e| {
            self.target
                .error(format_args!("copying {staging} to {path}"), e)
        })
    }

    /// Streams the payload `hash` of `size` bytes, or bytes `[offset, offset + len)` of it.
    /// A whole read is re-hashed on the fly and ends in `Corrupt` if the bytes differ.
    pub(crate) async fn read(
        &self,
        hash: ContentHash,
        size: u64,
        range: Option<(u64, u64)>,
    ) -> Result<Body> {
        let (offset, len) = range.unwrap_or((0, size));
        if len == 0 {
            return Ok(Body::empty());
        }
        let path = blob_path(&hash);
        let reader = self
            .op
            .reader(&path)
            .await
            .map_err(|e| self.read_error(&path, size, e))?;
        let stream = reader
            .into_bytes_stream(offset..offset + len)
            .await
            .map_err(|e| self.read_error(&path, size, e))?;
        let target = self.target.clone();
        let stream_path = path.clone();
        let stream =
            stream.map(move |r| r.map_err(|e| stream_error(&target, &stream_path, size, e)));
        let body = Body::from_stream(stream, Some(len));
        if range.is_some() {
            return Ok(body);
        }
        Ok(body.verified(hash, size, move |got, got_size| {
            Error::corrupt(
                PROVIDER,
                format!("payload {path} should be {hash} ({size} bytes) but reads as {got} ({got_size} bytes); run verify"),
            )
        }))
    }

    fn read_error(&self, path: &str, size: u64, e: opendal::Error) -> Error {
        if is_not_found(&e) {
            missing(path, self.target.bucket())
        } else if is_short_read(&e) {
            truncated(path, size)
        } else {
            self.target.error(format_args!("reading payload {path}"), e)
        }
    }

    /// Re-hashes a stored blob: `None` if it is missing, else its real hash and size.
    pub(crate) async fn rehash(&self, path: &str) -> Result<Option<(ContentHash, u64)>> {
        let reader = match self.op.reader(path).await {
            Ok(r) => r,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.target.error(format_args!("reading payload {path}"), e)),
        };
        let mut stream = match reader.into_bytes_stream(..).await {
            Ok(s) => s,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.target.error(format_args!("reading payload {path}"), e)),
        };
        let mut hasher = ContentHasher::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => hasher.update(&chunk),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(stream_error(&self.target, path, u64::MAX, e)),
            }
        }
        Ok(Some(hasher.finish()))
    }
}

/// An error of a payload's byte stream, in the same form as a failed request's (endpoint,
/// bucket, retries, hint): OpenDAL's stream errors are its own errors inside an `io::Error`.
/// `size` is what the payload should hold, for a read that ended short (`u64::MAX` when the
/// caller reads a payload whole without knowing it).
fn stream_error(target: &Target, path: &str, size: u64, e: std::io::Error) -> Error {
    let e = match e
        .into_inner()
        .map(|inner| inner.downcast::<opendal::Error>())
    {
        Some(Ok(dal)) if is_short_read(&dal) && size != u64::MAX => return truncated(path, size),
        // The request goes out when the stream is first polled.
        Some(Ok(dal)) if is_not_found(&dal) => return missing(path, target.bucket()),
        Some(Ok(dal)) => return target.error(format_args!("reading payload {path}"), *dal),
        Some(Err(other)) => std::io::Error::other(other),
        None => std::io::Error::other("the payload stream failed"),
    };
    Error::Backend {
        provider: PROVIDER.to_string(),
        message: format!(
            "reading payload {path} from {} (bucket `{}`) failed: {e}",
            target.endpoint(),
            target.bucket()
        ),
        source: Some(Box::new(e)),
    }
}
