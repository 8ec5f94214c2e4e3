//! [`stowage_providers::register_all`] fills an isolated registry: the fallback for binaries
//! whose linker dropped the `inventory` submissions.

use stowage_core::Registry;

#[test]
fn register_all_fills_an_isolated_registry() {
    let registry = Registry::new();
    assert!(!registry.contains("memory"));
    stowage_providers::register_all(&registry).unwrap();
    assert!(registry.contains("memory"), "{:?}", registry.names());
    // Every compiled-in provider is there, and a second call changes nothing.
    let names = registry.names();
    assert_eq!(names.len(), stowage_providers::builtin_factories().len());
    stowage_providers::register_all(&registry).unwrap();
    assert_eq!(registry.names(), names);
}
