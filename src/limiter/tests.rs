//! The limiter's tests: each algorithm's step, parameters changed under live counts, and slotted
//! counts (a set's ways reused only when they hold nothing).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
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

mod slotted {
    use super::*;
    use crate::slots::{Geometry, Table};

    /// Owners `o0`..`o5` of one policy through `sets` sets of 2 ways: with one set every
    /// owner collides with every other (what a known seed lets a test build).
    fn run(sets: u64, alg: Algorithm, l: &Limit, ops: &[(usize, u64)]) -> Result<(), String> {
        let st = MemoryStore::default();
        let table = Table::new("kg", 's', Geometry::of(sets * 2, 2), (5, 6));
        let (mut buf, mut bufs) = (Vec::new(), Bufs::default());
        let mut t = T0;
        let mut admitted: Vec<Vec<u64>> = vec![Vec::new(); 6];
        for &(o, gap_ms) in ops {
            t += gap_ms * 1_000_000;
            let name = format!("kg:l:d:k:o{o}");
            match take_in(&st, &table, &name, l, alg, t, &mut buf, &mut bufs) {
                Ok(d) if d.allowed => admitted[o].push(t),
                Ok(_) => {}
                Err(RateError::Full(ms)) if ms >= 1 => {}
                Err(e) => return Err(format!("{e:?}")),
            }
        }
        let w = l.window_s * S;
        for (o, ts) in admitted.iter().enumerate() {
            for (i, &start) in ts.iter().enumerate() {
                // within [start, start + window): at most burst + what refills meanwhile
                let inside = ts[i..].iter().take_while(|&&x| x < start + w).count() as u64;
                let bound = match alg {
                    Algorithm::RollingWindow => l.requests,
                    Algorithm::TokenBucket => l.burst + l.requests,
                };
                if inside > bound {
                    return Err(format!(
                        "owner {o}: {inside} admitted in a window from {start} (bound {bound})"
                    ));
                }
                let elapsed = ts.last().map_or(0, |x| x - start);
                let refill = u128::from(elapsed) * u128::from(l.requests) / u128::from(w);
                if alg == Algorithm::TokenBucket
                    && u128::from((ts.len() - i) as u64) > u128::from(l.burst) + refill
                {
                    return Err(format!("owner {o}: over the bucket's bound from {start}"));
                }
            }
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Colliding owners, requests in any order and at any pace: no owner is ever admitted
        /// more than its limit allows, however often the ways are taken over (a way is only
        /// reused once its count holds nothing; a set with no such way refuses).
        #[test]
        fn colliding_owners_never_exceed_their_limits(
            sets in 1u64..3, rolling in proptest::bool::ANY,
            req in 1u64..6, win in 1u64..4, burst in 1u64..6,
            ops in proptest::collection::vec((0usize..6, 0u64..1500), 1..200),
        ) {
            let (alg, l) = if rolling {
                (Algorithm::RollingWindow, lim(req, win, req))
            } else {
                (Algorithm::TokenBucket, lim(req, win, burst))
            };
            if let Err(e) = run(sets, alg, &l, &ops) {
                proptest::prop_assert!(false, "{}", e);
            }
        }
    }

    /// A count that held nothing under the configuration that wrote it is reused by any other
    /// owner's write to its set (`place` drops it). Its owner's next decision must not depend on
    /// whether that happened: a window lengthened over LDS (2 a 2 s to 2 a minute), or turned
    /// into a slow bucket, decides the same for an owner whose way was taken as for one whose
    /// way was not. Before: the owner whose way stayed was refused (its old instants re-read
    /// under the new length), and whether it was depended on a co-tenant's request.
    #[test]
    fn a_count_free_when_written_decides_the_same_whether_or_not_its_way_was_taken() {
        let old = lim(2, 2, 2);
        for (alg, new) in [
            (Algorithm::RollingWindow, lim(2, 60, 2)),
            (Algorithm::TokenBucket, lim(2, 60, 2)),
        ] {
            let decide = |co_tenant: bool| {
                let st = MemoryStore::default();
                let table = Table::new("kg", 's', Geometry::of(2, 2), (5, 6));
                let (mut buf, mut bufs) = (Vec::new(), Bufs::default());
                let mut take = |o: &str, l: &Limit, a: Algorithm, t: u64| {
                    take_in(&st, &table, o, l, a, t, &mut buf, &mut bufs).unwrap()
                };
                let w = Algorithm::RollingWindow;
                assert!(take("o0", &old, w, T0).allowed && take("o0", &old, w, T0).allowed);
                // the old window is past: o0's count holds nothing under the config that wrote it
                if co_tenant {
                    assert!(take("o1", &new, alg, T0 + 3 * S).allowed);
                }
                (0..3)
                    .map(|i| take("o0", &new, alg, T0 + 4 * S + i).allowed)
                    .collect::<Vec<_>>()
            };
            assert_eq!(decide(true), decide(false), "{alg:?}");
        }
    }

    #[test]
    fn a_full_set_refuses_a_new_owner_until_a_way_frees() {
        // one set of 2 ways, 1 request an hour: o0 and o1 hold both ways
        let st = MemoryStore::default();
        let table = Table::new("kg", 's', Geometry::of(2, 2), (5, 6));
        let l = lim(1, 3600, 1);
        let (mut buf, mut bufs) = (Vec::new(), Bufs::default());
        let mut take = |o: &str, t: u64| {
            take_in(
                &st,
                &table,
                o,
                &l,
                Algorithm::TokenBucket,
                t,
                &mut buf,
                &mut bufs,
            )
        };
        assert!(take("o0", T0).unwrap().allowed);
        assert!(take("o1", T0).unwrap().allowed);
        match take("o2", T0 + S) {
            Err(RateError::Full(ms)) => assert_eq!(ms, 3_599_000),
            other => panic!("{other:?}"),
        }
        // o0 still refused (its count was not forgotten), then its way frees
        assert!(!take("o0", T0 + S).unwrap().allowed);
        assert!(take("o2", T0 + 3601 * S).unwrap().allowed);
        assert_eq!(table.counts.take(), (1, 1));
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
