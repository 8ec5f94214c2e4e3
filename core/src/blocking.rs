//! [`run_blocking`]: where a provider's blocking work (file I/O, an embedded database) runs.
//!
//! An async provider must not block an async worker thread, so it hands blocking work to
//! tokio's blocking pool. When the provider is called through the plugin C ABI, though, the
//! call is synchronous: the host already runs it on a thread that may block, and that thread
//! waits for the answer. Hopping to another thread there only adds a wake-up to every call, so
//! the plugin guest marks its calling threads and [`run_blocking`] runs the work in place on
//! them. A provider written once with [`run_blocking`] is as fast behind the plugin ABI as
//! linked in directly.

use std::cell::Cell;

use crate::{Error, Result};

thread_local! {
    static MAY_BLOCK: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, which may block, without blocking an async worker thread: in place when the
/// current thread is allowed to block (inside a plugin call), otherwise on tokio's blocking
/// pool. Needs a tokio runtime in the second case, like `tokio::task::spawn_blocking`.
///
/// `provider` names the provider in the error returned if `f` panics on the blocking pool
/// (in place, a panic unwinds to the caller, which the plugin guest turns into an error).
///
/// ```
/// # async fn demo() -> stowage_core::Result<()> {
/// let len = stowage_core::run_blocking("demo", || Ok(std::fs::read("Cargo.toml").map(|b| b.len()).unwrap_or(0))).await?;
/// # let _ = len; Ok(()) }
/// ```
pub async fn run_blocking<T: Send + 'static>(
    provider: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    if MAY_BLOCK.with(Cell::get) {
        return f();
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Backend {
            provider: provider.to_string(),
            message: format!("a blocking task failed: {e}"),
            source: None,
        })?
}

/// Marks the current thread as allowed to block until the guard is dropped (nesting restores
/// the previous state).
pub(crate) struct MayBlock(bool);

impl MayBlock {
    /// Marks the current thread; see [`run_blocking`].
    pub(crate) fn enter() -> Self {
        MayBlock(MAY_BLOCK.with(|m| m.replace(true)))
    }
}

impl Drop for MayBlock {
    fn drop(&mut self) {
        MAY_BLOCK.with(|m| m.set(self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn runs_in_place_only_on_marked_threads() {
        let here = std::thread::current().id();
        let elsewhere = run_blocking("t", move || Ok(std::thread::current().id()))
            .await
            .unwrap();
        assert_ne!(
            elsewhere, here,
            "an async worker must hand blocking work off"
        );
        let in_place = {
            let _mark = MayBlock::enter();
            run_blocking("t", move || Ok(std::thread::current().id())).await
        }
        .unwrap();
        assert_eq!(
            in_place, here,
            "a thread that may block runs the work itself"
        );
        let after = run_blocking("t", move || Ok(std::thread::current().id()))
            .await
            .unwrap();
        assert_ne!(after, here, "the mark ends with its guard");
    }

    #[tokio::test]
    async fn a_panic_on_the_pool_is_an_error_naming_the_provider() {
        let err = run_blocking::<()>("kv", || panic!("boom"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("kv"), "{err}");
    }
}
