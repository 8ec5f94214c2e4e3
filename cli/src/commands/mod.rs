//! One module per command: each defines its clap `Args` and an async `run(ctx, args)`.
//!
//! To add a command: add a module here, a variant to `Command` in `main.rs`, and its arm in
//! `Command::run`.

pub mod bench;
pub mod copy;
pub mod gc;
pub mod get;
pub mod head;
pub mod ls;
pub mod plugins;
pub mod providers;
pub mod purge;
pub mod put;
pub mod restore;
pub mod rm;
pub mod search;
pub mod sync;
pub mod verify;
pub mod versions;
