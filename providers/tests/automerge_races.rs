//! The `automerge` provider under other processes' feet: purges killed with SIGKILL at random
//! points (a real child process), a purge interrupted between moving a record's folder away
//! and deleting it, listings beside compacting writers and purges, writers waiting on a lock
//! that a purge moves away, and the warning a long lock wait logs.
//!
//! Replay a failure of the kill test with `STOWAGE_CRASH_SEED=<seed printed by the run>`.
#![cfg(feature = "automerge")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use stowage_core::{
    Body, ContentHash, ErrorKind, GetOptions, Key, ListOptions, Metadata, Namespace, NoProgress,
    PutMode, Query, RecordInfo, StorageBackend,
};
use stowage_providers::automerge::{AutomergeBackend, AutomergeConfig};

mod scratch;

fn fresh_root(label: &str) -> PathBuf {
    scratch::fresh_root("automerge-races", label)
}

fn ns() -> Namespace {
    Namespace::new("default").unwrap()
}

fn key(s: &str) -> Key {
    Key::new(s).unwrap()
}

/// A backend on `root`: without fsync unless asked, compacting once change files pass
/// `compact_min_bytes`.
fn backend_with(root: &Path, fsync: bool, compact_min_bytes: u64) -> AutomergeBackend {
    let mut config = AutomergeConfig::new(root);
    config.fsync = fsync;
    config.compact_min_bytes = compact_min_bytes;
    config.blob_min_bytes = 0;
    AutomergeBackend::new(config).unwrap()
}

fn backend(root: &Path) -> AutomergeBackend {
    backend_with(root, false, 4096)
}

fn doc_folder(root: &Path, ns: &str, key: &str) -> PathBuf {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"stowage-automerge-doc\0");
    hasher.update(ns.as_bytes());
    hasher.update(b"\0");
    hasher.update(key.as_bytes());
    root.join("docs")
        .join(ns)
        .join(hasher.finalize().to_hex().as_str())
}

/// The JSON write `i` of `key` puts, exactly as `get` renders it (keys in byte order), so a
/// version's hash tells which write it is.
fn payload(key: &str, i: u64) -> Vec<u8> {
    format!(r#"{{"i":{i},"key":"{key}","secret":"purged-secret"}}"#).into_bytes()
}

fn json_meta() -> Metadata {
    Metadata::new()
        .with_content_type("application/json")
        .with_tag("purged-secret-tag")
}

async fn put_json(store: &AutomergeBackend, k: &str, i: u64) -> RecordInfo {
    store
        .put(
            &ns(),
            &key(k),
            Body::from(payload(k, i)),
            json_meta(),
            PutMode::Overwrite,
        )
        .await
        .unwrap_or_else(|e| panic!("put {k} #{i}: {e}"))
}

/// Every file under `dir`, recursively.
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// What a key of the kill test can be after a kill: every version as written (`writes` puts,
/// then the tombstone), or nothing at all. Never some of the versions, and never live again.
async fn assert_whole_or_gone(store: &AutomergeBackend, k: &str, writes: u64, ctx: &str) -> bool {
    match store.versions(&ns(), &key(k)).await {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            for version in [None, Some(1)] {
                let err = store
                    .head(&ns(), &key(k), version)
                    .await
                    .expect_err("versions said not found");
                assert_eq!(err.kind(), ErrorKind::NotFound, "{ctx}: {k}: {err}");
            }
            false
        }
        Err(e) => panic!("{ctx}: versions of {k}: {e}"),
        Ok(versions) => {
            assert_eq!(
                versions.len() as u64,
                writes + 1,
                "{ctx}: {k} lost versions: {versions:?}"
            );
            for (i, info) in versions.iter().enumerate() {
                let v = i as u64 + 1;
                assert_eq!(info.version, v, "{ctx}: {k}");
                if v <= writes {
                    assert_eq!(
                        info.hash,
                        ContentHash::of(&payload(k, v)),
                        "{ctx}: {k} v{v}"
                    );
                    assert!(info.deleted_at.is_none(), "{ctx}: {k} v{v}");
                } else {
                    assert!(info.deleted_at.is_some(), "{ctx}: {k} v{v} not a tombstone");
                }
            }
            let err = store
                .get(&ns(), &key(k), GetOptions::default())
                .await
                .expect_err("the record was deleted: get must not find it");
            assert_eq!(err.kind(), ErrorKind::NotFound, "{ctx}: {k}: {err}");
            true
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Purges killed with SIGKILL.

/// Set in the child: the store root it purges in.
const CHILD_ROOT: &str = "STOWAGE_AM_PURGE_CHILD_ROOT";
/// Set in the child: the generation (names its keys, picks fsync).
const CHILD_GEN: &str = "STOWAGE_AM_PURGE_CHILD_GEN";
const KILLS: u64 = 30;
const KEYS_PER_GEN: u64 = 5;
/// Puts per key before its delete: with compaction off, one change file each, so a purge that
/// removed files one by one had many points to be killed at.
const WRITES_PER_KEY: u64 = 24;

fn kill_key(generation: u64, k: u64) -> String {
    format!("g{generation}/k{k}")
}

/// A small deterministic generator (xorshift64*), so a failure replays from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// The purging child. Does nothing in a normal test run.
#[test]
fn purge_child() {
    let (Ok(root), Ok(generation)) = (std::env::var(CHILD_ROOT), std::env::var(CHILD_GEN)) else {
        return;
    };
    let generation: u64 = generation.parse().unwrap();
    let store = backend_with(Path::new(&root), generation.is_multiple_of(2), u64::MAX);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut out = std::io::stdout();
    runtime.block_on(async {
        // Loaded first, so the purges below skip reading the files (their generation is
        // unchanged) and the kill window is mostly the purges' own work.
        for k in 0..KEYS_PER_GEN {
            let name = kill_key(generation, k);
            store.versions(&ns(), &key(&name)).await.unwrap();
        }
        writeln!(out, "START").unwrap();
        out.flush().unwrap();
        for k in 0..KEYS_PER_GEN {
            let name = kill_key(generation, k);
            store.purge(&ns(), &key(&name)).await.unwrap();
            writeln!(out, "PURGED {name}").unwrap();
            out.flush().unwrap();
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_killed_at_any_point_leaves_the_record_whole_or_gone() {
    let seed = std::env::var("STOWAGE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("purge kill test seed: {seed} (replay with STOWAGE_CRASH_SEED={seed})");
    let mut rng = Rng::new(seed);
    let root = fresh_root("purge-kill");
    let exe = std::env::current_exe().unwrap();
    let (mut whole, mut gone) = (0, 0);
    // How long the child takes from START to its last purge, measured by letting the first
    // one finish: kills are spread over that window (not asserted: only where they land).
    let mut window = None;
    for generation in 0..KILLS {
        let ctx = format!("after kill {generation} (seed {seed})");
        {
            // Compaction off: every version is its own change file.
            let store = backend_with(&root, false, u64::MAX);
            for k in 0..KEYS_PER_GEN {
                let name = kill_key(generation, k);
                for i in 1..=WRITES_PER_KEY {
                    put_json(&store, &name, i).await;
                }
                store
                    .delete(&ns(), &key(&name), Default::default())
                    .await
                    .unwrap();
            }
        }
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "purge_child",
                "--nocapture",
                "--test-threads=1",
                "--quiet",
            ])
            .env(CHILD_ROOT, &root)
            .env(CHILD_GEN, generation.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait until the child is about to purge, then let it run a random while: the kill
        // lands before, between or inside its purges.
        // (The test harness prints its own lines first.)
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("{ctx}: the child did not start within 60 s ({e})"));
            if line == "START" {
                break;
            }
        }
        let started = std::time::Instant::now();
        match window {
            None => {
                let last = kill_key(generation, KEYS_PER_GEN - 1);
                let mut line = String::new();
                while line != format!("PURGED {last}") {
                    line = rx
                        .recv_timeout(Duration::from_secs(60))
                        .unwrap_or_else(|e| {
                            panic!("{ctx}: the child did not purge within 60 s ({e})")
                        });
                }
                window = Some(started.elapsed().as_micros().max(1) as u64);
                child.wait().unwrap();
            }
            Some(window) => {
                std::thread::sleep(Duration::from_micros(rng.below(window)));
                child.kill().unwrap(); // SIGKILL on Unix
                child.wait().unwrap();
            }
        }
        reader.join().unwrap();
        let purged: Vec<String> = rx
            .try_iter()
            .filter_map(|l| l.strip_prefix("PURGED ").map(str::to_string))
            .collect();

        // A fresh process's view: each key whole or gone, a reported purge gone.
        let store = backend(&root);
        for k in 0..KEYS_PER_GEN {
            let name = kill_key(generation, k);
            let is_whole = assert_whole_or_gone(&store, &name, WRITES_PER_KEY, &ctx).await;
            assert!(
                !(is_whole && purged.contains(&name)),
                "{ctx}: {name} was purged (the child said so) but is back"
            );
            if is_whole {
                whole += 1;
            } else {
                gone += 1;
            }
        }
        let report = store.verify(&NoProgress).await.unwrap();
        assert!(report.is_clean(), "{ctx}: verify: {:?}", report.problems);
        store
            .gc(&NoProgress)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: gc: {e}"));
        // Purging again finishes what the kill interrupted.
        for k in 0..KEYS_PER_GEN {
            let name = kill_key(generation, k);
            match store.purge(&ns(), &key(&name)).await {
                Ok(n) => assert_eq!(n, WRITES_PER_KEY + 1, "{ctx}: {name}"),
                Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound, "{ctx}: {name}: {e}"),
            }
            assert!(!assert_whole_or_gone(&store, &name, WRITES_PER_KEY, &ctx).await);
        }
    }
    eprintln!(
        "{whole} records found whole after a kill, {gone} gone (kills spread over {} µs)",
        window.unwrap_or_default()
    );
    // After gc nothing of any purged record is left anywhere under the root.
    backend(&root).gc(&NoProgress).await.unwrap();
    for file in all_files(&root) {
        let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
        assert!(
            !text.contains("purged-secret"),
            "{} still holds a purged record",
            file.display()
        );
    }
    let listed = backend(&root)
        .list(
            &ns(),
            ListOptions {
                include_deleted: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(listed.items.is_empty(), "{:?}", listed.items);
}

/// The one state a purge can be interrupted in besides "not started" and "done": the folder
/// moved under `.purged/` but not deleted yet. The key is gone for every reader (also one that
/// had it in memory), a purge run again finishes the removal, and so does `gc`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_interrupted_after_moving_the_folder_leaves_the_key_gone() {
    let root = fresh_root("purge-moved");
    let store = backend(&root);
    for i in 1..=3 {
        put_json(&store, "victim", i).await;
    }
    store
        .delete(&ns(), &key("victim"), Default::default())
        .await
        .unwrap();
    put_json(&store, "bystander", 1).await;
    assert_eq!(
        store.versions(&ns(), &key("victim")).await.unwrap().len(),
        4
    );

    // What a purge does first, then the process "dies" before deleting anything.
    let folder = doc_folder(&root, "default", "victim");
    let trash = root.join("docs/default/.purged");
    std::fs::create_dir_all(&trash).unwrap();
    let moved = trash.join(format!(
        "{}-crashed",
        folder.file_name().unwrap().to_string_lossy()
    ));
    std::fs::rename(&folder, &moved).unwrap();

    for (who, view) in [
        ("the backend that had it loaded", &store),
        ("a fresh one", &backend(&root)),
    ] {
        for version in [None, Some(1), Some(3)] {
            let err = view.head(&ns(), &key("victim"), version).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::NotFound, "{who}: {err}");
        }
        let err = view.versions(&ns(), &key("victim")).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{who}: {err}");
        let listed = view
            .list(
                &ns(),
                ListOptions {
                    include_deleted: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let keys: Vec<&str> = listed.items.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["bystander"], "{who}");
        let found = view
            .search(
                &ns(),
                &Query {
                    tags: ["purged-secret-tag".to_string()].into(),
                    include_deleted: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            found.items.len(),
            1,
            "{who}: only the bystander has the tag"
        );
        assert!(view.verify(&NoProgress).await.unwrap().is_clean(), "{who}");
    }

    // Purging again reports the record gone and removes the moved folder.
    let err = backend(&root)
        .purge(&ns(), &key("victim"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(!moved.exists(), "{} was left", moved.display());
    assert!(!folder.exists(), "a purge of a missing key made its folder");

    // gc removes one too.
    let moved_again = trash.join("another-crashed-purge");
    std::fs::create_dir_all(&moved_again).unwrap();
    std::fs::write(moved_again.join("incremental-x.amc"), "purged-secret").unwrap();
    backend(&root).gc(&NoProgress).await.unwrap();
    assert!(!moved_again.exists());
    for file in all_files(&root) {
        let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
        assert!(
            !text.contains("victim"),
            "{} still holds the purged record",
            file.display()
        );
    }

    // The key starts over at version 1, seen so by both backends.
    let again = put_json(&store, "victim", 7).await;
    assert_eq!(again.version, 1);
    let fresh = backend(&root)
        .head(&ns(), &key("victim"), None)
        .await
        .unwrap();
    assert_eq!(fresh.hash, ContentHash::of(&payload("victim", 7)));
    assert_eq!(fresh.version, 1);
}

/// A process that had a record loaded must not take a new record under the same key, written
/// as many times, for the purged one: the lock file (with its write generation) went with the
/// purged folder, and the new one's generation must not repeat the old one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_had_a_purged_record_loaded_sees_the_new_one() {
    let root = fresh_root("purge-generation");
    let (a, b) = (backend(&root), backend(&root));
    put_json(&b, "k", 1).await;
    put_json(&b, "k", 2).await;
    let before = a.head(&ns(), &key("k"), None).await.unwrap();
    assert_eq!(before.hash, ContentHash::of(&payload("k", 2)));
    assert_eq!(b.purge(&ns(), &key("k")).await.unwrap(), 2);
    put_json(&b, "k", 30).await;
    put_json(&b, "k", 40).await;
    let after = a.head(&ns(), &key("k"), None).await.unwrap();
    assert_eq!(after.version, 2);
    assert_eq!(after.hash, ContentHash::of(&payload("k", 40)));
    let v1 = a.head(&ns(), &key("k"), Some(1)).await.unwrap();
    assert_eq!(v1.hash, ContentHash::of(&payload("k", 30)));
}

// ---------------------------------------------------------------------------------------------
// Listings beside compactions and purges.

const RACE_WRITERS: u64 = 2;
const RACE_KEYS: u64 = 3;
const RACE_WRITES: u64 = 60;

/// Writers (each its own backend, as separate processes would be) compact often; another
/// purges and rewrites a key over and over; listers, searchers and conditional puts (whose
/// precondition is checked without the lock first) run meanwhile. None of them fails, and
/// every listing shows each record at a version that was written, with that write's content,
/// never going back.
#[test]
fn listings_beside_compacting_writers_and_purges_never_fail() {
    let root = fresh_root("listing-races");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        backend(&root).initialize().await.unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let listings = Arc::new(AtomicU64::new(0));
        let churns = Arc::new(AtomicU64::new(0));
        let mut writers = Vec::new();
        for w in 0..RACE_WRITERS {
            let store = backend_with(&root, false, 0);
            writers.push(tokio::spawn(async move {
                for i in 1..=RACE_WRITES {
                    for k in 0..RACE_KEYS {
                        let name = format!("w{w}/k{k}");
                        let info = put_json(&store, &name, i).await;
                        assert_eq!(info.version, i, "{name}");
                    }
                }
            }));
        }
        let churner = {
            let (store, done, churns) =
                (backend_with(&root, false, 0), done.clone(), churns.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    for i in 1..=2 {
                        put_json(&store, "churn", i).await;
                    }
                    assert_eq!(store.purge(&ns(), &key("churn")).await.unwrap(), 2);
                    churns.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let mut listers = Vec::new();
        for l in 0..2u64 {
            let (store, done, listings) = (backend(&root), done.clone(), listings.clone());
            listers.push(tokio::spawn(async move {
                let mut seen: HashMap<String, u64> = HashMap::new();
                while !done.load(Ordering::Relaxed) {
                    let items = if l == 0 {
                        store
                            .list(
                                &ns(),
                                ListOptions {
                                    include_deleted: true,
                                    ..Default::default()
                                },
                            )
                            .await
                            .unwrap_or_else(|e| panic!("list failed: {e}"))
                            .items
                    } else {
                        store
                            .search(&ns(), &Query::new().prefix(""))
                            .await
                            .unwrap_or_else(|e| panic!("search failed: {e}"))
                            .items
                    };
                    let mut keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
                    keys.dedup();
                    assert_eq!(keys.len(), items.len(), "a key listed twice: {keys:?}");
                    for info in &items {
                        let name = info.key.as_str().to_string();
                        let max = if name == "churn" { 2 } else { RACE_WRITES };
                        assert!(
                            (1..=max).contains(&info.version),
                            "{name} listed at version {}",
                            info.version
                        );
                        assert_eq!(
                            info.hash,
                            ContentHash::of(&payload(&name, info.version)),
                            "{name} v{} listed with another write's content",
                            info.version
                        );
                        if name != "churn" {
                            let last = seen.entry(name.clone()).or_default();
                            assert!(
                                info.version >= *last,
                                "{name} went back from v{last} to v{}",
                                info.version
                            );
                            *last = info.version;
                        }
                    }
                    listings.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        // Conditional puts of a byte payload check their precondition before the upload,
        // without the lock: they are refused, never an I/O error.
        let conditional = {
            let (store, done) = (backend(&root), done.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let name = if n.is_multiple_of(2) {
                        "churn"
                    } else {
                        "w0/k0"
                    };
                    n += 1;
                    let err = store
                        .put(
                            &ns(),
                            &key(name),
                            Body::from(vec![1u8; 64]),
                            Metadata::new(),
                            PutMode::IfVersion(1_000_000),
                        )
                        .await
                        .expect_err("no record has a millionth version");
                    assert!(
                        matches!(err.kind(), ErrorKind::Conflict | ErrorKind::NotFound),
                        "conditional put of {name}: {err}"
                    );
                }
            })
        };
        for w in writers {
            w.await.unwrap();
        }
        // Enough churn that listers met purges too, however slow the machine.
        while churns.load(Ordering::Relaxed) < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        done.store(true, Ordering::Relaxed);
        churner.await.unwrap();
        for l in listers {
            l.await.unwrap();
        }
        conditional.await.unwrap();
        assert!(listings.load(Ordering::Relaxed) > 0);

        let store = backend(&root);
        let items = store
            .list(&ns(), ListOptions::default())
            .await
            .unwrap()
            .items;
        for w in 0..RACE_WRITERS {
            for k in 0..RACE_KEYS {
                let name = format!("w{w}/k{k}");
                let info = items
                    .iter()
                    .find(|i| i.key.as_str() == name)
                    .unwrap_or_else(|| panic!("{name} not listed"));
                assert_eq!(info.version, RACE_WRITES, "{name}");
                assert_eq!(
                    store.versions(&ns(), &key(&name)).await.unwrap().len() as u64,
                    RACE_WRITES
                );
            }
        }
        assert!(store.verify(&NoProgress).await.unwrap().is_clean());
    });
}

// ---------------------------------------------------------------------------------------------
// Waiting for locks.

/// The warnings logged in this test binary (a global subscriber: the waits happen on the
/// blocking pool's threads).
fn warnings() -> &'static Mutex<Vec<String>> {
    static LOG: OnceLock<&'static Mutex<Vec<String>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log: &'static Mutex<Vec<String>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        let _ = tracing::subscriber::set_global_default(Capture(log));
        log
    })
}

struct Capture(&'static Mutex<Vec<String>>);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            self.0.lock().unwrap().push(fields.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Waits (without a deadline on success: the test asserts no timing) until a warning
/// mentioning `needle` was logged.
async fn wait_for_warning(needle: &str) -> String {
    for _ in 0..6000 {
        if let Some(w) = warnings()
            .lock()
            .unwrap()
            .iter()
            .find(|w| w.contains(needle))
        {
            return w.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no warning about {needle} within a minute");
}

/// A writer blocked on a record's lock says so, naming the lock file; and when the holder
/// purged the record meanwhile (moving the folder, lock file and all, away), the writer does
/// not go on under the lock of the moved file: it starts the record afresh, at version 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_waiting_on_a_lock_says_so_and_survives_a_purge_meanwhile() {
    warnings();
    let root = fresh_root("lock-wait");
    let writer = backend(&root);
    put_json(&writer, "held", 1).await;
    let folder = doc_folder(&root, "default", "held");
    let lock_path = folder.join("lock");
    // Another process's purge, by hand: it holds the lock...
    let holder = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lock_path)
        .unwrap();
    holder.lock().unwrap();
    let pending = {
        let writer = writer.clone();
        tokio::spawn(async move { put_json(&writer, "held", 2).await })
    };
    let warning = wait_for_warning(&lock_path.display().to_string()).await;
    assert!(warning.contains("another process holds it"), "{warning}");
    assert!(
        !pending.is_finished(),
        "the write went on while the lock was held"
    );
    // ...moves the folder away, deletes it and lets go.
    let trash = root.join("docs/default/.purged");
    std::fs::create_dir_all(&trash).unwrap();
    std::fs::rename(&folder, trash.join("by-hand")).unwrap();
    std::fs::remove_dir_all(trash.join("by-hand")).unwrap();
    holder.unlock().unwrap();
    drop(holder);

    let info = pending.await.unwrap();
    assert_eq!(info.version, 1, "written on top of the purged record");
    assert!(
        folder.join("lock").exists(),
        "the new record has its own lock file"
    );
    let fresh = backend(&root).versions(&ns(), &key("held")).await.unwrap();
    assert_eq!(fresh.len(), 1);
    assert_eq!(fresh[0].hash, ContentHash::of(&payload("held", 2)));
}

/// The store's lock (`gc.lock`): a write of a payload file waits for a gc in another process,
/// says so, and completes once it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_waiting_for_gc_says_so_and_then_writes() {
    warnings();
    let root = fresh_root("gc-wait");
    let writer = backend(&root);
    put_json(&writer, "first", 1).await;
    let lock_path = root.join("gc.lock");
    let gc = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .unwrap();
    gc.lock().unwrap();
    let pending = {
        let writer = writer.clone();
        tokio::spawn(async move {
            writer
                .put(
                    &ns(),
                    &key("blob"),
                    Body::from(vec![9u8; 100]),
                    Metadata::new(),
                    PutMode::Overwrite,
                )
                .await
        })
    };
    let warning = wait_for_warning(&lock_path.display().to_string()).await;
    assert!(warning.contains("another process holds it"), "{warning}");
    assert!(!pending.is_finished(), "the write went on during gc");
    gc.unlock().unwrap();
    let info = pending.await.unwrap().unwrap();
    assert_eq!(info.version, 1);
    assert_eq!(info.hash, ContentHash::of(&[9u8; 100]));
}
