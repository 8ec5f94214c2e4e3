//! `stowage rm KEY`: deletes a record by writing a tombstone.

use stowage_core::{DeleteOptions, Key, Result, Version};

use crate::context::Context;

/// Arguments of `stowage rm`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Record key.
    pub key: String,
    /// Delete only if the key's latest version is N (exit 4 otherwise).
    #[arg(long, value_name = "N")]
    pub if_version: Option<Version>,
}

/// Writes the tombstone and prints it.
pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let key = Key::new(args.key)?;
    let options = DeleteOptions {
        if_version: args.if_version,
    };
    let tombstone = ctx.handle().await?.delete(key.as_str(), options).await?;
    if ctx.out.is_json() {
        return ctx.out.json_line(&tombstone.to_json());
    }
    ctx.out.note(&format!(
        "deleted {}/{} v{} (earlier versions stay until `stowage purge`)",
        tombstone.namespace, tombstone.key, tombstone.version
    ))
}
