//! Cross-crate integration tests of stowage live in `tests/` (one file per subject:
//! `plugins*.rs`, …) and benchmarks in `benches/`; this library is intentionally empty.
//!
//! The plugin tests load real shared libraries from `target/plugins/`, built by
//! `scripts/build-plugin-fixtures` before `cargo test`.

/// The README's Rust example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExamples;

/// The user guide's Rust example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../../docs/user-guide.md")]
pub struct UserGuideExamples;
