//! The no-op proxy-wasm filter for the benchmark: a root context that hands out an HTTP context
//! implementing nothing, so every callback takes the SDK's default (`Action::Continue`).
//!
//! What it measures is the fixed cost of a Rust proxy-wasm 0.2.5 filter: the SDK exports every
//! callback, so Envoy enters the VM for each one a request triggers even though none does work.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot) });
}}

struct NoopRoot;

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Noop))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Noop;

impl Context for Noop {}

impl HttpContext for Noop {}
