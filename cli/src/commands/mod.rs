//! One module per command: each defines its clap `Args` and an async `run(ctx, args)`.
//!
//! To add a command: add a module here, a variant to `Command` in `main.rs`, and its arm in
//! `Command::run`.

pub mod bench;
pub mod copy;
pub mod gc;
pub mod get;
pub mod head;
pub mod ls;
pub mod plugins;
pub mod providers;
pub mod purge;
pub mod put;
pub mod restore;
pub mod rm;
pub mod search;
pub mod sync;
pub mod verify;
pub mod versions;

/// Clap value parser for a count that must be at least 1 (`NonZeroUsize`, `NonZeroU64`): says
/// so, where the standard library's own error reads "number would be zero for non-zero type".
pub fn at_least_one<T>(text: &str) -> Result<T, String>
where
    T: std::str::FromStr<Err = std::num::ParseIntError>,
{
    text.parse::<T>().map_err(|e| match e.kind() {
        std::num::IntErrorKind::Zero => "must be at least 1".to_string(),
        std::num::IntErrorKind::Empty | std::num::IntErrorKind::InvalidDigit => {
            "expected a whole number of at least 1".to_string()
        }
        _ => e.to_string(),
    })
}

/// The outcome of a command that read or deleted `key` (at `version`), with a `NotFound` said
/// more precisely where the key's history tells why: the record is deleted (its latest version
/// is a deletion marker), or the version asked for is a deletion marker, was purged, or is not
/// written yet. The exit code stays 3; any other outcome passes through.
pub async fn explain_not_found(
    ctx: &crate::context::Context,
    key: &str,
    version: Option<stowage_core::Version>,
    result: stowage_core::Result<()>,
) -> Result<(), crate::exit::Failure> {
    let error = match result {
        Err(e) if e.kind() == stowage_core::ErrorKind::NotFound => e,
        other => return Ok(other?),
    };
    let worded = |message: String| crate::exit::Failure::Worded {
        message,
        code: crate::exit::NOT_FOUND,
    };
    // The history is only a better explanation: if it cannot be read, the error stands.
    let Ok(handle) = ctx.handle().await else {
        return Err(error.into());
    };
    let Ok(history) = handle.versions(key).await else {
        return Err(error.into());
    };
    let Some(latest) = history.last() else {
        return Err(error.into());
    };
    let record = format!("{}/{}", latest.namespace, latest.key);
    let message = match version {
        None if latest.is_deleted() => format!(
            "record {record} is deleted: its latest version, v{}, is a deletion marker \
             (`stowage restore` brings its last live version back; `stowage versions` lists its \
             history)",
            latest.version
        ),
        None => return Err(error.into()),
        Some(0) => format!("record {record} has no version 0: versions start at 1"),
        Some(v) => match history.iter().find(|i| i.version == v) {
            Some(i) if i.is_deleted() => format!(
                "version {v} of record {record} is a deletion marker (`stowage versions` lists \
                 the key's history)"
            ),
            Some(_) => return Err(error.into()),
            None if v > latest.version => format!(
                "record {record} has no version {v}: its latest is v{}",
                latest.version
            ),
            None => format!(
                "version {v} of record {record} is gone: it was purged (`stowage versions` lists \
                 the versions the key still has)"
            ),
        },
    };
    Err(worded(message))
}

/// `next`, the cursor of the page after one a walk (`ls`, `search`) just printed, if the walk
/// has not met it before: a provider whose cursors come back round would have it print the
/// same pages for ever.
pub fn cursor_once(
    seen: &mut std::collections::HashSet<String>,
    next: String,
    provider: &str,
) -> stowage_core::Result<String> {
    if seen.insert(next.clone()) {
        return Ok(next);
    }
    Err(stowage_core::Error::Backend {
        provider: provider.into(),
        message: format!(
            "its paging cursor {next:?} came back: following it would print the same records for ever"
        ),
        source: None,
    })
}

#[cfg(test)]
mod tests {
    use std::num::{NonZeroU64, NonZeroUsize};

    use super::at_least_one;

    #[test]
    fn counts_below_one_say_so() {
        assert_eq!(at_least_one::<NonZeroUsize>("3").unwrap().get(), 3);
        assert_eq!(
            at_least_one::<NonZeroU64>("0").unwrap_err(),
            "must be at least 1"
        );
        assert_eq!(
            at_least_one::<NonZeroUsize>("x").unwrap_err(),
            "expected a whole number of at least 1"
        );
    }
}
