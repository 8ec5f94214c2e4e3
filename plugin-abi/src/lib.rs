//! The C wire contract between the stowage host and provider plugins.
//!
//! Only `#[repr(C)]` types and constants live here; the host-side loader and the guest-side
//! export macro are in `stowage-core` (`stowage_core::plugin`). `include/stowage_plugin.h` is the
//! same contract for C authors; `tests/header_sync.rs` proves the two have the same fields,
//! sizes and offsets.
//!
//! The rules every type follows:
//! - inputs are borrowed [`StowageBytes`] valid only for the call;
//! - outputs are [`StowageOwned`] buffers released by calling their own `free`, so each side
//!   frees what it allocated and no shared allocator is assumed;
//! - every call returns a [`StowageStatus`]; a non-zero code carries a message (JSON naming the
//!   error's fields, or plain UTF-8 text);
//! - structs start with `struct_size` and only grow at the end; every function pointer is
//!   nullable so a reader can tell an absent optional function from a present one.

#![warn(missing_docs)]

use std::ffi::c_void;

/// Name of the one symbol a plugin exports (a [`StowageEntryFn`]).
pub const ENTRY_SYMBOL: &str = "stowage_plugin_entry_v1";
/// Major version of the plugin ABI: a plugin built for another major is refused.
pub const ABI_MAJOR: u32 = 1;
/// Minor version of the plugin ABI: vtables only grow; a plugin with a newer minor is refused.
///
/// - 1.0: the first contract.
/// - 1.1: [`StowageBackendVTable::get_first`], a get with binary options and record info that
///   hands back the first payload chunk in the same call.
pub const ABI_MINOR: u32 = 1;
/// The Rust target triple this crate was compiled for; host and plugin must agree on it.
pub const TARGET: &str = env!("STOWAGE_PLUGIN_TARGET");

/// Stable status codes: `0` is success, the others follow `stowage_core::ErrorKind`'s order.
pub mod status {
    /// Success.
    pub const OK: u32 = 0;
    /// A key broke the key rules.
    pub const INVALID_KEY: u32 = 1;
    /// A namespace broke the namespace rules.
    pub const INVALID_NAMESPACE: u32 = 2;
    /// Another argument was invalid.
    pub const INVALID_INPUT: u32 = 3;
    /// No such record or version.
    pub const NOT_FOUND: u32 = 4;
    /// A precondition failed; nothing was written.
    pub const CONFLICT: u32 = 5;
    /// A config value was wrong.
    pub const INVALID_CONFIG: u32 = 6;
    /// The operation is not supported.
    pub const UNSUPPORTED: u32 = 7;
    /// A provider of that name exists already.
    pub const PROVIDER_EXISTS: u32 = 8;
    /// No provider of that name.
    pub const UNKNOWN_PROVIDER: u32 = 9;
    /// Stored data failed a check.
    pub const CORRUPT: u32 = 10;
    /// Another process holds the store.
    pub const LOCKED: u32 = 11;
    /// A local I/O error.
    pub const IO: u32 = 12;
    /// The backend failed.
    pub const BACKEND: u32 = 13;
    /// A plugin-level failure.
    pub const PLUGIN: u32 = 14;
    /// The plugin panicked; the instance is poisoned.
    pub const PANICKED: u32 = 15;
}

/// Borrowed bytes (UTF-8 where the contract says text), valid only for the duration of a call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StowageBytes {
    /// First byte; may be null when `len` is 0.
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

impl StowageBytes {
    /// No bytes.
    pub const EMPTY: StowageBytes = StowageBytes {
        ptr: std::ptr::null(),
        len: 0,
    };

    /// Borrows a static string (for descriptor and vtable fields).
    pub const fn from_static(s: &'static str) -> Self {
        StowageBytes {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// Borrows a slice for the duration of a call.
    pub fn from_slice(bytes: &[u8]) -> Self {
        StowageBytes {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }
}

/// Frees a [`StowageOwned`] buffer; called with the buffer's own `ptr` and `len`.
pub type StowageFreeFn = unsafe extern "C" fn(ptr: *mut u8, len: usize);

/// Bytes owned by the side that allocated them; the receiver releases them with `free`, from
/// any thread.
#[repr(C)]
#[derive(Debug)]
pub struct StowageOwned {
    /// First byte; null when empty.
    pub ptr: *mut u8,
    /// Number of bytes.
    pub len: usize,
    /// Releases the buffer; null when there is nothing to free.
    pub free: Option<StowageFreeFn>,
}

impl StowageOwned {
    /// No bytes, nothing to free.
    pub const EMPTY: StowageOwned = StowageOwned {
        ptr: std::ptr::null_mut(),
        len: 0,
        free: None,
    };
}

/// The outcome of a call: `code` from [`status`]; on failure `message` holds a JSON object with
/// the error's fields (at least `"message"`) or plain UTF-8 text.
#[repr(C)]
#[derive(Debug)]
pub struct StowageStatus {
    /// One of the [`status`] codes.
    pub code: u32,
    /// Empty on success.
    pub message: StowageOwned,
}

/// Bits of [`StowageGetOptions::flags`] and [`StowageRecordInfo::flags`].
pub mod flags {
    /// [`StowageGetOptions::version`](super::StowageGetOptions::version) is set (else: the latest).
    pub const GET_VERSION: u32 = 1;
    /// [`StowageGetOptions::range_start`](super::StowageGetOptions::range_start) is set: a byte
    /// range is asked for.
    pub const GET_RANGE: u32 = 2;
    /// [`StowageGetOptions::range_end`](super::StowageGetOptions::range_end) is set (else the
    /// range runs to the end of the payload).
    pub const GET_RANGE_END: u32 = 4;
    /// The record is a tombstone; [`StowageRecordInfo::deleted_at`](super::StowageRecordInfo::deleted_at) is set.
    pub const INFO_DELETED: u32 = 1;
}

/// What a `get_first` asks for (ABI 1.1): the binary form of the get options.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StowageGetOptions {
    /// `size_of` this struct as the host knows it.
    pub struct_size: u32,
    /// [`flags`]`::GET_*` bits saying which fields below are set.
    pub flags: u32,
    /// The version to read, when `GET_VERSION` is set.
    pub version: u64,
    /// First byte of the range (inclusive), when `GET_RANGE` is set.
    pub range_start: u64,
    /// End of the range (exclusive), when `GET_RANGE_END` is set.
    pub range_end: u64,
}

/// A record's description as `get_first` returns it (ABI 1.1): the fixed fields in binary, the
/// rest as JSON only when there is any. The namespace and key are the ones asked for.
#[repr(C)]
#[derive(Debug)]
pub struct StowageRecordInfo {
    /// `size_of` this struct as the host knows it: the host sets it before the call and the
    /// plugin writes only the fields that fit.
    pub struct_size: u32,
    /// [`flags`]`::INFO_*` bits.
    pub flags: u32,
    /// The version's number.
    pub version: u64,
    /// Payload size in bytes.
    pub size: u64,
    /// When the key's first version was written, in microseconds since the Unix epoch.
    pub created_at: i64,
    /// When this version was written, in microseconds since the Unix epoch.
    pub updated_at: i64,
    /// When the record was deleted, with `INFO_DELETED`.
    pub deleted_at: i64,
    /// The payload's blake3 hash.
    pub hash: [u8; 32],
    /// A JSON object with the RecordInfo fields not above that are not empty (`metadata`,
    /// `conflicts`), in the RecordInfo JSON shape; an empty buffer when all are empty.
    pub rest_json: StowageOwned,
}

/// Reports progress of `gc`/`verify` back to the host; callable from any thread.
pub type StowageProgressFn = unsafe extern "C" fn(ctx: *mut c_void, n: u64);

/// The host's progress sink, borrowed for the duration of a `gc`/`verify` call.
#[repr(C)]
#[derive(Debug)]
pub struct StowageProgress {
    /// Passed back to both functions.
    pub ctx: *mut c_void,
    /// Sets the total amount of work.
    pub set_total: Option<StowageProgressFn>,
    /// Adds `n` units of work done.
    pub inc: Option<StowageProgressFn>,
}

/// Writes a JSON document from a factory (`config_schema`, `capabilities`).
pub type StowageFactoryJsonFn =
    unsafe extern "C" fn(factory: *const c_void, out_json: *mut StowageOwned) -> StowageStatus;
/// Checks a JSON config without I/O.
pub type StowageValidateFn =
    unsafe extern "C" fn(factory: *const c_void, config_json: StowageBytes) -> StowageStatus;
/// Creates a backend instance from a JSON config.
pub type StowageCreateFn = unsafe extern "C" fn(
    factory: *const c_void,
    config_json: StowageBytes,
    out_instance: *mut *mut c_void,
) -> StowageStatus;
/// Releases a handle (an instance, a put writer, a get reader); it is never used again.
pub type StowageReleaseFn = unsafe extern "C" fn(handle: *mut c_void);
/// An instance call without arguments (`initialize`).
pub type StowageInstanceFn = unsafe extern "C" fn(instance: *mut c_void) -> StowageStatus;
/// An instance call writing a JSON document (`capabilities`, `namespaces`).
pub type StowageInstanceJsonFn =
    unsafe extern "C" fn(instance: *mut c_void, out_json: *mut StowageOwned) -> StowageStatus;
/// Starts a put: metadata JSON, options JSON (`{"mode": …, "size_hint": …}`); yields a writer
/// handle.
pub type StowagePutOpenFn = unsafe extern "C" fn(
    instance: *mut c_void,
    ns: StowageBytes,
    key: StowageBytes,
    metadata_json: StowageBytes,
    options_json: StowageBytes,
    out_writer: *mut *mut c_void,
) -> StowageStatus;
/// Appends one payload chunk to a put.
pub type StowagePutWriteFn =
    unsafe extern "C" fn(writer: *mut c_void, chunk: StowageBytes) -> StowageStatus;
/// Completes a put, writing the new RecordInfo JSON; consumes the writer whatever the outcome.
pub type StowagePutFinishFn =
    unsafe extern "C" fn(writer: *mut c_void, out_info_json: *mut StowageOwned) -> StowageStatus;
/// Starts a get: options JSON; yields the RecordInfo JSON and a reader handle.
pub type StowageGetOpenFn = unsafe extern "C" fn(
    instance: *mut c_void,
    ns: StowageBytes,
    key: StowageBytes,
    options_json: StowageBytes,
    out_info_json: *mut StowageOwned,
    out_reader: *mut *mut c_void,
) -> StowageStatus;
/// Reads the next payload chunk; an empty chunk means the end.
pub type StowageGetReadFn =
    unsafe extern "C" fn(reader: *mut c_void, out_chunk: *mut StowageOwned) -> StowageStatus;
/// Starts a get (ABI 1.1): binary options in, binary record info and the first payload chunk
/// out. `out_reader` receives a reader for the rest of the payload, or null when `out_first`
/// already holds all of it (an empty `out_first` with a null reader is an empty payload). The
/// reader is read with `get_read` and closed with `get_close`. A call that fails writes none of
/// the outputs.
pub type StowageGetFirstFn = unsafe extern "C" fn(
    instance: *mut c_void,
    ns: StowageBytes,
    key: StowageBytes,
    options: *const StowageGetOptions,
    out_info: *mut StowageRecordInfo,
    out_first: *mut StowageOwned,
    out_reader: *mut *mut c_void,
) -> StowageStatus;
/// A call about one key with JSON options, writing a JSON result (head, delete, versions,
/// restore, purge).
pub type StowageKeyOpFn = unsafe extern "C" fn(
    instance: *mut c_void,
    ns: StowageBytes,
    key: StowageBytes,
    options_json: StowageBytes,
    out_json: *mut StowageOwned,
) -> StowageStatus;
/// A call over a namespace with JSON options, writing a JSON page (list, search).
pub type StowageScanFn = unsafe extern "C" fn(
    instance: *mut c_void,
    ns: StowageBytes,
    options_json: StowageBytes,
    out_json: *mut StowageOwned,
) -> StowageStatus;
/// A whole-store call reporting progress, writing a JSON report (gc, verify).
pub type StowageReportFn = unsafe extern "C" fn(
    instance: *mut c_void,
    progress: *const StowageProgress,
    out_json: *mut StowageOwned,
) -> StowageStatus;

/// The functions of one backend instance. Every function may be called concurrently from any
/// thread; a writer or reader handle is used by one thread at a time and may outlive its
/// instance. Required: `release`, `capabilities`, `put_*`, `get_open`, `get_read`, `get_close`,
/// `head`, `list`; the others may be null (the host then answers `Unsupported`, does nothing
/// for `initialize`, or opens gets with `get_open` instead of `get_first`).
#[repr(C)]
#[derive(Debug)]
pub struct StowageBackendVTable {
    /// `size_of` this struct as the plugin knows it.
    pub struct_size: u32,
    /// Releases the instance.
    pub release: Option<StowageReleaseFn>,
    /// Capabilities JSON.
    pub capabilities: Option<StowageInstanceJsonFn>,
    /// Prepares the instance (idempotent).
    pub initialize: Option<StowageInstanceFn>,
    /// Starts a put.
    pub put_open: Option<StowagePutOpenFn>,
    /// Appends a chunk.
    pub put_write: Option<StowagePutWriteFn>,
    /// Completes a put.
    pub put_finish: Option<StowagePutFinishFn>,
    /// Abandons a put: nothing is written; consumes the writer.
    pub put_abort: Option<StowageReleaseFn>,
    /// Starts a get.
    pub get_open: Option<StowageGetOpenFn>,
    /// Reads a chunk.
    pub get_read: Option<StowageGetReadFn>,
    /// Closes a reader.
    pub get_close: Option<StowageReleaseFn>,
    /// RecordInfo of a version.
    pub head: Option<StowageKeyOpFn>,
    /// One page of the listing.
    pub list: Option<StowageScanFn>,
    /// Writes a tombstone.
    pub delete: Option<StowageKeyOpFn>,
    /// One page of search results.
    pub search: Option<StowageScanFn>,
    /// Every version of a key.
    pub versions: Option<StowageKeyOpFn>,
    /// Undeletes a key.
    pub restore: Option<StowageKeyOpFn>,
    /// Removes a key for good.
    pub purge: Option<StowageKeyOpFn>,
    /// Reclaims unreferenced payloads.
    pub gc: Option<StowageReportFn>,
    /// Re-hashes stored payloads.
    pub verify: Option<StowageReportFn>,
    /// Namespaces holding records.
    pub namespaces: Option<StowageInstanceJsonFn>,
    /// ABI 1.1, optional: a get in one call for a payload that fits one chunk (the host falls
    /// back to `get_open` when it is null or the vtable predates it).
    pub get_first: Option<StowageGetFirstFn>,
}

/// One provider a plugin offers: its name, its factory functions and its backend functions.
#[repr(C)]
#[derive(Debug)]
pub struct StowageProviderVTable {
    /// `size_of` this struct as the plugin knows it.
    pub struct_size: u32,
    /// The name configs select it by.
    pub name: StowageBytes,
    /// One line saying what it is.
    pub description: StowageBytes,
    /// Opaque factory state passed to the factory functions.
    pub factory: *const c_void,
    /// JSON Schema of the config.
    pub config_schema: Option<StowageFactoryJsonFn>,
    /// Capabilities JSON.
    pub capabilities: Option<StowageFactoryJsonFn>,
    /// Checks a config.
    pub validate: Option<StowageValidateFn>,
    /// Creates an instance.
    pub create: Option<StowageCreateFn>,
    /// The functions of the instances `create` makes.
    pub backend: *const StowageBackendVTable,
}

/// What [`ENTRY_SYMBOL`] returns: who the plugin is and what it provides. Lives as long as the
/// library stays loaded.
#[repr(C)]
#[derive(Debug)]
pub struct StowagePluginDescriptor {
    /// `size_of` this struct as the plugin knows it.
    pub struct_size: u32,
    /// [`ABI_MAJOR`] the plugin was built for.
    pub abi_major: u32,
    /// [`ABI_MINOR`] the plugin was built for.
    pub abi_minor: u32,
    /// Rust target triple the plugin was built for (e.g. `x86_64-unknown-linux-gnu`).
    pub target: StowageBytes,
    /// The plugin's name.
    pub plugin_name: StowageBytes,
    /// The plugin's version.
    pub plugin_version: StowageBytes,
    /// First of `provider_count` provider vtables.
    pub providers: *const StowageProviderVTable,
    /// Number of providers (at least one).
    pub provider_count: usize,
}

/// The type of [`ENTRY_SYMBOL`].
pub type StowageEntryFn = unsafe extern "C" fn() -> *const StowagePluginDescriptor;

/// `struct_size` a struct must at least have for `abi_minor` 0 of major 1 (every field of 1.0),
/// for the structs that have not grown since 1.0 (the descriptor, the provider vtable).
pub const fn size_v1_0<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

/// `struct_size` a [`StowageBackendVTable`] must at least have: every field of ABI 1.0, which
/// ends where 1.1's `get_first` begins.
pub const BACKEND_VTABLE_SIZE_V1_0: u32 =
    std::mem::offset_of!(StowageBackendVTable, get_first) as u32;

/// Whether a struct of `struct_size` bytes (as its author knew it) contains the field that
/// starts at `offset` and is `size` bytes long: how a reader skips fields appended later.
pub const fn has_field(struct_size: u32, offset: usize, size: usize) -> bool {
    (struct_size as usize) >= offset + size
}
