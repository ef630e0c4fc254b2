//! Key-service calls in flight and the requests waiting on them (per worker): concurrent misses
//! for one credential share one call, a call that is overdue is not joined (a new one replaces
//! it and inherits its waiters), and settling a flight hands back every waiter once. Pure: the
//! host (`host::mod`) dispatches the calls and resumes the streams.

use std::collections::HashMap;

use crate::hash::Digest32;

struct Flight {
    started_ms: u64,
    waiters: Vec<u32>,
}

/// The flights of one worker, and what each waiting request (by stream context id) carries.
pub struct Flights<W> {
    flights: HashMap<Digest32, Flight>,
    waiting: HashMap<u32, W>,
}

impl<W> Default for Flights<W> {
    fn default() -> Self {
        Flights {
            flights: HashMap::new(),
            waiting: HashMap::new(),
        }
    }
}

impl<W> Flights<W> {
    /// Joins the call in flight for `id` unless it started more than `overdue_ms` ago;
    /// `Err(waiter)` when there is none to join: dispatch one, then call [`Flights::started`].
    pub fn join(
        &mut self,
        id: &Digest32,
        ctx: u32,
        waiter: W,
        now_ms: u64,
        overdue_ms: u64,
    ) -> Result<(), W> {
        match self.flights.get_mut(id) {
            Some(f) if now_ms.saturating_sub(f.started_ms) <= overdue_ms => {
                f.waiters.push(ctx);
                self.waiting.insert(ctx, waiter);
                Ok(())
            }
            _ => Err(waiter),
        }
    }

    /// A call for `id` was dispatched for `ctx`: it is the flight now; requests still waiting
    /// on an overdue one for the same credential wait on it too.
    pub fn started(&mut self, id: Digest32, ctx: u32, waiter: W, now_ms: u64) {
        let mut waiters = self
            .flights
            .remove(&id)
            .map(|f| f.waiters)
            .unwrap_or_default();
        waiters.push(ctx);
        self.flights.insert(
            id,
            Flight {
                started_ms: now_ms,
                waiters,
            },
        );
        self.waiting.insert(ctx, waiter);
    }

    /// Ends the flight for `id`: every request still waiting on it, once, in arrival order.
    pub fn settle(&mut self, id: &Digest32) -> Vec<(u32, W)> {
        let waiters = self
            .flights
            .remove(id)
            .map(|f| f.waiters)
            .unwrap_or_default();
        waiters
            .into_iter()
            .filter_map(|ctx| self.waiting.remove(&ctx).map(|w| (ctx, w)))
            .collect()
    }

    /// Whether request `ctx` waits on a flight.
    pub fn is_waiting(&self, ctx: u32) -> bool {
        self.waiting.contains_key(&ctx)
    }

    /// Requests waiting, all flights together.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const A: Digest32 = [1; 32];
    const B: Digest32 = [2; 32];

    #[test]
    fn concurrent_misses_share_one_call_and_each_is_answered_once() {
        let mut f: Flights<&str> = Flights::default();
        let mut calls = 0;
        for (ctx, w) in [(1, "a1"), (2, "a2"), (3, "a3")] {
            if let Err(w) = f.join(&A, ctx, w, 100, 1500) {
                calls += 1;
                f.started(A, ctx, w, 100);
            }
        }
        assert_eq!(calls, 1, "three misses for one credential make one call");
        assert_eq!(
            f.join(&B, 4, "b", 100, 1500),
            Err("b"),
            "another credential has its own"
        );
        f.started(B, 4, "b", 100);
        assert!(f.is_waiting(2) && f.is_waiting(4) && !f.is_waiting(5));
        assert_eq!(f.settle(&A), [(1, "a1"), (2, "a2"), (3, "a3")]);
        assert!(!f.is_waiting(2) && f.is_waiting(4));
        assert!(f.settle(&A).is_empty(), "settled once");
        assert_eq!(f.settle(&B), [(4, "b")]);
        assert_eq!(f.waiting(), 0);
    }

    #[test]
    fn an_overdue_call_is_not_joined_and_its_waiters_move_to_the_new_one() {
        let mut f: Flights<u32> = Flights::default();
        assert!(f.join(&A, 1, 1, 0, 1500).is_err());
        f.started(A, 1, 1, 0);
        assert_eq!(f.join(&A, 2, 2, 1500, 1500), Ok(()));
        assert_eq!(f.join(&A, 3, 3, 1501, 1500), Err(3), "overdue");
        f.started(A, 3, 3, 1501);
        assert_eq!(
            f.join(&A, 4, 4, 1600, 1500),
            Ok(()),
            "the new call is joined"
        );
        let settled: Vec<u32> = f.settle(&A).into_iter().map(|(c, _)| c).collect();
        assert_eq!(settled, [1, 2, 3, 4]);
    }

    proptest::proptest! {
        /// Whatever the interleaving of misses and answers, every request is answered exactly
        /// once, and a credential never has two calls in flight unless the first was overdue.
        #[test]
        fn every_waiter_is_answered_exactly_once(ops in proptest::collection::vec((0u8..3, 0u8..3, 0u64..3000), 1..60)) {
            let mut f: Flights<u32> = Flights::default();
            let mut next_ctx = 0u32;
            let mut answered: Vec<u32> = Vec::new();
            let mut now = 0u64;
            let mut in_flight: HashMap<u8, u64> = HashMap::new();
            for (op, cred, dt) in ops {
                now += dt;
                let id = [cred; 32];
                if op < 2 {
                    next_ctx += 1;
                    if let Err(w) = f.join(&id, next_ctx, next_ctx, now, 1500) {
                        if let Some(t) = in_flight.get(&cred) {
                            proptest::prop_assert!(now - t > 1500, "a second call while one is not overdue");
                        }
                        f.started(id, next_ctx, w, now);
                        in_flight.insert(cred, now);
                    }
                } else {
                    in_flight.remove(&cred);
                    answered.extend(f.settle(&id).into_iter().map(|(c, w)| { assert_eq!(c, w); c }));
                }
            }
            for cred in 0..3u8 {
                answered.extend(f.settle(&[cred; 32]).into_iter().map(|(c, _)| c));
            }
            answered.sort_unstable();
            proptest::prop_assert_eq!(answered, (1..=next_ctx).collect::<Vec<_>>());
            proptest::prop_assert_eq!(f.waiting(), 0);
        }
    }
}
