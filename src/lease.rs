//! A lease in shared data: one worker of the Envoy at a time does a chore (polling the
//! revocation feed). The lease is the instant it is held until, taken by CAS: a missing lease is
//! inserted with `ABSENT_CAS`, so two first takers cannot both win. Pure over `SharedStore`.

use crate::store::{SetOutcome, SharedStore, ABSENT_CAS};

fn held_until(store: &dyn SharedStore, key: &str) -> (u64, u32) {
    match store.get(key) {
        Some((v, cas)) => (v.try_into().map(u64::from_le_bytes).unwrap_or(0), cas),
        None => (0, ABSENT_CAS),
    }
}

/// Takes the lease until `until_ms` if nobody holds it at `now_ms`; whether this caller has it.
/// A lease held further ahead than twice the length asked for (`until_ms - now_ms`; a release's
/// pace is no longer) was taken by a clock that has gone back since: it has lapsed, or the chore
/// would wait as long as the clock stepped back.
pub fn take(store: &dyn SharedStore, key: &str, now_ms: u64, until_ms: u64) -> bool {
    let (held, cas) = held_until(store, key);
    let longest = now_ms.saturating_add(until_ms.saturating_sub(now_ms).saturating_mul(2));
    (held <= now_ms || held > longest)
        && store.set(key, &until_ms.to_le_bytes(), cas) == SetOutcome::Written
}

/// Hands the lease back: nobody may take it before `next_ms` (0: at once).
pub fn release(store: &dyn SharedStore, key: &str, next_ms: u64) {
    store.set(key, &next_ms.to_le_bytes(), 0);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[test]
    fn one_holder_at_a_time_until_it_lapses_or_is_released() {
        let st = MemoryStore::default();
        assert!(take(&st, "l", 1000, 1500));
        assert!(!take(&st, "l", 1200, 1700), "held until 1500");
        assert!(take(&st, "l", 1500, 2000), "lapsed");
        release(&st, "l", 2500);
        assert!(!take(&st, "l", 2400, 3000), "released with a pace");
        assert!(take(&st, "l", 2500, 3000));
        release(&st, "l", 0);
        assert!(take(&st, "l", 2600, 3100), "released at once");
    }

    #[test]
    fn a_lease_taken_before_the_clock_went_back_lapses() {
        let st = MemoryStore::default();
        assert!(take(&st, "l", 10_000_000, 10_001_500));
        release(&st, "l", 10_002_000);
        // a step back of a second: within twice the length asked for, still held
        assert!(!take(&st, "l", 10_001_000, 10_002_500));
        // a step back of an hour: lapsed, not held for the hour
        let back = 10_002_000 - 3_600_000;
        assert!(take(&st, "l", back, back + 1500));
        assert!(
            !take(&st, "l", back + 1, back + 1501),
            "and then held as usual"
        );
    }

    /// Two workers that both read the lease free: the CAS lets exactly one write it, also when
    /// neither found any lease (the insert carries `ABSENT_CAS`).
    #[test]
    fn racing_takers_get_it_once() {
        for existing in [false, true] {
            let st = MemoryStore::default();
            if existing {
                release(&st, "l", 0);
            }
            let (h1, c1) = held_until(&st, "l");
            let (h2, c2) = held_until(&st, "l");
            assert!(h1 <= 10 && h2 <= 10);
            let w1 = st.set("l", &20u64.to_le_bytes(), c1) == SetOutcome::Written;
            let w2 = st.set("l", &20u64.to_le_bytes(), c2) == SetOutcome::Written;
            assert!(w1 ^ w2, "existing {existing}: {w1} {w2}");
        }
    }
}
