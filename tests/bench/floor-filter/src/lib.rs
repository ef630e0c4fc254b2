//! Reference filters for the benchmark: the host calls of a filter, with constant data and no
//! logic. Hand-written proxy-wasm 0.2.1 ABI (no SDK), exporting only the two per-request
//! callbacks, as keygate does. The plugin configuration picks the mode:
//!
//! * `keygate`: exactly the host calls keygate makes for a cached `X-API-Key` request under its
//!   limit (`src/host/mod.rs`): the clock, all request headers in one call, one shared-data write
//!   (the token bucket, with keygate's guessed CAS), the credential header removed, four
//!   identity headers added, one filter-state value for the access log; on the response, three
//!   rate-limit headers. No parsing, hashing, verification or bucket math: the floor keygate's
//!   hot path stands on in this Envoy, whatever keygate's own code costs.
//! * `reference`: the filter the benchmark issue (#6) describes as "about 0.61": all request
//!   headers once, one shared-data get and one CAS set, three response headers.
//!
//! Anything else (or no configuration) is refused, so a typo cannot benchmark a third thing.

#![allow(unsafe_code)]

use std::cell::Cell;
use std::ptr::null_mut;

// The raw ABI (imports, `proxy_on_memory_allocate`, `take`): keygate's own copy, so the floor
// makes exactly keygate's host calls through exactly its declarations and allocator.
#[path = "../../../../src/host/sys.rs"]
mod sys;
use sys::*;

const MAP_REQUEST_HEADERS: u32 = MapType::RequestHeaders as u32;
const MAP_RESPONSE_HEADERS: u32 = MapType::ResponseHeaders as u32;
const BUFFER_PLUGIN_CONFIGURATION: u32 = BufferType::PluginConfiguration as u32;
const ACTION_CONTINUE: u32 = 0;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Unset,
    Keygate,
    Reference,
}

thread_local! {
    static MODE: Cell<Mode> = const { Cell::new(Mode::Unset) };
    /// keygate's guess of the bucket's CAS token (the token after the one its last write replaced).
    static NEXT_CAS: Cell<u32> = const { Cell::new(0) };
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root: u32, _size: usize) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(_root: u32, size: usize) -> u32 {
    let (mut p, mut n) = (null_mut(), 0usize);
    // SAFETY: valid out-pointers.
    let st = unsafe { proxy_get_buffer_bytes(BUFFER_PLUGIN_CONFIGURATION, 0, size, &mut p, &mut n) };
    let cfg = if st == 0 { take(p, n) } else { Vec::new() };
    let mode = match cfg.as_slice() {
        b"keygate" => Mode::Keygate,
        b"reference" => Mode::Reference,
        _ => return 0,
    };
    MODE.with(|m| m.set(mode));
    1
}

fn add(map: u32, name: &str, value: &str) {
    // SAFETY: valid slices.
    unsafe { proxy_add_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len()) };
}

fn request_headers() -> Vec<u8> {
    let (mut p, mut n) = (null_mut(), 0usize);
    // SAFETY: valid out-pointers; the buffer is ours.
    let st = unsafe { proxy_get_header_map_pairs(MAP_REQUEST_HEADERS, &mut p, &mut n) };
    if st == 0 {
        take(p, n)
    } else {
        Vec::new()
    }
}

const BUCKET: &str = "floor:rl:k:bench";

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(_ctx: u32, _headers: usize, _eos: u32) -> u32 {
    match MODE.with(Cell::get) {
        Mode::Keygate => {
            let mut t = 0u64;
            // SAFETY: valid out-pointer.
            unsafe { proxy_get_current_time_nanoseconds(&mut t) };
            std::hint::black_box(request_headers());
            let v = t.to_le_bytes().repeat(2);
            let cas = NEXT_CAS.with(Cell::get);
            // SAFETY: valid slices.
            let st = unsafe { proxy_set_shared_data(BUCKET.as_ptr(), BUCKET.len(), v.as_ptr(), v.len(), cas) };
            // keygate guesses the next token after a write; a wrong guess (first request, another
            // writer) costs it a failed write and a read, as here
            if st != 0 {
                let (mut p, mut n, mut c) = (null_mut(), 0usize, 0u32);
                // SAFETY: valid slice and out-pointers.
                unsafe { proxy_get_shared_data(BUCKET.as_ptr(), BUCKET.len(), &mut p, &mut n, &mut c) };
                drop(take(p, n));
                // SAFETY: valid slices.
                unsafe { proxy_set_shared_data(BUCKET.as_ptr(), BUCKET.len(), v.as_ptr(), v.len(), c) };
                NEXT_CAS.with(|x| x.set(c.wrapping_add(1).max(1)));
            } else {
                NEXT_CAS.with(|x| x.set(cas.wrapping_add(1).max(1)));
            }
            let key = "x-api-key";
            // SAFETY: valid slice.
            unsafe { proxy_remove_header_map_value(MAP_REQUEST_HEADERS, key.as_ptr(), key.len()) };
            for (n, v) in [
                ("x-keygate-key-id", "bench"),
                ("x-keygate-subject", "alice"),
                ("x-keygate-account", "acme"),
                ("x-keygate-plan", "big"),
            ] {
                add(MAP_REQUEST_HEADERS, n, v);
            }
            let (name, log) = ("keygate", "decision=allowed key_id=bench account=acme plan=big");
            // SAFETY: valid slices.
            unsafe { proxy_set_property(name.as_ptr(), name.len(), log.as_ptr(), log.len()) };
        }
        Mode::Reference => {
            std::hint::black_box(request_headers());
            let (mut p, mut n, mut c) = (null_mut(), 0usize, 0u32);
            // SAFETY: valid slice and out-pointers.
            unsafe { proxy_get_shared_data(BUCKET.as_ptr(), BUCKET.len(), &mut p, &mut n, &mut c) };
            let mut v = take(p, n);
            v.resize(16, 0);
            v[0] = v[0].wrapping_add(1);
            // SAFETY: valid slices.
            unsafe { proxy_set_shared_data(BUCKET.as_ptr(), BUCKET.len(), v.as_ptr(), v.len(), c) };
        }
        Mode::Unset => {}
    }
    ACTION_CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(_ctx: u32, _headers: usize, _eos: u32) -> u32 {
    if MODE.with(Cell::get) != Mode::Unset {
        add(MAP_RESPONSE_HEADERS, "x-ratelimit-limit", "1000000000");
        add(MAP_RESPONSE_HEADERS, "x-ratelimit-remaining", "999999999");
        add(MAP_RESPONSE_HEADERS, "x-ratelimit-reset", "1");
    }
    ACTION_CONTINUE
}
