//! Small puts: the one-round-trip write of a payload that fits one chunk, and group commit —
//! puts that arrive while another write holds the lock are written together in one transaction,
//! sent to SQLite in one round trip, so concurrent writers share a commit instead of queueing
//! for one each.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::TryStreamExt;
use sqlx::sqlite::{Sqlite, SqliteArguments};
use sqlx::{Either, Row};
use stowage_core::{ContentHash, Error, Key, Namespace, PutMode, Result, Timestamp};
use tokio::sync::oneshot;

use super::blobs::chunk_count;
use super::error::map_err;
use super::writer::{WriteTurn, Writer};
use super::PROVIDER;

/// A put of a payload that fits one chunk, as a single round trip: the version row is written
/// only if the precondition holds (`mode` 0 overwrite, 1 create, 2 if-version `expected`); the
/// blob, holding the payload in its own row (`blobs.data`, schema version 3), only if the
/// version was written (`changes()` chains them) and the hash is new, or its stored row no
/// longer holds the payload: a row damaged since it was written (its `data`, size or chunk
/// count changed; for a row kept in `chunks`, a chunk count or a first chunk that differs) is
/// rewritten with the payload, so a re-put repairs it. On a healthy duplicate that costs the
/// conflicting row's read and a comparison, no write; the `WHERE` of the upsert decides it in
/// the same statement. The `versions_track_latest` trigger maintains `latest`, `tags` and
/// `attrs`.
/// Parameters are anonymous: sqlx hands them out in order across the statements of a batch
/// (numbered ones would be re-bound from the start in every statement).
macro_rules! put_small_statements {
    () => {
        "
INSERT INTO versions (ns, key, version, hash, size, created_at, updated_at, deleted_at, metadata)
    SELECT p.ns, p.key, coalesce(l.version, 0) + 1, p.hash, p.size, coalesce(l.created_at, p.now),
           max(p.now, coalesce(l.updated_at, p.now)), NULL, p.metadata
    FROM (SELECT ? AS ns, ? AS key, ? AS hash, ? AS size, ? AS now, ? AS metadata, ? AS mode,
                 ? AS expected) p
    LEFT JOIN latest l ON l.ns = p.ns AND l.key = p.key
    WHERE CASE p.mode WHEN 0 THEN 1
                      WHEN 1 THEN l.version IS NULL OR l.deleted_at IS NOT NULL
                      ELSE coalesce(l.version, 0) = p.expected END
    RETURNING version, created_at, updated_at;
INSERT INTO blobs (hash, size, chunk_size, chunk_count, data)
    SELECT ?, ?, ?, ?, ? WHERE changes() > 0
    ON CONFLICT (hash) DO UPDATE SET size = excluded.size, chunk_size = excluded.chunk_size,
        chunk_count = excluded.chunk_count, data = excluded.data
    WHERE CASE WHEN blobs.data IS NOT NULL
        THEN blobs.data IS NOT excluded.data OR blobs.size IS NOT excluded.size
            OR blobs.chunk_count IS NOT excluded.chunk_count OR blobs.chunk_size < excluded.size
        ELSE blobs.size IS NOT excluded.size
            OR blobs.chunk_count IS NOT (SELECT count(*) FROM chunks WHERE blob_id = blobs.id)
            OR CASE WHEN blobs.chunk_count <= 1
                THEN coalesce((SELECT data FROM chunks WHERE blob_id = blobs.id AND idx = 0), x'')
                    IS NOT excluded.data
                ELSE (SELECT sum(length(data)) FROM chunks WHERE blob_id = blobs.id)
                    IS NOT blobs.size END
        END;
"
    };
}

/// The same statements inside a caller's transaction (`put_many`).
pub(crate) const PUT_SMALL_IN_TX_SQL: &str = put_small_statements!();

/// Binds the parameters of [`PUT_SMALL_IN_TX_SQL`] / [`PUT_SMALL_SAVEPOINT_SQL`], in order of
/// appearance.
pub(crate) fn bind_put_small<'q>(
    sql: &'q str,
    req: &PutRequest<'q>,
    hash: &'q ContentHash,
    data: &'q [u8],
    now: i64,
    chunk_size: usize,
) -> sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>> {
    bind_put(sqlx::query(sql), req, hash, data, now, chunk_size)
}

/// Appends one put's parameters to `query`: a batch binds every put's in turn.
fn bind_put<'q>(
    query: sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>,
    req: &PutRequest<'q>,
    hash: &'q ContentHash,
    data: &'q [u8],
    now: i64,
    chunk_size: usize,
) -> sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>> {
    let (mode_code, expected) = mode_code(req.mode);
    let size = data.len() as u64;
    let chunks = chunk_count(size, chunk_size);
    query
        .bind(req.ns.as_str())
        .bind(req.key.as_str())
        .bind(&hash.as_bytes()[..])
        .bind(size as i64)
        .bind(now)
        .bind(req.metadata)
        .bind(mode_code)
        .bind(expected)
        .bind(&hash.as_bytes()[..])
        .bind(size as i64)
        .bind(chunk_size as i64)
        .bind(chunks)
        .bind(data)
}

/// Statements of one put in [`put_small_statements!`]: the version (with its `RETURNING` row
/// when written) and the blob.
const STATEMENTS_PER_PUT: usize = 2;

/// The most puts one batch writes in one round trip; a longer queue is written in several
/// batches, one after another.
const BATCH_MAX: usize = 32;

/// `n` small puts (`1..=BATCH_MAX`) in one transaction, as one round trip: each put's
/// statements see the ones before them, as if they ran one after another. Built once per size.
fn batch_sql(n: usize) -> &'static str {
    static SQL: [OnceLock<String>; BATCH_MAX] = [const { OnceLock::new() }; BATCH_MAX];
    SQL[n - 1].get_or_init(|| {
        let mut sql = String::from("BEGIN IMMEDIATE;");
        for _ in 0..n {
            sql.push_str(put_small_statements!());
        }
        sql.push_str("COMMIT;");
        sql
    })
}

/// The same statements inside a savepoint, for one put of a group-commit batch: a put that
/// fails is undone alone.
const PUT_SMALL_SAVEPOINT_SQL: &str =
    concat!("SAVEPOINT put;", put_small_statements!(), "RELEASE put;");

/// What a put writes, besides the payload.
#[derive(Clone, Copy)]
pub(crate) struct PutRequest<'a> {
    pub(crate) ns: &'a Namespace,
    pub(crate) key: &'a Key,
    /// Metadata as stored JSON.
    pub(crate) metadata: &'a str,
    pub(crate) mode: PutMode,
}

/// A version a put wrote.
pub(crate) struct Written {
    pub(crate) version: u64,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) hash: ContentHash,
    pub(crate) size: u64,
}

/// A put's outcome: written, or refused by its precondition (with the current version when
/// the refusing path knew it).
pub(crate) type Attempt = std::result::Result<Written, Option<u64>>;

fn mode_code(mode: PutMode) -> (i64, i64) {
    match mode {
        PutMode::Overwrite => (0, 0),
        PutMode::Create => (1, 0),
        PutMode::IfVersion(v) | PutMode::Base(v) => (2, v as i64),
    }
}

/// A small put waiting to be written, owning what it writes.
pub(crate) struct SmallPut {
    pub(crate) ns: Namespace,
    pub(crate) key: Key,
    /// Metadata as stored JSON.
    pub(crate) metadata: String,
    pub(crate) mode: PutMode,
    pub(crate) data: Bytes,
    /// Hashed by the caller, outside the lock.
    pub(crate) hash: ContentHash,
}

impl SmallPut {
    fn request(&self) -> PutRequest<'_> {
        PutRequest {
            ns: &self.ns,
            key: &self.key,
            metadata: &self.metadata,
            mode: self.mode,
        }
    }

    /// The version a put wrote, from its `RETURNING` row. `updated_at` is the later of the
    /// put's clock and the previous version's (another process may have written a version
    /// stamped after this put read the clock), so it never goes back along a key's history.
    fn written(&self, row: &sqlx::sqlite::SqliteRow) -> Written {
        Written {
            version: row.get::<i64, _>(0) as u64,
            created_at: row.get(1),
            updated_at: row.get(2),
            hash: self.hash,
            size: self.data.len() as u64,
        }
    }
}

struct Job {
    put: SmallPut,
    reply: oneshot::Sender<Result<Attempt>>,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    /// Whether a task is draining the queue.
    draining: bool,
}

/// What a batch needs to write: cheap to clone into the task that drains the queue.
#[derive(Clone)]
pub(crate) struct WriteContext {
    pub(crate) chunk_size: usize,
    /// The write connection every writer of this backend takes turns on.
    pub(crate) writer: Arc<Writer>,
}

/// Collects small puts and writes each batch in one transaction.
#[derive(Default)]
pub(crate) struct GroupCommit {
    queue: std::sync::Mutex<Queue>,
}

impl GroupCommit {
    /// Writes `put`, together with whatever other small puts wait for the lock at that moment.
    ///
    /// Alone (nothing queued, the lock free) the put is written in the caller's task: handing
    /// it to a batch task and waiting for the answer would cost two thread wake-ups for nothing
    /// to share. If the caller stops waiting midway, [`WriteTurn`] closes the connection, which
    /// rolls the unfinished transaction back, so the put is written whole or not at all.
    /// Otherwise the batch runs on its own task, so a caller that stops waiting cannot leave
    /// the other puts of its batch half done.
    pub(crate) async fn put(
        self: &Arc<Self>,
        ctx: &WriteContext,
        put: SmallPut,
    ) -> Result<Attempt> {
        let alone = {
            let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            // Checked under the queue lock, so a drain task that is about to take its turn for
            // queued puts is never overtaken by this one.
            if q.jobs.is_empty() && !q.draining {
                ctx.writer.try_turn()
            } else {
                None
            }
        };
        if let Some(mut turn) = alone {
            return ctx.write_one(&mut turn, &put).await;
        }
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.jobs.push(Job { put, reply });
            !std::mem::replace(&mut q.draining, true)
        };
        if start {
            let me = self.clone();
            let ctx = ctx.clone();
            tokio::spawn(async move { me.drain(ctx).await });
        }
        answer.await.unwrap_or_else(|_| {
            Err(Error::backend(
                PROVIDER,
                "the write batch holding this put stopped before answering (is the runtime shutting down?)",
                std::io::Error::other("write batch dropped"),
            ))
        })
    }

    async fn drain(&self, ctx: WriteContext) {
        loop {
            // Waiting for the turn first lets the queue fill up meanwhile: that is the batch.
            let mut turn = ctx.writer.turn().await;
            let jobs = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                if q.jobs.is_empty() {
                    q.draining = false;
                    return;
                }
                let take = q.jobs.len().min(BATCH_MAX);
                q.jobs.drain(..take).collect::<Vec<_>>()
            };
            if let [_] = jobs.as_slice() {
                let job = jobs.into_iter().next().expect("one job");
                let result = ctx.write_one(&mut turn, &job.put).await;
                let _ = job.reply.send(result);
            } else {
                ctx.write_batch(&mut turn, jobs).await;
            }
        }
    }
}

impl WriteContext {
    fn fail(&self, doing: &str, e: sqlx::Error) -> Error {
        map_err(self.writer.path(), doing, e)
    }

    /// Runs one small put's statements in a savepoint of the open transaction: the version
    /// written, or `Err(None)` when the precondition failed.
    async fn run_savepointed_put(
        &self,
        put: &SmallPut,
        turn: &mut WriteTurn,
    ) -> Result<std::result::Result<Attempt, sqlx::Error>> {
        let now = Timestamp::now().as_micros();
        let conn = turn.conn().await?;
        let rows = bind_put_small(
            PUT_SMALL_SAVEPOINT_SQL,
            &put.request(),
            &put.hash,
            &put.data,
            now,
            self.chunk_size,
        )
        .fetch_all(conn)
        .await;
        Ok(rows.map(|rows| match rows.first() {
            Some(r) => Ok(put.written(r)),
            None => Err(None),
        }))
    }

    /// One put in one round trip, its own transaction. `Err(None)`: the precondition failed.
    pub(crate) async fn write_one(&self, turn: &mut WriteTurn, put: &SmallPut) -> Result<Attempt> {
        match self.round_trip(turn, &[put]).await {
            Ok(mut attempts) => {
                turn.finish();
                Ok(attempts.pop().expect("one put, one outcome"))
            }
            Err(BatchError::Put(e) | BatchError::Whole(e)) => {
                turn.roll_back().await;
                Err(e)
            }
        }
    }

    /// Several puts in one transaction and one round trip ([`batch_sql`]). If a put's statement
    /// fails, the transaction is rolled back and the puts are written again one savepoint each
    /// ([`Self::write_each`]), so a put that fails is undone alone and the others still land.
    async fn write_batch(&self, turn: &mut WriteTurn, jobs: Vec<Job>) {
        let puts: Vec<&SmallPut> = jobs.iter().map(|job| &job.put).collect();
        let outcome = self.round_trip(turn, &puts).await;
        drop(puts);
        let attempts = match outcome {
            Ok(attempts) => attempts,
            Err(e) => {
                turn.roll_back().await;
                return match e {
                    // A connection the rollback could not settle is discarded with the turn:
                    // nothing more is written on it.
                    BatchError::Put(_) if turn.settled() => self.write_each(turn, jobs).await,
                    BatchError::Put(e) | BatchError::Whole(e) => answer_all(jobs, &e.to_string()),
                };
            }
        };
        turn.finish();
        for (job, attempt) in jobs.into_iter().zip(attempts) {
            let _ = job.reply.send(Ok(attempt));
        }
    }

    /// `puts` in one transaction and one round trip ([`batch_sql`]): every put's outcome, in
    /// order, once committed. On error the transaction may still be open: the caller rolls back.
    async fn round_trip(
        &self,
        turn: &mut WriteTurn,
        puts: &[&SmallPut],
    ) -> std::result::Result<Vec<Attempt>, BatchError> {
        let now: Vec<i64> = puts.iter().map(|_| Timestamp::now().as_micros()).collect();
        let mut query = sqlx::query(batch_sql(puts.len()));
        for (put, &now) in puts.iter().zip(&now) {
            query = bind_put(
                query,
                &put.request(),
                &put.hash,
                &put.data,
                now,
                self.chunk_size,
            );
        }
        turn.conn().await.map_err(BatchError::Whole)?;
        turn.start();
        let conn = turn.conn().await.map_err(BatchError::Whole)?;
        let mut results = sqlx::Executor::fetch_many(conn, query);
        // Statement 0 is BEGIN; put `i` runs statements 1 + 2i (its version, with a row when
        // written) and 2 + 2i (its blob); the last is COMMIT.
        let mut statement: usize = 0;
        let mut attempts: Vec<Attempt> = puts.iter().map(|_| Err(None)).collect();
        let doing = if puts.len() == 1 {
            "writing a record"
        } else {
            "writing a batch of records"
        };
        let failed = |e| self.fail(doing, e);
        let last = 1 + puts.len() * STATEMENTS_PER_PUT;
        while let Some(step) = results.try_next().await.map_err(|e| {
            // `statement` is the one that failed.
            if (1..last).contains(&statement) {
                BatchError::Put(failed(e))
            } else {
                BatchError::Whole(failed(e))
            }
        })? {
            match step {
                Either::Left(_) => statement += 1,
                Either::Right(row) => {
                    let Some(i) = statement
                        .checked_sub(1)
                        .map(|s| s / STATEMENTS_PER_PUT)
                        .filter(|&i| i < puts.len())
                    else {
                        return Err(BatchError::Whole(failed(sqlx::Error::Protocol(format!(
                            "statement {statement} of a batch returned a row"
                        )))));
                    };
                    attempts[i] = Ok(puts[i].written(&row));
                }
            }
        }
        if statement != last + 1 {
            return Err(BatchError::Whole(failed(sqlx::Error::Protocol(format!(
                "a batch of {} puts reported {statement} statements done; whether it was committed is unknown",
                puts.len()
            )))));
        }
        Ok(attempts)
    }

    /// Several puts in one transaction, each in a savepoint so one failing put is undone alone;
    /// each put sees the ones before it, exactly as if they had run one after another.
    async fn write_each(&self, turn: &mut WriteTurn, jobs: Vec<Job>) {
        let results = match self.batch_statements(turn, &jobs).await {
            Ok(results) => results,
            Err(e) => {
                // The transaction is in an unknown state: give the whole batch up.
                turn.roll_back().await;
                return answer_all(jobs, &e.to_string());
            }
        };
        turn.finish();
        for (job, result) in jobs.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
    }

    /// The statements of [`Self::write_each`]: each put's outcome, or the error that leaves the
    /// transaction in a state only a rollback can settle.
    async fn batch_statements(
        &self,
        turn: &mut WriteTurn,
        jobs: &[Job],
    ) -> Result<Vec<Result<Attempt>>> {
        turn.start();
        turn.execute("BEGIN IMMEDIATE", "locking the database for a write")
            .await?;
        let mut results = Vec::with_capacity(jobs.len());
        for job in jobs {
            match self.run_savepointed_put(&job.put, turn).await? {
                Ok(attempt) => results.push(Ok(attempt)),
                Err(e) => {
                    let failed = self.fail("writing a record", e);
                    let undone = turn
                        .execute("ROLLBACK TO put; RELEASE put;", "undoing a failed put")
                        .await;
                    if undone.is_err() {
                        return Err(failed);
                    }
                    results.push(Err(failed));
                }
            }
        }
        turn.execute("COMMIT", "committing a batch of records")
            .await?;
        Ok(results)
    }
}

/// Why a one-round-trip batch gave no answers.
enum BatchError {
    /// A put's statement failed: nothing was written, so the puts may be written again, one
    /// savepoint each.
    Put(Error),
    /// The batch as a whole failed (`BEGIN` or `COMMIT`, or it ran not as built): answered as
    /// it is, never repeated (a repeat could write the puts twice, or wait out a lock again).
    /// The rollback after it finds no transaction when there is none left to undo.
    Whole(Error),
}

/// Fails every job of a batch with the same cause.
fn answer_all(jobs: Vec<Job>, cause: &str) {
    for job in jobs {
        let _ = job.reply.send(Err(Error::backend(
            PROVIDER,
            format!(
                "writing {}/{} failed with its batch: {cause}",
                job.put.ns, job.put.key
            ),
            std::io::Error::other(cause.to_string()),
        )));
    }
}
