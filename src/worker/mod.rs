//! The worker: what one keygate plugin decides across callbacks, in plain Rust over a [`Host`]
//! (`host::` adapts Envoy to it; the scenario tests drive it with a fake).
//!
//! Per request: phase one from the headers (`crate::gate`), then a verdict from the embedded
//! store, the negative cache, the memo of shared-data cache entries, or a key-service call
//! (joined when one is in flight for the credential, after the failed-authentication throttle),
//! then the owner checks, and the rate limit by this Envoy's count or a fleet engine
//! (`fleet`). A body an owner check reads is held until it is in (`bodies`); the limit of such a
//! request is counted once the body passed. Per plugin, on its tick: the revocation feed
//! (`keyservice`), batched metrics, held bodies.
//!
//! State is per worker thread (one VM each): the compiled config, a memo of decoded cache
//! entries, the bounded negative cache, calls in flight and the requests waiting on them.

mod bodies;
mod fleet;
pub mod host;
mod keyservice;
mod stats;
mod vm;

#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::rc::Rc;

use crate::cache::{self, Lookup, Memo, NegativeCache};
use crate::config::Config;
use crate::flights::Flights;
use crate::gate::{
    push_log_value, Admitted, Decision, Gate, LogFields, Outcome, Pending, RateHeaders, Step,
};
use crate::hash::{credential_id_from_hash, DigestMemo, TagHasher};
use crate::held::{Ended, Held};
use crate::metrics::Metric;
use crate::problem::Kind;
use crate::slots;
use crate::store::{Guesses, Speculative};
use crate::throttle::{client_of, Throttle};
use crate::verdict::{Refusal, Verdict};
use bodies::HeldBody;
use keyservice::{Call, Waiter};
use stats::Stats;

pub use host::{Host, Time};
pub use vm::Vm;

/// What a request callback tells the host: go on, or stop here (the request waits for a
/// verdict, its body, or was answered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Action {
    /// proxy-wasm's `Continue`.
    Continue = 0,
    /// proxy-wasm's `Pause` (StopIteration; for a body chunk, StopIterationAndBuffer).
    Pause = 1,
}

const RESPONSE_HEADERS_SWEEP: usize = 1024;
/// Secrets whose SHA-256 a worker remembers (by keyed tag, never the secret): ~100 KB at most.
const DIGEST_MEMO_ENTRIES: usize = 2048;
const STARTUP_TICK_MS: u32 = 100;
const METRICS_FLUSH_MS: u32 = 1000;
const RESPONSE_HEADERS_MAX_AGE_MS: u64 = 600_000;
const WEB_REPLIES: usize = 64;
/// Access-log tails (`logline`) kept for requests decided after their headers' callback, and
/// how long one is kept (a request waits at most its calls' and its body's timeouts).
const LOG_TAILS: usize = 1024;
const LOG_TAIL_MAX_AGE_MS: u64 = 60_000;

/// What happens to a request once its verdict is known.
enum Next {
    /// Decided already (a refusal, a throttle, a failure of the key service).
    Decided(Decision),
    /// Checks and rate limit still to run.
    Verdict(Pending, Verdict),
}

/// One keygate plugin (an Envoy root context) and everything it keeps across callbacks.
pub struct Worker<H: Host> {
    host: H,
    gate: Rc<Gate>,
    memo: Memo,
    guesses: RefCell<Guesses>,
    digests: DigestMemo,
    negative: NegativeCache,
    flights: Flights<Waiter>,
    calls: HashMap<u32, Call>,
    /// Rate-limit headers for the upstream's response, by stream, with the time they were
    /// stored (entries of streams reset before their response are swept by age).
    response_headers: HashMap<u32, (RateHeaders, Time), BuildHasherDefault<TagHasher>>,
    /// Requests whose body a check reads when it is in (`Allow::body`), with what their limit
    /// needs: bounded, ended (never forgotten) when overdue (`crate::held`).
    held: Held<HeldBody>,
    /// Streams whose held body passed its check at trailers that arrived while the request was
    /// paused: let on from the next tick, outside Envoy's resumption (`on_request_trailers`).
    /// Each came out of `held`, so they are as many as it holds at most.
    resume_soon: Vec<u32>,
    /// The tick period was set to 1 ms for `resume_soon`: the next tick sets it back.
    fast_tick: bool,
    /// When a full `held` was last swept to make room (at most every `ROOM_SWEEP_MS`).
    room_swept: Time,
    /// gRPC-Web denials sent and the `content-type` their response must carry: Envoy drops it
    /// from a local reply without a body, `on_response_headers` puts it back (the last
    /// `WEB_REPLIES` of them; a stream reset before its response leaves nothing that matters).
    web_replies: Vec<(u32, String)>,
    throttle: Option<Throttle>,
    stats: Stats,
    /// The access-log value is written here (kept across requests: no allocation each time).
    log_buf: String,
    /// The request of the headers' callback in progress (`None`: none, or no access-log state),
    /// and its ` path=… request_id=…` (`logline`), appended to its access-log value.
    log_cur: Option<u32>,
    log_tail: String,
    /// Its last access-log value is written (not a request whose body is held).
    log_final: bool,
    /// The tails of requests still undecided when their headers' callback returned (a call, a
    /// held body), by stream, with the time they were kept: taken by their last decision, the
    /// rest swept by age when full; a request that finds no room is logged without them.
    log_tails: HashMap<u32, (String, Time), BuildHasherDefault<TagHasher>>,
    /// The wall clock, read once at the start of the current callback.
    now: Time,
    /// The revocation feed's cursor exists (or there is no feed): verdicts may be cached.
    feed_ready: bool,
    /// The tick period was switched from the startup period to `poll_ms`.
    steady_ticks: bool,
    /// Calls to the fleet's rate-limit engine and the requests waiting on them.
    fleet: fleet::Flights,
    /// Streams ended while their body was held, whichever plugin of the VM held them (`Vm`).
    ended: Rc<RefCell<Ended>>,
}

impl<H: Host> Worker<H> {
    /// A plugin configured with `cfg`; sets the host's tick period.
    pub fn new(host: H, cfg: Config, ended: Rc<RefCell<Ended>>) -> Self {
        let negative_cap = cfg
            .key_service
            .as_ref()
            .map_or(16, |k| k.cache.negative_entries);
        // a worker remembers the digest of each secret it memoizes a verdict for
        let memo_cap = cfg
            .key_service
            .as_ref()
            .map_or(16, |k| k.cache.memo_entries);
        let throttle = cfg.auth_throttle.map(Throttle::new);
        let held = Held::new(cfg.bodies.max_held, cfg.bodies.timeout_ms);
        // the prefix's shared-data tables: the geometry and seed the first VM stored
        let mut notes = Vec::new();
        let tables = slots::establish(host.store(), &cfg.shared_prefix, &cfg.slots, &mut notes);
        for n in &notes {
            log::warn!("{n}");
        }
        if let Some(ks) = cfg.key_service.as_ref() {
            // marks are held for the longest hold of any configuration of the prefix
            cache::register_hold(host.store(), &tables.verdicts, ks.cache.hold_ms);
        }
        let mut w = Worker {
            gate: Rc::new(Gate::with_tables(cfg, tables)),
            memo: Memo::new(memo_cap),
            guesses: RefCell::new(Guesses::default()),
            digests: DigestMemo::new(DIGEST_MEMO_ENTRIES.max(memo_cap)),
            negative: NegativeCache::new(negative_cap),
            flights: Flights::default(),
            calls: HashMap::new(),
            response_headers: HashMap::default(),
            held,
            resume_soon: Vec::new(),
            fast_tick: false,
            room_swept: Time::default(),
            web_replies: Vec::new(),
            throttle,
            stats: Stats::default(),
            log_buf: String::with_capacity(128),
            log_cur: None,
            log_tail: String::with_capacity(64),
            log_final: false,
            log_tails: HashMap::default(),
            now: Time::default(),
            feed_ready: false,
            steady_ticks: false,
            fleet: fleet::Flights::default(),
            ended,
            host,
        };
        w.read_clock();
        // Ticks flush the batched metrics; with a revocation feed they poll it, fast until the
        // feed's cursor is known (see `feed_ready`), then at min(poll_ms, the metrics period).
        let period = w.tick_period_ms();
        w.host.set_tick_period_ms(period);
        w
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Reads the wall clock once for the current callback.
    fn read_clock(&mut self) -> Time {
        self.now = self.host.now();
        self.now
    }

    /// Applies a decision to stream `ctx`. Returns the action for a callback still in progress;
    /// `resume` continues a paused request instead.
    ///
    /// Request headers change one host call per header: a header removed (only those present),
    /// one added per non-empty identity value: rewriting the whole map in one
    /// `proxy_set_header_map_pairs` costs several times more and grows with every header the
    /// client sends (the measured costs: tests/bench/RESULTS.md, "What single calls cost"; rerun them with
    /// `tests/bench/instructions.py`).
    fn apply(&mut self, ctx: u32, d: Decision, resume: bool) -> Action {
        self.apply_then(ctx, d, resume, None)
    }

    /// `apply`, with the limit to count once a held body passed (`Gate::before_body`).
    fn apply_then(
        &mut self,
        ctx: u32,
        d: Decision,
        resume: bool,
        later: Option<Admitted>,
    ) -> Action {
        let log = d.log();
        if self.gate.cfg.access_log_state {
            set_log_fields(&mut self.log_buf, log);
            // the request's path and id (never another request's: none when it has no tail)
            let last = !matches!(&d, Decision::Allow(a) if a.body.is_some());
            if self.log_cur == Some(ctx) {
                self.log_buf.push_str(&self.log_tail);
                self.log_final |= last;
            } else if let Some((tail, _)) = self.log_tails.get(&ctx) {
                self.log_buf.push_str(tail);
                if last {
                    self.log_tails.remove(&ctx);
                }
            }
            self.host.set_log_state(ctx, self.log_buf.as_bytes());
        }
        // a request whose body a check still reads is counted when it is decided
        if !matches!(&d, Decision::Allow(a) if a.body.is_some()) {
            self.stats
                .inc(&mut self.host, Metric::of_outcome(log.decision));
        }
        if log.decision == Outcome::Denied(Kind::RateLimited) {
            self.count_rate_limited(log);
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
                if !self
                    .host
                    .reply(ctx, status, &reply.headers, reply.body.as_bytes())
                {
                    log::error!("keygate: could not send a local reply");
                    self.host.reset(ctx);
                }
                Action::Pause
            }
            Decision::Allow(mut a) => {
                // a body a check reads is held until it is in: with room for it, or the request
                // is refused (a full table never forgets one it holds)
                if let Some(check) = a.body.take() {
                    if let Some(d) = self.hold(ctx, check, &a, resume, later) {
                        return self.apply(ctx, d, resume);
                    }
                }
                let h = &mut self.host;
                for name in &a.remove {
                    h.remove_request_header(ctx, name);
                }
                if let Some(p) = &a.path {
                    h.replace_request_header(ctx, ":path", p);
                }
                for (n, v) in &a.set {
                    h.add_request_header(ctx, n, v);
                }
                if let Some(id) = a.identity.as_deref() {
                    // forged copies were removed above; an empty value, or a header the
                    // operator turned off (no name), is not sent
                    for (n, v) in self.gate.identity_headers(id) {
                        if !n.is_empty() && !v.is_empty() {
                            h.add_request_header(ctx, n, &v);
                        }
                    }
                }
                if let Some(rate) = a.rate {
                    self.keep_rate_headers(ctx, rate);
                }
                if resume {
                    self.host.resume(ctx);
                }
                Action::Continue
            }
        }
    }

    /// One 429 counter per configured plan, and `other`: found by the plan's index.
    fn count_rate_limited(&mut self, log: &LogFields) {
        let plans = &self.gate.cfg.rate.plans;
        match plans.iter().position(|(n, _)| n == log.plan()) {
            Some(i) => self.stats.inc_plan(&mut self.host, i, log.plan()),
            None => self.stats.inc_plan(&mut self.host, plans.len(), "other"),
        }
    }

    /// Keeps the rate-limit headers of stream `ctx` for its response.
    fn keep_rate_headers(&mut self, ctx: u32, rate: RateHeaders) {
        let now = self.now;
        if self.response_headers.len() >= RESPONSE_HEADERS_SWEEP {
            self.response_headers
                .retain(|_, (_, t)| now.ms_since(*t) < RESPONSE_HEADERS_MAX_AGE_MS);
        }
        self.response_headers.insert(ctx, (rate, now));
    }

    /// A request's headers: `has_body` when a body follows them.
    pub fn on_request_headers(
        &mut self,
        ctx: u32,
        headers: &[(&str, &[u8])],
        has_body: bool,
    ) -> Action {
        if !self.gate.cfg.access_log_state {
            return self.request_headers(ctx, headers, has_body);
        }
        self.log_cur = Some(ctx);
        self.log_final = false;
        self.log_tail.clear();
        let action = self.request_headers(ctx, headers, has_body);
        if !self.log_final {
            self.keep_log_tail(ctx);
        }
        self.log_cur = None;
        action
    }

    /// Keeps the current request's access-log tail for its later decisions.
    fn keep_log_tail(&mut self, ctx: u32) {
        if self.log_tails.len() >= LOG_TAILS {
            let now = self.now;
            self.log_tails
                .retain(|_, (_, t)| now.ms_since(*t) < LOG_TAIL_MAX_AGE_MS);
            if self.log_tails.len() >= LOG_TAILS {
                return;
            }
        }
        self.log_tails
            .insert(ctx, (self.log_tail.clone(), self.now));
    }

    /// The current request's access-log tail (`logline`): its path and id with the credential
    /// it presents (`verify`'s) replaced; for a request decided before its credential was read
    /// (public, closed, refused), every credential its headers carry (`excerpt::presented`).
    fn note_request(&mut self, headers: &[(&str, &[u8])], verify: Option<&Pending>) {
        if self.log_cur.is_none() {
            return;
        }
        if let Some(p) = verify {
            let secret = [p.credential.secret.as_bytes()];
            let id = p.request_id.as_deref();
            crate::logline::push_request(&mut self.log_tail, Some(&p.path), id, &secret);
            return;
        }
        let (mut path, mut id) = (None, None);
        for &(n, v) in headers {
            match n {
                ":path" => path = Some(v),
                "x-request-id" => id = (v.len() <= 128).then_some(v),
                _ => {}
            }
        }
        let c = &self.gate.cfg.credentials;
        let query = c.query_param.as_deref().unwrap_or_default();
        let presented = crate::excerpt::presented(headers, &c.api_key_headers, query);
        let secrets: Vec<&[u8]> = presented.iter().map(Vec::as_slice).collect();
        crate::logline::push_request(&mut self.log_tail, path, id, &secrets);
    }

    fn request_headers(&mut self, ctx: u32, headers: &[(&str, &[u8])], has_body: bool) -> Action {
        self.read_clock();
        let gate = self.gate.clone();
        let pending = match gate.begin_request(headers, has_body) {
            Step::Done(d) => {
                self.note_request(headers, None);
                if let Outcome::Denied(
                    Kind::CredentialMalformed
                    | Kind::CredentialConflict
                    | Kind::CredentialTooLarge
                    | Kind::RequestAmbiguous,
                ) = d.log().decision
                {
                    let client = self.client(ctx);
                    self.note_failure(&client);
                }
                return self.apply(ctx, d, false);
            }
            Step::Verify(p) => p,
        };
        self.note_request(headers, Some(&pending));
        let now = self.now;
        // one SHA-256 of the secret (memoized per worker) serves the embedded store and the
        // cache id
        let secret_sha256 = self.digests.sha256(pending.credential.secret.as_bytes());
        if let Some(v) = gate.embedded_verdict(&pending, &secret_sha256, now.secs()) {
            let next = self.conclude(ctx, pending, v);
            return self.run(ctx, next, false);
        }
        let Some(ks) = gate.cfg.key_service.as_ref() else {
            // unreachable in practice: embedded_verdict only defers when a service is configured
            let next = self.conclude(ctx, pending, Verdict::Refused(Refusal::Unknown));
            return self.run(ctx, next, false);
        };
        let c = &pending.credential;
        // the secret's verdict is found by its digest; with no user that is the credential's
        // id too (with a Basic user, the id names the pair: refusals and calls are per pair)
        let entry = secret_sha256;
        let id = match c.user.as_deref() {
            None => entry,
            user => credential_id_from_hash(user, &secret_sha256),
        };
        if let Some(r) = self.negative.get(&id, now.ms()) {
            self.stats.inc(&mut self.host, Metric::CacheNegativeHit);
            let next = self.conclude(ctx, pending, Verdict::Refused(r));
            return self.run(ctx, next, false);
        }
        let table = &gate.tables.verdicts;
        let tag = self.digests.verdict_tag(&entry, |d| table.tag(d));
        let looked = self.memo.lookup(
            self.host.store(),
            table,
            tag,
            c.user.as_deref(),
            now.ms(),
            ks.cache.recheck_ms,
        );
        let stale = match looked {
            Lookup::Fresh(v) => {
                self.stats.inc(&mut self.host, Metric::CacheHit);
                let next = self.conclude(ctx, pending, v);
                return self.run(ctx, next, false);
            }
            Lookup::Stale(v) => Some(v),
            Lookup::Miss => {
                // a key that cannot be one the service issued: refused here, no call, nothing
                // cached (a cached or stale verdict above was valid, so in the format)
                if crate::keyformat::refused_locally(ks.key_format.as_deref(), &c.secret) {
                    let next = self.conclude(ctx, pending, Verdict::Refused(Refusal::Unknown));
                    return self.run(ctx, next, false);
                }
                None
            }
        };
        self.stats.inc(&mut self.host, Metric::CacheMiss);
        // A client over its failed-authentication budget gets no call to the key service. The
        // attempt is counted now (refunded if the key turns out valid), so concurrent misses
        // cannot overshoot the budget while their calls are in flight.
        let client = self.client(ctx);
        if let Some(t) = self.throttle.as_mut() {
            if let Some(wait) = t.blocked(&client, now.us()) {
                let d = gate.throttled(&pending, wait);
                return self.apply(ctx, d, false);
            }
            t.record_failure(&client, now.us());
        }
        let waiter = Waiter {
            pending,
            stale,
            client,
        };
        self.verify(ctx, id, entry, waiter)
    }

    /// The client's address (throttle on: the property is read only then).
    fn client(&mut self, ctx: u32) -> Vec<u8> {
        if self.throttle.is_none() {
            return Vec::new();
        }
        client_of(&self.host.client_address(ctx)).to_vec()
    }

    /// Records a failed authentication for `client` (throttle on).
    fn note_failure(&mut self, client: &[u8]) {
        let now_us = self.now.us();
        if let Some(t) = self.throttle.as_mut() {
            t.record_failure(client, now_us);
        }
    }

    /// The decision once a verdict is known. A refusal counts against the client's
    /// failed-authentication budget; over budget, the answer is 429 instead of 401.
    fn conclude(&mut self, ctx: u32, pending: Pending, v: Verdict) -> Next {
        if matches!(v, Verdict::Refused(_)) && self.throttle.is_some() {
            let client = self.client(ctx);
            let now_us = self.now.us();
            if let Some(wait) = self
                .throttle
                .as_ref()
                .and_then(|t| t.blocked(&client, now_us))
            {
                return Next::Decided(self.gate.throttled(&pending, wait));
            }
            self.note_failure(&client);
        }
        Next::Verdict(pending, v)
    }

    /// The store the token buckets go through: the host's shared data, with this worker's
    /// guesses of its own last writes (`store::Speculative`: one host call a request instead of
    /// two).
    fn buckets(&self) -> Speculative<'_> {
        Speculative::new(self.host.store(), &self.guesses, self.now.ms())
    }

    /// The upstream's response headers: the request's rate-limit headers are added; a request
    /// whose body was still held is refused instead (the upstream answered on the headers alone).
    pub fn on_response_headers(&mut self, ctx: u32) -> Action {
        if let Some(h) = self.held.take(ctx) {
            self.read_clock();
            self.response_headers.remove(&ctx);
            return self.end_held(ctx, &h, crate::gate::Unchecked::UpstreamFirst);
        }
        if let Some((rate, _)) = self.response_headers.remove(&ctx) {
            let h = &mut self.host;
            rate.for_each(|n, v| h.add_response_header(ctx, n, v));
        }
        if !self.web_replies.is_empty() {
            if let Some(i) = self.web_replies.iter().position(|(c, _)| *c == ctx) {
                let (_, ct) = self.web_replies.swap_remove(i);
                self.host
                    .replace_response_header(ctx, "content-type", ct.as_bytes());
            }
        }
        Action::Continue
    }

    /// Whether this plugin holds state of stream `ctx` (a body it waits for, headers for its
    /// response, a call it waits on).
    pub fn holds(&self, ctx: u32) -> bool {
        self.held.contains(ctx)
            || self.resume_soon.contains(&ctx)
            || self.response_headers.contains_key(&ctx)
            || self.flights.is_waiting(ctx)
    }

    /// Nothing in flight and no stream waiting: a retired plugin may go.
    pub fn idle(&self) -> bool {
        self.calls.is_empty()
            && self.held.is_empty()
            && self.resume_soon.is_empty()
            && self.response_headers.is_empty()
            && self.fleet.is_empty()
    }

    /// The answer to call `token` (or the host's failure of it).
    pub fn on_call_response(&mut self, token: u32, body_size: usize) {
        self.read_clock();
        if self.fleet.owns(token) {
            return self.fleet_response(token, body_size);
        }
        self.key_service_response(token, body_size);
    }

    /// The plugin's tick: held bodies let on or ended, metrics flushed, and (unless `retired`:
    /// replaced by a new configuration, it only finishes what it holds) the revocation feed.
    pub fn on_tick(&mut self, retired: bool) {
        self.read_clock();
        self.tend_held();
        if retired {
            self.stats.flush(&mut self.host);
        } else {
            self.tick();
        }
    }

    /// A retired plugin's share of another root's tick: what it holds is tended; whether it
    /// holds nothing any more (then it flushed its metrics and may go).
    pub fn sweep_retired(&mut self) -> bool {
        self.read_clock();
        self.resume_pending();
        self.sweep_held(bodies::HELD_PROBE_AFTER_MS);
        let idle = self.idle();
        if idle {
            self.stats.flush(&mut self.host);
        }
        idle
    }
}

/// One filter-state value for the access log, `%FILTER_STATE(wasm.keygate:PLAIN)%`, in logfmt:
/// `decision=allowed key_id=k1 account=acme plan=free` (`-` for none), then the request's
/// ` path=… request_id=…` (`logline`, appended by `apply_then`). One host call a request:
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
}
