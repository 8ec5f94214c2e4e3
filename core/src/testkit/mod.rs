//! The conformance kit: one suite of behaviours every provider runs to prove it keeps the
//! [`StorageBackend`](crate::StorageBackend) contract — built-ins, plugins and third-party
//! providers alike.
//!
//! Each behaviour is a public `async fn(&Stowage) -> BehaviourResult` (for example
//! [`round_trip_empty`], [`version_numbering`], [`race_if_version`], [`namespace_isolation`];
//! [`behaviours`] lists them all). It opens its own fresh namespace (`ck-<label>-<random>`), so
//! behaviours do not see each other's records and one store can run them all, or be reused
//! across runs. It reads [`Stowage::capabilities`] first and returns [`Outcome::Skipped`] with
//! the reason when the provider rules it out — a skip is reported, never a silent pass. A
//! [`Failure`] names the step and what differed (expected vs got).
//!
//! ## Using it from a provider's tests
//!
//! Enable the kit in the provider crate's `Cargo.toml`:
//!
//! ```toml
//! [dev-dependencies]
//! stowage-core = { version = "0.1", features = ["testkit"] }
//! serde_json = "1"
//! ```
//!
//! Then one line gives one test per behaviour, each against a fresh store made by an async
//! expression (evaluated once per test). The generated tests build their own multi-threaded
//! tokio runtime, so the provider crate needs no tokio dev-dependency for them. Put the call in
//! a module of its own so the generated names (`conformance::race_if_version`, …) do not clash
//! with the provider's other tests:
//!
//! ```no_run
//! // tests/my_provider.rs
//! mod conformance {
//!     stowage_core::conformance_tests!(async {
//!         // Any way of making a `Stowage`: a factory's `create`, `Stowage::from_backend`, or
//!         // the builder with a registry that holds the provider.
//!         stowage_core::Stowage::builder()
//!             .with_storage("my-provider", serde_json::json!({"path": "target/conformance"}))
//!             .build()
//!             .await
//!             .expect("creating the store under test")
//!     });
//! }
//! # fn main() {}
//! ```
//!
//! When the store needs something kept alive for the test (a temporary directory, a server),
//! yield the store together with it — `(Stowage, guard)` — and the guard is dropped only after
//! the behaviour ran (see [`StoreUnderTest`]):
//!
//! ```no_run
//! mod conformance {
//!     stowage_core::conformance_tests!(async {
//!         let dir = tempfile::tempdir().expect("creating a scratch directory");
//!         let store = stowage_core::Stowage::builder()
//!             .with_storage("my-provider", serde_json::json!({ "root": dir.path() }))
//!             .build()
//!             .await
//!             .expect("creating the store under test");
//!         (store, dir)
//!     });
//! }
//! # fn main() {}
//! ```
//!
//! `cargo test` then names the behaviour that failed, with what differed, and prints a
//! `SKIPPED` line (straight to stderr, so it shows for passing tests too) for each behaviour the
//! provider's capabilities rule out.
//!
//! Or the whole suite in one test, from a factory and its config — what plugin checks use:
//!
//! ```no_run
//! # async fn demo() {
//! let factory = stowage_core::Registry::global().get("my-provider").unwrap();
//! let report = stowage_core::testkit::run_all(factory, serde_json::json!({})).await;
//! println!("{report}"); // PASS / SKIP / FAIL, one line per behaviour
//! report.assert_passed();
//! # }
//! ```
//!
//! [`run_all`] checks the config schema, validates the config, creates the backend, checks the
//! factory and the backend agree on name and capabilities, then runs every behaviour one after
//! another and returns a [`ConformanceReport`]. [`run_behaviours`] does the same on a store
//! already made, and each behaviour can be called alone.
//!
//! ## What the behaviours assume
//!
//! - Operations on a key with no version (never written, or purged) are `NotFound`: `get`,
//!   `head`, `delete`, `restore`, `versions` and `purge` alike — and a namespace answers for a
//!   key that only another namespace holds exactly as for one that exists nowhere.
//! - `put`'s returned info is what `head`, `get`, `list` and `versions` return later, field for
//!   field (timestamps keep their microseconds).
//! - The behaviours about `gc` and dedup count what `gc` removes. They sweep the store first,
//!   so a store reused across runs is fine, but no other writer may purge on the same store
//!   while they run (the macro gives each test its own store; `run_all` runs one at a time).
//! - The search behaviours need distinct timestamps, so they pause a few milliseconds between
//!   writes; the runtime needs its timer enabled (`#[tokio::test]` has it).
//! - The race behaviours spawn tasks with `tokio::spawn`, so they run inside a tokio runtime.
//! - [`random_operations`] joins a put and a `gc` of the same store in one task: `gc` must be
//!   safe beside the writes of its own process, and neither may block the task's thread while
//!   it waits for the other.

mod blobs;
mod check;
mod conditional;
mod fixture;
mod isolation;
mod keys;
mod listing;
mod model;
mod roundtrip;
mod search;
mod versions;

use std::io::Write;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::factory::StorageProviderFactory;
use crate::stowage::Stowage;

pub use blobs::{
    dedup_across_keys_and_namespaces, gc_and_verify_clean, namespaces_listed,
    unsupported_operations_say_so,
};
pub use check::{BehaviourResult, Failure, Outcome};
pub use conditional::{
    concurrent_overwrites_get_distinct_versions, delete_if_version, put_base_without_merge,
    put_create, put_if_version, race_base_merge, race_create, race_if_version,
};
pub use fixture::{
    all_keys, chunked_body, fresh_namespace, hash_body, pattern, read_body, streamed_body,
    streamed_slice,
};
pub use isolation::namespace_isolation;
pub use keys::{hostile_keys_rejected, long_and_unicode_keys};
pub use listing::{bad_cursors_rejected, list_pagination, list_prefix_and_start_after};
pub use model::{random_operations, random_operations_shared};
pub use roundtrip::{
    body_of_another_size_writes_nothing, byte_ranges, failed_body_writes_nothing,
    metadata_round_trip, round_trip_all_byte_values, round_trip_empty, round_trip_large_streamed,
    round_trip_one_byte,
};
pub use search::{search_filters, search_ordering, search_time_windows};
pub use versions::{
    old_versions_readable, purge, restore_default_version, restore_specific_version, tombstones,
    version_numbering,
};

/// Runs one behaviour against a store.
pub type BehaviourFn = for<'a> fn(&'a Stowage) -> BoxFuture<'a, BehaviourResult>;

/// A named behaviour of the suite.
#[derive(Clone, Copy)]
pub struct Behaviour {
    /// The behaviour's name (also the name of its function and of its generated test).
    pub name: &'static str,
    /// Runs it.
    pub run: BehaviourFn,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Behaviour")
            .field("name", &self.name)
            .finish()
    }
}

/// Calls back `$callback!{ ($args) name, name, … }` with every behaviour's name: the one list
/// both [`behaviours`] and [`conformance_tests!`](crate::conformance_tests) are made from.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_behaviours {
    ($callback:ident; $($args:tt)*) => {
        $crate::$callback! {
            ($($args)*)
            round_trip_empty,
            round_trip_one_byte,
            round_trip_all_byte_values,
            round_trip_large_streamed,
            failed_body_writes_nothing,
            body_of_another_size_writes_nothing,
            metadata_round_trip,
            byte_ranges,
            version_numbering,
            old_versions_readable,
            tombstones,
            restore_default_version,
            restore_specific_version,
            purge,
            put_create,
            put_if_version,
            put_base_without_merge,
            delete_if_version,
            race_if_version,
            race_create,
            concurrent_overwrites_get_distinct_versions,
            race_base_merge,
            list_pagination,
            list_prefix_and_start_after,
            bad_cursors_rejected,
            search_filters,
            search_time_windows,
            search_ordering,
            hostile_keys_rejected,
            long_and_unicode_keys,
            namespace_isolation,
            dedup_across_keys_and_namespaces,
            gc_and_verify_clean,
            namespaces_listed,
            unsupported_operations_say_so,
            random_operations
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_table {
    (() $($name:ident),*) => {
        /// Every behaviour of the suite, in the order [`run_all`] runs them.
        pub fn behaviours() -> Vec<Behaviour> {
            vec![$(Behaviour {
                name: stringify!($name),
                run: |store| Box::pin($crate::testkit::$name(store)),
            }),*]
        }
    };
}

__conformance_behaviours!(__conformance_table;);

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test_fns {
    (($make:expr) $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                $crate::testkit::run_test(
                    stringify!($name),
                    |store| ::std::boxed::Box::pin($crate::testkit::$name(store)),
                    $make,
                );
            }
        )*
    };
}

/// Expands to one `#[test]` per behaviour of the conformance kit, each running against a
/// fresh store made by the given async expression (evaluated once per test), which yields a
/// [`Stowage`](crate::Stowage) or a `(Stowage, guard)` pair (see
/// [`StoreUnderTest`](crate::testkit::StoreUnderTest)).
///
/// Put it in a module of its own so the generated names do not collide with other tests (see
/// the [`testkit`](crate::testkit) module docs):
///
/// ```no_run
/// mod conformance {
///     stowage_core::conformance_tests!(async {
///         stowage_core::Stowage::builder()
///             .with_storage("memory", serde_json::json!({}))
///             .build()
///             .await
///             .expect("creating the store")
///     });
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr $(,)?) => {
        $crate::__conformance_behaviours!(__conformance_test_fns; $make);
    };
}

/// What one behaviour did.
#[derive(Debug)]
pub struct BehaviourReport {
    /// The behaviour's name.
    pub name: &'static str,
    /// Passed, skipped (with the reason) or failed (with what differed).
    pub result: BehaviourResult,
}

/// What a run of the suite found, behaviour by behaviour.
#[derive(Debug)]
#[must_use = "a conformance report passes nothing until it is checked: call assert_passed()"]
pub struct ConformanceReport {
    /// The provider under test.
    pub provider: String,
    /// One entry per behaviour, in run order.
    pub results: Vec<BehaviourReport>,
}

impl ConformanceReport {
    /// Behaviours that passed.
    pub fn passed(&self) -> Vec<&'static str> {
        self.results
            .iter()
            .filter(|r| matches!(r.result, Ok(Outcome::Passed)))
            .map(|r| r.name)
            .collect()
    }

    /// Behaviours skipped, with the reason.
    pub fn skipped(&self) -> Vec<(&'static str, &str)> {
        self.results
            .iter()
            .filter_map(|r| match &r.result {
                Ok(Outcome::Skipped(reason)) => Some((r.name, reason.as_str())),
                _ => None,
            })
            .collect()
    }

    /// Behaviours that failed, with what differed.
    pub fn failures(&self) -> Vec<(&'static str, &Failure)> {
        self.results
            .iter()
            .filter_map(|r| r.result.as_ref().err().map(|f| (r.name, f)))
            .collect()
    }

    /// Whether no behaviour failed.
    pub fn is_success(&self) -> bool {
        self.results.iter().all(|r| r.result.is_ok())
    }

    /// Prints a summary and every skip to stderr (unbuffered, so it shows even when the test
    /// passes), then panics listing every failure.
    pub fn assert_passed(&self) {
        let mut summary = format!(
            "conformance of provider `{}`: {} passed, {} skipped, {} failed\n",
            self.provider,
            self.passed().len(),
            self.skipped().len(),
            self.failures().len()
        );
        for (name, reason) in self.skipped() {
            summary.push_str(&format!("  SKIP {name}: {reason}\n"));
        }
        write_unbuffered(&summary);
        let failures = self.failures();
        if !failures.is_empty() {
            let list: Vec<String> = failures
                .iter()
                .map(|(name, f)| format!("  {name}: {f}"))
                .collect();
            panic!(
                "provider `{}` failed {} conformance behaviour(s):\n{}",
                self.provider,
                failures.len(),
                list.join("\n")
            );
        }
    }
}

impl std::fmt::Display for ConformanceReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "conformance of provider `{}`: {} passed, {} skipped, {} failed",
            self.provider,
            self.passed().len(),
            self.skipped().len(),
            self.failures().len()
        )?;
        for r in &self.results {
            match &r.result {
                Ok(Outcome::Passed) => writeln!(f, "  PASS {}", r.name)?,
                Ok(Outcome::Skipped(reason)) => writeln!(f, "  SKIP {}: {reason}", r.name)?,
                Err(failure) => writeln!(f, "  FAIL {}: {failure}", r.name)?,
            }
        }
        Ok(())
    }
}

/// Runs one behaviour, turning a panic inside the provider into a [`Failure`].
pub async fn run_behaviour(store: &Stowage, behaviour: Behaviour) -> BehaviourReport {
    let result = std::panic::AssertUnwindSafe((behaviour.run)(store))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            Err(Failure::new(format!(
                "panicked: {}",
                panic_message(panic.as_ref())
            )))
        });
    BehaviourReport {
        name: behaviour.name,
        result,
    }
}

/// Runs every behaviour against `store`, one after another.
pub async fn run_behaviours(store: &Stowage) -> ConformanceReport {
    let mut results = Vec::new();
    for behaviour in behaviours() {
        results.push(run_behaviour(store, behaviour).await);
    }
    ConformanceReport {
        provider: store.provider().to_string(),
        results,
    }
}

/// Validates `config` with `factory`, creates a store, checks the factory and the backend agree
/// on what they support, then runs every behaviour the capabilities allow.
pub async fn run_all(
    factory: Arc<dyn StorageProviderFactory>,
    config: serde_json::Value,
) -> ConformanceReport {
    let provider = factory.name().to_string();
    let setup = |result: BehaviourResult| ConformanceReport {
        provider: provider.clone(),
        results: vec![BehaviourReport {
            name: "create_store",
            result,
        }],
    };
    if !factory.config_schema().is_object() {
        return setup(Err(Failure::new(
            "config_schema() must be a JSON Schema object".to_string(),
        )));
    }
    if let Err(e) = factory.validate(&config) {
        return setup(Err(Failure::new(format!(
            "validate() refused the config {config}: {e}"
        ))));
    }
    let backend = match factory.create(config.clone()).await {
        Ok(b) => b,
        Err(e) => {
            return setup(Err(Failure::new(format!(
                "create() failed with config {config}: {e}"
            ))))
        }
    };
    let store = Stowage::from_backend(backend);
    let mut report = run_behaviours(&store).await;
    let agree = if store.provider() != factory.name() {
        Err(Failure::new(format!(
            "the backend says it is provider `{}`, its factory is `{}`",
            store.provider(),
            factory.name()
        )))
    } else if store.capabilities() != factory.capabilities() {
        Err(Failure::new(format!(
            "the factory announces {:?} but the backend reports {:?}",
            factory.capabilities(),
            store.capabilities()
        )))
    } else {
        Ok(Outcome::Passed)
    };
    report.results.insert(
        0,
        BehaviourReport {
            name: "factory_matches_backend",
            result: agree,
        },
    );
    report
}

/// What the async expression given to [`conformance_tests!`](crate::conformance_tests) may
/// yield: a [`Stowage`], or a `Stowage` with a guard (a temporary directory, a server handle)
/// that must live until the test's behaviour has run; the guard is dropped right after it,
/// inside the test's runtime.
pub trait StoreUnderTest {
    /// The store the behaviour runs against.
    fn store(&self) -> &Stowage;
}

impl StoreUnderTest for Stowage {
    fn store(&self) -> &Stowage {
        self
    }
}

impl<G> StoreUnderTest for (Stowage, G) {
    fn store(&self) -> &Stowage {
        &self.0
    }
}

/// The body of each test [`conformance_tests!`](crate::conformance_tests) generates: builds a
/// runtime, makes the store, runs the behaviour, prints a skip, panics on a failure.
#[doc(hidden)]
pub fn run_test<S: StoreUnderTest>(
    name: &'static str,
    run: BehaviourFn,
    make_store: impl std::future::Future<Output = S>,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building a tokio runtime for the conformance test");
    let (provider, report) = runtime.block_on(async {
        let made = make_store.await;
        let store = made.store();
        let report = run_behaviour(store, Behaviour { name, run }).await;
        let provider = store.provider().to_string();
        drop(made);
        (provider, report)
    });
    match report.result {
        Ok(Outcome::Passed) => {}
        Ok(Outcome::Skipped(reason)) => write_unbuffered(&format!(
            "conformance behaviour `{name}` SKIPPED for provider `{provider}`: {reason}\n"
        )),
        Err(failure) => {
            panic!("conformance behaviour `{name}` failed for provider `{provider}`: {failure}")
        }
    }
}

/// Writes straight to the process's stderr: the test harness captures `eprintln!` of passing
/// tests, and a skip must stay visible.
fn write_unbuffered(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}
