//! What the service keeps: accounts, users, keys, the revocation feed, dashboard sessions.
//! Secrets never appear here: a key is its SHA-256 (`key_hash`), a password its argon2id PHC
//! string, a session its SHA-256.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The three kinds of key, in the style of Event Staff's API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An account's long-lived key (`kgb_…`, id `bk_…`); no user.
    Business,
    /// A 24-hour token from login (`kgp_…`, id `pk_…`); manages the other keys.
    Personal,
    /// A personal access token with a name and a lifetime, for `Basic user:PAT` (`kgn_…`, `nk_…`).
    Named,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Business, Kind::Personal, Kind::Named];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Business => "business",
            Kind::Personal => "personal",
            Kind::Named => "named",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The secret's prefix (the published format: `keygate::keyformat`).
    pub fn secret_prefix(self) -> &'static str {
        match self {
            Kind::Business => "kgb_",
            Kind::Personal => "kgp_",
            Kind::Named => "kgn_",
        }
    }

    pub fn id_prefix(self) -> &'static str {
        match self {
            Kind::Business => "bk_",
            Kind::Personal => "pk_",
            Kind::Named => "nk_",
        }
    }

    pub fn default_scopes(self) -> Vec<String> {
        let s: &[&str] = match self {
            Kind::Business | Kind::Named => &["read", "write"],
            Kind::Personal => &["read", "write", "tokens"],
        };
        s.iter().map(|x| x.to_string()).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub requests: u64,
    pub window_s: u64,
    pub burst: u64,
}

/// A key's state at an instant, in the contract's codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Valid,
    Revoked,
    Disabled,
    Expired,
}

impl State {
    pub fn code(self) -> &'static str {
        match self {
            State::Valid => "VALID",
            State::Revoked => "REVOKED",
            State::Disabled => "DISABLED",
            State::Expired => "EXPIRED",
        }
    }
}

/// One key: everything but its secret.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRecord {
    pub id: String,
    pub kind: Kind,
    pub name: String,
    /// Hex SHA-256 of the secret (64 lowercase hex digits).
    pub key_hash: String,
    /// What the dashboard shows of the secret: its prefix and first characters (`kgb_4X9m`), or
    /// empty for an imported hash.
    pub hint: String,
    pub user: Option<String>,
    pub subject: String,
    pub account: String,
    pub plan: String,
    pub scopes: Vec<String>,
    pub resources: BTreeMap<String, Vec<String>>,
    pub ratelimit: Option<RateLimit>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub disabled: bool,
    /// The key that replaced this one by rotation (its grace ends at `expires_at`).
    pub replaced_by: Option<String>,
    /// Read from the account and the user rows (not stored on the key).
    pub account_disabled: bool,
    pub user_disabled: bool,
}

impl KeyRecord {
    /// VALID, or why not: REVOKED, then DISABLED (the key, its account or its user), then EXPIRED.
    pub fn state(&self, now: i64) -> State {
        if self.revoked_at.is_some() {
            State::Revoked
        } else if self.disabled || self.account_disabled || self.user_disabled {
            State::Disabled
        } else if self.expires_at.is_some_and(|e| e <= now) {
            State::Expired
        } else {
            State::Valid
        }
    }
}

/// Rotation: the instant a replaced key stops working. It keeps its own expiry when that comes
/// first (a grace never lengthens a key's life); a grace that ends at or before `at` means now.
pub fn replaced_key_until(old_expiry: Option<i64>, grace_until: i64, at: i64) -> i64 {
    let until = old_expiry.map_or(grace_until, |e| e.min(grace_until));
    until.max(at.min(grace_until))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Account {
    pub name: String,
    pub plan: String,
    pub disabled: bool,
    pub created_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub email: String,
    pub account: String,
    /// argon2id, PHC string format.
    pub password_hash: String,
    pub disabled: bool,
    pub created_at: i64,
}

/// One revocation-feed entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedEntry {
    pub seq: i64,
    pub key_id: String,
    pub key_hash: String,
    pub user: Option<String>,
}

/// A dashboard session, stored by the SHA-256 of its cookie value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub id_hash: String,
    pub user: String,
    /// The session's CSRF token (random, sent in every form).
    pub csrf: String,
    pub created_at: i64,
    pub expires_at: i64,
}

pub fn sha256_hex(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    let mut s = String::with_capacity(64);
    for b in d {
        s.push(char::from(b"0123456789abcdef"[(b >> 4) as usize]));
        s.push(char::from(b"0123456789abcdef"[(b & 15) as usize]));
    }
    s
}

pub fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

pub fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(expires_at: Option<i64>) -> KeyRecord {
        KeyRecord {
            id: "k".into(),
            kind: Kind::Business,
            name: "n".into(),
            key_hash: sha256_hex(b"s"),
            hint: String::new(),
            user: None,
            subject: "k".into(),
            account: "a".into(),
            plan: "p".into(),
            scopes: vec![],
            resources: BTreeMap::new(),
            ratelimit: None,
            created_at: 0,
            expires_at,
            revoked_at: None,
            disabled: false,
            replaced_by: Some("k2".into()),
            account_disabled: false,
            user_disabled: false,
        }
    }

    proptest! {
        /// A rotated key works exactly until min(its own expiry, the end of its grace), never
        /// longer, and a grace of 0 ends it at once.
        #[test]
        fn rotation_windows(at in 0i64..1_000_000, grace in 0i64..100_000,
                            expiry in proptest::option::of(0i64..2_000_000), probe in 0i64..2_200_000) {
            let until = replaced_key_until(expiry, at + grace, at);
            let k = key(Some(until));
            // works exactly before the instant
            prop_assert_eq!(k.state(probe) == State::Valid, probe < until);
            // never past the grace, never before now
            prop_assert!(at <= until && until <= at + grace);
            // never past the key's own expiry (unless that was already past: then now)
            if let Some(e) = expiry {
                prop_assert!(until <= e.max(at));
            }
            if grace == 0 {
                prop_assert_eq!(until, at);
            }
        }
    }

    #[test]
    fn states_and_their_precedence() {
        let mut k = key(Some(100));
        assert_eq!(k.state(99), State::Valid);
        assert_eq!(k.state(100), State::Expired);
        k.account_disabled = true;
        assert_eq!(k.state(100), State::Disabled);
        k.revoked_at = Some(50);
        assert_eq!(k.state(0), State::Revoked);
        assert_eq!(replaced_key_until(None, 500, 100), 500);
        assert_eq!(replaced_key_until(Some(300), 500, 100), 300);
        assert_eq!(replaced_key_until(Some(50), 500, 100), 100); // already expired: now
        assert_eq!(replaced_key_until(None, 100, 100), 100);
    }
}
