//! The per-worker cache of refusals (unknown, revoked, expired, disabled keys): bounded, never in
//! shared data, so random garbage keys cost bounded VM memory and nothing shared.

use std::collections::HashMap;

use crate::hash::Digest32;
use crate::verdict::Refusal;

/// Per-worker cache of refusals, bounded: at capacity, expired entries go first, then arbitrary
/// ones (HashMap order is randomly seeded on wasm32-wasip1, so an attacker cannot aim evictions).
pub struct NegativeCache {
    map: HashMap<Digest32, (Refusal, u64)>,
    cap: usize,
    /// Expired entries are swept at most once a second, so a full cache under a flood of random
    /// keys costs O(1) per insert, not a scan.
    next_sweep_ms: u64,
}

impl NegativeCache {
    pub fn new(cap: usize) -> Self {
        NegativeCache {
            map: HashMap::new(),
            cap: cap.max(1),
            next_sweep_ms: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, id: &Digest32, now_ms: u64) -> Option<Refusal> {
        match self.map.get(id) {
            Some((r, until)) if now_ms < *until => Some(*r),
            _ => None,
        }
    }

    pub fn insert(&mut self, id: Digest32, r: Refusal, until_ms: u64, now_ms: u64) {
        if self.map.len() >= self.cap && !self.map.contains_key(&id) {
            if now_ms >= self.next_sweep_ms {
                self.map.retain(|_, (_, u)| *u > now_ms);
                self.next_sweep_ms = now_ms.saturating_add(1000);
            }
            while self.map.len() >= self.cap {
                let Some(k) = self.map.keys().next().copied() else {
                    break;
                };
                self.map.remove(&k);
            }
        }
        self.map.insert(id, (r, until_ms));
    }

    pub fn remove(&mut self, id: &Digest32) {
        self.map.remove(id);
    }
}
