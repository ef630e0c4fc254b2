//! The excerpt filter's host edge: the proxy-wasm callbacks that hand a request's credentials
//! and the first bytes of its bodies to keygate's pure `excerpt` module, and set the result as
//! the filter-state value `wasm.keygate_bodies` for the access log
//! (`%FILTER_STATE(wasm.keygate_bodies:PLAIN)%`).
//!
//! Configured only where bodies are recorded (a route or listener), placed before keygate in the
//! filter chain so it reads the credential headers as the client sent them. It never pauses a
//! stream: every callback copies what still fits of a chunk and continues. Memory: at most
//! `MAX_STREAMS` streams per worker (more are not recorded), each holding at most its window
//! (`max_bytes` plus a margin) per body; a stream's state goes when Envoy deletes its context.

#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::ptr::null_mut;

use keygate::excerpt::{self, Capture, Settings};

// The raw ABI (imports, `proxy_on_memory_allocate`, `take`): keygate's own declarations.
#[path = "../../../src/host/sys.rs"]
mod sys;
use sys::*;

const ACTION_CONTINUE: u32 = 0;
/// Streams recorded at once per worker; a stream past it is not recorded (never delayed).
const MAX_STREAMS: usize = 10_000;

struct Stream {
    /// The plugin (root context) the stream belongs to: its configuration applies.
    root: u32,
    secrets: Vec<Vec<u8>>,
    window: usize,
    req: Capture,
    resp: Capture,
    done: bool,
}

#[derive(Default)]
struct Vm {
    /// The configuration of each root context (plugin) of this VM.
    configs: HashMap<u32, Settings>,
    /// The root context of each stream context Envoy created (until it is deleted).
    parents: HashMap<u32, u32>,
    streams: HashMap<u32, Stream>,
}

impl Vm {
    /// A stream's plugin and its configuration.
    fn settings_of(&self, ctx: u32) -> Option<(u32, Settings)> {
        let root = *self.parents.get(&ctx)?;
        Some((root, self.configs.get(&root)?.clone()))
    }
}

thread_local! {
    static VM: RefCell<Vm> = RefCell::new(Vm::default());
}

fn log(level: LogLevel, msg: &str) {
    // SAFETY: a live &str.
    unsafe {
        proxy_log(level as u32, msg.as_ptr(), msg.len());
    }
}

/// proxy-wasm's `BufferType::HttpResponseBody` (keygate's own list has no use for it).
const HTTP_RESPONSE_BODY: u32 = 1;

fn buffer(kind: u32, start: usize, max: usize) -> Option<Vec<u8>> {
    let (mut p, mut n) = (null_mut(), 0usize);
    // SAFETY: valid out-pointers; the host allocates the result with proxy_on_memory_allocate.
    let st = unsafe { proxy_get_buffer_bytes(kind, start, max, &mut p, &mut n) };
    (st == STATUS_OK).then(|| take(p, n))
}

fn header(map: MapType, name: &str) -> Option<Vec<u8>> {
    let (mut p, mut n) = (null_mut(), 0usize);
    // SAFETY: valid key slice and out-pointers.
    let st = unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut p, &mut n)
    };
    (st == STATUS_OK && !p.is_null()).then(|| take(p, n))
}

fn request_headers() -> Vec<u8> {
    let (mut p, mut n) = (null_mut(), 0usize);
    // SAFETY: valid out-pointers; the result is ours.
    let st = unsafe { proxy_get_header_map_pairs(MapType::RequestHeaders as u32, &mut p, &mut n) };
    if st == STATUS_OK {
        take(p, n)
    } else {
        Vec::new()
    }
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root: u32, _size: usize) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root: u32, size: usize) -> u32 {
    let raw = buffer(BufferType::PluginConfiguration as u32, 0, size).unwrap_or_default();
    match excerpt::configure(&raw) {
        Ok(s) => VM.with(|vm| {
            // each plugin its own: a listener replaced over LDS brings a new one to this VM
            // while the old one drains (its streams keep the old configuration)
            vm.borrow_mut().configs.insert(root, s);
            log(LogLevel::Info, "keygate excerpt: configured");
            1
        }),
        Err(e) => {
            log(LogLevel::Error, &format!("keygate excerpt: {e}"));
            0
        }
    }
}

/// A stream context (`parent` its plugin's root context) or a root context (`parent` 0).
#[no_mangle]
pub extern "C" fn proxy_on_context_create(ctx: u32, parent: u32) {
    VM.with(|vm| {
        let mut vm = vm.borrow_mut();
        if parent != 0 && vm.parents.len() < MAX_STREAMS {
            vm.parents.insert(ctx, parent);
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(ctx: u32, _headers: usize, end_of_stream: u32) -> u32 {
    let raw = request_headers();
    VM.with(|vm| {
        let mut vm = vm.borrow_mut();
        let Some((root, s)) = vm.settings_of(ctx) else {
            return;
        };
        if vm.streams.len() >= MAX_STREAMS {
            return;
        }
        let mut pairs: Vec<(&str, &[u8])> = Vec::new();
        keygate::headermap::decode(&raw, |k, v| pairs.push((k, v)));
        let secrets = s.secrets(&pairs);
        let window = s.window(&secrets);
        let mut req = Capture::default();
        if s.request && end_of_stream == 0 {
            req.admitted = Some(s.admit_headers(&pairs));
        }
        req.ended = end_of_stream != 0;
        vm.streams.insert(
            ctx,
            Stream {
                root,
                secrets,
                window,
                req,
                resp: Capture::default(),
                done: false,
            },
        );
    });
    ACTION_CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_request_body(ctx: u32, size: usize, end_of_stream: u32) -> u32 {
    VM.with(|vm| {
        let mut vm = vm.borrow_mut();
        let Some(st) = vm.streams.get_mut(&ctx) else {
            return;
        };
        let want = st.req.push(size, st.window);
        if want > 0 {
            if let Some(chunk) = buffer(BufferType::HttpRequestBody as u32, 0, want) {
                st.req
                    .head
                    .extend_from_slice(&chunk[..chunk.len().min(want)]);
            }
        }
        if end_of_stream != 0 {
            st.req.ended = true;
        }
    });
    ACTION_CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(ctx: u32, _trailers: usize) -> u32 {
    VM.with(|vm| {
        if let Some(st) = vm.borrow_mut().streams.get_mut(&ctx) {
            st.req.ended = true;
        }
    });
    ACTION_CONTINUE
}

/// Sets the filter-state value once per stream, when the response ended.
fn finish(ctx: u32) {
    VM.with(|vm| {
        let mut vm = vm.borrow_mut();
        let Some(s) = vm
            .streams
            .get(&ctx)
            .and_then(|st| vm.configs.get(&st.root))
            .cloned()
        else {
            return;
        };
        let Some(st) = vm.streams.get_mut(&ctx) else {
            return;
        };
        if st.done {
            return;
        }
        st.done = true;
        st.resp.ended = true;
        let req = st.req.finish(&s, &st.secrets);
        let resp = st.resp.finish(&s, &st.secrets);
        if req.is_none() && resp.is_none() {
            return;
        }
        let v = excerpt::render(req.as_ref(), resp.as_ref());
        let name = "keygate_bodies";
        // SAFETY: valid slices (a one-segment path needs no separators).
        unsafe {
            proxy_set_property(name.as_ptr(), name.len(), v.as_ptr(), v.len());
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(ctx: u32, _headers: usize, end_of_stream: u32) -> u32 {
    let record = VM.with(|vm| {
        let vm = vm.borrow();
        vm.streams
            .get(&ctx)
            .and_then(|st| vm.configs.get(&st.root))
            .is_some_and(|s| s.response)
    });
    if record && end_of_stream == 0 {
        let ct = header(MapType::ResponseHeaders, "content-type");
        let ce = header(MapType::ResponseHeaders, "content-encoding");
        VM.with(|vm| {
            let mut vm = vm.borrow_mut();
            let Some(s) = vm
                .streams
                .get(&ctx)
                .and_then(|st| vm.configs.get(&st.root))
                .cloned()
            else {
                return;
            };
            if let Some(st) = vm.streams.get_mut(&ctx) {
                st.resp.admitted = Some(s.admit(ct.as_deref(), ce.as_deref()));
            }
        });
    }
    if end_of_stream != 0 {
        finish(ctx);
    }
    ACTION_CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_body(ctx: u32, size: usize, end_of_stream: u32) -> u32 {
    VM.with(|vm| {
        let mut vm = vm.borrow_mut();
        let Some(st) = vm.streams.get_mut(&ctx) else {
            return;
        };
        let want = st.resp.push(size, st.window);
        if want > 0 {
            if let Some(chunk) = buffer(HTTP_RESPONSE_BODY, 0, want) {
                st.resp
                    .head
                    .extend_from_slice(&chunk[..chunk.len().min(want)]);
            }
        }
    });
    if end_of_stream != 0 {
        finish(ctx);
    }
    ACTION_CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_trailers(ctx: u32, _trailers: usize) -> u32 {
    finish(ctx);
    ACTION_CONTINUE
}

/// The stream is gone (ended, reset, or the listener drained): its state goes with it; a
/// plugin that is gone takes its configuration.
#[no_mangle]
pub extern "C" fn proxy_on_delete(ctx: u32) {
    VM.with(|vm| {
        let mut vm = vm.borrow_mut();
        vm.streams.remove(&ctx);
        vm.parents.remove(&ctx);
        vm.configs.remove(&ctx);
    });
}
