//! The shared store the core needs (Envoy shared data), and an in-memory one with Envoy's rules.

/// Envoy's shared data as the core sees it. Rules (proxy-wasm-cpp-host `SharedData`):
/// `cas == 0` writes unconditionally; a non-zero `cas` must equal the entry's current one; a
/// missing key is inserted whatever `cas` says; entries are never deleted.
pub trait SharedStore {
    /// The value and its CAS token, or `None` when the key is absent.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    fn set(&self, key: &str, value: &[u8], cas: u32) -> SetOutcome;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetOutcome {
    Written,
    CasMismatch,
    Failed,
}

/// A CAS token no live entry carries in practice (Envoy counts up from 1 and skips 0): passing it
/// for an absent key inserts; if a racing writer inserted first, it mismatches instead of
/// overwriting the racer's write.
pub const ABSENT_CAS: u32 = u32::MAX;

#[cfg(test)]
pub mod memory {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    /// Follows Envoy's CAS rules; `conflicts` forces that many upcoming sets to mismatch, as if
    /// another worker had written in between (it also bumps the entry's CAS, as that write would).
    #[derive(Default)]
    pub struct MemoryStore {
        pub map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        next_cas: Cell<u32>,
        pub conflicts: Cell<u32>,
        pub sets: Cell<u32>,
    }

    impl MemoryStore {
        fn next(&self) -> u32 {
            let c = self.next_cas.get().wrapping_add(1).max(1);
            self.next_cas.set(c);
            c
        }
    }

    impl SharedStore for MemoryStore {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.map.borrow().get(key).cloned()
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> SetOutcome {
            self.sets.set(self.sets.get() + 1);
            let next = self.next();
            let mut map = self.map.borrow_mut();
            match map.get_mut(key) {
                None => {
                    map.insert(key.to_string(), (value.to_vec(), next));
                    SetOutcome::Written
                }
                Some(entry) => {
                    if self.conflicts.get() > 0 {
                        self.conflicts.set(self.conflicts.get() - 1);
                        entry.1 = next;
                        return SetOutcome::CasMismatch;
                    }
                    if cas != 0 && cas != entry.1 {
                        return SetOutcome::CasMismatch;
                    }
                    *entry = (value.to_vec(), next);
                    SetOutcome::Written
                }
            }
        }
    }
}
