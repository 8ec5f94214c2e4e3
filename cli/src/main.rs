//! `stowage`: put, get, list, search, verify, copy, sync, benchmark and collect garbage in any
//! configured store.
//!
//! `main` parses the command line (clap derive), sets up tracing for `-v`, and dispatches to one
//! module per command under `commands/`. Every failure ends as one `stowage: <message>` line on
//! stderr and an exit code from [`exit`]. The user-facing reference is `docs/cli.md`.

mod attr_arg;
mod commands;
mod context;
mod exit;
mod output;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::context::{Context, GlobalArgs};

/// The `stowage` command line.
#[derive(Parser, Debug)]
#[command(
    name = "stowage",
    version,
    about = "Put, get, list, search, verify, copy and benchmark records in a stowage store",
    long_about = "Put, get, list, search, verify, copy and benchmark records in a stowage store.\n\n\
        The store is chosen by --config FILE, else $STOWAGE_CONFIG, else ./stowage.toml, else \
        the embedded default (SQLite at ./stowage-data/stowage.db).\n\n\
        Exit codes: 0 ok, 1 other failure, 2 invalid input, 3 not found, 4 conflict, \
        5 unsupported by the provider."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// One variant per command; each command's arguments and code live in `commands/<name>.rs`.
#[derive(Subcommand, Debug)]
enum Command {
    /// List every registered provider with its origin and capabilities.
    Providers(commands::providers::Args),
    /// Write a new version of a record from a file or stdin.
    Put(commands::put::Args),
    /// Read a record's payload to stdout or a file.
    Get(commands::get::Args),
    /// Show a record's info without its payload.
    Head(commands::head::Args),
    /// Delete a record (writes a tombstone; old versions stay until purged).
    Rm(commands::rm::Args),
    /// Undelete a record by writing a new version equal to an older live one.
    Restore(commands::restore::Args),
    /// List every version of a record, oldest first, tombstones included.
    Versions(commands::versions::Args),
    /// List records in key order.
    Ls(commands::ls::Args),
    /// Search records by prefix, tags, attributes, content type and time.
    Search(commands::search::Args),
    /// Re-hash stored payloads and check every version's references.
    Verify(commands::verify::Args),
    /// Reclaim payload bytes that no version references.
    Gc(commands::gc::Args),
    /// Remove every version of a record for good.
    Purge(commands::purge::Args),
    /// Copy records (with metadata and history) into the store of another config.
    Copy(commands::copy::Args),
    /// Exchange changes with another merging (automerge) store, both ways.
    Sync(commands::sync::Args),
    /// Benchmark a store as a whole process: ops/s, MiB/s, latency percentiles, peak RSS.
    Bench(commands::bench::Args),
    /// Inspect plugin libraries.
    #[command(subcommand)]
    Plugins(commands::plugins::Command),
}

impl Command {
    async fn run(self, ctx: &Context) -> Result<(), exit::Failure> {
        Ok(match self {
            Command::Providers(args) => commands::providers::run(ctx, args).await,
            Command::Put(args) => commands::put::run(ctx, args).await,
            Command::Get(args) => {
                let (key, version) = (args.key.clone(), args.version);
                let result = commands::get::run(ctx, args).await;
                return commands::explain_not_found(ctx, &key, version, result).await;
            }
            Command::Head(args) => {
                let (key, version) = (args.key.clone(), args.version);
                let result = commands::head::run(ctx, args).await;
                return commands::explain_not_found(ctx, &key, version, result).await;
            }
            Command::Rm(args) => {
                let key = args.key.clone();
                let result = commands::rm::run(ctx, args).await;
                return commands::explain_not_found(ctx, &key, None, result).await;
            }
            Command::Restore(args) => commands::restore::run(ctx, args).await,
            Command::Versions(args) => commands::versions::run(ctx, args).await,
            Command::Ls(args) => commands::ls::run(ctx, args).await,
            Command::Search(args) => commands::search::run(ctx, args).await,
            Command::Verify(args) => commands::verify::run(ctx, args).await,
            Command::Gc(args) => commands::gc::run(ctx, args).await,
            Command::Purge(args) => commands::purge::run(ctx, args).await,
            Command::Copy(args) => return commands::copy::run(ctx, args).await,
            Command::Sync(args) => return commands::sync::run(ctx, args).await,
            Command::Bench(args) => commands::bench::run(ctx, args).await,
            Command::Plugins(command) => commands::plugins::run(ctx, command).await,
        }?)
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return exit::clap_error(e),
    };
    context::init_tracing(&cli.global);
    // inventory submissions can be dropped by the linker; register the built-ins explicitly.
    if let Err(e) = stowage_providers::register_all(&stowage_core::Registry::global()) {
        return exit::report(&e);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return exit::report(&stowage_core::Error::io("starting the async runtime", e));
        }
    };
    let result = runtime.block_on(async {
        let ctx = Context::new(cli.global)?;
        let result = cli.command.run(&ctx).await;
        // Close even after a failure, so a store is never left half-open; the command's own
        // error is the one reported.
        let closed = ctx.close().await;
        result.and(closed.map_err(exit::Failure::from))
    });
    // A put whose precondition failed may leave a blocking stdin read pending; do not wait on it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit::report_failure(&e),
    }
}
