//! What the provider benches share (and the plugin benches of `tests/` and the provider test
//! `tests/automerge_blobs.rs`, which include this file by path): the runtime, the plain put,
//! the summary of a paired loop, peak-memory measurement of a big transfer in a child process
//! (so earlier benchmarks' allocations do not count), and the payload generator it streams. Each bench binary includes this module and uses part of it.
#![allow(dead_code)] // each bench binary uses a different part

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use stowage_core::{Body, Key, Metadata, Namespace, PutMode, RecordInfo, StorageBackend};

/// The runtime every provider bench drives its stores on: two workers, like the machines the
/// figures in `docs/benchmarks.md` come from.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the tokio runtime")
}

/// The put every bench measures: `body` under `key`, no metadata, overwriting; panics on error.
pub async fn put_plain<S: StorageBackend + ?Sized>(
    store: &S,
    ns: &Namespace,
    key: &Key,
    body: impl Into<Body>,
) -> RecordInfo {
    store
        .put(ns, key, body.into(), Metadata::new(), PutMode::Overwrite)
        .await
        .unwrap()
}

/// The mean and the median of `times`, in microseconds (sorts `times`).
pub fn mean_and_median_us(times: &mut [Duration]) -> (f64, f64) {
    times.sort();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    (
        mean.as_secs_f64() * 1e6,
        times[times.len() / 2].as_secs_f64() * 1e6,
    )
}

/// Peak resident memory of this process so far (`VmHWM`), in KiB; 0 where Linux's
/// `/proc/self/status` is missing.
pub fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `total` bytes in chunks of `chunk` bytes, each distinct (its index in its first bytes), made
/// as they are read: a payload of any size that is never whole in memory.
pub fn generated(
    total: u64,
    chunk: u64,
) -> impl futures::Stream<Item = stowage_core::Result<Bytes>> + Send + 'static {
    futures::stream::iter(0..total.div_ceil(chunk)).map(move |i| {
        let len = chunk.min(total - i * chunk) as usize;
        let mut chunk = vec![(i % 251) as u8; len];
        chunk[..8.min(len)].copy_from_slice(&i.to_le_bytes()[..8.min(len)]);
        Ok(Bytes::from(chunk))
    })
}

/// What a child process measured around one big put + get.
pub struct BigTransfer {
    /// `VmHWM` before the transfer, KiB.
    pub before_kib: u64,
    /// `VmHWM` after it, KiB.
    pub peak_kib: u64,
    pub put: Duration,
    pub get: Duration,
}

impl BigTransfer {
    /// Child side: prints the measurement as the one line [`BigTransfer::run_child`] reads.
    pub fn print(&self) {
        println!(
            "RSS before={} peak={} put_ms={} get_ms={}",
            self.before_kib,
            self.peak_kib,
            self.put.as_millis(),
            self.get.as_millis()
        );
    }

    /// Parent side: runs this bench binary again with `env = value` (the child does the
    /// transfer and [`BigTransfer::print`]s it) and reads its line; `None` (with the child's
    /// output echoed) when the child measured nothing.
    pub fn run_child(env: &str, value: impl AsRef<std::ffi::OsStr>) -> Option<BigTransfer> {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env(env, value)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "rss child failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let Some(line) = stdout.lines().find(|l| l.starts_with("RSS ")) else {
            println!("{stdout}");
            return None;
        };
        let field = |name: &str| -> u64 {
            line.split(' ')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
                .unwrap_or(0)
        };
        Some(BigTransfer {
            before_kib: field("before"),
            peak_kib: field("peak"),
            put: Duration::from_millis(field("put_ms")),
            get: Duration::from_millis(field("get_ms")),
        })
    }

    /// One line for the bench output: `label` and the transfer of `mib` MiB.
    pub fn describe(&self, label: &str, mib: f64) -> String {
        let secs = |d: Duration| d.as_secs_f64().max(0.001);
        format!(
            "{label} {mib:.0} MiB put + get: peak RSS {:.1} MiB (before the transfer {:.1} MiB); put {:.2} s ({:.0} MiB/s), get {:.2} s ({:.0} MiB/s)",
            self.peak_kib as f64 / 1024.0,
            self.before_kib as f64 / 1024.0,
            self.put.as_secs_f64(),
            mib / secs(self.put),
            self.get.as_secs_f64(),
            mib / secs(self.get),
        )
    }
}
