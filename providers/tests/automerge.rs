//! Tests of the `automerge` provider: the conformance kit (every behaviour its capabilities
//! claim), then what only a merging provider does: two real processes merging `Base` writes,
//! point-in-time reads of a long history, replicas converging through the sync protocol, and
//! documents surviving a reopen after compaction.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stowage_core::{
    GetOptions, Key, Metadata, Namespace, PutMode, StorageBackend, StorageProviderFactory, Stowage,
};
use stowage_providers::automerge::{
    sync_stores, AutomergeBackend, AutomergeConfig, AutomergeFactory,
};

mod scratch;

/// A fresh directory under cargo's per-target temporary directory.
fn fresh_root(label: &str) -> PathBuf {
    scratch::fresh_root("automerge", label)
}

fn backend(root: &Path) -> AutomergeBackend {
    let mut config = AutomergeConfig::new(root);
    config.fsync = false;
    AutomergeBackend::new(config).unwrap()
}

fn json_meta() -> Metadata {
    Metadata::new().with_content_type("application/json")
}

fn ns() -> Namespace {
    Namespace::new("default").unwrap()
}

/// A store on `root` without fsync.
async fn store_at(root: &std::path::Path) -> stowage_core::Stowage {
    let backend = stowage_core::StorageProviderFactory::create(
        &stowage_providers::automerge::AutomergeFactory,
        serde_json::json!({ "root": root, "fsync": false }),
    )
    .await
    .expect("creating the automerge store");
    stowage_core::Stowage::from_backend(backend)
}

mod conformance {
    stowage_core::conformance_tests!(async {
        super::store_at(&super::fresh_root("conformance")).await
    });
}

/// Two backends on one root (two processes' view): the kit's random walk, each step through
/// either one, against one model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_backends_on_one_root_agree_with_the_model() {
    let root = fresh_root("shared");
    let (a, b) = (store_at(&root).await, store_at(&root).await);
    let result = stowage_core::testkit::random_operations_shared(&a, &b).await;
    assert!(result.is_ok(), "{}", result.unwrap_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_passes_with_fsync() {
    let root = fresh_root("run-all");
    let report = stowage_core::testkit::run_all(
        stowage_providers::automerge::factory(),
        json!({ "root": root }),
    )
    .await;
    report.assert_passed();
}

#[test]
fn config_errors_name_the_field() {
    let f = AutomergeFactory;
    let err = f.validate(&json!({})).unwrap_err().to_string();
    assert!(err.contains("root"), "{err}");
    let err = f
        .validate(&json!({"root": "x", "actor": "zz"}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("storage.config.actor"), "{err}");
    let err = f
        .validate(&json!({"root": "x", "colour": 1}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("colour"), "{err}");
    f.validate(&json!({"root": "x", "actor": "00ff"})).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Two real processes.

const CHILD_ROOT: &str = "STOWAGE_AM_CHILD_ROOT";
const CHILD_FIELD: &str = "STOWAGE_AM_CHILD_FIELD";
const CHILD_OTHER: &str = "STOWAGE_AM_CHILD_OTHER";
const SHARED_KEY: &str = "shared/record.json";
const ROUNDS: u64 = 20;

/// The child's side of `two_processes_merge_base_writes`: a no-op unless the parent started
/// this binary with the child variables set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_child() {
    let (Ok(root), Ok(field), Ok(other)) = (
        std::env::var(CHILD_ROOT),
        std::env::var(CHILD_FIELD),
        std::env::var(CHILD_OTHER),
    ) else {
        return;
    };
    let root = PathBuf::from(root);
    let store = backend(&root);
    let key = Key::new(SHARED_KEY).unwrap();
    // Phase 1: read (head, then get of exactly that version), change only my field, put Base.
    for round in 1..=ROUNDS {
        let head = store.head(&ns(), &key, None).await.unwrap();
        let (_, body) = store
            .get(
                &ns(),
                &key,
                GetOptions {
                    version: Some(head.version),
                    range: None,
                },
            )
            .await
            .unwrap();
        let mut doc: Value = serde_json::from_slice(&body.into_bytes().await.unwrap()).unwrap();
        doc[&field] = json!(round);
        doc[format!("log_{field}")]
            .as_array_mut()
            .unwrap()
            .push(json!(round));
        store
            .put(
                &ns(),
                &key,
                serde_json::to_vec(&doc).unwrap().into(),
                json_meta(),
                PutMode::Base(head.version),
            )
            .await
            .unwrap();
    }
    // Phase 2: both read, then both write the same field: the barrier makes the two writes
    // concurrent (each is made before the other's read is visible to it).
    let head = store.head(&ns(), &key, None).await.unwrap();
    let (_, body) = store
        .get(
            &ns(),
            &key,
            GetOptions {
                version: Some(head.version),
                range: None,
            },
        )
        .await
        .unwrap();
    let mut doc: Value = serde_json::from_slice(&body.into_bytes().await.unwrap()).unwrap();
    std::fs::write(root.join(format!("ready-{field}")), b"").unwrap();
    let started = Instant::now();
    while !root.join(format!("ready-{other}")).exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the other process never got ready"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    doc["same"] = json!(format!("from-{field}"));
    store
        .put(
            &ns(),
            &key,
            serde_json::to_vec(&doc).unwrap().into(),
            json_meta(),
            PutMode::Base(head.version),
        )
        .await
        .unwrap();
}

fn spawn_child(root: &Path, field: &str, other: &str) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "two_processes_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ROOT, root)
        .env(CHILD_FIELD, field)
        .env(CHILD_OTHER, other)
        .spawn()
        .expect("starting a child process")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_merge_base_writes() {
    let root = fresh_root("two-processes");
    let store = backend(&root);
    let key = Key::new(SHARED_KEY).unwrap();
    let start = json!({"a": 0, "b": 0, "same": "initial", "log_a": [], "log_b": []});
    store
        .put(
            &ns(),
            &key,
            serde_json::to_vec(&start).unwrap().into(),
            json_meta(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let mut a = spawn_child(&root, "a", "b");
    let mut b = spawn_child(&root, "b", "a");
    assert!(a.wait().unwrap().success(), "child a failed");
    assert!(b.wait().unwrap().success(), "child b failed");

    let (info, body) = store.get(&ns(), &key, GetOptions::default()).await.unwrap();
    let doc: Value = serde_json::from_slice(&body.into_bytes().await.unwrap()).unwrap();
    // Both processes' edits of their own fields survive: no write undid the other's.
    assert_eq!(doc["a"], json!(ROUNDS), "{doc}");
    assert_eq!(doc["b"], json!(ROUNDS), "{doc}");
    let all: Vec<Value> = (1..=ROUNDS).map(|r| json!(r)).collect();
    assert_eq!(doc["log_a"], json!(all), "{doc}");
    assert_eq!(doc["log_b"], json!(all), "{doc}");
    assert_eq!(info.version, 1 + 2 * ROUNDS + 2, "every write is a version");

    // The same field written concurrently: one value wins, the conflict lists both.
    let winner = doc["same"].as_str().unwrap().to_string();
    assert!(winner == "from-a" || winner == "from-b", "{doc}");
    let conflict = info
        .conflicts
        .iter()
        .find(|c| c.path == "/same")
        .unwrap_or_else(|| panic!("no conflict on /same in {:?}", info.conflicts));
    assert_eq!(
        conflict.values[0],
        json!(winner),
        "the winning value comes first"
    );
    let mut values: Vec<String> = conflict
        .values
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    values.sort();
    assert_eq!(values, vec!["from-a", "from-b"]);

    // Neither value is lost from history: some version reads each of them.
    let versions = store.versions(&ns(), &key).await.unwrap();
    assert_eq!(versions.len() as u64, info.version);
    let mut seen = std::collections::BTreeSet::new();
    for v in &versions {
        let (_, body) = store
            .get(
                &ns(),
                &key,
                GetOptions {
                    version: Some(v.version),
                    range: None,
                },
            )
            .await
            .unwrap();
        let doc: Value = serde_json::from_slice(&body.into_bytes().await.unwrap()).unwrap();
        seen.insert(doc["same"].as_str().unwrap().to_string());
        for c in &v.conflicts {
            seen.extend(c.values.iter().filter_map(|x| x.as_str().map(String::from)));
        }
    }
    assert!(
        seen.contains("from-a") && seen.contains("from-b"),
        "history lost a value: {seen:?}"
    );
    // Both processes' changes carry their own actors.
    let history = store.history(&ns(), &key).await.unwrap();
    let actors: std::collections::BTreeSet<&str> =
        history.iter().map(|h| h.actor.as_str()).collect();
    assert!(
        actors.len() >= 3,
        "the parent and both children wrote with their own actors: {actors:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Point-in-time reads.

fn version_doc(i: u64) -> Value {
    let items: Vec<Value> = (0..(i % 7)).map(|j| json!({"j": j, "sq": j * i})).collect();
    let mut doc = json!({
        "n": i,
        "title": format!("title {}", i / 3),
        "items": items,
        "nested": {"even": i.is_multiple_of(2), "ratio": (i as f64) / 8.0},
    });
    if i.is_multiple_of(5) {
        doc["sometimes"] = json!(["x", i]);
    }
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_read_of_every_version_of_1000() {
    const N: u64 = 1000;
    let root = fresh_root("history");
    let store = backend(&root);
    let key = Key::new("long/history.json").unwrap();
    for i in 1..=N {
        let meta = json_meta()
            .with_tag(format!("t{}", i % 3))
            .with_attribute("i", i);
        let info = store
            .put(
                &ns(),
                &key,
                serde_json::to_vec(&version_doc(i)).unwrap().into(),
                meta,
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        assert_eq!(info.version, i);
    }
    // A fresh backend reads the compacted folder from disk.
    let reopened = backend(&root);
    for store in [&store, &reopened] {
        for i in 1..=N {
            let (info, body) = store
                .get(
                    &ns(),
                    &key,
                    GetOptions {
                        version: Some(i),
                        range: None,
                    },
                )
                .await
                .unwrap();
            let bytes = body.into_bytes().await.unwrap();
            assert_eq!(
                &bytes[..],
                &serde_json::to_vec(&version_doc(i)).unwrap()[..],
                "version {i}"
            );
            assert_eq!(info.version, i);
            assert_eq!(info.metadata.attributes["i"], json!(i));
            assert!(
                info.metadata.tags.contains(&format!("t{}", i % 3))
                    && info.metadata.tags.len() == 1
            );
        }
    }
    // Compaction left a snapshot and few change files.
    let folder = std::fs::read_dir(root.join("docs").join("default"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let names: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.starts_with("snapshot-")).count(),
        1,
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .filter(|n| n.starts_with("incremental-"))
            .count()
            < 200,
        "{names:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Replicas.

/// Loads every data file of a document folder into one Automerge document.
fn load_folder(folder: &Path) -> automerge::Automerge {
    let mut doc = automerge::Automerge::new();
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("snapshot-") || name.starts_with("incremental-") {
            doc.load_incremental(&std::fs::read(&path).unwrap())
                .unwrap();
        }
    }
    doc
}

fn only_doc_folder(root: &Path) -> PathBuf {
    std::fs::read_dir(root.join("docs").join("default"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_edited_apart_converge_sending_only_missing_changes() {
    const COMMON: u64 = 1000;
    const APART: u64 = 100;
    let (root_a, root_b) = (fresh_root("replica-a"), fresh_root("replica-b"));
    let (a, b) = (backend(&root_a), backend(&root_b));
    let key = Key::new("replicated/doc.json").unwrap();
    let mut doc = json!({"a": 0, "b": 0, "common": 0, "list": []});
    for i in 1..=COMMON {
        doc["common"] = json!(i);
        doc["list"].as_array_mut().unwrap().push(json!(i));
        a.put(
            &ns(),
            &key,
            serde_json::to_vec(&doc).unwrap().into(),
            json_meta(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    }
    let first = sync_stores(&a, &b).await.unwrap();
    assert_eq!(
        first.changes_a_to_b,
        COMMON + 1,
        "the genesis change and every put"
    );
    assert_eq!(first.changes_b_to_a, 0);
    assert_eq!(
        a.get(&ns(), &key, GetOptions::default()).await.unwrap().0,
        b.get(&ns(), &key, GetOptions::default()).await.unwrap().0
    );

    // Edited apart: A changes `a` and tags, B changes `b` and appends to the list.
    let mut doc_a = doc.clone();
    let mut doc_b = doc.clone();
    for i in 1..=APART {
        doc_a["a"] = json!(i);
        a.put(
            &ns(),
            &key,
            serde_json::to_vec(&doc_a).unwrap().into(),
            json_meta().with_tag("from-a"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
        doc_b["b"] = json!(i);
        doc_b["list"]
            .as_array_mut()
            .unwrap()
            .push(json!(format!("b{i}")));
        b.put(
            &ns(),
            &key,
            serde_json::to_vec(&doc_b).unwrap().into(),
            json_meta(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    }
    // What a sync must move at least (the raw changes each side lacks), and what shipping
    // every change both ways would cost.
    let (am_a, am_b) = (
        load_folder(&only_doc_folder(&root_a)),
        load_folder(&only_doc_folder(&root_b)),
    );
    let lacking = |from: &automerge::Automerge, to: &automerge::Automerge| -> (usize, usize) {
        let changes: Vec<_> = from
            .get_changes(&[])
            .into_iter()
            .filter(|c| automerge::ReadDoc::get_change_by_hash(to, &c.hash()).is_none())
            .collect();
        (
            changes.len(),
            changes.iter().map(|c| c.raw_bytes().len()).sum(),
        )
    };
    let ((to_b, bytes_to_b), (to_a, bytes_to_a)) = (lacking(&am_a, &am_b), lacking(&am_b, &am_a));
    assert_eq!((to_b as u64, to_a as u64), (APART, APART));
    let missing = bytes_to_b + bytes_to_a;
    let everything = am_a.save_after(&[]).len() + am_b.save_after(&[]).len();
    let full_doc = am_a.save().len();

    let report = sync_stores(&a, &b).await.unwrap();
    println!(
        "sync of {APART}+{APART} changes over {COMMON} common: {} bytes sent ({} messages); missing changes {missing} bytes; \
         all changes both ways {everything} bytes; one full save() {full_doc} bytes",
        report.bytes_sent(),
        report.messages
    );
    assert_eq!(report.changes_a_to_b, APART);
    assert_eq!(report.changes_b_to_a, APART);
    // The protocol adds heads and Bloom filters (about 10 bits per change each side holds) to
    // the missing changes, nothing more.
    let total_changes = am_a.get_changes(&[]).len() + APART as usize;
    assert!(
        report.bytes_sent() as usize <= missing + 4 * total_changes + 1024,
        "sync sent {} bytes, but the missing changes are only {missing} bytes",
        report.bytes_sent()
    );
    assert!(
        report.bytes_sent() as usize * 5 < everything,
        "sync sent {} of {everything} bytes",
        report.bytes_sent()
    );

    // Converged: byte-identical reads, identical histories.
    let (info_a, body_a) = a.get(&ns(), &key, GetOptions::default()).await.unwrap();
    let (info_b, body_b) = b.get(&ns(), &key, GetOptions::default()).await.unwrap();
    let (bytes_a, bytes_b) = (
        body_a.into_bytes().await.unwrap(),
        body_b.into_bytes().await.unwrap(),
    );
    assert_eq!(bytes_a, bytes_b);
    assert_eq!(info_a, info_b);
    assert_eq!(info_a.version, COMMON + 2 * APART);
    let merged: Value = serde_json::from_slice(&bytes_a).unwrap();
    assert_eq!(merged["a"], json!(APART));
    assert_eq!(merged["b"], json!(APART));
    assert_eq!(
        merged["list"].as_array().unwrap().len() as u64,
        COMMON + APART
    );
    assert!(info_a.metadata.tags.contains("from-a"));
    assert_eq!(
        a.versions(&ns(), &key).await.unwrap(),
        b.versions(&ns(), &key).await.unwrap()
    );
    // A fresh backend over each root reads the same.
    let (ra, rb) = (backend(&root_a), backend(&root_b));
    let (_, again_a) = ra.get(&ns(), &key, GetOptions::default()).await.unwrap();
    let (_, again_b) = rb.get(&ns(), &key, GetOptions::default()).await.unwrap();
    assert_eq!(
        again_a.into_bytes().await.unwrap(),
        again_b.into_bytes().await.unwrap()
    );

    // Nothing left to exchange.
    let idle = sync_stores(&a, &b).await.unwrap();
    assert_eq!(idle.changes_a_to_b + idle.changes_b_to_a, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_created_on_both_replicas_merge_fields() {
    let (root_a, root_b) = (fresh_root("create-a"), fresh_root("create-b"));
    let (a, b) = (backend(&root_a), backend(&root_b));
    let key = Key::new("both/created.json").unwrap();
    a.put(
        &ns(),
        &key,
        br#"{"from_a":1}"#.to_vec().into(),
        json_meta(),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    b.put(
        &ns(),
        &key,
        br#"{"from_b":2}"#.to_vec().into(),
        json_meta(),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    let only_b = Key::new("only/b.bin").unwrap();
    b.put(
        &ns(),
        &only_b,
        b"\x00\x01binary".to_vec().into(),
        Metadata::new(),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    sync_stores(&a, &b).await.unwrap();
    let (_, body) = a.get(&ns(), &key, GetOptions::default()).await.unwrap();
    let doc: Value = serde_json::from_slice(&body.into_bytes().await.unwrap()).unwrap();
    // The shared genesis change means both writers filled the same body map.
    assert_eq!(doc, json!({"from_a": 1, "from_b": 2}));
    let (_, body) = a.get(&ns(), &only_b, GetOptions::default()).await.unwrap();
    assert_eq!(&body.into_bytes().await.unwrap()[..], b"\x00\x01binary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_looking_keys_never_become_paths() {
    let root = fresh_root("paths");
    let store = Stowage::from_backend(Arc::new(backend(&root)) as Arc<dyn StorageBackend>);
    let tenant = store.namespace("tenant").unwrap();
    for key in ["etc/passwd", "a/b/c/d/e", "..x/y", "snapshot-x.am", "lock"] {
        tenant.put(key, "x", Metadata::new()).await.unwrap();
    }
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(
                !["etc", "passwd", "a", "..x", "snapshot-x.am"].contains(&name.as_str()),
                "{name} in {}",
                dir.display()
            );
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            }
        }
    }
    let listed = tenant.list_all(Default::default()).await.unwrap();
    assert_eq!(listed.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_version_stays_atomic_and_base_of_missing_version_conflicts() {
    let root = fresh_root("modes");
    let store = backend(&root);
    let key = Key::new("modes.json").unwrap();
    store
        .put(
            &ns(),
            &key,
            br#"{"x":1}"#.to_vec().into(),
            json_meta(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let err = store
        .put(
            &ns(),
            &key,
            br#"{"x":2}"#.to_vec().into(),
            json_meta(),
            PutMode::Base(5),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), stowage_core::ErrorKind::Conflict, "{err}");
    // Base of an older version merges; IfVersion of an older version is refused.
    store
        .put(
            &ns(),
            &key,
            br#"{"x":1,"y":1}"#.to_vec().into(),
            json_meta(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let merged = store
        .put(
            &ns(),
            &key,
            br#"{"x":3}"#.to_vec().into(),
            json_meta(),
            PutMode::Base(1),
        )
        .await
        .unwrap();
    assert_eq!(merged.version, 3);
    let (_, body) = store.get(&ns(), &key, GetOptions::default()).await.unwrap();
    assert_eq!(&body.into_bytes().await.unwrap()[..], br#"{"x":3,"y":1}"#);
    let err = store
        .put(
            &ns(),
            &key,
            br#"{"x":4}"#.to_vec().into(),
            json_meta(),
            PutMode::IfVersion(2),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), stowage_core::ErrorKind::Conflict, "{err}");
}

/// `Base(0)`, "my writer read nothing", writes a key that has no version and conflicts with
/// one that has, as `IfVersion(0)` does here and `Base(0)` does on every other provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_zero_writes_a_new_key_and_conflicts_with_an_existing_one() {
    let store = backend(&fresh_root("base-zero"));
    let (ns, key) = (ns(), Key::new("fresh.json").unwrap());
    let put = |mode| store.put(&ns, &key, br#"{"a":1}"#.to_vec().into(), json_meta(), mode);
    let written = put(PutMode::Base(0)).await.unwrap();
    assert_eq!(written.version, 1);
    let err = put(PutMode::Base(0)).await.unwrap_err();
    assert_eq!(err.kind(), stowage_core::ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("current version is 1"), "{err}");
    let merged = put(PutMode::Base(1)).await.unwrap();
    assert_eq!(merged.version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_change_file_is_reported_never_served() {
    let root = fresh_root("damaged");
    let store = backend(&root);
    let key = Key::new("fragile.json").unwrap();
    store
        .put(
            &ns(),
            &key,
            br#"{"ok":true}"#.to_vec().into(),
            json_meta(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let clean = store.verify(&stowage_core::NoProgress).await.unwrap();
    assert!(clean.is_clean(), "{:?}", clean.problems);
    assert_eq!(clean.records_checked, 1);
    let bad = only_doc_folder(&root).join(format!("incremental-{}.amc", "0".repeat(64)));
    std::fs::write(&bad, b"not automerge at all").unwrap();
    let err = backend(&root).head(&ns(), &key, None).await.unwrap_err();
    assert_eq!(err.kind(), stowage_core::ErrorKind::Corrupt, "{err}");
    assert!(
        err.to_string().contains(&bad.display().to_string()),
        "{err}"
    );
    let report = backend(&root)
        .verify(&stowage_core::NoProgress)
        .await
        .unwrap();
    assert!(!report.is_clean(), "verify missed the damaged file");
}

/// A change file damaged in place (a flipped bit, cut short, emptied): Automerge's loader skips
/// a chunk it cannot parse without an error, so without a check the document would load
/// without that change — the record served at an older version, or not found at all, `verify`
/// clean, and `gc` free to remove the payload files only that change referred to. Each damage
/// must be `Corrupt` naming the file, on `head`, `get`, a write, `verify` and `gc`; with the
/// bytes put back, every version reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_file_damaged_in_place_is_corrupt_never_an_older_version() {
    let root = fresh_root("damaged-in-place");
    let open = || {
        let mut config = AutomergeConfig::new(&root);
        config.fsync = false;
        // Byte payloads from 1 KiB go to payload files, so gc has one to keep.
        config.blob_min_bytes = 1024;
        AutomergeBackend::new(config).unwrap()
    };
    let store = open();
    let key = Key::new("account.json").unwrap();
    for balance in [100, 50] {
        let body = format!(r#"{{"balance":{balance}}}"#).into_bytes();
        store
            .put(&ns(), &key, body.into(), json_meta(), PutMode::Overwrite)
            .await
            .unwrap();
    }
    let dir = only_doc_folder(&root);
    let before = dir_listing(&dir);
    // The newest change carries a 4 KiB byte payload: a payload file only it refers to.
    let payload: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    store
        .put(
            &ns(),
            &key,
            payload.clone().into(),
            Metadata::new(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    drop(store);
    let newest: Vec<String> = dir_listing(&dir)
        .into_iter()
        .filter(|n| !before.contains(n) && n.starts_with("incremental-"))
        .collect();
    assert_eq!(newest.len(), 1, "{newest:?}");
    let file = dir.join(&newest[0]);
    let original = std::fs::read(&file).unwrap();
    let blobs_before = count_files(&root.join("blobs"));
    assert!(blobs_before >= 1, "the 4 KiB payload is not in a file");

    let mut flipped = original.clone();
    *flipped.last_mut().unwrap() ^= 1;
    let damages: [(&str, Vec<u8>); 4] = [
        ("last bit flipped", flipped),
        ("cut to half", original[..original.len() / 2].to_vec()),
        ("emptied", Vec::new()),
        ("a middle byte changed", {
            let mut b = original.clone();
            let mid = b.len() / 2;
            b[mid] = b[mid].wrapping_add(1);
            b
        }),
    ];
    let names_file = |e: &stowage_core::Error| e.to_string().contains(&file.display().to_string());
    for (what, bytes) in damages {
        std::fs::write(&file, &bytes).unwrap();
        let store = open();
        let err = store.head(&ns(), &key, None).await.unwrap_err();
        assert_eq!(
            err.kind(),
            stowage_core::ErrorKind::Corrupt,
            "{what}: {err}"
        );
        assert!(names_file(&err), "{what}: {err}");
        let err = store
            .get(&ns(), &key, GetOptions::default())
            .await
            .map(|(info, _)| info.version)
            .unwrap_err();
        assert_eq!(
            err.kind(),
            stowage_core::ErrorKind::Corrupt,
            "{what}: {err}"
        );
        let err = store
            .put(
                &ns(),
                &key,
                br#"{"balance":0}"#.to_vec().into(),
                json_meta(),
                PutMode::Create,
            )
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            stowage_core::ErrorKind::Corrupt,
            "{what}: {err}"
        );
        let report = store.verify(&stowage_core::NoProgress).await.unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.detail.contains(&file.display().to_string())),
            "{what}: verify missed the damage: {:?}",
            report.problems
        );
        let err = store.gc(&stowage_core::NoProgress).await.unwrap_err();
        assert_eq!(
            err.kind(),
            stowage_core::ErrorKind::Corrupt,
            "{what}: {err}"
        );
        assert_eq!(
            count_files(&root.join("blobs")),
            blobs_before,
            "{what}: gc removed a payload file"
        );
    }

    std::fs::write(&file, &original).unwrap();
    let store = open();
    let (info, body) = store.get(&ns(), &key, GetOptions::default()).await.unwrap();
    assert_eq!(info.version, 3);
    assert_eq!(body.into_bytes().await.unwrap(), payload);
    let report = store.verify(&stowage_core::NoProgress).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

/// Regular files under `dir`, at any depth.
fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| e.unwrap())
        .map(|e| {
            let kind = e.file_type().unwrap();
            if kind.is_dir() {
                count_files(&e.path())
            } else {
                usize::from(kind.is_file())
            }
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// JSON payloads are held exactly or refused.

fn dir_listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_that_would_not_read_back_exactly_is_refused_and_nothing_is_written() {
    let root = fresh_root("inexact");
    let store = backend(&root);
    let kept = Key::new("kept.json").unwrap();
    store
        .put(
            &ns(),
            &kept,
            br#"{"ok":1}"#.to_vec().into(),
            json_meta(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let files_before = dir_listing(&only_doc_folder(&root));
    let cases: [(&str, &str, &str); 5] = [
        (
            r#"{"big": 12345678901234567890123}"#,
            "application/json",
            "\"/big\"",
        ),
        (
            r#"{"list": [1, -9223372036854775809]}"#,
            "application/json; charset=utf-8",
            "\"/list/1\"",
        ),
        (
            r#"{"pi": 3.14159265358979323846264338327950}"#,
            "application/vnd.example+json",
            "\"/pi\"",
        ),
        (r#"{"a": {"k": 1, "k": 2}}"#, "APPLICATION/JSON", "\"/a\""),
        (
            r#"{"k": 1, "\u006b": 1}"#,
            "Application/Ld+Json",
            "top-level",
        ),
    ];
    for (payload, content_type, place) in cases {
        for key in [&kept, &Key::new("fresh.json").unwrap()] {
            let err = store
                .put(
                    &ns(),
                    key,
                    payload.as_bytes().to_vec().into(),
                    Metadata::new().with_content_type(content_type),
                    PutMode::Overwrite,
                )
                .await
                .unwrap_err();
            assert_eq!(
                err.kind(),
                stowage_core::ErrorKind::InvalidInput,
                "{payload}: {err}"
            );
            let message = err.to_string();
            for part in [
                format!("default/{}", key.as_str()),
                place.to_string(),
                "non-JSON content type".to_string(),
            ] {
                assert!(message.contains(&part), "{part} missing: {message}");
            }
        }
    }
    // Nothing written: the kept record is at version 1 with the same files, the fresh one
    // does not exist and has no folder.
    let versions = store.versions(&ns(), &kept).await.unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(dir_listing(&only_doc_folder(&root)), files_before);
    let reopened = backend(&root);
    assert_eq!(reopened.versions(&ns(), &kept).await.unwrap().len(), 1);
    let err = reopened
        .head(&ns(), &Key::new("fresh.json").unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), stowage_core::ErrorKind::NotFound, "{err}");
    // The same bytes without a JSON content type are kept exactly.
    let raw = br#"{"big": 12345678901234567890123, "k": 1, "k": 2}"#;
    let info = store
        .put(
            &ns(),
            &kept,
            raw.to_vec().into(),
            Metadata::new().with_content_type("application/octet-stream"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    assert_eq!(info.size, raw.len() as u64);
    let (_, body) = store
        .get(&ns(), &kept, GetOptions::default())
        .await
        .unwrap();
    assert_eq!(&body.into_bytes().await.unwrap()[..], raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_numbers_that_read_back_as_the_same_number_are_accepted() {
    let root = fresh_root("exact");
    let store = backend(&root);
    let key = Key::new("numbers.json").unwrap();
    let written = br#"{ "z": 1e2, "a": [0.1, -0, 1.50, 9223372036854775807, 18446744073709551615,
        -9223372036854775808, 1.2345678901234568e22, 2.5E-3], "s": "12345678901234567890123" }"#;
    let info = store
        .put(
            &ns(),
            &key,
            written.to_vec().into(),
            json_meta(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let rendered: &[u8] = br#"{"a":[0.1,-0.0,1.5,9223372036854775807,18446744073709551615,-9223372036854775808,1.2345678901234568e+22,0.0025],"s":"12345678901234567890123","z":100.0}"#;
    let (_, body) = store.get(&ns(), &key, GetOptions::default()).await.unwrap();
    assert_eq!(
        String::from_utf8(body.into_bytes().await.unwrap().to_vec()).unwrap(),
        String::from_utf8(rendered.to_vec()).unwrap()
    );
    assert_eq!(info.size, rendered.len() as u64);
}

// ---------------------------------------------------------------------------------------------
// Listing without loading documents.

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

async fn list_fresh(root: &Path) -> Vec<stowage_core::RecordInfo> {
    let options = stowage_core::ListOptions {
        include_deleted: true,
        ..Default::default()
    };
    backend(root).list(&ns(), options).await.unwrap().items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_reads_latest_json_and_never_serves_a_stale_one() {
    let root = fresh_root("listing");
    let store = backend(&root);
    let keys = ["a.json", "b.bin", "c.json"].map(|k| Key::new(k).unwrap());
    store
        .put(
            &ns(),
            &keys[0],
            br#"{"n":1}"#.to_vec().into(),
            json_meta().with_tag("t"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    store
        .put(
            &ns(),
            &keys[1],
            b"bytes".to_vec().into(),
            Metadata::new(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    store
        .put(
            &ns(),
            &keys[2],
            br#"{"x":[1,2.5]}"#.to_vec().into(),
            json_meta(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    store
        .delete(&ns(), &keys[2], Default::default())
        .await
        .unwrap();
    let mut expected = Vec::new();
    for key in &keys {
        expected.push(store.versions(&ns(), key).await.unwrap().pop().unwrap());
    }
    assert_eq!(list_fresh(&root).await, expected);

    // A fresh backend lists from latest.json alone: damaging a data file's content (not its
    // name) goes unnoticed by list, while head, which loads the document, sees it.
    let folder = doc_folder(&root, "default", "a.json");
    let data_file = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "amc" || e == "am"))
        .unwrap();
    let good = std::fs::read(&data_file).unwrap();
    std::fs::write(&data_file, b"damaged").unwrap();
    assert_eq!(list_fresh(&root).await, expected);
    let err = backend(&root)
        .head(&ns(), &keys[0], None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), stowage_core::ErrorKind::Corrupt, "{err}");
    std::fs::write(&data_file, good).unwrap();

    // A missing, damaged or stale cache is never served: list loads the document instead and
    // writes the cache anew.
    let b_cache = doc_folder(&root, "default", "b.bin").join("latest.json");
    std::fs::remove_file(&b_cache).unwrap();
    let c_cache = doc_folder(&root, "default", "c.json").join("latest.json");
    let mut garbled = std::fs::read(&c_cache).unwrap();
    let last = garbled.len() - 2;
    garbled[last] ^= 1;
    std::fs::write(&c_cache, &garbled).unwrap();
    let a_cache = folder.join("latest.json");
    let a_old = std::fs::read(&a_cache).unwrap();
    let newer = store
        .put(
            &ns(),
            &keys[0],
            br#"{"n":2}"#.to_vec().into(),
            json_meta(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    // As if an older build, which does not know latest.json, had made the write.
    std::fs::write(&a_cache, &a_old).unwrap();
    expected[0] = newer;
    assert_eq!(list_fresh(&root).await, expected);
    assert!(b_cache.exists());
    assert_ne!(std::fs::read(&c_cache).unwrap(), garbled);
    assert_ne!(std::fs::read(&a_cache).unwrap(), a_old);
    assert_eq!(list_fresh(&root).await, expected);
    let tenants = backend(&root).namespaces().await.unwrap();
    assert_eq!(tenants, vec![ns()]);
}

// ---------------------------------------------------------------------------------------------
// Purge.

/// Every file under `dir`, recursively.
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_leaves_nothing_of_the_record_on_disk() {
    let root = fresh_root("purge");
    let store = backend(&root);
    let key = Key::new("purged-secret-key.json").unwrap();
    let kept = Key::new("kept.json").unwrap();
    let meta = json_meta()
        .with_tag("purged-secret-tag")
        .with_attribute("owner", json!("purged-secret-owner"));
    for body in [br#"{"n":1}"#, br#"{"n":2}"#] {
        store
            .put(
                &ns(),
                &key,
                body.to_vec().into(),
                meta.clone(),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
    }
    store
        .put(
            &ns(),
            &kept,
            br#"{"k":1}"#.to_vec().into(),
            json_meta(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    // A listing writes latest.json too; a crashed write leaves a temporary file behind.
    assert_eq!(list_fresh(&root).await.len(), 2);
    let folder = doc_folder(&root, "default", key.as_str());
    std::fs::write(folder.join(".tmp-999999-0-0"), "purged-secret-key.json").unwrap();

    assert_eq!(store.purge(&ns(), &key).await.unwrap(), 2);

    for file in all_files(&root) {
        let bytes = std::fs::read(&file).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for secret in [
            "purged-secret-key",
            "purged-secret-tag",
            "purged-secret-owner",
        ] {
            assert!(
                !text.contains(secret),
                "{} still holds {secret}",
                file.display()
            );
        }
    }
    let listed: Vec<_> = list_fresh(&root).await.into_iter().map(|i| i.key).collect();
    assert_eq!(listed, vec![kept.clone()]);
    let query = stowage_core::Query {
        tags: ["purged-secret-tag".to_string()].into(),
        include_deleted: true,
        ..Default::default()
    };
    assert!(backend(&root)
        .search(&ns(), &query)
        .await
        .unwrap()
        .items
        .is_empty());

    // The key starts again at version 1, in this backend and a fresh one.
    let again = store
        .put(
            &ns(),
            &key,
            br#"{"n":3}"#.to_vec().into(),
            json_meta(),
            PutMode::Create,
        )
        .await
        .unwrap();
    assert_eq!(again.version, 1);
    let reread = backend(&root).head(&ns(), &key, None).await.unwrap();
    assert_eq!(reread.version, 1);
    assert!(reread.metadata.tags.is_empty());
    assert_eq!(list_fresh(&root).await.len(), 2);
}
