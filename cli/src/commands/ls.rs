//! `stowage ls [PREFIX]`: records in byte order of key, one per line.

use std::num::NonZeroUsize;

use stowage_core::{ListOptions, Result};

use super::at_least_one;
use crate::context::Context;

/// Page size used to walk a whole listing without holding it all in memory.
const WALK_PAGE: usize = 1000;

/// Arguments of `stowage ls`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only keys starting with this (byte-wise; need not end at `/`).
    pub prefix: Option<String>,
    /// Print at most N records; a hint on stderr says how to continue.
    #[arg(long, value_name = "N", value_parser = at_least_one::<NonZeroUsize>)]
    pub limit: Option<NonZeroUsize>,
    /// Only keys after KEY (pass the last key of the previous page).
    #[arg(long, value_name = "KEY")]
    pub after: Option<String>,
    /// Include records whose latest version is a tombstone.
    #[arg(long)]
    pub deleted: bool,
}

/// Lists one page (`--limit`) or the whole listing, page by page. When `--limit` leaves more
/// records, a hint says how to continue, or with `--json` a last line
/// `{"more": true, "next_after": KEY}` (no record has a `more` field).
pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let handle = ctx.handle().await?;
    let mut options = ListOptions {
        prefix: args.prefix,
        start_after: args.after,
        limit: Some(args.limit.map_or(WALK_PAGE, NonZeroUsize::get)),
        include_deleted: args.deleted,
        cursor: None,
    };
    let mut seen = std::collections::HashSet::new();
    loop {
        let page = handle.list(options.clone()).await?;
        ctx.out.record_lines(&page.items)?;
        match (page.next, args.limit) {
            (None, _) => return Ok(()),
            (Some(_), Some(_)) => {
                if let Some(last) = page.items.last() {
                    if ctx.out.is_json() {
                        ctx.out.json_line(&serde_json::json!({
                            "more": true,
                            "next_after": last.key.as_str(),
                        }))?;
                    } else {
                        ctx.out.hint(&format!(
                            "more records follow; continue with {}",
                            after_arg(last.key.as_str())
                        ));
                    }
                }
                return Ok(());
            }
            (Some(next), None) => {
                options.cursor = Some(super::cursor_once(
                    &mut seen,
                    next,
                    handle.store().provider(),
                )?)
            }
        }
    }
}

/// `--after KEY` as a shell would need it typed: quoted when the key holds anything beyond
/// plainly safe characters, and as `--after=KEY` when it starts with `-` (which would read as
/// an option).
fn after_arg(key: &str) -> String {
    let safe = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:@%+,=-".contains(&b));
    let quoted = if safe {
        key.to_string()
    } else {
        format!("'{}'", key.replace('\'', r"'\''"))
    };
    if key.starts_with('-') {
        format!("--after={quoted}")
    } else {
        format!("--after {quoted}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_continuation_is_typed_as_a_shell_needs_it() {
        assert_eq!(after_arg("b/1"), "--after b/1");
        assert_eq!(after_arg("b c"), "--after 'b c'");
        assert_eq!(after_arg("it's"), r"--after 'it'\''s'");
        assert_eq!(after_arg("$HOME;rm"), "--after '$HOME;rm'");
        assert_eq!(after_arg("é"), "--after 'é'");
        assert_eq!(after_arg("-x"), "--after=-x");
        assert_eq!(after_arg("-x y"), "--after='-x y'");
    }
}
