//! The built-in providers reach a binary that names nothing of `stowage-providers`: the crate
//! is only linked, through `use … as _`, and nothing in this file calls into it (the explicit
//! `register_all` fallback is tested in `tests/register_all.rs`, a binary of its own, so it
//! cannot be what pulls the providers in here).

use stowage_core::Registry;
use stowage_providers as _;

#[test]
fn global_registry_holds_the_builtins() {
    let registry = Registry::global();
    assert!(
        registry.contains("memory"),
        "Registry::global() misses the memory provider; it has {:?}",
        registry.names()
    );
    let factory = registry.get("memory").unwrap();
    assert_eq!(factory.name(), "memory");
    assert_eq!(factory.origin(), stowage_core::ProviderOrigin::BuiltIn);
}

#[tokio::test]
async fn the_builder_finds_memory_by_name() {
    let store = stowage_core::Stowage::builder()
        .with_storage("memory", serde_json::json!({}))
        .build()
        .await
        .unwrap();
    assert_eq!(store.provider(), "memory");
    let err = stowage_core::Stowage::builder()
        .with_storage("memory", serde_json::json!({"unknown": 1}))
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown"), "{err}");
}

/// The storage named two ways is an error naming both, not a silent choice of one; a config
/// file that is missing is invalid config naming it, as the CLI reports it.
#[tokio::test]
async fn the_builder_refuses_storage_named_twice_and_a_missing_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stowage.toml");
    std::fs::write(
        &file,
        "[storage]\nprovider = \"memory\"\nnamespace = \"fromfile\"\n",
    )
    .unwrap();
    let err = stowage_core::Stowage::builder()
        .config_file(&file)
        .with_storage("memory", serde_json::json!({}))
        .build()
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), stowage_core::ErrorKind::InvalidInput, "{err}");
    assert!(
        err.to_string().contains("with_storage and config_file"),
        "{err}"
    );
    let store = stowage_core::Stowage::builder()
        .config_file(&file)
        .build()
        .await
        .unwrap();
    assert_eq!(store.default_namespace().namespace().as_str(), "fromfile");
    let missing = dir.path().join("nowhere.toml");
    let err = stowage_core::Stowage::builder()
        .config_file(&missing)
        .build()
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), stowage_core::ErrorKind::InvalidConfig, "{err}");
    assert!(
        err.to_string().contains("nowhere.toml") && err.to_string().contains("does not exist"),
        "{err}"
    );
}
