//! The host edge: adapts the pure core to proxy-wasm. Only this module imports `proxy_wasm`.
//!
//! Every host call goes through `proxy_wasm::hostcalls` and its `Result` is handled here; the
//! SDK's trait helpers (which `unwrap`) are not used. Header maps are read as bytes
//! (`get_map_bytes`): the string variant panics on a non-UTF-8 header value.

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, Status};

use crate::config;
use crate::gate::{self, Decision, Gate, LogFields};
use crate::store::{SetOutcome, SharedStore, ABSENT_CAS};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { gate: None }) });
}}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

fn now_us() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Envoy shared data behind the core's `SharedStore`.
struct EnvoyStore;

impl SharedStore for EnvoyStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            // Envoy never hands out cas 0 for a live entry; if it ever did, mismatch rather than
            // write blindly (exactness over availability).
            Ok((Some(v), cas)) => Some((v, cas.unwrap_or(ABSENT_CAS))),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> SetOutcome {
        match hostcalls::set_shared_data(key, Some(value), Some(cas)) {
            Ok(()) => SetOutcome::Written,
            Err(Status::CasMismatch) => SetOutcome::CasMismatch,
            Err(_) => SetOutcome::Failed,
        }
    }
}

struct Root {
    gate: Option<Rc<Gate>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(b) => b.unwrap_or_default(),
            Err(_) => {
                log(
                    LogLevel::Error,
                    "keygate: configuration refused: the plugin configuration could not be read",
                );
                return false;
            }
        };
        let mut warnings = Vec::new();
        match config::parse(&bytes, &mut warnings) {
            Ok(cfg) => {
                for w in &warnings {
                    log(LogLevel::Warn, w);
                }
                log(
                    LogLevel::Info,
                    &format!(
                        "keygate: configured ({} embedded keys, {} routes)",
                        cfg.keys.len(),
                        cfg.routes.len()
                    ),
                );
                self.gate = Some(Rc::new(Gate::new(cfg)));
                true
            }
            Err(e) => {
                log(LogLevel::Error, &e.to_string());
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let gate = self.gate.clone()?;
        Some(Box::new(Filter {
            gate,
            replied: false,
            response_headers: Vec::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    gate: Rc<Gate>,
    /// A local reply was sent: Envoy runs the response callbacks on it; add nothing there.
    replied: bool,
    response_headers: Vec<(String, String)>,
}

impl Context for Filter {}

fn set_log_fields(l: &LogFields) {
    let _ = hostcalls::set_property(vec!["keygate.decision"], Some(l.decision.as_bytes()));
    if !l.key_id.is_empty() {
        let _ = hostcalls::set_property(vec!["keygate.key_id"], Some(l.key_id.as_bytes()));
        let _ = hostcalls::set_property(vec!["keygate.account"], Some(l.account.as_bytes()));
        let _ = hostcalls::set_property(vec!["keygate.plan"], Some(l.plan.as_bytes()));
    }
}

impl Filter {
    fn apply(&mut self, d: Decision) -> Action {
        set_log_fields(d.log());
        match d {
            Decision::Deny(reply, _) => {
                let headers: Vec<(&str, &str)> = reply
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                self.replied = true;
                if hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()))
                    .is_err()
                {
                    log(
                        LogLevel::Error,
                        "keygate: could not send a local reply; resetting the stream",
                    );
                    let _ = hostcalls::reset_http_request();
                }
                Action::Pause
            }
            Decision::Allow(a) => {
                for name in &a.remove {
                    let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
                }
                for (n, v) in &a.set {
                    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, n, Some(v));
                }
                if let Some(p) = &a.path {
                    let _ = hostcalls::set_map_value_bytes(
                        MapType::HttpRequestHeaders,
                        ":path",
                        Some(p),
                    );
                }
                self.response_headers = a.response_headers;
                Action::Continue
            }
        }
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
        let d = gate::decide(&self.gate, &headers, &EnvoyStore, now_us());
        self.apply(d)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.replied {
            for (n, v) in &self.response_headers {
                let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, n, v);
            }
        }
        Action::Continue
    }
}
