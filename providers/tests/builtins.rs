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
