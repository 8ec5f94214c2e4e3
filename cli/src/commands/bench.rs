//! `stowage bench`: a whole-process benchmark of a store — the configured one (plugins
//! included), or a fresh temporary store of a built-in provider — through the same calls every
//! other command makes. Phases run one after the other (put, get, head); each reports ops/s,
//! MiB/s and p50/p99 latency, and the run reports the process's peak resident memory.
//!
//! The JSON form (one object per run) is what `scripts/bench-report` reads:
//! `{"provider", "size", "ops", "concurrency", "phases": [{"operation", "ops_per_sec",
//! "mib_per_sec", "p50_us", "p99_us"}], "peak_rss_mib"}`.

use std::num::{NonZeroU64, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use stowage_core::{
    Body, Error, Metadata, NamespaceHandle, PutMode, Result, Stowage, StowageConfig,
};

use super::at_least_one;
use crate::context::Context;
use crate::output::{counted, human_size};

/// Arguments of `stowage bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Benchmark a fresh temporary store of this provider (memory, sqlite, fs, automerge)
    /// instead of the configured one; for s3 or a plugin, write a config and pass --config.
    #[arg(long, value_name = "NAME")]
    pub provider: Option<String>,
    /// Payload size of each record: 512, 64k, 4KiB, 1MiB, 2GiB (k, K, KB, KiB all mean 1024).
    #[arg(long, value_name = "SIZE", default_value = "4KiB", value_parser = parse_size)]
    pub size: u64,
    /// Operations per phase.
    #[arg(long, value_name = "N", default_value = "1000", value_parser = at_least_one::<NonZeroU64>)]
    pub ops: NonZeroU64,
    /// Operations in flight at once (each on its own task).
    #[arg(long, value_name = "N", default_value = "1", value_parser = at_least_one::<NonZeroUsize>)]
    pub concurrency: NonZeroUsize,
    /// Instead of benchmarking, remove the records of earlier runs that were killed before
    /// they could (every `bench-PID-SECONDS` namespace). Run it when no other bench runs.
    #[arg(long)]
    pub clean_up: bool,
}

/// One measured phase, as printed and as in the JSON.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PhaseResult {
    /// `put`, `get` or `head`.
    pub operation: &'static str,
    /// Operations per second over the phase's wall time.
    pub ops_per_sec: f64,
    /// Payload MiB per second over the phase's wall time (0 for `head`).
    pub mib_per_sec: f64,
    /// Median latency of one operation, microseconds.
    pub p50_us: u64,
    /// 99th-percentile latency of one operation, microseconds.
    pub p99_us: u64,
}

/// One run, as printed and as in the JSON.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// The provider benchmarked.
    pub provider: String,
    /// Payload size of each record, bytes.
    pub size: u64,
    /// Operations per phase.
    pub ops: u64,
    /// Operations in flight at once.
    pub concurrency: usize,
    /// The phases, in the order they ran.
    pub phases: Vec<PhaseResult>,
    /// Peak resident set size of the whole process (VmHWM), MiB; `null` where unknown.
    pub peak_rss_mib: Option<f64>,
}

/// The phases, in order; each after the first reads what `put` wrote.
const PHASES: [Phase; 3] = [Phase::Put, Phase::Get, Phase::Head];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Put,
    Get,
    Head,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Put => "put",
            Phase::Get => "get",
            Phase::Head => "head",
        }
    }

    fn moves_payload(self) -> bool {
        matches!(self, Phase::Put | Phase::Get)
    }
}

/// Runs the benchmark and prints one report.
pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    if args.clean_up {
        if args.provider.is_some() {
            return Err(Error::invalid_input(
                "bench --clean-up works on the configured store (--config FILE); a --provider store is temporary and leaves nothing",
            ));
        }
        return clean_up(ctx).await;
    }
    let report = match &args.provider {
        Some(_) if ctx.has_config_flag() => {
            return Err(Error::invalid_input(
                "bench takes --provider NAME (a fresh temporary store) or --config FILE (a configured store), not both",
            ))
        }
        Some(name) => bench_temporary(name, &args).await?,
        None => bench_configured(ctx, &args).await?,
    };
    if ctx.out.is_json() {
        return ctx.out.json_line(
            &serde_json::to_value(&report)
                .map_err(|e| Error::io("encoding the bench report", e.into()))?,
        );
    }
    ctx.out.data(&text(&report))
}

/// Benchmarks a store made for the run in a temporary directory, removed afterwards.
async fn bench_temporary(name: &str, args: &Args) -> Result<BenchReport> {
    let dir = tempfile::Builder::new()
        .prefix("stowage-bench-")
        .tempdir()
        .map_err(|e| Error::io("creating a temporary directory for the benchmark store", e))?;
    let config = temporary_config(name, dir.path())?;
    let store = Stowage::builder()
        .registry(stowage_core::Registry::global())
        .config(config)
        .build()
        .await?;
    let result = match store.namespace("bench") {
        Ok(handle) => measure(&handle, args, || {}).await,
        Err(e) => Err(e),
    };
    // Close before the directory goes, so nothing writes into a removed tree.
    let closed = store.close().await;
    let report = result?;
    closed?;
    Ok(report)
}

/// The config of a fresh store of `name` under `dir`.
fn temporary_config(name: &str, dir: &std::path::Path) -> Result<StowageConfig> {
    let provider_config = match name {
        "memory" => serde_json::json!({}),
        "sqlite" => serde_json::json!({ "path": dir.join("stowage.db") }),
        "fs" | "automerge" => serde_json::json!({ "root": dir.join("root") }),
        "s3" => {
            return Err(Error::invalid_input(
                "bench --provider s3 cannot make a temporary store (it needs a bucket, endpoint and credentials); write a config file with [storage] provider = \"s3\" and run `stowage bench --config FILE`",
            ))
        }
        other => {
            return Err(Error::invalid_input(format!(
                "bench --provider makes a temporary store of memory, sqlite, fs or automerge, not {other:?}; for any other provider (a plugin, s3) write a config file and run `stowage bench --config FILE`"
            )))
        }
    };
    let mut config = StowageConfig::embedded_default();
    config.storage.provider = name.to_string();
    config.storage.config = provider_config;
    config.source = format!("bench --provider {name}");
    Ok(config)
}

/// Benchmarks the configured store in a namespace of its own, purged afterwards where the
/// provider can purge, so the store's own records are never touched.
async fn bench_configured(ctx: &Context, args: &Args) -> Result<BenchReport> {
    let store = ctx.store().await?;
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let handle = store.namespace(&format!(
        "{LEFTOVER_PREFIX}{}-{since_epoch}",
        std::process::id()
    ))?;
    let measured = measure(&handle, args, || {
        // Said before the first write: a run killed outright (kill -9) cannot remove its
        // records, and this line then names them (`stowage bench --clean-up` removes them).
        ctx.out.hint(&format!(
            "bench: writing in namespace {} (removed at the end)",
            handle.namespace()
        ))
    })
    .await;
    if store.capabilities().purge {
        // Whatever the run wrote, also when a phase failed part-way: the namespace is this
        // run's own, so its listing is exactly that.
        let purged = purge_all(&handle).await;
        let report = measured?;
        let purged = purged?;
        if store.capabilities().gc {
            ctx.out.hint(&format!(
                "bench: purged its {} from namespace {}; run `stowage gc` to reclaim their payload bytes",
                counted(purged, "record"),
                handle.namespace()
            ));
        }
        return Ok(report);
    }
    let report = measured?;
    ctx.out.hint(&format!(
        "bench: provider `{}` cannot purge, so the {} benchmark records stay in namespace {}",
        store.provider(),
        args.ops,
        handle.namespace()
    ));
    Ok(report)
}

/// The start of the name of every namespace a `bench` run writes in (`bench-PID-SECONDS`).
const LEFTOVER_PREFIX: &str = "bench-";

/// Whether `ns` is the namespace of a bench run: `bench-<pid>-<seconds since the epoch>`.
fn is_bench_namespace(ns: &str) -> bool {
    ns.strip_prefix(LEFTOVER_PREFIX)
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(pid, secs)| {
            [pid, secs]
                .iter()
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// `bench --clean-up`: purges every namespace a bench run left behind (one killed before it
/// could remove its records) and says how many records went.
async fn clean_up(ctx: &Context) -> Result<()> {
    let store = ctx.store().await?;
    let caps = store.capabilities();
    if !caps.list_namespaces || !caps.purge {
        return Err(Error::unsupported(
            "bench --clean-up (it lists namespaces and purges)",
            store.provider(),
        ));
    }
    let (mut namespaces, mut records) = (0u64, 0u64);
    for ns in store.namespaces().await? {
        if is_bench_namespace(ns.as_str()) {
            records += purge_all(&store.namespace(ns.as_str())?).await?;
            namespaces += 1;
        }
    }
    if ctx.out.is_json() {
        return ctx.out.json_line(&serde_json::json!({
            "namespaces": namespaces,
            "records": records,
        }));
    }
    ctx.out.note(&format!(
        "bench: removed {} from {} left by earlier runs{}",
        counted(records, "record"),
        counted(namespaces, "namespace"),
        if records > 0 && caps.gc {
            "; run `stowage gc` to reclaim their payload bytes"
        } else {
            ""
        }
    ))
}

/// Purges every record of `handle`'s namespace (tombstones too); returns how many.
async fn purge_all(handle: &NamespaceHandle) -> Result<u64> {
    let mut purged = 0;
    loop {
        // Each page lists what is left: purged keys are gone from the next one.
        let page = handle
            .list(stowage_core::ListOptions {
                include_deleted: true,
                limit: Some(1000),
                ..Default::default()
            })
            .await?;
        if page.items.is_empty() {
            return Ok(purged);
        }
        for record in page.items {
            handle.purge(record.key.as_str()).await?;
            purged += 1;
        }
    }
}

/// The most operations a run takes: each one's latency is kept (16 bytes) for the
/// percentiles, so a billion would need 16 GiB before a single figure came out.
const MAX_OPS: u64 = 100_000_000;

/// Runs every phase against `handle` and reads the peak RSS at the end; `starting` is called
/// once the arguments are found workable, before the first write.
async fn measure(
    handle: &NamespaceHandle,
    args: &Args,
    starting: impl FnOnce(),
) -> Result<BenchReport> {
    if args.ops.get() > MAX_OPS {
        return Err(Error::invalid_input(format!(
            "--ops {} is more than bench takes ({MAX_OPS}): every operation's latency is kept for the percentiles; run several smaller benches",
            args.ops
        )));
    }
    let payload = Payload::new(args.size)?;
    let ops = args.ops.get();
    let concurrency = args
        .concurrency
        .get()
        .min(usize::try_from(ops).unwrap_or(usize::MAX));
    starting();
    let mut phases = Vec::new();
    for phase in PHASES {
        phases.push(run_phase(handle, phase, ops, concurrency, &payload).await?);
    }
    Ok(BenchReport {
        provider: handle.store().provider().to_string(),
        size: args.size,
        ops,
        concurrency,
        phases,
        peak_rss_mib: peak_rss_mib(),
    })
}

/// The key of operation `i`.
fn key(i: u64) -> String {
    format!("bench/{i:010}")
}

/// Runs `ops` operations of one phase on `concurrency` tasks that take the next operation
/// number from a shared counter, timing each operation.
async fn run_phase(
    handle: &NamespaceHandle,
    phase: Phase,
    ops: u64,
    concurrency: usize,
    payload: &Payload,
) -> Result<PhaseResult> {
    // Reserved before any task starts, so a failure here leaves nothing running.
    let mut latencies: Vec<Duration> = Vec::new();
    latencies
        .try_reserve_exact(usize::try_from(ops).unwrap_or(usize::MAX))
        .map_err(|e| {
            Error::invalid_input(format!(
                "cannot keep the latencies of {ops} operations in memory ({e}); use fewer --ops"
            ))
        })?;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (handle, next, payload) = (handle.clone(), next.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    return Ok::<_, Error>(latencies);
                }
                let op_started = Instant::now();
                one_op(&handle, phase, i, &payload).await?;
                latencies.push(op_started.elapsed());
            }
        }));
    }
    // Ctrl-C stops the phase cleanly: no new operation starts, the ones in flight finish, and
    // the run ends with an error, so the caller still removes what it wrote (a process killed
    // by the signal would leave its records behind).
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    let mut interrupted = false;
    for mut task in tasks {
        let done = loop {
            tokio::select! {
                done = &mut task => break done,
                _ = &mut interrupt, if !interrupted => {
                    next.store(ops, Ordering::Relaxed);
                    interrupted = true;
                }
            }
        };
        let done =
            done.map_err(|e| Error::io("a benchmark task failed", std::io::Error::other(e)))??;
        latencies.extend(done);
    }
    if interrupted {
        return Err(Error::io(
            format!("benchmarking {}", phase.name()),
            std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "interrupted (Ctrl-C); the records written were removed",
            ),
        ));
    }
    let wall = started.elapsed();
    let bytes = if phase.moves_payload() {
        payload.size.saturating_mul(ops)
    } else {
        0
    };
    Ok(summarize(phase.name(), &mut latencies, wall, bytes))
}

/// Throughput over the wall time and latency percentiles (nearest rank).
fn summarize(
    operation: &'static str,
    latencies: &mut [Duration],
    wall: Duration,
    bytes: u64,
) -> PhaseResult {
    latencies.sort_unstable();
    let secs = wall.as_secs_f64().max(1e-9);
    PhaseResult {
        operation,
        ops_per_sec: round1(latencies.len() as f64 / secs),
        mib_per_sec: round1(bytes as f64 / (1024.0 * 1024.0) / secs),
        p50_us: percentile_us(latencies, 50),
        p99_us: percentile_us(latencies, 99),
    }
}

/// The `p`th percentile of sorted latencies by nearest rank, in whole microseconds.
fn percentile_us(sorted: &[Duration], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len()).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1].as_micros() as u64
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// One operation `i` of a phase; `get` reads the whole payload and checks its length.
async fn one_op(handle: &NamespaceHandle, phase: Phase, i: u64, payload: &Payload) -> Result<()> {
    let key = key(i);
    match phase {
        Phase::Put => {
            handle
                .put_with(&key, payload.body(i), Metadata::new(), PutMode::Overwrite)
                .await?;
        }
        Phase::Get => {
            let (_, mut body) = handle.get(&key).await?;
            let mut read = 0u64;
            while let Some(chunk) = body.next_chunk().await {
                read += chunk?.len() as u64;
            }
            if read != payload.size {
                return Err(Error::corrupt(
                    handle.store().provider(),
                    format!(
                        "bench read {} of {}/{key} but wrote {}",
                        counted(read, "byte"),
                        handle.namespace(),
                        payload.size
                    ),
                ));
            }
        }
        Phase::Head => {
            handle.head(&key, None).await?;
        }
    }
    Ok(())
}

/// The payloads: one shared block of pseudo-random bytes whose first 8 bytes are replaced by
/// the operation number, so every record is distinct (no dedup flattering the figures) and
/// building one costs no copy of the block.
#[derive(Clone)]
struct Payload {
    size: u64,
    block: Bytes,
}

impl Payload {
    /// The payloads of `size` bytes; an error, not an abort, when that much memory is not
    /// to be had (the block is held whole, once, for the whole run).
    fn new(size: u64) -> Result<Self> {
        let len = usize::try_from(size).unwrap_or(usize::MAX);
        // splitmix64: cheap and incompressible enough that no layer can shortcut it.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut block = Vec::new();
        block.try_reserve_exact(len).map_err(|e| {
            Error::invalid_input(format!(
                "cannot hold a benchmark payload of {} in memory ({e}); use a smaller --size",
                human_size(size)
            ))
        })?;
        while block.len() < len {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let take = (len - block.len()).min(8);
            block.extend_from_slice(&z.to_le_bytes()[..take]);
        }
        Ok(Payload {
            size,
            block: Bytes::from(block),
        })
    }

    /// The payload of operation `i`, streamed as two chunks.
    fn body(&self, i: u64) -> Body {
        let head_len = self.block.len().min(8);
        let head = Bytes::copy_from_slice(&i.to_le_bytes()[..head_len]);
        let rest = self.block.slice(head_len..);
        Body::from_stream(futures::stream::iter([Ok(head), Ok(rest)]), Some(self.size))
    }
}

/// The process's peak resident set size in MiB, from `VmHWM` in `/proc/self/status` (Linux).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(round1(kib / 1024.0))
}

/// Parses `512`, `512B`, `64k`, `4KiB`, `4KB`, `1MiB`, `1.5m`, `2GiB` (binary multiples).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}; use a number of bytes with an optional k/KiB, m/MiB or g/GiB (e.g. 4KiB, 1MiB, 512)"
            ))
        }
    };
    let bad = || format!("{text:?} is not a size; use e.g. 4KiB, 1MiB, 64k or 512");
    if number.is_empty() {
        return Err(bad());
    }
    let bytes = if number.contains('.') {
        let value: f64 = number.parse().map_err(|_| bad())?;
        let bytes = value * multiplier as f64;
        if bytes.fract() != 0.0 || bytes > u64::MAX as f64 {
            return Err(format!("{text:?} is not a whole number of bytes"));
        }
        bytes as u64
    } else {
        let value: u64 = number.parse().map_err(|_| bad())?;
        value
            .checked_mul(multiplier)
            .ok_or_else(|| format!("{text:?} is too large"))?
    };
    Ok(bytes)
}

/// The text report: a heading, one aligned line per phase, the peak RSS.
fn text(r: &BenchReport) -> String {
    let mut lines = vec![format!(
        "bench {}: {} ops of {} per phase, concurrency {}",
        r.provider,
        r.ops,
        human_size(r.size),
        r.concurrency
    )];
    for p in &r.phases {
        lines.push(format!(
            "  {:<5} {:>10.1} ops/s  {:>8.1} MiB/s  p50 {:>7} µs  p99 {:>7} µs",
            p.operation, p.ops_per_sec, p.mib_per_sec, p.p50_us, p.p99_us
        ));
    }
    lines.push(match r.peak_rss_mib {
        Some(mib) => format!("peak RSS: {mib:.1} MiB"),
        None => "peak RSS: unknown on this platform".to_string(),
    });
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_every_documented_spelling() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("64k"), Ok(64 * 1024));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("4KB"), Ok(4096));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1.5m"), Ok(3 << 19));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size(" 8 MiB "), Ok(8 << 20));
        assert!(parse_size("4XB").unwrap_err().contains("unknown size unit"));
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("1.2.3k").is_err());
        assert!(parse_size("0.3").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("18446744073709551615k")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let r = summarize("get", &mut v, Duration::from_secs(2), 200 << 20);
        assert_eq!((r.p50_us, r.p99_us), (50, 99));
        assert_eq!(r.ops_per_sec, 50.0);
        assert_eq!(r.mib_per_sec, 100.0);
        assert_eq!(percentile_us(&[Duration::from_micros(7)], 99), 7);
        assert_eq!(percentile_us(&[], 50), 0);
    }

    #[test]
    fn peak_rss_comes_from_vm_hwm() {
        let status = "Name:\tstowage\nVmPeak:\t  999 kB\nVmHWM:\t    20480 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(20.0));
        assert_eq!(parse_vm_hwm("VmRSS: 1 kB"), None);
        if cfg!(target_os = "linux") {
            assert!(peak_rss_mib().is_some_and(|m| m > 0.0));
        }
    }

    #[tokio::test]
    async fn payloads_have_the_size_asked_and_differ_per_operation() {
        for size in [0u64, 3, 8, 9, 4096] {
            let p = Payload::new(size).unwrap();
            let a = p.body(1).into_bytes().await.unwrap();
            let b = p.body(2).into_bytes().await.unwrap();
            assert_eq!(a.len() as u64, size);
            if size > 0 {
                assert_ne!(a, b, "size {size}");
            }
        }
    }
}
