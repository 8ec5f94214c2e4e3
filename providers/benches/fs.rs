//! Benchmarks of the `fs` provider, each beside its baselines in the same run:
//!
//! - `fs_put_4KiB`: stowage put (default config: fsync always, payload inline in the index log;
//!   also fsync never, and the payload-file path `inline_max = 0`) vs raw tmp + write + rename
//!   (with and without fsyncs), OpenDAL's fs service and object_store's `LocalFileSystem`;
//! - `fs_get_4KiB`: stowage get (default config; also `inline_max = 0`) vs `std::fs::read`,
//!   OpenDAL and object_store;
//! - `fs_group_commit`: 64 durable puts by 1 writer vs by 16 concurrent writers;
//! - `fs_100k`: opening a store of 100 000 records, searching it by tag, listing a page;
//! - peak RSS of a 1 GiB put + get, measured in a child process (`VmHWM`), printed first
//!   (set `STOWAGE_FS_BENCH_SKIP_RSS=1` to skip it);
//! - the 4 KiB put and get comparisons again as **paired** loops: one operation of each
//!   implementation in turn, round after round, so disk noise from other processes hits all
//!   alike; means, medians and ratios to the raw baselines are printed to stdout before the
//!   criterion groups (`STOWAGE_FS_BENCH_SKIP_INTERLEAVED=1` skips them).
//!
//! Run: `cargo bench -p stowage-providers --no-default-features --features fs --bench fs`

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use stowage_core::{
    Body, ContentHasher, GetOptions, Key, ListOptions, Metadata, Namespace, PutMode, Query,
    StorageBackend,
};
use stowage_providers::fs::{FsBackend, FsConfig};
use support::{generated, runtime, vm_hwm_kib, BigTransfer};

const SIZE: usize = 4096;
const RSS_CHILD: &str = "STOWAGE_FS_BENCH_RSS_CHILD";
const GIB: u64 = 1 << 30;

fn fs_store(root: &Path, fsync: &str) -> FsBackend {
    FsBackend::new(
        FsConfig::from_json(&serde_json::json!({ "root": root, "fsync": fsync })).unwrap(),
    )
}

/// The default config (fsync always) with every payload in a file of its own: the path small
/// payloads took before they were kept in the log, and large ones still take.
fn fs_store_files(root: &Path) -> FsBackend {
    FsBackend::new(
        FsConfig::from_json(&serde_json::json!({ "root": root, "inline_max": 0 })).unwrap(),
    )
}

/// A 4 KiB payload unique to `n`, so nothing is deduplicated away.
fn payload(n: u64) -> Bytes {
    let mut v = vec![0xA5u8; SIZE];
    v[..8].copy_from_slice(&n.to_le_bytes());
    Bytes::from(v)
}

fn raw_put(dir: &Path, n: u64, data: &[u8], fsync: bool, dir_fsync: bool) {
    let tmp = dir.join(format!(".tmp-{n}"));
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(data).unwrap();
    if fsync {
        f.sync_all().unwrap();
    }
    drop(f);
    std::fs::rename(&tmp, dir.join(format!("f-{n}"))).unwrap();
    if dir_fsync {
        std::fs::File::open(dir).unwrap().sync_all().unwrap();
    }
}

fn opendal_fs(root: &Path) -> opendal::Operator {
    let builder = opendal::services::Fs::default().root(root.to_str().unwrap());
    opendal::Operator::new(builder).unwrap().finish()
}

fn object_store_fs(root: &Path) -> object_store::local::LocalFileSystem {
    object_store::local::LocalFileSystem::new_with_prefix(root).unwrap()
}

fn put_4k(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let counter = AtomicU64::new(0);
    let next = || counter.fetch_add(1, Ordering::Relaxed);
    let ns = Namespace::default();
    let mut g = c.benchmark_group("fs_put_4KiB");
    g.throughput(Throughput::Bytes(SIZE as u64));

    let raw_dir = dir.path().join("raw");
    std::fs::create_dir_all(&raw_dir).unwrap();
    g.bench_function("raw tmp+fsync+rename", |b| {
        b.iter(|| raw_put(&raw_dir, next(), &payload(0), true, false))
    });
    g.bench_function("raw tmp+fsync+rename+dir fsync", |b| {
        b.iter(|| raw_put(&raw_dir, next(), &payload(0), true, true))
    });
    g.bench_function("raw tmp+rename (no fsync)", |b| {
        b.iter(|| raw_put(&raw_dir, next(), &payload(0), false, false))
    });

    for (name, store) in [
        (
            "fsync=always",
            fs_store(&dir.path().join("stowage-always"), "always"),
        ),
        (
            "fsync=never",
            fs_store(&dir.path().join("stowage-never"), "never"),
        ),
        (
            "fsync=always inline_max=0",
            fs_store_files(&dir.path().join("stowage-files")),
        ),
    ] {
        rt.block_on(store.initialize()).unwrap();
        g.bench_function(BenchmarkId::new("stowage fs", name), |b| {
            b.to_async(&rt).iter(|| async {
                let n = next();
                let key = Key::new(format!("k/{n}")).unwrap();
                support::put_plain(&store, &ns, &key, payload(n)).await
            })
        });
    }

    let op = opendal_fs(&dir.path().join("opendal"));
    g.bench_function("opendal fs", |b| {
        b.to_async(&rt).iter(|| async {
            let n = next();
            op.write(&format!("k/{n}"), payload(n)).await.unwrap()
        })
    });
    let os = object_store_fs(
        &std::fs::create_dir_all(dir.path().join("object_store"))
            .map(|_| dir.path().join("object_store"))
            .unwrap(),
    );
    g.bench_function("object_store LocalFileSystem", |b| {
        b.to_async(&rt).iter(|| async {
            use object_store::ObjectStore;
            let n = next();
            os.put(
                &object_store::path::Path::from(format!("k/{n}")),
                payload(n).into(),
            )
            .await
            .unwrap()
        })
    });
    g.finish();
}

fn get_4k(c: &mut Criterion) {
    const OBJECTS: u64 = 256;
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let ns = Namespace::default();
    let store = fs_store(&dir.path().join("stowage"), "always");
    let files = fs_store_files(&dir.path().join("stowage-files"));
    let raw_dir = dir.path().join("raw");
    std::fs::create_dir_all(&raw_dir).unwrap();
    let op = opendal_fs(&dir.path().join("opendal"));
    std::fs::create_dir_all(dir.path().join("object_store")).unwrap();
    let os = object_store_fs(&dir.path().join("object_store"));
    let keys: Vec<Key> = (0..OBJECTS)
        .map(|n| Key::new(format!("k/{n}")).unwrap())
        .collect();
    rt.block_on(async {
        use object_store::ObjectStore;
        for n in 0..OBJECTS {
            for store in [&store, &files] {
                support::put_plain(store, &ns, &keys[n as usize], payload(n)).await;
            }
            raw_put(&raw_dir, n, &payload(n), false, false);
            op.write(&format!("k/{n}"), payload(n)).await.unwrap();
            os.put(
                &object_store::path::Path::from(format!("k/{n}")),
                payload(n).into(),
            )
            .await
            .unwrap();
        }
    });
    let raw_paths: Vec<PathBuf> = (0..OBJECTS)
        .map(|n| raw_dir.join(format!("f-{n}")))
        .collect();
    let counter = AtomicU64::new(0);
    let next = || (counter.fetch_add(1, Ordering::Relaxed) % OBJECTS) as usize;

    let mut g = c.benchmark_group("fs_get_4KiB");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.bench_function("raw std::fs::read", |b| {
        b.iter(|| std::fs::read(&raw_paths[next()]).unwrap())
    });
    for (name, store) in [("stowage fs", &store), ("stowage fs inline_max=0", &files)] {
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let (_, body) = store
                    .get(&ns, &keys[next()], GetOptions::default())
                    .await
                    .unwrap();
                body.into_bytes().await.unwrap()
            })
        });
    }
    g.bench_function("opendal fs", |b| {
        b.to_async(&rt)
            .iter(|| async { op.read(&format!("k/{}", next())).await.unwrap().to_bytes() })
    });
    g.bench_function("object_store LocalFileSystem", |b| {
        b.to_async(&rt).iter(|| async {
            use object_store::ObjectStore;
            os.get(&object_store::path::Path::from(format!("k/{}", next())))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        })
    });
    g.finish();
}

/// 64 durable puts, by `writers` concurrent tasks.
async fn put_batch(store: &Arc<FsBackend>, writers: u64, base: u64) {
    const BATCH: u64 = 64;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let ns = Namespace::default();
                for i in 0..BATCH / writers {
                    let n = base + w * 1000 + i;
                    let key = Key::new(format!("w{w}/{n}")).unwrap();
                    support::put_plain(&*store, &ns, &key, payload(n)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

fn group_commit(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(fs_store(dir.path(), "always"));
    rt.block_on(store.initialize()).unwrap();
    let counter = AtomicU64::new(1);
    let mut g = c.benchmark_group("fs_group_commit");
    g.throughput(Throughput::Elements(64));
    for writers in [1u64, 16] {
        g.bench_function(
            BenchmarkId::new("64 durable puts", format!("{writers} writers")),
            |b| {
                b.to_async(&rt).iter(|| {
                    let base = counter.fetch_add(1, Ordering::Relaxed) * 1_000_000;
                    let store = store.clone();
                    async move { put_batch(&store, writers, base).await }
                })
            },
        );
    }
    g.finish();
}

fn store_100k(c: &mut Criterion) {
    const RECORDS: u64 = 100_000;
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let started = Instant::now();
    rt.block_on(async {
        let store = Arc::new(fs_store(&root, "never"));
        let tasks: Vec<_> = (0..16u64)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let ns = Namespace::default();
                    for i in (w..RECORDS).step_by(16) {
                        // 1 000 distinct payloads: the index, not the blobs, is what is measured.
                        let meta = Metadata::new()
                            .with_content_type("application/json")
                            .with_tag(format!("t{}", i % 100))
                            .with_attribute("n", i);
                        let key = Key::new(format!("records/{:02}/{i:06}", i % 97)).unwrap();
                        store
                            .put(
                                &ns,
                                &key,
                                Body::from(payload(i % 1000)),
                                meta,
                                PutMode::Overwrite,
                            )
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    eprintln!(
        "built a {RECORDS}-record store in {:.1?} (index log {} bytes)",
        started.elapsed(),
        std::fs::metadata(root.join("index.log")).unwrap().len()
    );
    // The machine is shared: CPU time (all threads, from /proc) shows what opening costs
    // whatever the neighbours do; wall time is printed beside it.
    for _ in 0..3 {
        let (cpu0, t0) = (process_cpu_ms(), Instant::now());
        let store = rt
            .block_on(FsBackend::open(
                FsConfig::from_json(&serde_json::json!({ "root": root })).unwrap(),
            ))
            .unwrap();
        let (wall, cpu) = (t0.elapsed(), process_cpu_ms() - cpu0);
        drop(store);
        println!("fs_100k open: wall {wall:.1?}, CPU {cpu} ms (replay + index build)");
    }
    let mut g = c.benchmark_group("fs_100k");
    g.bench_function("open (replay index log)", |b| {
        b.to_async(&rt).iter(|| async {
            FsBackend::open(FsConfig::from_json(&serde_json::json!({ "root": root })).unwrap())
                .await
                .unwrap()
        })
    });
    let store = rt
        .block_on(FsBackend::open(
            FsConfig::from_json(&serde_json::json!({ "root": root })).unwrap(),
        ))
        .unwrap();
    let ns = Namespace::default();
    g.bench_function("search tag (1 000 of 100 000 match)", |b| {
        b.to_async(&rt).iter(|| async {
            let page = store.search(&ns, &Query::new().tag("t7")).await.unwrap();
            assert_eq!(page.items.len(), 1000);
        })
    });
    g.bench_function("search tag + limit 50", |b| {
        b.to_async(&rt).iter(|| async {
            let page = store
                .search(&ns, &Query::new().tag("t7").limit(50))
                .await
                .unwrap();
            assert_eq!(page.items.len(), 50);
        })
    });
    g.bench_function("search attr range (scan, 100 match)", |b| {
        b.to_async(&rt).iter(|| async {
            let q = Query::new().attr_range("n", Some(5000.into()), Some(5100.into()));
            let page = store.search(&ns, &q).await.unwrap();
            assert_eq!(page.items.len(), 100);
        })
    });
    g.bench_function("list first page of 100", |b| {
        b.to_async(&rt).iter(|| async {
            let opts = ListOptions {
                prefix: Some("records/42/".into()),
                limit: Some(100),
                ..Default::default()
            };
            store.list(&ns, opts).await.unwrap()
        })
    });
    g.finish();
}

/// CPU time (user + system, all threads) of this process so far, in ms (10 ms resolution).
fn process_cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    // Numeric fields from the 4th on (the state letter is skipped; tpgid may be -1).
    let fields: Vec<i64> = rest
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // utime and stime are fields 14 and 15 of the line.
    let ticks = fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0);
    ticks.max(0) as u64 * 10 // USER_HZ is 100 on Linux
}

/// In a child process: 1 GiB put (streamed from a generator) and get (streamed, hashed).
fn rss_child(root: &str) {
    let rt = runtime();
    rt.block_on(async {
        let store = fs_store(Path::new(root), "always");
        store.initialize().await.unwrap();
        let before = vm_hwm_kib();
        let stream = generated(GIB, 1 << 20);
        let ns = Namespace::default();
        let key = Key::new("big").unwrap();
        let t = Instant::now();
        let info = store
            .put(
                &ns,
                &key,
                Body::from_stream(stream, Some(GIB)),
                Metadata::new(),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        let put_time = t.elapsed();
        let t = Instant::now();
        let (_, mut body) = store.get(&ns, &key, GetOptions::default()).await.unwrap();
        let mut hasher = ContentHasher::new();
        while let Some(chunk) = body.next_chunk().await {
            hasher.update(&chunk.unwrap());
        }
        let get_time = t.elapsed();
        assert_eq!(hasher.finish(), (info.hash, GIB));
        BigTransfer {
            before_kib: before,
            peak_kib: vm_hwm_kib(),
            put: put_time,
            get: get_time,
        }
        .print();
    });
}

fn rss_parent() {
    let dir = tempfile::tempdir().unwrap();
    if let Some(m) = BigTransfer::run_child(RSS_CHILD, dir.path()) {
        println!("{}", m.describe("fs", (GIB >> 20) as f64));
    }
}

use futures::future::BoxFuture;

/// One operation of a paired loop, given a number unique to the call.
type Op<'a> = Box<dyn FnMut(u64) -> BoxFuture<'a, ()> + 'a>;

/// Wraps a synchronous operation (a raw file-system baseline) as an [`Op`].
fn sync_op<'a>(f: impl Fn(u64) + Send + Sync + Copy + 'a) -> Op<'a> {
    Box::new(move |n| Box::pin(async move { f(n) }))
}

/// A paired loop: every implementation runs once per round, in turn, all inside one runtime
/// `block_on` (as in the sqlite bench), so a noisy neighbour (the disk is shared) slows them
/// alike and no one pays for entering the runtime. Prints each one's mean and median and its
/// ratios (of means, and of medians) to the implementations in `ratio_to` (the baselines).
async fn paired(title: &str, rounds: u64, mut ops: Vec<(&str, Op<'_>)>, ratio_to: &[usize]) {
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds as usize); ops.len()];
    for round in 0..rounds {
        for (i, (_, op)) in ops.iter_mut().enumerate() {
            let t = Instant::now();
            op(round * 16 + i as u64).await;
            times[i].push(t.elapsed());
        }
    }
    let means: Vec<Duration> = times
        .iter()
        .map(|t| t.iter().sum::<Duration>() / t.len() as u32)
        .collect();
    let medians: Vec<Duration> = times
        .iter_mut()
        .map(|t| {
            t.sort();
            t[t.len() / 2]
        })
        .collect();
    println!("{title} (paired, {rounds} rounds; mean / median per operation; ratios of means / of medians):");
    for (i, (name, _)) in ops.iter().enumerate() {
        let ratios: Vec<String> = ratio_to
            .iter()
            .filter(|&&b| b != i)
            .map(|&b| {
                format!(
                    "{:.2}x / {:.2}x {}",
                    means[i].as_secs_f64() / means[b].as_secs_f64(),
                    medians[i].as_secs_f64() / medians[b].as_secs_f64(),
                    ops[b].0
                )
            })
            .collect();
        println!(
            "  {name:<40} {:>10.1?} / {:>10.1?}   {}",
            means[i],
            medians[i],
            ratios.join(", ")
        );
    }
}

fn put_get_paired() {
    let rt = runtime();
    rt.block_on(put_get_paired_loops());
}

async fn put_get_paired_loops() {
    let dir = tempfile::tempdir().unwrap();
    let ns = &Namespace::default();
    let raw_dir = &dir.path().join("raw");
    std::fs::create_dir_all(raw_dir).unwrap();
    let always = &fs_store(&dir.path().join("stowage-always"), "always");
    let files = &fs_store_files(&dir.path().join("stowage-files"));
    let never = &fs_store(&dir.path().join("stowage-never"), "never");
    for store in [always, files, never] {
        store.initialize().await.unwrap();
    }
    let op = &opendal_fs(&dir.path().join("opendal"));
    std::fs::create_dir_all(dir.path().join("object_store")).unwrap();
    let os = &object_store_fs(&dir.path().join("object_store"));
    let put = |store: &'static str| -> Op<'_> {
        let store = match store {
            "always" => always,
            "files" => files,
            _ => never,
        };
        Box::new(move |n| {
            Box::pin(async move {
                support::put_plain(
                    &*store,
                    ns,
                    &Key::new(format!("k/{n}")).unwrap(),
                    payload(n),
                )
                .await;
            })
        })
    };
    paired(
        "fs_put_4KiB durable",
        150,
        vec![
            (
                "raw tmp+fsync+rename",
                sync_op(move |n| raw_put(raw_dir, n, &payload(n), true, false)),
            ),
            ("stowage fs (default: fsync=always)", put("always")),
            (
                "raw tmp+fsync+rename+dir fsync",
                sync_op(move |n| raw_put(raw_dir, n, &payload(n), true, true)),
            ),
            ("stowage fs inline_max=0", put("files")),
            (
                "opendal fs (file fsync, no dir fsync)",
                Box::new(move |n| {
                    Box::pin(async move {
                        op.write(&format!("k/{n}"), payload(n)).await.unwrap();
                    })
                }),
            ),
        ],
        &[0, 2, 4],
    )
    .await;
    let no_fsync = 1 << 40;
    paired(
        "fs_put_4KiB without fsync",
        1500,
        vec![
            (
                "raw tmp+rename (no fsync)",
                sync_op(move |n| raw_put(raw_dir, n + no_fsync, &payload(n), false, false)),
            ),
            ("stowage fs fsync=never", {
                let mut put = put("never");
                Box::new(move |n| put(n + no_fsync))
            }),
            (
                "object_store LocalFileSystem",
                Box::new(move |n| {
                    Box::pin(async move {
                        use object_store::ObjectStore;
                        os.put(
                            &object_store::path::Path::from(format!("k/{}", n + no_fsync)),
                            payload(n).into(),
                        )
                        .await
                        .unwrap();
                    })
                }),
            ),
        ],
        &[0, 2],
    )
    .await;
    const OBJECTS: u64 = 256;
    let key = |n: u64| Key::new(format!("g/{}", n % OBJECTS)).unwrap();
    for n in 0..OBJECTS {
        use object_store::ObjectStore;
        for store in [always, files] {
            support::put_plain(store, ns, &key(n), payload(n)).await;
        }
        op.write(&format!("g/{n}"), payload(n)).await.unwrap();
        os.put(
            &object_store::path::Path::from(format!("g/{n}")),
            payload(n).into(),
        )
        .await
        .unwrap();
        std::fs::write(raw_dir.join(format!("g-{n}")), payload(n)).unwrap();
    }
    let get = |store: &'static str| -> Op<'_> {
        let store = if store == "always" { always } else { files };
        Box::new(move |n| {
            Box::pin(async move {
                let (_, body) = store.get(ns, &key(n), GetOptions::default()).await.unwrap();
                std::hint::black_box(body.into_bytes().await.unwrap());
            })
        })
    };
    let get_ops: Vec<(&str, Op<'_>)> = vec![
        (
            "raw std::fs::read",
            sync_op(move |n| {
                std::hint::black_box(
                    std::fs::read(raw_dir.join(format!("g-{}", n % OBJECTS))).unwrap(),
                );
            }),
        ),
        ("stowage fs (default)", get("always")),
        ("stowage fs inline_max=0", get("files")),
        (
            "opendal fs",
            Box::new(move |n| {
                Box::pin(async move {
                    std::hint::black_box(op.read(&format!("g/{}", n % OBJECTS)).await.unwrap());
                })
            }),
        ),
        (
            "object_store LocalFileSystem",
            Box::new(move |n| {
                Box::pin(async move {
                    use object_store::ObjectStore;
                    let got = os
                        .get(&object_store::path::Path::from(format!(
                            "g/{}",
                            n % OBJECTS
                        )))
                        .await
                        .unwrap();
                    std::hint::black_box(got.bytes().await.unwrap());
                })
            }),
        ),
    ];
    paired("fs_get_4KiB", 3000, get_ops, &[0, 3, 4]).await;
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = put_4k, get_4k, group_commit, store_100k
}

fn main() {
    if let Ok(root) = std::env::var(RSS_CHILD) {
        rss_child(&root);
        return;
    }
    let listing = std::env::args().any(|a| a == "--list");
    if std::env::var_os("STOWAGE_FS_BENCH_SKIP_RSS").is_none() && !listing {
        rss_parent();
    }
    if std::env::var_os("STOWAGE_FS_BENCH_SKIP_INTERLEAVED").is_none() && !listing {
        put_get_paired();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
