//! Fleet-wide limits: a plan's limit counted by a rate-limit engine that every Envoy replica
//! asks (Envoy's rate-limit service API: Limitador, envoyproxy/ratelimit), instead of each
//! Envoy's own shared data. Pure: the mode a policy uses, the descriptor keygate sends, and the
//! leases (tokens taken from the engine in batches, spent locally) in shared data.
//!
//! **per request**: one `ShouldRateLimit` per request, `hits_addend` 1. Exact; a round trip a
//! request.
//!
//! **leased**: a worker with no tokens asks the engine for a lease of `n` tokens
//! (`hits_addend: n`); the engine counts all `n` at once, then keygate spends them one request at a
//! time from a shared-data entry per owner (CAS, like the local buckets), so the fleet never
//! admits more than the engine granted. Tokens belong to the engine's window they were taken in:
//! they expire at that window's reset (the engine's `duration_until_reset`, counted from when the
//! call was sent, so never after the engine's reset), and are never spent in the next window.
//!
//! What a lease can strand (taken from the engine, never spent): at most the last lease of each
//! Envoy replica (one entry per owner and replica; each worker of a replica may have one lease call
//! in flight, so W leases per replica at most), when the window ends or a replica goes idle or
//! dies. A lease is `lease.fraction` of what the engine said remains (at least 1, at most
//! `lease.max`), so as a limit nears its end the leases shrink to single tokens: with R replicas of
//! W workers, the fleet admits at least `limit - R * W * max(1, min(lease.max, fraction *
//! remaining))` in a window where clients ask for more than the limit. Stranded tokens are
//! counted (`keygate.fleet.lease.stranded`) when an expired lease is replaced.

use std::borrow::Cow;

use crate::ratelimit::Scope;
use crate::rls;
use crate::state_key;
use crate::store::{SetOutcome, SharedStore, ABSENT_CAS};

/// How a policy's limit is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// This Envoy's own token bucket (shared data): the limit is per replica.
    Local,
    /// One engine call per request.
    Request,
    /// Leases of tokens taken from the engine, spent locally.
    Leased,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "local" => Some(Mode::Local),
            "request" => Some(Mode::Request),
            "leased" => Some(Mode::Leased),
            _ => None,
        }
    }
}

/// What a request gets when the engine fails (slow, down, erroring, garbage).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnEngineFailure {
    /// This Envoy's own token bucket for the policy (the per-replica limit).
    Local,
    /// 503 `rate-limit-unavailable`.
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeasePolicy {
    /// The largest lease, in tokens.
    pub max: u64,
    /// A lease is this percentage of what the engine said remains (1-100).
    pub percent: u64,
    /// How long a lease lives when the engine does not say when its window resets (ms).
    pub ttl_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetConfig {
    /// The Envoy cluster of the engine (HTTP/2).
    pub cluster: String,
    pub authority: String,
    /// The rate-limit domain (Limitador's namespace).
    pub domain: String,
    pub timeout_ms: u64,
    pub on_failure: OnEngineFailure,
    pub retry_after_s: u64,
    /// Mode by policy name (a plan's name, or `key` for keys with their own `rate_limit`).
    pub plans: Vec<(String, Mode)>,
    /// For policies not named in `plans`.
    pub default: Mode,
    pub lease: LeasePolicy,
}

impl FleetConfig {
    pub fn mode_for(&self, policy: &str) -> Mode {
        self.plans
            .iter()
            .find(|(n, _)| n == policy)
            .map_or(self.default, |(_, m)| *m)
    }
}

/// Why a call to the engine failed (its counter, `Metric::of_engine_failure`): never a verdict,
/// `fleet.on_failure` decides what the requests get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineFailure {
    /// No answer within `fleet.timeout_ms` (Envoy's 504, gRPC DEADLINE_EXCEEDED, or an
    /// UNAVAILABLE that came at the timeout).
    Timeout,
    /// An HTTP status other than 200.
    Status,
    /// A gRPC status other than OK (and than those above).
    Grpc,
    /// gRPC UNAVAILABLE well before the timeout: no connection, a reset.
    Unavailable,
    /// An answer keygate cannot read.
    BadBody,
    /// The host refused to dispatch the call.
    Dispatch,
    /// The lease in shared data could not be written.
    Store,
}

impl EngineFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineFailure::Timeout => "timeout",
            EngineFailure::Status => "status",
            EngineFailure::Grpc => "grpc",
            EngineFailure::Unavailable => "unavailable",
            EngineFailure::BadBody => "bad_body",
            EngineFailure::Dispatch => "dispatch",
            EngineFailure::Store => "store",
        }
    }
}

/// Whether a call that failed with gRPC UNAVAILABLE timed out: Envoy reports its own timeout as
/// UNAVAILABLE too, told apart by the time it took (at least 90% of the call's timeout: Envoy's
/// timer and the wall clock differ by a few ms).
pub fn timed_out(elapsed_ms: u64, timeout_ms: u64) -> bool {
    elapsed_ms.saturating_mul(10) >= timeout_ms.saturating_mul(9)
}

/// What an engine's answer was, from its HTTP `:status`, its gRPC status (`rls::grpc_status`),
/// the body's size and the time the call took: `Ok` when the body is to be decoded.
pub fn classify(
    status: Option<&[u8]>,
    grpc: Option<u32>,
    body_size: usize,
    elapsed_ms: u64,
    timeout_ms: u64,
) -> Result<(), EngineFailure> {
    match status {
        Some(b"200") => {
            // Envoy answers a gRPC call it could not complete with a gRPC status itself:
            // 14 UNAVAILABLE (no connection, reset), 4 DEADLINE_EXCEEDED
            if grpc == Some(14) && !timed_out(elapsed_ms, timeout_ms) {
                Err(EngineFailure::Unavailable)
            } else if grpc == Some(4) || grpc == Some(14) {
                Err(EngineFailure::Timeout)
            } else if grpc != Some(0) {
                Err(EngineFailure::Grpc)
            } else if body_size == 0 || body_size > rls::MAX_RESPONSE_BYTES {
                Err(EngineFailure::BadBody)
            } else {
                Ok(())
            }
        }
        Some(b"504") => Err(EngineFailure::Timeout),
        _ => Err(EngineFailure::Status),
    }
}

/// The descriptor entry that names a limit's owner.
pub fn owner_entry(scope: Scope) -> &'static str {
    match scope {
        Scope::Key => "key_id",
        Scope::Subject => "subject",
        Scope::Account => "account",
    }
}

/// The one descriptor keygate sends: `[("plan", policy), (owner_entry(per), owner)]`, the owner
/// being counted as `kind` (`state_key::descriptor_value`: a key standing in for an absent
/// account or subject is `~key:<id>`). Never the secret: the key's id (or its account / subject).
pub fn descriptor<'a>(
    policy: &'a str,
    per: Scope,
    kind: Scope,
    owner: &'a str,
) -> [(&'a str, Cow<'a, str>); 2] {
    [
        ("plan", Cow::Borrowed(policy)),
        (
            owner_entry(per),
            state_key::descriptor_value(per, kind, owner),
        ),
    ]
}

/// The shortest a remembered OVER_LIMIT lasts: an engine that says its window resets in 0 s
/// (Limitador does in its window's last second, its headers count whole seconds) is asked
/// again a second later, not at once (`Retry-After` counts whole seconds too).
pub const MIN_DENIAL_MS: u64 = 1000;

/// An engine's numbers, bounded before keygate acts on them or shows them to a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counted {
    /// The engine's limit (1 to `u32::MAX`: `requests_per_unit` is a uint32), else the
    /// configured one.
    pub limit: u64,
    /// What the engine says remains, at most `limit` (`None`: it did not say).
    pub remaining: Option<u64>,
    /// Milliseconds until the engine's window resets, at most the plan's window (`None`: it
    /// did not say). Zero stays zero: a lease of zero life serves only the requests that asked.
    pub reset_ms: Option<u64>,
}

/// Bounds an engine's status: `configured` is the plan's limit, `window_ms` its window (the
/// longest any of the engine's times may count for: a huge reset is not a ban for ever).
pub fn counted(status: Option<rls::Status>, configured: u64, window_ms: u64) -> Counted {
    let limit = status
        .and_then(|s| s.limit)
        .map_or(configured, |l| l.clamp(1, u64::from(u32::MAX)));
    Counted {
        limit,
        remaining: status.map(|s| s.remaining.min(limit)),
        reset_ms: status.and_then(|s| s.reset_ms).map(|r| r.min(window_ms)),
    }
}

/// How long an OVER_LIMIT is remembered (and the 429's `Retry-After`): the engine's reset, at
/// least [`MIN_DENIAL_MS`], at most the plan's window; `fallback_ms` when the engine gave none.
pub fn denial_ms(c: &Counted, fallback_ms: u64, window_ms: u64) -> u64 {
    c.reset_ms
        .unwrap_or(fallback_ms)
        .max(MIN_DENIAL_MS)
        .min(window_ms.max(MIN_DENIAL_MS))
}

/// A lease's size: `percent` of what remains (at least 1, at most `max`).
pub fn lease_size(p: &LeasePolicy, remaining: u64) -> u32 {
    let n = remaining.saturating_mul(p.percent) / 100;
    u32::try_from(n.clamp(1, p.max.max(1))).unwrap_or(u32::MAX)
}

/// One owner's lease in shared data (40 bytes): unspent tokens and when they expire, when a
/// remembered OVER_LIMIT ends, and the engine's limit and remaining count at the last answer
/// (for the rate-limit headers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseState {
    pub tokens: u64,
    pub expires_ms: u64,
    pub denied_until_ms: u64,
    pub limit: u64,
    pub engine_remaining: u64,
}

impl LeaseState {
    pub fn encode(&self) -> [u8; 40] {
        let mut b = [0u8; 40];
        for (i, v) in [
            self.tokens,
            self.expires_ms,
            self.denied_until_ms,
            self.limit,
            self.engine_remaining,
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(s) = b.get_mut(i * 8..i * 8 + 8) {
                s.copy_from_slice(&v.to_le_bytes());
            }
        }
        b
    }

    /// `None` for anything but a 40-byte value (then the entry counts as empty).
    pub fn decode(b: &[u8]) -> Option<LeaseState> {
        if b.len() != 40 {
            return None;
        }
        let n = |i: usize| {
            b.get(i * 8..i * 8 + 8)
                .and_then(|s| s.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        Some(LeaseState {
            tokens: n(0),
            expires_ms: n(1),
            denied_until_ms: n(2),
            limit: n(3),
            engine_remaining: n(4),
        })
    }

    /// Unspent tokens of a lease that has not expired; a lease that would live longer than
    /// `max_ms` from now (the wall clock was stepped back) counts as expired.
    fn live_tokens(&self, now_ms: u64, max_ms: u64) -> u64 {
        if self.expires_ms > now_ms && self.expires_ms - now_ms <= max_ms {
            self.tokens
        } else {
            0
        }
    }

    /// A remembered OVER_LIMIT, if it lasts beyond now (and no longer than `max_ms`: one that
    /// would is from a clock stepped back, and is forgotten): ms until it ends.
    fn denial(&self, now_ms: u64, max_ms: u64) -> Option<u64> {
        let left = self.denied_until_ms.checked_sub(now_ms)?;
        (left > 0 && left <= max_ms).then_some(left)
    }
}

/// What spending one token from a lease gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spend {
    /// A token was spent: the fleet-wide limit, what remains as far as this replica knows (its
    /// unspent lease plus the engine's remaining count at its last answer), ms until the reset.
    Spent {
        limit: u64,
        remaining: u64,
        reset_ms: u64,
    },
    /// The engine said OVER_LIMIT and its window has not reset yet.
    Denied { limit: u64, retry_ms: u64 },
    /// No token here: ask the engine for a lease of about `lease_size(remaining)`, where
    /// `remaining` is the engine's count at its last answer in this window (`None`: unknown).
    Empty { remaining: Option<u64> },
    /// The store refused every attempt.
    Failed,
}

const MAX_ATTEMPTS: u32 = 16;

fn read(store: &dyn SharedStore, key: &str) -> (Option<LeaseState>, u32) {
    match store.get(key) {
        Some((v, cas)) => (LeaseState::decode(&v), cas),
        None => (None, ABSENT_CAS),
    }
}

/// Spends one token of the owner's lease at `key`, if it has one. `max_ms` is the plan's
/// window: no stored time counts for longer (a lease or a denial further ahead is from a clock
/// stepped back, and is ignored), and what is shown stays consistent (remaining <= limit).
pub fn spend(store: &dyn SharedStore, key: &str, now_ms: u64, max_ms: u64) -> Spend {
    for _ in 0..MAX_ATTEMPTS {
        let (state, cas) = read(store, key);
        let Some(mut s) = state else {
            return Spend::Empty { remaining: None };
        };
        if s.live_tokens(now_ms, max_ms) == 0 {
            if store.last_was_guess() {
                // decided on this worker's guess of its own last write: read the host's value
                continue;
            }
            if let Some(retry_ms) = s.denial(now_ms, max_ms) {
                return Spend::Denied {
                    limit: s.limit,
                    retry_ms,
                };
            }
            let live = s.expires_ms > now_ms && s.expires_ms - now_ms <= max_ms;
            let remaining = live.then_some(s.engine_remaining);
            return Spend::Empty { remaining };
        }
        s.tokens -= 1;
        match store.set(key, &s.encode(), cas) {
            SetOutcome::Written => {
                return Spend::Spent {
                    limit: s.limit,
                    remaining: s.tokens.saturating_add(s.engine_remaining).min(s.limit),
                    reset_ms: s.expires_ms - now_ms,
                }
            }
            SetOutcome::CasMismatch => continue,
            SetOutcome::Failed => return Spend::Failed,
        }
    }
    Spend::Failed
}

/// A remembered OVER_LIMIT at `key`, if its window has not reset: (limit, ms until it does).
pub fn denied(store: &dyn SharedStore, key: &str, now_ms: u64, max_ms: u64) -> Option<(u64, u64)> {
    let (s, _) = read(store, key);
    let s = s?;
    s.denial(now_ms, max_ms).map(|left| (s.limit, left))
}

/// Adds `granted` tokens (taken from the engine, valid until `expires_ms`) to the owner's lease.
/// Unspent tokens of an expired lease are dropped (never spent in another window) and returned:
/// what was stranded. Live tokens of an earlier answer are kept, under the earlier expiry of the
/// two. `None` when the store refused every attempt (the tokens are then stranded too).
#[allow(clippy::too_many_arguments)]
pub fn grant(
    store: &dyn SharedStore,
    key: &str,
    granted: u64,
    expires_ms: u64,
    c: &Counted,
    now_ms: u64,
    max_ms: u64,
) -> Option<u64> {
    for _ in 0..MAX_ATTEMPTS {
        let (state, cas) = read(store, key);
        let old = state.unwrap_or_default();
        let live = old.live_tokens(now_ms, max_ms);
        let stranded = old.tokens - live;
        let new = LeaseState {
            tokens: live.saturating_add(granted),
            expires_ms: if live > 0 {
                old.expires_ms.min(expires_ms)
            } else {
                expires_ms
            },
            denied_until_ms: 0,
            limit: c.limit,
            engine_remaining: c.remaining.unwrap_or(0),
        };
        match store.set(key, &new.encode(), cas) {
            SetOutcome::Written => return Some(stranded),
            SetOutcome::CasMismatch => continue,
            SetOutcome::Failed => return None,
        }
    }
    None
}

/// Remembers an OVER_LIMIT until `until_ms` (bounded by the caller: `denial_ms`); live tokens
/// are kept (they were taken already). Returns the tokens of an expired lease dropped meanwhile.
pub fn remember_denial(
    store: &dyn SharedStore,
    key: &str,
    until_ms: u64,
    limit: u64,
    now_ms: u64,
    max_ms: u64,
) -> u64 {
    for _ in 0..MAX_ATTEMPTS {
        let (state, cas) = read(store, key);
        let old = state.unwrap_or_default();
        let live = old.live_tokens(now_ms, max_ms);
        let new = LeaseState {
            tokens: live,
            expires_ms: if live > 0 { old.expires_ms } else { 0 },
            denied_until_ms: until_ms,
            limit,
            engine_remaining: 0,
        };
        match store.set(key, &new.encode(), cas) {
            SetOutcome::Written => return old.tokens - live,
            SetOutcome::CasMismatch => continue,
            SetOutcome::Failed => return 0,
        }
    }
    0
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use proptest::prelude::*;

    /// The plan's window in the tests that are not about it: far away.
    const W: u64 = 1 << 40;

    fn spend(st: &MemoryStore, key: &str, now: u64) -> Spend {
        super::spend(st, key, now, W)
    }

    #[test]
    fn an_engines_answer_is_classified_by_status_grpc_status_and_time() {
        use EngineFailure as F;
        let ok = Some(&b"200"[..]);
        assert_eq!(classify(ok, Some(0), 20, 5, 200), Ok(()));
        assert_eq!(classify(ok, Some(0), 0, 5, 200), Err(F::BadBody));
        let big = rls::MAX_RESPONSE_BYTES + 1;
        assert_eq!(classify(ok, Some(0), big, 5, 200), Err(F::BadBody));
        assert_eq!(classify(ok, None, 20, 5, 200), Err(F::Grpc));
        assert_eq!(classify(ok, Some(7), 20, 5, 200), Err(F::Grpc));
        assert_eq!(classify(ok, Some(4), 20, 5, 200), Err(F::Timeout));
        // UNAVAILABLE: at 90% of the timeout or later, Envoy's own timeout
        assert_eq!(classify(ok, Some(14), 0, 179, 200), Err(F::Unavailable));
        assert_eq!(classify(ok, Some(14), 0, 180, 200), Err(F::Timeout));
        assert_eq!(classify(Some(b"504"), None, 0, 1, 200), Err(F::Timeout));
        assert_eq!(classify(Some(b"503"), None, 0, 1, 200), Err(F::Status));
        assert_eq!(classify(None, None, 0, 1, 200), Err(F::Status));
    }

    fn denied(st: &MemoryStore, key: &str, now: u64) -> Option<(u64, u64)> {
        super::denied(st, key, now, W)
    }

    fn remember_denial(st: &MemoryStore, key: &str, until: u64, limit: u64, now: u64) -> u64 {
        super::remember_denial(st, key, until, limit, now, W)
    }

    fn grant(
        st: &MemoryStore,
        key: &str,
        n: u64,
        expires: u64,
        limit: u64,
        remaining: u64,
        now: u64,
    ) -> Option<u64> {
        let c = Counted {
            limit,
            remaining: Some(remaining),
            reset_ms: None,
        };
        super::grant(st, key, n, expires, &c, now, W)
    }

    const P: LeasePolicy = LeasePolicy {
        max: 50,
        percent: 10,
        ttl_ms: 1000,
    };

    #[test]
    fn modes_by_policy() {
        let c = FleetConfig {
            cluster: "rls".into(),
            authority: "rls".into(),
            domain: "keygate".into(),
            timeout_ms: 100,
            on_failure: OnEngineFailure::Local,
            retry_after_s: 1,
            plans: vec![("tiny".into(), Mode::Request), ("key".into(), Mode::Leased)],
            default: Mode::Local,
            lease: P,
        };
        assert_eq!(c.mode_for("tiny"), Mode::Request);
        assert_eq!(c.mode_for("key"), Mode::Leased);
        assert_eq!(c.mode_for("other"), Mode::Local);
        let d = descriptor("tiny", Scope::Account, Scope::Account, "acme");
        assert_eq!(
            [(d[0].0, &*d[0].1), (d[1].0, &*d[1].1)],
            [("plan", "tiny"), ("account", "acme")]
        );
        // a key with no account, on a per-account plan: the account entry, keygate's own value
        let d = descriptor("tiny", Scope::Account, Scope::Key, "k1");
        assert_eq!((d[1].0, &*d[1].1), ("account", "~key:k1"));
    }

    #[test]
    fn lease_sizes_shrink_as_the_limit_is_spent() {
        assert_eq!(lease_size(&P, 1000), 50);
        assert_eq!(lease_size(&P, 300), 30);
        assert_eq!(lease_size(&P, 19), 1);
        assert_eq!(lease_size(&P, 0), 1);
        let all = LeasePolicy {
            max: 5,
            percent: 100,
            ttl_ms: 1,
        };
        assert_eq!(lease_size(&all, 3), 3);
    }

    #[test]
    fn state_roundtrips_and_rejects_other_sizes() {
        let s = LeaseState {
            tokens: 3,
            expires_ms: 9,
            denied_until_ms: 7,
            limit: 30,
            engine_remaining: 12,
        };
        assert_eq!(LeaseState::decode(&s.encode()), Some(s));
        assert_eq!(LeaseState::decode(&[0; 16]), None);
    }

    #[test]
    fn tokens_are_spent_once_and_expire_with_their_window() {
        let st = MemoryStore::default();
        assert_eq!(spend(&st, "k", 0), Spend::Empty { remaining: None });
        assert_eq!(grant(&st, "k", 2, 1000, 30, 20, 0), Some(0));
        assert_eq!(
            spend(&st, "k", 10),
            Spend::Spent {
                limit: 30,
                remaining: 21,
                reset_ms: 990
            }
        );
        assert!(matches!(
            spend(&st, "k", 20),
            Spend::Spent { remaining: 20, .. }
        ));
        assert_eq!(
            spend(&st, "k", 30),
            Spend::Empty {
                remaining: Some(20)
            }
        );
        // a token left when the window resets is stranded, never spent after it
        grant(&st, "k", 1, 1000, 30, 19, 40);
        assert_eq!(spend(&st, "k", 1000), Spend::Empty { remaining: None });
        assert_eq!(grant(&st, "k", 5, 2000, 30, 25, 1001), Some(1));
    }

    #[test]
    fn concurrent_grants_add_under_the_earlier_expiry() {
        let st = MemoryStore::default();
        grant(&st, "k", 3, 900, 30, 20, 0);
        grant(&st, "k", 4, 1000, 30, 16, 0);
        let s = LeaseState::decode(&st.map.borrow()["k"].0).unwrap();
        assert_eq!((s.tokens, s.expires_ms, s.engine_remaining), (7, 900, 16));
    }

    #[test]
    fn an_over_limit_is_remembered_until_the_reset() {
        let st = MemoryStore::default();
        assert_eq!(remember_denial(&st, "k", 500, 30, 0), 0);
        assert_eq!(denied(&st, "k", 100), Some((30, 400)));
        assert_eq!(
            spend(&st, "k", 100),
            Spend::Denied {
                limit: 30,
                retry_ms: 400
            }
        );
        assert_eq!(denied(&st, "k", 500), None);
        assert_eq!(spend(&st, "k", 500), Spend::Empty { remaining: None });
        // a grant (new window) clears it
        remember_denial(&st, "k", 5000, 30, 600);
        grant(&st, "k", 1, 7000, 30, 0, 600);
        assert!(matches!(spend(&st, "k", 601), Spend::Spent { .. }));
    }

    #[test]
    fn cas_races_retry_and_never_double_spend() {
        let st = MemoryStore::default();
        grant(&st, "k", 1, 1000, 30, 0, 0);
        st.conflicts.set(3);
        assert!(matches!(spend(&st, "k", 1), Spend::Spent { .. }));
        assert_eq!(spend(&st, "k", 2), Spend::Empty { remaining: Some(0) });
        st.conflicts.set(100);
        grant(&st, "k", 0, 1000, 30, 0, 3);
    }

    #[test]
    fn engine_numbers_are_bounded() {
        let st = |limit: Option<u64>, remaining: u64, reset_ms: Option<u64>| rls::Status {
            limit,
            unit_s: None,
            remaining,
            reset_ms,
        };
        // remaining above the limit, a reset of millennia: the limit, the plan's window
        let c = counted(Some(st(Some(5), 1000, Some(u64::MAX / 2))), 30, 60_000);
        assert_eq!(
            c,
            Counted {
                limit: 5,
                remaining: Some(5),
                reset_ms: Some(60_000)
            }
        );
        // a limit beyond what the protocol can carry; no status: the configured limit
        assert_eq!(
            counted(Some(st(Some(1 << 40), 1, None)), 30, 1).limit,
            u64::from(u32::MAX)
        );
        assert_eq!(
            counted(None, 30, 1000),
            Counted {
                limit: 30,
                remaining: None,
                reset_ms: None
            }
        );
        // a denial: at least a second (a zero reset is not a loop), at most the window
        let zero = counted(Some(st(Some(5), 0, Some(0))), 30, 60_000);
        assert_eq!(zero.reset_ms, Some(0));
        assert_eq!(denial_ms(&zero, 500, 60_000), 1000);
        let huge = counted(Some(st(Some(5), 0, Some(1 << 50))), 30, 60_000);
        assert_eq!(denial_ms(&huge, 500, 60_000), 60_000);
        assert_eq!(denial_ms(&counted(None, 30, 2000), 5000, 2000), 2000);
        assert_eq!(
            denial_ms(&counted(Some(st(None, 0, Some(1500))), 3, 2000), 0, 2000),
            1500
        );
    }

    #[test]
    fn stored_times_beyond_the_window_are_a_clock_stepped_back() {
        let st = MemoryStore::default();
        // written an hour ahead of now (the clock went back): neither a ban nor a lease
        super::remember_denial(&st, "d", 3_600_000 + 500, 5, 0, 60_000);
        assert_eq!(super::denied(&st, "d", 0, 60_000), None);
        assert_eq!(
            super::spend(&st, "d", 0, 60_000),
            Spend::Empty { remaining: None }
        );
        let c = Counted {
            limit: 5,
            remaining: Some(50),
            reset_ms: None,
        };
        super::grant(&st, "l", 3, 3_600_000, &c, 0, 60_000);
        assert_eq!(
            super::spend(&st, "l", 0, 60_000),
            Spend::Empty { remaining: None }
        );
        // within the window: spent, and what is shown stays within the limit
        super::grant(&st, "m", 3, 30_000, &c, 0, 60_000);
        assert_eq!(
            super::spend(&st, "m", 0, 60_000),
            Spend::Spent {
                limit: 5,
                remaining: 5,
                reset_ms: 30_000
            }
        );
    }

    proptest! {
        /// Whatever the interleaving of grants and spends (with CAS conflicts), no more tokens
        /// are spent than were granted for the window, and none after the window's reset.
        #[test]
        fn never_spends_more_than_granted(ops in proptest::collection::vec((0u8..3, 1u64..5, 0u64..50), 1..200)) {
            let st = MemoryStore::default();
            let mut now = 0u64;
            let (mut granted, mut spent) = (0u64, 0u64);
            for (op, n, dt) in ops {
                now += dt;
                let window_end = (now / 1000 + 1) * 1000;
                match op {
                    0 => {
                        st.conflicts.set((n % 3) as u32);
                        if grant(&st, "k", n, window_end, 100, 0, now).is_some() {
                            granted += n;
                        }
                    }
                    _ => {
                        if let Spend::Spent { .. } = spend(&st, "k", now) {
                            spent += 1;
                        }
                    }
                }
                prop_assert!(spent <= granted);
                if now % 1000 == 0 || dt > 0 && (now - dt) / 1000 != now / 1000 {
                    // a new window: what was granted before cannot be spent any more
                    let s = LeaseState::decode(&st.map.borrow().get("k").map(|e| e.0.clone()).unwrap_or_default());
                    if let Some(s) = s { prop_assert!(s.expires_ms <= now || s.expires_ms == window_end); }
                }
            }
        }
    }
}
