//! The harness of the providers' crash tests, with real processes: the test binary re-executes
//! itself as a writer child, which writes records in a loop from a few concurrent writers (so
//! kills also land inside group commits) and prints every acknowledged write; the parent kills
//! it with SIGKILL at seeded random moments, then opens the store and checks that every
//! acknowledged write reads back byte-exact, nothing went backwards, and `verify` finds nothing
//! wrong.
//!
//! Replay a failure with `STOWAGE_CRASH_SEED=<seed printed by the failing run>`.

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stowage_core::{
    Body, ContentHash, GetOptions, Key, Metadata, Namespace, NoProgress, PutMode, Query,
    StorageBackend,
};

/// Set in the child: the store root it writes to.
const CHILD_ROOT: &str = "STOWAGE_CRASH_CHILD_ROOT";
/// Set in the child: its generation number (names its keys, picks its settings, seeds it).
const CHILD_GEN: &str = "STOWAGE_CRASH_CHILD_GEN";

/// A small deterministic generator (xorshift64*): the test must replay from a printed seed,
/// without a dependency for it.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The payload of write `n` of generation `generation`: its content is derivable, so the
/// parent checks bytes, not only hashes.
fn payload(generation: u64, n: u64, size: usize) -> Vec<u8> {
    let mut rng = Rng::new(generation << 32 | n);
    (0..size).map(|_| rng.next() as u8).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The writer child, when this process is one (else nothing): opens the store at its root with
/// `open(root, generation)` and writes until killed. Now and then it runs `maintenance` on the
/// store (a compaction, a gc), so kills land in those too.
pub fn run_child<S, F>(
    open: impl FnOnce(&Path, u64) -> S,
    maintenance: impl Fn(Arc<S>) -> F + Send + Sync + 'static,
) where
    S: StorageBackend + 'static,
    F: Future<Output = ()> + Send,
{
    let (Ok(root), Ok(generation)) = (std::env::var(CHILD_ROOT), std::env::var(CHILD_GEN)) else {
        return;
    };
    let generation: u64 = generation.parse().unwrap();
    let store = Arc::new(open(Path::new(&root), generation));
    let maintenance = Arc::new(maintenance);
    runtime().block_on(async move {
        let ns = Namespace::default();
        let mut rng = Rng::new(generation);
        let stdout = Arc::new(Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for writer in 0..3u64 {
            let (store, stdout, ns) = (store.clone(), stdout.clone(), ns.clone());
            let maintenance = maintenance.clone();
            let mut rng = Rng::new(rng.next());
            tasks.push(tokio::spawn(async move {
                for n in 0.. {
                    let id = writer << 40 | n;
                    let roll = rng.below(100);
                    // Mostly small payloads; some above 64 KiB, so the providers' large-payload
                    // paths (payload files, chunk streams) are crashed too.
                    let size = if roll < 5 {
                        70_000 + rng.below(50_000) as usize
                    } else {
                        rng.below(4096) as usize
                    };
                    let key = Key::new(format!("g{generation}/w{writer}/{}", n % 7)).unwrap();
                    let body = payload(generation, id, size);
                    let meta = Metadata::new()
                        .with_tag(format!("g{generation}"))
                        .with_attribute("n", n);
                    let info = store
                        .put(&ns, &key, Body::from(body), meta, PutMode::Overwrite)
                        .await
                        .unwrap();
                    let line = format!(
                        "ACK {} {} {} {id} {size}\n",
                        info.key, info.version, info.hash
                    );
                    {
                        let mut out = stdout.lock().unwrap();
                        out.write_all(line.as_bytes()).unwrap();
                        out.flush().unwrap();
                    }
                    // Churn that the parent does not check: purged scratch keys make garbage,
                    // and maintenance gets killed too.
                    if roll >= 90 {
                        let scratch =
                            Key::new(format!("scratch/g{generation}/w{writer}/{n}")).unwrap();
                        store
                            .put(
                                &ns,
                                &scratch,
                                Body::from(vec![7u8; 300]),
                                Metadata::new(),
                                PutMode::Overwrite,
                            )
                            .await
                            .unwrap();
                        store.purge(&ns, &scratch).await.unwrap();
                    }
                    if roll == 42 {
                        maintenance(store.clone()).await;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

struct Ack {
    key: String,
    version: u64,
    hash: ContentHash,
    generation: u64,
    id: u64,
    size: usize,
}

/// The parent: runs `kills` writer children one after another (the test named `child_test` of
/// this binary, which calls [`run_child`]) on one store under a temporary directory, kills each
/// with SIGKILL, and after every kill opens the store with `open(root)` and checks it.
pub fn kill_repeatedly<S: StorageBackend>(child_test: &str, kills: u64, open: impl Fn(&Path) -> S) {
    let seed = std::env::var("STOWAGE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test seed: {seed} (replay with STOWAGE_CRASH_SEED={seed})");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let root: PathBuf = dir.path().join("store");
    let exe = std::env::current_exe().unwrap();
    let runtime = runtime();
    let mut acked: Vec<Ack> = Vec::new();
    let mut kills_with_acks = 0;
    for generation in 0..kills {
        let child_gen = seed.wrapping_add(generation) % 1_000_000;
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                child_test,
                "--nocapture",
                "--test-threads=1",
                "--quiet",
            ])
            .env(CHILD_ROOT, &root)
            .env(CHILD_GEN, child_gen.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ACK ") && tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        if generation % 4 == 3 {
            // Any moment from the spawn on: often during start-up or recovery.
            std::thread::sleep(Duration::from_millis(rng.below(60)));
        } else {
            // Mid-write, however slowly the child starts on a busy machine: wait for its first
            // acknowledged write, then let it run a random while longer.
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(first) => lines.push(first),
                Err(e) => {
                    panic!("child {generation} acknowledged nothing within 60 s ({e}); seed {seed}")
                }
            }
            std::thread::sleep(Duration::from_millis(rng.below(40)));
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        if !lines.is_empty() {
            kills_with_acks += 1;
        }
        for line in lines {
            let parts: Vec<&str> = line.split(' ').collect();
            acked.push(Ack {
                key: parts[1].to_string(),
                version: parts[2].parse().unwrap(),
                hash: parts[3].parse().unwrap(),
                generation: child_gen,
                id: parts[4].parse().unwrap(),
                size: parts[5].parse().unwrap(),
            });
        }
        let ctx = format!("after kill {generation} (seed {seed})");
        runtime.block_on(check_store(&open(&root), &acked, &ctx));
    }
    eprintln!(
        "{kills} kills, {kills_with_acks} with writes acknowledged, {} acknowledged writes checked",
        acked.len()
    );
    assert!(
        kills_with_acks >= kills * 3 / 4,
        "three kills in four come after an acknowledged write (seed {seed})"
    );
}

async fn check_store(store: &impl StorageBackend, acked: &[Ack], ctx: &str) {
    let ns = Namespace::default();
    let mut latest: HashMap<&str, u64> = HashMap::new();
    for ack in acked {
        let key = Key::new(ack.key.clone()).unwrap();
        let (info, body) = store
            .get(
                &ns,
                &key,
                GetOptions {
                    version: Some(ack.version),
                    range: None,
                },
            )
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{ctx}: acknowledged {} v{} unreadable: {e}",
                    ack.key, ack.version
                )
            });
        assert_eq!(info.hash, ack.hash, "{ctx}: {} v{}", ack.key, ack.version);
        let bytes = body.into_bytes().await.unwrap();
        assert_eq!(bytes.len(), ack.size, "{ctx}: {} v{}", ack.key, ack.version);
        assert!(
            bytes[..] == payload(ack.generation, ack.id, ack.size)[..],
            "{ctx}: {} v{} differs from what was written",
            ack.key,
            ack.version
        );
        let l = latest.entry(&ack.key).or_default();
        *l = (*l).max(ack.version);
    }
    // Nothing acknowledged went backwards: each key's latest version is at least the last ack.
    for (key, version) in latest {
        let head = store
            .head(&ns, &Key::new(key).unwrap(), None)
            .await
            .unwrap();
        assert!(
            head.version >= version,
            "{ctx}: {key} at v{} after v{version} was acknowledged",
            head.version
        );
    }
    let report = store.verify(&NoProgress).await.unwrap();
    assert!(
        report.is_clean(),
        "{ctx}: verify found {:?}",
        report.problems
    );
    // The index answers searches over what survived.
    let page = store.search(&ns, &Query::new().prefix("g")).await.unwrap();
    assert!(page
        .items
        .iter()
        .all(|i| !i.key.as_str().starts_with("scratch/")));
    store.close().await.unwrap();
}
