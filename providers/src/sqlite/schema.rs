//! The database schema, its migrations, and opening a file safely: a file that is not a stowage
//! database (another application's, a newer stowage's, damaged, or no SQLite at all) is refused
//! with an error naming it, before anything is written into it.

use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Executor, Row};
use stowage_core::{Error, Result};

use super::config::{SqliteConfig, Synchronous};
use super::error::{is_busy, map_err};

/// `PRAGMA application_id` of a stowage database: the bytes `STOW`.
pub const APPLICATION_ID: i64 = 0x5354_4f57;

/// One schema step: applied in a transaction together with the `user_version` it leads to.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The `PRAGMA user_version` after this step.
    pub version: i64,
    /// What the step does.
    pub description: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// Every schema step, oldest first. Append only: a released step never changes.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "payload blobs and chunks, versions, latest, tags, attributes",
        sql: r#"
CREATE TABLE blobs (
    id          INTEGER PRIMARY KEY,
    hash        BLOB UNIQUE,
    size        INTEGER NOT NULL,
    chunk_size  INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL
);
CREATE TABLE chunks (
    blob_id INTEGER NOT NULL REFERENCES blobs(id) ON DELETE CASCADE,
    idx     INTEGER NOT NULL,
    data    BLOB NOT NULL,
    PRIMARY KEY (blob_id, idx)
);
CREATE TABLE versions (
    ns         TEXT NOT NULL,
    key        TEXT NOT NULL,
    version    INTEGER NOT NULL,
    hash       BLOB NOT NULL REFERENCES blobs(hash) DEFERRABLE INITIALLY DEFERRED,
    size       INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted_at INTEGER,
    metadata   TEXT NOT NULL,
    PRIMARY KEY (ns, key, version)
) WITHOUT ROWID;
CREATE INDEX versions_by_hash ON versions(hash);
CREATE TABLE latest (
    ns           TEXT NOT NULL,
    key          TEXT NOT NULL,
    version      INTEGER NOT NULL,
    hash         BLOB NOT NULL,
    size         INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    deleted_at   INTEGER,
    content_type TEXT,
    metadata     TEXT NOT NULL,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE TABLE tags (
    ns  TEXT NOT NULL,
    key TEXT NOT NULL,
    tag TEXT NOT NULL,
    PRIMARY KEY (ns, tag, key)
) WITHOUT ROWID;
CREATE INDEX tags_by_key ON tags(ns, key);
CREATE TABLE attrs (
    ns   TEXT NOT NULL,
    key  TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    num  REAL,
    str  TEXT,
    json TEXT,
    PRIMARY KEY (ns, key, name)
) WITHOUT ROWID;
CREATE TRIGGER versions_track_latest AFTER INSERT ON versions
BEGIN
    INSERT INTO latest (ns, key, version, hash, size, created_at, updated_at, deleted_at,
                        content_type, metadata)
    VALUES (NEW.ns, NEW.key, NEW.version, NEW.hash, NEW.size, NEW.created_at, NEW.updated_at,
            NEW.deleted_at, json_extract(NEW.metadata, '$.content_type'), NEW.metadata)
    -- created_at is the time of the key's first version: never updated here.
    ON CONFLICT (ns, key) DO UPDATE SET
        version = excluded.version, hash = excluded.hash, size = excluded.size,
        updated_at = excluded.updated_at,
        deleted_at = excluded.deleted_at, content_type = excluded.content_type,
        metadata = excluded.metadata
    WHERE excluded.version > latest.version;
    -- A first version (new or purged key) has no older tags or attributes to clear.
    DELETE FROM tags WHERE NEW.version > 1 AND ns = NEW.ns AND key = NEW.key;
    INSERT INTO tags (ns, key, tag)
        SELECT NEW.ns, NEW.key, value FROM json_each(NEW.metadata, '$.tags');
    DELETE FROM attrs WHERE NEW.version > 1 AND ns = NEW.ns AND key = NEW.key;
    INSERT INTO attrs (ns, key, name, kind, num, str, json)
        SELECT NEW.ns, NEW.key, key,
            CASE type WHEN 'integer' THEN 'number' WHEN 'real' THEN 'number'
                      WHEN 'true' THEN 'bool' WHEN 'false' THEN 'bool'
                      WHEN 'text' THEN 'string' ELSE type END,
            CASE type WHEN 'integer' THEN CAST(value AS REAL) WHEN 'real' THEN value
                      WHEN 'true' THEN 1.0 WHEN 'false' THEN 0.0 END,
            CASE type WHEN 'text' THEN value END,
            CASE WHEN type IN ('array', 'object') THEN value END
        FROM json_each(NEW.metadata, '$.attributes');
END;
"#,
    },
    Migration {
        version: 2,
        description: "search indexes on times and attribute values",
        sql: r#"
CREATE INDEX latest_by_created ON latest(ns, created_at, key);
CREATE INDEX latest_by_updated ON latest(ns, updated_at, key);
CREATE INDEX attrs_by_num ON attrs(ns, name, kind, num, key);
CREATE INDEX attrs_by_str ON attrs(ns, name, str, key);
"#,
    },
    Migration {
        version: 3,
        description: "a payload of one chunk stored in its blob row",
        // Payloads written before keep their rows in `chunks`; readers take either.
        sql: r#"
ALTER TABLE blobs ADD COLUMN data BLOB;
"#,
    },
    Migration {
        version: 4,
        description: "payloads larger than one chunk staged outside the put's transaction",
        // A streamed payload's chunks are committed one by one under a blob row with a NULL
        // hash, before the put claims it; `staged_at` (refreshed as chunks arrive) tells `gc`
        // a live stream from one abandoned by a killed process. Before this version a NULL
        // hash never outlived its transaction, so the step rewrites nothing.
        sql: r#"
ALTER TABLE blobs ADD COLUMN staged_at INTEGER;
CREATE INDEX blobs_staged ON blobs(staged_at) WHERE hash IS NULL;
"#,
    },
];

/// The schema version this build writes: the last migration's.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// What a database file holds, judged before touching it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DbState {
    /// No tables and no application id: a new file, safe to set up.
    Fresh,
    /// A stowage database at this schema version.
    Stowage(i64),
    /// Something else; the text says what was found.
    Foreign(String),
}

async fn inspect(conn: &mut SqliteConnection) -> std::result::Result<DbState, sqlx::Error> {
    let app_id: i64 = sqlx::query_scalar("PRAGMA application_id")
        .fetch_one(&mut *conn)
        .await?;
    let user_version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *conn)
        .await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(if app_id == APPLICATION_ID {
        DbState::Stowage(user_version)
    } else if app_id != 0 {
        DbState::Foreign(format!("application_id {app_id:#x}"))
    } else if tables.is_empty() {
        DbState::Fresh
    } else {
        let mut shown: Vec<&str> = tables.iter().map(String::as_str).take(5).collect();
        if tables.len() > 5 {
            shown.push("…");
        }
        DbState::Foreign(format!("tables {}", shown.join(", ")))
    })
}

fn refuse(path: &Path, state: &DbState) -> Option<Error> {
    let file = path.display();
    match state {
        DbState::Fresh => None,
        DbState::Stowage(v) if *v <= SCHEMA_VERSION => None,
        DbState::Stowage(v) => Some(Error::invalid_config(
            "storage.config.path",
            format!(
                "{file} was written by a newer stowage (schema version {v}; this build knows up to {SCHEMA_VERSION}); upgrade stowage to open it"
            ),
        )),
        DbState::Foreign(found) => Some(Error::invalid_config(
            "storage.config.path",
            format!(
                "{file} is a SQLite database of another application ({found}); stowage leaves it untouched: choose a new file"
            ),
        )),
    }
}

/// Connection options shared by the set-up connection and the pool. `journal_mode` is left out
/// on purpose: switching a file to WAL writes to it, which must wait until it is known to be ours.
pub(crate) fn connect_options(config: &SqliteConfig) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(&config.path)
        .create_if_missing(true)
        .foreign_keys(true)
        .busy_timeout(config.busy_timeout())
        .synchronous(match config.synchronous.unwrap_or_default() {
            Synchronous::Full => SqliteSynchronous::Full,
            Synchronous::Normal => SqliteSynchronous::Normal,
        })
        .analysis_limit(400)
        // 8 MiB of page cache per connection (SQLite's default is 2 MiB): the hot index pages
        // of a large store stay in memory instead of being re-read from the OS on every write.
        .pragma("cache_size", "-8192")
        // A put writes 10 to 12 pages here (version, latest and their indexes, blob and its hash
        // index) where a bare key-value table writes 2 or 3, so SQLite's default of a
        // checkpoint (two fsyncs, even at synchronous = NORMAL) every 1000 WAL pages would come
        // four times as often per record. 4096 pages (a WAL of about 16 MiB) checkpoints about
        // as often per record as the default does for such a table.
        .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string())
}

/// `PRAGMA wal_autocheckpoint` of every connection: WAL pages between checkpoints.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 4096;

/// Opens (creating if needed) the database of `config`, refuses a file that is not a stowage
/// database, applies pending migrations in one transaction, and returns the pool. A file at
/// this schema version is opened with reads only, so it opens while another process writes.
pub(crate) async fn open(config: &SqliteConfig) -> Result<SqlitePool> {
    let path = config.path.as_path();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let parent = parent.to_path_buf();
        tokio::task::spawn_blocking(move || {
            crate::store_dir::create(&parent, "storage.config.path")
        })
        .await
        .map_err(|e| {
            Error::io(
                "creating the database's directory",
                std::io::Error::other(e),
            )
        })??;
    }
    let options = connect_options(config);
    // Processes opening a new file at once race to switch it to WAL mode and create the
    // schema. SQLite answers some of those races with SQLITE_BUSY at once, without waiting
    // the busy timeout (a connection that read the file and then wants to write it could
    // deadlock with another doing the same), so the whole set-up, which is safe to repeat (it
    // looks at the file again first), is retried on a new connection for as long as the busy
    // timeout allows.
    let deadline = Instant::now() + config.busy_timeout();
    let mut pause = SET_UP_FIRST_PAUSE;
    loop {
        match connect_and_set_up(&options, path).await {
            Err(e) if is_busy_error(&e) && Instant::now() < deadline => {
                tracing::debug!(path = %path.display(), error = %e, "another process is setting the database up; trying again");
                // Jittered, so openers that collided do not collide again in step.
                let jitter = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos()) as u64
                    % (pause.as_micros() as u64 + 1);
                tokio::time::sleep(pause + Duration::from_micros(jitter)).await;
                pause = (pause * 2).min(SET_UP_MAX_PAUSE);
            }
            result => break result?,
        }
    }
    // One connection of `max_connections` is the write connection (`writer.rs`); the pool holds
    // the others, for reading (at least one).
    Ok(SqlitePoolOptions::new()
        .max_connections(config.max_connections().saturating_sub(1).max(1))
        .min_connections(0)
        // sqlx pings an idle connection before handing it out (a round trip to its worker
        // thread) to catch a server that dropped it; an embedded SQLite connection cannot go
        // stale that way, and the pool still pings on release, which catches a dead worker.
        .test_before_acquire(false)
        .connect_lazy_with(options))
}

/// The first pause before the set-up is tried again after SQLITE_BUSY; it doubles up to
/// [`SET_UP_MAX_PAUSE`].
const SET_UP_FIRST_PAUSE: Duration = Duration::from_millis(2);
const SET_UP_MAX_PAUSE: Duration = Duration::from_millis(100);

/// One attempt at [`set_up`] on a connection of its own.
async fn connect_and_set_up(options: &SqliteConnectOptions, path: &Path) -> Result<()> {
    let mut conn = SqliteConnection::connect_with(options)
        .await
        .map_err(|e| map_err(path, "opening the database", e))?;
    let result = set_up(&mut conn, path).await;
    // Closing flushes nothing we need; a failure here cannot lose data. (A set-up that failed
    // mid-migration has its transaction rolled back by the close.)
    let _ = conn.close().await;
    result
}

/// Whether `err` is SQLite's SQLITE_BUSY (or SQLITE_LOCKED), mapped by [`map_err`].
fn is_busy_error(err: &Error) -> bool {
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<sqlx::Error>())
        .is_some_and(is_busy)
}

async fn set_up(conn: &mut SqliteConnection, path: &Path) -> Result<()> {
    // One read transaction: the id, the version and the tables from one snapshot. Read one by
    // one, they could straddle another opener's migration (no id yet, then its tables) and a
    // new stowage file would look like another application's.
    let state = async {
        let mut tx = conn.begin().await?;
        let state = inspect(&mut tx).await?;
        tx.commit().await?;
        Ok(state)
    }
    .await
    .map_err(|e| map_err(path, "reading the schema", e))?;
    if let Some(err) = refuse(path, &state) {
        return Err(err);
    }
    if state == DbState::Fresh {
        // Must precede the first table; lets `gc` hand freed pages back to the file system.
        sqlx::query("PRAGMA auto_vacuum = INCREMENTAL")
            .execute(&mut *conn)
            .await
            .map_err(|e| map_err(path, "setting auto_vacuum", e))?;
    }
    // On a file in WAL mode already this writes nothing and takes no lock: `inspect` read the
    // header, so the connection is in WAL mode and the pragma finds nothing to change.
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode = WAL")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| map_err(path, "switching to WAL mode", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::backend(
            super::PROVIDER,
            format!("database {} refused WAL mode (it stays in {mode} mode); is it on a network file system?", path.display()),
            std::io::Error::other("journal_mode is not wal"),
        ));
    }
    // A file already at this version is opened without asking for the write lock: another
    // process's long write must not keep a reader from opening the store.
    if state != DbState::Stowage(SCHEMA_VERSION) {
        migrate(conn, path).await?;
    }
    optimize(conn, path).await
}

/// Lets SQLite refresh its planner statistics (`PRAGMA optimize`), which may write. Best
/// effort: it asks for the write lock without waiting, and a lock held by another writer
/// skips it until a later open (this connection is the set-up one, closed right after).
async fn optimize(conn: &mut SqliteConnection, path: &Path) -> Result<()> {
    sqlx::query("PRAGMA busy_timeout = 0")
        .execute(&mut *conn)
        .await
        .map_err(|e| map_err(path, "setting up the database", e))?;
    match sqlx::query("PRAGMA optimize = 0x10002")
        .execute(&mut *conn)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_busy(&e) => {
            tracing::debug!(path = %path.display(), error = %e, "PRAGMA optimize skipped: another connection is writing");
            Ok(())
        }
        Err(e) => Err(map_err(path, "optimizing the query planner", e)),
    }
}

/// Applies every migration newer than the file's `user_version`, all in one write transaction,
/// so concurrent openers apply each step exactly once and a failure leaves the file as it was.
/// Called only when the unlocked look at the file found it older (or new).
async fn migrate(conn: &mut SqliteConnection, path: &Path) -> Result<()> {
    let mut tx = conn
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(|e| map_err(path, "locking the database for migration", e))?;
    // Re-read under the lock: another process may have set the file up meanwhile.
    let state = inspect(&mut tx)
        .await
        .map_err(|e| map_err(path, "reading the schema", e))?;
    if let Some(err) = refuse(path, &state) {
        return Err(err);
    }
    let current = match state {
        DbState::Stowage(v) => v,
        _ => 0,
    };
    if current == SCHEMA_VERSION {
        return Ok(());
    }
    for step in MIGRATIONS {
        if step.version <= current {
            continue;
        }
        tx.execute(step.sql).await.map_err(|e| {
            map_err(
                path,
                &format!("applying migration {} ({})", step.version, step.description),
                e,
            )
        })?;
    }
    // PRAGMA values cannot be bound; both are compile-time integers.
    let record = format!(
        "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
    );
    tx.execute(record.as_str())
        .await
        .map_err(|e| map_err(path, "recording the schema version", e))?;
    tx.commit()
        .await
        .map_err(|e| map_err(path, "committing the migration", e))?;
    Ok(())
}

/// Reads a database's schema version (`PRAGMA user_version`) without changing the file; for
/// tools and tests.
pub async fn schema_version_of(path: &Path) -> Result<i64> {
    let options = SqliteConnectOptions::new().filename(path).read_only(true);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .map_err(|e| map_err(path, "opening the database", e))?;
    let row = sqlx::query("PRAGMA user_version")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| map_err(path, "reading the schema version", e))?;
    let _ = conn.close().await;
    Ok(row.get::<i64, _>(0))
}
