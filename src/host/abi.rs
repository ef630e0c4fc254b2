//! The proxy-wasm ABI (0.2.1) as keygate uses it: raw imports and safe wrappers that return
//! `Result`/`Option` and never panic.
//!
//! keygate implements the ABI itself instead of linking the Rust SDK's dispatcher. Measured: the
//! SDK exports 25 callbacks and Envoy enters the VM 7 times for a plain request (keygate: 2, and
//! a body callback only for requests with a body); and the SDK routes the answer to a call back
//! to the stream context that started it, which may be gone by then. Here only the callbacks
//! keygate needs are exported, and a call to the key service is owned by the root context and
//! settles every request waiting on it, so a client reset cannot orphan the others.

use super::sys::*;
pub use super::sys::{BufferType, LogLevel, MapType, MetricType, SetStatus};

use std::ptr::{null, null_mut};

/// The `log` crate's logger: records go to Envoy's log (`proxy_log`) at their level, and those
/// below Envoy's level for the `wasm` component are not even formatted.
struct ProxyLogger;

impl log::Log for ProxyLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let level = match r.level() {
                log::Level::Error => LogLevel::Error,
                log::Level::Warn => LogLevel::Warn,
                log::Level::Info => LogLevel::Info,
                log::Level::Debug => LogLevel::Debug,
                log::Level::Trace => LogLevel::Trace,
            };
            log(level, &r.args().to_string());
        }
    }

    fn flush(&self) {}
}

static LOGGER: ProxyLogger = ProxyLogger;

/// Installs the logger, at Envoy's log level when the VM starts (a level lowered later through
/// the admin interface shows keygate's lower records only in VMs started after it).
#[allow(unsafe_code)] // FFI: proxy_get_log_level
pub fn init_logger() {
    let mut level = LogLevel::Info as u32;
    // SAFETY: a valid pointer to a u32 the host writes.
    let got = unsafe { proxy_get_log_level(&mut level) };
    let filter = match level {
        _ if got != STATUS_OK => log::LevelFilter::Info,
        0 => log::LevelFilter::Trace,
        1 => log::LevelFilter::Debug,
        2 => log::LevelFilter::Info,
        3 => log::LevelFilter::Warn,
        _ => log::LevelFilter::Error,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(filter);
    }
}

#[allow(unsafe_code)] // FFI: proxy_log
pub fn log(level: LogLevel, msg: &str) {
    // SAFETY: pointer and length describe a live &str.
    unsafe {
        proxy_log(level as u32, msg.as_ptr(), msg.len());
    }
}

#[allow(unsafe_code)] // FFI: proxy_get_current_time_nanoseconds
pub fn now_ns() -> u64 {
    let mut t = 0u64;
    // SAFETY: `t` is a valid out-pointer.
    unsafe {
        proxy_get_current_time_nanoseconds(&mut t);
    }
    t
}

#[allow(unsafe_code)] // FFI: proxy_set_tick_period_milliseconds
pub fn set_tick_period_ms(ms: u32) -> bool {
    // SAFETY: no pointers.
    unsafe { proxy_set_tick_period_milliseconds(ms) == STATUS_OK }
}

#[allow(unsafe_code)] // FFI: proxy_get_buffer_bytes
pub fn get_buffer(kind: BufferType, start: usize, max: usize) -> Option<Vec<u8>> {
    let (mut p, mut n) = (null_mut(), 0usize);
    // SAFETY: valid out-pointers; the host allocates the result with proxy_on_memory_allocate.
    let st = unsafe { proxy_get_buffer_bytes(kind as u32, start, max, &mut p, &mut n) };
    (st == STATUS_OK).then(|| take(p, n))
}

/// All headers of a map in one host call, as the raw wire buffer (`headermap::with_pairs`
/// borrows names and values from it without copying).
#[allow(unsafe_code)] // FFI: proxy_get_header_map_pairs
pub fn get_headers(map: MapType) -> Vec<u8> {
    let (mut p, mut n) = (null_mut(), 0usize);
    // SAFETY: valid out-pointers; the result is ours.
    let st = unsafe { proxy_get_header_map_pairs(map as u32, &mut p, &mut n) };
    if st == STATUS_OK {
        take(p, n)
    } else {
        Vec::new()
    }
}

#[allow(unsafe_code)] // FFI: proxy_get_header_map_value
pub fn get_header(map: MapType, name: &str) -> Option<Vec<u8>> {
    let (mut p, mut n) = (null_mut(), 0usize);
    // SAFETY: valid key slice and out-pointers.
    let st = unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut p, &mut n)
    };
    (st == STATUS_OK).then(|| take(p, n))
}

#[allow(unsafe_code)] // FFI: proxy_replace_header_map_value
pub fn replace_header(map: MapType, name: &str, value: &[u8]) {
    // SAFETY: valid slices.
    unsafe {
        proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        );
    }
}

#[allow(unsafe_code)] // FFI: proxy_remove_header_map_value
pub fn remove_header(map: MapType, name: &str) {
    // SAFETY: valid slice.
    unsafe {
        proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len());
    }
}

#[allow(unsafe_code)] // FFI: proxy_add_header_map_value
pub fn add_header(map: MapType, name: &str, value: &str) {
    // SAFETY: valid slices.
    unsafe {
        proxy_add_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        );
    }
}

#[allow(unsafe_code)] // FFI: proxy_set_property
pub fn set_property(name: &str, value: &[u8]) {
    // SAFETY: valid slices (a one-segment path needs no separators).
    unsafe {
        proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len());
    }
}

#[allow(unsafe_code)] // FFI: proxy_get_shared_data
pub fn shared_get(key: &str) -> Option<(Vec<u8>, u32)> {
    let (mut p, mut n, mut cas) = (null_mut(), 0usize, 0u32);
    // SAFETY: valid slice and out-pointers.
    let st = unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut p, &mut n, &mut cas) };
    (st == STATUS_OK).then(|| (take(p, n), cas)) // an emptied value: Some(empty), its token
}

#[allow(unsafe_code)] // FFI: proxy_set_shared_data
pub fn shared_set(key: &str, value: &[u8], cas: u32) -> SetStatus {
    // SAFETY: valid slices.
    let st =
        unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) };
    match st {
        STATUS_OK => SetStatus::Ok,
        STATUS_CAS_MISMATCH => SetStatus::CasMismatch,
        other => SetStatus::Failed(other),
    }
}

#[allow(unsafe_code)] // FFI: proxy_continue_stream
pub fn continue_request() -> bool {
    // SAFETY: no pointers.
    unsafe { proxy_continue_stream(STREAM_HTTP_REQUEST) == STATUS_OK }
}

/// Resets the current stream (both ways): for a stream keygate cannot answer any more.
#[allow(unsafe_code)] // FFI: proxy_close_stream
pub fn reset_request() -> bool {
    // SAFETY: no pointers.
    unsafe { proxy_close_stream(STREAM_HTTP_REQUEST) == STATUS_OK }
}

/// `grpc_status`: -1 for an HTTP reply; a gRPC status makes Envoy answer a gRPC request
/// trailers-only, with `body` as `grpc-message`.
#[allow(unsafe_code)] // FFI: proxy_send_local_response
pub fn send_local_response(
    status: u32,
    headers: &[(String, String)],
    body: &[u8],
    grpc_status: i32,
) -> bool {
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let h = crate::headermap::encode(&pairs);
    // SAFETY: valid slices; no details string.
    unsafe {
        proxy_send_local_response(
            status,
            null(),
            0,
            body.as_ptr(),
            body.len(),
            h.as_ptr(),
            h.len(),
            grpc_status,
        ) == STATUS_OK
    }
}

#[allow(unsafe_code)] // FFI: proxy_http_call
pub fn http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout_ms: u32,
) -> Option<u32> {
    let h = crate::headermap::encode(headers);
    let t = crate::headermap::encode::<&str>(&[]);
    let mut token = 0u32;
    // SAFETY: valid slices and out-pointer.
    let st = unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            h.as_ptr(),
            h.len(),
            body.as_ptr(),
            body.len(),
            t.as_ptr(),
            t.len(),
            timeout_ms,
            &mut token,
        )
    };
    (st == STATUS_OK).then_some(token)
}

#[allow(unsafe_code)] // FFI: proxy_set_effective_context
pub fn set_effective_context(id: u32) -> bool {
    // SAFETY: no pointers.
    unsafe { proxy_set_effective_context(id) == STATUS_OK }
}

/// A property by path segments (joined with NUL, as the ABI wants), e.g. `["source", "address"]`.
#[allow(unsafe_code)] // FFI: proxy_get_property
pub fn get_property(path: &[&str]) -> Option<Vec<u8>> {
    let joined = path.join("\0");
    let (mut p, mut n) = (null_mut(), 0usize);
    // SAFETY: valid slice and out-pointers.
    let st = unsafe { proxy_get_property(joined.as_ptr(), joined.len(), &mut p, &mut n) };
    (st == STATUS_OK).then(|| take(p, n))
}

#[allow(unsafe_code)] // FFI: proxy_define_metric
pub fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
    let mut id = 0u32;
    // SAFETY: valid slice and out-pointer.
    let st = unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) };
    (st == STATUS_OK).then_some(id)
}

#[allow(unsafe_code)] // FFI: proxy_increment_metric
pub fn increment_metric(id: u32, by: i64) {
    // SAFETY: no pointers.
    unsafe {
        proxy_increment_metric(id, by);
    }
}

#[allow(unsafe_code)] // FFI: proxy_record_metric
pub fn record_metric(id: u32, value: u64) {
    // SAFETY: no pointers.
    unsafe {
        proxy_record_metric(id, value);
    }
}
