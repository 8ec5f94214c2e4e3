//! Guest side of the plugin ABI: what [`crate::export_plugin!`] expands to.
//!
//! Each factory becomes a provider vtable whose `factory` pointer is a `FactoryState`; each
//! backend instance, put writer and get reader is a `Box` handed to the host as an opaque
//! pointer and taken back by its release function. Every entry point runs inside
//! `catch_unwind`: a panic becomes a `PANICKED` status and poisons the instance (or the writer's
//! or reader's instance), which then refuses further calls; a panic in a factory call poisons
//! nothing, as it leaves no instance behind. Async trait methods run with `block_on` on a multi-thread tokio
//! runtime this plugin owns (the host's tokio is a different copy and must not be touched).
//!
//! The plugin has its own copy of std, so the host's panic hook does not see its panics: at
//! its entry point the plugin installs a hook of its own that, for a panic inside one of these
//! caught regions, keeps the message and location for the `PANICKED` status and prints nothing
//! (the host reports the error, on one line); any other panic goes to the previous hook.

#![deny(unsafe_op_in_unsafe_fn)]

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once, OnceLock};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use stowage_plugin_abi::{
    status, StowageBackendVTable, StowageBytes, StowageGetOptions, StowageOwned,
    StowagePluginDescriptor, StowageProgress, StowageProviderVTable, StowageRecordInfo,
    StowageStatus, ABI_MAJOR, ABI_MINOR, TARGET,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{
    encode_error, expected_len, get_options_from_wire, info_to_wire, WireDelete, WireGet, WireList,
    WirePage, WirePurged, WirePut, WireVersion,
};
use crate::backend::StorageBackend;
use crate::body::Body;
use crate::error::{Error, Result};
use crate::factory::StorageProviderFactory;
use crate::key::{key_bytes_plainly_valid, namespace_bytes_valid, Key, Namespace};
use crate::model::{DeleteOptions, GetOptions, ListOptions, Metadata, Progress, RecordInfo};
use crate::query::Query;

/// Turns one or more [`crate::StorageProviderFactory`] values into a plugin: exports
/// `stowage_plugin_entry_v1` with a descriptor naming this crate (`CARGO_PKG_NAME`,
/// `CARGO_PKG_VERSION`) and one provider per factory. Build the crate as a `cdylib`.
///
/// ```text
/// struct MyFactory;
/// // impl stowage_core::StorageProviderFactory for MyFactory { ... }
/// stowage_core::export_plugin!(MyFactory);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($($factory:expr),+ $(,)?) => {
        /// The plugin entry point looked up by the stowage host.
        #[no_mangle]
        pub extern "C" fn stowage_plugin_entry_v1(
        ) -> *const $crate::plugin::abi::StowagePluginDescriptor {
            static EXPORTED: $crate::plugin::guest::ExportCell = $crate::plugin::guest::ExportCell::new();
            EXPORTED.descriptor(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"), || {
                ::std::vec![$(::std::sync::Arc::new($factory)
                    as ::std::sync::Arc<dyn $crate::StorageProviderFactory>),+]
            })
        }
    };
}

/// The runtime every async call of this plugin runs on, created at the first call.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("stowage-plugin")
            .enable_all()
            .build()
            .expect("a plugin could not start its tokio runtime (out of threads or memory?)")
    })
}

/// Runs a future to completion on the calling thread, inside this plugin's runtime. A future
/// that finishes at its first poll (a provider whose blocking work ran in place, see
/// `run_blocking`, or a body already in memory) never pays for the runtime's `block_on`
/// (parking set-up, a wake-up); any other is then driven by `block_on` as usual.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let _context = enter_runtime();
    run_entered(future)
}

/// Puts the calling thread inside this plugin's runtime context. A host thread gets it for
/// good at its first call: entering and leaving on every call (a handle clone, two
/// thread-local swaps) cost as much as a tenth of a small read's whole trip through the ABI.
/// It is this image's own tokio, so the host's runtime never sees it. A thread that already
/// has a context of this image (the runtime's own threads, a nested call) enters for the call
/// only and gets a guard, so contexts still unwind in order.
fn enter_runtime() -> Option<tokio::runtime::EnterGuard<'static>> {
    thread_local! {
        static ENTERED_FOR_GOOD: Cell<bool> = const { Cell::new(false) };
    }
    if ENTERED_FOR_GOOD.with(Cell::get) {
        return None;
    }
    if tokio::runtime::Handle::try_current().is_ok() {
        return Some(runtime().enter());
    }
    // Never dropped: the outermost context of this thread, so every later guard nests in it.
    std::mem::forget(runtime().enter());
    ENTERED_FOR_GOOD.with(|e| e.set(true));
    None
}

/// [`block_on`] for a caller already inside the plugin's runtime context.
fn run_entered<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => runtime().block_on(future),
    }
}

/// What one plugin image exports, built once at the first call of its entry symbol.
#[doc(hidden)]
pub struct ExportCell(OnceLock<Option<Exported>>);

struct Exported {
    descriptor: Box<StowagePluginDescriptor>,
    // The descriptor and vtables point into these; they live as long as the image.
    _providers: Box<[StowageProviderVTable]>,
    _factories: Box<[FactoryState]>,
    _strings: Vec<Box<str>>,
}

// SAFETY: `Exported` is never mutated after construction; its raw pointers point into the
// boxes it owns (and a static vtable), which are only read, from any thread.
unsafe impl Sync for Exported {}
// SAFETY: as above: immutable data, owned by the value.
unsafe impl Send for Exported {}

impl ExportCell {
    /// An empty cell for a `static`.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        ExportCell(OnceLock::new())
    }

    /// The descriptor, built on first use from `factories`; null if building it panicked.
    pub fn descriptor(
        &'static self,
        plugin_name: &'static str,
        plugin_version: &'static str,
        factories: fn() -> Vec<Arc<dyn StorageProviderFactory>>,
    ) -> *const StowagePluginDescriptor {
        install_panic_hook();
        let exported = self.0.get_or_init(|| {
            catch_guest_panic(|| export(plugin_name, plugin_version, factories())).ok()
        });
        match exported {
            Some(e) => &*e.descriptor,
            None => std::ptr::null(),
        }
    }
}

fn export(
    plugin_name: &'static str,
    plugin_version: &'static str,
    factories: Vec<Arc<dyn StorageProviderFactory>>,
) -> Exported {
    let mut strings: Vec<Box<str>> = Vec::new();
    let factories: Box<[FactoryState]> = factories
        .into_iter()
        .map(|factory| FactoryState {
            name: factory.name().to_string(),
            factory,
        })
        .collect();
    let providers: Box<[StowageProviderVTable]> = factories
        .iter()
        .map(|state| {
            let name: Box<str> = state.factory.name().into();
            let description: Box<str> = state.factory.description().into();
            let vtable = StowageProviderVTable {
                struct_size: std::mem::size_of::<StowageProviderVTable>() as u32,
                name: StowageBytes::from_slice(name.as_bytes()),
                description: StowageBytes::from_slice(description.as_bytes()),
                factory: state as *const FactoryState as *const c_void,
                config_schema: Some(factory_config_schema),
                capabilities: Some(factory_capabilities),
                validate: Some(factory_validate),
                create: Some(factory_create),
                backend: &BACKEND_VTABLE,
            };
            strings.push(name);
            strings.push(description);
            vtable
        })
        .collect();
    let descriptor = Box::new(StowagePluginDescriptor {
        struct_size: std::mem::size_of::<StowagePluginDescriptor>() as u32,
        abi_major: ABI_MAJOR,
        abi_minor: ABI_MINOR,
        target: StowageBytes::from_static(TARGET),
        plugin_name: StowageBytes::from_static(plugin_name),
        plugin_version: StowageBytes::from_static(plugin_version),
        providers: providers.as_ptr(),
        provider_count: providers.len(),
    });
    Exported {
        descriptor,
        _providers: providers,
        _factories: factories,
        _strings: strings,
    }
}

static BACKEND_VTABLE: StowageBackendVTable = StowageBackendVTable {
    struct_size: std::mem::size_of::<StowageBackendVTable>() as u32,
    release: Some(instance_release),
    capabilities: Some(instance_capabilities),
    initialize: Some(instance_initialize),
    put_open: Some(put_open),
    put_write: Some(put_write),
    put_finish: Some(put_finish),
    put_abort: Some(put_abort),
    get_open: Some(get_open),
    get_read: Some(get_read),
    get_close: Some(get_close),
    head: Some(instance_head),
    list: Some(instance_list),
    delete: Some(instance_delete),
    search: Some(instance_search),
    versions: Some(instance_versions),
    restore: Some(instance_restore),
    purge: Some(instance_purge),
    gc: Some(instance_gc),
    verify: Some(instance_verify),
    namespaces: Some(instance_namespaces),
    get_first: Some(get_first),
};

struct FactoryState {
    name: String,
    factory: Arc<dyn StorageProviderFactory>,
}

struct Instance {
    provider: String,
    backend: Arc<dyn StorageBackend>,
    poisoned: Arc<AtomicBool>,
}

struct Writer {
    provider: String,
    poisoned: Arc<AtomicBool>,
    state: WriterState,
}

enum WriterState {
    /// Not started yet: the put begins at the second chunk or at finish, so a payload that
    /// arrives in one chunk is written by one direct call, without a task or a channel.
    Pending {
        backend: Arc<dyn StorageBackend>,
        request: Box<PutRequest>,
        first: Option<Bytes>,
    },
    /// The backend's put runs as a task reading the chunks from a channel.
    Streaming {
        chunks: Option<mpsc::Sender<Result<Bytes>>>,
        task: JoinHandle<Result<RecordInfo>>,
    },
    Done,
}

struct PutRequest {
    ns: Namespace,
    key: Key,
    metadata: Metadata,
    options: WirePut,
}

struct Reader {
    provider: String,
    poisoned: Arc<AtomicBool>,
    body: Body,
}

thread_local! {
    /// How many guest calls (regions whose panics are caught and reported) this thread is in.
    static GUEST_CALL_DEPTH: Cell<usize> = const { Cell::new(0) };
    /// The message and location of the panic the hook saw last inside a guest call.
    static CAUGHT_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs, once per plugin image, the panic hook that keeps guest-call panics quiet: inside
/// a guest call it records `<message> (at <file>:<line>:<column>)` for the error the host gets
/// and prints nothing (the host prints the error on one line); elsewhere (a thread or task of
/// the plugin's own) it calls the hook that was there before, std's default report.
fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_guest_call = GUEST_CALL_DEPTH.try_with(|d| d.get() > 0).unwrap_or(false);
            if !in_guest_call {
                return previous(info);
            }
            let message = panic_message(info.payload());
            let text = match info.location() {
                Some(at) => format!("{message} (at {}:{}:{})", at.file(), at.line(), at.column()),
                None => message,
            };
            let _ = CAUGHT_PANIC.try_with(|c| *c.borrow_mut() = Some(text));
        }));
    });
}

/// Marks the current thread as inside a guest call while it lives.
struct GuestCall;

impl GuestCall {
    fn enter() -> Self {
        GUEST_CALL_DEPTH.with(|d| d.set(d.get() + 1));
        GuestCall
    }
}

impl Drop for GuestCall {
    fn drop(&mut self) {
        GUEST_CALL_DEPTH.with(|d| d.set(d.get() - 1));
    }
}

/// Runs `f` as a guest call: a panic in it is caught without being printed and comes back as
/// its message and location.
fn catch_guest_panic<R>(f: impl FnOnce() -> R) -> std::result::Result<R, String> {
    install_panic_hook();
    let _call = GuestCall::enter();
    CAUGHT_PANIC.with(|c| c.borrow_mut().take());
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        CAUGHT_PANIC
            .with(|c| c.borrow_mut().take())
            .unwrap_or_else(|| panic_message(&*payload))
    })
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

fn error_status(error: &Error) -> StowageStatus {
    let (code, message) = encode_error(error);
    StowageStatus {
        code,
        message: owned(message.into_bytes()),
    }
}

/// Runs one entry point: refuses if poisoned, turns an error into its status and a panic into
/// `PANICKED` (poisoning `poisoned`).
fn guarded(
    poisoned: Option<&AtomicBool>,
    provider: &str,
    f: impl FnOnce() -> Result<()>,
) -> StowageStatus {
    if poisoned.is_some_and(|p| p.load(Ordering::Acquire)) {
        return error_status(&Error::Panicked {
            provider: provider.to_string(),
            message: "it panicked earlier and refuses further calls; create a new backend".into(),
        });
    }
    // The host waits on this thread for the answer: blocking work runs here, not on another
    // thread (see `run_blocking`).
    let _may_block = crate::blocking::MayBlock::enter();
    match catch_guest_panic(f) {
        Ok(Ok(())) => StowageStatus {
            code: status::OK,
            message: StowageOwned::EMPTY,
        },
        Ok(Err(e)) => {
            if let (Error::Panicked { .. }, Some(p)) = (&e, poisoned) {
                p.store(true, Ordering::Release);
            }
            error_status(&e)
        }
        Err(message) => {
            if let Some(p) = poisoned {
                p.store(true, Ordering::Release);
            }
            error_status(&Error::Panicked {
                provider: provider.to_string(),
                message,
            })
        }
    }
}

/// [`guarded`] for a factory call: a panic is reported but poisons nothing (it leaves no
/// instance behind; the next `create` makes a fresh one).
fn guarded_factory(state: &FactoryState, f: impl FnOnce() -> Result<()>) -> StowageStatus {
    guarded(None, &state.name, f)
}

unsafe extern "C" fn free_boxed(ptr: *mut u8, len: usize) {
    // SAFETY: `ptr`/`len` come from `owned`, which leaked a `Box<[u8]>` of exactly this length
    // allocated by this image's allocator; the host calls this once per buffer.
    drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) });
}

fn owned(bytes: Vec<u8>) -> StowageOwned {
    if bytes.is_empty() {
        return StowageOwned::EMPTY;
    }
    let boxed = bytes.into_boxed_slice();
    let len = boxed.len();
    StowageOwned {
        ptr: Box::into_raw(boxed) as *mut u8,
        len,
        free: Some(free_boxed),
    }
}

/// Borrows call input.
///
/// # Safety
/// `b` must point to `b.len` readable bytes for the lifetime `'a` (the call), or have length 0.
unsafe fn input<'a>(b: StowageBytes) -> &'a [u8] {
    if b.len == 0 || b.ptr.is_null() {
        &[]
    } else {
        // SAFETY: guaranteed by the caller (the ABI: inputs are valid for the call).
        unsafe { std::slice::from_raw_parts(b.ptr, b.len) }
    }
}

/// # Safety
/// As [`input`].
unsafe fn input_str<'a>(b: StowageBytes, what: &str) -> Result<&'a str> {
    // SAFETY: forwarded from the caller.
    std::str::from_utf8(unsafe { input(b) })
        .map_err(|e| Error::invalid_input(format!("{what} passed to the plugin is not UTF-8: {e}")))
}

/// # Safety
/// As [`input`].
unsafe fn input_json<T: DeserializeOwned + Default>(b: StowageBytes, what: &str) -> Result<T> {
    // SAFETY: forwarded from the caller.
    let bytes = unsafe { input(b) };
    if bytes.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| {
        Error::invalid_input(format!(
            "{what} passed to the plugin is not valid JSON: {e}"
        ))
    })
}

/// Runs `f` with the call's namespace and key, validated.
///
/// # Safety
/// As [`input`].
unsafe fn with_names<T>(
    ns: StowageBytes,
    key: StowageBytes,
    f: impl FnOnce(&Namespace, &Key) -> Result<T>,
) -> Result<T> {
    thread_local! {
        // A namespace and key per host thread, refilled by every call that names a record:
        // validating into them allocates nothing once they have grown to fit.
        static NAMES: Cell<Option<(Namespace, Key)>> = const { Cell::new(None) };
    }
    // SAFETY: forwarded from the caller.
    let (ns_bytes, key_bytes) = unsafe { (input(ns), input(key)) };
    // The common case in one pass over each: a valid namespace is ASCII by its rules, and a
    // plain ASCII key is checked byte by byte; anything else is decoded and fully checked.
    let prechecked = namespace_bytes_valid(ns_bytes)
        && key_bytes.is_ascii()
        && key_bytes_plainly_valid(key_bytes);
    let (ns, key) = if prechecked {
        // SAFETY: both are ASCII (checked just above), so valid UTF-8.
        unsafe {
            (
                std::str::from_utf8_unchecked(ns_bytes),
                std::str::from_utf8_unchecked(key_bytes),
            )
        }
    } else {
        // SAFETY: forwarded from the caller.
        unsafe { (input_str(ns, "namespace")?, input_str(key, "key")?) }
    };
    // Taken out for the call, so a nested call on this thread makes its own.
    let names = match NAMES.with(Cell::take) {
        Some(mut names) if prechecked => {
            names.0.set_prechecked(ns);
            names.1.set_prechecked(key);
            names
        }
        Some(mut names) => {
            names.0.set(ns)?;
            names.1.set(key)?;
            names
        }
        None => (Namespace::new(ns)?, Key::new(key)?),
    };
    let result = f(&names.0, &names.1);
    NAMES.with(|n| n.set(Some(names)));
    result
}

/// Writes `bytes` to an out-parameter.
///
/// # Safety
/// `out` must be null or valid for a write of one `StowageOwned`.
unsafe fn output(out: *mut StowageOwned, bytes: Vec<u8>) -> Result<()> {
    if out.is_null() {
        return Err(Error::invalid_input("the host passed a null output buffer"));
    }
    // SAFETY: `out` is non-null and valid for writes per the caller.
    unsafe { out.write(owned(bytes)) };
    Ok(())
}

/// # Safety
/// As [`output`].
unsafe fn output_json(out: *mut StowageOwned, value: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| Error::invalid_input(format!("cannot encode a plugin result as JSON: {e}")))?;
    // SAFETY: forwarded from the caller.
    unsafe { output(out, bytes) }
}

/// # Safety
/// `out` must be null or valid for a write of one pointer.
unsafe fn output_handle<T>(out: *mut *mut c_void, value: T) -> Result<()> {
    if out.is_null() {
        return Err(Error::invalid_input(
            "the host passed a null handle pointer",
        ));
    }
    // SAFETY: `out` is non-null and valid for writes per the caller.
    unsafe { out.write(Box::into_raw(Box::new(value)) as *mut c_void) };
    Ok(())
}

/// # Safety
/// `factory` must be a `FactoryState` pointer from this image's vtable.
unsafe fn factory_ref<'a>(factory: *const c_void) -> &'a FactoryState {
    // SAFETY: the vtable's `factory` is a `FactoryState` owned by the static `Exported`.
    unsafe { &*(factory as *const FactoryState) }
}

/// # Safety
/// `instance` must be a live pointer made by `factory_create` and not yet released.
unsafe fn instance_ref<'a>(instance: *mut c_void) -> &'a Instance {
    // SAFETY: guaranteed by the caller; `Instance` is only read through shared references.
    unsafe { &*(instance as *const Instance) }
}

unsafe extern "C" fn factory_config_schema(
    factory: *const c_void,
    out: *mut StowageOwned,
) -> StowageStatus {
    // SAFETY: the host passes back the vtable's own `factory` pointer.
    let state = unsafe { factory_ref(factory) };
    // SAFETY: `out` is the host's out-parameter, valid for the call.
    guarded_factory(state, || unsafe {
        output_json(out, &state.factory.config_schema())
    })
}

unsafe extern "C" fn factory_capabilities(
    factory: *const c_void,
    out: *mut StowageOwned,
) -> StowageStatus {
    // SAFETY: the host passes back the vtable's own `factory` pointer.
    let state = unsafe { factory_ref(factory) };
    // SAFETY: `out` is the host's out-parameter, valid for the call.
    guarded_factory(state, || unsafe {
        output_json(out, &state.factory.capabilities())
    })
}

unsafe extern "C" fn factory_validate(
    factory: *const c_void,
    config: StowageBytes,
) -> StowageStatus {
    // SAFETY: the host passes back the vtable's own `factory` pointer.
    let state = unsafe { factory_ref(factory) };
    guarded_factory(state, || {
        // SAFETY: `config` is borrowed input valid for the call.
        let config: serde_json::Value = unsafe { input_json(config, "config")? };
        state.factory.validate(&config)
    })
}

unsafe extern "C" fn factory_create(
    factory: *const c_void,
    config: StowageBytes,
    out_instance: *mut *mut c_void,
) -> StowageStatus {
    // SAFETY: the host passes back the vtable's own `factory` pointer.
    let state = unsafe { factory_ref(factory) };
    guarded_factory(state, || {
        // SAFETY: `config` is borrowed input valid for the call.
        let config: serde_json::Value = unsafe { input_json(config, "config")? };
        let backend = block_on(state.factory.create(config))?;
        let instance = Instance {
            provider: state.name.clone(),
            backend,
            poisoned: Arc::new(AtomicBool::new(false)),
        };
        // SAFETY: `out_instance` is the host's out-parameter, valid for the call.
        unsafe { output_handle(out_instance, instance) }
    })
}

unsafe extern "C" fn instance_release(instance: *mut c_void) {
    if instance.is_null() {
        return;
    }
    // SAFETY: the host releases each instance exactly once, after its last call.
    let instance = unsafe { Box::from_raw(instance as *mut Instance) };
    let _enter = runtime().enter();
    // A backend whose drop panics must not unwind into the host.
    let _ = catch_guest_panic(move || drop(instance));
}

/// Runs `f` on a live instance under [`guarded`].
///
/// # Safety
/// As [`instance_ref`].
unsafe fn with_instance(
    instance: *mut c_void,
    f: impl FnOnce(&Instance) -> Result<()>,
) -> StowageStatus {
    // SAFETY: forwarded from the caller.
    let inst = unsafe { instance_ref(instance) };
    guarded(Some(&inst.poisoned), &inst.provider, || f(inst))
}

unsafe extern "C" fn instance_capabilities(
    instance: *mut c_void,
    out: *mut StowageOwned,
) -> StowageStatus {
    // SAFETY: a live instance and the host's out-parameter (ABI contract).
    unsafe { with_instance(instance, |i| output_json(out, &i.backend.capabilities())) }
}

unsafe extern "C" fn instance_initialize(instance: *mut c_void) -> StowageStatus {
    // SAFETY: a live instance (ABI contract).
    unsafe { with_instance(instance, |i| block_on(i.backend.initialize())) }
}

unsafe extern "C" fn put_open(
    instance: *mut c_void,
    ns: StowageBytes,
    key: StowageBytes,
    metadata: StowageBytes,
    options: StowageBytes,
    out_writer: *mut *mut c_void,
) -> StowageStatus {
    // SAFETY: a live instance; inputs borrowed for the call; the host's out-parameter.
    unsafe {
        with_instance(instance, |i| {
            // The writer outlives the call: it owns its names.
            let (ns, key) = with_names(ns, key, |ns, key| Ok((ns.clone(), key.clone())))?;
            let request = PutRequest {
                ns,
                key,
                metadata: input_json(metadata, "metadata")?,
                options: input_json(options, "put options")?,
            };
            let writer = Writer {
                provider: i.provider.clone(),
                poisoned: i.poisoned.clone(),
                state: WriterState::Pending {
                    backend: i.backend.clone(),
                    request: Box::new(request),
                    first: None,
                },
            };
            output_handle(out_writer, writer)
        })
    }
}

impl Writer {
    /// Starts the backend's put as a task fed by a channel (one chunk in flight, so the
    /// host's writes wait for the backend).
    fn start_streaming(
        provider: &str,
        backend: Arc<dyn StorageBackend>,
        request: PutRequest,
    ) -> WriterState {
        let (sender, mut receiver) = mpsc::channel::<Result<Bytes>>(1);
        let stream = futures::stream::poll_fn(move |cx| receiver.poll_recv(cx));
        let PutRequest {
            ns,
            key,
            metadata,
            options,
        } = request;
        let body = Body::from_stream(stream, options.size_hint);
        // The put runs on the runtime's threads, but for the host it is part of this call: each
        // poll is a guest call, so a panic in it is caught quietly and becomes `Panicked`.
        let mut put =
            Box::pin(async move { backend.put(&ns, &key, body, metadata, options.mode).await });
        let provider = provider.to_string();
        let task = runtime().spawn(std::future::poll_fn(move |cx| {
            match catch_guest_panic(|| std::future::Future::poll(put.as_mut(), cx)) {
                Ok(poll) => poll,
                Err(message) => std::task::Poll::Ready(Err(Error::Panicked {
                    provider: provider.clone(),
                    message,
                })),
            }
        }));
        WriterState::Streaming {
            chunks: Some(sender),
            task,
        }
    }

    /// Sends a chunk to a streaming put; if the backend stopped reading, its outcome.
    fn send(&mut self, chunk: Result<Bytes>) -> Result<()> {
        let WriterState::Streaming {
            chunks: Some(sender),
            ..
        } = &self.state
        else {
            return Err(Error::invalid_input("write after the put ended"));
        };
        if block_on(sender.send(chunk)).is_err() {
            // The backend stopped reading: its put ended early, with an error or without the
            // whole payload.
            self.finish()?;
            return Err(Error::Backend {
                provider: self.provider.clone(),
                message: "the provider finished the put before the payload ended".into(),
                source: None,
            });
        }
        Ok(())
    }

    fn write(&mut self, chunk: Bytes) -> Result<()> {
        match std::mem::replace(&mut self.state, WriterState::Done) {
            WriterState::Pending {
                backend,
                request,
                first: None,
            } => {
                self.state = WriterState::Pending {
                    backend,
                    request,
                    first: Some(chunk),
                };
                Ok(())
            }
            WriterState::Pending {
                backend,
                request,
                first: Some(first),
            } => {
                self.state = Self::start_streaming(&self.provider, backend, *request);
                self.send(Ok(first))?;
                self.send(Ok(chunk))
            }
            streaming @ WriterState::Streaming { .. } => {
                self.state = streaming;
                self.send(Ok(chunk))
            }
            WriterState::Done => Err(Error::invalid_input("write after the put ended")),
        }
    }

    /// Completes the put: directly when it never started streaming, else by ending the stream
    /// and waiting for the task (a panic in it poisons the instance).
    fn finish(&mut self) -> Result<RecordInfo> {
        match std::mem::replace(&mut self.state, WriterState::Done) {
            WriterState::Pending {
                backend,
                request,
                first,
            } => {
                let PutRequest {
                    ns,
                    key,
                    metadata,
                    options,
                } = *request;
                let body = Body::from_bytes(first.unwrap_or_default());
                block_on(backend.put(&ns, &key, body, metadata, options.mode))
            }
            WriterState::Streaming { chunks, task } => {
                drop(chunks);
                match block_on(task) {
                    Ok(result) => result,
                    Err(e) => {
                        let message = if e.is_panic() {
                            panic_message(&*e.into_panic())
                        } else {
                            "the put task was cancelled".to_string()
                        };
                        Err(Error::Panicked {
                            provider: self.provider.clone(),
                            message,
                        })
                    }
                }
            }
            WriterState::Done => Err(Error::invalid_input("this put was already finished")),
        }
    }
}

unsafe extern "C" fn put_write(writer: *mut c_void, chunk: StowageBytes) -> StowageStatus {
    // SAFETY: the host uses a writer from one thread at a time until finish/abort.
    let w = unsafe { &mut *(writer as *mut Writer) };
    let poisoned = w.poisoned.clone();
    let provider = w.provider.clone();
    guarded(Some(&poisoned), &provider, || {
        // SAFETY: `chunk` is borrowed input valid for the call.
        w.write(Bytes::copy_from_slice(unsafe { input(chunk) }))
    })
}

unsafe extern "C" fn put_finish(writer: *mut c_void, out_info: *mut StowageOwned) -> StowageStatus {
    // SAFETY: the host hands the writer back exactly once, here or to `put_abort`.
    let mut w = unsafe { Box::from_raw(writer as *mut Writer) };
    let poisoned = w.poisoned.clone();
    let provider = w.provider.clone();
    guarded(Some(&poisoned), &provider, || {
        let info = w.finish()?;
        // SAFETY: the host's out-parameter, valid for the call.
        unsafe { output_json(out_info, &info) }
    })
}

unsafe extern "C" fn put_abort(writer: *mut c_void) {
    if writer.is_null() {
        return;
    }
    // SAFETY: the host hands the writer back exactly once, here or to `put_finish`.
    let mut w = unsafe { Box::from_raw(writer as *mut Writer) };
    let _ = catch_guest_panic(move || {
        if let WriterState::Streaming { .. } = w.state {
            // The backend sees a failing body and must write nothing.
            let _ = w.send(Err(Error::invalid_input("the host aborted this put")));
            let _ = w.finish();
        }
        // A put that never started has nothing to undo.
    });
}

unsafe extern "C" fn get_open(
    instance: *mut c_void,
    ns: StowageBytes,
    key: StowageBytes,
    options: StowageBytes,
    out_info: *mut StowageOwned,
    out_reader: *mut *mut c_void,
) -> StowageStatus {
    // SAFETY: a live instance; inputs borrowed for the call; the host's out-parameters.
    unsafe {
        with_instance(instance, |i| {
            with_names(ns, key, |ns, key| {
                let options: WireGet = input_json(options, "get options")?;
                let options = GetOptions {
                    version: options.version,
                    range: options.range,
                };
                let (info, body) = block_on(i.backend.get(ns, key, options))?;
                output_json(out_info, &info)?;
                let reader = Reader {
                    provider: i.provider.clone(),
                    poisoned: i.poisoned.clone(),
                    body,
                };
                output_handle(out_reader, reader)
            })
        })
    }
}

/// The next non-empty chunk of `body`, or an empty one at its end.
async fn next_nonempty(body: &mut Body) -> Result<Bytes> {
    // An empty chunk would read as the end of the payload: skip it.
    loop {
        match body.next_chunk().await {
            Some(Ok(c)) if c.is_empty() => continue,
            Some(Ok(c)) => return Ok(c),
            Some(Err(e)) => return Err(e),
            None => return Ok(Bytes::new()),
        }
    }
}

unsafe extern "C" fn get_first(
    instance: *mut c_void,
    ns: StowageBytes,
    key: StowageBytes,
    options: *const StowageGetOptions,
    out_info: *mut StowageRecordInfo,
    out_first: *mut StowageOwned,
    out_reader: *mut *mut c_void,
) -> StowageStatus {
    // SAFETY: a live instance; inputs borrowed for the call; the host's out-parameters.
    unsafe {
        with_instance(instance, |i| {
            // One runtime context for the whole call (a streamed body that turns out whole is
            // dropped here too).
            let _enter = enter_runtime();
            if options.is_null() || out_info.is_null() || out_first.is_null() {
                return Err(Error::invalid_input(
                    "the host passed a null get_first argument",
                ));
            }
            // SAFETY: non-null, and valid for the call per the ABI.
            let options = get_options_from_wire(&*options)?;
            // SAFETY: non-null; the host sets `struct_size` before the call.
            let info_size = (*out_info).struct_size as usize;
            if info_size < std::mem::size_of::<StowageRecordInfo>() {
                return Err(Error::invalid_input(format!(
                    "the host's record info struct_size is {info_size} bytes, ABI 1.1 needs {}",
                    std::mem::size_of::<StowageRecordInfo>()
                )));
            }
            let (info, body) = with_names(ns, key, |ns, key| {
                run_entered(i.backend.get(ns, key, options))
            })?;
            // An in-memory body is one chunk: taken out, not cloned, so a payload the provider
            // allocated reaches the host in its own buffer.
            let (first, reader) = match body.try_into_bytes() {
                Ok(whole) => (whole, None),
                Err(mut body) => {
                    let first = run_entered(next_nonempty(&mut body))?;
                    let whole = first.is_empty()
                        || expected_len(&info, &options) == Some(first.len() as u64);
                    let reader = (!whole).then(|| Reader {
                        provider: i.provider.clone(),
                        poisoned: i.poisoned.clone(),
                        body,
                    });
                    (first, reader)
                }
            };
            // Outputs last, so a failure above hands the host nothing to free.
            match reader {
                Some(reader) => output_handle(out_reader, reader)?,
                None if out_reader.is_null() => {}
                // SAFETY: non-null, valid for a write per the ABI.
                None => out_reader.write(std::ptr::null_mut()),
            }
            // SAFETY: non-null and at least as large as the struct (checked above).
            out_info.write(info_to_wire(&info, owned));
            // No new buffer when the chunk is not shared (`bytes` still moves it in place).
            output(out_first, Vec::from(first))
        })
    }
}

unsafe extern "C" fn get_read(reader: *mut c_void, out_chunk: *mut StowageOwned) -> StowageStatus {
    // SAFETY: the host uses a reader from one thread at a time until `get_close`.
    let r = unsafe { &mut *(reader as *mut Reader) };
    let poisoned = r.poisoned.clone();
    let provider = r.provider.clone();
    guarded(Some(&poisoned), &provider, || {
        let chunk = block_on(next_nonempty(&mut r.body))?;
        // SAFETY: the host's out-parameter, valid for the call. (No new buffer when the chunk
        // is not shared.)
        unsafe { output(out_chunk, Vec::from(chunk)) }
    })
}

unsafe extern "C" fn get_close(reader: *mut c_void) {
    if reader.is_null() {
        return;
    }
    // SAFETY: the host closes each reader exactly once.
    let r = unsafe { Box::from_raw(reader as *mut Reader) };
    let _enter = runtime().enter();
    let _ = catch_guest_panic(move || drop(r));
}

unsafe extern "C" fn instance_head(
    instance: *mut c_void,
    ns: StowageBytes,
    key: StowageBytes,
    options: StowageBytes,
    out: *mut StowageOwned,
) -> StowageStatus {
    // SAFETY: a live instance; inputs borrowed for the call; the host's out-parameter.
    unsafe {
        with_instance(instance, |i| {
            with_names(ns, key, |ns, key| {
                let options: WireVersion = input_json(options, "head options")?;
                let info = block_on(i.backend.head(ns, key, options.version))?;
                output_json(out, &info)
            })
        })
    }
}

unsafe extern "C" fn instance_delete(
    instance: *mut c_void,
    ns: StowageBytes,
    key: StowageBytes,
    options: StowageBytes,
    out: *mut StowageOwned,
) -> StowageStatus {
    // SAFETY: a live instance; inputs borrowed for the call; the host's out-parameter.
    unsafe {
        with_instance(instance, |i| {
            with_names(ns, key, |ns, key| {
                let options: WireDelete = input_json(options, "delete options")?;
                let options = DeleteOptions {
                    if_version: options.if_version,
                };
                let info = block_on(i.backend.delete(ns, key, options))?;
                output_json(out, &info)
            })
        })
    }
}

unsafe extern "C" fn instance_versions(
    instance: *mut c_void,
    ns: StowageBytes,
    key: StowageBytes,
    _options: StowageBytes,
    out: *mut StowageOwned,
) -> StowageStatus {
    // SAFETY: a live instance; inputs borrowed for the call; the host's out-parameter.
    unsafe {
        with_instance(instance, |i| {
            with_names(ns, key, |ns, key| {
                let all = block_on(i.backend.versions(ns, key))?;
                output_json(out, &all)
            })
        })
    }
}

unsafe extern "C" fn instance_restore(
    instance: *mut c_void,
    ns: StowageBytes,
    key: StowageBytes,
    options: StowageBytes,
    out: *mut StowageOwned,
) -> StowageStatus {
    // SAFETY: a live instance; inputs borrowed for the call; the host's out-parameter.
    unsafe {
        with_instance(instance, |i| {
            with_names(ns, key, |ns, key| {
                let options: WireVersion = input_json(options, "restore options")?;
                let info = block_on(i.backend.restore(ns, key, options.version))?;
                output_json(out, &info)
            })
        })
    }
}

unsafe extern "C" fn instance_purge(
    instance: *mut c_void,
    ns: StowageBytes,
    key: StowageBytes,
    _options: StowageBytes,
    out: *mut StowageOwned,
) -> StowageStatus {
    // SAFETY: a live instance; inputs borrowed for the call; the host's out-parameter.
    unsafe {
        with_instance(instance, |i| {
            with_names(ns, key, |ns, key| {
                let removed = block_on(i.backend.purge(ns, key))?;
                output_json(out, &WirePurged { removed })
            })
        })
    }
}

unsafe extern "C" fn instance_list(
    instance: *mut c_void,
    ns: StowageBytes,
    options: StowageBytes,
    out: *mut StowageOwned,
) -> StowageStatus {
    // SAFETY: a live instance; inputs borrowed for the call; the host's out-parameter.
    unsafe {
        with_instance(instance, |i| {
            let ns = Namespace::new(input_str(ns, "namespace")?)?;
            let o: WireList = input_json(options, "list options")?;
            let options = ListOptions {
                prefix: o.prefix,
                start_after: o.start_after,
                limit: o.limit,
                include_deleted: o.include_deleted,
                cursor: o.cursor,
            };
            let page = block_on(i.backend.list(&ns, options))?;
            output_json(
                out,
                &WirePage {
                    items: page.items,
                    next: page.next,
                },
            )
        })
    }
}

unsafe extern "C" fn instance_search(
    instance: *mut c_void,
    ns: StowageBytes,
    query: StowageBytes,
    out: *mut StowageOwned,
) -> StowageStatus {
    // SAFETY: a live instance; inputs borrowed for the call; the host's out-parameter.
    unsafe {
        with_instance(instance, |i| {
            let ns = Namespace::new(input_str(ns, "namespace")?)?;
            let query: Query = input_json(query, "query")?;
            let page = block_on(i.backend.search(&ns, &query))?;
            output_json(
                out,
                &WirePage {
                    items: page.items,
                    next: page.next,
                },
            )
        })
    }
}

/// The host's progress sink, called from whichever plugin thread makes progress.
struct HostProgress(*const StowageProgress);

// SAFETY: the ABI makes the host's progress functions callable from any thread while the
// gc/verify call that lent them runs, and this value does not outlive that call.
unsafe impl Send for HostProgress {}
// SAFETY: as above.
unsafe impl Sync for HostProgress {}

impl HostProgress {
    fn call(
        &self,
        pick: impl Fn(&StowageProgress) -> Option<stowage_plugin_abi::StowageProgressFn>,
        n: u64,
    ) {
        if self.0.is_null() {
            return;
        }
        // SAFETY: non-null and valid for the duration of the gc/verify call (see above).
        let progress = unsafe { &*self.0 };
        if let Some(f) = pick(progress) {
            // SAFETY: the host's function with the host's context, per the ABI.
            unsafe { f(progress.ctx, n) }
        }
    }
}

impl Progress for HostProgress {
    fn set_total(&self, total: u64) {
        self.call(|p| p.set_total, total);
    }
    fn inc(&self, n: u64) {
        self.call(|p| p.inc, n);
    }
}

unsafe extern "C" fn instance_gc(
    instance: *mut c_void,
    progress: *const StowageProgress,
    out: *mut StowageOwned,
) -> StowageStatus {
    // SAFETY: a live instance; the host's progress and out-parameter, valid for the call.
    unsafe {
        with_instance(instance, |i| {
            let progress = HostProgress(progress);
            let report = block_on(i.backend.gc(&progress))?;
            output_json(out, &report)
        })
    }
}

unsafe extern "C" fn instance_verify(
    instance: *mut c_void,
    progress: *const StowageProgress,
    out: *mut StowageOwned,
) -> StowageStatus {
    // SAFETY: a live instance; the host's progress and out-parameter, valid for the call.
    unsafe {
        with_instance(instance, |i| {
            let progress = HostProgress(progress);
            let report = block_on(i.backend.verify(&progress))?;
            output_json(out, &report)
        })
    }
}

unsafe extern "C" fn instance_namespaces(
    instance: *mut c_void,
    out: *mut StowageOwned,
) -> StowageStatus {
    // SAFETY: a live instance and the host's out-parameter (ABI contract).
    unsafe {
        with_instance(instance, |i| {
            let all = block_on(i.backend.namespaces())?;
            output_json(out, &all)
        })
    }
}
