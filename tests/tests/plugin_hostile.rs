//! Hostile plugins: a C library (`tests/fixtures/c/hostile.c`, compiled here with `cc` into a
//! temporary folder) that breaks the ABI's contract one way per mode. The host must refuse
//! each lie with an error naming the plugin file, and keep serving.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::json;
use stowage_core::{
    Body, ByteRange, Error, ErrorKind, GetOptions, Key, ListOptions, Metadata, Namespace,
    PluginLibrary, PutMode, Query, StorageBackend, StorageProviderFactory,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Compiles `hostile.c` with `defines` into a library of the temporary folder.
fn compile(stem: &str, defines: &[&str]) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let out = dir.path().join(format!("lib{stem}.so"));
    let root = root();
    let status = Command::new("cc")
        .args([
            "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I",
        ])
        .arg(root.join("plugin-abi/include"))
        .args(defines)
        .arg(root.join("tests/fixtures/c/hostile.c"))
        .arg("-o")
        .arg(&out)
        .status()
        .expect("running cc");
    assert!(status.success(), "cc failed for {stem}");
    out
}

/// The default hostile library, compiled once.
fn hostile() -> &'static Arc<PluginLibrary> {
    static LIB: OnceLock<Arc<PluginLibrary>> = OnceLock::new();
    LIB.get_or_init(|| PluginLibrary::load(compile("hostile", &[])).unwrap())
}

fn file() -> String {
    hostile().path().display().to_string()
}

async fn backend(mode: &str) -> Arc<dyn StorageBackend> {
    let factory: Arc<dyn StorageProviderFactory> = hostile()
        .factories()
        .into_iter()
        .find(|f| f.name() == "hostile")
        .unwrap();
    factory.create(json!({ "mode": mode })).await.unwrap()
}

fn ns() -> Namespace {
    Namespace::new("plugins").unwrap()
}

fn key(k: &str) -> Key {
    Key::new(k).unwrap()
}

/// Asserts `err` is of `kind`, names the plugin file, and says `needle`.
fn assert_refused(err: &Error, kind: ErrorKind, needle: &str) {
    let m = err.to_string();
    assert_eq!(err.kind(), kind, "{m}");
    assert!(
        m.contains(&file()),
        "the error should name the plugin file: {m}"
    );
    assert!(m.contains(needle), "the error should say {needle:?}: {m}");
    assert!(
        !m.chars().any(char::is_control),
        "control characters in: {m:?}"
    );
}

/// The host still serves: a sane call through a fresh instance works.
async fn host_survives() {
    let b = backend("sane").await;
    let info = b.head(&ns(), &key("k"), None).await.unwrap();
    assert_eq!(info.version, 1);
}

async fn get_all(b: &Arc<dyn StorageBackend>, options: GetOptions) -> stowage_core::Result<Bytes> {
    let (_, body) = b.get(&ns(), &key("k"), options).await?;
    body.into_bytes().await
}

fn refused_load(path: &Path) -> String {
    let err = PluginLibrary::load(path).expect_err("the host loaded a hostile descriptor");
    assert_eq!(err.kind(), ErrorKind::Plugin, "{err}");
    let m = err.to_string();
    assert!(m.contains(&path.display().to_string()), "{m}");
    m
}

// ---- 1: provider_count ----

#[test]
fn a_huge_provider_count_is_refused_without_allocating() {
    for (stem, count) in [
        ("count_max", "SIZE_MAX"),
        ("count_2_40", "((size_t)1<<40)"),
        ("count_65", "65"),
    ] {
        let path = compile(stem, &[&format!("-DHOSTILE_PROVIDER_COUNT={count}")]);
        let m = refused_load(&path);
        assert!(m.contains("providers, more than the 64"), "{m}");
    }
}

// ---- 2: times out of range ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_times_out_of_range_are_malformed_output() {
    for (mode, field) in [
        ("time_negative", "created_at -1"),
        ("time_max", "updated_at 9223372036854775807"),
        ("time_deleted_max", "deleted_at 9223372036854775807"),
    ] {
        let err = get_all(&backend(mode).await, GetOptions::default())
            .await
            .unwrap_err();
        assert_refused(&err, ErrorKind::Backend, field);
        assert!(err.to_string().contains("1970-01-01..9999-12-31"), "{err}");
    }
    host_survives().await;
}

// ---- 3: bodies ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_held_to_their_length() {
    // The host holds a payload to its length, not its hash: hashing every get would cost a
    // third of a small get through a plugin (see `PayloadCheck`); a provider checks its own
    // payloads on read, as the built-ins do, and `verify` checks what is stored.
    // Fewer bytes than the size.
    let err = get_all(&backend("body_short").await, GetOptions::default())
        .await
        .unwrap_err();
    assert_refused(
        &err,
        ErrorKind::Corrupt,
        "with 5 payload bytes where 10 were expected",
    );
    // More bytes than the size.
    let err = get_all(&backend("body_long_whole").await, GetOptions::default())
        .await
        .unwrap_err();
    assert_refused(&err, ErrorKind::Corrupt, "where 3 were expected");
    // A stream that never ends is cut off.
    let err = get_all(&backend("body_endless").await, GetOptions::default())
        .await
        .unwrap_err();
    assert_refused(&err, ErrorKind::Corrupt, "where 5 were expected");
    // A range read is held to the range's length.
    let range = GetOptions {
        version: None,
        range: Some(ByteRange {
            start: 1,
            end: Some(3),
        }),
    };
    let err = get_all(&backend("sane").await, range).await.unwrap_err();
    assert_refused(
        &err,
        ErrorKind::Backend,
        "returned 5 payload bytes and no reader",
    );
    assert!(err.to_string().contains("(2 expected)"), "{err}");
    // ... and so is a streamed one: a first chunk and a reader, past the range's end.
    let err = get_all(&backend("body_endless").await, range)
        .await
        .unwrap_err();
    assert_refused(&err, ErrorKind::Corrupt, "where 2 were expected");
    // {NULL, len > 0} is malformed, not the end.
    let err = get_all(&backend("body_null_chunk").await, GetOptions::default())
        .await
        .unwrap_err();
    assert_refused(&err, ErrorKind::Backend, "null pointer");
    let err = get_all(&backend("first_null").await, GetOptions::default())
        .await
        .unwrap_err();
    assert_refused(&err, ErrorKind::Backend, "null pointer");
    host_survives().await;
}

// ---- 4: identities, orders and pages ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_another_identity_are_refused() {
    for (mode, needle) in [
        (
            "head_other_key",
            "key \"someone/else\" for a call on key \"k\"",
        ),
        ("head_other_ns", "namespace \"elsewhere\""),
        ("head_version_0", "version 0"),
    ] {
        let err = backend(mode)
            .await
            .head(&ns(), &key("k"), None)
            .await
            .unwrap_err();
        assert_refused(&err, ErrorKind::Backend, needle);
    }
    let err = backend("get_version_0")
        .await
        .get(&ns(), &key("k"), GetOptions::default())
        .await
        .err()
        .unwrap();
    assert_refused(&err, ErrorKind::Backend, "version 0");
    let err = backend("put_other_key")
        .await
        .put(
            &ns(),
            &key("k"),
            Body::from("x"),
            Metadata::new(),
            PutMode::Overwrite,
        )
        .await
        .unwrap_err();
    assert_refused(&err, ErrorKind::Backend, "someone/else");
    let err = backend("versions_other_key")
        .await
        .versions(&ns(), &key("k"))
        .await
        .unwrap_err();
    assert_refused(&err, ErrorKind::Backend, "key \"other\"");
    let err = backend("versions_unordered")
        .await
        .versions(&ns(), &key("k"))
        .await
        .unwrap_err();
    assert_refused(&err, ErrorKind::Backend, "not in ascending order");
    host_survives().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_pages_are_refused() {
    let list = |prefix: Option<&str>, start_after: Option<&str>, limit, cursor: Option<&str>| {
        ListOptions {
            prefix: prefix.map(str::to_string),
            start_after: start_after.map(str::to_string),
            limit,
            cursor: cursor.map(str::to_string),
            ..ListOptions::default()
        }
    };
    let cases = [
        (
            "list_other_ns",
            list(None, None, None, None),
            "namespace \"elsewhere\"",
        ),
        (
            "list_outside_prefix",
            list(Some("p/"), None, None, None),
            "outside the requested prefix",
        ),
        (
            "list_unordered",
            list(None, None, None, None),
            "strictly ascending",
        ),
        (
            "list_duplicate",
            list(None, None, None, None),
            "strictly ascending",
        ),
        (
            "list_not_after",
            list(None, Some("p/b"), None, None),
            "not after start_after",
        ),
        (
            "list_over_limit",
            list(None, None, Some(2), None),
            "3 items for a limit of 2",
        ),
        (
            "list_empty_next",
            list(None, None, None, None),
            "no items but a next cursor",
        ),
        (
            "list_same_cursor",
            list(None, None, None, Some("c1")),
            "equal to the cursor",
        ),
    ];
    for (mode, options, needle) in cases {
        let err = backend(mode).await.list(&ns(), options).await.unwrap_err();
        assert_refused(&err, ErrorKind::Backend, needle);
    }
    // search pages too.
    let query = Query {
        limit: Some(1),
        ..Query::default()
    };
    let err = backend("sane")
        .await
        .search(&ns(), &query)
        .await
        .unwrap_err();
    assert_refused(&err, ErrorKind::Backend, "3 items for a limit of 1");
    let err = backend("list_empty_next")
        .await
        .search(&ns(), &Query::default())
        .await
        .unwrap_err();
    assert_refused(&err, ErrorKind::Backend, "no items but a next cursor");
    // A sane page passes.
    let page = backend("sane")
        .await
        .list(&ns(), list(Some("p/"), Some("p/"), Some(3), None))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 3);
    host_survives().await;
}

// ---- 5: control characters in metadata ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_with_control_characters_is_malformed_output() {
    let b = backend("meta_control").await;
    let err = b.head(&ns(), &key("k"), None).await.unwrap_err();
    assert_refused(&err, ErrorKind::Backend, "control character U+001B");
    let err = b
        .get(&ns(), &key("k"), GetOptions::default())
        .await
        .err()
        .unwrap();
    assert_refused(&err, ErrorKind::Backend, "content type");
    host_survives().await;
}

// ---- 6: load-time error codes from a call ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_time_errors_from_a_call_become_backend_errors() {
    for mode in ["err_plugin", "err_exists"] {
        let err = backend(mode)
            .await
            .head(&ns(), &key("k"), None)
            .await
            .unwrap_err();
        assert_refused(&err, ErrorKind::Backend, "provider `hostile` failed");
        assert!(!err.to_string().starts_with("plugin /usr/lib"), "{err}");
    }
    let err = backend("err_corrupt")
        .await
        .head(&ns(), &key("k"), None)
        .await
        .unwrap_err();
    assert_refused(&err, ErrorKind::Corrupt, "provider `hostile`");
    assert!(!err.to_string().contains("`memory`"), "{err}");
    host_survives().await;
}

// ---- 7: malformed factory answers ----

#[test]
fn malformed_factory_answers_refuse_the_library() {
    let path = compile("bad_caps", &["-DHOSTILE_BAD_CAPABILITIES"]);
    let m = refused_load(&path);
    assert!(m.contains("`capabilities`"), "{m}");
    let path = compile("bad_schema", &["-DHOSTILE_BAD_SCHEMA"]);
    let m = refused_load(&path);
    assert!(m.contains("`config_schema`"), "{m}");
    // The sane build describes itself.
    let d = hostile().describe();
    assert!(d.providers[0].capabilities.range_reads);
    assert_eq!(d.providers[0].config_schema, json!({ "type": "object" }));
}
