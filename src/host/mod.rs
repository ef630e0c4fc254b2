//! The host edge: the proxy-wasm callbacks keygate exports, adapting Envoy to the pure core.
//!
//! Exported per request: `proxy_on_request_headers` and `proxy_on_response_headers` (two VM
//! entries; the SDK's dispatcher costs seven), `proxy_on_request_body`, which Envoy enters
//! only for requests with a body (once per chunk; it returns at once unless the route's owner
//! check reads the body), and `proxy_on_request_trailers`, only for requests with trailers.
//! Per plugin: `proxy_on_vm_start`, `proxy_on_configure`, `proxy_on_tick` (revocation feed,
//! held bodies), `proxy_on_http_call_response`.
//!
//! State is per VM (one VM per worker thread): the compiled config, a memo of decoded cache
//! entries, the bounded negative cache, in-flight key-service calls (one per credential per
//! worker; concurrent misses wait on it), and the requests waiting on them.

mod abi;
mod fleet;
mod sys;

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::rc::Rc;

use crate::batch::Batch;
use crate::body::MAX_OWNER_BODY;
use crate::cache::{self, Lookup, Memo, NegativeCache};
use crate::config::{self, KeyServiceConfig, OnFailure};
use crate::contract::{self, ServiceFailure};
use crate::flights::Flights;
use crate::gate::{
    push_log_value, BodyCheck, Decision, Gate, LogFields, Outcome, Pending, RateHeaders, Step,
    Unchecked,
};
use crate::hash::{credential_id_from_hash, Digest32, DigestMemo, TagHasher};
use crate::held::{Ended, Held};
use crate::lease;
use crate::metrics::{self, Metric};
use crate::plugins::{Configured, Plugins};
use crate::problem::Kind;
use crate::store::{Guesses, SetOutcome, SharedStore, Speculative};
use crate::throttle::{client_of, Throttle};
use crate::verdict::{Identity, Refusal, Verdict};
use fleet::Next;

const ACTION_CONTINUE: u32 = 0;
const ACTION_PAUSE: u32 = 1;

/// Envoy shared data behind the core's `SharedStore`.
struct EnvoyStore;

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

fn now_ms() -> u64 {
    abi::now_ns() / 1_000_000
}

struct Waiter {
    pending: Pending,
    /// A stale verdict to serve if the key service fails.
    stale: Option<Verdict>,
    client: Vec<u8>,
}

/// keygate's metrics in Envoy's stats (`crate::metrics` names them). Ids are defined on first
/// use and kept by the metric's index: no hashing or name comparison on the hot path.
struct Metrics {
    ids: [Option<u32>; Metric::COUNT],
    /// Per-request counts by metric id, added to Envoy's counters on the next tick (at most a
    /// second later): one host call a request less. A request counts 1-3 of them.
    pending: Batch,
    /// `keygate.ratelimit.rejected.<plan>` ids by the plan's index in the config.
    by_plan: Vec<Option<u32>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            ids: [None; Metric::COUNT],
            pending: Batch::default(),
            by_plan: Vec::new(),
        }
    }
}

fn metric_type(t: metrics::Type) -> abi::MetricType {
    match t {
        metrics::Type::Counter => abi::MetricType::Counter,
        metrics::Type::Histogram => abi::MetricType::Histogram,
    }
}

impl Metrics {
    fn id(&mut self, m: Metric) -> Option<u32> {
        let slot = self.ids.get_mut(m.index())?;
        if slot.is_none() {
            *slot = abi::define_metric(metric_type(m.kind()), m.name());
        }
        *slot
    }

    /// Counts one, batched until the next tick.
    fn inc(&mut self, m: Metric) {
        if let Some(id) = self.id(m) {
            self.pending.count(id);
        }
    }

    /// Counts one 429 for the plan at `index` in the config (named `plan`; `other` past the
    /// end): the metric's name is built once per plan.
    fn inc_plan(&mut self, index: usize, plan: &str) {
        let id = match self.by_plan.get(index).copied().flatten() {
            Some(id) => id,
            None => {
                let name = format!("keygate.ratelimit.rejected.{plan}");
                let Some(id) = abi::define_metric(abi::MetricType::Counter, &name) else {
                    return;
                };
                if self.by_plan.len() <= index {
                    self.by_plan.resize(index + 1, None);
                }
                if let Some(slot) = self.by_plan.get_mut(index) {
                    *slot = Some(id);
                }
                id
            }
        };
        self.pending.count(id);
    }

    /// Adds `by` now (rare events).
    fn add_now(&mut self, m: Metric, by: i64) {
        if let Some(id) = self.id(m) {
            abi::increment_metric(id, by);
        }
    }

    fn flush(&mut self) {
        self.pending.flush(abi::increment_metric);
    }

    fn record(&mut self, m: Metric, value: u64) {
        if let Some(id) = self.id(m) {
            abi::record_metric(id, value);
        }
    }
}

fn client_address() -> Vec<u8> {
    abi::get_property(&["source", "address"])
        .map(|a| client_of(&a).to_vec())
        .unwrap_or_default()
}

/// A verify call in flight.
struct VerifyCall {
    /// The credential's id (secret and Basic user): flights and refusals are per credential.
    id: Digest32,
    /// The secret's id (no user): the shared-data cache entry.
    entry: Digest32,
    user: Option<String>,
    started_ms: u64,
    /// Whether its verdict may be cached (the revocation feed's cursor is known).
    cacheable: bool,
}

enum Call {
    Verify(VerifyCall),
    Revocations,
}

/// A body held for its owner check: what the check needs, and how the hold began.
struct HeldBody {
    check: BodyCheck,
    id: Rc<Identity>,
    /// The hold began as a paused request resumed (its verdict came from a key-service or
    /// fleet call): Envoy hands over what it buffered meanwhile, trailers included, in one go.
    resumed: bool,
}

struct Plugin {
    root_id: u32,
    gate: Rc<Gate>,
    memo: Memo,
    guesses: RefCell<Guesses>,
    digests: DigestMemo,
    negative: NegativeCache,
    flights: Flights<Waiter>,
    calls: HashMap<u32, Call>,
    /// Rate-limit headers for the upstream's response, by context id, with the time they were
    /// stored (entries of streams reset before their response are swept by age).
    response_headers: HashMap<u32, (RateHeaders, u64), BuildHasherDefault<TagHasher>>,
    /// Requests whose body an owner check reads when it is in (`Allow::body`), with their
    /// identity: bounded, ended (never forgotten) when overdue (`crate::held`).
    held: Held<HeldBody>,
    /// Streams whose held body passed its check at trailers that arrived while the request was
    /// paused: let on from the next tick, outside Envoy's resumption (`on_request_trailers`).
    /// Each came out of `held`, so they are as many as it holds at most.
    resume_soon: Vec<u32>,
    /// The tick period was set to 1 ms for `resume_soon`: the next tick sets it back.
    fast_tick: bool,
    /// When a full `held` was last swept to make room (at most every `ROOM_SWEEP_MS`).
    room_swept_ms: u64,
    /// gRPC-Web denials sent and the `content-type` their response must carry: Envoy drops it
    /// from a local reply without a body, `on_response_headers` puts it back (the last
    /// `WEB_REPLIES` of them; a stream reset before its response leaves nothing that matters).
    web_replies: Vec<(u32, String)>,
    throttle: Option<Throttle>,
    metrics: Metrics,
    /// The access-log value is written here (kept across requests: no allocation each time).
    log_buf: String,
    /// Wall-clock ms read once at the start of the current callback.
    now: u64,
    /// The same instant in ns, as the host gave it: the rate limiters round it themselves, in
    /// the direction their promise needs (a rolling window never sees it rounded down to ms).
    now_ns: u64,
    /// The revocation feed's cursor exists (or there is no feed): verdicts may be cached.
    feed_ready: bool,
    /// The tick period was switched from the startup period to `poll_ms`.
    steady_ticks: bool,
    /// Calls to the fleet's rate-limit engine and the requests waiting on them.
    fleet: fleet::Flights,
}

thread_local! {
        static VM: RefCell<Vm> = RefCell::new(Vm::default());
        /// Streams ended while their body was held, whichever plugin held them: a chunk or
        /// trailers that still come for one are refused, never let through as a stranger's.
        static ENDED: RefCell<Ended> = RefCell::new(Ended::default());
}

fn note_ended(ctx: u32) {
    ENDED.with(|e| {
        if let Ok(mut e) = e.try_borrow_mut() {
            e.note(ctx);
        }
    });
}

/// Whether keygate ended stream `ctx` while it held its body (or cannot tell: then yes).
fn was_ended(ctx: u32) -> bool {
    ENDED.with(|e| e.try_borrow().map_or(true, |e| e.contains(ctx)))
}

const RESPONSE_HEADERS_SWEEP: usize = 1024;
/// Secrets whose SHA-256 a worker remembers (by keyed tag, never the secret): ~100 KB at most.
const DIGEST_MEMO_ENTRIES: usize = 2048;
const STARTUP_TICK_MS: u32 = 100;
const METRICS_FLUSH_MS: u32 = 1000;
const RESPONSE_HEADERS_MAX_AGE_MS: u64 = 600_000;
/// A full table of held bodies is swept for streams that are gone at most this often.
const ROOM_SWEEP_MS: u64 = 100;
const WEB_REPLIES: usize = 64;
/// Held streams older than this are asked after on every tick (is the stream still there?).
const HELD_PROBE_AFTER_MS: u64 = 5_000;

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

extern "C" {
    fn __wasm_call_ctors();
}

#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: the WASI reactor's static constructors, run once before any callback.
    unsafe { __wasm_call_ctors() }
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_id: u32, _size: usize) -> u32 {
    abi::init_logger();
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root_id: u32, size: usize) -> u32 {
    let bytes = if size == 0 {
        Vec::new()
    } else {
        match abi::get_buffer(abi::BufferType::PluginConfiguration, 0, size) {
            Some(b) => b,
            None => {
                log::error!(
                    "keygate: configuration refused: the plugin configuration could not be read"
                );
                return 0;
            }
        }
    };
    let mut warnings = Vec::new();
    let cfg = match config::parse(&bytes, &mut warnings) {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e}");
            return 0;
        }
    };
    for w in &warnings {
        log::warn!("{w}");
    }
    log::info!("keygate: configured ({})", cfg.summary());
    log::info!(
        "keygate: shared data at most {} MiB (slots: {} verdicts, {} counts)",
        cfg.shared_data_bound().div_ceil(1 << 20),
        cfg.slots.verdicts.slots(),
        cfg.slots.states.slots()
    );
    let negative_cap = cfg
        .key_service
        .as_ref()
        .map_or(16, |k| k.cache.negative_entries);
    // Ticks flush the batched metrics; with a revocation feed they poll it, fast until the feed's
    // cursor is known (see `feed_ready`), then at min(poll_ms, the metrics period).
    let feed = cfg
        .key_service
        .as_ref()
        .is_some_and(|k| k.revocations_path.is_some());
    abi::set_tick_period_ms(if feed {
        STARTUP_TICK_MS
    } else {
        METRICS_FLUSH_MS
    });
    let throttle = cfg.auth_throttle.map(Throttle::new);
    let cfg_bodies = cfg.bodies;
    let mut notes = Vec::new();
    let tables = crate::slots::establish(&EnvoyStore, &cfg.shared_prefix, &cfg.slots, &mut notes);
    for n in &notes {
        log::warn!("{n}");
    }
    let plugin = Plugin {
        root_id,
        gate: Rc::new(Gate::with_tables(cfg, tables)),
        memo: Memo::default(),
        guesses: RefCell::new(Guesses::default()),
        digests: DigestMemo::new(DIGEST_MEMO_ENTRIES),
        negative: NegativeCache::new(negative_cap),
        flights: Flights::default(),
        calls: HashMap::new(),
        response_headers: HashMap::default(),
        held: Held::new(cfg_bodies.max_held, cfg_bodies.timeout_ms),
        resume_soon: Vec::new(),
        fast_tick: false,
        room_swept_ms: 0,
        web_replies: Vec::new(),
        throttle,
        metrics: Metrics::default(),
        log_buf: String::with_capacity(128),
        now: 0,
        now_ns: 0,
        feed_ready: false,
        steady_ticks: false,
        fleet: fleet::Flights::default(),
    };
    let name = abi::get_property(&["plugin_name"]).unwrap_or_default();
    VM.with(|vm| {
        let Ok(mut vm) = vm.try_borrow_mut() else { return };
        let shown = String::from_utf8_lossy(&name).into_owned();
        if let Configured::Replaced(old) = vm.configure(root_id, name, plugin) {
            log::info!("keygate: plugin `{shown}` configured again (root {root_id} replaces {old}): new requests use the new configuration; if two filters share this name in one VM, give them distinct names or vm_ids");
        }
    });
    1
}

/// Every keygate plugin configured in this VM (see `crate::plugins`).
type Vm = Plugins<Plugin>;

fn with_root<R>(root: u32, f: impl FnOnce(&mut Plugin) -> R) -> Option<R> {
    VM.with(|vm| {
        vm.try_borrow_mut()
            .ok()
            .and_then(|mut vm| vm.root(root).map(f))
    })
}

fn plugin_name() -> Vec<u8> {
    abi::get_property(&["plugin_name"]).unwrap_or_default()
}

/// The plugin of a new stream: the only one (no host call), or the one named by the stream's
/// `plugin_name` property. keygate does not export `proxy_on_context_create` (a VM entry per
/// request), so this is how a stream finds its root when a VM holds several.
fn with_new_stream<R>(f: impl FnOnce(&mut Plugin) -> R) -> Option<R> {
    VM.with(|vm| vm.try_borrow_mut().ok()?.for_new_stream(plugin_name).map(f))
}

/// The plugin of a later callback of stream `ctx`: a retired plugin (replaced by a
/// reconfiguration) that holds the stream's state keeps it, else as for a new stream.
fn with_stream<R>(ctx: u32, f: impl FnOnce(&mut Plugin) -> R) -> Option<R> {
    VM.with(|vm| {
        vm.try_borrow_mut()
            .ok()?
            .for_stream(ctx, Plugin::holds, plugin_name)
            .map(f)
    })
}

/// One filter-state value for the access log, `%FILTER_STATE(wasm.keygate:PLAIN)%`, in logfmt:
/// `decision=allowed key_id=k1 account=acme plan=free` (`-` for none). One host call a request:
/// four separate properties cost ~2-3 us more per request here (each `set_property` creates a
/// filter-state object in Envoy).
fn set_log_fields(v: &mut String, l: &LogFields) {
    v.clear();
    v.push_str("decision=");
    v.push_str(l.decision.as_str());
    for (k, val) in [
        (" key_id=", l.key_id()),
        (" account=", l.account()),
        (" plan=", l.plan()),
    ] {
        v.push_str(k);
        push_log_value(v, val);
    }
    abi::set_property("keygate", v.as_bytes());
}

impl Plugin {
    /// Applies a decision to the current (effective) stream. Returns the action for a callback
    /// still in progress; `resume` continues a paused request instead.
    ///
    /// Request headers change one host call per header: a header removed (only those present),
    /// one added per non-empty identity value: rewriting the whole map in one
    /// `proxy_set_header_map_pairs` costs several times more and grows with every header the
    /// client sends (the measured costs: tests/bench/RESULTS.md, "What single calls cost"; rerun them with
    /// `tests/bench/instructions.py`).
    fn apply(&mut self, ctx: u32, d: Decision, resume: bool) -> u32 {
        let log = d.log();
        if self.gate.cfg.access_log_state {
            set_log_fields(&mut self.log_buf, log);
        }
        // a request whose body an owner check still reads is counted when it is decided
        if !matches!(&d, Decision::Allow(a) if a.body.is_some()) {
            self.metrics.inc(Metric::of_outcome(log.decision));
        }
        if log.decision == Outcome::Denied(Kind::RateLimited) {
            // one counter per configured plan, and `other`: found by the plan's index
            let plans = &self.gate.cfg.rate.plans;
            match plans.iter().position(|(n, _)| n == log.plan()) {
                Some(i) => self.metrics.inc_plan(i, log.plan()),
                None => self.metrics.inc_plan(plans.len(), "other"),
            }
        }
        match d {
            Decision::Deny(reply, _) => {
                // a gRPC or gRPC-Web denial is a whole trailers-only response, HTTP 200: sent as
                // it is (no gRPC status for Envoy to map, see `Reply::grpc_status`)
                let status = if reply.grpc_status.is_some() {
                    if let Some(ct) = reply
                        .header("content-type")
                        .filter(|ct| ct.starts_with("application/grpc-web"))
                    {
                        if self.web_replies.len() >= WEB_REPLIES {
                            self.web_replies.remove(0);
                        }
                        self.web_replies.push((ctx, ct.to_string()));
                    }
                    200
                } else {
                    reply.status
                };
                if !abi::send_local_response(status, &reply.headers, reply.body.as_bytes(), -1) {
                    log::error!("keygate: could not send a local reply");
                    abi::reset_request();
                }
                ACTION_PAUSE
            }
            Decision::Allow(mut a) => {
                // a body an owner check reads is held until it is in: with room for it, or the
                // request is refused (a full table never forgets one it holds)
                if let (Some(check), Some(id)) = (a.body.take(), a.identity.clone()) {
                    if self.held.is_full() {
                        self.make_room(ctx);
                    }
                    let held = HeldBody {
                        check,
                        id,
                        resumed: resume,
                    };
                    if let Err(h) = self.held.hold(ctx, held, self.now) {
                        let d = self.gate.clone().body_unchecked(
                            &h.check,
                            Some(&h.id),
                            Unchecked::NoRoom,
                        );
                        return self.apply(ctx, d, resume);
                    }
                }
                for name in &a.remove {
                    abi::remove_header(abi::MapType::RequestHeaders, name);
                }
                if let Some(p) = &a.path {
                    abi::replace_header(abi::MapType::RequestHeaders, ":path", p);
                }
                for (n, v) in &a.set {
                    abi::add_header(abi::MapType::RequestHeaders, n, v);
                }
                if let Some(id) = a.identity.as_deref() {
                    // forged copies were removed above; an empty value, or a header the
                    // operator turned off (no name), is not sent
                    for (n, v) in self.gate.identity_headers(id) {
                        if !n.is_empty() && !v.is_empty() {
                            abi::add_header(abi::MapType::RequestHeaders, n, &v);
                        }
                    }
                }
                if let Some(rate) = a.rate {
                    let now = self.now;
                    if self.response_headers.len() >= RESPONSE_HEADERS_SWEEP {
                        self.response_headers.retain(|_, (_, t)| {
                            now.saturating_sub(*t) < RESPONSE_HEADERS_MAX_AGE_MS
                        });
                    }
                    self.response_headers.insert(ctx, (rate, now));
                }
                if resume {
                    abi::continue_request();
                }
                ACTION_CONTINUE
            }
        }
    }

    fn on_request_headers(&mut self, ctx: u32, has_body: bool) -> u32 {
        self.read_clock();
        let map = abi::get_headers(abi::MapType::RequestHeaders);
        map.with_pairs(|headers| self.request(ctx, headers, has_body))
    }

    /// A body chunk. Only requests whose owner check reads the body (`Allow::body`) are held:
    /// Envoy buffers the body until the end of the stream, or until it is longer than an owner
    /// check reads, then it is checked and goes on to the upstream, or the request is refused.
    /// (The request's headers went on already: proxy-wasm in Envoy turns a paused header
    /// callback into "stop all", which withholds the body from the filter too. What the
    /// upstream may do with the headers alone is the shipped configs' `buffer` filter's to
    /// hold: envoy/docs/security.md.)
    fn on_request_body(&mut self, ctx: u32, size: usize, end_of_stream: bool) -> u32 {
        if !self.held.contains(ctx) {
            return ACTION_CONTINUE;
        }
        if !end_of_stream && size <= MAX_OWNER_BODY {
            return ACTION_PAUSE; // StopIterationAndBuffer
        }
        let Some(h) = self.held.take(ctx) else {
            return ACTION_CONTINUE;
        };
        self.now = now_ms();
        let body = abi::get_buffer(
            abi::BufferType::HttpRequestBody,
            0,
            size.min(MAX_OWNER_BODY + 1),
        );
        self.check_held(ctx, &h.check, &h.id, body)
    }

    /// The held body is complete (`body`: what the host handed over, `None` if nothing): the
    /// owner check decides.
    fn check_held(
        &mut self,
        ctx: u32,
        check: &BodyCheck,
        id: &Rc<Identity>,
        body: Option<Vec<u8>>,
    ) -> u32 {
        let gate = self.gate.clone();
        let denial = match body {
            Some(body) => gate.check_body(check, id, &body),
            None => Some(gate.body_unchecked(check, Some(id), Unchecked::Unreadable)),
        };
        match denial {
            Some(deny) => {
                note_ended(ctx);
                self.apply(ctx, deny, false)
            }
            None => {
                self.metrics.inc(Metric::of_outcome(Outcome::Allowed));
                ACTION_CONTINUE
            }
        }
    }

    /// Request trailers: the end of a request whose body ended without `end_of_stream` (an h2
    /// HEADERS frame after the data, HTTP/1.1 chunked trailers). Identity headers (and hidden
    /// credential carriers) are removed from them as from the headers; a held body is checked
    /// now, with the trailers.
    fn on_request_trailers(&mut self, ctx: u32) -> u32 {
        let map = abi::get_headers(abi::MapType::RequestTrailers);
        let gate = self.gate.clone();
        let (remove, changes_body) = map.with_pairs(|pairs| {
            let (remove, changes) = gate.trailers(pairs);
            (
                remove.into_iter().map(str::to_string).collect::<Vec<_>>(),
                changes,
            )
        });
        for n in &remove {
            abi::remove_header(abi::MapType::RequestTrailers, n);
        }
        let Some(h) = self.held.take(ctx) else {
            return ACTION_CONTINUE;
        };
        self.now = now_ms();
        if changes_body {
            note_ended(ctx);
            let d = gate.body_unchecked(&h.check, Some(&h.id), Unchecked::Trailers);
            return self.apply(ctx, d, false);
        }
        let body = abi::get_buffer(abi::BufferType::HttpRequestBody, 0, MAX_OWNER_BODY + 1);
        let action = self.check_held(ctx, &h.check, &h.id, body);
        if action == ACTION_CONTINUE && h.resumed {
            // The body passed, but these trailers may be Envoy's own resumption of the paused
            // request (they came before the verdict): continuing from inside it, Envoy skips
            // the body for every filter after keygate and hands it to the router after the
            // trailers (measured in Envoy 1.40: the upstream got an empty body; behind the
            // buffer filter, `content-length: 0` and then the body's raw bytes, a request of
            // their own to the upstream). So the request stops here and goes on from the next
            // tick, made to come at once, outside that resumption: the body then reaches the
            // filters after keygate before the trailers, as when it had no pause.
            self.resume_soon.push(ctx);
            self.fast_tick = true;
            abi::set_tick_period_ms(1);
            return ACTION_PAUSE;
        }
        action
    }

    /// Lets on the streams of `resume_soon` that are still there. Leaves the effective context
    /// wherever it was last set: the caller restores it.
    fn resume_pending(&mut self) {
        for ctx in std::mem::take(&mut self.resume_soon) {
            if abi::set_effective_context(ctx) {
                abi::continue_request();
            }
        }
    }

    /// The tick period outside `resume_soon`'s one fast tick: fast until the revocation feed's
    /// cursor is known, then `min(poll_ms, the metrics period)` (see `tick`).
    fn tick_period_ms(&self) -> u32 {
        match self.gate.cfg.key_service.as_ref() {
            Some(ks) if ks.revocations_path.is_some() => {
                if self.steady_ticks {
                    u32::try_from(ks.poll_ms)
                        .unwrap_or(u32::MAX)
                        .min(METRICS_FLUSH_MS)
                } else {
                    STARTUP_TICK_MS
                }
            }
            _ => METRICS_FLUSH_MS,
        }
    }

    /// Makes room in a full table of held bodies: streams that are gone leave it, overdue ones
    /// are ended (at most every `ROOM_SWEEP_MS`: a table kept full by live streams costs one
    /// sweep, not one per request). Restores `ctx` as the effective context.
    fn make_room(&mut self, ctx: u32) {
        let now = self.now;
        if now.saturating_sub(self.room_swept_ms) < ROOM_SWEEP_MS {
            return;
        }
        self.room_swept_ms = now;
        self.sweep_held(now, 0);
        abi::set_effective_context(ctx);
    }

    /// Ends every held stream past `bodies.timeout_ms` (408) and forgets those of held streams
    /// older than `probe_after_ms` that the host no longer knows (the client went away). Leaves
    /// the effective context wherever it was last set: the caller restores it.
    fn sweep_held(&mut self, now: u64, probe_after_ms: u64) {
        if self.held.is_empty() {
            return;
        }
        for ctx in self.held.overdue(now) {
            let Some(h) = self.held.take(ctx) else {
                continue;
            };
            if abi::set_effective_context(ctx) {
                note_ended(ctx);
                let d =
                    self.gate
                        .clone()
                        .body_unchecked(&h.check, Some(&h.id), Unchecked::TimedOut);
                self.apply(ctx, d, false);
            }
        }
        for ctx in self.held.older_than(now, probe_after_ms) {
            if !abi::set_effective_context(ctx) {
                self.held.take(ctx);
            }
        }
    }

    fn request(&mut self, ctx: u32, headers: &[(&str, &[u8])], has_body: bool) -> u32 {
        let gate = self.gate.clone();
        let pending = match gate.begin_request(headers, has_body) {
            Step::Done(d) => {
                if let Outcome::Denied(
                    Kind::CredentialMalformed
                    | Kind::CredentialConflict
                    | Kind::CredentialTooLarge
                    | Kind::RequestAmbiguous,
                ) = d.log().decision
                {
                    self.note_failure(&client_address());
                }
                return self.apply(ctx, d, false);
            }
            Step::Verify(p) => p,
        };
        let now = self.now;
        // one SHA-256 of the secret (memoized per worker) serves the embedded store and the
        // cache id
        let secret_sha256 = self.digests.sha256(pending.credential.secret.as_bytes());
        if let Some(v) = gate.embedded_verdict(&pending, &secret_sha256, now / 1000) {
            let next = self.conclude(pending, v, now);
            return self.run(ctx, next, false);
        }
        let Some(ks) = gate.cfg.key_service.as_ref() else {
            // unreachable in practice: embedded_verdict only defers when a service is configured
            let next = self.conclude(pending, Verdict::Refused(Refusal::Unknown), now);
            return self.run(ctx, next, false);
        };
        let c = &pending.credential;
        // the secret's id without a user is memoized with its digest; with no user it is the
        // credential's id too
        let entry = self.digests.entry_id(&secret_sha256);
        let id = match c.user.as_deref() {
            None => entry,
            user => credential_id_from_hash(user, &secret_sha256),
        };
        if let Some(r) = self.negative.get(&id, now) {
            self.metrics.inc(Metric::CacheNegativeHit);
            let next = self.conclude(pending, Verdict::Refused(r), now);
            return self.run(ctx, next, false);
        }
        let key = || cache::entry_key(&gate.tables.verdicts, &entry);
        let user = c.user.as_deref();
        let stale = match self
            .memo
            .lookup(&EnvoyStore, key, &entry, user, now, ks.cache.recheck_ms)
        {
            Lookup::Fresh(v) => {
                self.metrics.inc(Metric::CacheHit);
                let next = self.conclude(pending, v, now);
                return self.run(ctx, next, false);
            }
            Lookup::Stale(v) => Some(v),
            Lookup::Miss => {
                // a key that cannot be one the service issued: refused here, no call, nothing
                // cached (a cached or stale verdict above was valid, so in the format)
                if crate::keyformat::refused_locally(ks.key_format.as_deref(), &c.secret) {
                    let next = self.conclude(pending, Verdict::Refused(Refusal::Unknown), now);
                    return self.run(ctx, next, false);
                }
                None
            }
        };
        self.metrics.inc(Metric::CacheMiss);
        // A client over its failed-authentication budget gets no call to the key service. The
        // attempt is counted now (refunded if the key turns out valid), so concurrent misses
        // cannot overshoot the budget while their calls are in flight.
        let client = client_address();
        if let Some(t) = self.throttle.as_mut() {
            if let Some(wait) = t.blocked(&client, now * 1000) {
                let d = gate.throttled(&pending, wait);
                return self.apply(ctx, d, false);
            }
            t.record_failure(&client, now * 1000);
        }
        let waiter = Waiter {
            pending,
            stale,
            client,
        };
        // Join a call already in flight for this credential, unless it is overdue.
        let waiter = match self
            .flights
            .join(&id, ctx, waiter, now, ks.timeout_ms + 1000)
        {
            Ok(()) => return ACTION_PAUSE,
            Err(w) => w,
        };
        let body = contract::verify_request_body(&waiter.pending.credential);
        match self.dispatch(ctx, ks, &ks.verify_path, "POST", &body) {
            Some(token) => {
                self.metrics.inc(Metric::KeyServiceCalls);
                let cacheable = self.feed_ready();
                let user = waiter.pending.credential.user.clone();
                self.calls.insert(
                    token,
                    Call::Verify(VerifyCall {
                        id,
                        entry,
                        user,
                        started_ms: now,
                        cacheable,
                    }),
                );
                self.flights.started(id, ctx, waiter, now);
                ACTION_PAUSE
            }
            None => {
                self.metrics.inc(Metric::KeyServiceDispatchFailed);
                // requests still waiting on an overdue call for this credential fail with us
                self.settle_flight(&id, |p, w| p.failed(w, ServiceFailure::NoResponse));
                abi::set_effective_context(ctx);
                let next = self.failed(waiter, ServiceFailure::NoResponse);
                self.run(ctx, next, false)
            }
        }
    }

    /// Reads the wall clock once for the current callback (`now`, `now_ns`); returns it in ms.
    fn read_clock(&mut self) -> u64 {
        let ns = abi::now_ns();
        self.now_ns = ns;
        self.now = ns / 1_000_000;
        self.now
    }

    /// The store the token buckets go through: Envoy shared data, with this worker's guesses of
    /// its own last writes (`store::Speculative`: one host call a request instead of two).
    fn buckets(&self, now_ms: u64) -> Speculative<'_> {
        Speculative::new(&EnvoyStore, &self.guesses, now_ms)
    }

    /// Records a failed authentication for `client` (throttle on).
    fn note_failure(&mut self, client: &[u8]) {
        let now_us = self.now * 1000;
        if let Some(t) = self.throttle.as_mut() {
            t.record_failure(client, now_us);
        }
    }

    /// The decision once a verdict is known. A refusal counts against the client's
    /// failed-authentication budget; over budget, the answer is 429 instead of 401.
    fn conclude(&mut self, pending: Pending, v: Verdict, now: u64) -> Next {
        let gate = self.gate.clone();
        if matches!(v, Verdict::Refused(_)) && self.throttle.is_some() {
            let client = client_address();
            if let Some(wait) = self
                .throttle
                .as_ref()
                .and_then(|t| t.blocked(&client, now * 1000))
            {
                return Next::Decided(gate.throttled(&pending, wait));
            }
            self.note_failure(&client);
        }
        Next::Verdict(pending, v)
    }

    /// Dispatches a call owned by the root context, then restores `ctx` as the effective one.
    fn dispatch(
        &self,
        ctx: u32,
        ks: &KeyServiceConfig,
        path: &str,
        method: &str,
        body: &[u8],
    ) -> Option<u32> {
        if ctx != self.root_id {
            abi::set_effective_context(self.root_id);
        }
        let mut headers = vec![
            (":method", method),
            (":path", path),
            (":authority", ks.authority.as_str()),
            ("x-keygate-contract", "1"),
        ];
        if !body.is_empty() {
            headers.push(("content-type", "application/json"));
        }
        let timeout = u32::try_from(ks.timeout_ms).unwrap_or(u32::MAX);
        let token = abi::http_call(&ks.cluster, &headers, body, timeout);
        if ctx != self.root_id {
            abi::set_effective_context(ctx);
        }
        if token.is_none() {
            log::warn!(
                "keygate: the key service call could not be dispatched (check key_service.cluster)"
            );
        }
        token
    }

    /// The decision when the key service failed: a stale verdict, fail-open, or 503.
    fn failed(&mut self, w: Waiter, f: ServiceFailure) -> Next {
        let gate = self.gate.clone();
        let now = now_ms();
        if let Some(v) = w.stale {
            self.metrics.inc(Metric::CacheStaleServed);
            return Next::Verdict(w.pending, v.at(now / 1000));
        }
        Next::Decided(match gate.cfg.key_service.as_ref() {
            Some(ks) if ks.on_failure == OnFailure::Open => gate.fail_open(w.pending, f.as_str()),
            Some(ks) => gate.unavailable(&w.pending, ks.retry_after_s),
            None => gate.unavailable(&w.pending, 1),
        })
    }

    fn call_response(&mut self, token: u32, body_size: usize) {
        if self.fleet.owns(token) {
            return self.fleet_response(token, body_size);
        }
        let Some(call) = self.calls.remove(&token) else {
            return;
        };
        let Some(ks) = self.gate.cfg.key_service.clone() else {
            return;
        };
        let status =
            abi::get_header(abi::MapType::HttpCallResponseHeaders, ":status").and_then(|s| {
                std::str::from_utf8(&s)
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
            });
        let body = if body_size > ks.max_response_bytes {
            None
        } else if body_size == 0 {
            Some(Vec::new())
        } else {
            abi::get_buffer(abi::BufferType::HttpCallResponseBody, 0, body_size)
        };
        match call {
            Call::Verify(call) => {
                self.metrics.record(
                    Metric::KeyServiceLatency,
                    now_ms().saturating_sub(call.started_ms),
                );
                self.verify_response(&ks, call, status, body)
            }
            Call::Revocations => self.revocations_response(&ks, status, body),
        }
    }

    fn verify_response(
        &mut self,
        ks: &KeyServiceConfig,
        call: VerifyCall,
        status: Option<u32>,
        body: Option<Vec<u8>>,
    ) {
        let now = self.read_clock();
        let id = call.id;
        let mut result = match body {
            None => Err(ServiceFailure::BodyTooLarge),
            Some(b) => contract::parse_verify(status, &b),
        };
        let gate = self.gate.clone();
        let mut unsure = false;
        if let Ok(a) = result.as_mut() {
            if let (Verdict::Valid(identity), true) = (&a.verdict, call.cacheable) {
                let key = cache::entry_key(&gate.tables.verdicts, &call.entry);
                let binding = cache::Binding::of(call.user.as_deref(), a.user_bound);
                let stored = cache::store_valid(
                    &EnvoyStore,
                    &key,
                    cache::Offer {
                        identity,
                        binding,
                        ttl_hint_s: a.ttl_hint_s,
                        started_ms: call.started_ms,
                    },
                    &ks.cache,
                    now,
                );
                self.memo.forget(&call.entry);
                if stored == cache::Stored::Revoked {
                    // revoked while the answer was on its way: a verdict older than a
                    // revocation never wins
                    a.verdict = Verdict::Refused(Refusal::Revoked);
                    a.ttl_hint_s = None;
                }
                if stored == cache::Stored::Unsure {
                    // older than a revocation whose mark was evicted: not used, nothing cached
                    self.metrics.add_now(Metric::SlotsVerdictsUnsure, 1);
                    unsure = true;
                }
            }
        }
        if unsure {
            let retry = ks.retry_after_s;
            self.settle_flight(&id, |p, w| {
                let gate = p.gate.clone();
                Next::Decided(gate.unavailable(&w.pending, retry))
            });
            abi::set_effective_context(self.root_id);
            return;
        }
        match &result {
            Ok(a) => match &a.verdict {
                Verdict::Valid(_) if call.cacheable => {
                    self.negative.remove(&id);
                }
                Verdict::Valid(_) => {}
                Verdict::Refused(r) => {
                    let mut ttl = ks.cache.negative_ttl_ms;
                    if let Some(h) = a.ttl_hint_s {
                        ttl = ttl.min(h.saturating_mul(1000));
                    }
                    self.negative.insert(id, *r, now + ttl, now);
                }
            },
            Err(f) => {
                self.metrics.inc(Metric::of_service_failure(*f));
                log::warn!(
                    "keygate: key service failure: {} (status {:?})",
                    f.as_str(),
                    status
                );
            }
        }
        self.settle_flight(&id, |p, w| match &result {
            Ok(a) => {
                // the attempt was counted at dispatch: refund it for a valid key
                let v = a.verdict.clone().at(now / 1000);
                if let (Verdict::Valid(_), Some(t)) = (&v, p.throttle.as_mut()) {
                    t.refund(&w.client, now * 1000);
                }
                Next::Verdict(w.pending, v)
            }
            Err(f) => p.failed(w, *f),
        });
        abi::set_effective_context(self.root_id);
    }

    /// Ends the flight for credential `id`: every request still waiting on it gets `decide`'s
    /// decision and resumes. The caller restores the effective context afterwards.
    fn settle_flight(&mut self, id: &Digest32, mut decide: impl FnMut(&mut Self, Waiter) -> Next) {
        for (ctx, w) in self.flights.settle(id) {
            if !abi::set_effective_context(ctx) {
                continue; // the client went away meanwhile
            }
            let next = decide(self, w);
            self.run(ctx, next, true);
        }
    }

    /// Whether a valid verdict may be cached now. Not before the revocation feed's cursor is
    /// known: a verdict cached earlier could miss a revocation that falls before the cursor the
    /// first poll starts from. Checked when a call is dispatched, so every revocation after the
    /// service's answer has a sequence number past the cursor.
    fn feed_ready(&mut self) -> bool {
        if !self.feed_ready {
            let no_feed = self
                .gate
                .cfg
                .key_service
                .as_ref()
                .is_none_or(|k| k.revocations_path.is_none());
            self.feed_ready = no_feed || EnvoyStore.get(&self.cursor_key()).is_some();
        }
        self.feed_ready
    }

    fn lease_key(&self) -> String {
        format!("{}:rev:lease", self.gate.cfg.shared_prefix)
    }

    fn cursor_key(&self) -> String {
        format!("{}:rev:cursor", self.gate.cfg.shared_prefix)
    }

    /// One worker at a time polls the revocation feed: a lease in shared data taken by CAS.
    fn tick(&mut self) {
        let t = &self.gate.tables;
        for (table, evicted, full) in [
            (
                &t.verdicts,
                Metric::SlotsVerdictsEvicted,
                Metric::SlotsVerdictsFull,
            ),
            (
                &t.states,
                Metric::SlotsStatesReused,
                Metric::SlotsStatesFull,
            ),
        ] {
            let (e, f) = table.counts.take();
            for (m, n) in [(evicted, e), (full, f)] {
                if n > 0 {
                    self.metrics
                        .add_now(m, i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
        }
        self.metrics.flush();
        let Some(ks) = self.gate.cfg.key_service.clone() else {
            return;
        };
        let Some(path) = ks.revocations_path.as_deref() else {
            return;
        };
        if !self.steady_ticks && self.feed_ready() {
            self.steady_ticks = true;
            let period = u32::try_from(ks.poll_ms)
                .unwrap_or(u32::MAX)
                .min(METRICS_FLUSH_MS);
            abi::set_tick_period_ms(period);
        }
        if self.calls.values().any(|c| matches!(c, Call::Revocations)) {
            return;
        }
        let now = now_ms();
        let lease = self.lease_key();
        let until = now + ks.timeout_ms + ks.poll_ms / 2;
        if !lease::take(&EnvoyStore, &lease, now, until) {
            return;
        }
        let since = EnvoyStore
            .get(&self.cursor_key())
            .and_then(|(v, _)| String::from_utf8(v).ok())
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(-1);
        let full = format!("{path}?since={since}");
        if let Some(token) = self.dispatch(self.root_id, &ks, &full, "GET", b"") {
            self.calls.insert(token, Call::Revocations);
        } else {
            lease::release(&EnvoyStore, &lease, 0);
        }
    }

    fn revocations_response(
        &mut self,
        ks: &KeyServiceConfig,
        status: Option<u32>,
        body: Option<Vec<u8>>,
    ) {
        let now = now_ms();
        let parsed = match body {
            None => Err(ServiceFailure::BodyTooLarge),
            Some(b) => contract::parse_revocations(status, &b),
        };
        match parsed {
            Ok(r) => {
                self.metrics.add_now(Metric::RevocationPolls, 1);
                let marked = cache::apply_revocations(
                    &EnvoyStore,
                    &self.gate.tables.verdicts,
                    &ks.cache,
                    &r.revoked,
                    &mut self.memo,
                    &mut self.negative,
                    now,
                );
                EnvoyStore.set(&self.cursor_key(), r.cursor.to_string().as_bytes(), 0);
                if marked > 0 {
                    let n = i64::try_from(marked).unwrap_or(i64::MAX);
                    self.metrics.add_now(Metric::RevocationsMarked, n);
                }
                if !r.revoked.is_empty() {
                    log::info!("keygate: revocation feed: {} revoked keys, {} cached verdicts marked (cursor {})",
                            r.revoked.len(),
                            marked,
                            r.cursor);
                }
                // with more pages, poll again at once; else no worker polls before poll_ms
                if r.more {
                    lease::release(&EnvoyStore, &self.lease_key(), 0);
                    self.tick();
                } else {
                    let next = now.saturating_add(ks.poll_ms);
                    lease::release(&EnvoyStore, &self.lease_key(), next);
                }
            }
            Err(f) => {
                self.metrics.add_now(Metric::RevocationFailures, 1);
                log::warn!("keygate: revocation feed failure: {}", f.as_str());
                let next = now.saturating_add(ks.poll_ms);
                lease::release(&EnvoyStore, &self.lease_key(), next);
            }
        }
    }

    /// Whether this plugin holds state of stream `ctx` (a body it waits for, headers for its
    /// response, a call it waits on).
    fn holds(&self, ctx: u32) -> bool {
        self.held.contains(ctx)
            || self.resume_soon.contains(&ctx)
            || self.response_headers.contains_key(&ctx)
            || self.flights.is_waiting(ctx)
    }

    /// Nothing in flight and no stream waiting: a retired plugin may go.
    fn idle(&self) -> bool {
        self.calls.is_empty()
            && self.held.is_empty()
            && self.resume_soon.is_empty()
            && self.response_headers.is_empty()
            && self.fleet.is_empty()
    }

    fn on_response_headers(&mut self, ctx: u32) -> u32 {
        if let Some(h) = self.held.take(ctx) {
            // the upstream answered on the headers alone, before the body was in and checked:
            // its answer does not reach the client
            self.now = now_ms();
            self.response_headers.remove(&ctx);
            note_ended(ctx);
            let d =
                self.gate
                    .clone()
                    .body_unchecked(&h.check, Some(&h.id), Unchecked::UpstreamFirst);
            return self.apply(ctx, d, false);
        }
        if let Some((rate, _)) = self.response_headers.remove(&ctx) {
            rate.for_each(|n, v| abi::add_header(abi::MapType::ResponseHeaders, n, v));
        }
        if !self.web_replies.is_empty() {
            if let Some(i) = self.web_replies.iter().position(|(c, _)| *c == ctx) {
                let (_, ct) = self.web_replies.swap_remove(i);
                abi::replace_header(abi::MapType::ResponseHeaders, "content-type", ct.as_bytes());
            }
        }
        ACTION_CONTINUE
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(
    ctx: u32,
    _num_headers: usize,
    end_of_stream: u32,
) -> u32 {
    with_new_stream(|p| p.on_request_headers(ctx, end_of_stream == 0)).unwrap_or_else(|| {
        // No configured plugin (cannot happen once on_configure succeeded): never a free pass.
        abi::send_local_response(500, &[], b"keygate is not configured\n", -1);
        ACTION_PAUSE
    })
}

/// A chunk or trailers of a stream keygate ended while it held its body: refused (reset).
fn refuse_ended() -> u32 {
    abi::reset_request();
    ACTION_PAUSE
}

#[no_mangle]
pub extern "C" fn proxy_on_request_body(ctx: u32, body_size: usize, end_of_stream: u32) -> u32 {
    if was_ended(ctx) {
        return refuse_ended();
    }
    with_stream(ctx, |p| {
        p.on_request_body(ctx, body_size, end_of_stream != 0)
    })
    .unwrap_or(ACTION_PAUSE)
}

/// Envoy enters it only for requests that end with trailers: nothing on other requests.
#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(ctx: u32, _num_trailers: usize) -> u32 {
    if was_ended(ctx) {
        return refuse_ended();
    }
    with_stream(ctx, |p| p.on_request_trailers(ctx)).unwrap_or(ACTION_PAUSE)
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(
    ctx: u32,
    _num_headers: usize,
    _end_of_stream: u32,
) -> u32 {
    with_stream(ctx, |p| p.on_response_headers(ctx)).unwrap_or(ACTION_CONTINUE)
}

#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    root: u32,
    token: u32,
    _headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    with_root(root, |p| p.call_response(token, body_size));
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(root: u32) {
    VM.with(|vm| {
        let Ok(mut vm) = vm.try_borrow_mut() else {
            return;
        };
        let retired = vm.is_retired(root);
        let now = now_ms();
        if let Some(p) = vm.root(root) {
            // held bodies: checked ones let on, the overdue ended, those of streams gone forgotten
            p.resume_pending();
            if std::mem::take(&mut p.fast_tick) {
                abi::set_effective_context(root);
                abi::set_tick_period_ms(p.tick_period_ms());
            }
            p.sweep_held(now, HELD_PROBE_AFTER_MS);
            abi::set_effective_context(root);
            if retired {
                // replaced by a new configuration: it only finishes what it holds
                p.metrics.flush();
            } else {
                p.tick();
            }
        }
        // any root's tick sweeps: Envoy may stop ticking a replaced root before it is idle
        if vm.has_retired() {
            vm.sweep(|p| {
                p.resume_pending();
                p.sweep_held(now, HELD_PROBE_AFTER_MS);
                abi::set_effective_context(root);
                let idle = p.idle();
                if idle {
                    p.metrics.flush();
                }
                idle
            });
        }
    });
}
