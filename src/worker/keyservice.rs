//! The key service: verify calls (one per credential per worker; concurrent misses wait on
//! it), what their answers decide (the cache, the negative cache, a revocation that raced the
//! answer, the throttle's refund, a failure's policy), and the revocation feed polled on the
//! tick (one worker of the Envoy at a time, by a lease in shared data).

use super::{Action, Host, Next, Time, Worker, METRICS_FLUSH_MS, STARTUP_TICK_MS};
use crate::cache::{self, Binding, Offer, Stored};
use crate::config::{KeyServiceConfig, OnFailure};
use crate::contract::{self, ServiceFailure};
use crate::gate::Pending;
use crate::hash::Digest32;
use crate::lease;
use crate::metrics::Metric;
use crate::store::SharedStore;
use crate::verdict::{Refusal, Verdict};

/// A request waiting on a verify call.
pub(super) struct Waiter {
    pub(super) pending: Pending,
    /// A stale verdict to serve if the key service fails.
    pub(super) stale: Option<Verdict>,
    pub(super) client: Vec<u8>,
}

/// A verify call in flight.
pub(super) struct VerifyCall {
    /// The credential's id (secret and Basic user): flights and refusals are per credential.
    id: Digest32,
    /// The secret's id (no user): the shared-data cache entry.
    entry: Digest32,
    user: Option<String>,
    started: Time,
    /// Whether its verdict may be cached (the revocation feed's cursor is known).
    cacheable: bool,
}

pub(super) enum Call {
    Verify(VerifyCall),
    Revocations,
}

impl<H: Host> Worker<H> {
    /// Joins the verify call in flight for credential `id` (unless it is overdue), or makes
    /// one. A call that cannot be dispatched fails every request waiting for the credential.
    pub(super) fn verify(
        &mut self,
        ctx: u32,
        id: Digest32,
        entry: Digest32,
        waiter: Waiter,
    ) -> Action {
        let gate = self.gate.clone();
        let Some(ks) = gate.cfg.key_service.as_ref() else {
            return Action::Pause;
        };
        let now = self.now;
        let waiter = match self
            .flights
            .join(&id, ctx, waiter, now.ms(), ks.timeout_ms + 1000)
        {
            Ok(()) => return Action::Pause,
            Err(w) => w,
        };
        let body = contract::verify_request_body(&waiter.pending.credential);
        match self.dispatch(ks, &ks.verify_path, "POST", &body) {
            Some(token) => {
                self.stats.inc(&mut self.host, Metric::KeyServiceCalls);
                let cacheable = self.feed_ready();
                let user = waiter.pending.credential.user.clone();
                self.calls.insert(
                    token,
                    Call::Verify(VerifyCall {
                        id,
                        entry,
                        user,
                        started: now,
                        cacheable,
                    }),
                );
                self.flights.started(id, ctx, waiter, now.ms());
                Action::Pause
            }
            None => {
                self.stats
                    .inc(&mut self.host, Metric::KeyServiceDispatchFailed);
                // requests still waiting on an overdue call for this credential fail with us
                self.settle_flight(&id, |w, p| w.failed(p, ServiceFailure::NoResponse));
                let next = self.failed(waiter, ServiceFailure::NoResponse);
                self.run(ctx, next, false)
            }
        }
    }

    /// Dispatches a call to the key service (owned by the plugin).
    fn dispatch(
        &mut self,
        ks: &KeyServiceConfig,
        path: &str,
        method: &str,
        body: &[u8],
    ) -> Option<u32> {
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
        let token = self.host.http_call(&ks.cluster, &headers, body, timeout);
        if token.is_none() {
            log::warn!(
                "keygate: the key service call could not be dispatched (check key_service.cluster)"
            );
        }
        token
    }

    /// The decision when the key service failed: a stale verdict, fail-open, or 503.
    fn failed(&mut self, w: Waiter, f: ServiceFailure) -> Next {
        if let Some(v) = w.stale {
            self.stats.inc(&mut self.host, Metric::CacheStaleServed);
            return Next::Verdict(w.pending, v.at(self.now.secs()));
        }
        let gate = &self.gate;
        Next::Decided(match gate.cfg.key_service.as_ref() {
            Some(ks) if ks.on_failure == OnFailure::Open => gate.fail_open(w.pending, f.as_str()),
            Some(ks) => gate.unavailable(&w.pending, ks.retry_after_s),
            None => gate.unavailable(&w.pending, 1),
        })
    }

    /// The key service's answer to call `token`.
    pub(super) fn key_service_response(&mut self, token: u32, body_size: usize) {
        let Some(call) = self.calls.remove(&token) else {
            return;
        };
        let gate = self.gate.clone();
        let Some(ks) = gate.cfg.key_service.as_ref() else {
            return;
        };
        let status = self.host.call_header(":status").and_then(|s| {
            std::str::from_utf8(&s)
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
        });
        let body = if body_size > ks.max_response_bytes {
            None
        } else if body_size == 0 {
            Some(Vec::new())
        } else {
            self.host.call_body(body_size)
        };
        match call {
            Call::Verify(call) => {
                let took = self.now.ms_since(call.started);
                self.stats
                    .record(&mut self.host, Metric::KeyServiceLatency, took);
                self.verify_response(ks, call, status, body)
            }
            Call::Revocations => self.revocations_response(ks, status, body),
        }
    }

    fn verify_response(
        &mut self,
        ks: &KeyServiceConfig,
        call: VerifyCall,
        status: Option<u32>,
        body: Option<Vec<u8>>,
    ) {
        let now = self.now;
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
                let binding = Binding::of(call.user.as_deref(), a.user_bound);
                let offer = Offer {
                    identity,
                    binding: binding.clone(),
                    ttl_hint_s: a.ttl_hint_s,
                    started_ms: call.started.ms(),
                };
                let stored =
                    cache::store_valid(self.host.store(), &key, offer, &ks.cache, now.ms());
                self.memo.forget(key.spot.tag);
                if stored == Stored::Written && ks.cache.recheck_ms > 0 {
                    // the worker that asked keeps the answer it wrote (a key whose entry is
                    // evicted from a busy set is then still served without a call)
                    let e =
                        cache::valid_entry(identity, binding, a.ttl_hint_s, &ks.cache, now.ms());
                    self.memo.remember(key.spot.tag, e);
                }
                if stored == Stored::Revoked {
                    // revoked while the answer was on its way: a verdict older than a
                    // revocation never wins
                    a.verdict = Verdict::Refused(Refusal::Revoked);
                    a.ttl_hint_s = None;
                }
                if stored == Stored::Unsure {
                    // older than a revocation whose mark was evicted: not used, nothing cached
                    self.stats
                        .add_now(&mut self.host, Metric::SlotsVerdictsUnsure, 1);
                    unsure = true;
                }
            }
        }
        if unsure {
            let retry = ks.retry_after_s;
            self.settle_flight(&id, |w, p| {
                Next::Decided(w.gate.unavailable(&p.pending, retry))
            });
            return;
        }
        match &result {
            Ok(a) => match &a.verdict {
                Verdict::Valid(_) if call.cacheable => self.negative.remove(&id),
                Verdict::Valid(_) => {}
                Verdict::Refused(r) => {
                    let mut ttl = ks.cache.negative_ttl_ms;
                    if let Some(h) = a.ttl_hint_s {
                        ttl = ttl.min(h.saturating_mul(1000));
                    }
                    self.negative.insert(id, *r, now.ms() + ttl, now.ms());
                }
            },
            Err(f) => {
                self.stats
                    .inc(&mut self.host, Metric::of_service_failure(*f));
                log::warn!(
                    "keygate: key service failure: {} (status {:?})",
                    f.as_str(),
                    status
                );
            }
        }
        self.settle_flight(&id, |w, p| match &result {
            Ok(a) => {
                // the attempt was counted at dispatch: refund it for a valid key
                let v = a.verdict.clone().at(now.secs());
                if let (Verdict::Valid(_), Some(t)) = (&v, w.throttle.as_mut()) {
                    t.refund(&p.client, now.us());
                }
                Next::Verdict(p.pending, v)
            }
            Err(f) => w.failed(p, *f),
        });
    }

    /// Ends the flight for credential `id`: every request still waiting on it (its stream
    /// still there) gets `decide`'s decision and resumes.
    fn settle_flight(&mut self, id: &Digest32, mut decide: impl FnMut(&mut Self, Waiter) -> Next) {
        for (ctx, p) in self.flights.settle(id) {
            if !self.host.alive(ctx) {
                continue; // the client went away meanwhile
            }
            let next = decide(self, p);
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
            // an emptied cursor (another module on the vm_id) is no cursor
            let cursor = self.host.store().get(&self.cursor_key());
            self.feed_ready = no_feed || cursor.is_some_and(|(v, _)| !v.is_empty());
        }
        self.feed_ready
    }

    /// The feed's lease and cursor name the verdict table's scheme (`r2`: verdicts found by the
    /// secret's digest): a build with another scheme in the same Envoy (an upgrade under way)
    /// polls the feed itself and marks its own entries, never trusting this one to.
    fn lease_key(&self) -> String {
        format!("{}:r2:lease", self.gate.cfg.shared_prefix)
    }

    fn cursor_key(&self) -> String {
        format!("{}:r2:cursor", self.gate.cfg.shared_prefix)
    }

    /// The tick period outside `resume_soon`'s one fast tick: fast until the revocation feed's
    /// cursor is known, then `min(poll_ms, the metrics period)` (see `tick`).
    pub(super) fn tick_period_ms(&self) -> u32 {
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

    /// Metrics flushed; one worker at a time polls the revocation feed: a lease in shared data
    /// taken by CAS.
    pub(super) fn tick(&mut self) {
        self.stats.slots(&mut self.host, &self.gate.tables);
        let memo = i64::try_from(self.memo.take_served()).unwrap_or(i64::MAX);
        if memo > 0 {
            self.stats
                .add_now(&mut self.host, Metric::CacheMemoHit, memo);
        }
        self.stats.flush(&mut self.host);
        let gate = self.gate.clone();
        let Some(ks) = gate.cfg.key_service.as_ref() else {
            return;
        };
        let Some(path) = ks.revocations_path.as_deref() else {
            return;
        };
        if !self.steady_ticks && self.feed_ready() {
            self.steady_ticks = true;
            let period = self.tick_period_ms();
            self.host.set_tick_period_ms(period);
        }
        if self.calls.values().any(|c| matches!(c, Call::Revocations)) {
            return;
        }
        let now = self.now.ms();
        let lease = self.lease_key();
        let until = now + ks.timeout_ms + ks.poll_ms / 2;
        if !lease::take(self.host.store(), &lease, now, until) {
            return;
        }
        let since = self
            .host
            .store()
            .get(&self.cursor_key())
            .and_then(|(v, _)| String::from_utf8(v).ok())
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(-1);
        let full = format!("{path}?since={since}");
        if let Some(token) = self.dispatch(ks, &full, "GET", b"") {
            self.calls.insert(token, Call::Revocations);
        } else {
            lease::release(self.host.store(), &lease, 0);
        }
    }

    fn revocations_response(
        &mut self,
        ks: &KeyServiceConfig,
        status: Option<u32>,
        body: Option<Vec<u8>>,
    ) {
        let now = self.now.ms();
        let parsed = match body {
            None => Err(ServiceFailure::BodyTooLarge),
            Some(b) => contract::parse_revocations(status, &b),
        };
        let lease = self.lease_key();
        let r = match parsed {
            Ok(r) => r,
            Err(f) => {
                self.stats
                    .add_now(&mut self.host, Metric::RevocationFailures, 1);
                log::warn!("keygate: revocation feed failure: {}", f.as_str());
                lease::release(self.host.store(), &lease, now.saturating_add(ks.poll_ms));
                return;
            }
        };
        self.stats
            .add_now(&mut self.host, Metric::RevocationPolls, 1);
        let (marked, all_marked) = cache::apply_revocations(
            self.host.store(),
            &self.gate.tables.verdicts,
            &ks.cache,
            &r.revoked,
            &mut self.memo,
            &mut self.negative,
            now,
        );
        if !all_marked {
            // a mark not written (its set too busy): the cursor stays, the page is applied
            // again on the next tick, or another worker would serve the key from its verdict
            self.stats
                .add_now(&mut self.host, Metric::RevocationFailures, 1);
            log::warn!("keygate: revocation feed: a mark could not be written; retrying");
            lease::release(self.host.store(), &lease, 0);
            return;
        }
        self.host
            .store()
            .set(&self.cursor_key(), r.cursor.to_string().as_bytes(), 0);
        if marked > 0 {
            let n = i64::try_from(marked).unwrap_or(i64::MAX);
            self.stats
                .add_now(&mut self.host, Metric::RevocationsMarked, n);
        }
        if !r.revoked.is_empty() {
            log::info!(
                "keygate: revocation feed: {} revoked keys, {} cached verdicts marked (cursor {})",
                r.revoked.len(),
                marked,
                r.cursor
            );
        }
        // with more pages, poll again at once; else no worker polls before poll_ms
        if r.more {
            lease::release(self.host.store(), &lease, 0);
            self.tick();
        } else {
            lease::release(self.host.store(), &lease, now.saturating_add(ks.poll_ms));
        }
    }
}
