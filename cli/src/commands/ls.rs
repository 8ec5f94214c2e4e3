//! `stowage ls [PREFIX]`: records in byte order of key, one per line.

use std::num::NonZeroUsize;

use stowage_core::{ListOptions, Result};

use crate::context::Context;

/// Page size used to walk a whole listing without holding it all in memory.
const WALK_PAGE: usize = 1000;

/// Arguments of `stowage ls`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only keys starting with this (byte-wise; need not end at `/`).
    pub prefix: Option<String>,
    /// Print at most N records; a hint on stderr says how to continue.
    #[arg(long, value_name = "N")]
    pub limit: Option<NonZeroUsize>,
    /// Only keys after KEY (pass the last key of the previous page).
    #[arg(long, value_name = "KEY")]
    pub after: Option<String>,
    /// Include records whose latest version is a tombstone.
    #[arg(long)]
    pub deleted: bool,
}

/// Lists one page (`--limit`) or the whole listing, page by page.
pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let handle = ctx.handle().await?;
    let mut options = ListOptions {
        prefix: args.prefix,
        start_after: args.after,
        limit: Some(args.limit.map_or(WALK_PAGE, NonZeroUsize::get)),
        include_deleted: args.deleted,
        cursor: None,
    };
    loop {
        let page = handle.list(options.clone()).await?;
        ctx.out.record_lines(&page.items)?;
        match (page.next, args.limit) {
            (None, _) => return Ok(()),
            (Some(_), Some(_)) => {
                if let Some(last) = page.items.last() {
                    ctx.out.hint(&format!(
                        "more records follow; continue with --after {}",
                        last.key
                    ));
                }
                return Ok(());
            }
            (Some(next), None) => options.cursor = Some(next),
        }
    }
}
