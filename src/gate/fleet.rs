//! The fleet tier (`crate::fleet`): decisions from a rate-limit engine's answer, with the same
//! headers and the same 429 as the local tier.

use super::*;

/// The limit an admitted request falls under: the policy (name and origin), the configured
/// limit, whom it counts (`per`) and the owner it counts, as the kind it is counted as
/// (`state_key::owner`: a key stands in for an absent account or subject).
pub struct Target<'a> {
    pub policy: &'a str,
    pub origin: Origin,
    pub limit: ratelimit::Limit,
    pub per: Scope,
    pub kind: Scope,
    pub owner: &'a str,
}

impl Target<'_> {
    /// The shared-data key of this owner's fleet state (leases, a remembered OVER_LIMIT).
    pub fn lease_key(&self, prefix: &str) -> String {
        let mut k = state_key::stem(prefix, Tier::Lease, (self.origin, self.policy));
        state_key::push(&mut k, "", self.kind, self.owner);
        k
    }

    /// The longest the engine's numbers of time may count for this limit (a reset, a lease's
    /// life, a remembered OVER_LIMIT): the plan's window.
    pub fn window_ms(&self) -> u64 {
        self.limit.window_s.max(1).saturating_mul(1000)
    }
}

/// The fleet tier (`crate::fleet`): decisions from a rate-limit engine's answer, with the same
/// headers and the same 429 as the local tier.
impl Gate {
    /// The limit `a` falls under (`None`: unlimited).
    pub fn target<'a>(&'a self, a: &'a Admitted) -> Option<Target<'a>> {
        self.limit_for(&a.id).map(|l| {
            let (kind, owner) = state_key::owner(&a.id, l.per);
            Target {
                policy: l.policy,
                origin: l.origin,
                limit: l.limit,
                per: l.per,
                kind,
                owner,
            }
        })
    }

    /// Allowed by the engine: `limit` (the engine's, else the configured one), `remaining`, and
    /// ms until the engine's window resets (`None`: no rate-limit headers, the engine did not say).
    pub fn fleet_allowed(
        &self,
        a: Admitted,
        limit: u64,
        remaining: Option<(u64, u64)>,
        now_us: u64,
    ) -> Decision {
        let rate = match (remaining, self.target(&a)) {
            (Some((remaining, reset_ms)), Some(t)) if self.cfg.rate.headers => {
                let d = RateDecision {
                    allowed: true,
                    limit,
                    remaining,
                    reset_ms,
                    retry_after_ms: 0,
                };
                // the IETF policy names the engine's limit, over the plan's window
                let shown = ratelimit::Limit {
                    requests: limit,
                    window_s: t.limit.window_s,
                    burst: limit,
                };
                Some(self.rate_headers(&d, t.policy, &shown, now_us))
            }
            _ => None,
        };
        self.allowed(a, rate)
    }

    /// Refused by the engine (OVER_LIMIT, now or remembered): the same 429 as the local tier,
    /// `limit` being the engine's and `retry_ms` the time until its window resets.
    pub fn fleet_over_limit(
        &self,
        a: &Admitted,
        limit: u64,
        retry_ms: u64,
        now_us: u64,
    ) -> Decision {
        let Some(t) = self.target(a) else {
            return self.fleet_unavailable(a, 1);
        };
        let d = RateDecision {
            allowed: false,
            limit,
            remaining: 0,
            reset_ms: retry_ms,
            retry_after_ms: retry_ms,
        };
        let shown = ratelimit::Limit {
            requests: limit,
            window_s: t.limit.window_s,
            burst: limit,
        };
        let h = self.rate_headers(&d, t.policy, &shown, now_us);
        let pb = self.problems(
            instance_of(&a.pending.path),
            a.pending.request_id.as_deref(),
            a.pending.rpc,
        );
        let policy = (t.policy, &shown, Algorithm::TokenBucket);
        self.over_limit(&pb, &d, h, policy, now_us, &a.id)
    }

    /// The engine failed and `fleet.on_failure` is `closed`: 503 `rate-limit-unavailable`.
    pub fn fleet_unavailable(&self, a: &Admitted, retry_after_s: u64) -> Decision {
        let pb = self.problems(
            instance_of(&a.pending.path),
            a.pending.request_id.as_deref(),
            a.pending.rpc,
        );
        let h = vec![("retry-after".to_string(), retry_after_s.to_string())];
        let detail = "the rate-limit engine could not count the request; retry shortly";
        self.deny(
            &pb,
            Problem::new(503, Kind::RateLimitUnavailable, detail),
            h,
            Some(&a.id),
        )
    }
}
