//! Host side of the plugin ABI: [`PluginLibrary`] loads and checks a shared library; a factory
//! adapter per provider implements [`StorageProviderFactory`] and a backend adapter implements
//! [`StorageBackend`] over the plugin's vtables, so the rest of stowage never sees FFI.
//!
//! Async calls into the plugin run where blocking is allowed ([`crate::run_blocking`]: in place
//! on a multi-thread runtime, on tokio's blocking threads on a current-thread one); the cheap
//! synchronous factory calls (`validate`, `config_schema`, `capabilities`) are made directly.
//! Every adapter, body stream and writer holds an `Arc` of its library; the library itself is
//! never unloaded (see the module docs of [`crate::plugin`]).

#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::c_void;
use std::mem::{offset_of, size_of, ManuallyDrop};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use stowage_plugin_abi::{
    has_field, size_v1_0, status, StowageBackendVTable, StowageBytes, StowageEntryFn,
    StowageGetFirstFn, StowageGetOptions, StowageOwned, StowagePluginDescriptor, StowageProgress,
    StowageProviderVTable, StowageRecordInfo, StowageStatus, ABI_MAJOR, ABI_MINOR,
    BACKEND_VTABLE_SIZE_V1_0, ENTRY_SYMBOL, TARGET,
};

use super::{
    decode_error, expected_len, get_options_to_wire, info_from_wire, CallContext, WireDelete,
    WireGet, WireList, WirePage, WirePurged, WirePut, WireVersion,
};
use crate::backend::StorageBackend;
use crate::body::Body;
use crate::error::{Error, Result};
use crate::factory::{ProviderOrigin, StorageProviderFactory};
use crate::key::{Key, Namespace};
use crate::model::{
    Capabilities, DeleteOptions, GcReport, GetOptions, ListOptions, Metadata, Page, Progress,
    PutMode, RecordInfo, VerifyReport, Version,
};
use crate::query::Query;
use crate::registry::Registry;

/// The most providers one plugin may declare; a larger `provider_count` is a broken descriptor
/// (and must never size an allocation).
const MAX_PROVIDERS: usize = 64;

/// Reads an optional backend function, absent when the plugin's vtable predates it.
macro_rules! optional {
    ($instance:expr, $field:ident) => {{
        let vt = $instance.vtable();
        if has_field(
            $instance.backend_size,
            offset_of!(StowageBackendVTable, $field),
            size_of::<Option<fn()>>(),
        ) {
            vt.$field
        } else {
            None
        }
    }};
}

/// A loaded and checked plugin library.
///
/// ```no_run
/// use stowage_core::{plugin::PluginLibrary, Registry};
/// let library = PluginLibrary::load("plugins/libstowage_plugin_kv.so")?;
/// println!("{}", library.describe());
/// library.register(&Registry::global())?;
/// # Ok::<(), stowage_core::Error>(())
/// ```
pub struct PluginLibrary {
    path: PathBuf,
    plugin_name: String,
    plugin_version: String,
    abi: (u32, u32),
    target: String,
    providers: Vec<ProviderEntry>,
    // Never unloaded: a Rust plugin's runtime threads and thread-locals outlive any handle.
    _library: ManuallyDrop<libloading::Library>,
}

struct ProviderEntry {
    name: String,
    description: String,
    vtable: *const StowageProviderVTable,
    backend: *const StowageBackendVTable,
    backend_size: u32,
    /// The factory's `capabilities`, asked at load.
    capabilities: Capabilities,
    /// The factory's `config_schema`, asked at load.
    config_schema: serde_json::Value,
}

/// Calls a factory function that writes JSON, and parses it; the error as text.
fn factory_json_of<T: DeserializeOwned>(
    vtable: &StowageProviderVTable,
    provider: &str,
    f: stowage_plugin_abi::StowageFactoryJsonFn,
) -> std::result::Result<T, String> {
    let mut out = StowageOwned::EMPTY;
    // SAFETY: a required function of a checked vtable, with its own factory pointer and a
    // valid out-parameter.
    let status = unsafe { f(vtable.factory, &mut out) };
    let out = Owned(out);
    let message = Owned(status.message);
    if status.code != status::OK {
        let cx = CallContext {
            provider,
            namespace: None,
            key: None,
        };
        return Err(decode_error(status.code, message.as_slice(), &cx).to_string());
    }
    serde_json::from_slice(out.as_slice()).map_err(|e| e.to_string())
}

// SAFETY: the raw pointers point into the plugin's descriptor, which the ABI makes immutable
// and valid (callable from any thread) for as long as the library is loaded: forever here.
unsafe impl Send for PluginLibrary {}
// SAFETY: as above; nothing in `PluginLibrary` is mutated after `load`.
unsafe impl Sync for PluginLibrary {}

/// What `stowage plugins check FILE` reports about a library.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PluginDescription {
    /// The library file.
    pub path: PathBuf,
    /// The plugin's name.
    pub plugin: String,
    /// The plugin's version.
    pub version: String,
    /// The ABI version it was built for, `major.minor`.
    pub abi: String,
    /// The target triple it was built for.
    pub target: String,
    /// The providers it offers.
    pub providers: Vec<PluginProviderInfo>,
}

/// One provider of a plugin, as [`PluginDescription`] lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PluginProviderInfo {
    /// The name configs select it by.
    pub name: String,
    /// One line saying what it is.
    pub description: String,
    /// What its backends support.
    pub capabilities: Capabilities,
    /// JSON Schema of its config.
    pub config_schema: serde_json::Value,
}

impl std::fmt::Display for PluginDescription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} {} (ABI {}, {}) from {}",
            self.plugin,
            self.version,
            self.abi,
            self.target,
            self.path.display()
        )?;
        for p in &self.providers {
            writeln!(f, "  provider `{}`: {}", p.name, p.description)?;
        }
        Ok(())
    }
}

/// Reads borrowed descriptor text.
///
/// # Safety
/// `b` must point to `b.len` readable bytes that live as long as the library, or be empty.
unsafe fn descriptor_text(b: StowageBytes) -> Option<String> {
    if b.len == 0 {
        return Some(String::new());
    }
    if b.ptr.is_null() {
        return None;
    }
    // SAFETY: guaranteed by the caller (descriptor strings live as long as the library).
    let bytes = unsafe { std::slice::from_raw_parts(b.ptr, b.len) };
    String::from_utf8(bytes.to_vec()).ok()
}

impl PluginLibrary {
    /// Loads `path` and checks its descriptor; refuses, with an [`Error::Plugin`] naming the
    /// file (and both ABI versions where they differ), a file that is not a shared library, a
    /// missing `stowage_plugin_entry_v1`, a null descriptor, another ABI major, a newer ABI
    /// minor, a too-small struct, another target, or a missing required function.
    pub fn load(path: impl AsRef<Path>) -> Result<Arc<PluginLibrary>> {
        let path = path.as_ref().to_path_buf();
        let refuse = |message: String| Error::Plugin {
            path: path.clone(),
            message,
        };
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(m) => {
                let what = if m.is_dir() {
                    "a directory"
                } else {
                    "not a regular file (a device, pipe or socket)"
                };
                return Err(refuse(format!(
                    "is {what}; a plugin is a shared library file (.so, .dylib, .dll): name the file, or its folder under [plugins] dirs"
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(refuse(
                    "no such file (or a symbolic link to nothing); check [plugins] paths/dirs or the path given".into(),
                ));
            }
            Err(e) => return Err(refuse(format!("cannot be read: {e}"))),
        }
        // A bare file name would make the system loader search its library path instead of
        // the working directory, so always hand it an absolute path.
        let load_path = std::path::absolute(&path)
            .map_err(|e| refuse(format!("cannot make the path absolute: {e}")))?;
        // SAFETY: loading runs the library's initialisers; loading a file as a plugin is the
        // operator's explicit choice, and everything after this is checked before use.
        let library = unsafe { libloading::Library::new(&load_path) }.map_err(|e| {
            refuse(format!(
                "is not a loadable shared library ({e}); a plugin is a cdylib (.so, .dylib, .dll) built for {TARGET}"
            ))
        })?;
        let symbol = format!("{ENTRY_SYMBOL}\0");
        // SAFETY: the symbol's type is fixed by the ABI (`StowageEntryFn`); a library exporting
        // the name with another type is not a stowage plugin and breaks the contract it claims.
        let entry: StowageEntryFn = unsafe { library.get::<StowageEntryFn>(symbol.as_bytes()) }
            .map(|s| *s)
            .map_err(|_| {
                refuse(format!(
                    "does not export `{ENTRY_SYMBOL}`, so it is not a stowage plugin (ABI {ABI_MAJOR}.x); Rust plugins call `stowage_core::export_plugin!`, C plugins define it (see stowage_plugin.h)"
                ))
            })?;
        // SAFETY: calling the entry point the ABI defines; it takes no arguments.
        let descriptor = unsafe { entry() };
        if descriptor.is_null() {
            return Err(refuse(format!(
                "`{ENTRY_SYMBOL}` returned a null descriptor (the plugin failed to initialise); host ABI is {ABI_MAJOR}.{ABI_MINOR}"
            )));
        }
        let header_size = offset_of!(StowagePluginDescriptor, target);
        // SAFETY: every ABI version begins the descriptor with `struct_size: u32`.
        let struct_size = unsafe { std::ptr::addr_of!((*descriptor).struct_size).read() };
        if (struct_size as usize) < header_size {
            return Err(refuse(format!(
                "descriptor struct_size {struct_size} is too small to hold even the ABI version (host ABI {ABI_MAJOR}.{ABI_MINOR})"
            )));
        }
        // SAFETY: `struct_size` covers `abi_major` and `abi_minor` (checked just above).
        let (major, minor) = unsafe {
            (
                std::ptr::addr_of!((*descriptor).abi_major).read(),
                std::ptr::addr_of!((*descriptor).abi_minor).read(),
            )
        };
        if major != ABI_MAJOR {
            return Err(refuse(format!(
                "was built for plugin ABI {major}.{minor}, but this host speaks ABI {ABI_MAJOR}.{ABI_MINOR}; rebuild the plugin against stowage-plugin-abi {ABI_MAJOR}.x"
            )));
        }
        if minor > ABI_MINOR {
            return Err(refuse(format!(
                "was built for plugin ABI {major}.{minor}, newer than this host's ABI {ABI_MAJOR}.{ABI_MINOR}; upgrade stowage or rebuild the plugin against ABI {ABI_MAJOR}.{ABI_MINOR}"
            )));
        }
        let needed = size_v1_0::<StowagePluginDescriptor>();
        if struct_size < needed {
            return Err(refuse(format!(
                "descriptor struct_size is {struct_size} bytes, but ABI {major}.{minor} needs at least {needed} (host ABI {ABI_MAJOR}.{ABI_MINOR}); the plugin was built against a broken header"
            )));
        }
        // SAFETY: non-null, and large enough for every field read below (checked above); the
        // ABI makes it live as long as the library, which is never unloaded.
        let d = unsafe { &*descriptor };
        // Names and versions are printed on one line (`stowage providers`, errors) and picked
        // from TOML: no control characters in any, and no white space in a provider name.
        let text = |b: StowageBytes, what: &str| {
            // SAFETY: descriptor strings live as long as the library.
            let text = unsafe { descriptor_text(b) }
                .ok_or_else(|| refuse(format!("descriptor field `{what}` is not valid UTF-8")))?;
            let bad = |c: char| c.is_control() || (what == "provider name" && c.is_whitespace());
            match text.chars().find(|&c| bad(c)) {
                Some(c) => Err(refuse(format!(
                    "descriptor field `{what}` holds {}: {:?}; names and versions are printed on one line and a provider is picked by name in TOML",
                    if c.is_control() { "a control character" } else { "white space" },
                    text
                ))),
                None => Ok(text),
            }
        };
        let target = text(d.target, "target")?;
        if target != TARGET {
            return Err(refuse(format!(
                "was built for target `{target}`, but this host is `{TARGET}` (plugin ABI {major}.{minor}, host {ABI_MAJOR}.{ABI_MINOR}); rebuild it for `{TARGET}`"
            )));
        }
        let plugin_name = text(d.plugin_name, "plugin_name")?;
        let plugin_version = text(d.plugin_version, "plugin_version")?;
        if plugin_name.is_empty() {
            return Err(refuse("descriptor has an empty plugin_name".into()));
        }
        if d.provider_count == 0 || d.providers.is_null() {
            return Err(refuse(format!(
                "plugin `{plugin_name}` declares no providers"
            )));
        }
        if d.provider_count > MAX_PROVIDERS {
            return Err(refuse(format!(
                "plugin `{plugin_name}` declares {} providers, more than the {MAX_PROVIDERS} a plugin may offer; its descriptor's provider_count is broken",
                d.provider_count
            )));
        }
        // SAFETY: `providers` points to `provider_count` vtables (non-null, checked above); the
        // first one's `struct_size` gives the array's stride as the plugin knows it.
        let stride = unsafe { std::ptr::addr_of!((*d.providers).struct_size).read() } as usize;
        let mut providers: Vec<ProviderEntry> = Vec::new();
        for index in 0..d.provider_count {
            if stride < size_v1_0::<StowageProviderVTable>() as usize {
                return Err(refuse(format!(
                    "provider vtable struct_size is {stride} bytes, but ABI {major}.{minor} needs at least {} (host ABI {ABI_MAJOR}.{ABI_MINOR})",
                    size_v1_0::<StowageProviderVTable>()
                )));
            }
            // SAFETY: `index < provider_count` and the array has `stride`-sized elements of at
            // least the 1.0 size (checked above).
            let vtable = unsafe {
                &*((d.providers as *const u8).add(index * stride) as *const StowageProviderVTable)
            };
            let name = text(vtable.name, "provider name")?;
            if name.is_empty() {
                return Err(refuse(format!(
                    "provider #{index} of plugin `{plugin_name}` has an empty name"
                )));
            }
            if providers.iter().any(|p| p.name == name) {
                return Err(refuse(format!(
                    "plugin `{plugin_name}` declares provider `{name}` twice"
                )));
            }
            let missing = [
                ("config_schema", vtable.config_schema.is_none()),
                ("capabilities", vtable.capabilities.is_none()),
                ("validate", vtable.validate.is_none()),
                ("create", vtable.create.is_none()),
                ("backend", vtable.backend.is_null()),
            ];
            if let Some((field, _)) = missing.iter().find(|(_, absent)| *absent) {
                return Err(refuse(format!(
                    "provider `{name}` lacks the required `{field}`"
                )));
            }
            // SAFETY: non-null (checked above); every vtable starts with `struct_size`.
            let backend_size = unsafe { std::ptr::addr_of!((*vtable.backend).struct_size).read() };
            let needed = BACKEND_VTABLE_SIZE_V1_0;
            if backend_size < needed {
                return Err(refuse(format!(
                    "backend vtable of provider `{name}` has struct_size {backend_size}, but ABI {major}.{minor} needs at least {needed} (host ABI {ABI_MAJOR}.{ABI_MINOR})"
                )));
            }
            // SAFETY: non-null and at least the 1.0 size (checked above).
            let b = unsafe { &*vtable.backend };
            let required = [
                ("release", b.release.is_none()),
                ("capabilities", b.capabilities.is_none()),
                ("put_open", b.put_open.is_none()),
                ("put_write", b.put_write.is_none()),
                ("put_finish", b.put_finish.is_none()),
                ("put_abort", b.put_abort.is_none()),
                ("get_open", b.get_open.is_none()),
                ("get_read", b.get_read.is_none()),
                ("get_close", b.get_close.is_none()),
                ("head", b.head.is_none()),
                ("list", b.list.is_none()),
            ];
            if let Some((field, _)) = required.iter().find(|(_, absent)| *absent) {
                return Err(refuse(format!(
                    "backend of provider `{name}` lacks the required `{field}`"
                )));
            }
            // Asked once here, so a malformed answer refuses the library by name (rather than
            // being printed as "(none)" by `plugins check`, or defaulted later).
            let bad = |function: &str, e: String| {
                refuse(format!(
                    "provider `{name}`'s factory function `{function}` failed or answered malformed JSON: {e}"
                ))
            };
            let capabilities: Capabilities =
                factory_json_of(vtable, &name, vtable.capabilities.expect("checked above"))
                    .map_err(|e| bad("capabilities", e))?;
            let config_schema: serde_json::Value =
                factory_json_of(vtable, &name, vtable.config_schema.expect("checked above"))
                    .map_err(|e| bad("config_schema", e))?;
            providers.push(ProviderEntry {
                description: text(vtable.description, "provider description")?,
                name,
                vtable,
                backend: vtable.backend,
                backend_size,
                capabilities,
                config_schema,
            });
        }
        Ok(Arc::new(PluginLibrary {
            path,
            plugin_name,
            plugin_version,
            abi: (major, minor),
            target,
            providers,
            _library: ManuallyDrop::new(library),
        }))
    }

    /// The library file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The plugin's name.
    pub fn plugin_name(&self) -> &str {
        &self.plugin_name
    }

    /// The plugin's version.
    pub fn plugin_version(&self) -> &str {
        &self.plugin_version
    }

    /// The ABI version the plugin was built for.
    pub fn abi(&self) -> (u32, u32) {
        self.abi
    }

    /// The names of the providers it offers.
    pub fn provider_names(&self) -> Vec<String> {
        self.providers.iter().map(|p| p.name.clone()).collect()
    }

    /// A factory per provider, each holding this library alive.
    pub fn factories(self: &Arc<Self>) -> Vec<Arc<dyn StorageProviderFactory>> {
        (0..self.providers.len())
            .map(|index| {
                Arc::new(PluginFactory {
                    library: self.clone(),
                    index,
                    origin: ProviderOrigin::Plugin {
                        path: self.path.clone(),
                        plugin: self.plugin_name.clone(),
                        version: self.plugin_version.clone(),
                    },
                }) as Arc<dyn StorageProviderFactory>
            })
            .collect()
    }

    /// Registers every provider of this library in `registry`, or none: a name already taken
    /// (by another plugin, a built-in, or code) is an error naming both origins.
    pub fn register(self: &Arc<Self>, registry: &Registry) -> Result<()> {
        let mut added: Vec<String> = Vec::new();
        for factory in self.factories() {
            let name = factory.name().to_string();
            if self.is_origin_of(registry, &name) {
                // This very file was loaded into this registry before (e.g. a second build).
                continue;
            }
            if let Err(e) = registry.register(factory) {
                for done in &added {
                    registry.unregister(done);
                }
                let other = match e {
                    Error::ProviderExists { origin, .. } => {
                        origin.unwrap_or_else(|| "another provider".into())
                    }
                    other => return Err(other),
                };
                // Only a plugin can be left out of [plugins]; the host's own providers stay.
                let fix = if other.starts_with("plugin ") {
                    "remove one of the two from [plugins]"
                } else {
                    "a plugin cannot replace a provider of the host: rebuild it under another provider name, or leave it out of [plugins]"
                };
                return Err(Error::Plugin {
                    path: self.path.clone(),
                    message: format!(
                        "provider `{name}` of plugin `{}` is already registered by {other}; {fix}",
                        self.plugin_name
                    ),
                });
            }
            added.push(name);
        }
        Ok(())
    }

    /// Whether `registry` already holds provider `name` from this same library file.
    fn is_origin_of(&self, registry: &Registry, name: &str) -> bool {
        let Ok(existing) = registry.get(name) else {
            return false;
        };
        match existing.origin() {
            ProviderOrigin::Plugin { path, .. } => {
                let canonical =
                    |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
                canonical(&path) == canonical(&self.path)
            }
            _ => false,
        }
    }

    /// Everything `stowage plugins check FILE` prints: file, plugin, version, ABI, target, and
    /// each provider with its capabilities and config schema.
    pub fn describe(&self) -> PluginDescription {
        PluginDescription {
            path: self.path.clone(),
            plugin: self.plugin_name.clone(),
            version: self.plugin_version.clone(),
            abi: format!("{}.{}", self.abi.0, self.abi.1),
            target: self.target.clone(),
            providers: (0..self.providers.len())
                .map(|i| PluginProviderInfo {
                    name: self.providers[i].name.clone(),
                    description: self.providers[i].description.clone(),
                    capabilities: self.providers[i].capabilities,
                    config_schema: self.providers[i].config_schema.clone(),
                })
                .collect(),
        }
    }

    fn vtable(&self, index: usize) -> &StowageProviderVTable {
        // SAFETY: checked at load; the descriptor lives as long as the library (forever).
        unsafe { &*self.providers[index].vtable }
    }

    fn context(&self, index: usize) -> Cx<'_> {
        Cx {
            call: CallContext {
                provider: &self.providers[index].name,
                namespace: None,
                key: None,
            },
            file: &self.path,
        }
    }
}

impl std::fmt::Debug for PluginLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginLibrary")
            .field("path", &self.path)
            .field("plugin", &self.plugin_name)
            .field("version", &self.plugin_version)
            .field("providers", &self.provider_names())
            .finish()
    }
}

/// An owned buffer from the plugin, released with its own `free` when dropped.
struct Owned(StowageOwned);

impl Owned {
    fn as_slice(&self) -> &[u8] {
        if self.0.len == 0 || self.0.ptr.is_null() {
            &[]
        } else {
            // SAFETY: the plugin hands over `len` initialised bytes, valid until `free`.
            unsafe { std::slice::from_raw_parts(self.0.ptr, self.0.len) }
        }
    }
}

impl AsRef<[u8]> for Owned {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

// SAFETY: the bytes are immutable once handed over, the ABI lets the receiver call `free` from
// any thread, and the library holding `free` is never unloaded, so a payload chunk can travel
// (as `Bytes`, without a copy) to whichever thread consumes it.
unsafe impl Send for Owned {}
// SAFETY: as above; shared access only reads the bytes.
unsafe impl Sync for Owned {}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(free) = self.0.free {
            // SAFETY: the buffer's own free function, called once with its own ptr and len.
            unsafe { free(self.0.ptr, self.0.len) }
        }
    }
}

/// What the host knows about a call: the [`CallContext`] and the plugin file.
struct Cx<'a> {
    call: CallContext<'a>,
    file: &'a Path,
}

/// Turns a status into `Ok` or the error it carries (releasing its message).
fn check(status: StowageStatus, cx: &Cx<'_>) -> Result<()> {
    let message = Owned(status.message);
    if status.code == status::OK {
        Ok(())
    } else {
        Err(host_error(
            decode_error(status.code, message.as_slice(), &cx.call),
            cx,
        ))
    }
}

/// An error a plugin returned from a call, with what the host knows put in place of what the
/// plugin claimed: load-time kinds (`ProviderExists`, `Plugin`) cannot come from a call and
/// become a `Backend` error of the provider, and the provider named is always the host's.
fn host_error(error: Error, cx: &Cx<'_>) -> Error {
    let provider = cx.call.provider.to_string();
    match error {
        Error::ProviderExists { .. } | Error::Plugin { .. } => Error::Backend {
            message: format!(
                "plugin {} answered a call with an error only loading can raise ({:?})",
                cx.file.display(),
                error.to_string()
            ),
            provider,
            source: None,
        },
        Error::Corrupt { message, .. } => Error::Corrupt {
            provider,
            message: format!("{message} (plugin {})", cx.file.display()),
        },
        Error::Backend {
            message, source, ..
        } => Error::Backend {
            provider,
            message,
            source,
        },
        Error::Panicked { message, .. } => Error::Panicked { provider, message },
        Error::Unsupported { operation, .. } => Error::Unsupported {
            operation,
            provider,
        },
        // The store's path is the plugin's to know; but a path the host would print with
        // control characters in it, or none, is replaced by the plugin file.
        Error::Locked { path, message } => {
            let shown = path.to_string_lossy();
            let path = if shown.is_empty() || shown.chars().any(char::is_control) {
                cx.file.to_path_buf()
            } else {
                path
            };
            Error::Locked {
                path,
                message: format!(
                    "{message} (reported by provider `{provider}` of plugin {})",
                    cx.file.display()
                ),
            }
        }
        other => other,
    }
}

/// A `Backend` error of `provider` for output of its `what` that breaks the ABI's contract.
fn malformed(provider: &str, file: &Path, what: &str, problem: impl std::fmt::Display) -> Error {
    Error::Backend {
        provider: provider.to_string(),
        message: format!(
            "plugin {}: its {what} returned malformed output: {problem}",
            file.display()
        ),
        source: None,
    }
}

/// The last time a record may carry, 9999-12-31T23:59:59.999999Z, in microseconds.
const MAX_MICROS: i64 = 253_402_300_799_999_999;

/// What is wrong with a record a plugin answered for `ns` (and `key`), if anything.
fn record_problem(ns: &str, key: Option<&str>, info: &RecordInfo) -> Option<String> {
    if info.namespace.as_str() != ns {
        return Some(format!(
            "a record of namespace {:?} for a call on namespace {ns:?}",
            info.namespace.as_str()
        ));
    }
    if let Some(key) = key {
        if info.key.as_str() != key {
            return Some(format!(
                "a record of key {:?} for a call on key {key:?}",
                info.key.as_str()
            ));
        }
    }
    if info.version == 0 {
        return Some(format!(
            "record {ns}/{:?} has version 0 (versions start at 1)",
            info.key.as_str()
        ));
    }
    let times = [
        ("created_at", Some(info.created_at)),
        ("updated_at", Some(info.updated_at)),
        ("deleted_at", info.deleted_at),
    ];
    for (name, time) in times {
        if let Some(t) = time {
            if !(0..=MAX_MICROS).contains(&t.as_micros()) {
                return Some(format!(
                    "record {ns}/{:?} has {name} {} µs since 1970, outside 1970-01-01..9999-12-31",
                    info.key.as_str(),
                    t.as_micros()
                ));
            }
        }
    }
    if let Err(e) = info.metadata.validate() {
        return Some(format!("record {ns}/{:?}: {e}", info.key.as_str()));
    }
    None
}

fn parse<T: DeserializeOwned>(buf: Owned, i: &Instance, what: &str) -> Result<T> {
    serde_json::from_slice(buf.as_slice()).map_err(|e| Error::Backend {
        provider: i.provider.clone(),
        message: format!(
            "plugin {}: the plugin returned malformed {what}: {e}",
            i.file().display()
        ),
        source: None,
    })
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("wire types always serialise")
}

/// The adapter registered in a [`Registry`] for one provider of a plugin.
struct PluginFactory {
    library: Arc<PluginLibrary>,
    index: usize,
    origin: ProviderOrigin,
}

#[async_trait]
impl StorageProviderFactory for PluginFactory {
    fn name(&self) -> &str {
        &self.library.providers[self.index].name
    }

    fn description(&self) -> &str {
        &self.library.providers[self.index].description
    }

    fn config_schema(&self) -> serde_json::Value {
        self.library.providers[self.index].config_schema.clone()
    }

    fn capabilities(&self) -> Capabilities {
        self.library.providers[self.index].capabilities
    }

    fn validate(&self, config: &serde_json::Value) -> Result<()> {
        let vtable = self.library.vtable(self.index);
        let json = to_json(config);
        let validate = vtable.validate.expect("checked at load");
        // SAFETY: a required function of a checked vtable; `json` outlives the call.
        let status = unsafe { validate(vtable.factory, StowageBytes::from_slice(&json)) };
        check(status, &self.library.context(self.index))
    }

    async fn create(&self, config: serde_json::Value) -> Result<Arc<dyn StorageBackend>> {
        let library = self.library.clone();
        let index = self.index;
        let backend = blocking(move || {
            let vtable = library.vtable(index);
            let json = to_json(&config);
            let create = vtable.create.expect("checked at load");
            let mut instance: *mut c_void = std::ptr::null_mut();
            // SAFETY: a required function of a checked vtable; `json` outlives the call and
            // `instance` is a valid out-parameter.
            let status = unsafe {
                create(
                    vtable.factory,
                    StowageBytes::from_slice(&json),
                    &mut instance,
                )
            };
            check(status, &library.context(index))?;
            if instance.is_null() {
                return Err(Error::Backend {
                    provider: library.providers[index].name.clone(),
                    message: "the plugin's create succeeded but returned no instance".into(),
                    source: None,
                });
            }
            let shared = Arc::new(Instance {
                provider: library.providers[index].name.clone(),
                backend: library.providers[index].backend,
                backend_size: library.providers[index].backend_size,
                handle: instance,
                _library: library,
            });
            let capabilities = shared.instance_json(|v| v.capabilities, "capabilities")?;
            Ok(PluginBackend {
                get_first: optional!(shared, get_first),
                shared,
                capabilities,
            })
        })
        .await?;
        Ok(Arc::new(backend))
    }

    fn origin(&self) -> ProviderOrigin {
        self.origin.clone()
    }
}

/// Runs a plugin call, which blocks its thread, without stalling the async runtime: the same
/// rule as every provider's blocking work ([`crate::run_blocking`]), so on a multi-thread
/// runtime the call runs in place and its answer reaches the caller without a thread hop.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    crate::run_blocking("plugin host", f).await
}

/// One backend instance of a plugin; released when the last adapter, reader or writer using
/// it is dropped.
struct Instance {
    provider: String,
    // Keeps the vtable this instance calls through provably alive.
    _library: Arc<PluginLibrary>,
    backend: *const StowageBackendVTable,
    backend_size: u32,
    handle: *mut c_void,
}

// SAFETY: the ABI requires instance functions to be callable concurrently from any thread;
// the vtable pointer is immutable for the library's (unbounded) life.
unsafe impl Send for Instance {}
// SAFETY: as above.
unsafe impl Sync for Instance {}

impl Instance {
    fn vtable(&self) -> &StowageBackendVTable {
        // SAFETY: checked at load; it lives as long as the library, which `self` holds.
        unsafe { &*self.backend }
    }

    fn cx<'a>(&'a self, ns: Option<&'a str>, key: Option<&'a str>) -> Cx<'a> {
        Cx {
            call: CallContext {
                provider: &self.provider,
                namespace: ns,
                key,
            },
            file: self.file(),
        }
    }

    /// The library file this instance comes from.
    fn file(&self) -> &Path {
        &self._library.path
    }

    /// The error for output of the plugin's `what` that breaks the ABI's contract.
    fn malformed(&self, what: &str, problem: impl std::fmt::Display) -> Error {
        malformed(&self.provider, self.file(), what, problem)
    }

    /// Checks a record the plugin's `what` answered for `ns` (and `key`, when the call named
    /// one): its identity, version, times and metadata.
    fn check_record(
        &self,
        what: &str,
        ns: &str,
        key: Option<&str>,
        info: &RecordInfo,
    ) -> Result<()> {
        match record_problem(ns, key, info) {
            None => Ok(()),
            Some(problem) => Err(self.malformed(what, problem)),
        }
    }

    /// A key operation answering one record of `ns`/`key`, checked.
    fn record_op(
        &self,
        f: Option<stowage_plugin_abi::StowageKeyOpFn>,
        what: &str,
        ns: &str,
        key: &str,
        options: &[u8],
    ) -> Result<RecordInfo> {
        let info: RecordInfo = self.key_op(f, what, ns, key, options)?;
        self.check_record(what, ns, Some(key), &info)?;
        Ok(info)
    }

    /// `versions` of `ns`/`key`, checked: every record of that key, in ascending version order.
    fn versions_op(&self, ns: &str, key: &str) -> Result<Vec<RecordInfo>> {
        let all: Vec<RecordInfo> =
            self.key_op(optional!(self, versions), "versions", ns, key, b"{}")?;
        for (n, info) in all.iter().enumerate() {
            self.check_record("versions", ns, Some(key), info)?;
            if n > 0 && all[n - 1].version >= info.version {
                return Err(self.malformed(
                    "versions",
                    format!(
                        "versions are not in ascending order: version {} follows version {}",
                        info.version,
                        all[n - 1].version
                    ),
                ));
            }
        }
        Ok(all)
    }

    fn instance_json<T: DeserializeOwned>(
        &self,
        pick: impl Fn(&StowageBackendVTable) -> Option<stowage_plugin_abi::StowageInstanceJsonFn>,
        what: &str,
    ) -> Result<T> {
        let f = pick(self.vtable()).ok_or_else(|| Error::unsupported(what, &self.provider))?;
        let mut out = StowageOwned::EMPTY;
        // SAFETY: a function of this instance's vtable, the live instance, a valid out-param.
        let status = unsafe { f(self.handle, &mut out) };
        check(status, &self.cx(None, None))?;
        parse(Owned(out), self, what)
    }

    fn key_op<T: DeserializeOwned>(
        &self,
        f: Option<stowage_plugin_abi::StowageKeyOpFn>,
        what: &str,
        ns: &str,
        key: &str,
        options: &[u8],
    ) -> Result<T> {
        let f = f.ok_or_else(|| Error::unsupported(what, &self.provider))?;
        let mut out = StowageOwned::EMPTY;
        // SAFETY: a function of this instance's vtable, the live instance, inputs that outlive
        // the call, and a valid out-parameter.
        let status = unsafe {
            f(
                self.handle,
                StowageBytes::from_slice(ns.as_bytes()),
                StowageBytes::from_slice(key.as_bytes()),
                StowageBytes::from_slice(options),
                &mut out,
            )
        };
        check(status, &self.cx(Some(ns), Some(key)))?;
        parse(Owned(out), self, what)
    }

    fn scan(
        &self,
        f: Option<stowage_plugin_abi::StowageScanFn>,
        what: &str,
        ns: &str,
        options: &[u8],
        rules: &ScanRules,
    ) -> Result<Page<RecordInfo>> {
        let f = f.ok_or_else(|| Error::unsupported(what, &self.provider))?;
        let mut out = StowageOwned::EMPTY;
        // SAFETY: a function of this instance's vtable, the live instance, inputs that outlive
        // the call, and a valid out-parameter.
        let status = unsafe {
            f(
                self.handle,
                StowageBytes::from_slice(ns.as_bytes()),
                StowageBytes::from_slice(options),
                &mut out,
            )
        };
        check(status, &self.cx(Some(ns), None))?;
        let page: WirePage = parse(Owned(out), self, what)?;
        self.check_page(what, ns, &page, rules)?;
        Ok(Page {
            items: page.items,
            next: page.next,
        })
    }
}

/// What a `list`/`search` page must respect, from the call's options.
struct ScanRules {
    prefix: Option<String>,
    start_after: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
    /// Items in strictly ascending key order (`list`).
    by_key: bool,
}

impl Instance {
    /// Checks a page: its records, their namespace, prefix, order and count, and a `next`
    /// cursor that moves on (one that does not would make a caller loop forever).
    fn check_page(&self, what: &str, ns: &str, page: &WirePage, rules: &ScanRules) -> Result<()> {
        // Beyond the rules every page is held to: no empty page pointing to another (a plugin
        // has no reason to page through nothing), and every record checked.
        if page.items.is_empty() && page.next.is_some() {
            return Err(self.malformed(what, "a page with no items but a next cursor"));
        }
        for info in &page.items {
            self.check_record(what, ns, None, info)?;
        }
        let rules = crate::model::PageRules {
            prefix: rules.prefix.as_deref(),
            start_after: rules.start_after.as_deref(),
            limit: rules.limit,
            cursor: rules.cursor.as_deref(),
            by_key: rules.by_key,
        };
        match crate::model::page_problem(ns, &page.items, page.next.as_deref(), &rules) {
            Some(problem) => Err(self.malformed(what, problem)),
            None => Ok(()),
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(release) = self.vtable().release {
            // SAFETY: the instance's own release, called once, after every reader and writer
            // (they hold this `Instance`) is gone.
            unsafe { release(self.handle) }
        }
    }
}

/// A put in progress; aborted in the plugin if dropped unfinished.
struct PutWriter {
    instance: Arc<Instance>,
    handle: *mut c_void,
    ns: String,
    key: String,
}

// SAFETY: a writer is used by one thread at a time (it moves between blocking threads), which
// is what the ABI allows.
unsafe impl Send for PutWriter {}

impl PutWriter {
    fn open(
        instance: Arc<Instance>,
        ns: String,
        key: String,
        metadata: &[u8],
        options: &[u8],
    ) -> Result<Self> {
        let open = instance.vtable().put_open.expect("checked at load");
        let mut handle: *mut c_void = std::ptr::null_mut();
        // SAFETY: a required function, the live instance, inputs that outlive the call, and a
        // valid out-parameter.
        let status = unsafe {
            open(
                instance.handle,
                StowageBytes::from_slice(ns.as_bytes()),
                StowageBytes::from_slice(key.as_bytes()),
                StowageBytes::from_slice(metadata),
                StowageBytes::from_slice(options),
                &mut handle,
            )
        };
        check(status, &instance.cx(Some(&ns), Some(&key)))?;
        if handle.is_null() {
            return Err(Error::Backend {
                provider: instance.provider.clone(),
                message: "the plugin's put_open succeeded but returned no writer".into(),
                source: None,
            });
        }
        Ok(PutWriter {
            instance,
            handle,
            ns,
            key,
        })
    }

    fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let write = self.instance.vtable().put_write.expect("checked at load");
        // SAFETY: a required function on this live writer; `chunk` outlives the call.
        let status = unsafe { write(self.handle, StowageBytes::from_slice(chunk)) };
        check(status, &self.instance.cx(Some(&self.ns), Some(&self.key)))
    }

    fn finish(mut self) -> Result<RecordInfo> {
        let finish = self.instance.vtable().put_finish.expect("checked at load");
        let handle = std::mem::replace(&mut self.handle, std::ptr::null_mut());
        let mut out = StowageOwned::EMPTY;
        // SAFETY: a required function; it consumes the writer whatever the outcome (the handle
        // is nulled so `Drop` does not abort it too).
        let status = unsafe { finish(handle, &mut out) };
        check(status, &self.instance.cx(Some(&self.ns), Some(&self.key)))?;
        let info: RecordInfo = parse(Owned(out), &self.instance, "RecordInfo")?;
        self.instance
            .check_record("put_finish", &self.ns, Some(&self.key), &info)?;
        Ok(info)
    }
}

impl Drop for PutWriter {
    fn drop(&mut self) {
        if self.handle.is_null() {
            return;
        }
        let abort = self.instance.vtable().put_abort.expect("checked at load");
        // SAFETY: a required function consuming this unfinished writer, called once.
        unsafe { abort(self.handle) }
    }
}

/// A get's payload stream in the plugin; closed when dropped.
struct GetReader {
    instance: Arc<Instance>,
    handle: *mut c_void,
}

// SAFETY: a reader is used by one thread at a time, which is what the ABI allows.
unsafe impl Send for GetReader {}

impl GetReader {
    /// The next chunk; empty at the end.
    fn read(&mut self) -> Result<Owned> {
        let read = self.instance.vtable().get_read.expect("checked at load");
        let mut out = StowageOwned::EMPTY;
        // SAFETY: a required function on this live reader with a valid out-parameter.
        let status = unsafe { read(self.handle, &mut out) };
        check(status, &self.instance.cx(None, None))?;
        if out.ptr.is_null() && out.len > 0 {
            let out = Owned(out);
            return Err(self.instance.malformed(
                "get_read",
                format!(
                    "a chunk with a null pointer and length {} (the end is an empty chunk)",
                    out.0.len
                ),
            ));
        }
        Ok(Owned(out))
    }
}

impl Drop for GetReader {
    fn drop(&mut self) {
        let close = self.instance.vtable().get_close.expect("checked at load");
        // SAFETY: a required function, called once on this reader.
        unsafe { close(self.handle) }
    }
}

/// What a get's payload must be: `expected` bytes (the size, or the resolved range's length).
/// The host does not hash it: a 4 KiB get through a plugin takes a few microseconds, and
/// hashing there would add a third to it; checking the hash is the provider's part, as the
/// built-in providers do on read, and `verify` checks every stored payload.
struct PayloadCheck {
    provider: String,
    file: PathBuf,
    record: String,
    expected: u64,
}

impl PayloadCheck {
    /// The check for a get of `info` with `options`; a plugin answering a range the record's
    /// size cannot hold is malformed output.
    fn new(i: &Instance, what: &str, info: &RecordInfo, options: &GetOptions) -> Result<Self> {
        let expected = expected_len(info, options).ok_or_else(|| {
            i.malformed(
                what,
                format!(
                    "it served range {:?} of {}/{:?} version {}, which its size of {} bytes cannot hold",
                    options.range,
                    info.namespace,
                    info.key.as_str(),
                    info.version,
                    info.size
                ),
            )
        })?;
        Ok(PayloadCheck {
            provider: i.provider.clone(),
            file: i.file().to_path_buf(),
            record: format!(
                "{}/{:?} version {}",
                info.namespace,
                info.key.as_str(),
                info.version
            ),
            expected,
        })
    }

    fn corrupt(&self, problem: impl std::fmt::Display) -> Error {
        Error::corrupt(
            &self.provider,
            format!(
                "plugin {} served {} {problem}",
                self.file.display(),
                self.record
            ),
        )
    }

    fn wrong_length(&self, got: &str) -> Error {
        self.corrupt(format!(
            "with {got} payload bytes where {} were expected",
            self.expected
        ))
    }
}

/// A get's payload: the chunk the opening call returned, then (with a reader) the rest, read
/// from the plugin on a blocking thread chunk by chunk; held to `check`'s length (a stream
/// that goes past it is cut off with an error) and, for a whole read, its hash.
fn body_of(first: Bytes, reader: Option<GetReader>, check: PayloadCheck) -> Result<Body> {
    let Some(reader) = reader else {
        if first.len() as u64 != check.expected {
            return Err(check.wrong_length(&first.len().to_string()));
        }
        return Ok(Body::from_bytes(first));
    };
    let rest = futures::stream::try_unfold(Some(reader), |reader| async move {
        let Some(mut reader) = reader else {
            return Ok(None);
        };
        let (chunk, reader) = blocking(move || {
            let chunk = Bytes::from_owner(reader.read()?);
            Ok((chunk, reader))
        })
        .await?;
        if chunk.is_empty() {
            // Closing calls into the plugin: not on this async worker.
            let _ = tokio::task::spawn_blocking(move || drop(reader)).await;
            Ok(None)
        } else {
            Ok(Some((chunk, Some(reader))))
        }
    });
    let first = futures::stream::iter((!first.is_empty()).then_some(Ok(first)));
    let chunks = futures::StreamExt::boxed(futures::StreamExt::chain(first, rest));
    let expected = check.expected;
    let check = Arc::new(check);
    let counted = futures::stream::unfold(Some((chunks, 0u64, check)), |state| async move {
        let (mut chunks, seen, check) = state?;
        let stop = |chunks| async move {
            // Closing the reader calls into the plugin: not on this async worker.
            let _ = tokio::task::spawn_blocking(move || drop(chunks)).await;
        };
        match futures::StreamExt::next(&mut chunks).await {
            Some(Ok(chunk)) => {
                let seen = seen + chunk.len() as u64;
                if seen > check.expected {
                    stop(chunks).await;
                    return Some((Err(check.wrong_length(&format!("more than {seen}"))), None));
                }
                Some((Ok(chunk), Some((chunks, seen, check))))
            }
            Some(Err(e)) => {
                stop(chunks).await;
                Some((Err(e), None))
            }
            None if seen < check.expected => {
                Some((Err(check.wrong_length(&seen.to_string())), None))
            }
            None => None,
        }
    });
    Ok(Body::from_stream(counted, Some(expected)))
}

/// One `get_first` call: the record and its payload, whole or as the first chunk and a reader
/// for the rest. Checks what the plugin answered against the ABI's contract.
fn get_first_call(
    first_fn: StowageGetFirstFn,
    i: &Arc<Instance>,
    ns: &Namespace,
    key: &Key,
    wire: &StowageGetOptions,
    options: &GetOptions,
) -> Result<(RecordInfo, Body)> {
    let mut out_info = StowageRecordInfo {
        struct_size: size_of::<StowageRecordInfo>() as u32,
        flags: 0,
        version: 0,
        size: 0,
        created_at: 0,
        updated_at: 0,
        deleted_at: 0,
        hash: [0; 32],
        rest_json: StowageOwned::EMPTY,
    };
    let mut out_first = StowageOwned::EMPTY;
    let mut handle: *mut c_void = std::ptr::null_mut();
    // SAFETY: a function of this instance's vtable (present: checked by the caller), the live
    // instance, inputs that outlive the call, and valid out-parameters.
    let status = unsafe {
        first_fn(
            i.handle,
            StowageBytes::from_slice(ns.as_str().as_bytes()),
            StowageBytes::from_slice(key.as_str().as_bytes()),
            wire,
            &mut out_info,
            &mut out_first,
            &mut handle,
        )
    };
    // Owned at once, so whatever the plugin handed over is released on every path.
    let rest = Owned(std::mem::replace(
        &mut out_info.rest_json,
        StowageOwned::EMPTY,
    ));
    let null_first = out_first.ptr.is_null() && out_first.len > 0;
    let first = Bytes::from_owner(Owned(out_first));
    // A reader exists only on success (the ABI: a failed call writes no outputs).
    check(status, &i.cx(Some(ns.as_str()), Some(key.as_str())))?;
    if null_first {
        return Err(i.malformed(
            "get_first",
            "a first chunk with a null pointer and a non-zero length",
        ));
    }
    let reader = (!handle.is_null()).then(|| GetReader {
        instance: i.clone(),
        handle,
    });
    let info =
        info_from_wire(ns.clone(), key.clone(), &out_info, rest.as_slice()).map_err(|e| {
            Error::Backend {
                provider: i.provider.clone(),
                message: format!(
                    "plugin {}: its get_first returned a bad record: {e}",
                    i.file().display()
                ),
                source: None,
            }
        })?;
    i.check_record("get_first", ns.as_str(), Some(key.as_str()), &info)?;
    // The common case, a whole payload in the first chunk, costs one comparison: the check
    // with its error context is built only for a stream, or to say what is wrong.
    if reader.is_none() && expected_len(&info, options) == Some(first.len() as u64) {
        return Ok((info, Body::from_bytes(first)));
    }
    let check = PayloadCheck::new(i, "get_first", &info, options)?;
    if reader.is_none() && check.expected != first.len() as u64 {
        return Err(Error::Backend {
            provider: i.provider.clone(),
            message: format!(
                "plugin {}: its get_first returned {} payload bytes and no reader for {}/{:?} version {} of {} bytes ({} expected)",
                i.file().display(),
                first.len(),
                info.namespace,
                info.key.as_str(),
                info.version,
                info.size,
                check.expected
            ),
            source: None,
        });
    }
    Ok((info, body_of(first, reader, check)?))
}

/// The [`StorageBackend`] over one plugin instance.
struct PluginBackend {
    shared: Arc<Instance>,
    capabilities: Capabilities,
    /// ABI 1.1's `get_first`, when the plugin has it: looked up once, as every get needs it.
    get_first: Option<StowageGetFirstFn>,
}

impl PluginBackend {
    /// [`get_first_call`] on this thread, when it may block here (see
    /// [`crate::blocking::in_place`]). Not async, so the answer, a few hundred bytes, is
    /// written in place instead of being copied through the blocking layers and kept in the
    /// get's future.
    fn get_first_here(
        &self,
        first_fn: StowageGetFirstFn,
        ns: &Namespace,
        key: &Key,
        wire: &StowageGetOptions,
        options: &GetOptions,
    ) -> Option<Result<(RecordInfo, Body)>> {
        let mut answer = None;
        crate::blocking::in_place(|| {
            answer = Some(get_first_call(
                first_fn,
                &self.shared,
                ns,
                key,
                wire,
                options,
            ))
        })
        .ok()?;
        answer
    }

    /// A get through ABI 1.0's `get_open`: JSON options and info, then `get_read` for the
    /// payload. Reads up to the whole payload in the opening call when it fits in one chunk,
    /// so a small get costs one trip to a blocking thread.
    async fn get_via_open(
        &self,
        ns: &Namespace,
        key: &Key,
        options: GetOptions,
    ) -> Result<(RecordInfo, Body)> {
        let ns_s = ns.to_string();
        let key_s = key.to_string();
        let wire = to_json(&WireGet {
            version: options.version,
            range: options.range,
        });
        let (info, body) = self
            .run(move |i| {
                let open = i.vtable().get_open.expect("checked at load");
                let mut out_info = StowageOwned::EMPTY;
                let mut handle: *mut c_void = std::ptr::null_mut();
                // SAFETY: a required function, the live instance, inputs that outlive the
                // call, and valid out-parameters.
                let status = unsafe {
                    open(
                        i.handle,
                        StowageBytes::from_slice(ns_s.as_bytes()),
                        StowageBytes::from_slice(key_s.as_bytes()),
                        StowageBytes::from_slice(&wire),
                        &mut out_info,
                        &mut handle,
                    )
                };
                let out_info = Owned(out_info);
                check(status, &i.cx(Some(&ns_s), Some(&key_s)))?;
                if handle.is_null() {
                    return Err(Error::Backend {
                        provider: i.provider.clone(),
                        message: "the plugin's get_open succeeded but returned no reader".into(),
                        source: None,
                    });
                }
                let mut reader = GetReader {
                    instance: i.clone(),
                    handle,
                };
                let info: RecordInfo = parse(out_info, i, "RecordInfo")?;
                i.check_record("get_open", &ns_s, Some(&key_s), &info)?;
                let check = PayloadCheck::new(i, "get_open", &info, &options)?;
                let first = Bytes::from_owner(reader.read()?);
                let whole = first.is_empty() || check.expected == first.len() as u64;
                let body = body_of(first, if whole { None } else { Some(reader) }, check)?;
                Ok((info, body))
            })
            .await?;
        Ok((info, body))
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Arc<Instance>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let shared = self.shared.clone();
        blocking(move || f(&shared)).await
    }

    async fn report<T: DeserializeOwned + Send + 'static>(
        &self,
        pick: fn(&Instance) -> Option<stowage_plugin_abi::StowageReportFn>,
        what: &'static str,
        progress: &dyn Progress,
    ) -> Result<T> {
        let f =
            pick(&self.shared).ok_or_else(|| Error::unsupported(what, &self.shared.provider))?;
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<(bool, u64)>();
        let shared = self.shared.clone();
        let mut task = tokio::task::spawn_blocking(move || {
            let sink = Box::new(sender);
            let progress = StowageProgress {
                ctx: &*sink as *const _ as *mut c_void,
                set_total: Some(progress_set_total),
                inc: Some(progress_inc),
            };
            let mut out = StowageOwned::EMPTY;
            // SAFETY: a function of this instance's vtable, the live instance, a progress sink
            // that outlives the call, and a valid out-parameter.
            let status = unsafe { f(shared.handle, &progress, &mut out) };
            drop(sink);
            check(status, &shared.cx(None, None))?;
            parse::<T>(Owned(out), &shared, what)
        });
        // Forward progress to the caller's sink (not 'static, so it stays on this side).
        let result = loop {
            tokio::select! {
                Some((total, n)) = receiver.recv() => {
                    if total { progress.set_total(n) } else { progress.inc(n) }
                }
                joined = &mut task => break joined,
            }
        };
        while let Ok((total, n)) = receiver.try_recv() {
            if total {
                progress.set_total(n)
            } else {
                progress.inc(n)
            }
        }
        result.map_err(|e| Error::Backend {
            provider: self.shared.provider.clone(),
            message: format!("a plugin call's thread failed: {e}"),
            source: None,
        })?
    }
}

type ProgressSender = tokio::sync::mpsc::UnboundedSender<(bool, u64)>;

unsafe extern "C" fn progress_set_total(ctx: *mut c_void, n: u64) {
    // SAFETY: `ctx` is the boxed sender lent for the duration of the gc/verify call.
    let sender = unsafe { &*(ctx as *const ProgressSender) };
    let _ = sender.send((true, n));
}

unsafe extern "C" fn progress_inc(ctx: *mut c_void, n: u64) {
    // SAFETY: `ctx` is the boxed sender lent for the duration of the gc/verify call.
    let sender = unsafe { &*(ctx as *const ProgressSender) };
    let _ = sender.send((false, n));
}

#[async_trait]
impl StorageBackend for PluginBackend {
    fn provider(&self) -> &str {
        &self.shared.provider
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn initialize(&self) -> Result<()> {
        let Some(init) = optional!(self.shared, initialize) else {
            return Ok(());
        };
        self.run(move |i| {
            // SAFETY: the instance's own function on the live instance.
            let status = unsafe { init(i.handle) };
            check(status, &i.cx(None, None))
        })
        .await
    }

    async fn put(
        &self,
        ns: &Namespace,
        key: &Key,
        mut body: Body,
        metadata: Metadata,
        mode: PutMode,
    ) -> Result<RecordInfo> {
        let ns = ns.to_string();
        let key = key.to_string();
        let metadata = to_json(&metadata);
        let options = to_json(&WirePut {
            mode,
            size_hint: body.size_hint(),
        });
        if let Some(bytes) = body.as_bytes().cloned() {
            return self
                .run(move |i| {
                    let mut writer = PutWriter::open(i.clone(), ns, key, &metadata, &options)?;
                    if !bytes.is_empty() {
                        writer.write(&bytes)?;
                    }
                    writer.finish()
                })
                .await;
        }
        let mut writer = self
            .run(move |i| PutWriter::open(i.clone(), ns, key, &metadata, &options))
            .await?;
        while let Some(chunk) = body.next_chunk().await {
            match chunk {
                Ok(chunk) => {
                    writer = blocking(move || {
                        writer.write(&chunk)?;
                        Ok(writer)
                    })
                    .await?;
                }
                Err(e) => {
                    // Aborting calls into the plugin: not on this async worker.
                    let _ = tokio::task::spawn_blocking(move || drop(writer)).await;
                    return Err(e);
                }
            }
        }
        blocking(move || writer.finish()).await
    }

    async fn get(
        &self,
        ns: &Namespace,
        key: &Key,
        options: GetOptions,
    ) -> Result<(RecordInfo, Body)> {
        if let Some(first_fn) = self.get_first {
            // ABI 1.1: a small record in one call and no JSON. Where the thread may block,
            // the call borrows what it needs; only the way to the blocking pool clones.
            let wire = get_options_to_wire(&options);
            if let Some(done) = self.get_first_here(first_fn, ns, key, &wire, &options) {
                return done;
            }
            let (shared, ns, key) = (self.shared.clone(), ns.clone(), key.clone());
            return Box::pin(blocking(move || {
                get_first_call(first_fn, &shared, &ns, &key, &wire, &options)
            }))
            .await;
        }
        // Boxed, like the pool path above: the common path's future stays small (it is
        // allocated and moved on every call).
        Box::pin(self.get_via_open(ns, key, options)).await
    }

    async fn head(
        &self,
        ns: &Namespace,
        key: &Key,
        version: Option<Version>,
    ) -> Result<RecordInfo> {
        let (ns, key) = (ns.to_string(), key.to_string());
        let options = to_json(&WireVersion { version });
        self.run(move |i| i.record_op(optional!(i, head), "head", &ns, &key, &options))
            .await
    }

    async fn delete(
        &self,
        ns: &Namespace,
        key: &Key,
        options: DeleteOptions,
    ) -> Result<RecordInfo> {
        let (ns, key) = (ns.to_string(), key.to_string());
        let options = to_json(&WireDelete {
            if_version: options.if_version,
        });
        self.run(move |i| i.record_op(optional!(i, delete), "delete", &ns, &key, &options))
            .await
    }

    async fn list(&self, ns: &Namespace, options: ListOptions) -> Result<Page<RecordInfo>> {
        let ns = ns.to_string();
        let rules = ScanRules {
            prefix: options.prefix.clone(),
            start_after: options.start_after.clone(),
            limit: options.limit,
            cursor: options.cursor.clone(),
            by_key: true,
        };
        let options = to_json(&WireList {
            prefix: options.prefix,
            start_after: options.start_after,
            limit: options.limit,
            include_deleted: options.include_deleted,
            cursor: options.cursor,
        });
        self.run(move |i| i.scan(optional!(i, list), "list", &ns, &options, &rules))
            .await
    }

    async fn search(&self, ns: &Namespace, query: &Query) -> Result<Page<RecordInfo>> {
        let ns = ns.to_string();
        let rules = ScanRules {
            prefix: None,
            start_after: None,
            limit: query.limit,
            cursor: query.cursor.clone(),
            by_key: false,
        };
        let query = to_json(query);
        self.run(move |i| i.scan(optional!(i, search), "search", &ns, &query, &rules))
            .await
    }

    async fn versions(&self, ns: &Namespace, key: &Key) -> Result<Vec<RecordInfo>> {
        let (ns, key) = (ns.to_string(), key.to_string());
        self.run(move |i| i.versions_op(&ns, &key)).await
    }

    async fn restore(
        &self,
        ns: &Namespace,
        key: &Key,
        version: Option<Version>,
    ) -> Result<RecordInfo> {
        let (ns, key) = (ns.to_string(), key.to_string());
        let options = to_json(&WireVersion { version });
        self.run(move |i| i.record_op(optional!(i, restore), "restore", &ns, &key, &options))
            .await
    }

    async fn purge(&self, ns: &Namespace, key: &Key) -> Result<u64> {
        let (ns, key) = (ns.to_string(), key.to_string());
        self.run(move |i| {
            i.key_op::<WirePurged>(optional!(i, purge), "purge", &ns, &key, b"{}")
                .map(|p| p.removed)
        })
        .await
    }

    async fn gc(&self, progress: &dyn Progress) -> Result<GcReport> {
        self.report(|i| optional!(i, gc), "gc", progress).await
    }

    async fn verify(&self, progress: &dyn Progress) -> Result<VerifyReport> {
        self.report(|i| optional!(i, verify), "verify", progress)
            .await
    }

    async fn namespaces(&self) -> Result<Vec<Namespace>> {
        if optional!(self.shared, namespaces).is_none() {
            return Err(Error::unsupported("namespaces", &self.shared.provider));
        }
        self.run(|i| i.instance_json(|v| v.namespaces, "namespaces"))
            .await
    }
}
