//! SHA-256 helpers. Every secret is hashed before it is compared, cached or stored.

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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

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
}
