//! The embedded key store: keys declared in the plugin config by their SHA-256, never in clear.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::rc::Rc;

use crate::credential::Credential;
use crate::hash::{Digest32, TagHasher};
use crate::verdict::{Identity, Refusal, Verdict};

#[derive(Clone, Debug)]
pub struct KeyEntry {
    /// A Basic credential is (user, token): an entry with a user matches only Basic with that
    /// user, and one without a user never matches Basic (its token is a Bearer, header or query
    /// key). So a Basic PAT is never also a Bearer token that names no user.
    pub user: Option<String>,
    pub disabled: bool,
    pub identity: Rc<Identity>,
}

#[derive(Clone, Debug, Default)]
pub struct KeyStore {
    /// Hashed by the digest's first 8 bytes as they are (`TagHasher`): SHA-256 output is already
    /// uniform, entries come only from the config, and a client's digest only looks one up.
    by_hash: HashMap<Digest32, KeyEntry, BuildHasherDefault<TagHasher>>,
}

impl KeyStore {
    pub fn insert(&mut self, sha256: Digest32, entry: KeyEntry) -> bool {
        self.by_hash.insert(sha256, entry).is_none()
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The verdict for `cred`, given its secret's SHA-256 (computed once by the caller, which
    /// also needs it for the cache id).
    pub fn verify(&self, cred: &Credential, secret_sha256: &Digest32, now_s: u64) -> Verdict {
        let Some(entry) = self.by_hash.get(secret_sha256) else {
            return Verdict::Refused(Refusal::Unknown);
        };
        // only Basic carries a user: this also refuses a user's key in any other style
        if entry.user.as_deref() != cred.user.as_deref() {
            return Verdict::Refused(Refusal::Unknown);
        }
        if entry.disabled {
            return Verdict::Refused(Refusal::Disabled);
        }
        Verdict::Valid(entry.identity.clone()).at(now_s)
    }
}
