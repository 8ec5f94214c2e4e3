//! What every command shares: the global options, the chosen config, the opened store, the
//! output printer and the progress bar.
//!
//! Nothing here touches storage until a command asks for it with [`Context::handle`] or
//! [`Context::store`], so a command validates its keys first and a hostile key never creates
//! a data directory.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use stowage_core::{Error, Namespace, NamespaceHandle, Result, Stowage, StowageConfig};

use crate::output::Output;
use crate::progress::BarProgress;

/// Name of the environment variable naming a config file.
pub const CONFIG_ENV: &str = "STOWAGE_CONFIG";

/// Name of the config file looked for in the working directory.
pub const LOCAL_CONFIG: &str = "stowage.toml";

/// Options accepted by every command.
#[derive(clap::Args, Debug)]
pub struct GlobalArgs {
    /// Config file (default: $STOWAGE_CONFIG, else ./stowage.toml, else SQLite at
    /// ./stowage-data/stowage.db).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Namespace to work in (overrides the config's `storage.namespace`).
    #[arg(long, global = true, value_name = "NS")]
    pub namespace: Option<String>,
    /// Print one JSON object per line instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only requested data and errors (no confirmations, hints or progress bars).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Trace every backend call to stderr (-vv: also provider internals).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
}

/// stowage's own crates at `warn`: the warnings every run shows (bar `-q`); `-v` and `-vv`
/// only ever raise these levels, never drop a crate.
const OWN_WARNINGS: &str = "stowage_core=warn,stowage_providers=warn,stowage=warn";

/// Sends `tracing` output to stderr: by default stowage's own warnings (damage a provider found
/// and repaired, a clean-up that failed), one line each; `-v`/`-vv` every backend call and more;
/// `$RUST_LOG` when set and no `-v` given; nothing with `-q`.
pub fn init_tracing(global: &GlobalArgs) {
    use tracing_subscriber::EnvFilter;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if global.quiet {
        // `-q` on the command line outranks a `$RUST_LOG` the environment happens to carry.
        return;
    }
    let filter = match global.verbose {
        0 => match std::env::var("RUST_LOG") {
            Ok(v) if !v.trim().is_empty() => EnvFilter::new(v),
            _ => {
                // Only stowage's crates: a dependency's warnings (sqlx's slow statements, say)
                // are not the user's to act on. Failures are not logged, so every failure stays
                // one `stowage:` line.
                let filter = EnvFilter::new(OWN_WARNINGS);
                let _ = tracing_subscriber::fmt()
                    .with_env_filter(filter)
                    .with_writer(std::io::stderr)
                    .log_internal_errors(false)
                    .with_ansi(ansi)
                    .without_time()
                    .with_target(false)
                    .try_init();
                return;
            }
        },
        // The call spans of stowage_core, and still the providers' and the CLI's warnings.
        1 => EnvFilter::new("stowage_core=debug,stowage_providers=warn,stowage=warn"),
        _ => EnvFilter::new("stowage_core=trace,stowage_providers=debug,stowage=debug"),
    };
    // Fails only if a subscriber is already set, which cannot happen in this binary.
    // A log line that cannot be written (stderr on a full disk or a closed pipe) is dropped:
    // tracing's default reports it with `eprintln!`, which panics, and a panic on SQLite's
    // worker thread would leave the command waiting for ever.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .with_ansi(ansi)
        .try_init();
}

/// Reads the config file `path`, which `named_by` (`--config`, `--to-config`, …) named, and
/// checks its `[plugins]` entries exist (a missing one is a config error, exit 2, as a refused
/// library is). Existing plugin paths come back absolute and normalised
/// ([`StowageConfig::from_file`]), as `providers` shows them.
pub fn read_config(path: &Path, named_by: &str) -> Result<StowageConfig> {
    if path.as_os_str().is_empty() {
        return Err(Error::invalid_input(format!(
            "{named_by} is set but empty; name a config file, or unset it to use ./{LOCAL_CONFIG} or the embedded default"
        )));
    }
    if !path.exists() {
        let dangling = path.symlink_metadata().is_ok_and(|m| m.is_symlink());
        return Err(Error::invalid_input(format!(
            "config file {} (named by {named_by}) {}; create it or name another",
            path.display(),
            if dangling {
                "is a symbolic link to nothing"
            } else {
                "does not exist"
            }
        )));
    }
    if path.is_dir() {
        return Err(Error::invalid_input(format!(
            "config file {} (named by {named_by}) is a directory; name a TOML file",
            path.display()
        )));
    }
    let mut config = StowageConfig::from_file(path)?;
    let source = path.display().to_string();
    for (field, entries, want_dir) in [
        ("plugins.paths", &mut config.plugins.paths, false),
        ("plugins.dirs", &mut config.plugins.dirs, true),
    ] {
        for entry in entries.iter_mut() {
            let problem = match (entry.exists(), entry.is_dir()) {
                (false, _) => Some("does not exist"),
                (true, true) if !want_dir => Some("is a directory; name a library file"),
                (true, false) if want_dir => Some("is not a directory"),
                _ => None,
            };
            if let Some(problem) = problem {
                return Err(Error::InvalidConfig {
                    source_name: Some(source.clone()),
                    field: field.to_string(),
                    message: format!("{} {problem}", entry.display()),
                });
            }
        }
    }
    Ok(config)
}

/// Where the config came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// `--config FILE`.
    Flag(PathBuf),
    /// `$STOWAGE_CONFIG`.
    Env(PathBuf),
    /// `./stowage.toml`.
    Local(PathBuf),
    /// `StowageConfig::embedded_default()`.
    Embedded,
}

impl ConfigSource {
    /// The config file, unless the embedded default applies.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ConfigSource::Flag(p) | ConfigSource::Env(p) | ConfigSource::Local(p) => Some(p),
            ConfigSource::Embedded => None,
        }
    }
}

/// Shared state of one invocation.
pub struct Context {
    /// The printer for this invocation's output mode.
    pub out: Output,
    config_flag: Option<PathBuf>,
    namespace: Option<Namespace>,
    quiet: bool,
    json: bool,
    /// Every store opened by this invocation, closed by [`Context::close`] at the end.
    opened: Mutex<Vec<Stowage>>,
}

impl Context {
    /// Checks the global options (the namespace is validated here, before any storage).
    pub fn new(global: GlobalArgs) -> Result<Self> {
        let namespace = global.namespace.map(Namespace::new).transpose()?;
        Ok(Context {
            out: Output::new(global.json, global.quiet),
            config_flag: global.config,
            namespace,
            quiet: global.quiet,
            json: global.json,
            opened: Mutex::new(Vec::new()),
        })
    }

    /// Which config file applies: `--config`, `$STOWAGE_CONFIG`, `./stowage.toml`, or none.
    pub fn config_source(&self) -> ConfigSource {
        if let Some(path) = &self.config_flag {
            return ConfigSource::Flag(path.clone());
        }
        // Set but empty is an error when the config is read, not a silent fall-back.
        if let Some(path) = std::env::var_os(CONFIG_ENV) {
            return ConfigSource::Env(PathBuf::from(path));
        }
        // Anything of that name counts, so a dangling link or a directory is reported rather
        // than silently passed over for the embedded default (a store the user did not mean).
        let local = Path::new(LOCAL_CONFIG);
        if local.symlink_metadata().is_ok() {
            return ConfigSource::Local(local.to_path_buf());
        }
        ConfigSource::Embedded
    }

    /// Whether `--config FILE` was given.
    pub fn has_config_flag(&self) -> bool {
        self.config_flag.is_some()
    }

    /// Reads and parses the config that applies (no storage is touched).
    pub fn load_config(&self) -> Result<StowageConfig> {
        let (path, named_by) = match self.config_source() {
            ConfigSource::Embedded => return Ok(StowageConfig::embedded_default()),
            ConfigSource::Flag(p) => (p, "--config"),
            ConfigSource::Env(p) => (p, "$STOWAGE_CONFIG"),
            ConfigSource::Local(p) => (p, "the working directory"),
        };
        read_config(&path, named_by)
    }

    /// Builds the store from the config (validating the provider's config first); the backend
    /// itself is initialized at its first operation.
    pub async fn store(&self) -> Result<Stowage> {
        let config = self.load_config()?;
        self.open(config).await
    }

    /// Builds a second store from another config file (`copy --to-config`), loading that
    /// file's `[plugins]` too. `--namespace` applies to it as to the first.
    pub async fn store_from_file(&self, path: &Path, named_by: &str) -> Result<Stowage> {
        let config = read_config(path, named_by)?;
        self.open(config).await
    }

    /// Builds a store from a parsed config and remembers it so [`Context::close`] closes it.
    pub async fn open(&self, config: StowageConfig) -> Result<Stowage> {
        let mut builder = Stowage::builder()
            .registry(stowage_core::Registry::global())
            .config(config);
        if let Some(ns) = &self.namespace {
            builder = builder.namespace(ns.as_str());
        }
        let store = builder.build().await?;
        self.opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(store.clone());
        Ok(store)
    }

    /// Closes every store this invocation opened (so e.g. a SQLite pool checkpoints and leaves
    /// no `-wal`/`-shm` files); the first failure is returned after all were tried.
    pub async fn close(&self) -> Result<()> {
        let stores = std::mem::take(&mut *self.opened.lock().unwrap_or_else(|e| e.into_inner()));
        let mut first = None;
        for store in stores {
            if let Err(e) = store.close().await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The store scoped to the chosen namespace (`--namespace`, else the config's).
    pub async fn handle(&self) -> Result<NamespaceHandle> {
        Ok(self.store().await?.default_namespace())
    }

    /// A progress bar for long work, drawn only on a terminal and never with `-q` or `--json`.
    pub fn progress(&self, label: &'static str) -> BarProgress {
        BarProgress::new(label, self.progress_visible())
    }

    /// Whether progress bars are drawn: stderr is a terminal and neither `-q` nor `--json`.
    pub fn progress_visible(&self) -> bool {
        !self.quiet && !self.json && std::io::IsTerminal::is_terminal(&std::io::stderr())
    }
}
