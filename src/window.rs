//! Rolling-window limiter: at most `requests` allowed requests in *any* interval of `window_s`
//! seconds, exact across Envoy's worker threads.
//!
//! The state is a ring of the last N allowed instants (N = `requests`), in Envoy shared data as
//! one value taken with compare-and-swap, like the token buckets (`limiter`). A request at `now`
//! is allowed exactly when the oldest of the last N allowed instants is at least a window old;
//! it then replaces that oldest instant. So any N+1 allowed requests span at least a window, and
//! a half-open interval of a window's length never holds more than N.
//!
//! Layout (little-endian): the tag `kgW1`, `base_ms` (u64), `head` (u32, the ring index of the
//! oldest entry), then N u32 slots, each `t_ms - base_ms + 1` (0: empty). 16 + 4·N bytes: 416
//! bytes at N = 100, 4,016 at N = 1,000. An allowed request rewrites one slot and `head` (the
//! value is written whole, as shared data has no partial writes); no write on a denial.
//!
//! Time comes in ns, as the host's clock gives it, never rounded before this code rounds: an
//! instant is recorded in milliseconds rounded *up*, and the ring is kept non-decreasing (an
//! instant earlier than the newest, from a worker whose clock read a little earlier, is recorded
//! as the newest), so a recorded instant is never earlier than the real one; the check compares
//! the real `now` (ns) with the recorded oldest, so rounding only ever errs on refusing. An
//! instant recorded more than [`MAX_AHEAD_MS`] after `now` (the wall clock was stepped back) is
//! read as `now`: a clock step costs at most one window, never a ban as long as the step.

use crate::ratelimit::RateDecision;

/// Largest N a rolling window may have (40 KB of shared data per owner).
pub const MAX_REQUESTS: u64 = 10_000;
/// Longest window (30 days): slots are u32 milliseconds, so every live entry fits.
pub const MAX_WINDOW_S: u64 = 30 * 86_400;
/// How far ahead of `now` a recorded instant may be before it is read as `now` (worker clocks
/// differ by far less; a larger gap is a wall clock stepped back).
pub const MAX_AHEAD_MS: u64 = 1000;

/// Marks a rolling window's value (and its format version).
pub const TAG: &[u8; 4] = b"kgW1";
const HEADER: usize = 16;
const NS_PER_MS: u64 = 1_000_000;

/// The size in bytes of the shared-data value for a window of `requests`.
pub fn value_len(requests: u64) -> usize {
    HEADER + 4 * usize::try_from(requests).unwrap_or(usize::MAX / 8)
}

/// A decoded ring: the recorded instants in ms, oldest first (`None`: an empty slot, always at
/// the front).
pub(crate) struct Ring<'a> {
    base_ms: u64,
    head: usize,
    slots: &'a [u8],
}

impl<'a> Ring<'a> {
    /// `None` for anything but a rolling window's value.
    pub(crate) fn parse(v: &'a [u8]) -> Option<Self> {
        if v.get(0..4)? != TAG {
            return None;
        }
        let base_ms = u64::from_le_bytes(v.get(4..12)?.try_into().ok()?);
        let head = u32::from_le_bytes(v.get(12..16)?.try_into().ok()?) as usize;
        let slots = v.get(HEADER..)?;
        if slots.is_empty() || slots.len() % 4 != 0 || head >= slots.len() / 4 {
            return None;
        }
        Some(Ring {
            base_ms,
            head,
            slots,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len() / 4
    }

    /// The `i`-th oldest recorded instant.
    pub(crate) fn at(&self, i: usize) -> Option<u64> {
        let n = self.len();
        let j = (self.head + i) % n;
        let b = self.slots.get(4 * j..4 * j + 4)?;
        let off = u32::from_le_bytes(b.try_into().ok()?);
        (off != 0).then(|| self.base_ms.saturating_add(u64::from(off) - 1))
    }
}

/// The instant a request at `now_ns` is recorded as: never earlier than the real one.
pub fn ms_up(now_ns: u64) -> u64 {
    now_ns.div_ceil(NS_PER_MS)
}

/// Writes a ring of `n` slots, slot `i` (oldest first, non-decreasing) holding `at(i)`;
/// instants before `base` are written as empty slots.
pub(crate) fn write_ring(
    n: usize,
    base: u64,
    out: &mut Vec<u8>,
    at: impl Fn(usize) -> Option<u64>,
) {
    out.clear();
    out.extend_from_slice(TAG);
    out.extend_from_slice(&base.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for i in 0..n {
        let off = match at(i) {
            Some(t) if t >= base => u32::try_from(t - base + 1).unwrap_or(u32::MAX),
            _ => 0,
        };
        out.extend_from_slice(&off.to_le_bytes());
    }
}

/// One step of the window of `n` requests per `window_s` at `now_ns`, given the stored value.
/// Returns the decision and whether `out` holds a value to store: the new ring when allowed,
/// or (on a denial) the stored one read anew, when it held instants ahead of the clock.
pub fn step(
    n: u64,
    window_s: u64,
    value: Option<&[u8]>,
    now_ns: u64,
    out: &mut Vec<u8>,
) -> (RateDecision, bool) {
    let n_us = usize::try_from(n.clamp(1, MAX_REQUESTS)).unwrap_or(1);
    let window_ns = window_s.clamp(1, MAX_WINDOW_S) * 1_000_000_000;
    let now_ms = ms_up(now_ns);
    let ring = value.and_then(Ring::parse);
    // the last `n_us` recorded instants, oldest first, whatever size the stored ring has (a
    // changed configuration keeps the newest ones)
    let stored = ring.as_ref().map_or(0, Ring::len);
    let skip = stored.saturating_sub(n_us);
    let pad = n_us.saturating_sub(stored);
    let raw = |i: usize| -> Option<u64> {
        if i < pad {
            None
        } else {
            ring.as_ref().and_then(|r| r.at(i - pad + skip))
        }
    };
    // a clock stepped back: what lies ahead of it is read as now
    let ahead = raw(n_us - 1).is_some_and(|t| t > now_ms.saturating_add(MAX_AHEAD_MS));
    let at = |i: usize| raw(i).map(|t| if ahead { t.min(now_ms) } else { t });
    let free = |t: Option<u64>| {
        t.is_none_or(|t| t.saturating_mul(NS_PER_MS).saturating_add(window_ns) <= now_ns)
    };
    let oldest = at(0);
    let newest = at(n_us - 1);
    // entries are non-decreasing, so the free ones are a prefix
    let free_count = partition_point(n_us, |i| free(at(i)));
    let until = |t_ms: u64| {
        t_ms.saturating_mul(NS_PER_MS)
            .saturating_add(window_ns)
            .saturating_sub(now_ns)
            .div_ceil(NS_PER_MS)
    };
    // rewritten from the instants, based at the oldest entry still inside a window (older ones
    // are free anyway)
    let base = now_ms.saturating_sub(window_ns / NS_PER_MS + 1);
    if !free(oldest) {
        let d = RateDecision {
            allowed: false,
            limit: n,
            remaining: 0,
            reset_ms: newest.map_or(0, until),
            retry_after_ms: oldest.map_or(0, until).max(1),
        };
        if ahead {
            write_ring(n_us, base, out, at);
        }
        return (d, ahead);
    }
    let rec = newest.map_or(now_ms, |t| t.max(now_ms));
    out.clear();
    match (ring.as_ref(), value) {
        // the common case: the ring of this size, and the new instant fits its base
        (Some(r), Some(v))
            if !ahead
                && skip == 0
                && pad == 0
                && rec >= r.base_ms
                && rec - r.base_ms < u64::from(u32::MAX - 1) =>
        {
            out.extend_from_slice(v);
            let off = (rec - r.base_ms + 1) as u32;
            let j = HEADER + 4 * r.head;
            if let Some(slot) = out.get_mut(j..j + 4) {
                slot.copy_from_slice(&off.to_le_bytes());
            }
            let head = ((r.head + 1) % n_us) as u32;
            if let Some(h) = out.get_mut(12..16) {
                h.copy_from_slice(&head.to_le_bytes());
            }
        }
        // a new ring, a resized one, or a base too far behind
        _ => write_ring(n_us, base.min(rec), out, |i| {
            if i + 1 < n_us {
                at(i + 1)
            } else {
                Some(rec)
            }
        }),
    }
    let d = RateDecision {
        allowed: true,
        limit: n,
        remaining: free_count.saturating_sub(1) as u64,
        reset_ms: until(rec),
        retry_after_ms: 0,
    };
    (d, true)
}

/// The first index in `0..n` where `pred` is false (`pred` true on a prefix).
fn partition_point(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::ratelimit::Algorithm;
    use crate::ratelimit::{Limit, RateError, MAX_ATTEMPTS};
    use crate::store::memory::MemoryStore;
    use crate::store::{Guesses, SharedStore, Speculative};
    use std::cell::RefCell;

    const S: u64 = 1_000_000; // these tests count in µs; the limiter takes ns
    const T0: u64 = 1_790_000_000 * S;

    fn take(
        st: &dyn SharedStore,
        key: &str,
        n: u64,
        w: u64,
        now_us: u64,
        buf: &mut Vec<u8>,
    ) -> Result<RateDecision, RateError> {
        let l = Limit {
            requests: n,
            window_s: w,
            burst: n,
        };
        crate::limiter::take(st, key, &l, Algorithm::RollingWindow, now_us * 1000, buf)
    }

    fn take1(st: &dyn SharedStore, n: u64, w: u64, now: u64) -> RateDecision {
        take(st, "w", n, w, now, &mut Vec::new()).unwrap()
    }

    #[test]
    fn n_then_refused_until_the_oldest_is_a_window_old() {
        let st = MemoryStore::default();
        // 5 requests at T0, T0+1s, ..., T0+4s
        for i in 0..5 {
            let d = take1(&st, 5, 60, T0 + i * S);
            assert!(d.allowed);
            assert_eq!(d.remaining, 4 - i);
            assert_eq!(d.limit, 5);
            assert_eq!(d.reset_ms, 60_000);
        }
        let d = take1(&st, 5, 60, T0 + 10 * S);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(
            d.retry_after_ms, 50_000,
            "until the oldest (T0) is 60 s old"
        );
        assert_eq!(d.reset_ms, 54_000, "until the newest (T0+4s) is 60 s old");
        // a microsecond early: still refused, with 1 ms to wait
        let d = take1(&st, 5, 60, T0 + 60 * S - 1);
        assert!(!d.allowed && d.retry_after_ms == 1);
        // exactly a window after the oldest: one more, and the next is T0+1s's turn
        let d = take1(&st, 5, 60, T0 + 60 * S);
        assert!(d.allowed && d.remaining == 0);
        let d = take1(&st, 5, 60, T0 + 60 * S);
        assert!(!d.allowed && d.retry_after_ms == 1000);
        // after a long pause every slot is free again
        let d = take1(&st, 5, 60, T0 + 3600 * S);
        assert!(d.allowed && d.remaining == 4);
    }

    #[test]
    fn value_size_is_16_plus_4n() {
        for n in [1u64, 100, 1000] {
            let st = MemoryStore::default();
            take1(&st, n, 60, T0);
            take1(&st, n, 60, T0 + 1);
            assert_eq!(st.map.borrow()["w"].0.len(), value_len(n));
        }
        assert_eq!(value_len(100), 416);
        assert_eq!(value_len(1000), 4016);
    }

    #[test]
    fn a_resized_window_keeps_the_newest_instants() {
        let st = MemoryStore::default();
        for i in 0..10 {
            assert!(take1(&st, 10, 60, T0 + i * S).allowed);
        }
        // the plan now allows 4: the 4 newest (T0+6..9 s) stay, so nothing before T0+66 s
        assert!(!take1(&st, 4, 60, T0 + 65 * S).allowed);
        let d = take1(&st, 4, 60, T0 + 66 * S);
        assert!(d.allowed && d.remaining == 0);
        assert_eq!(st.map.borrow()["w"].0.len(), value_len(4));
        // and grown again to 6: two empty slots in front
        let d = take1(&st, 6, 60, T0 + 66 * S);
        assert!(d.allowed && d.remaining == 1);
        let d = take1(&st, 6, 60, T0 + 66 * S);
        assert!(d.allowed && d.remaining == 0);
        assert!(!take1(&st, 6, 60, T0 + 66 * S).allowed);
    }

    #[test]
    fn garbage_values_are_overwritten() {
        let st = MemoryStore::default();
        st.set("w", b"junk", 0);
        let d = take1(&st, 3, 1, T0);
        assert!(d.allowed && d.remaining == 2);
        // a head out of range is garbage too
        let mut v = vec![0u8; value_len(3)];
        v[..4].copy_from_slice(TAG);
        v[12] = 7;
        st.set("w", &v, 0);
        assert!(take1(&st, 3, 1, T0).remaining == 2);
    }

    #[test]
    fn a_base_far_behind_is_rebased() {
        let st = MemoryStore::default();
        assert!(take1(&st, 2, 60, T0).allowed);
        // 60 days later the offset would not fit a u32 of ms
        let later = T0 + 60 * 86_400 * S;
        assert!(take1(&st, 2, 60, later).allowed);
        assert!(take1(&st, 2, 60, later + 1).allowed);
        let d = take1(&st, 2, 60, later + 2);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, 60_000);
    }

    #[test]
    fn cas_conflicts_retry() {
        let st = MemoryStore::default();
        take1(&st, 10, 60, T0);
        st.conflicts.set(5);
        let d = take1(&st, 10, 60, T0);
        assert!(d.allowed && d.remaining == 8);
        st.conflicts.set(MAX_ATTEMPTS);
        assert_eq!(
            take(&st, "w", 10, 60, T0, &mut Vec::new()),
            Err(RateError::Contended)
        );
    }

    /// Every allowed instant, checked against "at most n in any half-open window": for sorted
    /// instants, the (i+n)-th must be at least a window after the i-th.
    fn assert_never_n_plus_1(allowed: &mut [u64], n: usize, window_us: u64) {
        allowed.sort_unstable();
        for i in n..allowed.len() {
            assert!(
                allowed[i] - allowed[i - n] >= window_us,
                "{} allowed within {} us",
                n + 1,
                allowed[i] - allowed[i - n]
            );
        }
    }

    proptest::proptest! {
        /// Whatever bytes another plugin (or an older layout) left under the key: no panic, and
        /// the request is decided.
        #[test]
        fn any_stored_bytes_are_survived(v in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
                                         n in 1u64..8, now in proptest::num::u64::ANY) {
            let mut out = Vec::new();
            let (d, write) = step(n, 60, Some(&v), now, &mut out);
            proptest::prop_assert_eq!(d.allowed, write);
            if write {
                proptest::prop_assert_eq!(out.len(), value_len(n));
            }
            let st = MemoryStore::default();
            st.set("w", &v, 0);
            let _ = take(&st, "w", n, 60, now / 1000, &mut out);
        }

        /// Any arrival pattern, any N and window: never N+1 allowed in any window-length
        /// interval, and after the first refusal nothing passes before the reported Retry-After.
        #[test]
        fn never_n_plus_1_in_any_window(n in 1u64..40, w in 1u64..5,
                                        gaps in proptest::collection::vec(0u64..400_000, 1..300)) {
            let st = MemoryStore::default();
            let mut t = T0;
            let mut allowed = Vec::new();
            let mut not_before = 0u64;
            for g in &gaps {
                t += g;
                let d = take1(&st, n, w, t);
                if d.allowed {
                    proptest::prop_assert!(t >= not_before, "allowed before Retry-After");
                    allowed.push(t);
                } else {
                    not_before = not_before.max(t + (d.retry_after_ms - 1) * 1000);
                }
            }
            assert_never_n_plus_1(&mut allowed, n as usize, w * S);
        }

        /// Exact, not only safe: a request is refused only when N were allowed in the window
        /// before it (allowing for the millisecond rounding, always towards refusing).
        #[test]
        fn refuses_only_when_full(n in 1u64..20, gaps in proptest::collection::vec(0u64..300_000, 1..200)) {
            let st = MemoryStore::default();
            let mut t = T0;
            let mut allowed: Vec<u64> = Vec::new();
            for g in &gaps {
                t += g;
                let d = take1(&st, n, 1, t);
                // allowed within (t - window, t], and within (t - window - 1 ms, t]: the
                // millisecond rounding may count one ms more, never less
                let recent = allowed.iter().filter(|&&a| a + S > t).count() as u64;
                let loose = allowed.iter().filter(|&&a| a + S + 1000 > t).count() as u64;
                if d.allowed {
                    proptest::prop_assert!(recent < n);
                    proptest::prop_assert!(d.remaining < n);
                    allowed.push(t);
                } else {
                    proptest::prop_assert!(loose >= n, "refused with only {} recent", loose);
                }
            }
        }

        /// Several workers with their own guesses and clocks out of step, foreign writes in
        /// between: decisions equal a store without guesses, and the bound holds on the instants
        /// the workers saw.
        #[test]
        fn workers_with_guesses_stay_exact(ops in proptest::collection::vec((0usize..3, 0u8..5, 0u64..300, 0u64..50), 1..200)) {
            let plain = MemoryStore::default();
            let spec = MemoryStore::default();
            let guesses: Vec<RefCell<Guesses>> = (0..3).map(|_| RefCell::new(Guesses::default())).collect();
            let mut t = T0;
            let mut allowed = Vec::new();
            for (worker, kind, gap, behind) in ops {
                t += gap * 1000;
                let now = t - behind * 1000;
                if kind == 0 {
                    plain.set("other", b"x", 0);
                    spec.set("other", b"x", 0);
                    continue;
                }
                let want = take1(&plain, 4, 1, now);
                let sp = Speculative::new(&spec, &guesses[worker], now / 1000);
                let got = take(&sp, "w", 4, 1, now, &mut Vec::new()).unwrap();
                proptest::prop_assert_eq!(want, got);
                if got.allowed {
                    allowed.push(now);
                }
            }
            assert_never_n_plus_1(&mut allowed, 4, S);
        }
    }
}
