//! The host edge: the proxy-wasm callbacks keygate exports, and `Envoy`, the worker's
//! [`Host`] over the ABI. Every decision is the worker's (`crate::worker`); this module only
//! carries callbacks in and host calls out.
//!
//! Exported per request: `proxy_on_request_headers` and `proxy_on_response_headers` (two VM
//! entries; the SDK's dispatcher costs seven), `proxy_on_request_body`, which Envoy enters
//! only for requests with a body (once per chunk; it returns at once unless a check reads the
//! body), and `proxy_on_request_trailers`, only for requests with trailers. Per plugin:
//! `proxy_on_vm_start`, `proxy_on_configure`, `proxy_on_tick` (revocation feed, held bodies),
//! `proxy_on_http_call_response`.

mod abi;
mod sys;

use std::cell::{Cell, RefCell};

use crate::store::{SetOutcome, SharedStore};
use crate::worker::{Action, Host, Time, Vm};
use crate::{headermap, metrics};

/// Envoy shared data behind the core's `SharedStore`.
pub struct EnvoyStore;

impl SharedStore for EnvoyStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        abi::shared_get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> SetOutcome {
        match abi::shared_set(key, value, cas) {
            abi::SetStatus::Ok => SetOutcome::Written,
            abi::SetStatus::CasMismatch => SetOutcome::CasMismatch,
            abi::SetStatus::Failed(_) => SetOutcome::Failed,
        }
    }
}

thread_local! {
    static VM: RefCell<Vm<Envoy>> = RefCell::new(Vm::new(Envoy { root: 0 }));
    /// The context Envoy's host calls act on now: the one the current callback entered with,
    /// until `focus` makes another one effective. Envoy resets its effective context on every
    /// callback (and restores it after a nested one), so this is set and restored the same way.
    static CURRENT: Cell<u32> = const { Cell::new(0) };
}

/// Runs callback `f`, entered by Envoy with context `ctx` current.
fn entered<R>(ctx: u32, f: impl FnOnce() -> R) -> R {
    let saved = CURRENT.with(|c| c.replace(ctx));
    let r = f();
    CURRENT.with(|c| c.set(saved));
    r
}

/// Makes `ctx` the context host calls act on (a host call only when it is not already);
/// `false` when Envoy no longer knows it (the client went away).
fn focus(ctx: u32) -> bool {
    CURRENT.with(|c| {
        if c.get() == ctx {
            return true;
        }
        let ok = abi::set_effective_context(ctx);
        if ok {
            c.set(ctx);
        }
        ok
    })
}

/// The worker's host in Envoy: the proxy-wasm ABI, for the plugin of root context `root`.
pub struct Envoy {
    root: u32,
}

impl Host for Envoy {
    type Store = EnvoyStore;

    fn now(&self) -> Time {
        Time::from_ns(abi::now_ns())
    }

    fn store(&self) -> &EnvoyStore {
        &EnvoyStore
    }

    fn for_root(&self, root: u32) -> Self {
        Envoy { root }
    }

    fn client_address(&mut self, ctx: u32) -> Vec<u8> {
        focus(ctx);
        abi::get_property(&["source", "address"]).unwrap_or_default()
    }

    fn plugin_name(&mut self, ctx: u32) -> Vec<u8> {
        focus(ctx);
        abi::get_property(&["plugin_name"]).unwrap_or_default()
    }

    fn http_call(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u32,
    ) -> Option<u32> {
        // calls belong to the root context: their answer reaches it even if the stream that
        // asked is gone
        focus(self.root);
        abi::http_call(cluster, headers, body, timeout_ms)
    }

    fn call_header(&mut self, name: &str) -> Option<Vec<u8>> {
        abi::get_header(abi::MapType::HttpCallResponseHeaders, name)
    }

    fn call_trailer(&mut self, name: &str) -> Option<Vec<u8>> {
        abi::get_header(abi::MapType::HttpCallResponseTrailers, name)
    }

    fn call_body(&mut self, size: usize) -> Option<Vec<u8>> {
        abi::get_buffer(abi::BufferType::HttpCallResponseBody, 0, size)
    }

    fn alive(&mut self, ctx: u32) -> bool {
        focus(ctx)
    }

    fn resume(&mut self, ctx: u32) -> bool {
        focus(ctx) && abi::continue_request()
    }

    fn reply(&mut self, ctx: u32, status: u32, headers: &[(String, String)], body: &[u8]) -> bool {
        focus(ctx) && abi::send_local_response(status, headers, body, -1)
    }

    fn reset(&mut self, ctx: u32) {
        if focus(ctx) {
            abi::reset_request();
        }
    }

    fn request_body(&mut self, ctx: u32, max: usize) -> Option<Vec<u8>> {
        focus(ctx);
        abi::get_buffer(abi::BufferType::HttpRequestBody, 0, max)
    }

    fn remove_request_header(&mut self, ctx: u32, name: &str) {
        focus(ctx);
        abi::remove_header(abi::MapType::RequestHeaders, name);
    }

    fn replace_request_header(&mut self, ctx: u32, name: &str, value: &[u8]) {
        focus(ctx);
        abi::replace_header(abi::MapType::RequestHeaders, name, value);
    }

    fn add_request_header(&mut self, ctx: u32, name: &str, value: &str) {
        focus(ctx);
        abi::add_header(abi::MapType::RequestHeaders, name, value);
    }

    fn remove_request_trailer(&mut self, ctx: u32, name: &str) {
        focus(ctx);
        abi::remove_header(abi::MapType::RequestTrailers, name);
    }

    fn add_response_header(&mut self, ctx: u32, name: &str, value: &str) {
        focus(ctx);
        abi::add_header(abi::MapType::ResponseHeaders, name, value);
    }

    fn replace_response_header(&mut self, ctx: u32, name: &str, value: &[u8]) {
        focus(ctx);
        abi::replace_header(abi::MapType::ResponseHeaders, name, value);
    }

    fn set_log_state(&mut self, ctx: u32, value: &[u8]) {
        focus(ctx);
        abi::set_property("keygate", value);
    }

    fn define_metric(&mut self, kind: metrics::Type, name: &str) -> Option<u32> {
        let kind = match kind {
            metrics::Type::Counter => abi::MetricType::Counter,
            metrics::Type::Histogram => abi::MetricType::Histogram,
        };
        abi::define_metric(kind, name)
    }

    fn increment_metric(&mut self, id: u32, by: i64) {
        abi::increment_metric(id, by);
    }

    fn record_metric(&mut self, id: u32, value: u64) {
        abi::record_metric(id, value);
    }

    fn set_tick_period_ms(&mut self, ms: u32) {
        // the period is the root context's
        focus(self.root);
        abi::set_tick_period_ms(ms);
    }
}

/// Runs `f` on the VM's plugins (`None` in a nested callback: the VM is busy).
fn with_vm<R>(f: impl FnOnce(&mut Vm<Envoy>) -> R) -> Option<R> {
    VM.with(|vm| vm.try_borrow_mut().ok().map(|mut vm| f(&mut vm)))
}

#[allow(unsafe_code)] // exported to the host by name (no_mangle)
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

extern "C" {
    fn __wasm_call_ctors();
}

#[allow(unsafe_code)] // exported to the host by name, and runs the reactor's constructors
#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: the WASI reactor's static constructors, run once before any callback.
    unsafe { __wasm_call_ctors() }
}

#[allow(unsafe_code)] // exported to the host by name (no_mangle)
#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_id: u32, _size: usize) -> u32 {
    abi::init_logger();
    1
}

#[allow(unsafe_code)] // exported to the host by name (no_mangle)
#[no_mangle]
pub extern "C" fn proxy_on_configure(root_id: u32, size: usize) -> u32 {
    entered(root_id, || {
        let bytes = if size == 0 {
            Vec::new()
        } else if let Some(b) = abi::get_buffer(abi::BufferType::PluginConfiguration, 0, size) {
            b
        } else {
            log::error!(
                "keygate: configuration refused: the plugin configuration could not be read"
            );
            return 0;
        };
        u32::from(with_vm(|vm| vm.configure(root_id, &bytes)).unwrap_or(false))
    })
}

#[allow(unsafe_code)] // exported to the host by name (no_mangle)
#[no_mangle]
pub extern "C" fn proxy_on_request_headers(
    ctx: u32,
    _num_headers: usize,
    end_of_stream: u32,
) -> u32 {
    entered(ctx, || {
        let raw = abi::get_headers(abi::MapType::RequestHeaders);
        let has_body = end_of_stream == 0;
        headermap::with_pairs(&raw, |h| {
            with_vm(|vm| vm.on_request_headers(ctx, h, has_body) as u32)
        })
        .unwrap_or_else(|| {
            // no VM to ask (cannot happen outside a nested callback): never a free pass
            abi::send_local_response(500, &[], b"keygate is not configured\n", -1);
            Action::Pause as u32
        })
    })
}

#[allow(unsafe_code)] // exported to the host by name (no_mangle)
#[no_mangle]
pub extern "C" fn proxy_on_request_body(ctx: u32, body_size: usize, end_of_stream: u32) -> u32 {
    entered(ctx, || {
        with_vm(|vm| vm.on_request_body(ctx, body_size, end_of_stream != 0) as u32)
            .unwrap_or(Action::Pause as u32)
    })
}

/// Envoy enters it only for requests that end with trailers: nothing on other requests.
#[allow(unsafe_code)] // exported to the host by name (no_mangle)
#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(ctx: u32, _num_trailers: usize) -> u32 {
    entered(ctx, || {
        let raw = abi::get_headers(abi::MapType::RequestTrailers);
        headermap::with_pairs(&raw, |t| {
            with_vm(|vm| vm.on_request_trailers(ctx, t) as u32)
        })
        .unwrap_or(Action::Pause as u32)
    })
}

#[allow(unsafe_code)] // exported to the host by name (no_mangle)
#[no_mangle]
pub extern "C" fn proxy_on_response_headers(
    ctx: u32,
    _num_headers: usize,
    _end_of_stream: u32,
) -> u32 {
    entered(ctx, || {
        with_vm(|vm| vm.on_response_headers(ctx) as u32).unwrap_or(Action::Continue as u32)
    })
}

#[allow(unsafe_code)] // exported to the host by name (no_mangle)
#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    root: u32,
    token: u32,
    _headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    entered(root, || {
        with_vm(|vm| vm.on_call_response(root, token, body_size))
    });
}

#[allow(unsafe_code)] // exported to the host by name (no_mangle)
#[no_mangle]
pub extern "C" fn proxy_on_tick(root: u32) {
    entered(root, || with_vm(|vm| vm.on_tick(root)));
}
