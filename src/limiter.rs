//! One owner's count under one policy: a token bucket (`ratelimit`) or a rolling window
//! (`window`), in one shared-data value that says what it is.
//!
//! The key (`state_key`) names the policy and the owner. The value names the rest: its
//! algorithm and format, and for a token bucket the limit's parameters, since a bucket's time is
//! scaled by `requests` and its capacity is `burst`: read under other parameters, the same bytes
//! would mean another instant (a ban for decades, or use forgotten). A value written under other
//! parameters or another algorithm is **rebased** to the current ones by the next request, and
//! keeps what it counted:
//!
//! - bucket to bucket: the tokens spent stay spent (the same fraction of a token, rounded
//!   towards refusing), at most the new capacity: a lowered limit is an empty bucket refilling at
//!   the new rate (`Retry-After` of one new interval at most), a raised one counts earlier use;
//! - window to bucket: the recorded instants are replayed through the new bucket;
//! - bucket to window: the tokens still spent (rounded up, at most N) are recorded as taken now;
//! - window to window: the newest instants are kept (`window`).
//!
//! So a plan edited over LDS, a per-key limit the key service lowers or raises, a plan switched
//! between algorithms: the same entry, rebased once (one write), no lockout and no earlier use
//! forgotten. Carrying the parameters in the value, rather than in the key, is what makes that
//! possible (a key per parameter set would start every change from a full bucket, and leave
//! an entry behind per owner and change: shared data has no delete).
//!
//! Layout of a bucket (32 bytes, little-endian): `kgB1`, `requests` u32, `window_s` u32, `burst`
//! u32, the TAT u128 in ns × `requests`; while two parameter sets are in use at once, the other
//! set's 32 bytes and when it was last in use follow ([`PAIR_LEN`], see `rebased`). A window:
//! `kgW1` and its ring (`window`). Anything else (another plugin's bytes) is overwritten as if
//! absent.

use crate::ratelimit::Algorithm;
use crate::ratelimit::{self, div, update, Limit, RateDecision, RateError, Write, NS, NS_PER_MS};
use crate::store::SharedStore;
use crate::window;

/// Marks a token bucket's value (and its format version).
pub const BUCKET_TAG: &[u8; 4] = b"kgB1";
/// The size of a token bucket's value.
pub const BUCKET_LEN: usize = 32;
/// How far ahead of its capacity a bucket's TAT may be (worker clocks differ by far less; more
/// is a wall clock stepped back) before it is read as an empty bucket now.
const MAX_AHEAD_NS: u128 = 1_000_000_000;

/// A bucket value's first 16 bytes as one number: the tag, then the parameters it is written
/// under (compared and written whole: one comparison a request, no byte loops).
fn header(limit: &Limit) -> u128 {
    let n = |v: u64| u128::from(u32::try_from(v).unwrap_or(u32::MAX));
    u128::from(u32::from_le_bytes(*BUCKET_TAG))
        | n(limit.requests) << 32
        | n(limit.window_s) << 64
        | n(limit.burst) << 96
}

/// The limit a bucket's header names.
fn limit_of(header: u128) -> Limit {
    let n = |shift: u32| u64::from((header >> shift) as u32).max(1);
    Limit {
        requests: n(32),
        window_s: n(64),
        burst: n(96),
    }
}

fn encode_bucket(header: u128, tat: u128, out: &mut Vec<u8>) {
    let mut b = [0u8; BUCKET_LEN];
    b[..16].copy_from_slice(&header.to_le_bytes());
    b[16..].copy_from_slice(&tat.to_le_bytes());
    out.clear();
    out.extend_from_slice(&b);
}

/// A bucket's header and TAT (`None`: not a bucket's value).
fn decode_bucket(v: &[u8]) -> Option<(u128, u128)> {
    let v: &[u8; BUCKET_LEN] = v.try_into().ok()?;
    let (h, t) = v.split_at(16);
    let header = u128::from_le_bytes(h.try_into().ok()?);
    ((header as u32).to_le_bytes() == *BUCKET_TAG)
        .then(|| Some((header, u128::from_le_bytes(t.try_into().ok()?))))
        .flatten()
}

/// The bucket's debt at `now_ns` (scaled units of `l`), at most its capacity: how far its TAT
/// is ahead of now.
fn debt(l: &Limit, tat: u128, now_ns: u128) -> u128 {
    let req = u128::from(l.requests.max(1));
    let cap = u128::from(l.burst.max(1)) * u128::from(l.window_s.max(1)) * NS;
    tat.saturating_sub(now_ns * req).min(cap)
}

/// A TAT written under `old` read under `new` at `now_ns`: the same tokens spent (to the
/// fraction, rounded towards refusing), at most the new capacity.
fn rebase(old: &Limit, tat: u128, new: &Limit, now_ns: u128) -> u128 {
    let t_old = u128::from(old.window_s.max(1)) * NS;
    let t_new = u128::from(new.window_s.max(1)) * NS;
    let d = debt(old, tat, now_ns);
    // tokens = d / t_old; the same in new units: whole tokens, then the fraction (each product
    // fits u128: the fraction is below t_old <= 3.2e16, times t_new)
    let spent = (d / t_old) * t_new + div((d % t_old) * t_new, t_old, true);
    let cap = u128::from(new.burst.max(1)) * t_new;
    now_ns * u128::from(new.requests.max(1)) + spent.min(cap)
}

/// A window's instants replayed through a bucket of `l`: its TAT (`None`: none recorded).
fn replay(ring: &window::Ring<'_>, l: &Limit, now_ns: u128) -> Option<u128> {
    let req = u128::from(l.requests.max(1));
    let t = u128::from(l.window_s.max(1)) * NS;
    let cap = u128::from(l.burst.max(1)) * t;
    let mut tat: Option<u128> = None;
    for i in 0..ring.len() {
        let Some(ms) = ring.at(i) else { continue };
        let at = (u128::from(ms) * 1_000_000).min(now_ns) * req;
        let base = tat.map_or(at, |x| x.max(at));
        tat = Some((base + t).min(at + cap));
    }
    tat
}

/// Takes one request from the count at `key` under `limit` and `algorithm` at `now_ns` (the
/// host's clock, unrounded; `buf`: scratch for the new value).
pub fn take(
    store: &dyn SharedStore,
    key: &str,
    limit: &Limit,
    algorithm: Algorithm,
    now_ns: u64,
    buf: &mut Vec<u8>,
) -> Result<RateDecision, RateError> {
    match algorithm {
        Algorithm::TokenBucket => {
            let h = header(limit);
            update(store, key, buf, |value, out| {
                bucket(limit, h, value, now_ns, out)
            })
        }
        Algorithm::RollingWindow => update(store, key, buf, |value, out| {
            rolling(limit, value, now_ns, out)
        }),
    }
}

fn bucket(
    limit: &Limit,
    h: u128,
    value: Option<&[u8]>,
    now_ns: u64,
    out: &mut Vec<u8>,
) -> (RateDecision, Write) {
    let now = u128::from(now_ns);
    let tat = match (value, value.and_then(decode_bucket)) {
        (_, Some((stored, tat))) if stored == h => Some(tat),
        (None, _) => None,
        // written under other parameters, by a window, or foreign bytes
        (Some(v), _) => return rebased(limit, h, v, now, out),
    };
    match ratelimit::step_in(limit, tat, now, NS_PER_MS) {
        (d, Some(new_tat)) => {
            encode_bucket(h, new_tat, out);
            (d, Write::New)
        }
        (d, None) => match tat {
            Some(tat) if maybe_ahead(limit, &d) => {
                ahead_or(limit, h, (value.unwrap_or_default(), tat), now, out, d)
            }
            Some(_) => (d, Write::Unchanged),
            None => (d, Write::Nothing),
        },
    }
}

/// A denial whose wait is long: a TAT beyond the capacity by more than worker clocks differ
/// means the wall clock was stepped back, and the bucket is read as empty now (rebased);
/// otherwise the denial `d` stands. Out of line: its 128-bit products must not be hoisted into
/// every request.
#[cold]
#[inline(never)]
fn ahead_or(
    limit: &Limit,
    h: u128,
    (v, tat): (&[u8], u128),
    now: u128,
    out: &mut Vec<u8>,
    d: RateDecision,
) -> (RateDecision, Write) {
    if clamped(limit, tat, now) != tat {
        rebased(limit, h, v, now, out)
    } else {
        (d, Write::Unchanged)
    }
}

/// The size of a bucket's value while two parameter sets are in use at once: the current slot,
/// the other's, and when the other was last in use (ns).
pub const PAIR_LEN: usize = 72;

/// A bucket's current slot (header, TAT) and, while two parameter sets are in use, the other's
/// with when it was last in use (ns).
type Pair = ((u128, u128), Option<((u128, u128), u64)>);

fn decode_pair(v: &[u8]) -> Option<Pair> {
    let (first, rest) = v.split_at_checked(BUCKET_LEN)?;
    let cur = decode_bucket(first)?;
    match rest.split_at_checked(BUCKET_LEN) {
        None if rest.is_empty() => Some((cur, None)),
        Some((other, seen)) => {
            let seen = u64::from_le_bytes(seen.try_into().ok()?);
            Some((cur, Some((decode_bucket(other)?, seen))))
        }
        None => None,
    }
}

fn encode_pair(cur: (u128, u128), other: Option<((u128, u128), u64)>, out: &mut Vec<u8>) {
    encode_bucket(cur.0, cur.1, out);
    if let Some(((h, tat), seen)) = other {
        let mut b = Vec::with_capacity(BUCKET_LEN);
        encode_bucket(h, tat, &mut b);
        out.extend_from_slice(&b);
        out.extend_from_slice(&seen.to_le_bytes());
    }
}

/// A TAT of `l` charged one request at `now`, never beyond the bucket's capacity.
fn charge(l: &Limit, tat: u128, now: u128) -> u128 {
    let req = u128::from(l.requests.max(1));
    let t = u128::from(l.window_s.max(1)) * NS;
    let cap = u128::from(l.burst.max(1)) * t;
    (tat.max(now * req) + t).min(now * req + cap)
}

/// A bucket step on a value that is not this bucket's as it stands: written under other
/// parameters (or under two sets at once), by a rolling window, foreign bytes, or a TAT from a
/// clock stepped back. Stepped, and written either way.
///
/// Two parameter sets can be in use at once: an LDS update keeps the old listener's
/// connections on the old configuration while new ones get the new one, and two keygate plugins
/// may share a `shared_prefix`. Each set's count is kept beside the other's (the value is then
/// [`PAIR_LEN`] bytes), every request admitted under one is charged to both, and each side
/// decides on its own: neither forgets what the other admitted (a rebase back and forth would
/// drop what a smaller capacity cannot hold, again and again). The other slot goes when it has
/// not been in use for as long as its bucket takes to fill (it could hold nothing more then).
#[cold]
#[inline(never)]
fn rebased(
    limit: &Limit,
    h: u128,
    v: &[u8],
    now: u128,
    out: &mut Vec<u8>,
) -> (RateDecision, Write) {
    let now_ns = u64::try_from(now).unwrap_or(u64::MAX);
    let (mine, other) = match decode_pair(v) {
        Some(((ch, ct), other)) if ch == h => (Some(ct), other),
        // the other set's turn: the slots swap, the current one was in use until now
        Some(((ch, ct), Some(((oh, ot), _)))) if oh == h => (Some(ot), Some(((ch, ct), now_ns))),
        // new parameters: rebased from the current count, which is kept beside
        Some(((ch, ct), _)) => (
            Some(rebase(&limit_of(ch), ct, limit, now)),
            Some(((ch, ct), now_ns)),
        ),
        None => (
            window::Ring::parse(v).and_then(|ring| replay(&ring, limit, now)),
            None,
        ),
    };
    let mine = mine.map(|t| clamped(limit, t, now));
    // an other set unused for as long as its bucket takes to fill: nothing left to keep
    let other = other.filter(|((oh, _), seen)| {
        let o = limit_of(*oh);
        let full_ns = u128::from(o.burst) * u128::from(o.window_s) * NS / u128::from(o.requests);
        u128::from(now_ns.saturating_sub(*seen)) <= full_ns
    });
    match ratelimit::step_in(limit, mine, now, NS_PER_MS) {
        (d, Some(new_tat)) => {
            let other = other.map(|((oh, ot), seen)| ((oh, charge(&limit_of(oh), ot, now)), seen));
            encode_pair((h, new_tat), other, out);
            (d, Write::New)
        }
        // a denial keeps the counts, in the current parameters
        (d, None) => match mine {
            Some(tat) => {
                encode_pair((h, tat), other, out);
                (d, Write::New)
            }
            None => (d, Write::Nothing),
        },
    }
}

/// Whether a denial's wait is long enough that the TAT may lie beyond the bucket's capacity by
/// more than [`MAX_AHEAD_NS`] (cheap: one interval and a second; [`clamped`] tells exactly).
fn maybe_ahead(limit: &Limit, d: &RateDecision) -> bool {
    let interval_ms = limit.window_s.saturating_mul(1000) / limit.requests.max(1);
    d.retry_after_ms > interval_ms.saturating_add(1001)
}

/// The TAT, or the bucket's horizon (its full capacity spent now) when the TAT lies further
/// ahead than that by more than [`MAX_AHEAD_NS`]: only a wall clock stepped back puts it there.
fn clamped(limit: &Limit, tat: u128, now: u128) -> u128 {
    let req = u128::from(limit.requests.max(1));
    let cap = u128::from(limit.burst.max(1)) * u128::from(limit.window_s.max(1)) * NS;
    let horizon = now * req + cap;
    if tat > horizon + MAX_AHEAD_NS * req {
        horizon
    } else {
        tat
    }
}

fn rolling(
    limit: &Limit,
    value: Option<&[u8]>,
    now_ns: u64,
    out: &mut Vec<u8>,
) -> (RateDecision, Write) {
    let (n, w) = (limit.requests, limit.window_s);
    // a bucket's spent tokens become requests taken now
    let converted = value.and_then(decode_pair).map(|((stored, tat), _)| {
        let old = limit_of(stored);
        let d = debt(&old, tat, u128::from(now_ns));
        let spent = div(d, u128::from(old.window_s.max(1)) * NS, true);
        let count =
            usize::try_from(spent.min(u128::from(n.clamp(1, window::MAX_REQUESTS)))).unwrap_or(0);
        let now_ms = window::ms_up(now_ns);
        let mut ring = Vec::new();
        window::write_ring(count.max(1), now_ms, &mut ring, |i| {
            (i < count).then_some(now_ms)
        });
        ring
    });
    let read = converted.as_deref().or(value);
    match window::step(n, w, read, now_ns, out) {
        (d, true) => (d, Write::New),
        (d, false) => match (&converted, read) {
            (Some(ring), _) => {
                out.clear();
                out.extend_from_slice(ring);
                (d, Write::New)
            }
            (None, Some(v)) if window::Ring::parse(v).is_some() => (d, Write::Unchanged),
            _ => (d, Write::Nothing),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    const S: u64 = 1_000_000_000; // one second in ns
    const T0: u64 = 1_790_000_000 * S;

    fn lim(requests: u64, window_s: u64, burst: u64) -> Limit {
        Limit {
            requests,
            window_s,
            burst,
        }
    }

    fn bucket_at(st: &MemoryStore, l: &Limit, now: u64) -> RateDecision {
        take(st, "o", l, Algorithm::TokenBucket, now, &mut Vec::new()).unwrap()
    }

    fn window_at(st: &MemoryStore, l: &Limit, now: u64) -> RateDecision {
        take(st, "o", l, Algorithm::RollingWindow, now, &mut Vec::new()).unwrap()
    }

    fn spend(st: &MemoryStore, l: &Limit, now: u64, n: usize) {
        for _ in 0..n {
            assert!(bucket_at(st, l, now).allowed);
        }
    }

    /// Allowed requests in a row at `now`.
    fn drain(st: &MemoryStore, l: &Limit, alg: Algorithm, now: u64) -> usize {
        let mut n = 0;
        while take(st, "o", l, alg, now, &mut Vec::new()).unwrap().allowed {
            n += 1;
            assert!(n <= 100_000);
        }
        n
    }

    #[test]
    fn a_bucket_value_names_its_parameters() {
        let st = MemoryStore::default();
        bucket_at(&st, &lim(100, 3600, 100), T0);
        let v = st.map.borrow()["o"].0.clone();
        assert_eq!(v.len(), BUCKET_LEN);
        assert_eq!(&v[0..4], b"kgB1");
        assert_eq!(limit_of(decode_bucket(&v).unwrap().0), lim(100, 3600, 100));
    }

    #[test]
    fn a_lowered_limit_keeps_the_use_and_never_bans() {
        // 5 of 100 an hour spent; the plan drops to 10 an hour: 5 left, then one every 6 min
        let st = MemoryStore::default();
        let hi = lim(100, 3600, 100);
        let lo = lim(10, 3600, 10);
        spend(&st, &hi, T0, 5);
        assert_eq!(drain(&st, &lo, Algorithm::TokenBucket, T0 + S), 5);
        let d = bucket_at(&st, &lo, T0 + S);
        assert!(!d.allowed && d.limit == 10);
        assert!(d.retry_after_ms <= 360_000, "{d:?}");
        // 50 spent, then lowered to 10: an empty bucket refilling at the new rate, not a ban
        let st = MemoryStore::default();
        spend(&st, &hi, T0, 50);
        let d = bucket_at(&st, &lo, T0 + S);
        assert!(!d.allowed);
        assert!(d.retry_after_ms <= 360_000, "{d:?}");
        assert!(d.reset_ms <= 3_600_000, "{d:?}");
        assert!(bucket_at(&st, &lo, T0 + S + 360 * S).allowed);
    }

    #[test]
    fn a_raised_limit_counts_the_earlier_use() {
        let st = MemoryStore::default();
        let lo = lim(10, 3600, 10);
        assert_eq!(drain(&st, &lo, Algorithm::TokenBucket, T0), 10);
        // raised to 100 an hour: 90 more, not 100
        assert_eq!(
            drain(&st, &lim(100, 3600, 100), Algorithm::TokenBucket, T0 + S),
            90
        );
    }

    #[test]
    fn burst_and_window_changes_keep_the_tokens_spent() {
        // a lowered burst: what was spent beyond the new capacity is forgotten, nothing more
        let st = MemoryStore::default();
        spend(&st, &lim(60, 60, 50), T0, 50);
        let d = bucket_at(&st, &lim(60, 60, 10), T0);
        assert!(!d.allowed && d.retry_after_ms == 1000, "{d:?}");
        // a longer window (same requests): 4 of 10 spent stay spent, refilled at the new rate
        let st = MemoryStore::default();
        spend(&st, &lim(10, 60, 10), T0, 4);
        assert_eq!(drain(&st, &lim(10, 120, 10), Algorithm::TokenBucket, T0), 6);
        let d = bucket_at(&st, &lim(10, 120, 10), T0);
        assert_eq!(d.retry_after_ms, 12_000);
    }

    #[test]
    fn the_rebased_value_is_written_once_on_a_denial_too() {
        let st = MemoryStore::default();
        spend(&st, &lim(100, 3600, 100), T0, 50);
        let lo = lim(10, 3600, 10);
        assert!(!bucket_at(&st, &lo, T0).allowed);
        let v = st.map.borrow()["o"].0.clone();
        assert_eq!(limit_of(decode_pair(&v).unwrap().0 .0), lo);
        // and from then on it refills at the new rate
        let d = bucket_at(&st, &lo, T0 + 360 * S);
        assert!(d.allowed && d.remaining == 0);
    }

    #[test]
    fn switching_algorithms_keeps_the_count() {
        // a bucket of 10 an hour, 6 spent, becomes a window of 10 an hour: 4 left
        let st = MemoryStore::default();
        let l = lim(10, 3600, 10);
        spend(&st, &l, T0, 6);
        assert_eq!(drain(&st, &l, Algorithm::RollingWindow, T0 + S), 4);
        let d = window_at(&st, &l, T0 + S);
        assert!(!d.allowed);
        // and back: the window's 10 recorded instants replayed through the bucket: empty
        assert_eq!(drain(&st, &l, Algorithm::TokenBucket, T0 + 2 * S), 0);
        // a window with 3 used, then a bucket: 7 left
        let st = MemoryStore::default();
        for i in 0..3 {
            assert!(window_at(&st, &l, T0 + i * S).allowed);
        }
        assert_eq!(drain(&st, &l, Algorithm::TokenBucket, T0 + 3 * S), 7);
    }

    #[test]
    fn a_clock_stepped_back_costs_one_interval_not_the_step() {
        let st = MemoryStore::default();
        let l = lim(60, 60, 5);
        spend(&st, &l, T0, 5);
        // the wall clock goes back an hour: an empty bucket now, one token a second
        let back = T0 - 3600 * S;
        let d = bucket_at(&st, &l, back);
        assert!(!d.allowed && d.retry_after_ms == 1000, "{d:?}");
        assert!(bucket_at(&st, &l, back + S).allowed);
        // and a window
        let st = MemoryStore::default();
        let w = lim(2, 60, 2);
        assert!(window_at(&st, &w, T0).allowed);
        assert!(window_at(&st, &w, T0).allowed);
        let d = window_at(&st, &w, back);
        assert!(!d.allowed && d.retry_after_ms <= 60_000, "{d:?}");
        assert!(window_at(&st, &w, back + 60 * S).allowed);
        // skew between workers (a few ms) changes nothing: the later instants stay
        let st = MemoryStore::default();
        assert!(window_at(&st, &w, T0).allowed);
        assert!(window_at(&st, &w, T0).allowed);
        let d = window_at(&st, &w, T0 - 5_000_000);
        assert_eq!(d.retry_after_ms, 60_005);
    }

    #[test]
    fn first_writers_race_is_not_a_lost_update() {
        // Two workers both saw the key absent; the second insert must mismatch, not overwrite.
        use crate::store::{SetOutcome, ABSENT_CAS};
        let st = MemoryStore::default();
        let l = lim(10, 60, 10);
        let h = header(&l);
        let mut v = Vec::new();
        let (_, tat_a) = ratelimit::step_in(&l, None, u128::from(T0), NS_PER_MS);
        encode_bucket(h, tat_a.unwrap(), &mut v);
        assert_eq!(st.set("o", &v, ABSENT_CAS), SetOutcome::Written);
        let (_, tat_b) = ratelimit::step_in(&l, None, u128::from(T0), NS_PER_MS);
        encode_bucket(h, tat_b.unwrap(), &mut v);
        assert_eq!(st.set("o", &v, ABSENT_CAS), SetOutcome::CasMismatch);
        // and the loop then counts both.
        assert_eq!(bucket_at(&st, &l, T0).remaining, 8);
    }

    #[test]
    fn two_parameter_sets_at_once_keep_both_counts() {
        // an old listener (100 an hour) still serving while the new one (10 an hour) starts
        let st = MemoryStore::default();
        let (old, new) = (lim(100, 3600, 100), lim(10, 3600, 10));
        spend(&st, &old, T0, 100);
        for i in 0..20 {
            // a request on the new listener must not give the old one its 90 back
            assert!(!bucket_at(&st, &new, T0 + i).allowed);
            let d = bucket_at(&st, &old, T0 + i);
            assert!(!d.allowed, "{i}: {d:?}");
            assert!(d.retry_after_ms <= 36_000);
        }
        assert_eq!(st.map.borrow()["o"].0.len(), PAIR_LEN);
        // each side refills at its own rate and is charged what the other admits
        let d = bucket_at(&st, &new, T0 + 360 * S);
        assert!(d.allowed && d.remaining == 0, "{d:?}");
        assert_eq!(drain(&st, &old, Algorithm::TokenBucket, T0 + 360 * S), 9);
        // the old set unused for as long as its bucket takes to fill: one count again
        let later = T0 + 360 * S + 3601 * S;
        assert!(bucket_at(&st, &new, later).allowed);
        assert!(bucket_at(&st, &new, later + 3601 * S).allowed);
        assert_eq!(st.map.borrow()["o"].0.len(), BUCKET_LEN);
    }

    #[test]
    fn a_tat_at_the_end_of_time_is_a_clock_stepped_back() {
        let st = MemoryStore::default();
        let l = lim(60, 60, 5);
        let mut v = Vec::new();
        encode_bucket(header(&l), u128::MAX, &mut v);
        st.set("o", &v, 0);
        let d = bucket_at(&st, &l, T0);
        assert!(!d.allowed && d.retry_after_ms == 1000, "{d:?}");
        assert!(bucket_at(&st, &l, T0 + S).allowed);
    }

    #[test]
    fn foreign_bytes_are_overwritten() {
        let st = MemoryStore::default();
        let l = lim(5, 1, 5);
        for junk in [&b"junk"[..], &[0u8; 16], &[0u8; 32], b"kgB1"] {
            st.set("o", junk, 0);
            let d = bucket_at(&st, &l, T0);
            assert!(d.allowed && d.remaining == 4, "{junk:?}");
            st.set("o", junk, 0);
            let d = window_at(&st, &l, T0);
            assert!(d.allowed && d.remaining == 4, "{junk:?}");
        }
    }

    proptest::proptest! {
        /// Whatever a well-tagged value holds (parameters and times another writer chose, one
        /// slot or two): no panic or overflow, and a denial waits at most one interval (plus
        /// the clock-skew allowance).
        #[test]
        fn any_stored_bucket_is_survived(
            cur in (proptest::num::u32::ANY, proptest::num::u32::ANY, proptest::num::u32::ANY, proptest::num::u128::ANY),
            other in proptest::option::of((proptest::num::u32::ANY, proptest::num::u32::ANY, proptest::num::u32::ANY, proptest::num::u128::ANY, proptest::num::u64::ANY)),
            req in 1u64..1_000_000, win in 1u64..31_536_000, burst in 1u64..1_000_000,
            same in proptest::bool::ANY,
        ) {
            let h = |r: u32, w: u32, b: u32| header(&lim(u64::from(r), u64::from(w), u64::from(b)));
            let l = lim(req, win, burst);
            let mut v = Vec::new();
            let o = other.map(|(r, w, b, t, seen)| ((h(r, w, b), t), seen));
            // the current parameters (the fast path), or any others
            let ch = if same { header(&l) } else { h(cur.0, cur.1, cur.2) };
            encode_pair((ch, cur.3), o, &mut v);
            let st = MemoryStore::default();
            st.set("o", &v, 0);
            let d = bucket_at(&st, &l, T0);
            if !d.allowed {
                let interval_ms = (win * 1000).div_ceil(req);
                proptest::prop_assert!(d.retry_after_ms <= interval_ms + 1001, "{:?} under {:?}", d, l);
            }
            let d = window_at(&st, &l, T0);
            proptest::prop_assert!(d.retry_after_ms <= win * 1000);
        }

        /// Any sequence of requests under limits that change (parameters and algorithm) at any
        /// time: no panic, no Retry-After longer than the current limit's own longest wait, and
        /// after a change nothing more is admitted than the new limit allows on top of what was
        /// spent under the old one.
        #[test]
        fn changes_never_ban_and_never_forget(
            ops in proptest::collection::vec((1u64..50, 1u64..100, 1u64..50, proptest::bool::ANY, 0u64..3_000, 1usize..30), 1..25)
        ) {
            let st = MemoryStore::default();
            let mut t = T0;
            for (req, win, burst, rolling, gap_ms, n) in ops {
                t += gap_ms * 1_000_000;
                let l = lim(req, win, if rolling { req } else { burst });
                let alg = if rolling { Algorithm::RollingWindow } else { Algorithm::TokenBucket };
                let cap_ms = if rolling { win * 1000 } else { (win * 1000).div_ceil(req) };
                for _ in 0..n {
                    let d = take(&st, "o", &l, alg, t, &mut Vec::new()).unwrap();
                    if !d.allowed {
                        proptest::prop_assert!(d.retry_after_ms <= cap_ms, "{:?} under {:?}", d, l);
                    }
                }
            }
        }

        /// Two parameter sets in use at once, requests interleaved in any order: neither side
        /// ever admits more than its own bucket's bound (a rebase back and forth that forgot
        /// what the smaller capacity cannot hold would let the larger side admit it again).
        #[test]
        fn two_sets_at_once_each_keep_their_own_bound(
            a in (1u64..30, 1u64..20, 1u64..30), b in (1u64..30, 1u64..20, 1u64..30),
            ops in proptest::collection::vec((proptest::bool::ANY, 0u64..3_000), 1..150)
        ) {
            let st = MemoryStore::default();
            let sides = [lim(a.0, a.1, a.2), lim(b.0, b.1, b.2)];
            let mut t = T0;
            let mut own = [0u128; 2];
            let mut first: [Option<u64>; 2] = [None, None];
            for (side, gap_ms) in ops {
                t += gap_ms * 1_000_000;
                let i = usize::from(side);
                first[i].get_or_insert(t);
                if bucket_at(&st, &sides[i], t).allowed {
                    own[i] += 1;
                }
            }
            for i in 0..2 {
                let (l, since) = (&sides[i], first[i].unwrap_or(t));
                let bound = u128::from(l.burst)
                    + u128::from(t - since) * u128::from(l.requests) / (u128::from(l.window_s) * u128::from(S));
                proptest::prop_assert!(own[i] <= bound, "side {} admitted {} > {}", i, own[i], bound);
            }
        }

        /// A limit raised at any point: what the bucket admits from then on, plus what it
        /// admitted before, stays within the new bucket's bound over the whole time.
        #[test]
        fn raising_never_admits_more_than_the_new_bound(
            req in 1u64..20, more in 1u64..20, spent in 0usize..25, gaps in proptest::collection::vec(0u64..500, 1..80)
        ) {
            let st = MemoryStore::default();
            let lo = lim(req, 10, req);
            let hi = lim(req + more, 10, req + more);
            let mut allowed = 0u128;
            for _ in 0..spent {
                if bucket_at(&st, &lo, T0).allowed { allowed += 1; }
            }
            let mut t = T0;
            for g in &gaps {
                t += g * 1_000_000;
                if bucket_at(&st, &hi, t).allowed { allowed += 1; }
            }
            let elapsed = u128::from(t - T0);
            let bound = u128::from(hi.burst) + elapsed * u128::from(hi.requests) / (10 * u128::from(S));
            proptest::prop_assert!(allowed <= bound, "allowed {} > bound {}", allowed, bound);
        }
    }
}
