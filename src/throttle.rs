//! Failed-authentication throttle: after `failures` refused credentials in `window_s` from one
//! client address, further attempts that would need verifying are answered 429 locally, without
//! reaching the key service. Valid cached keys from the same address still pass.
//!
//! Per worker and bounded: at most `clients` addresses are tracked per worker (attackers control
//! addresses, so this never goes to shared data); with W workers a client gets at most W x
//! `failures` attempts per window. Each address has a GCRA bucket (the rate limiter's math).

use std::collections::HashMap;

use crate::ratelimit::{step, Limit};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    pub failures: u64,
    pub window_s: u64,
    pub clients: usize,
}

pub struct Throttle {
    cfg: ThrottleConfig,
    limit: Limit,
    tat: HashMap<Vec<u8>, u128>,
    /// Idle clients are swept at most once a second (O(1) per insert when full).
    next_sweep_us: u64,
}

/// The address part of Envoy's `source.address` ("1.2.3.4:5678", "[::1]:5678").
pub fn client_of(source: &[u8]) -> &[u8] {
    if let Some(rest) = source.strip_prefix(b"[") {
        return match rest.iter().position(|&c| c == b']') {
            Some(i) => &rest[..i],
            None => rest,
        };
    }
    match source.iter().rposition(|&c| c == b':') {
        Some(i) if source.iter().filter(|&&c| c == b':').count() == 1 => &source[..i],
        _ => source,
    }
}

impl Throttle {
    pub fn new(cfg: ThrottleConfig) -> Self {
        Throttle {
            cfg,
            limit: Limit {
                requests: cfg.failures,
                window_s: cfg.window_s,
                burst: cfg.failures,
            },
            tat: HashMap::new(),
            next_sweep_us: 0,
        }
    }

    /// Milliseconds until this client may try again, or `None` when it may try now.
    pub fn blocked(&self, client: &[u8], now_us: u64) -> Option<u64> {
        let tat = *self.tat.get(client)?;
        let (d, _) = step(&self.limit, Some(tat), u128::from(now_us));
        (!d.allowed).then_some(d.retry_after_ms.max(1))
    }

    pub fn record_failure(&mut self, client: &[u8], now_us: u64) {
        let now = u128::from(now_us);
        if !self.tat.contains_key(client) && self.tat.len() >= self.cfg.clients {
            // Forget clients whose bucket is full again, then arbitrary ones (random order).
            if now_us >= self.next_sweep_us {
                let t = now * u128::from(self.limit.requests.max(1));
                self.tat.retain(|_, tat| *tat > t);
                self.next_sweep_us = now_us.saturating_add(1_000_000);
            }
            while self.tat.len() >= self.cfg.clients {
                let Some(k) = self.tat.keys().next().cloned() else {
                    break;
                };
                self.tat.remove(&k);
            }
        }
        let prev = self.tat.get(client).copied();
        if let (_, Some(new_tat)) = step(&self.limit, prev, now) {
            self.tat.insert(client.to_vec(), new_tat);
        }
    }

    /// Gives back an attempt counted in advance that turned out to be a valid credential.
    pub fn refund(&mut self, client: &[u8], now_us: u64) {
        let t = u128::from(self.limit.window_s.max(1)) * 1_000_000;
        let floor = u128::from(now_us) * u128::from(self.limit.requests.max(1));
        if let Some(tat) = self.tat.get_mut(client) {
            *tat = tat.saturating_sub(t).max(floor);
        }
    }

    pub fn tracked(&self) -> usize {
        self.tat.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const T: u64 = 1_800_000_000_000_000;

    #[test]
    fn blocks_after_n_failures_then_recovers() {
        let mut t = Throttle::new(ThrottleConfig {
            failures: 3,
            window_s: 60,
            clients: 10,
        });
        for _ in 0..3 {
            assert_eq!(t.blocked(b"1.2.3.4", T), None);
            t.record_failure(b"1.2.3.4", T);
        }
        let wait = t.blocked(b"1.2.3.4", T).unwrap();
        assert_eq!(wait, 20_000);
        assert_eq!(t.blocked(b"5.6.7.8", T), None);
        assert_eq!(t.blocked(b"1.2.3.4", T + 20_000_000), None);
    }

    #[test]
    fn refund_gives_an_attempt_back() {
        let mut t = Throttle::new(ThrottleConfig {
            failures: 2,
            window_s: 60,
            clients: 10,
        });
        t.record_failure(b"c", T);
        t.record_failure(b"c", T);
        assert!(t.blocked(b"c", T).is_some());
        t.refund(b"c", T);
        assert_eq!(t.blocked(b"c", T), None);
        t.refund(b"c", T);
        t.refund(b"c", T); // never below empty
        t.record_failure(b"c", T);
        t.record_failure(b"c", T);
        assert!(t.blocked(b"c", T).is_some());
    }

    #[test]
    fn bounded_number_of_clients() {
        let mut t = Throttle::new(ThrottleConfig {
            failures: 3,
            window_s: 60,
            clients: 100,
        });
        for i in 0..10_000u32 {
            t.record_failure(&i.to_le_bytes(), T);
            assert!(t.tracked() <= 100);
        }
    }

    #[test]
    fn client_address_without_port() {
        assert_eq!(client_of(b"10.0.0.1:4444"), b"10.0.0.1");
        assert_eq!(client_of(b"[::1]:4444"), b"::1");
        assert_eq!(client_of(b"::1"), b"::1");
        assert_eq!(client_of(b"internal-listener"), b"internal-listener");
    }
}
