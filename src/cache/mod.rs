//! Verdict caching. Policy, in one place:
//!
//! - **Positive verdicts** live in Envoy shared data (every worker benefits), keyed by
//!   `{prefix}:v:{hex(credential_id(None, secret))}`, the secret's id *without* the Basic user:
//!   neither key nor value holds the secret. The entry records which users it was given for
//!   ([`Binding`]: no user, one Basic user, or any user when the service says its verdict does
//!   not depend on the user), and a lookup for another user is a miss. So there is **at most one
//!   entry per accepted secret**, whatever users clients send and whatever the service answers
//!   for them. An entry is *fresh* until `min(now + positive_ttl, now + service hint, key
//!   expiry)`, then *stale* for `stale_ttl` more (served only while the key service is failing).
//!   Entries are only created for secrets the key service accepted or the revocation feed named,
//!   so their number is bounded by the key inventory, never by attacker input.
//! - **Negative verdicts** (unknown, revoked, expired, disabled) stay in a per-worker map capped
//!   at `negative_entries`: random garbage keys cost bounded VM memory and nothing in shared data.
//! - **Revocation** writes a revoked mark for the secret (over an entry, or as a new one: the feed
//!   is the operator's, its keys are real keys) stamped with the time keygate learned it. A valid
//!   answer whose call started before that time never overwrites the mark ([`store_valid`]): the
//!   service may have checked the key before it was revoked.

use std::collections::HashMap;
use std::rc::Rc;

use crate::contract;
use crate::hash::{credential_id_from_hash, to_hex, Digest32};
use crate::store::{SetOutcome, SharedStore};
use crate::verdict::{Identity, Refusal, Verdict};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachePolicy {
    pub positive_ttl_ms: u64,
    pub negative_ttl_ms: u64,
    pub stale_ms: u64,
    pub negative_entries: usize,
    /// How long a worker uses a verdict it read from shared data before reading it again.
    pub recheck_ms: u64,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            positive_ttl_ms: 300_000,
            negative_ttl_ms: 30_000,
            stale_ms: 600_000,
            negative_entries: 10_000,
            recheck_ms: 250,
        }
    }
}

pub fn entry_key(prefix: &str, id: &Digest32) -> String {
    let mut k = String::with_capacity(prefix.len() + 3 + 64);
    k.push_str(prefix);
    k.push_str(":v:");
    k.push_str(&to_hex(id));
    k
}

const MAGIC: &[u8; 3] = b"KG2";
const HEADER: usize = 3 + 8 + 8 + 1;

/// Which presentations of a secret a cached valid verdict holds for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Presented without a user (Bearer, API-key header, query parameter).
    NoUser,
    /// Presented as Basic with this user.
    User(String),
    /// Presented as Basic with any user (the service said `"user_bound": false`).
    AnyUser,
}

impl Binding {
    /// The binding of a verdict given for `user` (`user_bound`: the service's word).
    pub fn of(user: Option<&str>, user_bound: bool) -> Binding {
        match user {
            None => Binding::NoUser,
            Some(_) if !user_bound => Binding::AnyUser,
            Some(u) => Binding::User(u.to_string()),
        }
    }

    pub fn admits(&self, user: Option<&str>) -> bool {
        match (self, user) {
            (Binding::NoUser, None) | (Binding::AnyUser, Some(_)) => true,
            (Binding::User(u), Some(x)) => u == x,
            _ => false,
        }
    }
}

/// One cached verdict as stored in shared data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub fresh_until_ms: u64,
    pub stale_until_ms: u64,
    /// `Valid`, or `Refused(Revoked)` once the revocation feed has marked it.
    pub verdict: Verdict,
    /// For a valid verdict: the users it holds for.
    pub binding: Binding,
    /// For a revoked mark: when keygate learned of the revocation (ms).
    pub revoked_at_ms: u64,
}

pub fn encode(e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + 200);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&e.fresh_until_ms.to_le_bytes());
    out.extend_from_slice(&e.stale_until_ms.to_le_bytes());
    match &e.verdict {
        Verdict::Valid(id) => {
            out.push(0);
            match &e.binding {
                Binding::NoUser => out.push(0),
                Binding::AnyUser => out.push(2),
                Binding::User(u) => {
                    out.push(1);
                    let n = u16::try_from(u.len()).unwrap_or(u16::MAX);
                    out.extend_from_slice(&n.to_le_bytes());
                    out.extend_from_slice(u.as_bytes().get(..usize::from(n)).unwrap_or_default());
                }
            }
            out.extend_from_slice(contract::identity_json(id).to_string().as_bytes());
        }
        Verdict::Refused(_) => {
            out.push(1);
            out.extend_from_slice(&e.revoked_at_ms.to_le_bytes());
        }
    }
    out
}

pub fn decode(b: &[u8]) -> Option<Entry> {
    if b.len() < HEADER || &b[..3] != MAGIC {
        return None;
    }
    let fresh = u64::from_le_bytes(b[3..11].try_into().ok()?);
    let stale = u64::from_le_bytes(b[11..19].try_into().ok()?);
    let rest = &b[HEADER..];
    let (verdict, binding, revoked_at_ms) = match b[19] {
        0 => {
            let (binding, json) = match rest.first()? {
                0 => (Binding::NoUser, rest.get(1..)?),
                2 => (Binding::AnyUser, rest.get(1..)?),
                1 => {
                    let n = usize::from(u16::from_le_bytes(rest.get(1..3)?.try_into().ok()?));
                    let user = std::str::from_utf8(rest.get(3..3 + n)?).ok()?;
                    (Binding::User(user.to_string()), rest.get(3 + n..)?)
                }
                _ => return None,
            };
            let verdict = contract::parse_verify(Some(200), json).ok()?.verdict;
            (verdict, binding, 0)
        }
        _ => {
            let at = rest
                .get(..8)
                .and_then(|r| r.try_into().ok())
                .map_or(0, u64::from_le_bytes);
            (Verdict::Refused(Refusal::Revoked), Binding::NoUser, at)
        }
    };
    Some(Entry {
        fresh_until_ms: fresh,
        stale_until_ms: stale,
        verdict,
        binding,
        revoked_at_ms,
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Fresh(Verdict),
    /// Past its freshness: re-verify, and serve this only if the service fails.
    Stale(Verdict),
    Miss,
}

/// Per-worker memo of decoded entries, keyed by credential id and validated by the shared-data
/// CAS token: a hit costs at most one shared-data read and no JSON parsing. Any write to the
/// entry (refresh, revocation) changes the token and so invalidates the memo.
///
/// Within `recheck_ms` of its last read, an entry is used without reading shared data at all:
/// a read that returns data is the costliest host call keygate makes (the host calls back into
/// the VM to allocate; tests/bench/RESULTS.md, "What single calls cost"). The price is that a revocation marked by
/// another worker is seen up to `recheck_ms` later; the worker that marks it forgets its memo
/// at once ([`Memo::forget`]).
#[derive(Default)]
pub struct Memo {
    map: HashMap<Digest32, Memoed>,
}

struct Memoed {
    cas: u32,
    entry: Entry,
    read_ms: u64,
}

const MEMO_MAX: usize = 4096;

impl Memo {
    /// `key` builds the entry's shared-data key (only when shared data is read); `id` is the
    /// secret's id (no user), `user` the Basic user presented: a valid verdict given for another
    /// user is a miss (a revoked mark holds for every user).
    pub fn lookup(
        &mut self,
        store: &dyn SharedStore,
        key: impl FnOnce() -> String,
        id: &Digest32,
        user: Option<&str>,
        now_ms: u64,
        recheck_ms: u64,
    ) -> Lookup {
        let entry = match self.map.get(id) {
            Some(m) if now_ms >= m.read_ms && now_ms - m.read_ms < recheck_ms => m.entry.clone(),
            _ => match self.read(store, &key(), id, now_ms) {
                Some(e) => e,
                None => return Lookup::Miss,
            },
        };
        if matches!(entry.verdict, Verdict::Valid(_)) && !entry.binding.admits(user) {
            return Lookup::Miss;
        }
        let verdict = entry.verdict.at(now_ms / 1000);
        if now_ms < entry.fresh_until_ms {
            Lookup::Fresh(verdict)
        } else if now_ms < entry.stale_until_ms {
            Lookup::Stale(verdict)
        } else {
            Lookup::Miss
        }
    }

    /// Reads the entry from shared data; decodes it only when its CAS token changed.
    fn read(
        &mut self,
        store: &dyn SharedStore,
        key: &str,
        id: &Digest32,
        now_ms: u64,
    ) -> Option<Entry> {
        let Some((bytes, cas)) = store.get(key) else {
            self.map.remove(id);
            return None;
        };
        if let Some(m) = self.map.get_mut(id).filter(|m| m.cas == cas) {
            m.read_ms = now_ms;
            return Some(m.entry.clone());
        }
        let Some(entry) = decode(&bytes) else {
            self.map.remove(id);
            return None;
        };
        if self.map.len() >= MEMO_MAX {
            self.map.clear();
        }
        let m = Memoed {
            cas,
            entry: entry.clone(),
            read_ms: now_ms,
        };
        self.map.insert(*id, m);
        Some(entry)
    }

    /// Drops what this worker remembers of `id` (it just wrote or revoked the entry).
    pub fn forget(&mut self, id: &Digest32) {
        self.map.remove(id);
    }
}

/// What became of a valid answer offered to the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    Written,
    /// The secret was revoked after the call that brought the answer started: the answer lost,
    /// and the request it was for must be refused as revoked.
    Revoked,
    Failed,
}

/// A positive verdict offered to the cache: the identity, whom it holds for, the service's TTL
/// hint, and when the call that brought it started.
pub struct Offer<'a> {
    pub identity: &'a Rc<Identity>,
    pub binding: Binding,
    pub ttl_hint_s: Option<u64>,
    pub started_ms: u64,
}

/// Stores a positive verdict brought by a call started at `offer.started_ms`, unless a
/// revocation marked since then is in the way (CAS: a mark written between the read and the
/// write makes the write mismatch and the mark is seen on the retry).
pub fn store_valid(
    store: &dyn SharedStore,
    key: &str,
    offer: Offer<'_>,
    policy: &CachePolicy,
    now_ms: u64,
) -> Stored {
    let Offer {
        identity: id,
        binding,
        ttl_hint_s,
        started_ms,
    } = offer;
    let mut ttl = policy.positive_ttl_ms;
    if let Some(h) = ttl_hint_s {
        ttl = ttl.min(h.saturating_mul(1000));
    }
    let mut fresh = now_ms.saturating_add(ttl);
    let mut stale = fresh.saturating_add(policy.stale_ms);
    if let Some(exp) = id.expires_at {
        let exp_ms = exp.saturating_mul(1000);
        fresh = fresh.min(exp_ms);
        stale = stale.min(exp_ms);
    }
    let e = encode(&Entry {
        fresh_until_ms: fresh,
        stale_until_ms: stale,
        verdict: Verdict::Valid(id.clone()),
        binding,
        revoked_at_ms: 0,
    });
    for _ in 0..4 {
        let cas = match store.get(key) {
            None => crate::store::ABSENT_CAS,
            Some((bytes, cas)) => {
                if let Some(old) = decode(&bytes) {
                    if old.verdict == Verdict::Refused(Refusal::Revoked)
                        && old.revoked_at_ms >= started_ms
                        && now_ms < old.stale_until_ms
                    {
                        return Stored::Revoked;
                    }
                }
                cas
            }
        };
        match store.set(key, &e, cas) {
            SetOutcome::Written => return Stored::Written,
            SetOutcome::CasMismatch => continue,
            SetOutcome::Failed => return Stored::Failed,
        }
    }
    Stored::Failed
}

/// Marks the secret revoked as of `now_ms`, over its entry or as a new one (the feed names real
/// keys, not attacker input). Returns whether a valid entry was overwritten.
pub fn mark_revoked(store: &dyn SharedStore, key: &str, policy: &CachePolicy, now_ms: u64) -> bool {
    // outlives any answer still on its way (a call lasts at most the key-service timeout, far
    // below the TTLs), and any valid entry it replaces
    let until = now_ms.saturating_add(policy.positive_ttl_ms.max(policy.stale_ms).max(60_000));
    let e = encode(&Entry {
        fresh_until_ms: until,
        stale_until_ms: until,
        verdict: Verdict::Refused(Refusal::Revoked),
        binding: Binding::NoUser,
        revoked_at_ms: now_ms,
    });
    for _ in 0..4 {
        let (was_valid, cas) = match store.get(key) {
            None => (false, crate::store::ABSENT_CAS),
            Some((bytes, cas)) => (
                decode(&bytes).is_some_and(|e| matches!(e.verdict, Verdict::Valid(_))),
                cas,
            ),
        };
        match store.set(key, &e, cas) {
            SetOutcome::Written => return was_valid,
            SetOutcome::CasMismatch => continue,
            SetOutcome::Failed => return false,
        }
    }
    false
}

/// Applies a page of the revocation feed (`(sha256(secret), user)` items) to this worker and to
/// shared data: the worker forgets what it remembers of each secret and refuses it (per
/// credential: the secret alone, and with the Basic user the feed names) until the negative TTL
/// runs out; the shared entry is marked revoked for every worker. Returns how many valid cached
/// verdicts were overwritten.
pub fn apply_revocations(
    store: &dyn SharedStore,
    prefix: &str,
    policy: &CachePolicy,
    revoked: &[(Digest32, Option<String>)],
    memo: &mut Memo,
    negative: &mut NegativeCache,
    now_ms: u64,
) -> usize {
    let mut marked = 0;
    for (hash, user) in revoked {
        // one shared entry per secret, whatever the user; this worker's refusals are per
        // credential
        let entry = credential_id_from_hash(None, hash);
        memo.forget(&entry);
        let until = now_ms.saturating_add(policy.negative_ttl_ms);
        negative.insert(entry, Refusal::Revoked, until, now_ms);
        if let Some(u) = user.as_deref().filter(|u| !u.is_empty()) {
            negative.insert(
                credential_id_from_hash(Some(u), hash),
                Refusal::Revoked,
                until,
                now_ms,
            );
        }
        if mark_revoked(store, &entry_key(prefix, &entry), policy, now_ms) {
            marked += 1;
        }
    }
    marked
}

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

#[cfg(test)]
mod tests;
