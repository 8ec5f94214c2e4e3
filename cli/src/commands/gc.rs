//! `stowage gc`: reclaims payload bytes that no version references.

use stowage_core::{Error, Result};

use crate::context::Context;
use crate::output::{counted, human_size};

/// Arguments of `stowage gc` (none besides the global ones).
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs garbage collection with a progress bar and prints what it freed.
pub async fn run(ctx: &Context, _args: Args) -> Result<()> {
    let store = ctx.store().await?;
    let progress = ctx.progress("gc");
    let report = store.gc(&progress).await?;
    progress.finish();
    if ctx.out.is_json() {
        return ctx.out.json_line(
            &serde_json::to_value(&report)
                .map_err(|e| Error::io("encoding the gc report", e.into()))?,
        );
    }
    ctx.out.note(&format!(
        "gc: removed {} ({}), kept {}",
        counted(report.blobs_removed, "unreferenced payload"),
        human_size(report.bytes_freed),
        report.blobs_kept
    ))
}
