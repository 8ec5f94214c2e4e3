//! `stowage head KEY`: a record's info without its payload.

use stowage_core::{Key, Result, Version};

use crate::context::Context;

/// Arguments of `stowage head`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Record key.
    pub key: String,
    /// Show this version instead of the latest.
    #[arg(long, value_name = "N")]
    pub version: Option<Version>,
}

/// Prints every field of the record's version.
pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let key = Key::new(args.key)?;
    let info = ctx.handle().await?.head(key.as_str(), args.version).await?;
    ctx.out.record_details(&info)
}
