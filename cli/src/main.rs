//! `stowage`: put, get, list, search, verify and collect garbage in any configured store.
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
    about = "Put, get, list, search, verify and collect garbage in a stowage store",
    long_about = "Put, get, list, search, verify and collect garbage in a stowage store.\n\n\
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
}

impl Command {
    async fn run(self, ctx: &Context) -> stowage_core::Result<()> {
        match self {
            Command::Providers(args) => commands::providers::run(ctx, args).await,
            Command::Put(args) => commands::put::run(ctx, args).await,
            Command::Get(args) => commands::get::run(ctx, args).await,
            Command::Head(args) => commands::head::run(ctx, args).await,
            Command::Rm(args) => commands::rm::run(ctx, args).await,
            Command::Restore(args) => commands::restore::run(ctx, args).await,
            Command::Versions(args) => commands::versions::run(ctx, args).await,
            Command::Ls(args) => commands::ls::run(ctx, args).await,
            Command::Search(args) => commands::search::run(ctx, args).await,
            Command::Verify(args) => commands::verify::run(ctx, args).await,
            Command::Gc(args) => commands::gc::run(ctx, args).await,
            Command::Purge(args) => commands::purge::run(ctx, args).await,
        }
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
        cli.command.run(&ctx).await
    });
    // A put whose precondition failed may leave a blocking stdin read pending; do not wait on it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit::report(&e),
    }
}
