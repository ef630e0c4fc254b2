//! keygate: an API-key gateway that runs inside Envoy as a proxy-wasm HTTP filter.
//!
//! Everything but `host` is the pure core: no host calls (keygate implements the proxy-wasm ABI
//! itself, in `host::abi`), tested natively with `cargo test`.

pub mod batch;
pub mod body;
pub mod cache;
pub mod config;
pub mod conformance;
pub mod contract;
pub mod credential;
pub mod excerpt;
pub mod fleet;
pub mod flights;
pub mod gate;
pub mod hash;
pub mod headermap;
pub mod held;
pub mod json;
pub mod keyformat;
pub mod keystore;
pub mod lease;
pub mod limiter;
pub mod logline;
pub mod metrics;
pub mod path;
pub mod plugins;
pub mod problem;
pub mod query;
pub mod ratelimit;
pub mod rls;
pub mod route;
pub mod slots;
pub mod state_key;
pub mod store;
pub mod throttle;
pub mod verdict;
pub mod window;
pub mod worker;

#[cfg(all(target_arch = "wasm32", feature = "filter"))]
mod host;
