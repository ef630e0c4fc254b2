//! The fleet tier (`crate::fleet`): once a request is admitted (verdict, scopes, ownership),
//! its limit is counted by this Envoy's bucket (the local tier) or by the fleet's rate-limit
//! engine, per request or from a lease. Calls to the engine are gRPC (`ShouldRateLimit`, framed
//! by `crate::rls`) over an HTTP/2 cluster, owned by the plugin like the key-service calls, with
//! `fleet.timeout_ms`: the host answers 504 at the timeout, so no request waits longer.

use std::collections::HashMap;

use super::{Action, Host, Next, Time, Worker};
use crate::fleet::{self, EngineFailure, FleetConfig, Mode, OnEngineFailure, Spend};
use crate::gate::{Admitted, Decision, Pending};
use crate::metrics::Metric;
use crate::rls;
use crate::verdict::Verdict;

enum Waiting {
    /// One request's own call (per-request mode).
    Request(u32, Box<Admitted>),
    /// A lease for the owner at `key`; the requests wait in `Flights::leases`.
    Lease { retried: bool },
}

struct Call {
    key: String,
    started: Time,
    /// The timeout this call was dispatched with (a request's deadline counts from its arrival:
    /// a call made for requests that waited already gets what is left of their time).
    timeout_ms: u64,
    hits: u32,
    waiting: Waiting,
}

/// A request waiting on its owner's lease call, with the time it arrived at the fleet tier.
struct LeaseWaiter {
    ctx: u32,
    a: Admitted,
    arrived: Time,
}

/// In-flight engine calls of this worker, and the requests waiting on them (by the owner's
/// shared-data key: one lease call per owner per worker at a time).
#[derive(Default)]
pub(super) struct Flights {
    calls: HashMap<u32, Call>,
    leases: HashMap<String, Vec<LeaseWaiter>>,
}

impl Flights {
    pub(super) fn owns(&self, token: u32) -> bool {
        self.calls.contains_key(&token)
    }

    /// No engine call in flight (and so no request waiting on one).
    pub(super) fn is_empty(&self) -> bool {
        self.calls.is_empty() && self.leases.is_empty()
    }
}

type Failed = (Vec<LeaseWaiter>, EngineFailure);

impl<H: Host> Worker<H> {
    /// Runs what is left of a request: applies a decision, or admits it and counts its limit.
    pub(super) fn run(&mut self, ctx: u32, next: Next, resume: bool) -> Action {
        match next {
            Next::Decided(d) => self.apply(ctx, d, resume),
            Next::Verdict(p, v) => self.limit(ctx, p, v, resume),
        }
    }

    /// The verdict is known: scopes and ownership (`Gate::admit`), a body check, then the
    /// limit. A request whose body a check reads goes on now, its body held, and its limit is
    /// counted once the body passed (`Gate::before_body`): refused from its body, it spends
    /// nothing.
    fn limit(&mut self, ctx: u32, p: Pending, v: Verdict, resume: bool) -> Action {
        let gate = self.gate.clone();
        let mut a = match gate.admit(p, v) {
            Ok(a) => a,
            Err(d) => return self.apply(ctx, d, resume),
        };
        if let Some(d) = gate.before_body(&mut a) {
            return self.apply_then(ctx, d, resume, Some(a));
        }
        match self.count(ctx, a) {
            Some(d) => self.apply(ctx, d, resume),
            None => Action::Pause,
        }
    }

    /// Counts an admitted request's limit: this Envoy's bucket, or the fleet's engine (per
    /// request or from a lease). `None`: the request waits for the engine (its answer applies
    /// the decision, `answer_waiter`).
    pub(super) fn count(&mut self, ctx: u32, a: Admitted) -> Option<Decision> {
        let gate = self.gate.clone();
        let fleet = gate.cfg.fleet.as_ref().map(|fc| {
            let mode = gate
                .target(&a)
                .map_or(Mode::Local, |t| fc.mode_for(t.policy));
            (fc, mode)
        });
        match fleet {
            Some((fc, Mode::Request)) => self.per_request(ctx, a, fc),
            Some((fc, Mode::Leased)) => self.leased(ctx, a, fc),
            // no fleet, or a policy it leaves to this Envoy: the local tier
            _ => Some(gate.limit_local(a, &self.buckets(), self.now.ns())),
        }
    }

    /// The owner's fleet entry in shared data (leases, a remembered OVER_LIMIT), named by the
    /// policy and the owner (`state_key`), and the longest any engine time counts for it.
    fn fleet_key(&self, a: &Admitted) -> Option<(String, u64)> {
        let t = self.gate.target(a)?;
        Some((t.lease_key(&self.gate.cfg.shared_prefix), t.window_ms()))
    }

    /// Per-request mode: one `ShouldRateLimit` for this request, unless an OVER_LIMIT for its
    /// owner is remembered.
    fn per_request(&mut self, ctx: u32, a: Admitted, fc: &FleetConfig) -> Option<Decision> {
        let gate = self.gate.clone();
        let now = self.now;
        let Some((key, window_ms)) = self.fleet_key(&a) else {
            return Some(gate.limit_local(a, &self.buckets(), now.ns()));
        };
        if let Some((limit, retry_ms)) = fleet::denied(self.host.store(), &key, now.ms(), window_ms)
        {
            self.stats
                .inc(&mut self.host, Metric::FleetDeniedRemembered);
            return Some(gate.fleet_over_limit(&a, limit, retry_ms, now.us()));
        }
        match self.engine_call(fc, &a, 1, fc.timeout_ms) {
            Some(token) => {
                let call = Call {
                    key,
                    started: now,
                    timeout_ms: fc.timeout_ms,
                    hits: 1,
                    waiting: Waiting::Request(ctx, Box::new(a)),
                };
                self.fleet.calls.insert(token, call);
                None
            }
            None => Some(self.engine_failed(a, EngineFailure::Dispatch)),
        }
    }

    /// Leased mode: a token from the owner's lease, else a lease from the engine (one call per
    /// owner per worker; later requests wait on it). A request's deadline is `fleet.timeout_ms`
    /// after it reached this tier, however long it waits.
    fn leased(&mut self, ctx: u32, a: Admitted, fc: &FleetConfig) -> Option<Decision> {
        let gate = self.gate.clone();
        let now = self.now;
        let Some((key, window_ms)) = self.fleet_key(&a) else {
            return Some(gate.limit_local(a, &self.buckets(), now.ns()));
        };
        let remaining = match fleet::spend(&self.buckets(), &key, now.ms(), window_ms) {
            Spend::Empty { remaining } => remaining,
            spent => return Some(self.spent(a, spent)),
        };
        let w = LeaseWaiter {
            ctx,
            a,
            arrived: now,
        };
        if let Some(waiters) = self.fleet.leases.get_mut(&key) {
            waiters.push(w);
            return None;
        }
        match self.start_lease(fc, key, vec![w], remaining, false) {
            Ok(()) => None,
            // only this request waited: it is answered on its own stack
            Err((waiters, kind)) => {
                let w = waiters.into_iter().next()?;
                Some(self.engine_failed(w.a, kind))
            }
        }
    }

    /// The decision for a spend that found something (a token, a remembered OVER_LIMIT, a
    /// store that failed).
    fn spent(&mut self, a: Admitted, spent: Spend) -> Decision {
        let gate = self.gate.clone();
        let now_us = self.now.us();
        match spent {
            Spend::Spent {
                limit,
                remaining,
                reset_ms,
            } => gate.fleet_allowed(a, limit, Some((remaining, reset_ms)), now_us),
            Spend::Denied { limit, retry_ms } => gate.fleet_over_limit(&a, limit, retry_ms, now_us),
            Spend::Failed | Spend::Empty { .. } => self.engine_failed(a, EngineFailure::Store),
        }
    }

    /// Asks the engine for a lease for `waiters` (oldest first), sized by what it said remains
    /// (`remaining`, else the plan's limit) or exactly `remaining` on the retry of a refused
    /// lease. The call gets what is left of the oldest waiter's time: with none left (or no
    /// call) the waiters are handed back with the failure, for `fleet.on_failure`.
    fn start_lease(
        &mut self,
        fc: &FleetConfig,
        key: String,
        waiters: Vec<LeaseWaiter>,
        remaining: Option<u64>,
        retry: bool,
    ) -> Result<(), Failed> {
        let now = self.now;
        // waiters whose own time is up take `on_failure` now; the call gets what is left of the
        // oldest of the others' time
        let (expired, waiters): (Vec<_>, Vec<_>) = waiters
            .into_iter()
            .partition(|w| w.arrived.plus_ms(fc.timeout_ms).ms() <= now.ms());
        if !expired.is_empty() {
            self.fail_waiters(expired, EngineFailure::Timeout);
        }
        let Some(first) = waiters.first() else {
            return Ok(());
        };
        // Envoy reads a timeout under 1 ms as none: a waiter with less left fails now
        let budget = first.arrived.plus_ms(fc.timeout_ms).ms_since(now);
        let configured = self.gate.target(&first.a).map_or(1, |t| t.limit.requests);
        let hits = if retry {
            u32::try_from(remaining.unwrap_or(1).max(1)).unwrap_or(u32::MAX)
        } else {
            fleet::lease_size(&fc.lease, remaining.unwrap_or(configured))
        };
        let token = if budget >= 1 {
            let a = first.a.clone();
            self.engine_call(fc, &a, hits, budget)
        } else {
            None
        };
        let Some(token) = token else {
            let kind = if budget >= 1 {
                EngineFailure::Dispatch
            } else {
                EngineFailure::Timeout
            };
            return Err((waiters, kind));
        };
        self.stats.inc(&mut self.host, Metric::FleetLeaseCalls);
        self.fleet.leases.insert(key.clone(), waiters);
        let call = Call {
            key,
            started: now,
            timeout_ms: budget,
            hits,
            waiting: Waiting::Lease { retried: retry },
        };
        self.fleet.calls.insert(token, call);
        Ok(())
    }

    /// Every waiter (its stream still there) takes `fleet.on_failure` (the engine failed).
    fn fail_waiters(&mut self, waiters: Vec<LeaseWaiter>, kind: EngineFailure) {
        for w in waiters {
            let after_body = w.a.headers_sent();
            if self.still_waiting(w.ctx, after_body) {
                let d = self.engine_failed(w.a, kind);
                self.answer_waiter(w.ctx, d, after_body);
            }
        }
    }

    /// Dispatches `ShouldRateLimit` for `a`'s descriptor with `hits`, owned by the plugin, with
    /// a timeout of `timeout_ms` (at least 1: Envoy reads 0 as none).
    fn engine_call(
        &mut self,
        fc: &FleetConfig,
        a: &Admitted,
        hits: u32,
        timeout_ms: u64,
    ) -> Option<u32> {
        let gate = self.gate.clone();
        let t = gate.target(a)?;
        let d = fleet::descriptor(t.policy, t.per, t.kind, t.owner);
        let body = rls::encode_request(&fc.domain, &[(d[0].0, &d[0].1), (d[1].0, &d[1].1)], hits);
        let headers = [
            (":method", "POST"),
            (":path", rls::PATH),
            (":authority", fc.authority.as_str()),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ];
        let timeout = u32::try_from(timeout_ms.max(1)).unwrap_or(u32::MAX);
        let token = self.host.http_call(&fc.cluster, &headers, &body, timeout);
        self.stats.inc(&mut self.host, Metric::FleetCalls);
        if token.is_none() {
            log::warn!(
                "keygate: the rate-limit engine call could not be dispatched (check fleet.cluster)"
            );
        }
        token
    }

    /// The engine failed: `fleet.on_failure` decides, never the failure itself.
    fn engine_failed(&mut self, a: Admitted, kind: EngineFailure) -> Decision {
        self.stats
            .inc(&mut self.host, Metric::of_engine_failure(kind));
        let gate = self.gate.clone();
        match gate
            .cfg
            .fleet
            .as_ref()
            .map(|f| (f.on_failure, f.retry_after_s))
        {
            Some((OnEngineFailure::Closed, retry)) => gate.fleet_unavailable(&a, retry),
            _ => {
                self.stats.inc(&mut self.host, Metric::FleetFallbackLocal);
                gate.limit_local(a, &self.buckets(), self.now.ns())
            }
        }
    }

    /// The engine's answer (or the host's failure) to call `token`.
    pub(super) fn fleet_response(&mut self, token: u32, body_size: usize) {
        let Some(call) = self.fleet.calls.remove(&token) else {
            return;
        };
        let took = self.now.ms_since(call.started);
        self.stats
            .record(&mut self.host, Metric::FleetLatency, took);
        let status = self.host.call_header(":status");
        let grpc = if status.as_deref() == Some(b"200") {
            let headers = self.host.call_header("grpc-status");
            let trailers = self.host.call_trailer("grpc-status");
            rls::grpc_status(headers.as_deref(), trailers.as_deref())
        } else {
            None
        };
        let answer = fleet::classify(status.as_deref(), grpc, body_size, took, call.timeout_ms)
            .and_then(|()| {
                let b = self
                    .host
                    .call_body(body_size)
                    .ok_or(EngineFailure::BadBody)?;
                rls::decode_response(&b).map_err(|_| EngineFailure::BadBody)
            });
        if let Err(kind) = answer {
            log::warn!(
                "keygate: rate-limit engine failure: {} after {took} ms",
                kind.as_str()
            );
        }
        match call.waiting {
            Waiting::Request(ctx, a) => {
                let after_body = a.headers_sent();
                if self.still_waiting(ctx, after_body) {
                    let d = self.request_answer(&call.key, *a, answer);
                    self.answer_waiter(ctx, d, after_body);
                }
            }
            Waiting::Lease { retried } => self.lease_answer(call, retried, answer),
        }
    }

    /// Per-request mode: the engine's verdict on one request, its numbers bounded first.
    fn request_answer(
        &mut self,
        key: &str,
        a: Admitted,
        answer: Result<rls::Answer, EngineFailure>,
    ) -> Decision {
        let gate = self.gate.clone();
        let now = self.now;
        let ans = match answer {
            Ok(ans) => ans,
            Err(kind) => return self.engine_failed(a, kind),
        };
        let (configured, window_ms) = gate
            .target(&a)
            .map_or((1, 1000), |t| (t.limit.requests, t.window_ms()));
        let c = fleet::counted(ans.status, configured, window_ms);
        if ans.over_limit {
            self.stats.inc(&mut self.host, Metric::FleetOverLimit);
            let retry_ms = fleet::denial_ms(&c, window_ms, window_ms);
            if c.reset_ms.is_some() {
                let until = now.ms() + retry_ms;
                let store = self.host.store();
                fleet::remember_denial(store, key, until, c.limit, now.ms(), window_ms);
            }
            return gate.fleet_over_limit(&a, c.limit, retry_ms, now.us());
        }
        let remaining = c.remaining.map(|r| (r, c.reset_ms.unwrap_or(window_ms)));
        gate.fleet_allowed(a, c.limit, remaining, now.us())
    }

    /// Leased mode: the engine granted (or refused) a lease. The requests that waited for it
    /// are answered from it directly (the engine counted them in its window, whenever that
    /// ends); what is left goes to the owner's shared entry; requests it does not cover ask
    /// again, within what is left of their own time. A refusal answers every waiter with a 429
    /// and is remembered (at least a second, at most the plan's window).
    fn lease_answer(
        &mut self,
        call: Call,
        retried: bool,
        answer: Result<rls::Answer, EngineFailure>,
    ) {
        let now = self.now;
        let gate = self.gate.clone();
        let Some(fc) = gate.cfg.fleet.as_ref() else {
            return;
        };
        let waiters = self.fleet.leases.remove(&call.key).unwrap_or_default();
        let ans = match answer {
            Ok(ans) => ans,
            Err(kind) => return self.fail_waiters(waiters, kind),
        };
        let (configured, window_ms) = waiters
            .first()
            .and_then(|w| gate.target(&w.a))
            .map_or((1, fc.lease.ttl_ms.max(1000)), |t| {
                (t.limit.requests, t.window_ms())
            });
        let c = fleet::counted(ans.status, configured, window_ms);
        if ans.over_limit {
            // all or nothing: an engine with fewer tokens left than asked refuses the lease;
            // ask once more for exactly what remains
            let left = c.remaining.unwrap_or(0);
            if !retried && left > 0 && left < u64::from(call.hits) && !waiters.is_empty() {
                if let Err((waiters, kind)) =
                    self.start_lease(fc, call.key, waiters, Some(left), true)
                {
                    self.fail_waiters(waiters, kind);
                }
                return;
            }
            self.stats.inc(&mut self.host, Metric::FleetOverLimit);
            let retry_ms = fleet::denial_ms(&c, window_ms.min(fc.lease.ttl_ms), window_ms);
            let until = now.ms() + retry_ms;
            let store = self.host.store();
            let n = fleet::remember_denial(store, &call.key, until, c.limit, now.ms(), window_ms);
            if n > 0 {
                let n = i64::try_from(n).unwrap_or(0);
                self.stats
                    .add_now(&mut self.host, Metric::FleetLeaseStranded, n);
            }
            for w in waiters {
                let after_body = w.a.headers_sent();
                if self.still_waiting(w.ctx, after_body) {
                    let d = gate.fleet_over_limit(&w.a, c.limit, retry_ms, now.us());
                    self.answer_waiter(w.ctx, d, after_body);
                }
            }
            return;
        }
        // tokens belong to the engine's window: they expire at its reset, counted from when the
        // call was sent (never after the engine's own reset), at most the plan's window away
        let life_ms = c.reset_ms.unwrap_or(fc.lease.ttl_ms.min(window_ms));
        let expires = call.started.plus_ms(life_ms);
        let granted = u64::from(call.hits);
        self.stats.add_now(
            &mut self.host,
            Metric::FleetLeaseTokens,
            i64::from(call.hits),
        );
        let reset_ms = expires.ms_since(now);
        let engine_remaining = c.remaining.unwrap_or(0);
        // the waiters still there are served from the grant, in order of arrival
        let mut served = 0u64;
        let mut rest = Vec::new();
        for w in waiters {
            let after_body = w.a.headers_sent();
            if served == granted {
                rest.push(w);
            } else if self.still_waiting(w.ctx, after_body) {
                served += 1;
                let left = (granted - served)
                    .saturating_add(engine_remaining)
                    .min(c.limit);
                let shown = c.remaining.map(|_| (left, reset_ms));
                let d = gate.fleet_allowed(w.a, c.limit, shown, now.us());
                self.answer_waiter(w.ctx, d, after_body);
            }
        }
        // what is left of it goes to the owner's entry, for this replica's next requests
        let leftover = granted - served;
        let store = self.host.store();
        let stranded = fleet::grant(
            store,
            &call.key,
            leftover,
            expires.ms(),
            &c,
            now.ms(),
            window_ms,
        );
        match stranded.unwrap_or(leftover) {
            0 => {}
            n => self.stats.add_now(
                &mut self.host,
                Metric::FleetLeaseStranded,
                i64::try_from(n).unwrap_or(0),
            ),
        }
        // more waiters than tokens: another worker's lease may cover them, else ask again
        let mut uncovered = Vec::new();
        for w in rest {
            match fleet::spend(&self.buckets(), &call.key, now.ms(), window_ms) {
                Spend::Empty { .. } => uncovered.push(w),
                spent => {
                    let after_body = w.a.headers_sent();
                    if self.still_waiting(w.ctx, after_body) {
                        let d = self.spent(w.a, spent);
                        self.answer_waiter(w.ctx, d, after_body);
                    }
                }
            }
        }
        if !uncovered.is_empty() {
            let remaining = c.remaining.or(Some(configured));
            if let Err((waiters, kind)) =
                self.start_lease(fc, call.key, uncovered, remaining, false)
            {
                self.fail_waiters(waiters, kind);
            }
        }
    }
}
