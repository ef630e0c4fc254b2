//! SHA-256 helpers. Every secret is hashed before it is compared, cached or stored.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use sha2::{Digest, Sha256};

pub type Digest32 = [u8; 32];

pub fn sha256(data: &[u8]) -> Digest32 {
    Sha256::digest(data).into()
}

/// The identity of a presented credential: SHA-256(user || 0x00 || SHA-256(secret)).
///
/// Built on the secret's own hash so that a key service that stores only `sha256(secret)` and the
/// key's user can name the same identity (for revocation) without ever holding the secret.
pub fn credential_id(user: Option<&str>, secret: &str) -> Digest32 {
    credential_id_from_hash(user, &sha256(secret.as_bytes()))
}

/// The same identity from the secret's hash, as a key service's revocation feed names it.
pub fn credential_id_from_hash(user: Option<&str>, key_hash: &Digest32) -> Digest32 {
    let mut h = Sha256::new();
    h.update(user.unwrap_or("").as_bytes());
    h.update([0u8]);
    h.update(key_hash);
    h.finalize().into()
}

const HEX: &[u8; 16] = b"0123456789abcdef";

pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// Parses exactly 64 hex digits (either case).
pub fn parse_hex32(s: &str) -> Option<Digest32> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = hex_val(pair[0])?;
        let lo = hex_val(pair[1])?;
        out[i] = (hi << 4) | lo;
    }
    Some(out)
}

/// The value of one hex digit (either case).
pub(crate) fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A worker's memo of recent secrets' SHA-256, so a key presented again skips the hash (SHA-256
/// is about a third of keygate's own compute per request; in wasm, without SHA instructions, it
/// is several thousand instructions a block).
///
/// The memo never holds a secret: it maps a 128-bit tag of the secret to its digest. The tag is
/// two SipHash outputs under two keys drawn at random per VM (std's `RandomState`, seeded from
/// WASI's `random_get`), so a client cannot choose a secret whose tag matches another key's
/// without knowing those keys; a blind match has probability 2^-128 per try. Bounded: cleared
/// when full.
pub struct DigestMemo {
    keys: (RandomState, RandomState),
    /// The digest, and the secret's tag in the verdict table once asked for
    /// ([`DigestMemo::verdict_tag`]).
    map: HashMap<u128, (Digest32, Option<u128>), BuildHasherDefault<TagHasher>>,
    cap: usize,
    /// The key of the secret hashed last.
    last: u128,
}

impl DigestMemo {
    pub fn new(cap: usize) -> Self {
        DigestMemo {
            keys: (RandomState::new(), RandomState::new()),
            map: HashMap::default(),
            cap: cap.max(1),
            last: 0,
        }
    }

    pub fn sha256(&mut self, secret: &[u8]) -> Digest32 {
        let tag = (u128::from(self.keys.0.hash_one(secret)) << 64)
            | u128::from(self.keys.1.hash_one(secret));
        self.last = tag;
        if let Some((d, _)) = self.map.get(&tag) {
            return *d;
        }
        let d = sha256(secret);
        if self.map.len() >= self.cap {
            self.map.clear();
        }
        self.map.insert(tag, (d, None));
        d
    }

    /// `tag(digest)` for the digest [`DigestMemo::sha256`] just gave (its tag in the verdict
    /// table, a keyed hash): remembered with it, so a key presented again is not hashed again.
    /// A memo lives as long as its plugin's configuration, and so its tables.
    pub fn verdict_tag(&mut self, digest: &Digest32, tag: impl FnOnce(&Digest32) -> u128) -> u128 {
        match self.map.get_mut(&self.last) {
            Some((d, Some(t))) if d == digest => *t,
            Some((d, slot)) if d == digest => *slot.insert(tag(digest)),
            _ => tag(digest),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// For keys that are already uniform hashes (the memo's keyed tags, SHA-256 digests of
/// config-declared keys) or host-assigned ids: the map uses the key's bits as they are (the first
/// 8 bytes of the last write), or for an integer id, the id times an odd constant (sequential ids
/// get distinct low bits, which pick the bucket, and mixed high bits). Never for keys a client can
/// choose.
#[derive(Default)]
pub struct TagHasher(u64);

impl Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().take(8) {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_memo_gives_the_digests_it_would_compute() {
        let mut m = DigestMemo::new(4);
        for _ in 0..2 {
            for s in ["a", "b", "c", "d", "e"] {
                let d = m.sha256(s.as_bytes());
                assert_eq!(d, sha256(s.as_bytes()));
                let tag = |d: &Digest32| u128::from_le_bytes(d[..16].try_into().unwrap());
                assert_eq!(m.verdict_tag(&d, tag), tag(&d));
                assert_eq!(m.verdict_tag(&d, |_| 0), tag(&d), "remembered");
                // a digest that is not the last one's: computed, not mixed up
                let z = sha256(b"z");
                assert_eq!(m.verdict_tag(&z, tag), tag(&z));
                // a secret's id with a user is not its digest (the verdict table's name for it)
                assert_ne!(credential_id(Some(""), s), sha256(s.as_bytes()));
            }
        }
        assert!(m.len() <= 4);
    }

    #[test]
    fn tag_hasher_spreads_sequential_ids_and_keeps_digest_bits() {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let b = BuildHasherDefault::<TagHasher>::default();
        // context ids count up: their low bits (the bucket) must all differ
        let low: std::collections::HashSet<u64> =
            (0u32..1024).map(|i| b.hash_one(i) & 1023).collect();
        assert_eq!(low.len(), 1024);
        let d = sha256(b"k");
        let first8 = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
        assert_eq!(b.hash_one(d), first8);
    }

    #[test]
    fn sha256_known_vector() {
        assert_eq!(
            to_hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hex_round_trip_and_rejects() {
        let d = sha256(b"x");
        assert_eq!(parse_hex32(&to_hex(&d)).unwrap(), d);
        assert_eq!(parse_hex32(&to_hex(&d).to_uppercase()).unwrap(), d);
        assert!(parse_hex32("abc").is_none());
        assert!(parse_hex32(&"g".repeat(64)).is_none());
    }

    #[test]
    fn user_is_part_of_the_identity() {
        assert_ne!(
            credential_id(Some("alice"), "t"),
            credential_id(Some("bob"), "t")
        );
        assert_ne!(credential_id(None, "t"), credential_id(Some("a"), "t"));
        assert_eq!(credential_id(None, "t"), credential_id(Some(""), "t"));
    }

    #[test]
    fn digest_memo_agrees_with_sha256_and_is_bounded() {
        let mut m = DigestMemo::new(8);
        for round in 0..3 {
            for i in 0..20 {
                let secret = format!("secret-{i}");
                assert_eq!(
                    m.sha256(secret.as_bytes()),
                    sha256(secret.as_bytes()),
                    "{round} {i}"
                );
                assert!(m.len() <= 8);
            }
        }
        // two memos (two VMs) tag differently: the tags are keyed
        let (a, b) = (DigestMemo::new(1), DigestMemo::new(1));
        let t = |m: &DigestMemo| m.keys.0.hash_one(b"k");
        assert_ne!(t(&a), t(&b));
    }

    proptest::proptest! {
        #[test]
        fn digest_memo_never_answers_another_secret(secrets in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 1..60)) {
            let mut m = DigestMemo::new(16);
            for s in secrets.iter().chain(secrets.iter().rev()) {
                proptest::prop_assert_eq!(m.sha256(s), sha256(s));
            }
        }
    }
}
