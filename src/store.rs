//! The shared store the core needs (Envoy shared data), and an in-memory one with Envoy's rules.

use std::cell::{Cell, RefCell};

/// Envoy's shared data as the core sees it. Rules (proxy-wasm-cpp-host `SharedData`):
/// `cas == 0` writes unconditionally; a non-zero `cas` must equal the entry's current one; a
/// missing key is inserted whatever `cas` says; entries are never deleted.
pub trait SharedStore {
    /// The value and its CAS token, or `None` when the key is absent.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    fn set(&self, key: &str, value: &[u8], cas: u32) -> SetOutcome;
    /// Whether the last `get` answered from a worker-local guess (see [`Speculative`]) rather
    /// than from the store: a decision must then be confirmed by a CAS write.
    fn last_was_guess(&self) -> bool {
        false
    }

    /// Whether writing a value back unchanged is worth it (it confirms a guess, and seeds the
    /// next one): true for [`Speculative`].
    fn guesses(&self) -> bool {
        false
    }
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

/// What this worker last wrote, and the CAS token that write most likely received.
#[derive(Clone, Debug, Default)]
struct Guess {
    key: String,
    value: Vec<u8>,
    /// 0: no guess (used, or its write mismatched).
    cas: u32,
    at_ms: u64,
}

/// This worker's guess of its own last write. One, not one per key: a guess can only be right
/// when no write at all (to any key, by anyone) came between the write it guesses from and the
/// next one, so a guess for any key but the one this worker wrote last is certainly wrong (it
/// would cost a failed write before the read). With many keys in turn, every request then pays
/// a read and a write, never a failed write as well.
#[derive(Default)]
pub struct Guesses {
    last: Guess,
}

/// Whether two keys are equal, compared 8 bytes at a time.
fn same_key(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let (mut x, mut y) = (a.chunks_exact(8), b.chunks_exact(8));
    let word = |c: &[u8]| c.try_into().map_or(0, u64::from_ne_bytes);
    (&mut x).zip(&mut y).all(|(p, q)| word(p) == word(q)) && x.remainder() == y.remainder()
}

/// Guesses older than this are not used: CAS tokens are a 32-bit counter that wraps, and a
/// guess must not outlive one turn of it.
const GUESS_MAX_AGE_MS: u64 = 10_000;

/// A store that skips the read of a read-modify-write when it can guess the read's answer.
///
/// Envoy hands out CAS tokens from one process-wide counter, one per write, and returns no token
/// from a write. After this worker writes `v` over token `c`, the entry holds `v` under token
/// `c + 1` exactly when no other write (to any key, by any worker) came in between, which is the
/// steady state of a key hammered through one worker. The next `get` of that key then answers
/// `(v, c + 1)` from memory, and the caller's CAS write checks the guess: written means the
/// entry was still exactly `v` (tokens are never reused within a turn of the counter, and any
/// other write to the key would have moved its token past `c + 1`); a mismatch makes the caller
/// read again, from the host. So exactness is Envoy's CAS, unchanged; a good guess saves the
/// read (every host call that returns data makes the host call back into the VM to allocate), a
/// bad one costs one failed write, a far cheaper call (tests/bench/RESULTS.md, "What single calls cost").
pub struct Speculative<'a> {
    inner: &'a dyn SharedStore,
    guesses: &'a RefCell<Guesses>,
    now_ms: u64,
    guessed: Cell<bool>,
}

impl<'a> Speculative<'a> {
    pub fn new(inner: &'a dyn SharedStore, guesses: &'a RefCell<Guesses>, now_ms: u64) -> Self {
        Speculative {
            inner,
            guesses,
            now_ms,
            guessed: Cell::new(false),
        }
    }
}

impl SharedStore for Speculative<'_> {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        // a guess is used once: if its write mismatches, the retry reads from the host
        let guess = self.guesses.try_borrow_mut().ok().and_then(|mut g| {
            let last = &mut g.last;
            if last.cas == 0 || !same_key(&last.key, key) {
                return None;
            }
            let fresh = self.now_ms.saturating_sub(last.at_ms) < GUESS_MAX_AGE_MS;
            let cas = std::mem::replace(&mut last.cas, 0);
            fresh.then(|| (last.value.clone(), cas))
        });
        self.guessed.set(guess.is_some());
        guess.or_else(|| self.inner.get(key))
    }

    fn last_was_guess(&self) -> bool {
        self.guessed.get()
    }

    fn guesses(&self) -> bool {
        true
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> SetOutcome {
        let out = self.inner.set(key, value, cas);
        if let Ok(mut g) = self.guesses.try_borrow_mut() {
            let last = &mut g.last;
            // an unconditional write or an insert tells nothing about the token it got, and any
            // write moves the counter past the last guess
            last.cas = 0;
            if out == SetOutcome::Written && cas != 0 && cas != ABSENT_CAS {
                if !same_key(&last.key, key) {
                    last.key.clear();
                    last.key.push_str(key);
                }
                last.value.clear();
                last.value.extend_from_slice(value);
                last.cas = next_token(cas);
                last.at_ms = self.now_ms;
            }
        }
        out
    }
}

/// The token Envoy hands out after `cas` (it counts up and skips 0).
fn next_token(cas: u32) -> u32 {
    cas.wrapping_add(1).max(1)
}

#[cfg(test)]
pub mod memory {
    use super::*;
    use std::collections::HashMap;

    /// Follows Envoy's CAS rules; `conflicts` forces that many upcoming sets to mismatch, as if
    /// another worker had written in between (it also bumps the entry's CAS, as that write would).
    #[derive(Default)]
    pub struct MemoryStore {
        pub map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        next_cas: Cell<u32>,
        pub conflicts: Cell<u32>,
        pub sets: Cell<u32>,
        pub gets: Cell<u32>,
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
            self.gets.set(self.gets.get() + 1);
            self.map.borrow().get(key).cloned()
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> SetOutcome {
            self.sets.set(self.sets.get() + 1);
            let mut map = self.map.borrow_mut();
            // like Envoy, a token is drawn from the counter only by a write
            match map.get_mut(key) {
                None => {
                    map.insert(key.to_string(), (value.to_vec(), self.next()));
                    SetOutcome::Written
                }
                Some(entry) => {
                    if self.conflicts.get() > 0 {
                        self.conflicts.set(self.conflicts.get() - 1);
                        entry.1 = self.next();
                        return SetOutcome::CasMismatch;
                    }
                    if cas != 0 && cas != entry.1 {
                        return SetOutcome::CasMismatch;
                    }
                    *entry = (value.to_vec(), self.next());
                    SetOutcome::Written
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::memory::MemoryStore;
    use super::*;

    #[test]
    fn only_the_last_write_is_guessed() {
        let st = MemoryStore::default();
        let guesses = RefCell::new(Guesses::default());
        let sp = Speculative::new(&st, &guesses, 0);
        let big = vec![7u8; 4012];
        for k in ["a", "b"] {
            st.set(k, &big, 0);
        }
        let (_, ca) = st.get("a").unwrap();
        assert_eq!(sp.set("a", b"1", ca), SetOutcome::Written);
        let (_, cb) = st.get("b").unwrap();
        assert_eq!(sp.set("b", b"2", cb), SetOutcome::Written);
        // a was written before b: no guess for it (it would be wrong), read from the store
        let gets = st.gets.get();
        assert_eq!(sp.get("a").unwrap().0, b"1");
        assert!(!sp.last_was_guess() && st.gets.get() == gets + 1);
        // b written twice in a row, nothing in between: the guess is right
        let (_, cb) = st.get("b").unwrap();
        assert_eq!(sp.set("b", b"3", cb), SetOutcome::Written);
        let (v, cas) = sp.get("b").unwrap();
        assert!(sp.last_was_guess() && v == b"3");
        assert_eq!(sp.set("b", b"4", cas), SetOutcome::Written);
        // held memory: one value
        assert_eq!(guesses.borrow().last.value, b"4");
    }
}
