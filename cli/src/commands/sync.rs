//! `stowage sync --to-config FILE`: exchanges changes, in both directions, between this store
//! and another one of a merging provider (`automerge`), so that afterwards every record reads
//! the same from both.

use std::path::PathBuf;

use stowage_core::{Error, Result, StowageConfig};

use crate::context::{read_config, Context};
use crate::exit::{self, Failure};

/// The one provider whose stores can be synced.
const MERGING_PROVIDER: &str = "automerge";

/// Arguments of `stowage sync`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Config file of the other store (must also use the `automerge` provider).
    #[arg(long, value_name = "FILE")]
    pub to_config: PathBuf,
}

/// Runs the sync; a store of another provider is exit 5 (unsupported) before anything is read.
pub async fn run(ctx: &Context, args: Args) -> std::result::Result<(), Failure> {
    let source = ctx.load_config()?;
    let target = read_config(&args.to_config, "--to-config")?;
    for config in [&source, &target] {
        ensure_merging(config)?;
    }
    Ok(exchange(ctx, &source, &target).await?)
}

/// Refuses a store whose provider does not merge: only its changes could be exchanged.
fn ensure_merging(config: &StowageConfig) -> std::result::Result<(), Failure> {
    if config.storage.provider == MERGING_PROVIDER {
        return Ok(());
    }
    Err(Failure::Worded {
        message: format!(
            "the store in {} uses provider `{}`: sync exchanges changes between {MERGING_PROVIDER} \
             stores only; to move records between other providers use `stowage copy`",
            config.source, config.storage.provider
        ),
        code: exit::UNSUPPORTED,
    })
}

#[cfg(feature = "automerge")]
async fn exchange(ctx: &Context, source: &StowageConfig, target: &StowageConfig) -> Result<()> {
    use stowage_providers::automerge::{sync_stores, AutomergeBackend};

    let a = AutomergeBackend::from_config(&source.storage.config)?;
    let b = AutomergeBackend::from_config(&target.storage.config)?;
    let report = sync_stores(&a, &b).await?;
    if ctx.out.is_json() {
        return ctx.out.json_line(
            &serde_json::to_value(&report)
                .map_err(|e| Error::io("encoding the sync report", e.into()))?,
        );
    }
    ctx.out.note(&format!(
        "sync {} <-> {}: {}, {} changed; {} sent, {} received; {} in {}",
        a.root().display(),
        b.root().display(),
        crate::output::counted(report.documents as u64, "document"),
        report.documents_changed,
        crate::output::counted(report.changes_a_to_b as u64, "change"),
        report.changes_b_to_a,
        crate::output::human_size(report.bytes_sent()),
        crate::output::counted(report.messages as u64, "message")
    ))
}

#[cfg(not(feature = "automerge"))]
async fn exchange(_ctx: &Context, _source: &StowageConfig, _target: &StowageConfig) -> Result<()> {
    Err(Error::Unsupported {
        operation: "sync (this build of stowage has no automerge provider; build it with the automerge feature)".into(),
        provider: MERGING_PROVIDER.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_merging_stores_are_accepted() {
        let mut config = StowageConfig::embedded_default();
        let Err(Failure::Worded { message, code }) = ensure_merging(&config) else {
            panic!("a sqlite store is not refused in words");
        };
        assert_eq!(code, exit::UNSUPPORTED);
        assert!(message.contains("provider `sqlite`"), "{message}");
        assert!(message.contains("stowage copy"), "{message}");
        config.storage.provider = "automerge".into();
        assert!(ensure_merging(&config).is_ok());
    }
}
