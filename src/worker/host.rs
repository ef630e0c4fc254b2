//! The seam between the worker and the proxy it runs in: what the worker asks of its host, and
//! the one time type it counts in. `host::` implements it for Envoy (the proxy-wasm ABI); the
//! scenario tests implement it with a fake (a memory store, a manual clock, recorded calls).
//!
//! Streams are named by their context id. The host makes a stream current itself when an
//! operation needs it (Envoy's effective context): the worker never switches contexts. Calls
//! belong to the plugin (Envoy's root context) whatever stream asked for them.

use crate::metrics::Type;
use crate::store::SharedStore;

/// An instant on the host's wall clock: nanoseconds since the Unix epoch. Read once per
/// callback; every unit the core takes (s, ms, µs, ns) is a method, never a hand conversion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    pub const fn from_ns(ns: u64) -> Time {
        Time(ns)
    }

    pub const fn from_ms(ms: u64) -> Time {
        Time(ms.saturating_mul(1_000_000))
    }

    pub const fn ns(self) -> u64 {
        self.0
    }

    pub const fn us(self) -> u64 {
        self.0 / 1_000
    }

    pub const fn ms(self) -> u64 {
        self.0 / 1_000_000
    }

    pub const fn secs(self) -> u64 {
        self.0 / 1_000_000_000
    }

    /// Whole milliseconds from `earlier` to this instant (0 if `earlier` is later: the wall
    /// clock may be stepped back).
    pub const fn ms_since(self, earlier: Time) -> u64 {
        self.ms().saturating_sub(earlier.ms())
    }

    /// This instant `ms` milliseconds later.
    pub const fn plus_ms(self, ms: u64) -> Time {
        Time(self.0.saturating_add(ms.saturating_mul(1_000_000)))
    }
}

/// What the worker asks of the proxy. Implemented once per proxy (`host::Envoy`) and by the
/// tests' fake; the worker is generic over it (static dispatch: nothing on the hot path goes
/// through a vtable).
pub trait Host {
    /// Shared data (Envoy's: one map per VM id, shared by every worker of the process).
    type Store: SharedStore;

    /// The wall clock.
    fn now(&self) -> Time;

    fn store(&self) -> &Self::Store;

    /// The same host for the plugin of root context `root` (a VM may hold several plugins).
    fn for_root(&self, root: u32) -> Self;

    // -- properties

    /// The client's address as the host gives it (`source.address`, e.g. `1.2.3.4:5678`), for
    /// stream `ctx`.
    fn client_address(&mut self, ctx: u32) -> Vec<u8>;

    /// The name of the plugin stream `ctx` was configured for (`plugin_name`).
    fn plugin_name(&mut self, ctx: u32) -> Vec<u8>;

    // -- calls (owned by the plugin, answered through `Worker::on_call_response`)

    /// Dispatches an HTTP call to `cluster`; `None` when the host refused it.
    fn http_call(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u32,
    ) -> Option<u32>;

    /// A header of the answer being delivered.
    fn call_header(&mut self, name: &str) -> Option<Vec<u8>>;

    /// A trailer of the answer being delivered.
    fn call_trailer(&mut self, name: &str) -> Option<Vec<u8>>;

    /// The first `size` bytes of the answer's body.
    fn call_body(&mut self, size: usize) -> Option<Vec<u8>>;

    // -- streams

    /// Whether stream `ctx` is still there (its client may have gone).
    fn alive(&mut self, ctx: u32) -> bool;

    /// Lets a paused request go on.
    fn resume(&mut self, ctx: u32) -> bool;

    /// Answers the request locally; `false` when the host refused.
    fn reply(&mut self, ctx: u32, status: u32, headers: &[(String, String)], body: &[u8]) -> bool;

    /// Resets the stream (both ways).
    fn reset(&mut self, ctx: u32);

    /// The first `max` bytes of the request's body as buffered so far.
    fn request_body(&mut self, ctx: u32, max: usize) -> Option<Vec<u8>>;

    fn remove_request_header(&mut self, ctx: u32, name: &str);
    fn replace_request_header(&mut self, ctx: u32, name: &str, value: &[u8]);
    fn add_request_header(&mut self, ctx: u32, name: &str, value: &str);
    fn remove_request_trailer(&mut self, ctx: u32, name: &str);
    fn add_response_header(&mut self, ctx: u32, name: &str, value: &str);
    fn replace_response_header(&mut self, ctx: u32, name: &str, value: &[u8]);

    /// The stream's value for the access log (`%FILTER_STATE(wasm.keygate:PLAIN)%`).
    fn set_log_state(&mut self, ctx: u32, value: &[u8]);

    // -- the plugin

    fn define_metric(&mut self, kind: Type, name: &str) -> Option<u32>;
    fn increment_metric(&mut self, id: u32, by: i64);
    fn record_metric(&mut self, id: u32, value: u64);

    /// How often the plugin's tick comes.
    fn set_tick_period_ms(&mut self, ms: u32);
}
