//! The host edge of fleet-wide limits (`crate::fleet`): once a request is admitted (verdict,
//! scopes, ownership), its limit is counted by this Envoy's bucket (the local tier) or by the
//! fleet's rate-limit engine, per request or from a lease. Calls to the engine are gRPC
//! (`ShouldRateLimit`, framed by `crate::rls`) over `dispatch_http_call` to an HTTP/2 cluster,
//! owned by the root context like the key-service calls, with `fleet.timeout_ms`: Envoy answers
//! 504 at the timeout, so no request waits longer.

use std::collections::HashMap;

use super::{abi, now_ms, EnvoyStore, Plugin, ACTION_PAUSE};
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
    hits: u32,
    waiting: Waiting,
}

/// In-flight engine calls of this worker, and the requests waiting on a lease (by the owner's
/// shared-data key: one lease call per owner per worker at a time).
#[derive(Default)]
pub(super) struct Flights {
    calls: HashMap<u32, Call>,
    leases: HashMap<String, Vec<(u32, Admitted)>>,
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
        let now = self.now;
        let Some(fc) = gate.cfg.fleet.as_ref() else {
            // no fleet: the local tier, as before
            let d = gate.finish(p, v, &self.buckets(now), now * 1000);
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
                let d = gate.limit_local(a, &self.buckets(now), now * 1000);
                self.apply(ctx, d, resume)
            }
            Mode::Request => self.per_request(ctx, a, fc, resume),
            Mode::Leased => self.leased(ctx, a, fc, resume),
        }
    }

    /// The owner's fleet entry in shared data (leases, a remembered OVER_LIMIT): one per owner of
    /// an admitted request, like the local buckets.
    fn fleet_key(&self, a: &Admitted) -> Option<String> {
        let t = self.gate.target(a)?;
        Some(format!(
            "{}:fl:{}:{}",
            self.gate.cfg.shared_prefix,
            t.scope.letter(),
            t.owner
        ))
    }

    /// Per-request mode: one `ShouldRateLimit` for this request, unless an OVER_LIMIT for its
    /// owner is remembered.
    fn per_request(&mut self, ctx: u32, a: Admitted, fc: &FleetConfig, resume: bool) -> u32 {
        let gate = self.gate.clone();
        let now = self.now;
        let Some(key) = self.fleet_key(&a) else {
            let d = gate.limit_local(a, &self.buckets(now), now * 1000);
            return self.apply(ctx, d, resume);
        };
        if let Some((limit, retry_ms)) = fleet::denied(&EnvoyStore, &key, now) {
            self.metrics.inc(Metric::FleetDeniedRemembered);
            let d = gate.fleet_over_limit(&a, limit, retry_ms, now * 1000);
            return self.apply(ctx, d, resume);
        }
        match self.engine_call(ctx, fc, &a, 1) {
            Some(token) => {
                self.fleet.calls.insert(
                    token,
                    Call {
                        key,
                        started_ms: now,
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
    /// owner per worker; later requests wait on it).
    fn leased(&mut self, ctx: u32, a: Admitted, fc: &FleetConfig, resume: bool) -> u32 {
        let gate = self.gate.clone();
        let now = self.now;
        let Some(key) = self.fleet_key(&a) else {
            let d = gate.limit_local(a, &self.buckets(now), now * 1000);
            return self.apply(ctx, d, resume);
        };
        let spent = fleet::spend(&self.buckets(now), &key, now);
        let remaining = match spent {
            Spend::Spent {
                limit,
                remaining,
                reset_ms,
            } => {
                let d = gate.fleet_allowed(a, limit, Some((remaining, reset_ms)), now * 1000);
                return self.apply(ctx, d, resume);
            }
            Spend::Denied { limit, retry_ms } => {
                let d = gate.fleet_over_limit(&a, limit, retry_ms, now * 1000);
                return self.apply(ctx, d, resume);
            }
            Spend::Failed => {
                let d = self.engine_failed(a, "store");
                return self.apply(ctx, d, resume);
            }
            Spend::Empty { remaining } => remaining,
        };
        if let Some(waiters) = self.fleet.leases.get_mut(&key) {
            waiters.push((ctx, a));
            return ACTION_PAUSE;
        }
        let configured = gate.target(&a).map_or(1, |t| t.limit.requests);
        let hits = fleet::lease_size(&fc.lease, remaining.unwrap_or(configured));
        match self.engine_call(ctx, fc, &a, hits) {
            Some(token) => {
                self.metrics.inc(Metric::FleetLeaseCalls);
                self.fleet.leases.insert(key.clone(), vec![(ctx, a)]);
                self.fleet.calls.insert(
                    token,
                    Call {
                        key,
                        started_ms: now,
                        hits,
                        waiting: Waiting::Lease { retried: false },
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

    /// Dispatches `ShouldRateLimit` for `a`'s descriptor with `hits`, owned by the root context.
    fn engine_call(&mut self, ctx: u32, fc: &FleetConfig, a: &Admitted, hits: u32) -> Option<u32> {
        let gate = self.gate.clone();
        let t = gate.target(a)?;
        let body = rls::encode_request(
            &fc.domain,
            &fleet::descriptor(t.policy, t.scope, t.owner),
            hits,
        );
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
        let timeout = u32::try_from(fc.timeout_ms).unwrap_or(u32::MAX);
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
        let now = self.now;
        match gate
            .cfg
            .fleet
            .as_ref()
            .map(|f| (f.on_failure, f.retry_after_s))
        {
            Some((OnEngineFailure::Closed, retry)) => gate.fleet_unavailable(&a, retry),
            _ => {
                self.metrics.inc(Metric::FleetFallbackLocal);
                gate.limit_local(a, &self.buckets(now), now * 1000)
            }
        }
    }

    /// The engine's answer (or Envoy's failure) to call `token`.
    pub(super) fn fleet_response(&mut self, token: u32, body_size: usize) {
        let Some(call) = self.fleet.calls.remove(&token) else {
            return;
        };
        let now = now_ms();
        self.now = now;
        self.metrics
            .record(Metric::FleetLatency, now.saturating_sub(call.started_ms));
        // Envoy reports a timeout as UNAVAILABLE too: told apart by the time it took (its timer
        // and the wall clock differ by a few ms)
        let timed_out = self
            .gate
            .cfg
            .fleet
            .as_ref()
            .is_some_and(|f| now.saturating_sub(call.started_ms) * 10 >= f.timeout_ms * 9);
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

    /// Per-request mode: the engine's verdict on one request.
    fn request_answer(
        &mut self,
        key: &str,
        a: Admitted,
        answer: Result<rls::Answer, &'static str>,
    ) -> Decision {
        let gate = self.gate.clone();
        let now = self.now;
        let ans = match answer {
            Ok(ans) => ans,
            Err(kind) => return self.engine_failed(a, kind),
        };
        let (configured, window_ms) = gate
            .target(&a)
            .map_or((1, 1000), |t| (t.limit.requests, t.limit.window_s * 1000));
        let limit = ans.status.and_then(|s| s.limit).unwrap_or(configured);
        if ans.over_limit {
            self.metrics.inc(Metric::FleetOverLimit);
            let retry_ms = ans.status.and_then(|s| s.reset_ms);
            if let Some(ms) = retry_ms {
                fleet::remember_denial(&EnvoyStore, key, now + ms, limit, now);
            }
            return gate.fleet_over_limit(&a, limit, retry_ms.unwrap_or(window_ms), now * 1000);
        }
        let remaining = ans
            .status
            .map(|s| (s.remaining, s.reset_ms.unwrap_or(window_ms)));
        gate.fleet_allowed(a, limit, remaining, now * 1000)
    }

    /// Leased mode: the engine granted (or refused) a lease; the requests waiting on it spend it.
    fn lease_answer(
        &mut self,
        call: Call,
        retried: bool,
        answer: Result<rls::Answer, &'static str>,
    ) {
        let now = self.now;
        let gate = self.gate.clone();
        let Some(fc) = gate.cfg.fleet.as_ref() else {
            return;
        };
        let waiters = match answer {
            Ok(ans) if !ans.over_limit => {
                let configured = self
                    .fleet
                    .leases
                    .get(&call.key)
                    .and_then(|w| w.first())
                    .and_then(|(_, a)| gate.target(a).map(|t| t.limit.requests))
                    .unwrap_or(1);
                let s = ans.status;
                // tokens belong to the engine's window: they expire at its reset, counted from
                // when the call was sent (never after the engine's own reset)
                let expires =
                    call.started_ms + s.and_then(|s| s.reset_ms).unwrap_or(fc.lease.ttl_ms);
                let limit = s.and_then(|s| s.limit).unwrap_or(configured);
                let engine_remaining = s.map_or(0, |s| s.remaining);
                self.metrics
                    .add_now(Metric::FleetLeaseTokens, i64::from(call.hits));
                match fleet::grant(
                    &EnvoyStore,
                    &call.key,
                    u64::from(call.hits),
                    expires,
                    limit,
                    engine_remaining,
                    now,
                ) {
                    Some(0) => {}
                    Some(n) => self
                        .metrics
                        .add_now(Metric::FleetLeaseStranded, i64::try_from(n).unwrap_or(0)),
                    None => self
                        .metrics
                        .add_now(Metric::FleetLeaseStranded, i64::from(call.hits)),
                }
                self.fleet.leases.remove(&call.key).unwrap_or_default()
            }
            Ok(ans) => {
                // all or nothing: an engine with fewer tokens left than asked refuses the lease;
                // ask once more for exactly what remains
                let left = ans.status.map_or(0, |s| s.remaining);
                if !retried && left > 0 && left < u64::from(call.hits) {
                    let hits = u32::try_from(left).unwrap_or(1);
                    let first = self
                        .fleet
                        .leases
                        .get(&call.key)
                        .and_then(|w| w.first())
                        .map(|(c, a)| (*c, a.clone()));
                    if let Some((_, a)) = first {
                        if let Some(token) = self.engine_call(self.root_id, fc, &a, hits) {
                            self.metrics.inc(Metric::FleetLeaseCalls);
                            self.fleet.calls.insert(
                                token,
                                Call {
                                    key: call.key,
                                    started_ms: now,
                                    hits,
                                    waiting: Waiting::Lease { retried: true },
                                },
                            );
                            return;
                        }
                    }
                }
                self.metrics.inc(Metric::FleetOverLimit);
                let (configured, window_ms) = self
                    .fleet
                    .leases
                    .get(&call.key)
                    .and_then(|w| w.first())
                    .and_then(|(_, a)| gate.target(a))
                    .map_or((1, fc.lease.ttl_ms), |t| {
                        (t.limit.requests, t.limit.window_s * 1000)
                    });
                let until = call.started_ms
                    + ans
                        .status
                        .and_then(|s| s.reset_ms)
                        .unwrap_or(window_ms.min(fc.lease.ttl_ms));
                let limit = ans.status.and_then(|s| s.limit).unwrap_or(configured);
                let n = fleet::remember_denial(&EnvoyStore, &call.key, until, limit, now);
                if n > 0 {
                    self.metrics
                        .add_now(Metric::FleetLeaseStranded, i64::try_from(n).unwrap_or(0));
                }
                self.fleet.leases.remove(&call.key).unwrap_or_default()
            }
            Err(kind) => {
                let waiters = self.fleet.leases.remove(&call.key).unwrap_or_default();
                for (ctx, a) in waiters {
                    if abi::set_effective_context(ctx) {
                        let d = self.engine_failed(a, kind);
                        self.apply(ctx, d, true);
                    }
                }
                return;
            }
        };
        // each waiting request spends from the lease now (or starts the next one)
        for (ctx, a) in waiters {
            if abi::set_effective_context(ctx) {
                self.leased(ctx, a, fc, true);
            }
        }
    }
}
