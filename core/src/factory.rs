//! [`StorageProviderFactory`]: how a provider is named, described, configured and created.

use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use crate::backend::StorageBackend;
use crate::error::{Error, Result};
use crate::model::Capabilities;

/// Where a provider comes from, for `stowage providers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderOrigin {
    /// Compiled into this binary.
    BuiltIn,
    /// Registered in code by the embedding application.
    Embedded,
    /// Loaded from a plugin library.
    Plugin {
        /// The library file.
        path: std::path::PathBuf,
        /// The plugin's name.
        plugin: String,
        /// The plugin's version.
        version: String,
    },
}

impl std::fmt::Display for ProviderOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProviderOrigin::BuiltIn => f.write_str("built-in"),
            ProviderOrigin::Embedded => f.write_str("registered in code"),
            ProviderOrigin::Plugin {
                path,
                plugin,
                version,
            } => {
                write!(f, "plugin {plugin} {version} ({})", path.display())
            }
        }
    }
}

/// Makes backends of one provider from JSON config.
///
/// ```
/// use std::sync::Arc;
/// use stowage_core::{StorageProviderFactory, Registry};
/// fn register(registry: &Registry, factory: Arc<dyn StorageProviderFactory>) {
///     registry.register(factory).unwrap();
/// }
/// ```
#[async_trait]
pub trait StorageProviderFactory: Send + Sync + 'static {
    /// The name a config selects it by (`provider = "..."`).
    fn name(&self) -> &str;

    /// One line saying what it is.
    fn description(&self) -> &str;

    /// JSON Schema of its config.
    fn config_schema(&self) -> serde_json::Value;

    /// What backends of this provider support.
    fn capabilities(&self) -> Capabilities;

    /// Checks `config` without any I/O; every error names the field.
    fn validate(&self, config: &serde_json::Value) -> Result<()>;

    /// Creates a backend. Callers run [`StorageProviderFactory::validate`] first.
    async fn create(&self, config: serde_json::Value) -> Result<Arc<dyn StorageBackend>>;

    /// Where this provider comes from.
    fn origin(&self) -> ProviderOrigin {
        ProviderOrigin::BuiltIn
    }
}

/// Parses a provider's JSON config into its typed struct (use `#[serde(deny_unknown_fields)]`),
/// turning any error into `InvalidConfig` that names the field and the provider.
///
/// ```
/// #[derive(serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Cfg { path: String }
/// let err = stowage_core::parse_config::<Cfg>("demo", &serde_json::json!({"pth": "x"})).err().unwrap();
/// assert!(err.to_string().contains("pth"));
/// ```
pub fn parse_config<T: DeserializeOwned>(provider: &str, config: &serde_json::Value) -> Result<T> {
    let config = if config.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        config.clone()
    };
    serde_path_to_error::deserialize(config).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            format!("storage.config ({provider})")
        } else {
            format!("storage.config.{path}")
        };
        Error::InvalidConfig {
            source_name: None,
            field,
            message: format!("{} (provider `{provider}`)", e.into_inner()),
        }
    })
}
