//! Maps sqlx and SQLite errors into stowage's [`Error`], naming the database file.

use std::path::Path;

use stowage_core::Error;

use super::PROVIDER;

/// SQLite primary result codes that mean the file itself is damaged or is no database.
const SQLITE_CORRUPT: i32 = 11;
const SQLITE_NOTADB: i32 = 26;
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_FULL: i32 = 13;

/// The primary SQLite result code of an sqlx error, if it came from SQLite.
pub(crate) fn sqlite_code(err: &sqlx::Error) -> Option<i32> {
    let db = err.as_database_error()?;
    let code: i32 = db.code()?.parse().ok()?;
    // Extended codes carry the primary code in their low byte.
    Some(code & 0xff)
}

/// Whether `err` is SQLite's answer that another connection holds a lock this one wanted
/// (`SQLITE_BUSY`, or `SQLITE_LOCKED` within one process).
pub(crate) fn is_busy(err: &sqlx::Error) -> bool {
    matches!(sqlite_code(err), Some(SQLITE_BUSY | SQLITE_LOCKED))
}

/// Turns an sqlx error met while `doing` something with the database at `path` into an
/// [`Error`] a user can act on.
pub(crate) fn map_err(path: &Path, doing: &str, err: sqlx::Error) -> Error {
    let file = path.display();
    if matches!(err, sqlx::Error::PoolClosed) {
        return Error::backend(
            PROVIDER,
            format!("database {file}: the backend was closed; open a new one to read or write ({doing} failed)"),
            err,
        );
    }
    match sqlite_code(&err) {
        Some(SQLITE_CORRUPT) => Error::corrupt(
            PROVIDER,
            format!("database {file} is corrupt ({err}) while {doing}; restore it from a backup or run `stowage verify` on a copy"),
        ),
        Some(SQLITE_NOTADB) => Error::corrupt(
            PROVIDER,
            format!("{file} is not a SQLite database ({err}); point storage.config.path at a stowage database or a new file"),
        ),
        Some(SQLITE_BUSY) => Error::backend(
            PROVIDER,
            format!("database {file} stayed locked by another writer while {doing}; retry, or raise storage.config.busy_timeout_ms"),
            err,
        ),
        Some(SQLITE_FULL) => Error::backend(
            PROVIDER,
            format!("the disk holding {file} is full while {doing}"),
            err,
        ),
        _ => Error::backend(PROVIDER, format!("database {file}: {doing} failed"), err),
    }
}
