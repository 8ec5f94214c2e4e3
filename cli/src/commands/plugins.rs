//! `stowage plugins check FILE`: loads a plugin library the way `[plugins]` would and says
//! what it provides, or why it is refused.

use std::path::PathBuf;

use stowage_core::{Error, ErrorKind, PluginDescription, PluginLibrary, Registry, Result};

use crate::commands::providers::capability_names;
use crate::context::Context;

/// The `plugins` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Load a plugin library and list what it provides, or say why it is refused (exit 2).
    Check(CheckArgs),
}

/// Arguments of `stowage plugins check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The shared library (.so, .dylib, .dll).
    pub file: PathBuf,
}

/// Runs a `plugins` subcommand.
pub async fn run(ctx: &Context, command: Command) -> Result<()> {
    match command {
        Command::Check(args) => check(ctx, args),
    }
}

/// Loads the library with every check of the host (entry symbol, ABI, struct sizes, target),
/// then registers it beside the built-ins, so a provider name that would clash is refused here
/// as it would be in a config. A refused library is invalid input: exit 2.
fn check(ctx: &Context, args: CheckArgs) -> Result<()> {
    // A bare file name would make the dynamic loader search the system's library path rather
    // than the working directory.
    let file = std::path::absolute(&args.file).unwrap_or(args.file);
    if file.is_dir() {
        return Err(Error::invalid_input(format!(
            "{} is a directory; `plugins check` expects a plugin library file (.so, .dylib, .dll)",
            file.display()
        )));
    }
    let library = PluginLibrary::load(&file).map_err(refused)?;
    library.register(&Registry::global()).map_err(refused)?;
    let description = library.describe();
    if ctx.out.is_json() {
        return ctx.out.json_line(
            &serde_json::to_value(&description)
                .map_err(|e| Error::io("encoding the plugin description", e.into()))?,
        );
    }
    ctx.out.data(&text(&description))
}

/// A load or registration failure becomes exit 2, keeping its message (which names the file).
fn refused(e: Error) -> Error {
    match e.kind() {
        ErrorKind::Plugin | ErrorKind::ProviderExists => Error::InvalidInput {
            message: format!("refused: {e}"),
        },
        _ => e,
    }
}

/// `file:`, `plugin:`, `abi:`, `target:` lines, then one block per provider.
fn text(d: &PluginDescription) -> String {
    let mut lines = vec![
        format!("file:     {}", d.path.display()),
        format!("plugin:   {} {}", d.plugin, d.version),
        format!("abi:      {}", d.abi),
        format!("target:   {}", d.target),
    ];
    for p in &d.providers {
        lines.push(format!("provider: {}  {}", p.name, p.description));
        lines.push(format!(
            "    capabilities: {}",
            capability_names(&p.capabilities).join(", ")
        ));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_invalid_input_and_keep_the_file_name() {
        let e = refused(Error::Plugin {
            path: PathBuf::from("libx.so"),
            message: "wrong ABI".into(),
        });
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("libx.so"), "{e}");
        let io = refused(Error::io("reading", std::io::Error::other("x")));
        assert_eq!(io.kind(), ErrorKind::Io);
    }
}
