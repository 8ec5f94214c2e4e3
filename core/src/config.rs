//! The TOML configuration: `[storage]` (provider, namespace, `[storage.config]`) and `[plugins]`.
//!
//! ```
//! use stowage_core::StowageConfig;
//! let cfg = StowageConfig::from_toml_str(r#"
//! [storage]
//! provider = "sqlite"
//! [storage.config]
//! path = "data/stowage.db"
//! "#, "example.toml").unwrap();
//! assert_eq!(cfg.storage.provider, "sqlite");
//! assert_eq!(cfg.storage.config["path"], "data/stowage.db");
//! ```

use std::env::VarError;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::key::Namespace;

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq)]
pub struct StowageConfig {
    /// Which provider, which namespace, and the provider's own settings.
    pub storage: StorageConfig,
    /// Plugin libraries to load before the provider is chosen.
    pub plugins: PluginsConfig,
    /// Where this config came from (a file path, or a description).
    pub source: String,
}

/// The `[storage]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageConfig {
    /// Provider name (built-in or plugin).
    pub provider: String,
    /// Default namespace of the store.
    pub namespace: Namespace,
    /// The provider's settings (`[storage.config]`), validated by its factory.
    pub config: serde_json::Value,
}

/// The `[plugins]` section. Relative paths are resolved against the config file's folder.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PluginsConfig {
    /// Library files to load.
    pub paths: Vec<PathBuf>,
    /// Folders whose shared libraries (`.so`, `.dylib`, `.dll`) are all loaded.
    pub dirs: Vec<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    storage: RawStorage,
    #[serde(default)]
    plugins: RawPlugins,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    provider: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    config: Option<toml::Table>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPlugins {
    #[serde(default)]
    paths: Vec<PathBuf>,
    #[serde(default)]
    dirs: Vec<PathBuf>,
}

impl StowageConfig {
    /// The embedded default: SQLite at `./stowage-data/stowage.db`, namespace `default`.
    pub fn embedded_default() -> Self {
        StowageConfig {
            storage: StorageConfig {
                provider: "sqlite".into(),
                namespace: Namespace::default(),
                config: serde_json::json!({ "path": "stowage-data/stowage.db" }),
            },
            plugins: PluginsConfig::default(),
            source: "the embedded default".into(),
        }
    }

    /// Reads and parses a TOML file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        // A path that names no file is the config's fault, not an I/O failure.
        let missing = |what: &str| Error::InvalidConfig {
            source_name: Some(path.display().to_string()),
            field: String::new(),
            message: format!("{what}; name a TOML config file"),
        };
        if path.is_dir() {
            return Err(missing("is a directory"));
        }
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => missing("does not exist"),
            _ => Error::io(format!("reading config file {}", path.display()), e),
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            Error::InvalidConfig {
                source_name: Some(path.display().to_string()),
                field: String::new(),
                message: format!(
                    "line {line} is not UTF-8 text (TOML files are UTF-8; re-save the file as UTF-8)"
                ),
            }
        })?;
        let mut cfg = Self::from_toml_str(&text, &path.display().to_string())?;
        let base = path.parent().unwrap_or(Path::new("."));
        // Relative to the file's folder; an existing path is also made absolute with `.`, `..`
        // and symbolic links resolved, so messages and `providers` show one clean name.
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
            if let Ok(clean) = std::fs::canonicalize(&*p) {
                *p = clean;
            }
        };
        cfg.plugins.paths.iter_mut().for_each(resolve);
        cfg.plugins.dirs.iter_mut().for_each(resolve);
        Ok(cfg)
    }

    /// Parses TOML text; `source` names it in errors. `${VAR}` in strings is replaced from the
    /// environment; an unset variable is an error naming it.
    pub fn from_toml_str(text: &str, source: &str) -> Result<Self> {
        Self::parse(text, source, &|name| std::env::var(name))
    }

    /// As [`Self::from_toml_str`], with variables looked up by `env`.
    pub fn from_toml_str_with_env(
        text: &str,
        source: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        Self::parse(text, source, &|name| env(name).ok_or(VarError::NotPresent))
    }

    fn parse(text: &str, source: &str, env: &Lookup<'_>) -> Result<Self> {
        let invalid = |field: String, message: String| Error::InvalidConfig {
            source_name: Some(source.to_string()),
            field,
            message,
        };
        // A syntax error is about the file, not a field: the empty field leaves it unnamed.
        let mut value: toml::Value = toml::from_str(text)
            .map_err(|e| invalid(String::new(), describe_toml_error(text, &e)))?;
        substitute_env(&mut value, "", env).map_err(|(field, msg)| invalid(field, msg))?;
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "(top level)".to_string()
            } else {
                path
            };
            // toml's message ends in a newline (and may put "in `table`" on a line of its own).
            let message = e.into_inner().to_string();
            let message = message
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            invalid(
                field,
                format!("{message}; see docs/user-guide.md for the config format"),
            )
        })?;
        let namespace = match raw.storage.namespace {
            None => Namespace::default(),
            Some(ns) => Namespace::new(ns.clone())
                .map_err(|e| invalid("storage.namespace".into(), e.to_string()))?,
        };
        if raw.storage.provider.trim().is_empty() {
            return Err(invalid(
                "storage.provider".into(),
                "must name a provider".into(),
            ));
        }
        let config = match raw.storage.config {
            None => serde_json::Value::Object(Default::default()),
            Some(t) => serde_json::to_value(t).map_err(|e| {
                invalid(
                    "storage.config".into(),
                    format!("cannot be expressed as JSON: {e}"),
                )
            })?,
        };
        Ok(StowageConfig {
            storage: StorageConfig {
                provider: raw.storage.provider,
                namespace,
                config,
            },
            plugins: PluginsConfig {
                paths: raw.plugins.paths,
                dirs: raw.plugins.dirs,
            },
            source: source.to_string(),
        })
    }
}

/// Turns a TOML syntax error into a message naming its line and column (both from 1).
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let mut start = span.start.min(text.len());
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            let before = &text[..start];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before[line_start..].chars().count() + 1;
            format!(
                "malformed TOML at line {line}, column {column}: {}",
                e.message()
            )
        }
        None => format!("malformed TOML: {}", e.message()),
    }
}

/// Replaces `${VAR}` in every string of `value`.
fn substitute_env(
    value: &mut toml::Value,
    path: &str,
    env: &Lookup<'_>,
) -> std::result::Result<(), (String, String)> {
    match value {
        toml::Value::String(s) if s.contains("${") => {
            *s = expand(s, env).map_err(|m| (path.to_string(), m))?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute_env(item, &format!("{path}[{i}]"), env)?;
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                substitute_env(v, &p, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// How `${VAR}` is looked up: the process environment, or a caller's map.
type Lookup<'a> = dyn Fn(&str) -> std::result::Result<String, VarError> + 'a;

fn expand(s: &str, env: &Lookup<'_>) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("`${{` without a closing `}}` in {s:?}"))?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "`${{{name}}}` is not a valid environment variable name"
            ));
        }
        let v = env(name).map_err(|e| match e {
            VarError::NotPresent => {
                format!("environment variable `{name}` is not set (referenced as `${{{name}}}`)")
            }
            VarError::NotUnicode(_) => format!(
                "environment variable `{name}` (referenced as `${{{name}}}`) is set, but its value is not UTF-8 text"
            ),
        })?;
        out.push_str(&v);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_vars_are_substituted_and_unset_ones_named() {
        let env = |n: &str| (n == "SECRET").then(|| "s3cr3t".to_string());
        let cfg = StowageConfig::from_toml_str_with_env(
            "[storage]\nprovider = \"s3\"\n[storage.config]\nkey = \"${SECRET}-x\"\n",
            "t.toml",
            &env,
        )
        .unwrap();
        assert_eq!(cfg.storage.config["key"], "s3cr3t-x");
        let err = StowageConfig::from_toml_str_with_env(
            "[storage]\nprovider = \"s3\"\n[storage.config]\nkey = \"${MISSING}\"\n",
            "t.toml",
            &env,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("MISSING") && msg.contains("storage.config.key") && msg.contains("t.toml"),
            "{msg}"
        );
    }

    #[test]
    fn an_env_var_that_is_set_but_not_utf8_is_not_called_unset() {
        let err = StowageConfig::parse(
            "[storage]\nprovider = \"fs\"\n[storage.config]\nroot = \"${DIR}/x\"\n",
            "t.toml",
            &|_| Err(VarError::NotUnicode(std::ffi::OsString::from("caf"))),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidConfig, "{msg}");
        assert!(
            msg.contains("`DIR`")
                && msg.contains("not UTF-8")
                && msg.contains("storage.config.root")
                && !msg.contains("not set"),
            "{msg}"
        );
    }

    #[test]
    fn a_config_file_that_is_not_utf8_is_invalid_config_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latin1.toml");
        std::fs::write(&path, b"[storage]\nprovider = \"sqlite\"\n# caf\xe9\n").unwrap();
        let err = StowageConfig::from_file(&path).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidConfig, "{msg}");
        assert!(
            msg.contains(&path.display().to_string())
                && msg.contains("line 3")
                && msg.contains("UTF-8"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_fields_and_bad_toml_are_named() {
        let err =
            StowageConfig::from_toml_str("[storage]\nprovider = \"x\"\nflavour = 1\n", "c.toml")
                .unwrap_err();
        assert!(err.to_string().contains("flavour"), "{err}");
        let err = StowageConfig::from_toml_str("[storage\nprovider = ", "c.toml").unwrap_err();
        assert!(
            err.to_string().contains("c.toml") && err.to_string().contains("malformed TOML"),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "invalid config in c.toml: malformed TOML at line 1, column 9: unclosed table, \
             expected `]`"
        );
        let err =
            StowageConfig::from_toml_str("[storage]\nprovider = \"x\"\nnamespace = é\n", "c.toml")
                .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid config in c.toml: malformed TOML at line 3, column 13: "),
            "{err}"
        );
        let err = StowageConfig::from_toml_str(
            "[storage]\nprovider = \"x\"\nnamespace = \"Bad\"\n",
            "c.toml",
        )
        .unwrap_err();
        assert!(err.to_string().contains("storage.namespace"), "{err}");
        // One sentence per unknown field: no stray space before the `;`.
        for (text, field, expected) in [
            (
                "[storage]\nprovider = \"x\"\nflavour = 1\n",
                "storage.flavour",
                "expected one of `provider`, `namespace`, `config` in `storage`",
            ),
            (
                "[storage]\nprovider = \"x\"\n[plugins]\nx = 1\n",
                "plugins.x",
                "expected `paths` or `dirs` in `plugins`",
            ),
            (
                "zz = 1\n[storage]\nprovider = \"x\"\n",
                "zz",
                "expected `storage` or `plugins`",
            ),
        ] {
            let err = StowageConfig::from_toml_str(text, "c.toml").unwrap_err();
            let unknown = field.rsplit('.').next().unwrap();
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid config in c.toml: field `{field}`: unknown field `{unknown}`, \
                     {expected}; see docs/user-guide.md for the config format"
                )
            );
        }
        let err = StowageConfig::from_toml_str("[plugins]\npaths = []\n", "c.toml").unwrap_err();
        assert!(err.to_string().contains("storage"), "{err}");
    }
}
