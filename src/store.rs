//! The shared store the core needs (Envoy shared data), and an in-memory one with Envoy's rules.

use std::cell::{Cell, RefCell};
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault};

use crate::hash::TagHasher;

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

/// What this worker last wrote to a key, and the CAS token that write most likely received.
#[derive(Clone, Debug)]
struct Guess {
    /// The shared-data key (the map is keyed by its hash).
    key: Box<str>,
    value: Vec<u8>,
    /// 0: no guess (used, or its write mismatched).
    cas: u32,
    at_ms: u64,
}

/// This worker's guesses for the keys it writes often (token buckets, rolling windows), bounded
/// in entries and in bytes. Keyed by a keyed hash of the shared-data key, computed once a
/// request (a bucket's get and set share it), and the key itself compared word by word: both
/// are on every rate-limited request's path, where a byte-wise `memcmp` of the key and a second
/// SipHash of it cost more than the rest of the bucket's arithmetic.
#[derive(Default)]
pub struct Guesses {
    map: HashMap<u64, Guess, BuildHasherDefault<TagHasher>>,
    /// Keys the hashes (random per VM: the keys carry account and subject names).
    hasher: RandomState,
    /// The last key hashed and its hash: a read-modify-write hashes its key once.
    last: (String, u64),
    /// Bytes of the values held (a rolling window's value is 16 + 4N bytes).
    bytes: usize,
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
const GUESSES_MAX: usize = 4096;
/// At most this many bytes of guessed values per worker: 4096 token buckets take 128 KiB;
/// rolling windows of N = 1,000 (4 KB each) fit 256 before the guesses are dropped and start
/// again.
const GUESS_BYTES_MAX: usize = 1 << 20;

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

impl Guesses {
    fn hash(&mut self, key: &str) -> u64 {
        if !same_key(&self.last.0, key) {
            self.last.1 = self.hasher.hash_one(key);
            self.last.0.clear();
            self.last.0.push_str(key);
        }
        self.last.1
    }
}

impl SharedStore for Speculative<'_> {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        // a guess is used once: if its write mismatches, the retry reads from the host
        let guess = self.guesses.try_borrow_mut().ok().and_then(|mut g| {
            let h = g.hash(key);
            let guess = g.map.get_mut(&h).filter(|g| same_key(&g.key, key))?;
            let fresh =
                guess.cas != 0 && self.now_ms.saturating_sub(guess.at_ms) < GUESS_MAX_AGE_MS;
            let cas = std::mem::replace(&mut guess.cas, 0);
            fresh.then(|| (guess.value.clone(), cas))
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
        // an unconditional write or an insert tells nothing about the token it got
        if out == SetOutcome::Written && cas != 0 && cas != ABSENT_CAS {
            if let Ok(mut g) = self.guesses.try_borrow_mut() {
                let cas = next_token(cas);
                let h = g.hash(key);
                let Guesses { map, bytes, .. } = &mut *g;
                match map.get_mut(&h) {
                    // one lookup on the hot path (a bucket's 32 bytes replace 32 bytes)
                    Some(guess) if same_key(&guess.key, key) => {
                        *bytes = bytes.saturating_sub(guess.value.len()) + value.len();
                        guess.value.clear();
                        guess.value.extend_from_slice(value);
                        guess.cas = cas;
                        guess.at_ms = self.now_ms;
                        if *bytes > GUESS_BYTES_MAX {
                            map.clear();
                            *bytes = 0;
                        }
                    }
                    // new, or another key of the same hash (replaced)
                    other => {
                        let replaced = other.map_or(0, |g| g.value.len());
                        *bytes = bytes.saturating_sub(replaced);
                        if map.len() >= GUESSES_MAX || *bytes + value.len() > GUESS_BYTES_MAX {
                            map.clear();
                            *bytes = 0;
                        }
                        *bytes += value.len();
                        let guess = Guess {
                            key: key.into(),
                            value: value.to_vec(),
                            cas,
                            at_ms: self.now_ms,
                        };
                        map.insert(h, guess);
                    }
                }
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
    fn guesses_are_bounded_in_bytes() {
        let st = MemoryStore::default();
        let guesses = RefCell::new(Guesses::default());
        let sp = Speculative::new(&st, &guesses, 0);
        let big = vec![7u8; 4012]; // a rolling window of N = 1,000
        for i in 0..600 {
            let k = format!("w{i}");
            st.set(&k, &big, 0);
            let (_, cas) = st.get(&k).unwrap();
            assert_eq!(sp.set(&k, &big, cas), SetOutcome::Written);
            let g = guesses.borrow();
            assert!(g.bytes <= GUESS_BYTES_MAX);
            assert_eq!(
                g.bytes,
                g.map.values().map(|x| x.value.len()).sum::<usize>()
            );
        }
        assert!(guesses.borrow().map.len() < 600);
        // and the newest guess is still good
        let (v, _) = sp.get("w599").unwrap();
        assert!(sp.last_was_guess() && v == big);
    }
}
