//! The one error type of stowage, with a stable [`ErrorKind`] for every variant.

use std::path::PathBuf;

/// Result alias used across stowage.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Boxed source error carried by [`Error::Backend`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Every error stowage returns. Each variant names what it is about, and its `Display` reads as
/// a sentence a user can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key broke the key rules; rejected before any I/O.
    #[error("invalid key {}: {reason}", quoted(key))]
    InvalidKey {
        /// The key as given (lossy for display).
        key: String,
        /// Which rule it broke.
        reason: String,
    },
    /// A namespace name broke the namespace rules.
    #[error(
        "invalid namespace {}: {reason} (namespaces match [a-z0-9][a-z0-9_-]{{0,62}})",
        quoted(namespace)
    )]
    InvalidNamespace {
        /// The namespace as given.
        namespace: String,
        /// Which rule it broke.
        reason: String,
    },
    /// An argument other than a key or namespace was invalid (a range, a query, a cursor).
    #[error("invalid input: {message}")]
    InvalidInput {
        /// What was wrong and what is expected.
        message: String,
    },
    /// No live record (or no such version) exists.
    #[error("{}", not_found_message(namespace, key, *version))]
    NotFound {
        /// Namespace searched.
        namespace: String,
        /// Key looked up.
        key: String,
        /// The version asked for, if one was.
        version: Option<u64>,
    },
    /// A precondition failed: the record changed (or exists, or is absent) since the caller
    /// looked. Nothing was written.
    #[error("conflict on {namespace}/{key}: expected {expected}, but the current version is {}; nothing was written", current.map(|v| v.to_string()).unwrap_or_else(|| "none (absent)".into()))]
    Conflict {
        /// Namespace of the record.
        namespace: String,
        /// Key of the record.
        key: String,
        /// What the caller asked for (e.g. "version 3", "no live version").
        expected: String,
        /// The current latest version, `None` if the key has none.
        current: Option<u64>,
    },
    /// A configuration value was wrong.
    #[error("{}", invalid_config_message(source_name.as_deref(), field, message))]
    InvalidConfig {
        /// The file (or provider) the config came from, if known.
        source_name: Option<String>,
        /// Dotted path of the field (e.g. `storage.config.path`); empty when the error is about
        /// the file as a whole (malformed TOML), and then the message names no field.
        field: String,
        /// What was wrong and what was expected.
        message: String,
    },
    /// The provider does not support this operation; see `capabilities()`.
    #[error("operation `{operation}` is not supported by provider `{provider}`")]
    Unsupported {
        /// Operation name.
        operation: String,
        /// Provider name.
        provider: String,
    },
    /// A provider of that name is registered already.
    #[error("a provider named `{name}` is already registered{}", origin.as_ref().map(|o| format!(" (by {o})")).unwrap_or_default())]
    ProviderExists {
        /// Provider name.
        name: String,
        /// Where the existing one came from (file or "built-in"), when known.
        origin: Option<String>,
    },
    /// No provider of that name is registered.
    #[error("unknown provider `{name}`; {}", known_providers(known))]
    UnknownProvider {
        /// The name asked for.
        name: String,
        /// The names that do exist.
        known: Vec<String>,
    },
    /// Stored data failed a check (hash, checksum, schema).
    #[error("corrupt data in provider `{provider}`: {message}")]
    Corrupt {
        /// Provider name.
        provider: String,
        /// What is corrupt, and where.
        message: String,
    },
    /// Another process holds the store.
    #[error("store at {} is locked: {message}", path.display())]
    Locked {
        /// The lock file or store root.
        path: PathBuf,
        /// Who holds it and what to do.
        message: String,
    },
    /// A local I/O error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The backend (server, database, library) failed.
    #[error("provider `{provider}` failed: {message}")]
    Backend {
        /// Provider name.
        provider: String,
        /// What failed, naming the endpoint/file where possible.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// A plugin library was refused at load time.
    #[error("plugin {}: {message}", path.display())]
    Plugin {
        /// The library file.
        path: PathBuf,
        /// Why it was refused and what to do.
        message: String,
    },
    /// A plugin panicked; it is poisoned and refuses further calls.
    #[error("provider `{provider}` panicked: {message}")]
    Panicked {
        /// Provider name.
        provider: String,
        /// The panic message.
        message: String,
    },
}

fn not_found_message(namespace: &str, key: &str, version: Option<u64>) -> String {
    match version {
        // Also what a tombstone or a purged version gets, so the wording covers those too.
        Some(v) => format!(
            "record {namespace}/{key} has no readable version {v}: it was never written, was \
             purged, or is a deletion marker (list the key's versions to see which)"
        ),
        None => format!("record {namespace}/{key} not found"),
    }
}

/// The providers a registry knows, for an unknown name's message; none at all usually means
/// the built-ins were not linked in.
pub(crate) fn known_providers(known: &[String]) -> String {
    if known.is_empty() {
        "no provider is registered: link the built-ins in with `use stowage_providers as _;`, or \
         call `stowage_providers::register_all(&registry)`, or register your own"
            .to_string()
    } else {
        format!("known providers: {}", known.join(", "))
    }
}

fn invalid_config_message(source_name: Option<&str>, field: &str, message: &str) -> String {
    let source = source_name.map(|s| format!(" in {s}")).unwrap_or_default();
    if field.is_empty() {
        format!("invalid config{source}: {message}")
    } else {
        format!("invalid config{source}: field `{field}`: {message}")
    }
}

/// A name as an error message shows it: quoted and escaped, and cut after 64 characters (with
/// its full length) so a runaway key cannot flood the message. The error's field keeps it whole.
fn quoted(name: &str) -> String {
    const SHOWN: usize = 64;
    match name.char_indices().nth(SHOWN) {
        None => format!("{name:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &name[..cut], name.len()),
    }
}

/// The stable kind of an [`Error`]; what callers match on and what crosses the plugin ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// See [`Error::InvalidKey`].
    InvalidKey,
    /// See [`Error::InvalidNamespace`].
    InvalidNamespace,
    /// See [`Error::InvalidInput`].
    InvalidInput,
    /// See [`Error::NotFound`].
    NotFound,
    /// See [`Error::Conflict`].
    Conflict,
    /// See [`Error::InvalidConfig`].
    InvalidConfig,
    /// See [`Error::Unsupported`].
    Unsupported,
    /// See [`Error::ProviderExists`].
    ProviderExists,
    /// See [`Error::UnknownProvider`].
    UnknownProvider,
    /// See [`Error::Corrupt`].
    Corrupt,
    /// See [`Error::Locked`].
    Locked,
    /// See [`Error::Io`].
    Io,
    /// See [`Error::Backend`].
    Backend,
    /// See [`Error::Plugin`].
    Plugin,
    /// See [`Error::Panicked`].
    Panicked,
}

impl Error {
    /// The message followed by each source it does not already contain (thiserror messages
    /// often embed their source), joined with `: ` — an I/O error shows the OS reason once.
    /// What the CLI prints.
    ///
    /// ```
    /// use stowage_core::Error;
    /// let e = Error::io("reading a.txt", std::io::Error::other("disk on fire"));
    /// assert!(e.chain().ends_with("disk on fire"));
    /// ```
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            let part = s.to_string();
            if !text.contains(&part) {
                text.push_str(": ");
                text.push_str(&part);
            }
            source = s.source();
        }
        text
    }

    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidKey { .. } => ErrorKind::InvalidKey,
            Error::InvalidNamespace { .. } => ErrorKind::InvalidNamespace,
            Error::InvalidInput { .. } => ErrorKind::InvalidInput,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Conflict { .. } => ErrorKind::Conflict,
            Error::InvalidConfig { .. } => ErrorKind::InvalidConfig,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::ProviderExists { .. } => ErrorKind::ProviderExists,
            Error::UnknownProvider { .. } => ErrorKind::UnknownProvider,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Locked { .. } => ErrorKind::Locked,
            Error::Io { .. } => ErrorKind::Io,
            Error::Backend { .. } => ErrorKind::Backend,
            Error::Plugin { .. } => ErrorKind::Plugin,
            Error::Panicked { .. } => ErrorKind::Panicked,
        }
    }

    /// `Unsupported` for `operation` on `provider`.
    pub fn unsupported(operation: impl Into<String>, provider: impl Into<String>) -> Self {
        Error::Unsupported {
            operation: operation.into(),
            provider: provider.into(),
        }
    }

    /// `NotFound` for a record (and optionally a version).
    pub fn not_found(namespace: &crate::Namespace, key: &crate::Key, version: Option<u64>) -> Self {
        Error::NotFound {
            namespace: namespace.to_string(),
            key: key.to_string(),
            version,
        }
    }

    /// `Io` with a context naming what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// `Backend` with a message and source.
    pub fn backend(
        provider: impl Into<String>,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Backend {
            provider: provider.into(),
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// `Corrupt` for `provider`.
    pub fn corrupt(provider: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Corrupt {
            provider: provider.into(),
            message: message.into(),
        }
    }

    /// `InvalidInput` with a message.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Error::InvalidInput {
            message: message.into(),
        }
    }

    /// `InvalidConfig` about `field`.
    pub fn invalid_config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidConfig {
            source_name: None,
            field: field.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_empty_registry_says_how_to_fill_it() {
        let none = Error::UnknownProvider {
            name: "memory".into(),
            known: vec![],
        };
        assert!(
            none.to_string().contains("use stowage_providers as _;"),
            "{none}"
        );
        let some = Error::UnknownProvider {
            name: "x".into(),
            known: vec!["fs".into(), "sqlite".into()],
        };
        assert!(
            some.to_string().ends_with("known providers: fs, sqlite"),
            "{some}"
        );
    }
    use super::*;

    #[test]
    fn a_long_name_is_cut_in_the_message_and_kept_whole_in_the_error() {
        let key = "é".repeat(1000);
        let err = crate::Key::new(key.clone()).unwrap_err();
        let message = err.to_string();
        assert!(message.len() < 300, "{message}");
        assert!(
            message.contains(&format!("\"{}\"… (2000 bytes)", "é".repeat(64))),
            "{message}"
        );
        assert!(message.contains("at most 1024 bytes"), "{message}");
        match err {
            Error::InvalidKey { key: whole, .. } => assert_eq!(whole, key),
            other => panic!("{other:?}"),
        }
        let short = crate::Key::new("a//b").unwrap_err().to_string();
        assert!(short.starts_with("invalid key \"a//b\": "), "{short}");
    }

    #[test]
    fn a_missing_version_is_not_called_never_written() {
        let ns = crate::Namespace::default();
        let key = crate::Key::new("k").unwrap();
        assert_eq!(
            Error::not_found(&ns, &key, Some(2)).to_string(),
            "record default/k has no readable version 2: it was never written, was purged, or \
             is a deletion marker (list the key's versions to see which)"
        );
        assert_eq!(
            Error::not_found(&ns, &key, None).to_string(),
            "record default/k not found"
        );
    }

    #[test]
    fn an_invalid_config_without_a_field_names_none() {
        let err = |field: &str| Error::InvalidConfig {
            source_name: Some("c.toml".into()),
            field: field.into(),
            message: "bad".into(),
        };
        assert_eq!(
            err("storage.provider").to_string(),
            "invalid config in c.toml: field `storage.provider`: bad"
        );
        assert_eq!(err("").to_string(), "invalid config in c.toml: bad");
        assert_eq!(
            Error::invalid_config("plugins.paths", "bad").to_string(),
            "invalid config: field `plugins.paths`: bad"
        );
    }
}
