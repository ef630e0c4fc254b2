//! The local tier of rate limiting: a request's limit, its bucket or window, and the
//! rate-limit headers (kept as numbers until written).

use super::*;

impl Gate {
    #[allow(clippy::type_complexity)]
    pub(super) fn limit_for<'a>(
        &'a self,
        id: &'a Identity,
    ) -> Option<(&'a str, ratelimit::Limit, Scope, Algorithm)> {
        if let Some(l) = id.rate_limit {
            return Some(("key", l, Scope::Key, Algorithm::TokenBucket));
        }
        self.cfg
            .rate
            .policy_for(&id.plan)
            .map(|p| (p.name.as_str(), p.limit, p.scope, p.algorithm))
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

    /// This Envoy's own token bucket for an admitted request (the local tier).
    pub fn limit_local(&self, a: Admitted, store: &dyn SharedStore, now_us: u64) -> Decision {
        let Admitted {
            pending: p,
            id,
            body,
        } = a;
        let problems = || self.problems(instance_of(&p.path), p.request_id.as_deref(), p.rpc);
        let mut rate = None;
        if let Some((policy_name, limit, scope, algorithm)) = self.limit_for(&id) {
            let owner = owner_of(&id, scope);
            let mut key = self.bucket_key.take();
            key.clear();
            key.push_str(&self.cfg.shared_prefix);
            key.push_str(match algorithm {
                Algorithm::TokenBucket => ":rl:",
                Algorithm::RollingWindow => ":rw:",
            });
            key.push(scope.letter());
            key.push(':');
            key.push_str(owner);
            let mut buf = self.value_buf.take();
            let taken = match algorithm {
                Algorithm::TokenBucket => ratelimit::take(store, &key, &limit, now_us, &mut buf),
                Algorithm::RollingWindow => {
                    let (n, w) = (limit.requests, limit.window_s);
                    window::take(store, &key, n, w, now_us, &mut buf)
                }
            };
            self.value_buf.set(buf);
            self.bucket_key.set(key);
            match taken {
                Ok(d) => {
                    if !d.allowed {
                        let h = self.rate_headers(&d, policy_name, &limit, now_us);
                        return self.over_limit(
                            &problems(),
                            &d,
                            h,
                            (policy_name, &limit, algorithm),
                            now_us,
                            &id,
                        );
                    }
                    if self.cfg.rate.headers {
                        rate = Some(self.rate_headers(&d, policy_name, &limit, now_us));
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
                        Some(&id),
                    );
                }
            }
        }

        self.allowed(p, id, body, rate)
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

/// Who a bucket (or a fleet limit) belongs to: the key, its subject, or its account (the key when
/// it has no account).
pub(super) fn owner_of(id: &Identity, scope: Scope) -> &str {
    match scope {
        Scope::Key => &id.key_id,
        Scope::Subject => &id.subject,
        Scope::Account if !id.account.is_empty() => &id.account,
        Scope::Account => &id.key_id,
    }
}
