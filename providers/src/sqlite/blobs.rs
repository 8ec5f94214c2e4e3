//! Payload storage: content-addressed blobs (`blobs`, one row per hash) split into `chunks` of
//! the configured size, or, for a payload of at most one chunk, held in the blob row itself.
//! Writes stream chunk by chunk while hashing; reads stream chunk by chunk and serve byte
//! ranges from only the chunks they cover; `gc` and `verify` work here too.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream;
use sqlx::sqlite::{SqliteConnection, SqlitePool};
use sqlx::{Connection, Row};
use stowage_core::{
    Body, ContentHash, ContentHasher, Error, GcReport, Progress, Result, VerifyProblem,
    VerifyReport,
};

use super::error::map_err;
use super::PROVIDER;

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

/// Streams `prefix` then `rest` into the chunks of a staged blob inside the caller's write
/// transaction, hashing as it goes. The hash is known only at the end, so chunks go under a
/// fresh blob id whose hash is filled in last; if that hash is stored already, the staged copy
/// is dropped (dedup). At most one chunk is held in memory.
pub(crate) async fn write_streamed(
    conn: &mut SqliteConnection,
    path: &Path,
    chunk_size: usize,
    prefix: Bytes,
    mut rest: Body,
) -> Result<(ContentHash, u64)> {
    let fail = |doing: &str, e: sqlx::Error| map_err(path, doing, e);
    let staged: i64 = sqlx::query_scalar(
        "INSERT INTO blobs (hash, size, chunk_size, chunk_count) VALUES (NULL, 0, ?1, 0) RETURNING id",
    )
    .bind(chunk_size as i64)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| fail("staging a payload", e))?;

    let mut hasher = ContentHasher::new();
    let mut buf = BytesMut::with_capacity(chunk_size);
    let mut idx: i64 = 0;
    let mut pending = Some(prefix);
    loop {
        let data = match pending.take() {
            Some(d) => d,
            None => match rest.next_chunk().await {
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
                insert_chunk(conn, path, staged, idx, &buf).await?;
                idx += 1;
                buf.clear();
            }
        }
    }
    if !buf.is_empty() {
        insert_chunk(conn, path, staged, idx, &buf).await?;
        idx += 1;
    }
    let (hash, size) = hasher.finish();
    let existing: Option<i64> = sqlx::query_scalar("SELECT id FROM blobs WHERE hash = ?1")
        .bind(&hash.as_bytes()[..])
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| fail("looking up a payload hash", e))?;
    if existing.is_some() {
        sqlx::query("DELETE FROM blobs WHERE id = ?1")
            .bind(staged)
            .execute(&mut *conn)
            .await
            .map_err(|e| fail("dropping a duplicate payload", e))?;
    } else {
        sqlx::query("UPDATE blobs SET hash = ?1, size = ?2, chunk_count = ?3 WHERE id = ?4")
            .bind(&hash.as_bytes()[..])
            .bind(size as i64)
            .bind(idx)
            .bind(staged)
            .execute(&mut *conn)
            .await
            .map_err(|e| fail("recording a payload hash", e))?;
    }
    Ok((hash, size))
}

async fn insert_chunk(
    conn: &mut SqliteConnection,
    path: &Path,
    blob_id: i64,
    idx: i64,
    data: &[u8],
) -> Result<()> {
    sqlx::query("INSERT INTO chunks (blob_id, idx, data) VALUES (?1, ?2, ?3)")
        .bind(blob_id)
        .bind(idx)
        .bind(data)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_err(path, "writing a payload chunk", e))?;
    Ok(())
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
        let data: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT data FROM chunks WHERE blob_id = ?1 AND idx = ?2")
                .bind(self.blob.id)
                .bind(idx as i64)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| map_err(&self.path, "reading a payload chunk", e))?;
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

/// Removes every blob no version references (their chunks go with them), then hands the freed
/// pages back to the file system.
pub(crate) async fn gc(
    conn: &mut SqliteConnection,
    path: &Path,
    progress: &dyn Progress,
) -> Result<GcReport> {
    let fail = |doing: &str, e: sqlx::Error| map_err(path, doing, e);
    let mut tx = conn
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(|e| fail("locking the database for gc", e))?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM blobs")
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| fail("counting payloads", e))?;
    progress.set_total(total as u64);
    let removed: Vec<i64> = sqlx::query_scalar(
        "DELETE FROM blobs WHERE NOT EXISTS (SELECT 1 FROM versions v WHERE v.hash = blobs.hash) RETURNING size",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| fail("removing unreferenced payloads", e))?;
    tx.commit().await.map_err(|e| fail("committing gc", e))?;
    progress.inc(total as u64);
    if !removed.is_empty() {
        sqlx::query("PRAGMA incremental_vacuum")
            .execute(&mut *conn)
            .await
            .map_err(|e| fail("returning freed pages to the file system", e))?;
    }
    Ok(GcReport {
        blobs_removed: removed.len() as u64,
        bytes_freed: removed.iter().map(|s| *s as u64).sum(),
        blobs_kept: (total as u64).saturating_sub(removed.len() as u64),
    })
}

/// Re-hashes every blob chunk by chunk and checks every version's reference, all in one read
/// snapshot so concurrent writers cannot cause false alarms.
pub(crate) async fn verify(
    pool: &SqlitePool,
    path: &Path,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let fail = |doing: &str, e: sqlx::Error| map_err(path, doing, e);
    let mut tx = pool.begin().await.map_err(|e| fail("starting verify", e))?;
    let mut report = VerifyReport::default();
    let (records, total_bytes): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM versions), (SELECT coalesce(sum(size), 0) FROM blobs)",
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
            detail: "no stored payload has this version's hash".into(),
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
            "SELECT id, hash, size, chunk_size, chunk_count, data IS NOT NULL FROM blobs WHERE id > ?1 ORDER BY id LIMIT 256",
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
            let chunk_size = row.get::<i64, _>(3) as u64;
            let chunks: i64 = row.get(4);
            let inline: bool = row.get(5);
            let Some(expected) = stored.as_deref().and_then(hash_from) else {
                report.problems.push(VerifyProblem {
                    namespace: None,
                    key: None,
                    version: None,
                    hash: None,
                    problem: "corrupt".into(),
                    detail: format!("payload row {id} has no valid hash (an unfinished write); `stowage gc` removes it"),
                });
                continue;
            };
            let layout = Layout {
                chunks,
                chunk_size,
                inline,
            };
            let found = rehash(&mut tx, path, id, layout, size).await?;
            report.blobs_checked += 1;
            report.bytes_checked += found.bytes;
            progress.inc(size);
            let detail = match found.problem {
                Some(p) => Some(p),
                None if found.hash != expected => {
                    Some(format!("payload hashes to {}, not {expected}", found.hash))
                }
                None => None,
            };
            if let Some(detail) = detail {
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

async fn rehash(
    conn: &mut SqliteConnection,
    path: &Path,
    blob_id: i64,
    layout: Layout,
    size: u64,
) -> Result<Rehash> {
    let Layout {
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
