//! Secrets: new keys in the published format, argon2id passwords, the login throttle.

use std::collections::HashMap;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use keygate::keyformat::{self, ALPHABET, RANDOM_LEN};

use crate::model::{sha256_hex, Kind};

/// `n` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness: {e}"))?;
    Ok(b)
}

/// `n` characters of `[0-9A-Za-z]`, uniform (rejection sampling over random bytes).
pub fn random_base62<const N: usize>() -> Result<[u8; N], String> {
    let mut out = [b'0'; N];
    let mut filled = 0;
    while filled < N {
        for b in random_bytes::<64>()? {
            // 248 = 4·62: the bytes below it map uniformly onto the alphabet
            if b < 248 && filled < N {
                out[filled] = ALPHABET[(b % 62) as usize];
                filled += 1;
            }
        }
    }
    Ok(out)
}

/// A fresh secret of `kind` in the published format (`keygate::keyformat`).
pub fn new_secret(kind: Kind) -> Result<String, String> {
    let random = random_base62::<RANDOM_LEN>()?;
    Ok(keyformat::assemble(kind.secret_prefix(), &random))
}

/// A fresh public key id, e.g. `bk_3f9a0c1d2e4b7a61`.
pub fn new_key_id(kind: Kind) -> Result<String, String> {
    let b = random_bytes::<8>()?;
    let mut s = String::from(kind.id_prefix());
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    Ok(s)
}

/// What people see of a secret: its prefix and the next 4 characters.
pub fn hint(secret: &str) -> String {
    secret.chars().take(8).collect()
}

/// An opaque random token (sessions, CSRF): 32 bytes, base62-ish hex.
pub fn token() -> Result<String, String> {
    Ok(sha256_hex(&random_bytes::<32>()?))
}

fn argon2() -> Argon2<'static> {
    // OWASP's argon2id minimum: 19 MiB, 2 passes, 1 lane (~25 ms in a release build here)
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// An argon2id PHC string of `password` with a random salt. CPU-heavy: call from a blocking task.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()?).map_err(|e| e.to_string())?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Does `password` match the PHC string? (False for an unreadable one.) CPU-heavy.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => argon2().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// Failed logins counted per key (an email's hash, a client address) in a fixed window. A key
/// with `max` failures in its window is refused until the window ends. The table holds at most
/// `cap` keys; when it is full of live windows, a new key is refused too (fail closed) until one
/// ends: no attacker can flush a victim's count by filling the table.
pub struct Throttle {
    windows: HashMap<String, (i64, u32)>,
    cap: usize,
    window_s: i64,
}

impl Throttle {
    pub fn new(cap: usize, window_s: i64) -> Throttle {
        Throttle {
            windows: HashMap::new(),
            cap,
            window_s,
        }
    }

    /// `Err(seconds to wait)` if `key` may not try now.
    pub fn check(&mut self, key: &str, max: u32, now: i64) -> Result<(), i64> {
        match self.windows.get(key) {
            Some(&(start, n)) if now < start + self.window_s => {
                if n >= max {
                    Err((start + self.window_s - now).max(1))
                } else {
                    Ok(())
                }
            }
            Some(_) => Ok(()),
            None if self.windows.len() < self.cap => Ok(()),
            None => {
                let ws = self.window_s;
                self.windows.retain(|_, (start, _)| now < *start + ws);
                if self.windows.len() < self.cap {
                    Ok(())
                } else {
                    let soonest = self.windows.values().map(|(s, _)| s + ws).min();
                    Err(soonest.map_or(ws, |t| (t - now).max(1)))
                }
            }
        }
    }

    pub fn fail(&mut self, key: &str, now: i64) {
        let ws = self.window_s;
        if !self.windows.contains_key(key) && self.windows.len() >= self.cap {
            self.windows.retain(|_, (start, _)| now < *start + ws);
            if self.windows.len() >= self.cap {
                return;
            }
        }
        let e = self.windows.entry(key.to_string()).or_insert((now, 0));
        if now >= e.0 + ws {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
    }

    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_the_published_format_and_differ() {
        for kind in Kind::ALL {
            let a = new_secret(kind).unwrap_or_default();
            let b = new_secret(kind).unwrap_or_default();
            assert_ne!(a, b);
            assert!(keyformat::well_formed(&a, &[kind.secret_prefix()]), "{a}");
            assert_eq!(a.len(), 42);
        }
    }

    #[test]
    fn base62_draws_cover_the_alphabet() {
        let mut seen = [false; 256];
        for _ in 0..200 {
            for c in random_base62::<32>().unwrap_or([b'!'; 32]) {
                seen[c as usize] = true;
            }
        }
        assert!(ALPHABET.iter().all(|&c| seen[c as usize]));
        assert_eq!(seen.iter().filter(|&&s| s).count(), 62);
    }

    #[test]
    fn passwords() {
        let h = hash_password("correct horse").unwrap_or_default();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct horsf", &h));
        assert!(!verify_password("correct horse", "not a hash"));
        assert_ne!(h, hash_password("correct horse").unwrap_or_default());
    }

    #[test]
    fn throttle_counts_per_key_and_window() {
        let mut t = Throttle::new(3, 60);
        for _ in 0..5 {
            assert!(t.check("a", 5, 100).is_ok());
            t.fail("a", 100);
        }
        assert_eq!(t.check("a", 5, 130), Err(30));
        assert!(t.check("b", 5, 130).is_ok());
        assert!(t.check("a", 5, 160).is_ok()); // a new window
        t.fail("a", 160);
        assert!(t.check("a", 5, 161).is_ok());
    }

    #[test]
    fn a_full_throttle_fails_closed_and_keeps_its_counts() {
        let mut t = Throttle::new(2, 60);
        t.fail("victim", 0);
        t.fail("x", 0);
        t.fail("y", 1); // no room: not counted, and the victim's count stays
        assert_eq!(t.len(), 2);
        assert!(t.check("z", 5, 10).is_err());
        assert!(t.check("victim", 5, 10).is_ok());
        assert!(t.check("z", 5, 61).is_ok()); // windows ended: room again
    }
}
