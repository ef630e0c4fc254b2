//! The requests whose body a worker holds until an owner check has read it, and the streams it
//! ended while it held them. Pure: the host (`host::mod`) asks the host whether a stream still
//! exists and sends the replies; this module decides what is held, for how long, and what goes.
//!
//! The rules (envoy/docs/security.md):
//! - **bounded**: at most `max` held at once; a request that would be one more is refused (the
//!   host answers 503), never one already held forgotten;
//! - **ended, never forgotten**: a body still incomplete `timeout_ms` after it began to be held
//!   is taken out only to end its stream (408); an entry leaves otherwise only when its body was
//!   checked, its request was answered, or the host says its stream is gone;
//! - **remembered after the end**: the streams ended while held are kept in a ring, so that a
//!   chunk that still came for one would be refused, not waved through as a stranger's.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::hash::TagHasher;

/// Streams remembered as ended (a ring: the oldest goes first).
pub const ENDED_RING: usize = 256;

/// A held entry: what the check needs, and when holding began (ms).
struct Entry<T> {
    value: T,
    since_ms: u64,
}

pub struct Held<T> {
    map: HashMap<u32, Entry<T>, BuildHasherDefault<TagHasher>>,
    max: usize,
    timeout_ms: u64,
}

impl<T> Held<T> {
    pub fn new(max: usize, timeout_ms: u64) -> Self {
        Held {
            map: HashMap::default(),
            max: max.max(1),
            timeout_ms,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.map.len() >= self.max
    }

    pub fn contains(&self, ctx: u32) -> bool {
        !self.map.is_empty() && self.map.contains_key(&ctx)
    }

    pub fn get(&self, ctx: u32) -> Option<&T> {
        self.map.get(&ctx).map(|e| &e.value)
    }

    pub fn get_mut(&mut self, ctx: u32) -> Option<&mut T> {
        self.map.get_mut(&ctx).map(|e| &mut e.value)
    }

    /// Holds `value` for stream `ctx` from `now_ms`; a full table gives it back (refuse the
    /// request). A stream held already keeps the time it began.
    pub fn hold(&mut self, ctx: u32, value: T, now_ms: u64) -> Result<(), T> {
        if let Some(e) = self.map.get_mut(&ctx) {
            e.value = value;
            return Ok(());
        }
        if self.is_full() {
            return Err(value);
        }
        self.map.insert(
            ctx,
            Entry {
                value,
                since_ms: now_ms,
            },
        );
        Ok(())
    }

    /// Takes the entry of `ctx` (its body is in, or its request is being answered).
    pub fn take(&mut self, ctx: u32) -> Option<T> {
        if self.map.is_empty() {
            return None;
        }
        self.map.remove(&ctx).map(|e| e.value)
    }

    /// The streams held past `timeout_ms` at `now_ms`: each is to be ended (`take` it, answer
    /// 408).
    pub fn overdue(&self, now_ms: u64) -> Vec<u32> {
        self.older_than(now_ms, self.timeout_ms)
    }

    /// The streams held for at least `ms` at `now_ms` (those whose stream the host is asked
    /// about), in no order.
    pub fn older_than(&self, now_ms: u64, ms: u64) -> Vec<u32> {
        self.map
            .iter()
            .filter(|(_, e)| now_ms.saturating_sub(e.since_ms) >= ms)
            .map(|(&ctx, _)| ctx)
            .collect()
    }
}

/// The streams a worker ended while it held their body, the last `ENDED_RING` of them (stream
/// ids start at 1: 0 is no stream).
pub struct Ended {
    ring: [u32; ENDED_RING],
    next: usize,
    any: bool,
}

impl Default for Ended {
    fn default() -> Self {
        Ended {
            ring: [0; ENDED_RING],
            next: 0,
            any: false,
        }
    }
}

impl Ended {
    pub fn note(&mut self, ctx: u32) {
        if ctx == 0 || self.contains(ctx) {
            return;
        }
        if let Some(slot) = self.ring.get_mut(self.next) {
            *slot = ctx;
        }
        self.next = (self.next + 1) % ENDED_RING;
        self.any = true;
    }

    pub fn contains(&self, ctx: u32) -> bool {
        self.any && ctx != 0 && self.ring.contains(&ctx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_refuses_and_forgets_nothing() {
        let mut h = Held::new(3, 1000);
        for ctx in 1..=3 {
            assert!(h.hold(ctx, ctx * 10, 0).is_ok());
        }
        assert!(h.is_full());
        // the fourth is given back, the three held stay, however old they are
        assert_eq!(h.hold(4, 40, 1_000_000), Err(40));
        assert_eq!(h.len(), 3);
        assert!((1..=3).all(|c| h.contains(c)) && !h.contains(4));
        // holding a stream again keeps its place and the time it began
        assert!(h.hold(2, 21, 500).is_ok());
        let mut o = h.overdue(1000);
        o.sort_unstable();
        assert_eq!(o, vec![1, 2, 3]);
        assert_eq!(h.take(2), Some(21));
        assert_eq!(h.take(2), None);
        assert!(h.hold(4, 40, 600).is_ok());
        assert!(h.hold(5, 50, 600).is_err());
    }

    #[test]
    fn overdue_streams() {
        let mut h = Held::new(10, 100);
        h.hold(7, (), 50).unwrap();
        h.hold(3, (), 0).unwrap();
        h.hold(9, (), 120).unwrap();
        let sorted = |mut v: Vec<u32>| {
            v.sort_unstable();
            v
        };
        assert_eq!(h.overdue(99), Vec::<u32>::new());
        assert_eq!(sorted(h.overdue(150)), vec![3, 7]);
        assert_eq!(sorted(h.overdue(10_000)), vec![3, 7, 9]);
        assert_eq!(sorted(h.older_than(130, 10)), vec![3, 7, 9]);
        assert_eq!(sorted(h.older_than(130, 11)), vec![3, 7]);
    }

    #[test]
    fn the_ended_ring_keeps_the_last() {
        let mut e = Ended::default();
        assert!(!e.contains(1) && !e.contains(0));
        for ctx in 1..=(ENDED_RING as u32 + 10) {
            e.note(ctx);
        }
        assert!(!e.contains(10) && e.contains(11) && e.contains(ENDED_RING as u32 + 10));
        e.note(11);
        assert!(e.contains(11) && e.contains(12));
        assert!(!e.contains(0));
    }

    proptest::proptest! {
        /// Whatever is held and taken, the table never holds more than its bound, and a stream
        /// leaves it only when it is taken.
        #[test]
        fn bounded_and_nothing_leaves_untaken(ops in proptest::collection::vec((0u8..3, 0u32..20, 0u64..5000), 0..200)) {
            let mut h = Held::new(8, 1000);
            let mut model: std::collections::BTreeSet<u32> = Default::default();
            for (op, ctx, now) in ops {
                match op {
                    0 => {
                        let full = model.len() >= 8 && !model.contains(&ctx);
                        proptest::prop_assert_eq!(h.hold(ctx, ctx, now).is_err(), full);
                        if !full {
                            model.insert(ctx);
                        }
                    }
                    1 => {
                        proptest::prop_assert_eq!(h.take(ctx).is_some(), model.remove(&ctx));
                    }
                    _ => {
                        let o = h.overdue(now);
                        proptest::prop_assert!(o.iter().all(|c| model.contains(c)));
                    }
                }
                proptest::prop_assert!(h.len() <= 8);
                proptest::prop_assert_eq!(h.len(), model.len());
            }
        }
    }
}
