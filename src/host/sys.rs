//! The proxy-wasm ABI 0.2.1, raw: the host's imports, the allocator export the host fills
//! returned buffers through, and the constants and enums keygate tells apart. No logic. Shared
//! by keygate (`host::abi` wraps it safely) and the test modules that speak the ABI without
//! keygate (`tests/bench/floor-filter`, `tests/fixtures/crasher` include it by `#[path]`), so
//! there is one copy of every signature.

#![allow(dead_code)]

/// Host call statuses (proxy-wasm `WasmResult`), as far as keygate tells them apart.
pub const STATUS_OK: u32 = 0;
pub const STATUS_CAS_MISMATCH: u32 = 8;

/// What a shared-data write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetStatus {
    Ok,
    CasMismatch,
    /// Any other status (the host's number).
    Failed(u32),
}

/// Envoy's log levels (proxy-wasm `LogLevel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

/// The header maps keygate reads or writes (proxy-wasm `MapType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MapType {
    RequestHeaders = 0,
    RequestTrailers = 1,
    ResponseHeaders = 2,
    HttpCallResponseHeaders = 6,
    HttpCallResponseTrailers = 7,
}

/// The buffers keygate reads (proxy-wasm `BufferType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum BufferType {
    HttpRequestBody = 0,
    HttpCallResponseBody = 4,
    PluginConfiguration = 7,
}

/// Metric kinds (proxy-wasm `MetricType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MetricType {
    Counter = 0,
    Histogram = 2,
}

pub const STREAM_HTTP_REQUEST: u32 = 0;

#[link(wasm_import_module = "env")]
extern "C" {
    pub fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
    pub fn proxy_get_log_level(ret: *mut u32) -> u32;
    pub fn proxy_get_current_time_nanoseconds(ret: *mut u64) -> u32;
    pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    pub fn proxy_get_buffer_bytes(
        kind: u32,
        start: usize,
        max: usize,
        ret_data: *mut *mut u8,
        ret_size: *mut usize,
    ) -> u32;
    pub fn proxy_get_header_map_pairs(
        map: u32,
        ret_data: *mut *mut u8,
        ret_size: *mut usize,
    ) -> u32;
    pub fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        ret_data: *mut *mut u8,
        ret_size: *mut usize,
    ) -> u32;
    pub fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    pub fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    pub fn proxy_add_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    pub fn proxy_set_property(
        path: *const u8,
        path_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    pub fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        ret_data: *mut *mut u8,
        ret_size: *mut usize,
        ret_cas: *mut u32,
    ) -> u32;
    pub fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    pub fn proxy_continue_stream(stream: u32) -> u32;
    pub fn proxy_close_stream(stream: u32) -> u32;
    #[allow(clippy::too_many_arguments)]
    pub fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    #[allow(clippy::too_many_arguments)]
    pub fn proxy_http_call(
        upstream: *const u8,
        upstream_size: usize,
        headers: *const u8,
        headers_size: usize,
        body: *const u8,
        body_size: usize,
        trailers: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        ret_token: *mut u32,
    ) -> u32;
    pub fn proxy_set_effective_context(context_id: u32) -> u32;
    pub fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        ret_data: *mut *mut u8,
        ret_size: *mut usize,
    ) -> u32;
    pub fn proxy_define_metric(
        kind: u32,
        name: *const u8,
        name_size: usize,
        ret_id: *mut u32,
    ) -> u32;
    pub fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    pub fn proxy_record_metric(id: u32, value: u64) -> u32;
}

/// Memory the host fills for us (returned buffers): an exact-size boxed slice, so that
/// `Vec::from_raw_parts(ptr, size, size)` reclaims it.
#[allow(unsafe_code)] // exported to the host by name (no_mangle): the allocator it calls
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    // not zeroed: the host writes all `size` bytes before it hands the pointer over
    let b: Box<[std::mem::MaybeUninit<u8>]> = Box::new_uninit_slice(size);
    Box::into_raw(b) as *mut u8
}

/// Takes ownership of a buffer the host allocated through `proxy_on_memory_allocate`.
#[allow(unsafe_code)] // reclaims a buffer the host filled through our allocator
pub fn take(ptr: *mut u8, size: usize) -> Vec<u8> {
    if ptr.is_null() {
        return Vec::new();
    }
    // SAFETY: the host allocated exactly `size` bytes with `proxy_on_memory_allocate` (a boxed
    // slice of that length) and hands ownership to us.
    unsafe { Vec::from_raw_parts(ptr, size, size) }
}
