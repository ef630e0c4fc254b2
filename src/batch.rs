//! Per-request counts batched per worker and handed to the host on its tick (at most a second
//! later): one host call a request less. A request counts 1-3 of ~25 metric ids, so a short
//! vector beats a map. Pure: the host flushes into `increment_metric`.

#[derive(Default)]
pub struct Batch {
    pending: Vec<(u32, i64)>,
}

impl Batch {
    /// Counts one for metric `id`.
    pub fn count(&mut self, id: u32) {
        match self.pending.iter_mut().find(|(i, _)| *i == id) {
            Some(slot) => slot.1 += 1,
            None => self.pending.push((id, 1)),
        }
    }

    /// Hands every non-zero count to `add` once and zeroes it (ids stay, so the next interval
    /// allocates nothing).
    pub fn flush(&mut self, mut add: impl FnMut(u32, i64)) {
        for (id, n) in self.pending.iter_mut() {
            if *n != 0 {
                add(*id, *n);
                *n = 0;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    proptest::proptest! {
        /// Whatever is counted and whenever it is flushed, the host receives exactly the counts,
        /// each non-zero total once per flush.
        #[test]
        fn the_host_gets_every_count_once(ops in proptest::collection::vec(proptest::option::of(0u32..5), 0..200)) {
            let mut b = Batch::default();
            let mut want: HashMap<u32, i64> = HashMap::new();
            let mut got: HashMap<u32, i64> = HashMap::new();
            for op in ops {
                match op {
                    Some(id) => {
                        b.count(id);
                        *want.entry(id).or_default() += 1;
                    }
                    None => b.flush(|id, n| {
                        assert!(n > 0);
                        *got.entry(id).or_default() += n;
                    }),
                }
            }
            b.flush(|id, n| *got.entry(id).or_default() += n);
            proptest::prop_assert_eq!(got, want);
            let mut again = 0;
            b.flush(|_, _| again += 1);
            proptest::prop_assert_eq!(again, 0);
        }
    }
}
