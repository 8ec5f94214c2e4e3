//! Drop-in plugins loaded from real shared libraries (built by `scripts/build-plugin-fixtures`
//! into `target/plugins/`): both examples pass the conformance kit, every defective library is
//! refused with an error naming it, panics come back as `Panicked` without taking the host down,
//! and libraries stay alive as long as anything made from them.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use stowage_core::plugin::abi::{ABI_MAJOR, ABI_MINOR};
use stowage_core::{
    testkit, Body, ByteRange, Error, ErrorKind, GetOptions, Key, ListOptions, Metadata, Namespace,
    PluginLibrary, ProviderOrigin, PutMode, Registry, StorageBackend, StorageProviderFactory,
    Stowage,
};

/// A library built by `scripts/build-plugin-fixtures`; fails (never skips) when it is missing.
fn plugin(stem: &str) -> PathBuf {
    let ext = if cfg!(target_os = "macos") {
        "dylib"
    } else {
        "so"
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("target/plugins").join(format!("{stem}.{ext}"));
    assert!(
        path.is_file(),
        "{} is missing: run `scripts/build-plugin-fixtures` before `cargo test`",
        path.display()
    );
    path
}

fn factory(library: &Arc<PluginLibrary>, name: &str) -> Arc<dyn StorageProviderFactory> {
    library
        .factories()
        .into_iter()
        .find(|f| f.name() == name)
        .unwrap_or_else(|| {
            panic!(
                "plugin {} has no provider `{name}`",
                library.path().display()
            )
        })
}

fn ns() -> Namespace {
    Namespace::new("plugins").unwrap()
}

fn key(k: &str) -> Key {
    Key::new(k).unwrap()
}

/// Runs the whole kit against the Rust example plugin on the test's runtime.
async fn kv_plugin_kit() {
    let library = PluginLibrary::load(plugin("libstowage_plugin_kv")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = json!({ "path": dir.path().join("kv.redb") });
    testkit::run_all(factory(&library, "kv"), config)
        .await
        .assert_passed();
}

/// The host calls plugins in place on a multi-thread runtime and on the blocking pool on a
/// current-thread one (which cannot hand its tasks off); the kit must pass both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_kv_plugin_passes_the_conformance_kit() {
    kv_plugin_kit().await;
}

#[tokio::test(flavor = "current_thread")]
async fn rust_kv_plugin_passes_the_conformance_kit_on_a_current_thread_runtime() {
    kv_plugin_kit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_cmem_plugin_passes_the_conformance_kit() {
    let library = PluginLibrary::load(plugin("libstowage_plugin_cmem")).unwrap();
    // Built against this header: it offers ABI 1.1's `get_first`, which the host then uses.
    assert_eq!(library.describe().abi, format!("{ABI_MAJOR}.{ABI_MINOR}"));
    testkit::run_all(factory(&library, "cmem"), json!({}))
        .await
        .assert_passed();
}

/// A plugin built against ABI 1.0 (a backend vtable that ends before 1.1's `get_first`) is
/// still served in full by this host, through `get_open`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abi_1_0_plugin_without_get_first_passes_the_conformance_kit() {
    let library = PluginLibrary::load(plugin("libcmem_twin")).unwrap();
    assert_eq!(library.describe().abi, "1.0");
    testkit::run_all(factory(&library, "cmem"), json!({}))
        .await
        .assert_passed();
}

/// A backend of the Rust example plugin (`kv`), storing in `dir`.
async fn kv_plugin_backend(dir: &tempfile::TempDir) -> Arc<dyn StorageBackend> {
    let library = PluginLibrary::load(plugin("libstowage_plugin_kv")).unwrap();
    factory(&library, "kv")
        .create(json!({ "path": dir.path().join("kv.redb") }))
        .await
        .unwrap()
}

/// Loads a library that must be refused; returns the message after checking it names the file.
fn refused(stem: &str) -> String {
    let path = plugin(stem);
    let err = PluginLibrary::load(&path).expect_err("the host loaded a defective plugin");
    assert_eq!(err.kind(), ErrorKind::Plugin, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "the error does not name the file: {message}"
    );
    message
}

/// The host's ABI version as messages print it.
fn host_abi() -> String {
    format!("ABI {ABI_MAJOR}.{ABI_MINOR}")
}

#[test]
fn wrong_abi_major_is_refused_naming_both_versions() {
    let m = refused("librefuse_wrong_major");
    let plugin = format!("ABI {}.{ABI_MINOR}", ABI_MAJOR + 1);
    assert!(m.contains(&plugin) && m.contains(&host_abi()), "{m}");
}

#[test]
fn newer_abi_minor_is_refused_naming_both_versions() {
    let m = refused("librefuse_newer_minor");
    let plugin = format!("ABI {ABI_MAJOR}.{}", ABI_MINOR + 1);
    assert!(m.contains(&plugin) && m.contains(&host_abi()), "{m}");
}

#[test]
fn too_small_descriptor_is_refused() {
    let m = refused("librefuse_small_struct");
    assert!(
        m.contains("struct_size is 16 bytes") && m.contains(&host_abi()),
        "{m}"
    );
}

#[test]
fn missing_entry_symbol_is_refused() {
    let m = refused("librefuse_missing_symbol");
    assert!(
        m.contains("does not export `stowage_plugin_entry_v1`"),
        "{m}"
    );
}

#[test]
fn null_descriptor_is_refused() {
    let m = refused("librefuse_null_descriptor");
    assert!(m.contains("null descriptor"), "{m}");
}

#[test]
fn other_target_is_refused() {
    let m = refused("librefuse_other_target");
    assert!(
        m.contains("riscv64gc-unknown-none-elf") && m.contains(stowage_core::plugin::abi::TARGET),
        "{m}"
    );
}

#[test]
fn a_file_that_is_not_a_shared_library_is_refused() {
    let m = refused("not_a_library");
    assert!(m.contains("not a loadable shared library"), "{m}");
    let err = PluginLibrary::load("/nonexistent/libnothing.so").unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/libnothing.so")
            && err.to_string().contains("no such file"),
        "{err}"
    );
    // Paths that exist but hold no file are named for what they are, not "no such file".
    let dir = tempfile::tempdir().unwrap();
    for (path, what) in [
        (dir.path().to_path_buf(), "is a directory"),
        (PathBuf::from("/dev/null"), "not a regular file"),
    ] {
        let err = PluginLibrary::load(&path).unwrap_err();
        let m = err.to_string();
        assert_eq!(err.kind(), ErrorKind::Plugin, "{m}");
        assert!(
            m.contains(&path.display().to_string()) && m.contains(what) && !m.contains("no such"),
            "{m}"
        );
    }
}

/// Names are printed on one line and picked in TOML: a control character in a plugin's name,
/// or white space in a provider's, would let a plugin fake lines of `stowage providers`.
#[test]
fn names_with_control_characters_or_a_spaced_provider_name_are_refused() {
    let m = refused("librefuse_control_name");
    assert!(
        m.contains("plugin_name") && m.contains("control character") && !m.contains('\n'),
        "{m}"
    );
    let m = refused("librefuse_spaced_provider");
    assert!(
        m.contains("provider name") && m.contains("white space") && m.contains("\"c mem\""),
        "{m}"
    );
}

/// Loads `path` (a good library) and registers it, which must be refused: the message.
fn registration_refused(registry: &Registry, path: &std::path::Path) -> String {
    let err = PluginLibrary::load(path)
        .unwrap()
        .register(registry)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Plugin, "{err}");
    err.to_string()
}

#[test]
fn two_plugins_declaring_one_provider_name_is_an_error_naming_both_files() {
    let registry = Registry::new();
    let first = plugin("libstowage_plugin_cmem");
    let twin = plugin("libcmem_twin");
    PluginLibrary::load(&first)
        .unwrap()
        .register(&registry)
        .unwrap();
    let m = registration_refused(&registry, &twin);
    assert!(
        m.contains(&first.display().to_string()) && m.contains(&twin.display().to_string()),
        "{m}"
    );
    assert!(m.contains("`cmem`"), "{m}");
    assert!(m.contains("remove one of the two from [plugins]"), "{m}");
    // The first stays registered; loading the same file again is a no-op, not a clash.
    match registry.get("cmem").unwrap().origin() {
        ProviderOrigin::Plugin { path, plugin, .. } => {
            assert_eq!((path, plugin.as_str()), (first.clone(), "cmem"))
        }
        other => panic!("unexpected origin {other:?}"),
    }
    PluginLibrary::load(&first)
        .unwrap()
        .register(&registry)
        .unwrap();
}

/// A provider of the host (the trait's default origin is built-in), squatting the name `cmem`.
struct Squatter;

#[stowage_core::async_trait]
impl StorageProviderFactory for Squatter {
    fn name(&self) -> &str {
        "cmem"
    }
    fn description(&self) -> &str {
        "registered in code under the C example's provider name"
    }
    fn config_schema(&self) -> serde_json::Value {
        json!({})
    }
    fn capabilities(&self) -> stowage_core::Capabilities {
        stowage_core::Capabilities::default()
    }
    fn validate(&self, _config: &serde_json::Value) -> stowage_core::Result<()> {
        Ok(())
    }
    async fn create(
        &self,
        _config: serde_json::Value,
    ) -> stowage_core::Result<Arc<dyn StorageBackend>> {
        Err(stowage_core::Error::invalid_input(
            "the squatter makes no backends",
        ))
    }
}

#[test]
fn a_plugin_cannot_take_the_name_of_a_provider_of_the_host() {
    let registry = Registry::new();
    registry.register(Arc::new(Squatter)).unwrap();
    let m = registration_refused(&registry, &plugin("libstowage_plugin_cmem"));
    assert!(
        m.contains("already registered by built-in")
            && m.contains("cannot replace a provider of the host")
            && !m.contains("remove one of the two"),
        "{m}"
    );
    assert_eq!(
        registry.get("cmem").unwrap().description(),
        Squatter.description()
    );
}

#[test]
fn describe_reports_what_a_library_provides() {
    let d = PluginLibrary::load(plugin("libstowage_plugin_kv"))
        .unwrap()
        .describe();
    assert_eq!(
        (d.plugin.as_str(), d.abi.as_str()),
        (
            "stowage-plugin-kv",
            format!("{ABI_MAJOR}.{ABI_MINOR}").as_str()
        )
    );
    assert_eq!(d.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(d.providers.len(), 1);
    assert_eq!(d.providers[0].name, "kv");
    assert!(d.providers[0].capabilities.versions && d.providers[0].capabilities.durable);
    assert_eq!(d.providers[0].config_schema["required"], json!(["path"]));
    assert!(d.to_string().contains("provider `kv`"), "{d}");
    let c = PluginLibrary::load(plugin("libstowage_plugin_cmem"))
        .unwrap()
        .describe();
    assert!(c.providers[0].capabilities.range_reads && !c.providers[0].capabilities.versions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_become_panicked_errors_and_the_host_keeps_serving() {
    let registry = Registry::new();
    PluginLibrary::load(plugin("libpanicky"))
        .unwrap()
        .register(&registry)
        .unwrap();
    PluginLibrary::load(plugin("libstowage_plugin_cmem"))
        .unwrap()
        .register(&registry)
        .unwrap();

    // In create: reported, and the factory still creates afterwards.
    let err = registry
        .create("panicky", json!({ "panic_in_create": true }))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Panicked, "{err}");
    assert!(err.to_string().contains("told to panic in create"), "{err}");

    // In a call: that backend is poisoned, a fresh one works.
    let poisoned = registry.create("panicky", json!({})).await.unwrap();
    let err = poisoned
        .put(
            &ns(),
            &key("panic/put"),
            Body::from("x"),
            Metadata::new(),
            PutMode::Overwrite,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked, "{err}");
    assert!(err.to_string().contains("told to panic in put"), "{err}");
    let err = poisoned.head(&ns(), &key("a"), None).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Panicked,
        "a poisoned instance must refuse calls: {err}"
    );

    // Mid-stream: the first half arrives, then the body fails with Panicked.
    let fresh = registry.create("panicky", json!({})).await.unwrap();
    fresh
        .put(
            &ns(),
            &key("panic/stream/a"),
            Body::from("0123456789"),
            Metadata::new(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let (info, mut body) = fresh
        .get(&ns(), &key("panic/stream/a"), GetOptions::default())
        .await
        .unwrap();
    assert_eq!(info.size, 10);
    assert_eq!(&body.next_chunk().await.unwrap().unwrap()[..], b"01234");
    let err = body.next_chunk().await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked, "{err}");
    assert!(err.to_string().contains("mid-stream"), "{err}");
    drop(body);

    // Other backends and other providers keep serving.
    let other = registry.create("panicky", json!({})).await.unwrap();
    other
        .put(
            &ns(),
            &key("ok"),
            Body::from("fine"),
            Metadata::new(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let cmem = registry.create("cmem", json!({})).await.unwrap();
    cmem.put(
        &ns(),
        &key("ok"),
        Body::from("fine"),
        Metadata::new(),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    let (_, body) = cmem
        .get(&ns(), &key("ok"), GetOptions::default())
        .await
        .unwrap();
    assert_eq!(&body.into_bytes().await.unwrap()[..], b"fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_concurrent_operations_through_one_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let backend = kv_plugin_backend(&dir).await;
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let backend = backend.clone();
            tokio::spawn(async move {
                let k = key(&format!("concurrent/{i:03}"));
                let payload = Bytes::from(format!("payload {i}").repeat(i + 1));
                let info = backend
                    .put(
                        &ns(),
                        &k,
                        Body::from(payload.clone()),
                        Metadata::new(),
                        PutMode::Overwrite,
                    )
                    .await?;
                let (read, body) = backend.get(&ns(), &k, GetOptions::default()).await?;
                assert_eq!(read.version, info.version);
                assert_eq!(body.into_bytes().await?, payload);
                Ok::<_, Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let page = backend.list(&ns(), ListOptions::default()).await.unwrap();
    assert_eq!(page.items.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_outlives_the_registry_and_library_handles_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let backend = {
        let registry = Arc::new(Registry::new());
        PluginLibrary::load(plugin("libstowage_plugin_kv"))
            .unwrap()
            .register(&registry)
            .unwrap();
        registry
            .create("kv", json!({ "path": dir.path().join("kv.redb") }))
            .await
            .unwrap()
        // The registry, its factory and the library handle are dropped here.
    };
    let info = backend
        .put(
            &ns(),
            &key("still/here"),
            Body::from("alive"),
            Metadata::new(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    assert_eq!(info.version, 1);
    let (_, body) = backend
        .get(&ns(), &key("still/here"), GetOptions::default())
        .await
        .unwrap();
    assert_eq!(&body.into_bytes().await.unwrap()[..], b"alive");
    drop(backend);
    // The instance was released: redb lets the file be opened again.
    let library = PluginLibrary::load(plugin("libstowage_plugin_kv")).unwrap();
    factory(&library, "kv")
        .create(json!({ "path": dir.path().join("kv.redb") }))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_different_plugins_serve_side_by_side() {
    let registry = Registry::new();
    let kv = PluginLibrary::load(plugin("libstowage_plugin_kv")).unwrap();
    let cmem = PluginLibrary::load(plugin("libstowage_plugin_cmem")).unwrap();
    kv.register(&registry).unwrap();
    cmem.register(&registry).unwrap();
    assert_eq!(registry.names(), vec!["cmem".to_string(), "kv".to_string()]);
    let dir = tempfile::tempdir().unwrap();
    let a = registry
        .create("kv", json!({ "path": dir.path().join("kv.redb") }))
        .await
        .unwrap();
    let b = registry.create("cmem", json!({})).await.unwrap();
    for (backend, text) in [(&a, "in redb"), (&b, "in C")] {
        backend
            .put(
                &ns(),
                &key("side/by/side"),
                Body::from(text),
                Metadata::new().with_tag("t"),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
    }
    for (backend, text) in [(&a, "in redb"), (&b, "in C")] {
        let (info, body) = backend
            .get(&ns(), &key("side/by/side"), GetOptions::default())
            .await
            .unwrap();
        assert_eq!(&body.into_bytes().await.unwrap()[..], text.as_bytes());
        assert!(info.metadata.tags.contains("t"));
    }
    match registry.get("kv").unwrap().origin() {
        ProviderOrigin::Plugin {
            path,
            plugin,
            version,
        } => {
            assert_eq!(path, kv.path());
            assert_eq!(
                (plugin.as_str(), version.as_str()),
                ("stowage-plugin-kv", env!("CARGO_PKG_VERSION"))
            );
        }
        other => panic!("unexpected origin {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_body_aborts_the_put_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let backend = kv_plugin_backend(&dir).await;
    let chunks = futures::stream::iter([
        Ok(Bytes::from_static(b"first")),
        Err(Error::invalid_input("client went away")),
    ]);
    let err = backend
        .put(
            &ns(),
            &key("aborted"),
            Body::from_stream(chunks, None),
            Metadata::new(),
            PutMode::Overwrite,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("client went away"), "{err}");
    let err = backend
        .head(&ns(), &key("aborted"), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // A streamed body of several chunks goes through.
    let big: Vec<Bytes> = (0..5)
        .map(|i| Bytes::from(vec![i as u8; 300_000]))
        .collect();
    let total: usize = big.iter().map(Bytes::len).sum();
    let stream = futures::stream::iter(big.into_iter().map(Ok));
    let info = backend
        .put(
            &ns(),
            &key("big"),
            Body::from_stream(stream, None),
            Metadata::new(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    assert_eq!(info.size, total as u64);
    let (_, body) = backend
        .get(&ns(), &key("big"), GetOptions::default())
        .await
        .unwrap();
    let bytes = body.into_bytes().await.unwrap();
    assert_eq!(stowage_core::ContentHash::of(&bytes), info.hash);
}

/// In a `[plugins] dirs` folder, a library's name that holds no file (a link left behind when
/// the library was removed) is refused by name, not skipped; a folder named like a library is
/// not a library and is skipped.
#[test]
fn a_dangling_library_link_in_a_plugin_folder_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        plugin("libstowage_plugin_cmem"),
        dir.path().join("libstowage_plugin_cmem.so"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("folder.so")).unwrap();
    let config = stowage_core::PluginsConfig {
        dirs: vec![dir.path().to_path_buf()],
        ..Default::default()
    };
    let loaded = stowage_core::plugin::load_plugins(&Registry::new(), &config).unwrap();
    assert_eq!(loaded.len(), 1);
    let gone = dir.path().join("libgone.so");
    std::os::unix::fs::symlink(dir.path().join("removed.so"), &gone).unwrap();
    let err = stowage_core::plugin::load_plugins(&Registry::new(), &config).unwrap_err();
    let m = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Plugin, "{m}");
    assert!(
        m.contains(&gone.display().to_string()) && m.contains("link to nothing"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_plugins_load_before_the_provider_is_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(
        plugin("libstowage_plugin_cmem"),
        plugins.join("libstowage_plugin_cmem.so"),
    )
    .unwrap();
    std::fs::write(plugins.join("README.txt"), "not a library, ignored by dirs").unwrap();
    let config = dir.path().join("stowage.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nprovider = \"kv\"\n[storage.config]\npath = \"{}\"\n[plugins]\npaths = [\"{}\"]\ndirs = [\"plugins\"]\n",
            dir.path().join("data/kv.redb").display(),
            plugin("libstowage_plugin_kv").display()
        ),
    )
    .unwrap();
    let registry = Arc::new(Registry::new());
    let store = Stowage::builder()
        .registry(registry.clone())
        .config_file(&config)
        .build()
        .await
        .unwrap();
    assert_eq!(store.provider(), "kv");
    assert_eq!(registry.names(), vec!["cmem".to_string(), "kv".to_string()]);
    let tenant = store.namespace("acme").unwrap();
    tenant
        .put("from/config", "hello", Metadata::new())
        .await
        .unwrap();
    assert_eq!(
        &tenant.get_bytes("from/config").await.unwrap().1[..],
        b"hello"
    );
    drop((tenant, store));
    // Building again from the same config is fine: the same files are not loaded twice.
    let again = Stowage::builder()
        .registry(registry.clone())
        .config_file(&config)
        .build()
        .await
        .unwrap();
    assert_eq!(again.provider(), "kv");
    // And `load_plugin` on the builder works without a config file.
    let store = Stowage::builder()
        .registry(Arc::new(Registry::new()))
        .load_plugin(plugin("libstowage_plugin_cmem"))
        .with_storage("cmem", json!({}))
        .build()
        .await
        .unwrap();
    assert_eq!(store.provider(), "cmem");
}

/// A get through ABI 1.1's binary `get_first` describes the record exactly as the JSON `head`
/// does (metadata, times, hash, version), for the latest version, an older one and a range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_get_agrees_with_json_head() {
    let dir = tempfile::tempdir().unwrap();
    let backend = kv_plugin_backend(&dir).await;
    let (ns, key) = (
        Namespace::new("acme").unwrap(),
        Key::new("docs/a.json").unwrap(),
    );
    let meta = Metadata::new()
        .with_content_type("application/json")
        .with_tag("blue")
        .with_attribute("n", 7);
    backend
        .put(
            &ns,
            &key,
            Body::from("first"),
            meta.clone(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    backend
        .put(
            &ns,
            &key,
            Body::from("second!"),
            Metadata::new(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    for (version, range, bytes) in [
        (None, None, &b"second!"[..]),
        (Some(1), None, &b"first"[..]),
        (
            Some(1),
            Some(ByteRange {
                start: 1,
                end: Some(3),
            }),
            &b"ir"[..],
        ),
        (
            None,
            Some(ByteRange {
                start: 4,
                end: None,
            }),
            &b"nd!"[..],
        ),
    ] {
        let (info, body) = backend
            .get(&ns, &key, GetOptions { version, range })
            .await
            .unwrap();
        assert_eq!(info, backend.head(&ns, &key, version).await.unwrap());
        assert_eq!(&body.into_bytes().await.unwrap()[..], bytes);
    }
    let (old, _) = backend
        .get(
            &ns,
            &key,
            GetOptions {
                version: Some(1),
                range: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(old.metadata, meta);
    backend.delete(&ns, &key, Default::default()).await.unwrap();
    let err = backend
        .get(&ns, &key, GetOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

/// A plugin that breaks the `get_first` contract (a record flag the host does not know; half a
/// payload with no reader for the rest) gets a clear error naming it, never a wrong answer, and
/// the same backend keeps serving keys it answers correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_breaking_the_get_first_contract_gets_a_clear_error() {
    let library = PluginLibrary::load(plugin("libcmem_liar")).unwrap();
    let backend = factory(&library, "cmem").create(json!({})).await.unwrap();
    for name in ["lie/flags/a", "lie/short/a", "fine/a"] {
        backend
            .put(
                &ns(),
                &key(name),
                Body::from(vec![9u8; 1000]),
                Metadata::new(),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
    }
    for (name, says) in [
        ("lie/flags/a", "unknown record flags 0x80"),
        ("lie/short/a", "returned 500 payload bytes and no reader"),
    ] {
        let err = backend
            .get(&ns(), &key(name), GetOptions::default())
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
        let message = err.to_string();
        assert!(
            message.contains("get_first") && message.contains(says),
            "{message}"
        );
        let (_, body) = backend
            .get(&ns(), &key("fine/a"), GetOptions::default())
            .await
            .unwrap();
        assert_eq!(body.into_bytes().await.unwrap().len(), 1000);
    }
}

/// Set in the child process of [`panics_inside_a_plugin_print_nothing_on_stderr`].
const PANIC_CHILD: &str = "STOWAGE_TEST_PLUGIN_PANIC_CHILD";

/// The child's half of [`panics_inside_a_plugin_print_nothing_on_stderr`] (does nothing unless
/// that test runs it): makes the `panicky` plugin panic in create, in a call, in a streamed put
/// (a task on the plugin's runtime) and mid-stream, and prints each error on stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_child_process() {
    if std::env::var_os(PANIC_CHILD).is_none() {
        return;
    }
    let registry = Registry::new();
    PluginLibrary::load(plugin("libpanicky"))
        .unwrap()
        .register(&registry)
        .unwrap();
    let mut errors = Vec::new();
    errors.push(
        registry
            .create("panicky", json!({ "panic_in_create": true }))
            .await
            .err()
            .unwrap(),
    );
    let backend = registry.create("panicky", json!({})).await.unwrap();
    errors.push(
        backend
            .put(
                &ns(),
                &key("panic/put"),
                Body::from("x"),
                Metadata::new(),
                PutMode::Overwrite,
            )
            .await
            .unwrap_err(),
    );
    let backend = registry.create("panicky", json!({})).await.unwrap();
    let chunks: Vec<stowage_core::Result<Bytes>> = vec![
        Ok(Bytes::from("a")),
        Ok(Bytes::from("b")),
        Ok(Bytes::from("c")),
    ];
    errors.push(
        backend
            .put(
                &ns(),
                &key("panic/put"),
                Body::from_stream(futures::stream::iter(chunks), None),
                Metadata::new(),
                PutMode::Overwrite,
            )
            .await
            .unwrap_err(),
    );
    let backend = registry.create("panicky", json!({})).await.unwrap();
    backend
        .put(
            &ns(),
            &key("panic/stream/a"),
            Body::from("0123456789"),
            Metadata::new(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let (_, body) = backend
        .get(&ns(), &key("panic/stream/a"), GetOptions::default())
        .await
        .unwrap();
    errors.push(body.into_bytes().await.unwrap_err());
    for err in errors {
        assert_eq!(err.kind(), ErrorKind::Panicked, "{err}");
        println!("PANICKED-ERROR {err}");
    }
    // A panic on a thread of the plugin's own, outside any call from the host, still goes to
    // the default hook (the plugin's own std prints it).
    let err = registry
        .create("panicky", json!({ "panic_in_own_thread": true }))
        .await
        .err()
        .unwrap();
    println!("OWN-THREAD-ERROR {err}");
}

/// The CLI contract is one line on stderr per failure: a panic inside a plugin must not add the
/// plugin's own "thread … panicked at …" report (or a backtrace) to it. The plugin has its own
/// copy of std, so only its own hook can keep it quiet.
#[test]
fn panics_inside_a_plugin_print_nothing_on_stderr() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "panic_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PANIC_CHILD, "1")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    let errors: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_once("PANICKED-ERROR ").map(|(_, e)| e))
        .collect();
    assert_eq!(errors.len(), 4, "{stdout}");
    for (error, text) in errors.iter().zip([
        "told to panic in create",
        "told to panic in put",
        "told to panic in put",
        "told to panic mid-stream",
    ]) {
        assert!(error.contains(text), "{error}");
        // Where it panicked, for whoever fixes the plugin.
        assert!(error.contains("plugin-panicky/src/lib.rs:"), "{error}");
    }
    // The own thread's panic was printed by the default hook: the only report on stderr.
    assert!(stdout.contains("OWN-THREAD-ERROR"), "{stdout}");
    assert_eq!(
        stderr.matches("panicked at").count(),
        1,
        "stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("a thread of the plugin's own"),
        "stderr:\n{stderr}"
    );
    for text in ["told to panic", "mid-stream"] {
        assert!(
            !stderr.contains(text),
            "the plugin printed its panic:\n{stderr}"
        );
    }
}

/// One redb file, opened by several `kv` backends at once (as by several `stowage` processes,
/// each opening the store, writing and closing it): an open waits for the file (up to
/// `lock_timeout_ms`), so racing `IfVersion` puts give one winner and conflicts, not `Locked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kv_backends_on_one_file_take_turns() {
    let library = PluginLibrary::load(plugin("libstowage_plugin_kv")).unwrap();
    let kv = factory(&library, "kv");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let config = json!({ "path": path, "sync": false });
    {
        let first = kv.create(config.clone()).await.unwrap();
        first
            .put(
                &ns(),
                &key("k"),
                Body::from("v1"),
                Metadata::new(),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
    }
    let racers: Vec<_> = (0..6)
        .map(|i| {
            let (kv, config) = (kv.clone(), config.clone());
            tokio::spawn(async move {
                let backend = kv.create(config).await?;
                let body = Body::from(format!("racer {i}"));
                let (n, k) = (ns(), key("k"));
                let outcome = backend
                    .put(&n, &k, body, Metadata::new(), PutMode::IfVersion(1))
                    .await;
                // Held a little, as a process would between its open and its exit.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                outcome
            })
        })
        .collect();
    let mut won = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(info) => {
                assert_eq!(info.version, 2);
                won += 1;
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e}"),
        }
    }
    assert_eq!(won, 1, "exactly one IfVersion(1) put wins");

    // A store held longer than the other's lock_timeout_ms: a clear Locked error naming it.
    let holder = kv.create(config.clone()).await.unwrap();
    let mut impatient = config.clone();
    impatient["lock_timeout_ms"] = json!(150);
    let started = std::time::Instant::now();
    let err = kv.create(impatient).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Locked, "{err}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(150));
    let text = err.to_string();
    assert!(
        text.contains("150 ms") && text.contains("lock_timeout_ms"),
        "{text}"
    );
    // Released in time: the waiting open goes through.
    let release = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        drop(holder);
    });
    let waited = kv.create(config).await.unwrap();
    release.await.unwrap();
    let (info, _) = waited
        .get(&ns(), &key("k"), GetOptions::default())
        .await
        .unwrap();
    assert_eq!(info.version, 2);
}
