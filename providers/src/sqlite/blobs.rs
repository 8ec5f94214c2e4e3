//! Payload storage: content-addressed blobs (`blobs`, one row per hash) split into `chunks` of
//! the configured size, or, for a payload of at most one chunk, held in the blob row itself.
//! Larger payloads are staged chunk by chunk while hashing, each chunk in a short transaction of
//! its own, and claimed by the put's final transaction; reads stream chunk by chunk and serve
//! byte ranges from only the chunks they cover; `gc` and `verify` work here too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream;
use sqlx::sqlite::{SqliteConnection, SqlitePool};
use sqlx::{Connection, Row};
use stowage_core::{
    Body, ContentHash, ContentHasher, Error, GcReport, Progress, Result, Timestamp, VerifyProblem,
    VerifyReport,
};

use super::error::map_err;
use super::writer::Writer;
use super::PROVIDER;
// A put of the same bytes finds a damaged stored row and writes the payload again (see
// `StagedBlob::claim_in` and the small put's upsert).
use crate::REPAIR_BY_REPUT;

/// A payload classified by size: one that fits a single chunk takes the one-statement fast path.
pub(crate) enum Payload {
    /// At most one chunk, in memory.
    Small(Bytes),
    /// More than one chunk: what was read to find out, and the rest of the stream.
    Large {
        /// Bytes already read from the body.
        prefix: Bytes,
        /// The unread rest.
        rest: Body,
    },
}

/// Reads just enough of `body` to tell whether it fits one chunk of `chunk_size` bytes.
pub(crate) async fn classify(mut body: Body, chunk_size: usize) -> Result<Payload> {
    if let Some(bytes) = body.as_bytes() {
        let bytes = bytes.clone();
        return Ok(if bytes.len() <= chunk_size {
            Payload::Small(bytes)
        } else {
            Payload::Large {
                prefix: bytes,
                rest: Body::empty(),
            }
        });
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next_chunk().await {
        buf.extend_from_slice(&chunk?);
        if buf.len() > chunk_size {
            return Ok(Payload::Large {
                prefix: buf.freeze(),
                rest: body,
            });
        }
    }
    Ok(Payload::Small(buf.freeze()))
}

/// Number of chunks a payload of `size` bytes takes.
pub(crate) fn chunk_count(size: u64, chunk_size: usize) -> i64 {
    size.div_ceil(chunk_size as u64) as i64
}

/// How long a staged payload may go without a sign of life (a chunk written, or a heartbeat
/// of its writer) before `gc` takes it for abandoned by a process that died mid-stream.
pub(crate) const ABANDONED_STAGING_AGE: Duration = Duration::from_secs(3600);

/// How often a stream that waits for its producer refreshes its staged payload's `staged_at`:
/// well inside [`ABANDONED_STAGING_AGE`], so `gc` never takes a live stream for abandoned.
const STAGING_HEARTBEAT: Duration = Duration::from_secs(600);

/// What staging a payload needs: the write connection it takes turns on, one chunk at a time.
#[derive(Clone)]
pub(crate) struct StagingContext {
    pub(crate) writer: Arc<Writer>,
    pub(crate) path: Arc<PathBuf>,
    pub(crate) chunk_size: usize,
    /// The configured `synchronous` is `full`: each chunk's commit relaxes it to `normal` (no
    /// fsync), the claim's commit keeps it (see [`StagedBlob::append`]).
    pub(crate) relax_sync: bool,
}

/// A payload larger than one chunk, staged under a blob row whose hash is NULL until a put
/// claims it. Its chunks are written in short transactions of their own, so neither other
/// processes nor this one's other writers wait for the producer of the stream.
///
/// Dropped unclaimed (the put failed or was cancelled), it removes its row and chunks in a
/// task of its own; if that cannot happen (the process died), `gc` removes them once they are
/// older than [`ABANDONED_STAGING_AGE`].
pub(crate) struct StagedBlob {
    ctx: StagingContext,
    /// The blob row, once the first chunk is written.
    id: Option<i64>,
    /// The `staged_at` this writer last wrote: every later statement on the row checks it, so a
    /// row removed by `gc` (and its id reused) is never mistaken for this one.
    staged_at: i64,
    /// The row and stamp of a chunk whose commit was sent but not seen to finish: a put
    /// cancelled right then leaves the commit to run on SQLite's thread, so the clean-up on
    /// drop must find the row by either stamp (and know its id from the first chunk's insert).
    pending: Option<(i64, i64)>,
    chunks: i64,
    size: u64,
    /// Set once written whole.
    hash: Option<ContentHash>,
    /// Set once a put's transaction took the row (claimed, deduplicated or discarded).
    settled: bool,
}

impl StagedBlob {
    /// The payload's hash and size, once staged whole.
    pub(crate) fn hash_and_size(&self) -> (ContentHash, u64) {
        (self.hash.expect("hashed when staged"), self.size)
    }

    /// A `staged_at` later than now and than the last one written.
    fn next_stamp(&self) -> i64 {
        Timestamp::now().as_micros().max(self.staged_at + 1)
    }

    fn lost(&self) -> Error {
        Error::backend(
            PROVIDER,
            format!(
                "the payload being streamed into {} was removed before the put finished (`gc` removes a staged payload that shows no progress for {} minutes); write it again",
                self.ctx.path.display(),
                ABANDONED_STAGING_AGE.as_secs() / 60
            ),
            std::io::Error::other("staged payload removed"),
        )
    }

    /// Appends one chunk in a transaction of its own, on this process's turn to write, and
    /// gives the turn back: other writers go between two chunks.
    ///
    /// Durability: the configured `synchronous = full` is relaxed to `normal` around this
    /// commit, so it appends its frames to the WAL without an fsync. The put's final commit
    /// (the claim, at `full`) fsyncs the WAL, and that covers every frame written before it:
    /// the WAL is appended to until a checkpoint has copied all of it into the database file
    /// and synced that (SQLite syncs the WAL before and the database after every checkpoint at
    /// `normal` too), and only then is it rewritten from the start. So an acknowledged put's
    /// chunks are durable. A power loss before the claim may lose some chunk frames, but then
    /// it loses the claim (a later frame of the same log, whose checksums chain) as well: no
    /// version ever points at missing chunks. Never `off`: that would skip the checkpoint's
    /// syncs, which guard other writers' data too.
    async fn append(&mut self, data: &[u8]) -> Result<()> {
        let path = self.ctx.path.clone();
        let fail = |doing: &str, e: sqlx::Error| map_err(&path, doing, e);
        let now = self.next_stamp();
        let mut turn = self.ctx.writer.turn().await;
        // Until `synchronous` is restored: if this future is dropped midway, the turn closes
        // the connection instead of keeping it relaxed (closing also rolls back).
        turn.start();
        let conn = turn.conn().await?;
        if self.ctx.relax_sync {
            sqlx::query("PRAGMA synchronous = NORMAL")
                .execute(&mut *conn)
                .await
                .map_err(|e| fail("staging a payload chunk", e))?;
        }
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| fail("locking the database for a payload chunk", e))?;
        let id = match self.id {
            None => sqlx::query_scalar(
                "INSERT INTO blobs (hash, size, chunk_size, chunk_count, staged_at)
                 VALUES (NULL, ?1, ?2, 1, ?3) RETURNING id",
            )
            .bind(data.len() as i64)
            .bind(self.ctx.chunk_size as i64)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| fail("staging a payload", e))?,
            Some(id) => {
                let touched = sqlx::query(
                    "UPDATE blobs SET size = size + ?1, chunk_count = chunk_count + 1, staged_at = ?2
                     WHERE id = ?3 AND hash IS NULL AND staged_at = ?4",
                )
                .bind(data.len() as i64)
                .bind(now)
                .bind(id)
                .bind(self.staged_at)
                .execute(&mut *tx)
                .await
                .map_err(|e| fail("staging a payload chunk", e))?
                .rows_affected();
                if touched != 1 {
                    return Err(self.lost());
                }
                id
            }
        };
        sqlx::query("INSERT INTO chunks (blob_id, idx, data) VALUES (?1, ?2, ?3)")
            .bind(id)
            .bind(self.chunks)
            .bind(data)
            .execute(&mut *tx)
            .await
            .map_err(|e| fail("writing a payload chunk", e))?;
        self.pending = Some((id, now));
        tx.commit()
            .await
            .map_err(|e| fail("committing a payload chunk", e))?;
        self.pending = None;
        self.id = Some(id);
        self.staged_at = now;
        self.chunks += 1;
        self.size += data.len() as u64;
        if self.ctx.relax_sync {
            sqlx::query("PRAGMA synchronous = FULL")
                .execute(&mut *conn)
                .await
                .map_err(|e| fail("staging a payload chunk", e))?;
        }
        turn.finish();
        Ok(())
    }

    /// The next piece of `body`; while the producer is silent, refreshes `staged_at` now and
    /// then, so `gc` sees the stream is alive.
    async fn next_from(&mut self, body: &mut Body) -> Option<Result<Bytes>> {
        loop {
            // `next_chunk` polls the body's stream, which loses nothing when dropped.
            match tokio::time::timeout(STAGING_HEARTBEAT, body.next_chunk()).await {
                Ok(next) => return next,
                Err(_) => self.heartbeat().await,
            }
        }
    }

    /// Best effort: a failed heartbeat (the lock held elsewhere) is tried again at the next.
    async fn heartbeat(&mut self) {
        let Some(id) = self.id else { return };
        let now = self.next_stamp();
        let mut turn = self.ctx.writer.turn().await;
        let Ok(conn) = turn.conn().await else { return };
        let done = sqlx::query(
            "UPDATE blobs SET staged_at = ?1 WHERE id = ?2 AND hash IS NULL AND staged_at = ?3",
        )
        .bind(now)
        .bind(id)
        .bind(self.staged_at)
        .execute(conn)
        .await;
        match done {
            Ok(r) if r.rows_affected() == 1 => self.staged_at = now,
            // Gone: the next chunk or the claim reports it.
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(path = %self.ctx.path.display(), error = %e, "could not refresh a staged payload")
            }
        }
    }

    /// Inside the put's transaction: takes the staged row for the payload (its hash filled
    /// in), or drops it if that payload is stored already, intact as far as can be told
    /// cheaply (dedup; see [`STORED_BLOB_SQL`]). A stored row found damaged is deleted with
    /// its chunks and the staged one takes its hash instead, so a re-put repairs it (the
    /// versions reference the hash, and their foreign key is checked at commit). Fails if the
    /// staged row is gone. Call [`Self::settle`] once the transaction is committed.
    pub(crate) async fn claim_in(&self, conn: &mut SqliteConnection) -> Result<()> {
        let fail = |doing: &str, e: sqlx::Error| map_err(&self.ctx.path, doing, e);
        let (hash, size) = self.hash_and_size();
        let id = self.id.expect("a payload of more than one chunk has a row");
        let mine: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM blobs WHERE id = ?1 AND hash IS NULL AND staged_at = ?2
             AND size = ?3 AND chunk_count = ?4",
        )
        .bind(id)
        .bind(self.staged_at)
        .bind(size as i64)
        .bind(self.chunks)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| fail("finding a staged payload", e))?;
        if mine.is_none() {
            return Err(self.lost());
        }
        let existing: Option<(i64, bool)> = sqlx::query_as(STORED_BLOB_SQL)
            .bind(&hash.as_bytes()[..])
            .bind(size as i64)
            .bind(COMPARE_STAGED_MAX as i64)
            .bind(self.ctx.chunk_size as i64)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| fail("looking up a payload hash", e))?;
        if let Some((_, true)) = existing {
            self.discard_in(conn).await
        } else {
            if let Some((damaged, _)) = existing {
                tracing::warn!(path = %self.ctx.path.display(), payload = %hash, "the stored payload is damaged; replacing it with the copy this put streamed");
                sqlx::query("DELETE FROM blobs WHERE id = ?1")
                    .bind(damaged)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| fail("removing a damaged payload", e))?;
            }
            sqlx::query("UPDATE blobs SET hash = ?1, staged_at = NULL WHERE id = ?2")
                .bind(&hash.as_bytes()[..])
                .bind(id)
                .execute(&mut *conn)
                .await
                .map_err(|e| fail("recording a payload hash", e))?;
            Ok(())
        }
    }

    /// Inside the put's transaction: removes the staged row and its chunks (a duplicate, or a
    /// put refused by its precondition). Call [`Self::settle`] once committed.
    pub(crate) async fn discard_in(&self, conn: &mut SqliteConnection) -> Result<()> {
        let Some(id) = self.id else { return Ok(()) };
        sqlx::query("DELETE FROM blobs WHERE id = ?1 AND hash IS NULL AND staged_at = ?2")
            .bind(id)
            .bind(self.staged_at)
            .execute(&mut *conn)
            .await
            .map_err(|e| map_err(&self.ctx.path, "dropping a staged payload", e))?;
        Ok(())
    }

    /// The put's transaction that claimed or discarded the row is committed: nothing is left to
    /// clean up.
    pub(crate) fn settle(&mut self) {
        self.settled = true;
    }
}

impl Drop for StagedBlob {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (id, pending_stamp) = match (self.id, self.pending) {
            (_, Some((id, stamp))) => (id, stamp),
            (Some(id), None) => (id, self.staged_at),
            (None, None) => return,
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (writer, path, staged_at) = (
            self.ctx.writer.clone(),
            self.ctx.path.clone(),
            self.staged_at,
        );
        runtime.spawn(async move {
            let mut turn = writer.turn().await;
            let Ok(conn) = turn.conn().await else { return };
            let removed = sqlx::query(
                "DELETE FROM blobs WHERE id = ?1 AND hash IS NULL AND staged_at IN (?2, ?3)",
            )
            .bind(id)
            .bind(staged_at)
            .bind(pending_stamp)
            .execute(conn)
            .await;
            if let Err(e) = removed {
                tracing::debug!(path = %path.display(), error = %e, "could not remove the staged payload of a failed put; gc will");
            }
        });
    }
}

/// A streamed payload at most this large that is stored already is compared byte for byte
/// with the copy just staged (reading both, at most twice this, mostly from the page cache)
/// before the staged copy is dropped; a larger one only by its layout (see
/// [`STORED_BLOB_SQL`]), since reading it would cost as much as the put itself.
const COMPARE_STAGED_MAX: u64 = 1024 * 1024;

/// The stored blob of a hash (`?1`) a streamed put of `?2` bytes has staged under row `?5`
/// (chunks of `?4` bytes): its id and whether it looks intact. Its size must be the payload's
/// and its chunk count must match its size and chunk size; a row holding its payload in `data`
/// must hold that many bytes; one kept in `chunks` must have exactly its chunks, numbered from
/// 0, holding that many bytes in all (`length` of a blob reads no overflow page). Up to `?3`
/// bytes, a payload chunked like the staged copy is also compared chunk by chunk with it, which
/// finds a flipped bit too. One statement, in place of the plain look-up a dedup needs anyway.
const STORED_BLOB_SQL: &str = "
SELECT e.id, coalesce(
    e.size = ?2 AND e.chunk_size > 0
    AND e.chunk_count = (e.size + e.chunk_size - 1) / e.chunk_size
    AND CASE WHEN e.data IS NOT NULL THEN length(e.data) = e.size AND e.chunk_count <= 1
        ELSE (SELECT count(*) = e.chunk_count AND coalesce(sum(length(c.data)), 0) = e.size
                  AND coalesce(max(c.idx), -1) = e.chunk_count - 1
              FROM chunks c WHERE c.blob_id = e.id)
        END
    AND (e.size > ?3 OR e.data IS NOT NULL OR e.chunk_size IS NOT ?4
        OR NOT EXISTS (SELECT 1 FROM chunks a JOIN chunks b ON b.blob_id = ?5 AND b.idx = a.idx
                       WHERE a.blob_id = e.id AND a.data IS NOT b.data)), 0)
FROM blobs e WHERE e.hash = ?1";

/// Streams `prefix` then `rest` into a [`StagedBlob`], hashing as it goes, one chunk per
/// transaction; at most one chunk is held in memory. The caller claims it in the put's
/// transaction. A failure (of the body or of SQLite) drops what was staged.
pub(crate) async fn stage_streamed(
    ctx: StagingContext,
    prefix: Bytes,
    mut rest: Body,
) -> Result<StagedBlob> {
    let chunk_size = ctx.chunk_size;
    let mut staged = StagedBlob {
        ctx,
        id: None,
        staged_at: 0,
        pending: None,
        chunks: 0,
        size: 0,
        hash: None,
        settled: false,
    };
    let mut hasher = ContentHasher::new();
    let mut buf = BytesMut::with_capacity(chunk_size);
    let mut pending = Some(prefix);
    loop {
        let data = match pending.take() {
            Some(d) => d,
            None => match staged.next_from(&mut rest).await {
                Some(chunk) => chunk?,
                None => break,
            },
        };
        hasher.update(&data);
        let mut data = &data[..];
        while !data.is_empty() {
            let take = (chunk_size - buf.len()).min(data.len());
            buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if buf.len() == chunk_size {
                staged.append(&buf).await?;
                buf.clear();
            }
        }
    }
    if !buf.is_empty() {
        staged.append(&buf).await?;
    }
    let (hash, size) = hasher.finish();
    debug_assert_eq!(size, staged.size);
    staged.hash = Some(hash);
    Ok(staged)
}

/// Where a stored payload lives, as read beside a record.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlobRef {
    /// Row id in `blobs`.
    pub id: i64,
    /// The chunk size this payload was written with.
    pub chunk_size: u64,
    /// Payload size.
    pub size: u64,
    /// The payload's hash.
    pub hash: ContentHash,
}

/// What a [`ChunkReader`] needs to stream part of a payload.
pub(crate) struct ChunkReader {
    /// Pool to read further chunks through.
    pub pool: SqlitePool,
    /// Database file, for messages.
    pub path: Arc<PathBuf>,
    /// `ns/key@version`, for messages.
    pub label: String,
    /// The payload.
    pub blob: BlobRef,
    /// First byte to return.
    pub start: u64,
    /// How many bytes to return.
    pub len: u64,
    /// The chunk holding `start`, when it was read already.
    pub first: Option<Bytes>,
}

struct ReadState {
    reader: ChunkReader,
    idx: u64,
    skip: usize,
    remaining: u64,
    /// Set on a whole-payload read: the hash is checked after the last chunk.
    hasher: Option<ContentHasher>,
}

impl ChunkReader {
    /// The payload bytes `[start, start + len)` as a body that reads one chunk at a time and,
    /// for a whole-payload read, fails at the end if the bytes do not match the hash.
    pub(crate) fn into_body(self) -> Result<Body> {
        let cs = self.blob.chunk_size.max(1);
        let whole = self.start == 0 && self.len == self.blob.size;
        // The common case of a small payload: the chunk read with the record holds every
        // wanted byte, so no stream is needed.
        if let Some(first) = &self.first {
            let skip = self.start % cs;
            if skip + self.len <= first.len() as u64 {
                self.check_len(self.start / cs, first)?;
                if whole {
                    let hash = ContentHash::of(first);
                    if hash != self.blob.hash {
                        return Err(self.mismatch(hash));
                    }
                }
                return Ok(Body::from_bytes(
                    first.slice(skip as usize..(skip + self.len) as usize),
                ));
            }
        }
        let state = ReadState {
            idx: self.start / cs,
            skip: (self.start % cs) as usize,
            remaining: self.len,
            hasher: whole.then(ContentHasher::new),
            reader: self,
        };
        let size = state.remaining;
        let stream = stream::try_unfold(state, |mut st| async move {
            if st.remaining == 0 {
                if let Some(hasher) = st.hasher.take() {
                    let (hash, _) = hasher.finish();
                    if hash != st.reader.blob.hash {
                        return Err(st.reader.mismatch(hash));
                    }
                }
                return Ok(None);
            }
            let data = match st.reader.first.take() {
                Some(d) => d,
                None => st.reader.fetch(st.idx).await?,
            };
            st.reader.check_len(st.idx, &data)?;
            if let Some(h) = st.hasher.as_mut() {
                h.update(&data);
            }
            st.idx += 1;
            let end = (st.skip as u64 + st.remaining).min(data.len() as u64) as usize;
            let piece = data.slice(st.skip..end);
            st.skip = 0;
            st.remaining -= piece.len() as u64;
            Ok(Some((piece, st)))
        });
        Ok(Body::from_stream(stream, Some(size)))
    }

    fn mismatch(&self, found: ContentHash) -> Error {
        Error::corrupt(
            PROVIDER,
            format!(
                "payload of {} in {} hashes to {found}, not {}; run `stowage verify`",
                self.label,
                self.path.display(),
                self.blob.hash
            ),
        )
    }

    fn check_len(&self, idx: u64, data: &Bytes) -> Result<()> {
        let cs = self.blob.chunk_size;
        let expected = cs.min(self.blob.size.saturating_sub(idx * cs));
        if data.len() as u64 != expected {
            return Err(Error::corrupt(
                PROVIDER,
                format!(
                    "chunk {idx} of the payload of {} in {} has {} bytes, expected {expected}; run `stowage verify`",
                    self.label,
                    self.path.display(),
                    data.len()
                ),
            ));
        }
        Ok(())
    }

    async fn fetch(&self, idx: u64) -> Result<Bytes> {
        // Each chunk is read in a statement of its own, so the blob row must still be the one
        // the read started on: a row id freed by a purge and `gc` is given to the next blob
        // written, and its chunks are another record's bytes (of any namespace).
        let row: Option<(Option<Vec<u8>>,)> = sqlx::query_as(
            "SELECT (SELECT data FROM chunks WHERE blob_id = b.id AND idx = ?2)
             FROM blobs b WHERE b.id = ?1 AND b.hash = ?3",
        )
        .bind(self.blob.id)
        .bind(idx as i64)
        .bind(&self.blob.hash.as_bytes()[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| map_err(&self.path, "reading a payload chunk", e))?;
        let Some((data,)) = row else {
            return Err(Error::backend(
                PROVIDER,
                format!(
                    "the payload of {} was removed from {} while it was being read (its record \
                     was purged and `gc` collected the bytes); nothing more of it can be read",
                    self.label,
                    self.path.display()
                ),
                "payload removed mid-read",
            ));
        };
        data.map(Bytes::from).ok_or_else(|| {
            Error::corrupt(
                PROVIDER,
                format!(
                    "chunk {idx} of the payload of {} is missing from {} (removed while reading, or damaged); run `stowage verify`",
                    self.label,
                    self.path.display()
                ),
            )
        })
    }
}

/// Blobs one `gc` transaction deletes, at most.
const GC_BATCH_BLOBS: usize = 256;
/// Payload bytes one `gc` transaction deletes, about: SQLite reads every page it frees (an
/// overflow page holds the link to the next), at a few hundred MB/s, so 16 MiB keeps each
/// transaction, and the write lock other writers wait for, to tens of milliseconds. A larger
/// payload goes in pieces ([`gc_large`]).
const GC_BATCH_BYTES: i64 = 16 << 20;
/// Pages one `PRAGMA incremental_vacuum(N)` step hands back to the file system (16 MiB at the
/// default 4 KiB page), each step a write transaction of its own.
const GC_VACUUM_STEP_PAGES: i64 = 4096;

/// Whether the row of `blobs` is garbage: a payload no version references, or a staged one
/// whose `staged_at` is older than `?1` (abandoned by a process killed mid-stream; a live
/// stream refreshes it more often). Checked again in every transaction that deletes, so a put
/// that references the payload again meanwhile keeps it.
macro_rules! gc_doomed {
    () => {
        "CASE WHEN blobs.hash IS NULL THEN coalesce(blobs.staged_at, 0) < ?1
              ELSE NOT EXISTS (SELECT 1 FROM versions v WHERE v.hash = blobs.hash) END"
    };
}

/// Removes every blob no version references (their chunks go with them) and every staged
/// payload abandoned for longer than [`ABANDONED_STAGING_AGE`] (a live stream refreshes its
/// `staged_at` more often), then hands the free pages back to the file system.
///
/// In bounded steps, each a short write transaction on this process's turn at the write
/// connection, so other writers, in this process and in others, get the lock between two
/// steps instead of waiting (and failing after `busy_timeout_ms`) for the whole run. Candidates
/// are found by reads that hold no lock; each step checks again, under the lock, that its
/// blobs are still garbage. The vacuum runs whenever the file has free pages, not only after
/// deleting: a `gc` killed between its deletes and its vacuum leaves them to the next one.
pub(crate) async fn gc(
    pool: &SqlitePool,
    writer: &Arc<Writer>,
    path: &Path,
    progress: &dyn Progress,
) -> Result<GcReport> {
    let fail = |doing: &str, e: sqlx::Error| map_err(path, doing, e);
    let abandoned_before = abandoned_before();
    // Payloads gc looks at: a live stream's staging is none of its business.
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM blobs WHERE hash IS NOT NULL OR coalesce(staged_at, 0) < ?1",
    )
    .bind(abandoned_before)
    .fetch_one(pool)
    .await
    .map_err(|e| fail("counting payloads", e))?;
    progress.set_total(total as u64);
    let mut removed = Removed::default();
    let mut looked_at = 0;
    let mut after = i64::MIN;
    loop {
        // Ordered by id from where the last look stopped: one pass over the table in all.
        let found: Vec<(i64, i64, i64)> = sqlx::query_as(concat!(
            "SELECT id, size, chunk_size FROM blobs WHERE id > ?2 AND ",
            gc_doomed!(),
            " ORDER BY id LIMIT ?3"
        ))
        .bind(abandoned_before)
        .bind(after)
        .bind(GC_BATCH_BLOBS as i64)
        .fetch_all(pool)
        .await
        .map_err(|e| fail("finding unreferenced payloads", e))?;
        let Some(&(last, _, _)) = found.last() else {
            break;
        };
        after = last;
        looked_at += found.len() as u64;
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        for (id, size, chunk_size) in found {
            if size > GC_BATCH_BYTES {
                gc_large(writer, path, abandoned_before, id, chunk_size, &mut removed).await?;
                progress.inc(1);
                continue;
            }
            if batch_bytes + size > GC_BATCH_BYTES {
                gc_batch(writer, path, abandoned_before, &batch, &mut removed).await?;
                progress.inc(batch.len() as u64);
                batch.clear();
                batch_bytes = 0;
            }
            batch.push(id);
            batch_bytes += size;
        }
        gc_batch(writer, path, abandoned_before, &batch, &mut removed).await?;
        progress.inc(batch.len() as u64);
    }
    // The candidates were counted as they went; the kept payloads all at once.
    progress.inc((total as u64).saturating_sub(looked_at));
    vacuum(writer, path).await?;
    Ok(GcReport {
        blobs_removed: removed.blobs,
        bytes_freed: removed.bytes,
        blobs_kept: (total as u64).saturating_sub(removed.blobs),
    })
}

/// What `gc` removed so far.
#[derive(Default)]
struct Removed {
    blobs: u64,
    bytes: u64,
}

/// Deletes the blobs `ids` that are still garbage, with their chunks (at most
/// [`GC_BATCH_BYTES`] of payload in all), in one write transaction.
async fn gc_batch(
    writer: &Arc<Writer>,
    path: &Path,
    abandoned_before: i64,
    ids: &[i64],
    removed: &mut Removed,
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let fail = |doing: &str, e: sqlx::Error| map_err(path, doing, e);
    // The ids as a JSON array: one bound parameter however many there are.
    let ids = serde_json::to_string(ids).expect("integers serialise");
    let mut turn = writer.turn().await;
    let mut tx = turn
        .conn()
        .await?
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(|e| fail("locking the database for gc", e))?;
    let sizes: Vec<i64> = sqlx::query_scalar(concat!(
        "DELETE FROM blobs WHERE id IN (SELECT value FROM json_each(?2)) AND ",
        gc_doomed!(),
        " RETURNING size"
    ))
    .bind(abandoned_before)
    .bind(ids)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| fail("removing unreferenced payloads", e))?;
    tx.commit().await.map_err(|e| fail("committing gc", e))?;
    removed.blobs += sizes.len() as u64;
    removed.bytes += sizes.iter().map(|s| *s as u64).sum::<u64>();
    Ok(())
}

/// Deletes one blob larger than [`GC_BATCH_BYTES`], if it is still garbage, in pieces: first it
/// is turned, in one short transaction that checks it is garbage, into a staged row abandoned
/// long ago (`hash` NULL, `staged_at` 0), which no put dedups against, no stream writes into
/// (a stream checks its own `staged_at`) and any later `gc` removes, should this one be killed
/// midway; then its chunks go [`GC_BATCH_BYTES`] at a time, each piece a transaction; then the
/// row. The row stays until its chunks are gone, so its id is not reused meanwhile.
async fn gc_large(
    writer: &Arc<Writer>,
    path: &Path,
    abandoned_before: i64,
    id: i64,
    chunk_size: i64,
    removed: &mut Removed,
) -> Result<()> {
    let fail = |doing: &str, e: sqlx::Error| map_err(path, doing, e);
    {
        let mut turn = writer.turn().await;
        let mut tx = turn
            .conn()
            .await?
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| fail("locking the database for gc", e))?;
        let taken = sqlx::query(concat!(
            "UPDATE blobs SET hash = NULL, staged_at = 0 WHERE id = ?2 AND ",
            gc_doomed!()
        ))
        .bind(abandoned_before)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| fail("marking an unreferenced payload for removal", e))?
        .rows_affected();
        tx.commit().await.map_err(|e| fail("committing gc", e))?;
        if taken == 0 {
            return Ok(()); // referenced again meanwhile, or removed by another gc
        }
    }
    let per_step = (GC_BATCH_BYTES / chunk_size.max(1)).max(1);
    loop {
        let mut turn = writer.turn().await;
        // One statement: autocommit makes it a transaction of its own. Only while the row is
        // still the one marked above (another `gc` may have finished it, and a new row may have
        // its id since).
        let gone = sqlx::query(
            "DELETE FROM chunks WHERE blob_id = ?1 AND idx IN (
                 SELECT idx FROM chunks WHERE blob_id = ?1 ORDER BY idx DESC LIMIT ?2)
             AND EXISTS (SELECT 1 FROM blobs WHERE id = ?1 AND hash IS NULL AND staged_at = 0)",
        )
        .bind(id)
        .bind(per_step)
        .execute(turn.conn().await?)
        .await
        .map_err(|e| fail("removing the chunks of an unreferenced payload", e))?
        .rows_affected();
        if gone == 0 {
            break;
        }
    }
    let mut turn = writer.turn().await;
    let size: Option<i64> = sqlx::query_scalar(
        "DELETE FROM blobs WHERE id = ?1 AND hash IS NULL AND staged_at = 0 RETURNING size",
    )
    .bind(id)
    .fetch_optional(turn.conn().await?)
    .await
    .map_err(|e| fail("removing an unreferenced payload", e))?;
    if let Some(size) = size {
        removed.blobs += 1;
        removed.bytes += size as u64;
    }
    Ok(())
}

/// Hands the file's free pages back to the file system, [`GC_VACUUM_STEP_PAGES`] per write
/// transaction, for as long as there are any and each step makes their number shrink (other
/// writers free pages too; what they free meanwhile is left to the next `gc`). Nothing to do
/// in a file created without `auto_vacuum = INCREMENTAL`.
async fn vacuum(writer: &Arc<Writer>, path: &Path) -> Result<()> {
    let fail = |doing: &str, e: sqlx::Error| map_err(path, doing, e);
    let mut before = i64::MAX;
    loop {
        let mut turn = writer.turn().await;
        let conn = turn.conn().await?;
        if before == i64::MAX {
            let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| fail("reading the auto_vacuum mode", e))?;
            // 2 = incremental; 0 (none) and 1 (full) have nothing for incremental_vacuum.
            if mode != 2 {
                return Ok(());
            }
        }
        let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| fail("counting free pages", e))?;
        if free == 0 || free >= before {
            return Ok(());
        }
        before = free;
        // PRAGMA arguments cannot be bound; this one is a compile-time integer.
        sqlx::query(&format!(
            "PRAGMA incremental_vacuum({GC_VACUUM_STEP_PAGES})"
        ))
        .execute(&mut *conn)
        .await
        .map_err(|e| fail("returning freed pages to the file system", e))?;
    }
}

/// The `staged_at` before which a staged payload counts as abandoned.
fn abandoned_before() -> i64 {
    Timestamp::now().as_micros() - ABANDONED_STAGING_AGE.as_micros() as i64
}

/// Re-hashes every blob chunk by chunk and checks every version's reference, all in one read
/// snapshot so concurrent writers cannot cause false alarms. Staged payloads (a put streaming
/// now, or one abandoned by a process that died) are not part of the store yet and are not
/// checked; abandoned ones are mentioned in the log, since `gc` removes them.
/// `chunk_size` is the configured one, which decides the path a put of a payload takes and so
/// which repair `verify` can offer (see [`repair_hint`]).
pub(crate) async fn verify(
    pool: &SqlitePool,
    path: &Path,
    chunk_size: usize,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let fail = |doing: &str, e: sqlx::Error| map_err(path, doing, e);
    let mut tx = pool.begin().await.map_err(|e| fail("starting verify", e))?;
    let mut report = VerifyReport::default();
    let (records, total_bytes): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM versions),
                (SELECT coalesce(sum(size), 0) FROM blobs WHERE hash IS NOT NULL)",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| fail("counting records", e))?;
    report.records_checked = records as u64;
    progress.set_total(total_bytes as u64);

    let missing = sqlx::query(
        "SELECT v.ns, v.key, v.version, v.hash FROM versions v
         LEFT JOIN blobs b ON b.hash = v.hash WHERE b.id IS NULL ORDER BY v.ns, v.key, v.version",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| fail("checking payload references", e))?;
    for row in missing {
        let hash = hash_from(row.get::<Vec<u8>, _>(3).as_slice());
        report.problems.push(VerifyProblem {
            namespace: Some(row.get(0)),
            key: Some(row.get(1)),
            version: Some(row.get::<i64, _>(2) as u64),
            hash,
            problem: "missing".into(),
            detail: format!("no stored payload has this version's hash; {REPAIR_BY_REPUT}"),
        });
    }
    let mismatched = sqlx::query(
        "SELECT v.ns, v.key, v.version, v.hash, v.size, b.size FROM versions v
         JOIN blobs b ON b.hash = v.hash WHERE v.size != b.size ORDER BY v.ns, v.key, v.version",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| fail("checking payload sizes", e))?;
    for row in mismatched {
        report.problems.push(VerifyProblem {
            namespace: Some(row.get(0)),
            key: Some(row.get(1)),
            version: Some(row.get::<i64, _>(2) as u64),
            hash: hash_from(row.get::<Vec<u8>, _>(3).as_slice()),
            problem: "corrupt".into(),
            detail: format!(
                "the version says {} bytes but the stored payload has {}",
                row.get::<i64, _>(4),
                row.get::<i64, _>(5)
            ),
        });
    }

    let mut after: i64 = 0;
    loop {
        let batch = sqlx::query(
            "SELECT id, hash, size, chunk_size, chunk_count, data IS NOT NULL FROM blobs
             WHERE id > ?1 AND hash IS NOT NULL ORDER BY id LIMIT 256",
        )
        .bind(after)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| fail("listing payloads", e))?;
        if batch.is_empty() {
            break;
        }
        for row in batch {
            let id: i64 = row.get(0);
            after = id;
            let stored: Option<Vec<u8>> = row.get(1);
            let size = row.get::<i64, _>(2) as u64;
            let blob_chunk_size = row.get::<i64, _>(3) as u64;
            let chunks: i64 = row.get(4);
            let inline: bool = row.get(5);
            let Some(expected) = stored.as_deref().and_then(hash_from) else {
                report.problems.push(VerifyProblem {
                    namespace: None,
                    key: None,
                    version: None,
                    hash: None,
                    problem: "corrupt".into(),
                    detail: format!("payload row {id} has a malformed hash"),
                });
                continue;
            };
            let layout = Layout {
                chunks,
                chunk_size: blob_chunk_size,
                inline,
            };
            let found = rehash(&mut tx, path, id, &layout, size).await?;
            report.blobs_checked += 1;
            report.bytes_checked += found.bytes;
            progress.inc(size);
            let detail = match found.problem {
                Some(p) => Some((p, REPAIR_BY_REPUT)),
                None if found.hash != expected => Some((
                    format!("payload hashes to {}, not {expected}", found.hash),
                    repair_hint(&layout, size, chunk_size as u64),
                )),
                None => None,
            };
            if let Some((detail, repair)) = detail {
                let owners = sqlx::query(
                    "SELECT ns, key, version FROM versions WHERE hash = ?1 ORDER BY ns, key, version",
                )
                .bind(&expected.as_bytes()[..])
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| fail("finding the records of a damaged payload", e))?;
                if owners.is_empty() {
                    report.problems.push(VerifyProblem {
                        namespace: None,
                        key: None,
                        version: None,
                        hash: Some(expected),
                        problem: "corrupt".into(),
                        detail: format!("{detail} (no record uses it; `stowage gc` removes it)"),
                    });
                }
                let detail = format!("{detail}; {repair}");
                for owner in owners {
                    report.problems.push(VerifyProblem {
                        namespace: Some(owner.get(0)),
                        key: Some(owner.get(1)),
                        version: Some(owner.get::<i64, _>(2) as u64),
                        hash: Some(expected),
                        problem: "corrupt".into(),
                        detail: detail.clone(),
                    });
                }
            }
        }
    }
    let (abandoned, abandoned_bytes): (i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(size), 0) FROM blobs
         WHERE hash IS NULL AND coalesce(staged_at, 0) < ?1",
    )
    .bind(abandoned_before())
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| fail("counting abandoned staged payloads", e))?;
    if abandoned > 0 {
        tracing::info!(
            path = %path.display(),
            payloads = abandoned,
            bytes = abandoned_bytes,
            "payloads staged by puts that stopped over an hour ago (a killed process); `stowage gc` removes them"
        );
    }
    tx.commit().await.map_err(|e| fail("ending verify", e))?;
    Ok(report)
}

struct Rehash {
    hash: ContentHash,
    bytes: u64,
    problem: Option<String>,
}

/// How a blob row says its payload is stored.
struct Layout {
    chunks: i64,
    chunk_size: u64,
    /// In the row's `data` column rather than in `chunks`.
    inline: bool,
}

/// How to repair a stored payload (`layout`, `size` bytes) whose bytes changed but kept their
/// layout (every chunk its length: a flipped bit), given the configured `chunk_size`: a put of
/// the same bytes sees that only where it compares content. A payload of at most one chunk is
/// put in one statement that compares its `data` (or its only chunk); a larger one is claimed
/// with a comparison chunk by chunk up to [`COMPARE_STAGED_MAX`], when chunked alike.
fn repair_hint(layout: &Layout, size: u64, chunk_size: u64) -> &'static str {
    let put_compares = if size <= chunk_size {
        layout.inline || layout.chunks <= 1
    } else {
        !layout.inline && size <= COMPARE_STAGED_MAX && layout.chunk_size == chunk_size
    };
    if put_compares {
        REPAIR_BY_REPUT
    } else {
        "a put of the same bytes does not see this damage (the stored chunks kept their lengths, and comparing a payload this large would cost a full read): purge every version that references it, run `stowage gc`, then put it again"
    }
}

async fn rehash(
    conn: &mut SqliteConnection,
    path: &Path,
    blob_id: i64,
    layout: &Layout,
    size: u64,
) -> Result<Rehash> {
    let &Layout {
        chunks,
        chunk_size,
        inline,
    } = layout;
    let mut hasher = ContentHasher::new();
    let mut problem = None;
    if chunk_count(size, chunk_size.max(1) as usize) != chunks {
        problem = Some(format!(
            "payload of {size} bytes claims {chunks} chunks of {chunk_size} bytes"
        ));
    }
    if inline {
        if chunks > 1 {
            problem.get_or_insert_with(|| {
                format!("payload of {chunks} chunks is stored in its blob row, which holds one")
            });
        }
        let data: Vec<u8> = sqlx::query_scalar("SELECT data FROM blobs WHERE id = ?1")
            .bind(blob_id)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| map_err(path, "reading a payload", e))?;
        hasher.update(&data);
    }
    let chunk_rows = if inline { 0 } else { chunks };
    for idx in 0..chunk_rows {
        let data: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT data FROM chunks WHERE blob_id = ?1 AND idx = ?2")
                .bind(blob_id)
                .bind(idx)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| map_err(path, "reading a payload chunk", e))?;
        match data {
            Some(d) => hasher.update(&d),
            None => {
                problem.get_or_insert_with(|| format!("chunk {idx} of {chunks} is missing"));
            }
        }
    }
    let (hash, bytes) = hasher.finish();
    if problem.is_none() && bytes != size {
        problem = Some(format!("payload has {bytes} bytes, expected {size}"));
    }
    Ok(Rehash {
        hash,
        bytes,
        problem,
    })
}

/// A stored 32-byte hash, or `None` if the column holds something else.
pub(crate) fn hash_from(bytes: &[u8]) -> Option<ContentHash> {
    <[u8; 32]>::try_from(bytes)
        .ok()
        .map(ContentHash::from_bytes)
}
