//! The local tier of rate limiting: a request's limit, its bucket or window, and the
//! rate-limit headers (kept as numbers until written).

use super::*;

/// The limit a request falls under: the policy (its name and where it comes from), the limit,
/// whom it counts (`per`) and how.
#[derive(Clone, Copy, Debug)]
pub struct LimitOf<'a> {
    pub policy: &'a str,
    pub origin: Origin,
    /// The start of its local state keys (`state_key::stem`).
    pub stem: &'a str,
    pub limit: ratelimit::Limit,
    pub per: Scope,
    pub algorithm: Algorithm,
}

impl Gate {
    pub(super) fn limit_for<'a>(&'a self, id: &'a Identity) -> Option<LimitOf<'a>> {
        if let Some(limit) = id.rate_limit {
            return Some(LimitOf {
                policy: "key",
                origin: Origin::Key,
                stem: &self.key_stem,
                limit,
                per: Scope::Key,
                algorithm: Algorithm::TokenBucket,
            });
        }
        self.cfg.rate.policy_for(&id.plan).map(|p| LimitOf {
            policy: p.name.as_str(),
            origin: p.origin,
            stem: &p.stem,
            limit: p.limit,
            per: p.scope,
            algorithm: p.algorithm,
        })
    }

    pub(super) fn rate_headers(
        &self,
        d: &RateDecision,
        policy: &str,
        limit: &ratelimit::Limit,
        now_us: u64,
    ) -> RateHeaders {
        let reset_s = d.reset_ms.div_ceil(1000);
        let reset = match self.cfg.rate.reset_style() {
            ResetStyle::Seconds => reset_s,
            ResetStyle::Unix => unix_reset(now_us, d.reset_ms),
        };
        RateHeaders {
            limit: d.limit,
            remaining: d.remaining,
            reset,
            ietf: self.cfg.rate.ietf_headers.then(|| IetfRate {
                policy: quoted(policy),
                quota: limit.requests,
                window_s: limit.window_s,
                reset_s,
            }),
        }
    }

    /// This Envoy's own count (a token bucket or a rolling window) for an admitted request (the
    /// local tier), at `now_ns` (the host's clock, unrounded).
    pub fn limit_local(&self, a: Admitted, store: &dyn SharedStore, now_ns: u64) -> Decision {
        let (p, id) = (&a.pending, &a.id);
        let problems = || self.problems(instance_of(&p.path), p.request_id.as_deref(), p.rpc);
        let now_us = now_ns / 1000;
        let mut rate = None;
        if let Some(l) = self.limit_for(id) {
            let (kind, owner) = state_key::owner(id, l.per);
            let mut key = self.bucket_key.take();
            key.clear();
            state_key::push(&mut key, l.stem, kind, owner);
            let mut buf = self.value_buf.take();
            let taken = limiter::take(store, &key, &l.limit, l.algorithm, now_ns, &mut buf);
            self.value_buf.set(buf);
            self.bucket_key.set(key);
            match taken {
                Ok(d) => {
                    if !d.allowed {
                        let h = self.rate_headers(&d, l.policy, &l.limit, now_us);
                        return self.over_limit(
                            &problems(),
                            &d,
                            h,
                            (l.policy, &l.limit, l.algorithm),
                            now_us,
                            id,
                        );
                    }
                    if self.cfg.rate.headers {
                        rate = Some(self.rate_headers(&d, l.policy, &l.limit, now_us));
                    }
                }
                Err(e) => {
                    let detail = match e {
                        RateError::Contended => "the rate limiter is contended; retry shortly",
                        RateError::StoreFailed => "the rate limiter could not record the request",
                    };
                    let h = vec![("retry-after".to_string(), "1".to_string())];
                    return self.deny(
                        &problems(),
                        Problem::new(429, Kind::RateLimited, detail),
                        h,
                        Some(id),
                    );
                }
            }
        }

        self.allowed(a, rate)
    }
}

/// The unix second at which the bucket is full again, rounded up: a client that waits until
/// then is never early.
pub(super) fn unix_reset(now_us: u64, reset_ms: u64) -> u64 {
    now_us
        .saturating_add(reset_ms.saturating_mul(1000))
        .div_ceil(1_000_000)
}

/// The rate-limit headers of one response, kept as numbers until they are written: the allowed
/// path allocates nothing for them (`for_each` formats on the stack).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateHeaders {
    pub limit: u64,
    pub remaining: u64,
    /// `X-RateLimit-Reset` as configured: seconds, or a unix time.
    pub reset: u64,
    /// `RateLimit-Policy` and `RateLimit` (`rate_limit.ietf_headers`).
    pub ietf: Option<IetfRate>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IetfRate {
    /// Quote-free (`quoted`).
    pub policy: String,
    pub quota: u64,
    pub window_s: u64,
    pub reset_s: u64,
}

impl RateHeaders {
    /// Calls `f` with each header's name and value, in order.
    pub fn for_each(&self, mut f: impl FnMut(&'static str, &str)) {
        f("x-ratelimit-limit", itoa::Buffer::new().format(self.limit));
        f(
            "x-ratelimit-remaining",
            itoa::Buffer::new().format(self.remaining),
        );
        f("x-ratelimit-reset", itoa::Buffer::new().format(self.reset));
        if let Some(i) = &self.ietf {
            let policy = format!("\"{}\";q={};w={}", i.policy, i.quota, i.window_s);
            f("ratelimit-policy", &policy);
            let now = format!("\"{}\";r={};t={}", i.policy, self.remaining, i.reset_s);
            f("ratelimit", &now);
        }
    }

    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::with_capacity(5);
        self.for_each(|n, val| v.push((n, val.to_string())));
        v
    }
}
