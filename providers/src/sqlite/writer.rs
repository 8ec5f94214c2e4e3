//! [`Writer`]: the one connection a backend writes through, and the turns its writers take on it.
//!
//! Every write of this process goes through one dedicated connection instead of whichever pool
//! connection is idle: SQLite lets one writer in at a time anyway, and a connection that is
//! the only one writing keeps its page cache across commits, where a pool connection finds its
//! cache invalidated by another connection's commit and reads every page it touches again.
//! It also skips the pool's check-out and the test it runs on every check-in (a round trip to
//! the connection's worker thread each).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::Connection;
use stowage_core::{Error, Result};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::error::map_err;
use super::PROVIDER;

/// The write connection of a backend, opened on first use, behind the lock writers take turns on.
pub(crate) struct Writer {
    options: SqliteConnectOptions,
    path: Arc<PathBuf>,
    conn: Arc<Mutex<Option<SqliteConnection>>>,
    /// Set by [`Writer::close`]: no connection is opened again.
    closed: AtomicBool,
}

impl Writer {
    /// A writer for the database `options` open; nothing is opened yet.
    pub(crate) fn new(options: SqliteConnectOptions, path: Arc<PathBuf>) -> Arc<Self> {
        Arc::new(Writer {
            options,
            path,
            conn: Arc::new(Mutex::new(None)),
            closed: AtomicBool::new(false),
        })
    }

    /// The database file, for error messages.
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Waits for this process's turn to write.
    pub(crate) async fn turn(self: &Arc<Self>) -> WriteTurn {
        let slot = self.conn.clone().lock_owned().await;
        self.turn_with(slot)
    }

    /// The turn to write, if no other writer holds it right now.
    pub(crate) fn try_turn(self: &Arc<Self>) -> Option<WriteTurn> {
        let slot = self.conn.clone().try_lock_owned().ok()?;
        Some(self.turn_with(slot))
    }

    fn turn_with(self: &Arc<Self>, slot: OwnedMutexGuard<Option<SqliteConnection>>) -> WriteTurn {
        WriteTurn {
            slot,
            writer: self.clone(),
            unfinished: false,
        }
    }

    /// Closes the write connection gracefully, after a writer still at work; later writes fail.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let conn = self.conn.lock().await.take();
        if let Some(conn) = conn {
            // Nothing is pending on it between turns: a failure to close cannot lose data.
            let _ = conn.close().await;
        }
    }
}

/// One writer's turn: exclusive use of the write connection until dropped.
///
/// A transaction written by hand as SQL text (`BEGIN …; …; COMMIT`) is marked with
/// [`WriteTurn::start`]; if the turn is dropped before [`WriteTurn::finish`] (its future was
/// cancelled mid-statement, or a rollback failed), the connection is closed instead of kept,
/// which makes SQLite roll the transaction back. Transactions through sqlx's `Transaction` roll
/// themselves back when dropped and need no marking.
pub(crate) struct WriteTurn {
    slot: OwnedMutexGuard<Option<SqliteConnection>>,
    writer: Arc<Writer>,
    unfinished: bool,
}

impl WriteTurn {
    /// The write connection, opening it if this is its first use (or the last turn closed it).
    pub(crate) async fn conn(&mut self) -> Result<&mut SqliteConnection> {
        if self.slot.is_none() {
            if self.writer.closed.load(Ordering::Acquire) {
                return Err(Error::backend(
                    PROVIDER,
                    format!(
                        "database {}: the backend was closed; open a new one to write",
                        self.writer.path.display()
                    ),
                    std::io::Error::other("write connection closed"),
                ));
            }
            let conn = SqliteConnection::connect_with(&self.writer.options)
                .await
                .map_err(|e| map_err(&self.writer.path, "opening the write connection", e))?;
            *self.slot = Some(conn);
        }
        Ok(self.slot.as_mut().expect("opened above"))
    }

    /// Runs statements that return no rows (`BEGIN`, `COMMIT`, savepoints) on the write
    /// connection; `doing` names the step in the error.
    pub(crate) async fn execute(&mut self, sql: &'static str, doing: &str) -> Result<()> {
        let path = self.writer.path.clone();
        let conn = self.conn().await?;
        sqlx::query(sql)
            .execute(conn)
            .await
            .map(|_| ())
            .map_err(|e| map_err(&path, doing, e))
    }

    /// Marks a hand-written transaction as begun.
    pub(crate) fn start(&mut self) {
        self.unfinished = true;
    }

    /// Marks the hand-written transaction as committed or rolled back.
    pub(crate) fn finish(&mut self) {
        self.unfinished = false;
    }

    /// Whether no hand-written transaction is left open on this turn (none begun, or it was
    /// committed or rolled back).
    pub(crate) fn settled(&self) -> bool {
        !self.unfinished
    }

    /// After a failed statement of a hand-written transaction: undo whatever it did.
    pub(crate) async fn roll_back(&mut self) {
        let Some(conn) = self.slot.as_mut() else {
            return;
        };
        // "no transaction is active" is the only expected failure and means there is nothing
        // to undo; any other leaves the turn unfinished, so the connection is discarded.
        match sqlx::query("ROLLBACK").execute(conn).await {
            Ok(_) => self.finish(),
            Err(e) if e.to_string().contains("no transaction") => self.finish(),
            Err(_) => {}
        }
    }
}

impl Drop for WriteTurn {
    fn drop(&mut self) {
        if self.unfinished {
            // Dropping a connection ends its worker thread, which closes the SQLite handle once
            // the statements queued before are done; closing rolls back an open transaction.
            self.slot.take();
        }
    }
}
