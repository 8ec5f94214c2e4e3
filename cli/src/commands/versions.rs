//! `stowage versions KEY`: every version of a record, oldest first.

use stowage_core::{Error, Key, Result};

use crate::context::Context;
use crate::output::human_size;

/// Arguments of `stowage versions`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Record key.
    pub key: String,
}

/// Prints one line (or JSON object) per version, tombstones included.
pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let key = Key::new(args.key)?;
    let handle = ctx.handle().await?;
    let versions = handle.versions(key.as_str()).await?;
    if versions.is_empty() {
        // A provider may answer an unknown key with an empty history rather than NotFound.
        return Err(Error::not_found(handle.namespace(), &key, None));
    }
    if ctx.out.is_json() {
        for info in &versions {
            ctx.out.json_line(&info.to_json())?;
        }
        return Ok(());
    }
    for info in &versions {
        let state = match info.deleted_at {
            Some(_) => "deleted".to_string(),
            None => format!("{}  {}", human_size(info.size), info.hash),
        };
        ctx.out
            .data(&format!("v{}  {}  {state}", info.version, info.updated_at))?;
    }
    Ok(())
}
