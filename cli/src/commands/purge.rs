//! `stowage purge KEY`: removes every version of a record for good.

use stowage_core::{Error, Key, Result};

use crate::context::Context;
use crate::output::counted;

/// Arguments of `stowage purge`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Record key.
    pub key: String,
}

/// Removes the versions and says how many went; `stowage gc` then reclaims their payloads.
pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let key = Key::new(args.key)?;
    let handle = ctx.handle().await?;
    let removed = handle.purge(key.as_str()).await?;
    if removed == 0 {
        // Purging a key that never existed is most likely a typo: say so, as `rm` does.
        return Err(Error::not_found(handle.namespace(), &key, None));
    }
    if ctx.out.is_json() {
        return ctx.out.json_line(&serde_json::json!({
            "namespace": handle.namespace(),
            "key": key,
            "versions_removed": removed,
        }));
    }
    ctx.out.note(&format!(
        "purged {}/{}: {} removed (run `stowage gc` to reclaim payload space)",
        handle.namespace(),
        key,
        counted(removed as u64, "version")
    ))
}
