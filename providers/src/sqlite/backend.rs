//! [`SqliteBackend`]: the [`StorageBackend`] over one SQLite database file.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::Connection;
use sqlx::Row;
use stowage_core::{
    async_trait, Body, ByteRange, Capabilities, ContentHash, DeleteOptions, Error, GcReport,
    GetOptions, Key, ListOptions, Metadata, Namespace, Page, Progress, PutMode, Query, RecordInfo,
    Result, StorageBackend, Timestamp, VerifyReport, Version,
};
use tokio::sync::OnceCell;

use super::blobs::{self, BlobRef, ChunkReader, Payload, StagingContext};
use super::commit::{
    bind_put_small, Attempt, GroupCommit, PutRequest, SmallPut, WriteContext, Written,
    PUT_SMALL_IN_TX_SQL,
};
use super::config::{SqliteConfig, Synchronous};
use super::error::map_err;
use super::records::{decode, encode_metadata, RECORD_COLUMNS};
use super::search::{
    driver_candidates, estimate_statement, list_statement, page_rows, search_statement, Driver,
};
use super::writer::{WriteTurn, Writer};
use super::{schema, PROVIDER};

/// Record, blob and (for `?3` = the first byte wanted) the chunk holding that byte, in one
/// read from `$records` (`latest` or `versions`, narrowed by `$filter`): a row of `chunks`, or
/// for a one-chunk payload its blob row's `data` (then the chunk index is NULL, which SQLite
/// checks before searching `chunks`).
macro_rules! get_sql {
    ($records:literal, $filter:literal) => {
        concat!(
            "
SELECT r.key, r.version, r.hash, r.size, r.created_at, r.updated_at, r.deleted_at, r.metadata,
       b.id, b.chunk_size,
       coalesce(c.data, CASE WHEN ?3 / b.chunk_size = 0 AND r.deleted_at IS NULL THEN b.data END)
FROM ",
            $records,
            " r
LEFT JOIN blobs b ON b.hash = r.hash
LEFT JOIN chunks c ON c.blob_id = b.id
    AND c.idx = CASE WHEN b.data IS NULL AND r.deleted_at IS NULL THEN ?3 / b.chunk_size END
WHERE r.ns = ?1 AND r.key = ?2",
            $filter
        )
    };
}

const GET_LATEST_SQL: &str = get_sql!("latest", "");
const GET_VERSION_SQL: &str = get_sql!("versions", " AND r.version = ?4");

/// The `sqlite` provider's backend: one database file, a pool of connections for reading, and
/// one connection for writing that this process's writers take turns on without busy-waiting
/// on SQLite's file lock.
pub struct SqliteBackend {
    config: SqliteConfig,
    path: Arc<PathBuf>,
    pool: OnceCell<SqlitePool>,
    writer: Arc<Writer>,
    commits: Arc<GroupCommit>,
}

impl SqliteBackend {
    /// A backend for `config`; nothing is opened until the first operation.
    pub fn new(config: SqliteConfig) -> Self {
        let path = Arc::new(config.path.clone());
        SqliteBackend {
            writer: Writer::new(schema::connect_options(&config), path.clone()),
            path,
            config,
            pool: OnceCell::new(),
            commits: Arc::new(GroupCommit::default()),
        }
    }

    /// The database file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The connection pool, opening and migrating the database on first use.
    pub async fn pool(&self) -> Result<&SqlitePool> {
        self.pool
            .get_or_try_init(|| schema::open(&self.config))
            .await
    }

    /// This process's turn on the write connection, once the file is set up (the write
    /// connection opens on the schema the set-up migrated).
    async fn write_turn(&self) -> Result<WriteTurn> {
        self.pool().await?;
        Ok(self.writer.turn().await)
    }

    fn fail(&self, doing: &str) -> impl Fn(sqlx::Error) -> Error + '_ {
        let doing = doing.to_string();
        move |e| map_err(&self.path, &doing, e)
    }

    async fn latest_version(
        &self,
        pool: &SqlitePool,
        ns: &Namespace,
        key: &Key,
    ) -> Result<Option<(u64, bool)>> {
        let row: Option<(i64, Option<i64>)> =
            sqlx::query_as("SELECT version, deleted_at FROM latest WHERE ns = ?1 AND key = ?2")
                .bind(ns.as_str())
                .bind(key.as_str())
                .fetch_optional(pool)
                .await
                .map_err(self.fail("reading the latest version"))?;
        Ok(row.map(|(v, d)| (v as u64, d.is_some())))
    }

    fn conflict(ns: &Namespace, key: &Key, mode: PutMode, current: Option<u64>) -> Error {
        Error::Conflict {
            namespace: ns.to_string(),
            key: key.to_string(),
            expected: mode.expected(),
            current,
        }
    }

    /// The streaming path; `Err(current)` when the precondition failed. The payload is staged
    /// chunk by chunk, each chunk a transaction of its own ([`blobs::stage_streamed`]), so no
    /// lock is held while the producer is slow; one short transaction then checks the
    /// precondition again and claims the staged payload for the new version.
    async fn put_large(&self, req: &PutRequest<'_>, prefix: Bytes, rest: Body) -> Result<Attempt> {
        let PutRequest {
            ns,
            key,
            metadata,
            mode,
        } = *req;
        // A put its precondition refuses fails before anything is uploaded (a read, no lock);
        // the claim below checks again, under the lock.
        if mode != PutMode::Overwrite {
            let pool = self.pool().await?;
            let latest = self.latest_version(pool, ns, key).await?;
            if mode.check(ns, key, latest).is_err() {
                return Ok(Err(latest.map(|(v, _)| v)));
            }
        }
        let ctx = StagingContext {
            writer: self.writer.clone(),
            path: self.path.clone(),
            chunk_size: self.config.chunk_size(),
            relax_sync: self.config.synchronous.unwrap_or_default() == Synchronous::Full,
        };
        let mut staged = blobs::stage_streamed(ctx, prefix, rest).await?;
        let (hash, size) = staged.hash_and_size();

        let mut turn = self.write_turn().await?;
        let mut tx = turn
            .conn()
            .await?
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(self.fail("locking the database for a write"))?;
        let latest: Option<(i64, i64, Option<i64>, i64)> = sqlx::query_as(
            "SELECT version, created_at, deleted_at, updated_at FROM latest WHERE ns = ?1 AND key = ?2",
        )
        .bind(ns.as_str())
        .bind(key.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(self.fail("reading the latest version"))?;
        let current = latest.map(|l| l.0 as u64);
        if mode
            .check(ns, key, latest.map(|l| (l.0 as u64, l.2.is_some())))
            .is_err()
        {
            staged.discard_in(&mut tx).await?;
            tx.commit()
                .await
                .map_err(self.fail("dropping a staged payload"))?;
            staged.settle();
            return Ok(Err(current));
        }
        staged.claim_in(&mut tx).await?;
        // Never before the previous version's time (another process may have stamped it later).
        let now = Timestamp::now()
            .as_micros()
            .max(latest.map_or(i64::MIN, |l| l.3));
        let version = current.unwrap_or(0) + 1;
        let created_at = latest.map(|l| l.1).unwrap_or(now);
        sqlx::query(
            "INSERT INTO versions (ns, key, version, hash, size, created_at, updated_at, deleted_at, metadata)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8)",
        )
        .bind(ns.as_str())
        .bind(key.as_str())
        .bind(version as i64)
        .bind(&hash.as_bytes()[..])
        .bind(size as i64)
        .bind(created_at)
        .bind(now)
        .bind(metadata)
        .execute(&mut *tx)
        .await
        .map_err(self.fail("writing a record"))?;
        // At the configured `synchronous`: this commit makes the staged chunks durable too.
        tx.commit()
            .await
            .map_err(self.fail("committing a record"))?;
        staged.settle();
        Ok(Ok(Written {
            version,
            created_at,
            updated_at: now,
            hash,
            size,
        }))
    }

    /// Writes many records of `ns` in one write transaction, each as a new version
    /// (like `put` with [`PutMode::Overwrite`]): the fast way to import or load. All are
    /// written or none is. Each payload must fit one chunk (`chunk_size`); larger ones go
    /// through `put`, which streams them.
    pub async fn put_many(
        &self,
        ns: &Namespace,
        records: impl IntoIterator<Item = (Key, Bytes, Metadata)>,
    ) -> Result<Vec<RecordInfo>> {
        let chunk_size = self.config.chunk_size();
        let mut turn = self.write_turn().await?;
        let mut tx = turn
            .conn()
            .await?
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(self.fail("locking the database for a write"))?;
        let mut written = Vec::new();
        for (key, data, metadata) in records {
            if data.len() > chunk_size {
                return Err(Error::invalid_input(format!(
                    "put_many: the payload of {ns}/{key} has {} bytes, more than one chunk ({chunk_size}); write it with put",
                    data.len()
                )));
            }
            let meta_json = encode_metadata(&metadata)?;
            let req = PutRequest {
                ns,
                key: &key,
                metadata: &meta_json,
                mode: PutMode::Overwrite,
            };
            let hash = ContentHash::of(&data);
            let now = Timestamp::now().as_micros();
            let rows = bind_put_small(PUT_SMALL_IN_TX_SQL, &req, &hash, &data, now, chunk_size)
                .fetch_all(&mut *tx)
                .await
                .map_err(self.fail("writing a record"))?;
            let row = rows.first().ok_or_else(|| {
                Error::backend(
                    PROVIDER,
                    format!("an unconditional write of {ns}/{key} wrote nothing"),
                    std::io::Error::other("no row returned"),
                )
            })?;
            written.push(RecordInfo {
                namespace: ns.clone(),
                key: key.clone(),
                version: row.get::<i64, _>(0) as u64,
                hash,
                size: data.len() as u64,
                created_at: Timestamp::from_micros(row.get(1)),
                updated_at: Timestamp::from_micros(row.get(2)),
                deleted_at: None,
                metadata,
                conflicts: Vec::new(),
            });
        }
        tx.commit().await.map_err(self.fail("committing records"))?;
        Ok(written)
    }

    fn decode_one(&self, ns: &Namespace, row: &SqliteRow) -> Result<RecordInfo> {
        decode(ns, row, &self.path)
    }

    async fn read_info(
        &self,
        ns: &Namespace,
        key: &Key,
        version: Option<Version>,
    ) -> Result<RecordInfo> {
        let pool = self.pool().await?;
        let row = match version {
            None => {
                sqlx::query(&format!(
                    "SELECT {RECORD_COLUMNS} FROM latest WHERE ns = ?1 AND key = ?2"
                ))
                .bind(ns.as_str())
                .bind(key.as_str())
                .fetch_optional(pool)
                .await
            }
            Some(v) => {
                sqlx::query(&format!(
                "SELECT {RECORD_COLUMNS} FROM versions WHERE ns = ?1 AND key = ?2 AND version = ?3"
            ))
                .bind(ns.as_str())
                .bind(key.as_str())
                .bind(v as i64)
                .fetch_optional(pool)
                .await
            }
        }
        .map_err(self.fail("reading a record"))?;
        let info = match row {
            Some(row) => self.decode_one(ns, &row)?,
            None => return Err(Error::not_found(ns, key, version)),
        };
        if info.is_deleted() {
            return Err(Error::not_found(ns, key, version));
        }
        Ok(info)
    }
}

#[async_trait]
impl StorageBackend for SqliteBackend {
    fn provider(&self) -> &str {
        PROVIDER
    }

    fn capabilities(&self) -> Capabilities {
        super::capabilities()
    }

    async fn initialize(&self) -> Result<()> {
        self.pool().await.map(|_| ())
    }

    async fn close(&self) -> Result<()> {
        // The last connection to close checkpoints the WAL into the main file and removes the
        // -wal/-shm side files. A connection still on its way back to the pool when `close`
        // runs (its return is a spawned task) lands in the idle queue of the closed pool
        // afterwards, where nothing would close it gracefully; closing again picks it up.
        self.writer.close().await;
        if let Some(pool) = self.pool.get() {
            pool.close().await;
            for _ in 0..400 {
                if pool.size() == 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                pool.close().await;
            }
        }
        Ok(())
    }

    async fn put(
        &self,
        ns: &Namespace,
        key: &Key,
        body: Body,
        metadata: Metadata,
        mode: PutMode,
    ) -> Result<RecordInfo> {
        let pool = self.pool().await?;
        let meta_json = encode_metadata(&metadata)?;
        let req = PutRequest {
            ns,
            key,
            metadata: &meta_json,
            mode,
        };
        let attempt = match blobs::classify(body, self.config.chunk_size()).await? {
            Payload::Small(data) => {
                let ctx = WriteContext {
                    chunk_size: self.config.chunk_size(),
                    writer: self.writer.clone(),
                };
                let put = SmallPut {
                    ns: ns.clone(),
                    key: key.clone(),
                    metadata: meta_json.clone(),
                    mode,
                    hash: ContentHash::of(&data),
                    data,
                };
                self.commits.put(&ctx, put).await?
            }
            Payload::Large { prefix, rest } => self.put_large(&req, prefix, rest).await?,
        };
        match attempt {
            Ok(w) => Ok(RecordInfo {
                namespace: ns.clone(),
                key: key.clone(),
                version: w.version,
                hash: w.hash,
                size: w.size,
                created_at: Timestamp::from_micros(w.created_at),
                updated_at: Timestamp::from_micros(w.updated_at),
                deleted_at: None,
                metadata,
                conflicts: Vec::new(),
            }),
            Err(known) => {
                let current = match known {
                    Some(v) => Some(v),
                    None => self.latest_version(pool, ns, key).await?.map(|(v, _)| v),
                };
                Err(Self::conflict(ns, key, mode, current))
            }
        }
    }

    async fn get(
        &self,
        ns: &Namespace,
        key: &Key,
        options: GetOptions,
    ) -> Result<(RecordInfo, Body)> {
        let pool = self.pool().await?;
        let start = options.range.map(|r| r.start).unwrap_or(0);
        let query = match options.version {
            None => sqlx::query(GET_LATEST_SQL),
            Some(_) => sqlx::query(GET_VERSION_SQL),
        };
        let row = query
            .bind(ns.as_str())
            .bind(key.as_str())
            .bind(start as i64)
            .bind(options.version.map(|v| v as i64))
            .fetch_optional(pool)
            .await
            .map_err(self.fail("reading a record"))?;
        let Some(row) = row else {
            return Err(Error::not_found(ns, key, options.version));
        };
        let info = self.decode_one(ns, &row)?;
        if info.is_deleted() {
            return Err(Error::not_found(ns, key, options.version));
        }
        let label = format!("{ns}/{key} version {}", info.version);
        let blob_id: Option<i64> = row.get(8);
        let Some(blob_id) = blob_id else {
            return Err(Error::corrupt(
                PROVIDER,
                format!(
                    "the payload of {label} ({}) is missing from {}; run `stowage verify`",
                    info.hash,
                    self.path.display()
                ),
            ));
        };
        let blob = BlobRef {
            id: blob_id,
            chunk_size: row.get::<i64, _>(9) as u64,
            size: info.size,
            hash: info.hash,
        };
        let (offset, len) = match options.range {
            None => (0, info.size),
            Some(range) => ByteRange::resolve(&range, info.size)?,
        };
        let first: Option<Vec<u8>> = row.get(10);
        let reader = ChunkReader {
            pool: pool.clone(),
            path: self.path.clone(),
            label,
            blob,
            start: offset,
            len,
            first: first.map(Bytes::from),
        };
        Ok((info, reader.into_body()?))
    }

    async fn head(
        &self,
        ns: &Namespace,
        key: &Key,
        version: Option<Version>,
    ) -> Result<RecordInfo> {
        self.read_info(ns, key, version).await
    }

    async fn delete(
        &self,
        ns: &Namespace,
        key: &Key,
        options: DeleteOptions,
    ) -> Result<RecordInfo> {
        let pool = self.pool().await?;
        let now = Timestamp::now().as_micros();
        let row = {
            let mut turn = self.write_turn().await?;
            sqlx::query(&format!(
                "INSERT INTO versions (ns, key, version, hash, size, created_at, updated_at, deleted_at, metadata)
                 SELECT ns, key, version + 1, hash, size, created_at, max(?3, updated_at),
                        max(?3, updated_at), metadata FROM latest
                 WHERE ns = ?1 AND key = ?2 AND deleted_at IS NULL AND (?4 IS NULL OR version = ?4)
                 RETURNING {RECORD_COLUMNS}"
            ))
            .bind(ns.as_str())
            .bind(key.as_str())
            .bind(now)
            .bind(options.if_version.map(|v| v as i64))
            .fetch_optional(turn.conn().await?)
            .await
            .map_err(self.fail("deleting a record"))?
        };
        if let Some(row) = row {
            return self.decode_one(ns, &row);
        }
        match self.latest_version(pool, ns, key).await? {
            Some((current, false)) => Err(Error::Conflict {
                namespace: ns.to_string(),
                key: key.to_string(),
                expected: format!("version {}", options.if_version.unwrap_or(current)),
                current: Some(current),
            }),
            _ => Err(Error::not_found(ns, key, None)),
        }
    }

    async fn list(&self, ns: &Namespace, options: ListOptions) -> Result<Page<RecordInfo>> {
        let pool = self.pool().await?;
        let stmt = list_statement(ns.as_str(), &options)?;
        let rows = stmt
            .bind()
            .fetch_all(pool)
            .await
            .map_err(self.fail("listing records"))?;
        let (rows, more) = page_rows(rows, options.limit);
        let items = rows
            .iter()
            .map(|r| self.decode_one(ns, r))
            .collect::<Result<Vec<_>>>()?;
        let next = if more {
            items
                .last()
                .map(|i| ListOptions::cursor_for(i.key.as_str()))
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn search(&self, ns: &Namespace, query: &Query) -> Result<Page<RecordInfo>> {
        let pool = self.pool().await?;
        let candidates = driver_candidates(query);
        let driver = match candidates.as_slice() {
            [] => Driver::Latest,
            [only] => *only,
            several => {
                // One capped count per candidate, in a single round trip; the smallest drives.
                let row = estimate_statement(ns.as_str(), query, several)
                    .bind()
                    .fetch_one(pool)
                    .await
                    .map_err(self.fail("planning a search"))?;
                let mut best = (several[0], i64::MAX);
                for (i, d) in several.iter().enumerate() {
                    let n: i64 = row.get(i);
                    if n < best.1 {
                        best = (*d, n);
                    }
                }
                best.0
            }
        };
        let (stmt, exact) = search_statement(ns.as_str(), query, driver)?;
        let rows = stmt
            .bind()
            .fetch_all(pool)
            .await
            .map_err(self.fail("searching records"))?;
        if !exact {
            let items = rows
                .iter()
                .map(|r| self.decode_one(ns, r))
                .collect::<Result<Vec<_>>>()?;
            return query.apply(items);
        }
        let (rows, more) = page_rows(rows, query.limit);
        let items = rows
            .iter()
            .map(|r| self.decode_one(ns, r))
            .collect::<Result<Vec<_>>>()?;
        let next = if more {
            items.last().map(|i| query.cursor_for(i))
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn versions(&self, ns: &Namespace, key: &Key) -> Result<Vec<RecordInfo>> {
        let pool = self.pool().await?;
        let rows = sqlx::query(&format!(
            "SELECT {RECORD_COLUMNS} FROM versions WHERE ns = ?1 AND key = ?2 ORDER BY version"
        ))
        .bind(ns.as_str())
        .bind(key.as_str())
        .fetch_all(pool)
        .await
        .map_err(self.fail("reading versions"))?;
        if rows.is_empty() {
            return Err(Error::not_found(ns, key, None));
        }
        rows.iter().map(|r| self.decode_one(ns, r)).collect()
    }

    async fn restore(
        &self,
        ns: &Namespace,
        key: &Key,
        version: Option<Version>,
    ) -> Result<RecordInfo> {
        let now = Timestamp::now().as_micros();
        let row = {
            let mut turn = self.write_turn().await?;
            sqlx::query(&format!(
                "INSERT INTO versions (ns, key, version, hash, size, created_at, updated_at, deleted_at, metadata)
                 SELECT s.ns, s.key, l.version + 1, s.hash, s.size, l.created_at,
                        max(?3, l.updated_at), NULL, s.metadata
                 FROM versions s JOIN latest l ON l.ns = s.ns AND l.key = s.key
                 WHERE s.ns = ?1 AND s.key = ?2 AND s.deleted_at IS NULL
                   AND s.version = coalesce(?4, (SELECT max(version) FROM versions
                        WHERE ns = ?1 AND key = ?2 AND deleted_at IS NULL))
                 RETURNING {RECORD_COLUMNS}"
            ))
            .bind(ns.as_str())
            .bind(key.as_str())
            .bind(now)
            .bind(version.map(|v| v as i64))
            .fetch_optional(turn.conn().await?)
            .await
            .map_err(self.fail("restoring a record"))?
        };
        match row {
            Some(row) => self.decode_one(ns, &row),
            None => Err(Error::not_found(ns, key, version)),
        }
    }

    async fn purge(&self, ns: &Namespace, key: &Key) -> Result<u64> {
        let mut turn = self.write_turn().await?;
        let mut tx = turn
            .conn()
            .await?
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(self.fail("locking the database to purge"))?;
        let removed = sqlx::query("DELETE FROM versions WHERE ns = ?1 AND key = ?2")
            .bind(ns.as_str())
            .bind(key.as_str())
            .execute(&mut *tx)
            .await
            .map_err(self.fail("purging a record"))?
            .rows_affected();
        for table in ["latest", "tags", "attrs"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE ns = ?1 AND key = ?2"))
                .bind(ns.as_str())
                .bind(key.as_str())
                .execute(&mut *tx)
                .await
                .map_err(self.fail("purging a record"))?;
        }
        tx.commit().await.map_err(self.fail("committing a purge"))?;
        if removed == 0 {
            return Err(Error::not_found(ns, key, None));
        }
        Ok(removed)
    }

    async fn gc(&self, progress: &dyn Progress) -> Result<GcReport> {
        // Takes a turn on the write connection per step, not for the whole run.
        let pool = self.pool().await?;
        blobs::gc(pool, &self.writer, &self.path, progress).await
    }

    async fn verify(&self, progress: &dyn Progress) -> Result<VerifyReport> {
        let pool = self.pool().await?;
        blobs::verify(pool, &self.path, self.config.chunk_size(), progress).await
    }

    async fn namespaces(&self) -> Result<Vec<Namespace>> {
        let pool = self.pool().await?;
        let names: Vec<String> = sqlx::query_scalar("SELECT DISTINCT ns FROM latest ORDER BY ns")
            .fetch_all(pool)
            .await
            .map_err(self.fail("listing namespaces"))?;
        names
            .into_iter()
            .map(|n| {
                Namespace::new(n.clone()).map_err(|e| {
                    Error::corrupt(
                        PROVIDER,
                        format!(
                            "stored namespace {n:?} in {} is invalid ({e})",
                            self.path.display()
                        ),
                    )
                })
            })
            .collect()
    }
}
