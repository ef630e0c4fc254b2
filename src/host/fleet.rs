//! The host edge of fleet-wide limits (`crate::fleet`): once a request is admitted (verdict,
//! scopes, ownership), its limit is counted by this Envoy's bucket (the local tier) or by the
//! fleet's rate-limit engine, per request or from a lease. Calls to the engine are gRPC
//! (`ShouldRateLimit`, framed by `crate::rls`) over `dispatch_http_call` to an HTTP/2 cluster,
//! owned by the root context like the key-service calls, with `fleet.timeout_ms`: Envoy answers
//! 504 at the timeout, so no request waits longer.

use std::collections::HashMap;

use super::{abi, EnvoyStore, Plugin, ACTION_PAUSE};
use crate::fleet::{self, FleetConfig, Mode, OnEngineFailure, Spend};
use crate::gate::{Admitted, Decision, Pending};
use crate::metrics::Metric;
use crate::rls;
use crate::verdict::Verdict;

/// What happens to a request once its verdict is known.
pub(super) enum Next {
    /// Decided already (a refusal, a throttle, a failure of the key service).
    Decided(Decision),
    /// Checks and rate limit still to run.
    Verdict(Pending, Verdict),
}

enum Waiting {
    /// One request's own call (per-request mode).
    Request(u32, Box<Admitted>),
    /// A lease for the owner at `key`; the requests wait in `Flights::leases`.
    Lease { retried: bool },
}

struct Call {
    key: String,
    started_ms: u64,
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
    arrived_ms: u64,
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

/// Why an engine call failed (its counter): never a verdict.
fn failure_metric(kind: &str) -> Metric {
    match kind {
        "timeout" => Metric::FleetTimeout,
        "status" => Metric::FleetStatus,
        "grpc" => Metric::FleetGrpc,
        "unavailable" => Metric::FleetUnavailable,
        "bad_body" => Metric::FleetBadBody,
        "dispatch" => Metric::FleetDispatchFailed,
        _ => Metric::FleetStoreFailed,
    }
}

impl Plugin {
    /// Runs what is left of a request: applies a decision, or admits it and counts its limit.
    pub(super) fn run(&mut self, ctx: u32, next: Next, resume: bool) -> u32 {
        match next {
            Next::Decided(d) => self.apply(ctx, d, resume),
            Next::Verdict(p, v) => self.limit(ctx, p, v, resume),
        }
    }

    fn limit(&mut self, ctx: u32, p: Pending, v: Verdict, resume: bool) -> u32 {
        let gate = self.gate.clone();
        let (now, now_ns) = (self.now, self.now_ns);
        let Some(fc) = gate.cfg.fleet.as_ref() else {
            // no fleet: the local tier, as before
            let d = gate.finish(p, v, &self.buckets(now), now_ns);
            return self.apply(ctx, d, resume);
        };
        let a = match gate.admit(p, v) {
            Ok(a) => a,
            Err(d) => return self.apply(ctx, d, resume),
        };
        let mode = gate
            .target(&a)
            .map_or(Mode::Local, |t| fc.mode_for(t.policy));
        match mode {
            Mode::Local => {
                let d = gate.limit_local(a, &self.buckets(now), now_ns);
                self.apply(ctx, d, resume)
            }
            Mode::Request => self.per_request(ctx, a, fc, resume),
            Mode::Leased => self.leased(ctx, a, fc, resume, now),
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
    fn per_request(&mut self, ctx: u32, a: Admitted, fc: &FleetConfig, resume: bool) -> u32 {
        let gate = self.gate.clone();
        let (now, now_ns) = (self.now, self.now_ns);
        let Some((key, window_ms)) = self.fleet_key(&a) else {
            let d = gate.limit_local(a, &self.buckets(now), now_ns);
            return self.apply(ctx, d, resume);
        };
        if let Some((limit, retry_ms)) = fleet::denied(&EnvoyStore, &key, now, window_ms) {
            self.metrics.inc(Metric::FleetDeniedRemembered);
            let d = gate.fleet_over_limit(&a, limit, retry_ms, now_ns / 1000);
            return self.apply(ctx, d, resume);
        }
        match self.engine_call(ctx, fc, &a, 1, fc.timeout_ms) {
            Some(token) => {
                self.fleet.calls.insert(
                    token,
                    Call {
                        key,
                        started_ms: now,
                        timeout_ms: fc.timeout_ms,
                        hits: 1,
                        waiting: Waiting::Request(ctx, Box::new(a)),
                    },
                );
                ACTION_PAUSE
            }
            None => {
                let d = self.engine_failed(a, "dispatch");
                self.apply(ctx, d, resume)
            }
        }
    }

    /// Leased mode: a token from the owner's lease, else a lease from the engine (one call per
    /// owner per worker; later requests wait on it). `arrived_ms`: when the request reached the
    /// fleet tier (its deadline is `fleet.timeout_ms` after that, however long it waits).
    fn leased(
        &mut self,
        ctx: u32,
        a: Admitted,
        fc: &FleetConfig,
        resume: bool,
        arrived_ms: u64,
    ) -> u32 {
        let gate = self.gate.clone();
        let (now, now_ns) = (self.now, self.now_ns);
        let Some((key, window_ms)) = self.fleet_key(&a) else {
            let d = gate.limit_local(a, &self.buckets(now), now_ns);
            return self.apply(ctx, d, resume);
        };
        let remaining = match fleet::spend(&self.buckets(now), &key, now, window_ms) {
            Spend::Empty { remaining } => remaining,
            spent => {
                let d = self.spent(a, spent);
                return self.apply(ctx, d, resume);
            }
        };
        let w = LeaseWaiter { ctx, a, arrived_ms };
        if let Some(waiters) = self.fleet.leases.get_mut(&key) {
            waiters.push(w);
            return ACTION_PAUSE;
        }
        match self.start_lease(ctx, fc, key, vec![w], remaining, false) {
            Ok(()) => ACTION_PAUSE,
            Err((waiters, kind)) => {
                // only this request waited: it is answered on its own stack
                let Some(w) = waiters.into_iter().next() else {
                    return ACTION_PAUSE;
                };
                let d = self.engine_failed(w.a, kind);
                self.apply(ctx, d, resume)
            }
        }
    }

    /// The decision for a spend that found something (a token, a remembered OVER_LIMIT, a
    /// store that failed).
    fn spent(&mut self, a: Admitted, spent: Spend) -> Decision {
        let gate = self.gate.clone();
        let now_us = self.now_ns / 1000;
        match spent {
            Spend::Spent {
                limit,
                remaining,
                reset_ms,
            } => gate.fleet_allowed(a, limit, Some((remaining, reset_ms)), now_us),
            Spend::Denied { limit, retry_ms } => gate.fleet_over_limit(&a, limit, retry_ms, now_us),
            Spend::Failed | Spend::Empty { .. } => self.engine_failed(a, "store"),
        }
    }

    /// Asks the engine for a lease for `waiters` (oldest first), sized by what it said remains
    /// (`remaining`, else the plan's limit) or exactly `remaining` on the retry of a refused
    /// lease. The call gets what is left of the oldest waiter's time: with none left (or no
    /// call) the waiters are handed back with the failure's kind, for `fleet.on_failure`.
    /// `current`: the effective context (a request's, or the root's in a callback).
    #[allow(clippy::type_complexity)]
    fn start_lease(
        &mut self,
        current: u32,
        fc: &FleetConfig,
        key: String,
        waiters: Vec<LeaseWaiter>,
        remaining: Option<u64>,
        retry: bool,
    ) -> Result<(), (Vec<LeaseWaiter>, &'static str)> {
        let now = self.now;
        // waiters whose own time is up take `on_failure` now; the call gets what is left of the
        // oldest of the others' time
        let (expired, waiters): (Vec<_>, Vec<_>) = waiters
            .into_iter()
            .partition(|w| w.arrived_ms.saturating_add(fc.timeout_ms) <= now);
        if !expired.is_empty() {
            self.fail_waiters(expired, "timeout");
            // back to the context this call is made from (the calls belong to the root)
            abi::set_effective_context(current);
        }
        let Some(first) = waiters.first() else {
            return Ok(());
        };
        let deadline = first.arrived_ms.saturating_add(fc.timeout_ms);
        // Envoy reads a timeout under 1 ms as none: a waiter with less left fails now
        let budget = deadline.saturating_sub(now);
        let configured = self.gate.target(&first.a).map_or(1, |t| t.limit.requests);
        let hits = if retry {
            u32::try_from(remaining.unwrap_or(1).max(1)).unwrap_or(u32::MAX)
        } else {
            fleet::lease_size(&fc.lease, remaining.unwrap_or(configured))
        };
        let token = if budget >= 1 {
            let a = first.a.clone();
            self.engine_call(current, fc, &a, hits, budget)
        } else {
            None
        };
        let Some(token) = token else {
            let kind = if budget >= 1 { "dispatch" } else { "timeout" };
            return Err((waiters, kind));
        };
        self.metrics.inc(Metric::FleetLeaseCalls);
        self.fleet.leases.insert(key.clone(), waiters);
        self.fleet.calls.insert(
            token,
            Call {
                key,
                started_ms: now,
                timeout_ms: budget,
                hits,
                waiting: Waiting::Lease { retried: retry },
            },
        );
        Ok(())
    }

    /// Every waiter takes `fleet.on_failure` (the engine failed as `kind`).
    fn fail_waiters(&mut self, waiters: Vec<LeaseWaiter>, kind: &str) {
        for w in waiters {
            if abi::set_effective_context(w.ctx) {
                let d = self.engine_failed(w.a, kind);
                self.apply(w.ctx, d, true);
            }
        }
    }

    /// Dispatches `ShouldRateLimit` for `a`'s descriptor with `hits`, owned by the root context,
    /// with a timeout of `timeout_ms` (at least 1: Envoy reads 0 as none).
    fn engine_call(
        &mut self,
        ctx: u32,
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
        if ctx != self.root_id {
            abi::set_effective_context(self.root_id);
        }
        let timeout = u32::try_from(timeout_ms.max(1)).unwrap_or(u32::MAX);
        let token = abi::http_call(&fc.cluster, &headers, &body, timeout);
        if ctx != self.root_id {
            abi::set_effective_context(ctx);
        }
        self.metrics.inc(Metric::FleetCalls);
        if token.is_none() {
            log::warn!(
                "keygate: the rate-limit engine call could not be dispatched (check fleet.cluster)"
            );
        }
        token
    }

    /// The engine failed (`kind`): `fleet.on_failure` decides, never the failure itself.
    fn engine_failed(&mut self, a: Admitted, kind: &str) -> Decision {
        self.metrics.inc(failure_metric(kind));
        let gate = self.gate.clone();
        let (now, now_ns) = (self.now, self.now_ns);
        match gate
            .cfg
            .fleet
            .as_ref()
            .map(|f| (f.on_failure, f.retry_after_s))
        {
            Some((OnEngineFailure::Closed, retry)) => gate.fleet_unavailable(&a, retry),
            _ => {
                self.metrics.inc(Metric::FleetFallbackLocal);
                gate.limit_local(a, &self.buckets(now), now_ns)
            }
        }
    }

    /// The engine's answer (or Envoy's failure) to call `token`.
    pub(super) fn fleet_response(&mut self, token: u32, body_size: usize) {
        let Some(call) = self.fleet.calls.remove(&token) else {
            return;
        };
        let now = self.read_clock();
        self.metrics
            .record(Metric::FleetLatency, now.saturating_sub(call.started_ms));
        // Envoy reports a timeout as UNAVAILABLE too: told apart by the time it took (its timer
        // and the wall clock differ by a few ms)
        let timed_out = now.saturating_sub(call.started_ms) * 10 >= call.timeout_ms * 9;
        let status = abi::get_header(abi::MapType::HttpCallResponseHeaders, ":status");
        let answer = match status.as_deref() {
            Some(b"200") => {
                let grpc = rls::grpc_status(
                    abi::get_header(abi::MapType::HttpCallResponseHeaders, "grpc-status")
                        .as_deref(),
                    abi::get_header(abi::MapType::HttpCallResponseTrailers, "grpc-status")
                        .as_deref(),
                );
                // Envoy answers a gRPC call it could not complete with a gRPC status itself:
                // 14 UNAVAILABLE (no connection, reset), 4 DEADLINE_EXCEEDED
                if grpc == Some(14) && !timed_out {
                    Err("unavailable")
                } else if grpc == Some(4) || grpc == Some(14) {
                    Err("timeout")
                } else if grpc != Some(0) {
                    Err("grpc")
                } else if body_size == 0 || body_size > rls::MAX_RESPONSE_BYTES {
                    Err("bad_body")
                } else {
                    abi::get_buffer(abi::BufferType::HttpCallResponseBody, 0, body_size)
                        .ok_or("bad_body")
                        .and_then(|b| rls::decode_response(&b).map_err(|_| "bad_body"))
                }
            }
            Some(b"504") => Err("timeout"),
            _ => Err("status"),
        };
        if let Err(kind) = answer {
            log::warn!(
                "keygate: rate-limit engine failure: {kind} after {} ms",
                now.saturating_sub(call.started_ms)
            );
        }
        match call.waiting {
            Waiting::Request(ctx, a) => {
                if abi::set_effective_context(ctx) {
                    let d = self.request_answer(&call.key, *a, answer);
                    self.apply(ctx, d, true);
                }
            }
            Waiting::Lease { retried } => self.lease_answer(call, retried, answer),
        }
        abi::set_effective_context(self.root_id);
    }

    /// Per-request mode: the engine's verdict on one request, its numbers bounded first.
    fn request_answer(
        &mut self,
        key: &str,
        a: Admitted,
        answer: Result<rls::Answer, &'static str>,
    ) -> Decision {
        let gate = self.gate.clone();
        let (now, now_us) = (self.now, self.now_ns / 1000);
        let ans = match answer {
            Ok(ans) => ans,
            Err(kind) => return self.engine_failed(a, kind),
        };
        let (configured, window_ms) = gate
            .target(&a)
            .map_or((1, 1000), |t| (t.limit.requests, t.window_ms()));
        let c = fleet::counted(ans.status, configured, window_ms);
        if ans.over_limit {
            self.metrics.inc(Metric::FleetOverLimit);
            let retry_ms = fleet::denial_ms(&c, window_ms, window_ms);
            if c.reset_ms.is_some() {
                fleet::remember_denial(&EnvoyStore, key, now + retry_ms, c.limit, now, window_ms);
            }
            return gate.fleet_over_limit(&a, c.limit, retry_ms, now_us);
        }
        let remaining = c.remaining.map(|r| (r, c.reset_ms.unwrap_or(window_ms)));
        gate.fleet_allowed(a, c.limit, remaining, now_us)
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
        answer: Result<rls::Answer, &'static str>,
    ) {
        let now = self.now;
        let now_us = self.now_ns / 1000;
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
                    self.start_lease(self.root_id, fc, call.key, waiters, Some(left), true)
                {
                    self.fail_waiters(waiters, kind);
                }
                return;
            }
            self.metrics.inc(Metric::FleetOverLimit);
            let retry_ms = fleet::denial_ms(&c, window_ms.min(fc.lease.ttl_ms), window_ms);
            let n = fleet::remember_denial(
                &EnvoyStore,
                &call.key,
                now + retry_ms,
                c.limit,
                now,
                window_ms,
            );
            if n > 0 {
                self.metrics
                    .add_now(Metric::FleetLeaseStranded, i64::try_from(n).unwrap_or(0));
            }
            for w in waiters {
                if abi::set_effective_context(w.ctx) {
                    let d = gate.fleet_over_limit(&w.a, c.limit, retry_ms, now_us);
                    self.apply(w.ctx, d, true);
                }
            }
            return;
        }
        // tokens belong to the engine's window: they expire at its reset, counted from when the
        // call was sent (never after the engine's own reset), at most the plan's window away
        let life_ms = c.reset_ms.unwrap_or(fc.lease.ttl_ms.min(window_ms));
        let expires = call.started_ms + life_ms;
        let granted = u64::from(call.hits);
        self.metrics
            .add_now(Metric::FleetLeaseTokens, i64::from(call.hits));
        let reset_ms = expires.saturating_sub(now);
        let engine_remaining = c.remaining.unwrap_or(0);
        // the waiters still there are served from the grant, in order of arrival
        let mut served = 0u64;
        let mut rest = Vec::new();
        for w in waiters {
            if served == granted {
                rest.push(w);
            } else if abi::set_effective_context(w.ctx) {
                served += 1;
                let left = (granted - served)
                    .saturating_add(engine_remaining)
                    .min(c.limit);
                let shown = c.remaining.map(|_| (left, reset_ms));
                let d = gate.fleet_allowed(w.a, c.limit, shown, now_us);
                self.apply(w.ctx, d, true);
            }
        }
        // what is left of it goes to the owner's entry, for this replica's next requests
        let leftover = granted - served;
        match fleet::grant(
            &EnvoyStore,
            &call.key,
            leftover,
            expires,
            &c,
            now,
            window_ms,
        ) {
            Some(0) => {}
            Some(n) => self
                .metrics
                .add_now(Metric::FleetLeaseStranded, i64::try_from(n).unwrap_or(0)),
            None => self.metrics.add_now(
                Metric::FleetLeaseStranded,
                i64::try_from(leftover).unwrap_or(0),
            ),
        }
        // more waiters than tokens: another worker's lease may cover them, else ask again
        let mut uncovered = Vec::new();
        for w in rest {
            match fleet::spend(&self.buckets(now), &call.key, now, window_ms) {
                Spend::Empty { .. } => uncovered.push(w),
                spent => {
                    if abi::set_effective_context(w.ctx) {
                        let d = self.spent(w.a, spent);
                        self.apply(w.ctx, d, true);
                    }
                }
            }
        }
        if !uncovered.is_empty() {
            abi::set_effective_context(self.root_id);
            let remaining = c.remaining.or(Some(configured));
            if let Err((waiters, kind)) =
                self.start_lease(self.root_id, fc, call.key, uncovered, remaining, false)
            {
                self.fail_waiters(waiters, kind);
            }
        }
    }
}
