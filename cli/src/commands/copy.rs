//! `stowage copy --to-config FILE`: copies records, with metadata and history, into the store
//! another config names (any two providers, plugins included). Safe to interrupt: a re-run
//! skips what the target already holds.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use stowage_core::copy::{self, CopyOptions, CopyReport, CopyVersions};
use stowage_core::Error;

use super::at_least_one;
use crate::context::Context;
use crate::exit::{self, Failure};
use crate::output::{counted, human_size, stderr_line};
use crate::progress::CopyProgress;

/// Arguments of `stowage copy`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Config file of the target store (its `[plugins]` are loaded too).
    #[arg(long, value_name = "FILE")]
    pub to_config: PathBuf,
    /// Only keys starting with P.
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// Copy every namespace of the source (default: only the chosen namespace).
    #[arg(long)]
    pub all_namespaces: bool,
    /// `all`: every version in order, tombstones included (version N stays version N);
    /// `latest`: only each key's latest state.
    #[arg(long, value_name = "latest|all", default_value = "all", value_parser = parse_versions)]
    pub versions: CopyVersions,
    /// Keys copied at once.
    #[arg(long, value_name = "N", default_value = "4", value_parser = at_least_one::<NonZeroUsize>)]
    pub concurrency: NonZeroUsize,
}

fn parse_versions(text: &str) -> std::result::Result<CopyVersions, String> {
    text.parse::<CopyVersions>()
        .map_err(|_| format!("expected `latest` or `all`, not {text:?}"))
}

/// Copies, then reports; any record whose final state differs is named on stderr, one per
/// line, and makes the exit code 1 (a conflict with what the target holds is 4).
pub async fn run(ctx: &Context, args: Args) -> std::result::Result<(), Failure> {
    if let Some(path) = ctx.config_source().path() {
        let same = |p: &std::path::Path| std::fs::canonicalize(p).ok();
        if same(path).is_some() && same(path) == same(&args.to_config) {
            return Err(Error::invalid_input(format!(
                "--to-config {} is the config of the source store itself; name the target's config",
                args.to_config.display()
            ))
            .into());
        }
    }
    let source = ctx.store().await?;
    let target = ctx.store_from_file(&args.to_config, "--to-config").await?;
    let options = CopyOptions {
        prefix: args.prefix,
        all_namespaces: args.all_namespaces,
        versions: args.versions,
        concurrency: Some(args.concurrency.get()),
    };
    // The library falls back to latest states when either side keeps no history; the bar
    // follows the same rule to know whether it can show a length.
    let per_key = args.versions == CopyVersions::Latest
        || !(source.capabilities().versions && target.capabilities().versions);
    let progress = CopyProgress::new(ctx.progress_visible(), per_key);
    let report = match copy::copy(&source, &target, &options, &progress).await {
        Ok(report) => report,
        Err(Error::Conflict {
            namespace,
            key,
            expected,
            ..
        }) => {
            progress.finish();
            return Err(Failure::Worded {
                message: stopped_by_conflict(
                    &namespace,
                    &key,
                    &expected,
                    progress.versions_copied(),
                ),
                code: exit::CONFLICT,
            });
        }
        Err(e) => {
            // A failed write (I/O, the target's backend) stops the copy; the error keeps its
            // kind and names the record, and what was copied before is counted.
            progress.finish();
            return Err(Failure::Worded {
                message: format!(
                    "{}; copy stopped: {}",
                    e.chain(),
                    copied_before(progress.versions_copied())
                ),
                code: exit::code_for(e.kind()),
            });
        }
    };
    progress.finish();
    if ctx.out.is_json() {
        ctx.out.json_line(
            &serde_json::to_value(&report)
                .map_err(|e| Error::io("encoding the copy report", e.into()))?,
        )?;
    } else {
        ctx.out
            .note(&summary(&report, source.provider(), target.provider()))?;
    }
    for r in &report.refused {
        stderr_line(format_args!(
            "refused: {}/{} version {}: {}",
            r.namespace, r.key, r.version, r.reason
        ));
    }
    for m in &report.mismatches {
        stderr_line(format_args!(
            "mismatch: {}/{}: {}",
            m.namespace, m.key, m.detail
        ));
    }
    if !report.refused.is_empty() {
        return Err(Failure::Worded {
            message: refused_records(&report),
            code: exit::INVALID_INPUT,
        });
    }
    if report.mismatches.is_empty() {
        return Ok(());
    }
    let n = report.mismatches.len();
    let first = &report.mismatches[0];
    // Not a failure of either provider: the stores differ (often because the source was
    // written during the copy, which each mismatch line says).
    Err(Failure::Worded {
        message: format!(
            "the copy's final check found {} differing between the source ({}) and the target ({}) (listed above; the first is {}/{}); re-run the copy to retry, or compare with `stowage versions`",
            counted(n as u64, "record"),
            source.provider(),
            target.provider(),
            first.namespace,
            first.key
        ),
        code: exit::FAILURE,
    })
}

/// The one line for a copy that left out records the target refused (listed above it, each
/// with the target's reason): how many, the first, what the rest of the copy did, and how to
/// proceed.
fn refused_records(report: &CopyReport) -> String {
    let first = &report.refused[0];
    let mismatches = match report.mismatches.len() {
        0 => String::new(),
        n => format!(
            "; the final check also found {} differing (listed above)",
            counted(n as u64, "other record")
        ),
    };
    format!(
        "the target refused {} (listed above; the first is {}/{} version {}), left out of the copy with their later versions; the other records were copied ({} copied, {} already there){mismatches}; change or remove the refused records in the source, or copy them to a store that accepts them, then re-run (it skips what the target holds)",
        counted(report.refused.len() as u64, "record"),
        first.namespace,
        first.key,
        first.version,
        counted(report.versions_copied, "version"),
        report.versions_skipped,
    )
}

/// What a copy wrote before it stopped; it stays in the target.
fn copied_before(copied: u64) -> String {
    match copied {
        0 => "nothing was copied before it stopped".to_string(),
        n => format!(
            "before it stopped it copied {}, which the target keeps (a re-run skips what it holds)",
            counted(n, "version")
        ),
    }
}

/// The one line for a copy stopped at a key whose state in the target it must not overwrite:
/// what differs (`expected` completes "expected …"), and what the copy wrote before it stopped,
/// which stays (the core's conflict sentence says nothing was written, true of that key only).
fn stopped_by_conflict(namespace: &str, key: &str, expected: &str, copied: u64) -> String {
    let before = copied_before(copied);
    format!(
        "copy stopped at {namespace}/{key}, which the target holds otherwise and is not overwritten: expected {expected}; {before}"
    )
}

/// `copy sqlite -> fs: 12 keys in 2 namespaces; 30 versions copied (1.5 MiB), 4 skipped (already in the target); final check: all match`,
/// plus `(N JSON records re-rendered by the target)` for a merging target.
fn summary(report: &CopyReport, from: &str, to: &str) -> String {
    let rerendered = match report.rerendered {
        0 => String::new(),
        n => format!(" ({} re-rendered by the target)", counted(n, "JSON record")),
    };
    let refused = match report.refused.len() {
        0 => String::new(),
        n => format!(", {} refused by the target", counted(n as u64, "record")),
    };
    format!(
        "copy {from} -> {to}: {} in {}; {} copied ({}), {} skipped (already in the target){refused}; final check: {}{rerendered}",
        counted(report.keys, "key"),
        counted(report.namespaces, "namespace"),
        counted(report.versions_copied, "version"),
        human_size(report.bytes_copied),
        report.versions_skipped,
        if report.mismatches.is_empty() {
            "all match".to_string()
        } else {
            format!("{} differ", report.mismatches.len())
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_both_providers_and_every_count() {
        let report = CopyReport {
            namespaces: 2,
            keys: 1,
            versions_copied: 30,
            versions_skipped: 4,
            bytes_copied: 1536,
            rerendered: 0,
            mismatches: Vec::new(),
            refused: Vec::new(),
        };
        assert_eq!(
            summary(&report, "sqlite", "fs"),
            "copy sqlite -> fs: 1 key in 2 namespaces; 30 versions copied (1.5 KiB), 4 skipped (already in the target); final check: all match"
        );
        let report = CopyReport {
            rerendered: 1,
            ..report
        };
        assert!(
            summary(&report, "sqlite", "automerge")
                .ends_with("final check: all match (1 JSON record re-rendered by the target)"),
            "{}",
            summary(&report, "sqlite", "automerge")
        );
    }

    #[test]
    fn a_conflict_says_what_differs_once_and_what_was_copied() {
        let line = stopped_by_conflict("default", "k", "version 2 of the target to be the source's (the source's is live with blake3:aa, the target's is deleted)", 3);
        assert_eq!(line.matches("blake3:aa").count(), 1, "{line}");
        assert!(line.contains("default/k"), "{line}");
        assert!(line.contains("it copied 3 versions"), "{line}");
        assert!(!line.contains("nothing was written"), "{line}");
        let line = stopped_by_conflict("default", "k", "x", 0);
        assert!(line.contains("nothing was copied"), "{line}");
    }

    #[test]
    fn versions_accepts_only_latest_and_all() {
        assert_eq!(parse_versions("latest").unwrap(), CopyVersions::Latest);
        assert_eq!(parse_versions("all").unwrap(), CopyVersions::All);
        assert!(parse_versions("some").unwrap_err().contains("latest"));
    }
}
