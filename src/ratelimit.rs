//! Token buckets, exact across Envoy's worker threads.
//!
//! A bucket is one number, its *theoretical arrival time* (TAT): the instant at which the bucket
//! would be full again. This is the token bucket written the GCRA way (capacity `burst`, refill
//! `requests` per `window_s`), refilled lazily from timestamps: tokens available at `now` =
//! (now + burst*T - TAT) / T with T = window / requests. One CAS write per allowed request, no
//! write on a denial, no timers. How a bucket is stored in shared data (with the parameters its
//! time is scaled by) is `limiter`'s.
//!
//! Time is kept in units of 1/requests of the clock's unit (ns for shared buckets, µs for the
//! per-worker auth throttle), so T = the window in clock units and all math is exact integer
//! math (u128): no drift, no float rounding, whatever the rate.

use crate::state_key::Origin;
use crate::store::{SetOutcome, SharedStore, ABSENT_CAS};

// The compiled rate-limit configuration (`config::rate` builds it from `rate_limit`).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetStyle {
    /// `X-RateLimit-Reset` is seconds until the bucket is full again.
    Seconds,
    /// `X-RateLimit-Reset` is the unix time at which it is.
    Unix,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    /// A plan of `rate_limit.plans`, or `rate_limit.default` (its state is named apart, see
    /// `state_key`).
    pub origin: Origin,
    /// The start of the shared-data keys of its local counts (`state_key::stem`).
    pub stem: String,
    pub limit: Limit,
    pub scope: Scope,
    pub algorithm: Algorithm,
}

/// How a plan counts (`rate_limit.plans.<name>.algorithm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// `burst` at once, refilled continuously (`ratelimit`).
    TokenBucket,
    /// At most `requests` in any `window_s`-long interval (`window`).
    RollingWindow,
}

#[derive(Clone, Debug, Default)]
pub struct RateConfig {
    /// Plan name -> policy; `None` is an explicitly unlimited plan.
    pub plans: Vec<(String, Option<Policy>)>,
    /// For plans not in the table; `None` means unlimited.
    pub default: Option<Policy>,
    /// A `rate_limit` section without a `default`: every plan must be one of `plans` (a key
    /// service that names another plan gets 503, never an unlimited key). Without a `rate_limit`
    /// section nothing is limited, and plans are only names.
    pub plans_declared_only: bool,
    pub reset: Option<ResetStyle>,
    pub ietf_headers: bool,
    /// Rate-limit headers on allowed responses (`X-RateLimit-*`, and the IETF pair when on).
    /// A 429 carries them regardless: it is keygate's own reply and the client needs them to
    /// back off.
    pub headers: bool,
}

impl RateConfig {
    pub fn policy_for(&self, plan: &str) -> Option<&Policy> {
        match self.plans.iter().find(|(n, _)| n == plan) {
            Some((_, p)) => p.as_ref(),
            None => self.default.as_ref(),
        }
    }

    /// Whether `plan` means something here: a plan of the table, or any plan when a `default`
    /// catches the others or nothing is limited.
    pub fn declares(&self, plan: &str) -> bool {
        !self.plans_declared_only || self.plans.iter().any(|(n, _)| n == plan)
    }

    pub fn reset_style(&self) -> ResetStyle {
        self.reset.unwrap_or(ResetStyle::Seconds)
    }
}

/// Clock units per second: the shared buckets count in ns (the host's clock, never rounded),
/// the auth throttle in µs.
pub const NS: u128 = 1_000_000_000;
/// Clock units per millisecond, as [`step_in`] takes them.
pub const NS_PER_MS: u64 = 1_000_000;
pub const US_PER_MS: u64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Sustained rate: `requests` per `window_s` seconds.
    pub requests: u64,
    pub window_s: u64,
    /// Bucket capacity: how many requests may arrive at once. Defaults to `requests`.
    pub burst: u64,
}

/// Who a bucket belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Key,
    Subject,
    Account,
}

impl Scope {
    pub fn letter(self) -> char {
        match self {
            Scope::Key => 'k',
            Scope::Subject => 's',
            Scope::Account => 'a',
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    /// The bucket's capacity (`X-RateLimit-Limit`).
    pub limit: u64,
    pub remaining: u64,
    /// Milliseconds until the bucket is full again.
    pub reset_ms: u64,
    /// Milliseconds until the next request would be allowed (0 when allowed).
    pub retry_after_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateError {
    /// Every CAS attempt lost to another worker.
    Contended,
    /// The host refused the write.
    StoreFailed,
}

/// CAS attempts before giving up. Each loss means another worker *did* write (progress), so with
/// W workers more than W-1 consecutive losses is already rare; 16 leaves wide margin.
pub const MAX_ATTEMPTS: u32 = 16;

/// `a / b` rounded down or up, in 64-bit arithmetic when both fit (every quotient `step` takes is
/// of a difference of instants, which fits for any sane limit): 128-bit division is a slow
/// library call in wasm.
pub(crate) fn div(a: u128, b: u128, up: bool) -> u128 {
    match (u64::try_from(a), u64::try_from(b)) {
        (Ok(a), Ok(b)) if b > 0 => u128::from(if up { a.div_ceil(b) } else { a / b }),
        _ if up => a.div_ceil(b.max(1)),
        _ => a / b.max(1),
    }
}

/// One GCRA step with `now` in µs (the auth throttle): see [`step_in`].
pub fn step(limit: &Limit, tat: Option<u128>, now_us: u128) -> (RateDecision, Option<u128>) {
    step_in(limit, tat, now_us, US_PER_MS)
}

/// One GCRA step. `now` is in clock units (`per_ms` a millisecond), `tat` in scaled units
/// (clock units × requests). Returns the decision and the new TAT to store when allowed.
pub fn step_in(
    limit: &Limit,
    tat: Option<u128>,
    now: u128,
    per_ms: u64,
) -> (RateDecision, Option<u128>) {
    let req = u128::from(limit.requests.max(1));
    let burst = u128::from(limit.burst.max(1));
    let t = u128::from(limit.window_s.max(1) * 1000) * u128::from(per_ms); // T, scaled
    let now = now * req;
    let base = tat.map_or(now, |x| x.max(now));
    // a stored TAT is another writer's number: it may be anything
    let new_tat = base.saturating_add(t);
    let horizon = now + burst * t;
    let to_ms = |scaled: u128| -> u64 {
        let units = div(scaled, req, true);
        u64::try_from(div(units, u128::from(per_ms), true)).unwrap_or(u64::MAX)
    };
    if new_tat <= horizon {
        let remaining = u64::try_from(div(horizon - new_tat, t, false)).unwrap_or(u64::MAX);
        let d = RateDecision {
            allowed: true,
            limit: limit.burst,
            remaining,
            reset_ms: to_ms(new_tat - now),
            retry_after_ms: 0,
        };
        (d, Some(new_tat))
    } else {
        let d = RateDecision {
            allowed: false,
            limit: limit.burst,
            remaining: 0,
            reset_ms: to_ms(base - now),
            retry_after_ms: to_ms(new_tat - horizon),
        };
        (d, None)
    }
}

/// What a step made of the value it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// Write the new value the step put in the buffer.
    New,
    /// Leave the (well-formed) value as it is: a denial.
    Unchanged,
    /// Nothing to write (a denial with no value stored).
    Nothing,
}

/// One read-decide-write on the value at `key`, retried on a CAS mismatch (at most
/// `MAX_ATTEMPTS` times): `step` sees the stored value (`None`: absent) and a cleared buffer
/// for the new one. Token buckets and rolling windows count through it.
///
/// A denial changes nothing. Through a guessing store, the value is written back unchanged
/// under its CAS: that confirms a guessed read (a guess can only be behind, so the denial would
/// stand, but its headers must be exact) and seeds the next guess, so a flood of 429s costs a
/// write each instead of a read.
pub fn update<D>(
    store: &dyn SharedStore,
    key: &str,
    buf: &mut Vec<u8>,
    mut step: impl FnMut(Option<&[u8]>, &mut Vec<u8>) -> (D, Write),
) -> Result<D, RateError> {
    for _ in 0..MAX_ATTEMPTS {
        let (value, cas) = match store.get(key) {
            Some((v, cas)) => (Some(v), cas),
            None => (None, ABSENT_CAS),
        };
        buf.clear();
        let (decision, write) = step(value.as_deref(), buf);
        let (bytes, unchanged) = match (write, &value) {
            (Write::New, _) => (buf.as_slice(), false),
            (Write::Unchanged, Some(v)) if store.guesses() => (v.as_slice(), true),
            _ => return Ok(decision),
        };
        match store.set(key, bytes, cas) {
            SetOutcome::Written => return Ok(decision),
            // a denial exact as of a real read stands; a guess that missed reads again
            _ if unchanged && !store.last_was_guess() => return Ok(decision),
            _ if unchanged => continue,
            SetOutcome::CasMismatch => continue,
            SetOutcome::Failed => return Err(RateError::StoreFailed),
        }
    }
    Err(RateError::Contended)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::Algorithm;
    use super::*;
    use crate::store::memory::MemoryStore;

    /// A shared bucket (`limiter`), in these tests' µs.
    fn take(
        st: &dyn SharedStore,
        key: &str,
        l: &Limit,
        now_us: u64,
        buf: &mut Vec<u8>,
    ) -> Result<RateDecision, RateError> {
        crate::limiter::take(st, key, l, Algorithm::TokenBucket, now_us * 1000, buf)
    }

    const S: u64 = 1_000_000; // one second in µs
    const T0: u64 = 1_790_000_000 * S;

    fn lim(requests: u64, window_s: u64, burst: u64) -> Limit {
        Limit {
            requests,
            window_s,
            burst,
        }
    }

    #[test]
    fn burst_then_deny_then_refill() {
        let st = MemoryStore::default();
        let l = lim(60, 60, 5); // one token a second, capacity 5
        for i in 0..5 {
            let d = take(&st, "b", &l, T0, &mut Vec::new()).unwrap();
            assert!(d.allowed);
            assert_eq!(d.remaining, 4 - i);
            assert_eq!(d.limit, 5);
        }
        let d = take(&st, "b", &l, T0, &mut Vec::new()).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after_ms, 1000);
        assert_eq!(d.reset_ms, 5000);
        // half a second later: still nothing; a second later: exactly one.
        assert!(
            !take(&st, "b", &l, T0 + S / 2, &mut Vec::new())
                .unwrap()
                .allowed
        );
        let d = take(&st, "b", &l, T0 + S, &mut Vec::new()).unwrap();
        assert!(d.allowed && d.remaining == 0);
        assert!(!take(&st, "b", &l, T0 + S, &mut Vec::new()).unwrap().allowed);
        // after a long idle time the bucket is full, not fuller.
        let d = take(&st, "b", &l, T0 + 3600 * S, &mut Vec::new()).unwrap();
        assert_eq!(d.remaining, 4);
    }

    #[test]
    fn slow_rates_refill_exactly() {
        // 1 request a day, burst 1: the bucket must refill even when hammered every millisecond.
        let st = MemoryStore::default();
        let l = lim(1, 86_400, 1);
        assert!(take(&st, "b", &l, T0, &mut Vec::new()).unwrap().allowed);
        let mut t = T0;
        let mut allowed = 0;
        while t < T0 + 86_400 * S {
            t += 997 * S; // ~ every 16 minutes
            if take(&st, "b", &l, t, &mut Vec::new()).unwrap().allowed {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 1);
        // 1000/min: exactly 1000 over one minute at a 1 ms cadence after draining the burst.
        let st = MemoryStore::default();
        let l = lim(1000, 60, 1000);
        let mut n = 0;
        for ms in 0..60_000u64 {
            if take(&st, "c", &l, T0 + ms * 1000, &mut Vec::new())
                .unwrap()
                .allowed
            {
                n += 1;
            }
        }
        assert_eq!(n, 1000 + 999); // the full bucket, then one refill every 60 ms (59.94 s worth)
    }

    #[test]
    fn clock_going_backwards_does_not_mint_tokens() {
        let st = MemoryStore::default();
        let l = lim(10, 10, 2);
        assert!(take(&st, "b", &l, T0, &mut Vec::new()).unwrap().allowed);
        assert!(take(&st, "b", &l, T0, &mut Vec::new()).unwrap().allowed);
        assert!(
            !take(&st, "b", &l, T0 - 100 * S, &mut Vec::new())
                .unwrap()
                .allowed
        );
    }

    #[test]
    fn cas_conflicts_retry_and_never_lose_a_write() {
        let st = MemoryStore::default();
        let l = lim(100, 60, 100);
        take(&st, "b", &l, T0, &mut Vec::new()).unwrap();
        st.conflicts.set(5);
        let d = take(&st, "b", &l, T0, &mut Vec::new()).unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 98);
        st.conflicts.set(MAX_ATTEMPTS);
        assert_eq!(
            take(&st, "b", &l, T0, &mut Vec::new()),
            Err(RateError::Contended)
        );
    }

    #[test]
    fn garbage_values_are_overwritten() {
        let st = MemoryStore::default();
        st.set("b", b"junk", 0);
        let d = take(&st, "b", &lim(5, 1, 5), T0, &mut Vec::new()).unwrap();
        assert!(d.allowed && d.remaining == 4);
    }

    #[test]
    fn guessed_reads_skip_the_host_and_stay_exact() {
        use crate::store::{Guesses, Speculative};
        use std::cell::RefCell;
        let st = MemoryStore::default();
        let guesses = RefCell::new(Guesses::default());
        let l = lim(1000, 1, 5);
        let mut remaining = Vec::new();
        for _ in 0..5 {
            let sp = Speculative::new(&st, &guesses, T0 / 1000);
            remaining.push(take(&sp, "b", &l, T0, &mut Vec::new()).unwrap().remaining);
        }
        assert_eq!(remaining, vec![4, 3, 2, 1, 0]);
        // the insert and the first CAS write read the host; the next three used their guess
        assert_eq!(st.gets.get(), 2);
        // a write to another key after ours leaves our entry (and its token) alone: still a hit
        st.set("other", b"x", 0);
        let sp = Speculative::new(&st, &guesses, T0 / 1000);
        assert!(
            take(&sp, "b", &l, T0 + 1000, &mut Vec::new())
                .unwrap()
                .allowed
        );
        assert_eq!(st.gets.get(), 2);
        // but it came between our last two writes: that write's token is one further than the
        // guess, so the next guess misses and the retry reads the host
        let sp = Speculative::new(&st, &guesses, T0 / 1000);
        let d = take(&sp, "b", &l, T0 + 2000, &mut Vec::new()).unwrap();
        assert!(d.allowed && d.remaining == 0);
        assert_eq!(st.gets.get(), 3);
        // denials write the value back unchanged: that confirms the guess they used and seeds
        // the next one, so a run of 429s reads nothing
        let gets = st.gets.get();
        let tat = st.map.borrow()["b"].0.clone();
        for _ in 0..3 {
            let sp = Speculative::new(&st, &guesses, T0 / 1000);
            let d = take(&sp, "b", &l, T0 + 2000, &mut Vec::new()).unwrap();
            assert!(!d.allowed && d.retry_after_ms == 1);
        }
        assert_eq!(st.gets.get(), gets);
        assert_eq!(
            st.map.borrow()["b"].0,
            tat,
            "a denial never changes the bucket"
        );
    }

    proptest::proptest! {
        /// Several workers, each with its own guesses, on one bucket, with writes to other keys
        /// in between: every decision is the one a store without guesses gives.
        #[test]
        fn guesses_never_change_a_decision(ops in proptest::collection::vec((0usize..3, 0u8..4, 0u64..250, 0u64..400), 1..160)) {
            use crate::store::{Guesses, Speculative};
            use std::cell::RefCell;
            let plain = MemoryStore::default();
            let spec = MemoryStore::default();
            let guesses: Vec<RefCell<Guesses>> = (0..3).map(|_| RefCell::new(Guesses::default())).collect();
            let l = lim(100, 1, 4);
            let mut t = T0;
            for (worker, kind, gap, behind) in ops {
                // workers' clocks are not in step: a request may carry an earlier time
                t += gap * 100;
                let now = t - behind * 100;
                if kind == 0 {
                    plain.set("other", b"x", 0);
                    spec.set("other", b"x", 0);
                    continue;
                }
                let want = take(&plain, "b", &l, now, &mut Vec::new());
                let sp = Speculative::new(&spec, &guesses[worker], now / 1000);
                let got = take(&sp, "b", &l, now, &mut Vec::new());
                proptest::prop_assert_eq!(want, got);
            }
        }

        /// Over any arrival pattern, allowed ≤ burst + rate × elapsed (the token bucket's promise).
        #[test]
        fn never_exceeds_the_bucket(req in 1u64..5000, win in 1u64..3600, burst in 1u64..100,
                                    gaps in proptest::collection::vec(0u64..2_000_000, 1..200)) {
            let st = MemoryStore::default();
            let l = lim(req, win, burst);
            let mut t = T0;
            let mut allowed = 0u128;
            for g in &gaps {
                t += g;
                if take(&st, "p", &l, t, &mut Vec::new()).unwrap().allowed { allowed += 1; }
            }
            let elapsed = u128::from(t - T0);
            let bound = u128::from(burst) + elapsed * u128::from(req) / (u128::from(win) * 1_000_000);
            proptest::prop_assert!(allowed <= bound, "allowed {} > bound {}", allowed, bound);
        }
    }
}
