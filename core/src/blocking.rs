//! [`run_blocking`] and [`run_on_pool`]: where a provider's blocking work (file I/O, an
//! embedded database, a call into a plugin) runs.
//!
//! Async code must not block the runtime, and the usual way out, tokio's `spawn_blocking`,
//! costs a thread hop and a wake-up on every call — for a small read, more than the read
//! itself. So blocking work runs in place whenever that is allowed:
//!
//! - inside a plugin call (the guest marks the host's calling thread, which is waiting for the
//!   answer anyway);
//! - on a multi-thread runtime, with `tokio::task::block_in_place`: the worker's queued tasks
//!   move to another thread while this one blocks, so nothing else waits;
//! - only a current-thread runtime, which cannot hand its tasks off, gets `spawn_blocking`.
//!
//! Measured on the `kv` example provider (redb), 4 KiB gets on a 2-worker runtime: 4.3 µs in
//! place against 25 µs through the blocking pool, and twice the throughput with 16 tasks at
//! once (see `docs/benchmarks.md`). As with any blocking call, other futures of the *same* task
//! (`join!`) wait while it runs, so a wait on something one of them holds goes through
//! [`run_on_pool`] instead.

use std::cell::Cell;

use tokio::runtime::{Handle, RuntimeFlavor};

use crate::{Error, Result};

thread_local! {
    static MAY_BLOCK: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, which may block, without stalling the async runtime (see the module docs): in
/// place inside a plugin call, with `block_in_place` on a multi-thread runtime, on the blocking
/// pool on a current-thread one. Outside any runtime it needs one, like
/// `tokio::task::spawn_blocking`.
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
    let f = match in_place(f) {
        Ok(done) => return done,
        Err(f) => f,
    };
    run_on_pool(provider, f).await
}

/// Runs `f`, which may block, on tokio's blocking pool, never in place: for a wait on
/// something another future of the calling task may hold (a lock a `join!`ed future releases
/// when it finishes). In place, the wait would stop that future from being polled, and neither
/// would finish; on the pool, the task goes on polling its other futures meanwhile. Everything
/// else should use [`run_blocking`], which saves the thread hop.
///
/// `provider` names the provider in the error returned if `f` panics.
///
/// ```
/// # async fn demo() -> stowage_core::Result<()> {
/// let lock = std::sync::Arc::new(std::sync::Mutex::new(()));
/// let waiter = lock.clone();
/// stowage_core::run_on_pool("demo", move || Ok(drop(waiter.lock().unwrap()))).await?;
/// # Ok(()) }
/// ```
pub async fn run_on_pool<T: Send + 'static>(
    provider: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Backend {
            provider: provider.to_string(),
            message: format!("a blocking task failed: {e}"),
            source: None,
        })?
}

/// Runs `f` on this thread when blocking is allowed here (inside a plugin call, or with
/// `block_in_place` on a multi-thread runtime), or hands it back untouched when only the
/// blocking pool may run it. [`run_blocking`] is built on it; a caller can use it directly to
/// lend `f` what it borrows, and clone only on the rare way to the pool.
pub(crate) fn in_place<T, F: FnOnce() -> T>(f: F) -> std::result::Result<T, F> {
    if MAY_BLOCK.with(Cell::get) {
        return Ok(f());
    }
    if Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread) {
        return Ok(tokio::task::block_in_place(f));
    }
    Err(f)
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

    fn thread() -> Result<std::thread::ThreadId> {
        Ok(std::thread::current().id())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_current_thread_runtime_hands_work_off_unless_the_thread_may_block() {
        let here = std::thread::current().id();
        let elsewhere = run_blocking("t", thread).await.unwrap();
        assert_ne!(elsewhere, here, "the only worker must not block");
        let in_place = {
            let _mark = MayBlock::enter();
            run_blocking("t", thread).await
        }
        .unwrap();
        assert_eq!(
            in_place, here,
            "a thread that may block runs the work itself"
        );
        let after = run_blocking("t", thread).await.unwrap();
        assert_ne!(after, here, "the mark ends with its guard");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_multi_thread_runtime_runs_work_in_place_and_keeps_serving_other_tasks() {
        let (tx, rx) = std::sync::mpsc::channel();
        // On the runtime's only worker: the blocking work waits for another task of the same
        // runtime, which can only run if the worker's queue was handed to another thread.
        let blocked = tokio::spawn(async move {
            let here = std::thread::current().id();
            let (ran_on, served) = run_blocking("t", move || {
                let served = rx.recv_timeout(std::time::Duration::from_secs(30)).is_ok();
                Ok((std::thread::current().id(), served))
            })
            .await
            .unwrap();
            (here, ran_on, served)
        });
        tokio::spawn(async move { tx.send(()).unwrap() });
        let (here, ran_on, served) = blocked.await.unwrap();
        assert_eq!(ran_on, here, "the work runs in place, without a hop");
        assert!(served, "other tasks stalled while the work blocked");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panic_on_the_pool_is_an_error_naming_the_provider() {
        let err = run_blocking::<()>("kv", || panic!("boom"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("kv"), "{err}");
    }
}
