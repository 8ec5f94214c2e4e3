//! `stowage verify`: re-hashes stored payloads and checks every version's references.

use stowage_core::{Error, Result};

use crate::context::Context;
use crate::output::{counted, human_size};

/// Arguments of `stowage verify` (none besides the global ones).
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the check with a progress bar; any problem found is exit 1 after the report.
pub async fn run(ctx: &Context, _args: Args) -> Result<()> {
    let store = ctx.store().await?;
    let progress = ctx.progress("verify");
    let report = store.verify(&progress).await?;
    progress.finish();
    if ctx.out.is_json() {
        ctx.out.json_line(
            &serde_json::to_value(&report)
                .map_err(|e| Error::io("encoding the verify report", e.into()))?,
        )?;
    } else {
        for p in &report.problems {
            let record = match (&p.namespace, &p.key, p.version) {
                (Some(ns), Some(key), Some(v)) => format!("{ns}/{key} v{v}: "),
                (Some(ns), Some(key), None) => format!("{ns}/{key}: "),
                _ => String::new(),
            };
            let hash = p.hash.map(|h| format!(" ({h})")).unwrap_or_default();
            ctx.out
                .data(&format!("{}: {record}{}{hash}", p.problem, p.detail))?;
        }
        ctx.out.note(&format!(
            "verified {}, {}, {}: {}",
            counted(report.records_checked, "record version"),
            counted(report.blobs_checked, "payload"),
            human_size(report.bytes_checked),
            if report.is_clean() {
                "no problems".to_string()
            } else {
                counted(report.problems.len() as u64, "problem")
            }
        ))?;
    }
    if report.is_clean() {
        Ok(())
    } else {
        Err(Error::corrupt(
            store.provider(),
            format!(
                "verify found {}; the first: {}",
                counted(report.problems.len() as u64, "problem"),
                report.problems[0].detail
            ),
        ))
    }
}
