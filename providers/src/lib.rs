//! # stowage-providers
//!
//! The built-in providers of stowage, one module (and one cargo feature) each:
//!
//! | name | what it is |
//! |---|---|
//! | `memory` | in-memory reference provider, for tests and examples |
//! | `sqlite` | a SQLite file via sqlx: the embedded default |
//! | `fs` | a directory: content-addressed blobs and a crash-safe index log |
//! | `s3` | any S3-compatible object store via Apache OpenDAL |
//! | `automerge` | records as Automerge documents that merge instead of overwrite |
//!
//! Each module registers its factory with `inventory::submit!`, so depending on this crate is
//! enough for [`stowage_core::Registry::global`] to know them. Where a linker drops the crate
//! (nothing referenced from it), call [`register_all`].

#![warn(missing_docs)]

use std::sync::Arc;

use stowage_core::{Error, Registry, Result, StorageProviderFactory};

#[cfg(any(feature = "fs", feature = "automerge"))]
mod atomic_file;
#[cfg(any(feature = "fs", feature = "automerge"))]
mod cas_files;
#[cfg(any(feature = "fs", feature = "automerge"))]
mod lock_file;
#[cfg(any(feature = "fs", feature = "automerge", feature = "sqlite"))]
mod store_dir;

/// How a damaged or missing stored payload is repaired wherever payloads are content-addressed:
/// a put of the same bytes rewrites the stored copy (`verify` and failed reads say so).
#[cfg(any(
    feature = "fs",
    feature = "sqlite",
    feature = "s3",
    feature = "automerge"
))]
pub(crate) const REPAIR_BY_REPUT: &str = "to repair it, put the original bytes again under any key";
#[cfg(feature = "automerge")]
pub mod automerge;
#[cfg(feature = "fs")]
pub mod fs;
#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// The factories of every provider compiled into this crate.
#[allow(clippy::vec_init_then_push)] // each push is behind its own feature
pub fn builtin_factories() -> Vec<Arc<dyn StorageProviderFactory>> {
    #[allow(unused_mut)]
    let mut all: Vec<Arc<dyn StorageProviderFactory>> = Vec::new();
    #[cfg(feature = "memory")]
    all.push(memory::factory());
    #[cfg(feature = "sqlite")]
    all.push(sqlite::factory());
    #[cfg(feature = "fs")]
    all.push(fs::factory());
    #[cfg(feature = "s3")]
    all.push(s3::factory());
    #[cfg(feature = "automerge")]
    all.push(automerge::factory());
    all
}

/// Registers every built-in provider in `registry`; ones already there are left as they are.
///
/// ```
/// let registry = stowage_core::Registry::new();
/// stowage_providers::register_all(&registry).unwrap();
/// for factory in stowage_providers::builtin_factories() {
///     assert!(registry.contains(factory.name()));
/// }
/// ```
pub fn register_all(registry: &Registry) -> Result<()> {
    for factory in builtin_factories() {
        match registry.register(factory) {
            Ok(()) | Err(Error::ProviderExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
