//! `stowage restore KEY`: undeletes a record.

use stowage_core::{Key, Result, Version};

use crate::context::Context;

/// Arguments of `stowage restore`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Record key.
    pub key: String,
    /// Copy this live version (default: the newest live one).
    #[arg(long, value_name = "N")]
    pub version: Option<Version>,
}

/// Writes a new version equal to the chosen live one and prints it.
pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let key = Key::new(args.key)?;
    let info = ctx
        .handle()
        .await?
        .restore(key.as_str(), args.version)
        .await?;
    ctx.out.written("restored", &info)
}
