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
/// the VM to allocate; README, "What single calls cost"). The price is that a revocation marked by
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
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// A valid verdict stored by a call that started and ended at `now`.
    fn store_at(
        st: &dyn SharedStore,
        key: &str,
        identity: &Rc<Identity>,
        binding: Binding,
        ttl_hint_s: Option<u64>,
        p: &CachePolicy,
        now: u64,
    ) -> Stored {
        let offer = Offer {
            identity,
            binding,
            ttl_hint_s,
            started_ms: now,
        };
        store_valid(st, key, offer, p, now)
    }
    use crate::hash::credential_id;
    use crate::store::memory::MemoryStore;

    fn ident(expires_at: Option<u64>) -> Rc<Identity> {
        Rc::new(Identity {
            key_id: "k".into(),
            subject: "s".into(),
            account: "a".into(),
            plan: "p".into(),
            scopes: vec!["read".into()],
            expires_at,
            rate_limit: None,
            resources: vec![("agg".into(), vec!["x".into()])],
        })
    }

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn fresh_then_stale_then_miss() {
        let st = MemoryStore::default();
        let p = CachePolicy {
            positive_ttl_ms: 1000,
            stale_ms: 5000,
            ..Default::default()
        };
        let id = credential_id(None, "secret");
        let key = entry_key("kg", &id);
        assert!(!key.contains("secret"));
        store_at(&st, &key, &ident(None), Binding::NoUser, None, &p, NOW);
        let mut m = Memo::default();
        assert!(matches!(
            m.lookup(&st, || key.clone(), &id, None, NOW + 999, 0),
            Lookup::Fresh(Verdict::Valid(_))
        ));
        assert!(matches!(
            m.lookup(&st, || key.clone(), &id, None, NOW + 1000, 0),
            Lookup::Stale(Verdict::Valid(_))
        ));
        assert_eq!(
            m.lookup(&st, || key.clone(), &id, None, NOW + 6000, 0),
            Lookup::Miss
        );
    }

    #[test]
    fn hint_and_key_expiry_shorten_the_ttl() {
        let st = MemoryStore::default();
        let p = CachePolicy::default();
        let id = credential_id(None, "s");
        let key = entry_key("kg", &id);
        store_at(&st, &key, &ident(None), Binding::NoUser, Some(2), &p, NOW);
        let mut m = Memo::default();
        assert!(matches!(
            m.lookup(&st, || key.clone(), &id, None, NOW + 2000, 0),
            Lookup::Stale(_)
        ));
        // the key expires in 1.5 s: fresh never outlives it, and stale never serves past it
        store_at(
            &st,
            &key,
            &ident(Some(NOW / 1000 + 1)),
            Binding::NoUser,
            None,
            &p,
            NOW + 500,
        );
        assert!(matches!(
            m.lookup(&st, || key.clone(), &id, None, NOW + 900, 0),
            Lookup::Fresh(Verdict::Valid(_))
        ));
        assert_eq!(
            m.lookup(&st, || key.clone(), &id, None, NOW + 1000, 0),
            Lookup::Miss
        );
    }

    #[test]
    fn revocation_marks_the_secret_for_every_user_and_invalidates_memos() {
        let st = MemoryStore::default();
        let p = CachePolicy::default();
        let id = credential_id(None, "s");
        let key = entry_key("kg", &id);
        let bound = Binding::User("alice".into());
        store_at(&st, &key, &ident(None), bound, None, &p, NOW);
        let mut m = Memo::default();
        assert!(matches!(
            m.lookup(&st, || key.clone(), &id, Some("alice"), NOW, 0),
            Lookup::Fresh(Verdict::Valid(_))
        ));
        assert_eq!(
            m.lookup(&st, || key.clone(), &id, Some("mallory"), NOW, 0),
            Lookup::Miss
        );
        assert_eq!(
            m.lookup(&st, || key.clone(), &id, None, NOW, 0),
            Lookup::Miss
        );
        assert!(mark_revoked(&st, &key, &p, NOW));
        for user in [Some("alice"), Some("bob"), None] {
            assert_eq!(
                m.lookup(&st, || key.clone(), &id, user, NOW + 1, 0),
                Lookup::Fresh(Verdict::Refused(Refusal::Revoked))
            );
        }
        // a mark for a secret nothing cached yet is written too (an answer may be on its way)
        let other = entry_key("kg", &credential_id(None, "t"));
        assert!(!mark_revoked(&st, &other, &p, NOW));
        assert!(st.map.borrow().contains_key(&other));
    }

    #[test]
    fn an_answer_older_than_a_revocation_never_wins() {
        let st = MemoryStore::default();
        let p = CachePolicy::default();
        let id = credential_id(None, "s");
        let key = entry_key("kg", &id);
        let valid = |started: u64, now: u64| {
            store_valid(
                &st,
                &key,
                Offer {
                    identity: &ident(None),
                    binding: Binding::NoUser,
                    ttl_hint_s: None,
                    started_ms: started,
                },
                &p,
                now,
            )
        };
        // the call started at NOW, the revocation was learned at NOW + 100, the answer came at
        // NOW + 300: it loses, and the mark stays
        mark_revoked(&st, &key, &p, NOW + 100);
        assert_eq!(valid(NOW, NOW + 300), Stored::Revoked);
        assert_eq!(valid(NOW + 100, NOW + 300), Stored::Revoked);
        let mut m = Memo::default();
        assert_eq!(
            m.lookup(&st, || key.clone(), &id, None, NOW + 301, 0),
            Lookup::Fresh(Verdict::Refused(Refusal::Revoked))
        );
        // a call started after the revocation was known brings a newer verdict
        assert_eq!(valid(NOW + 101, NOW + 400), Stored::Written);
        assert!(matches!(
            m.lookup(&st, || key.clone(), &id, None, NOW + 401, 0),
            Lookup::Fresh(Verdict::Valid(_))
        ));
    }

    proptest::proptest! {
        /// Whatever Basic users clients send and whatever the service binds, one secret has
        /// one shared-data entry.
        #[test]
        fn one_entry_per_secret_whatever_the_users(users in proptest::collection::vec(
            (proptest::option::of("[a-z]{1,8}"), proptest::bool::ANY), 1..40)) {
            let st = MemoryStore::default();
            let p = CachePolicy::default();
            let key = entry_key("kg", &credential_id(None, "s"));
            for (i, (user, bound)) in users.iter().enumerate() {
                let b = Binding::of(user.as_deref(), *bound);
                let t = NOW + i as u64;
                store_at(&st, &key, &ident(None), b, None, &p, t);
            }
            proptest::prop_assert_eq!(st.map.borrow().len(), 1);
        }
    }

    #[test]
    fn recent_reads_are_trusted_for_recheck_ms_only() {
        let st = MemoryStore::default();
        let p = CachePolicy::default();
        let id = credential_id(None, "s");
        let key = entry_key("kg", &id);
        store_at(&st, &key, &ident(None), Binding::NoUser, None, &p, NOW);
        let mut m = Memo::default();
        let fresh = |l: Lookup| matches!(l, Lookup::Fresh(Verdict::Valid(_)));
        assert!(fresh(m.lookup(&st, || key.clone(), &id, None, NOW, 250)));
        let reads = st.gets.get();
        assert!(fresh(m.lookup(
            &st,
            || key.clone(),
            &id,
            None,
            NOW + 249,
            250
        )));
        assert_eq!(st.gets.get(), reads, "a recent read is not repeated");
        // another worker revokes: seen once the window has passed
        assert!(mark_revoked(&st, &key, &p, NOW + 100));
        assert!(fresh(m.lookup(
            &st,
            || key.clone(),
            &id,
            None,
            NOW + 200,
            250
        )));
        assert_eq!(
            m.lookup(&st, || key.clone(), &id, None, NOW + 250, 250),
            Lookup::Fresh(Verdict::Refused(Refusal::Revoked))
        );
        // the worker that revokes forgets at once; a clock going back never extends trust
        store_at(
            &st,
            &key,
            &ident(None),
            Binding::NoUser,
            None,
            &p,
            NOW + 300,
        );
        m.forget(&id); // as the host does after writing an entry
        assert!(fresh(m.lookup(
            &st,
            || key.clone(),
            &id,
            None,
            NOW + 300,
            250
        )));
        assert!(mark_revoked(&st, &key, &p, NOW + 301));
        m.forget(&id);
        assert!(!fresh(m.lookup(
            &st,
            || key.clone(),
            &id,
            None,
            NOW + 302,
            250
        )));
        store_at(
            &st,
            &key,
            &ident(None),
            Binding::NoUser,
            None,
            &p,
            NOW + 400,
        );
        m.forget(&id);
        assert!(fresh(m.lookup(
            &st,
            || key.clone(),
            &id,
            None,
            NOW + 400,
            250
        )));
        assert!(mark_revoked(&st, &key, &p, NOW + 401));
        assert!(!fresh(m.lookup(
            &st,
            || key.clone(),
            &id,
            None,
            NOW + 10,
            250
        )));
    }

    #[test]
    fn entries_round_trip_and_garbage_is_a_miss() {
        let e = Entry {
            fresh_until_ms: 5,
            stale_until_ms: 9,
            verdict: Verdict::Valid(ident(Some(7))),
            binding: Binding::User("al:ice".into()),
            revoked_at_ms: 0,
        };
        assert_eq!(decode(&encode(&e)), Some(e));
        let e = Entry {
            fresh_until_ms: 5,
            stale_until_ms: 9,
            verdict: Verdict::Refused(Refusal::Revoked),
            binding: Binding::NoUser,
            revoked_at_ms: 77,
        };
        assert_eq!(decode(&encode(&e)), Some(e));
        assert_eq!(decode(b"KG1short"), None);
        assert_eq!(decode(b"junk junk junk junk junk"), None);
    }

    #[test]
    fn negative_cache_is_bounded() {
        let mut n = NegativeCache::new(100);
        for i in 0..10_000u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            n.insert(id, Refusal::Unknown, NOW + 1000, NOW);
            assert!(n.len() <= 100);
        }
        let mut last = [0u8; 32];
        last[..4].copy_from_slice(&9999u32.to_le_bytes());
        assert_eq!(n.get(&last, NOW), Some(Refusal::Unknown));
        assert_eq!(n.get(&last, NOW + 1000), None);
    }
    #[test]
    fn the_feed_revokes_a_secret_for_every_worker_and_each_of_its_credentials() {
        let st = MemoryStore::default();
        let p = CachePolicy::default();
        let id = credential_id(None, "s");
        let key = entry_key("kg", &id);
        store_at(&st, &key, &ident(None), Binding::NoUser, None, &p, NOW);
        let (mut memo, mut neg) = (Memo::default(), NegativeCache::new(16));
        // this worker remembers the valid verdict (it would not read shared data for 250 ms)
        assert!(matches!(
            memo.lookup(&st, || key.clone(), &id, None, NOW, 250),
            Lookup::Fresh(Verdict::Valid(_))
        ));
        let feed = [
            (crate::hash::sha256(b"s"), Some("alice".to_string())),
            (crate::hash::sha256(b"never-cached"), None),
        ];
        let marked = apply_revocations(&st, "kg", &p, &feed, &mut memo, &mut neg, NOW + 1);
        assert_eq!(
            marked, 1,
            "one valid verdict overwritten; the other secret gets a mark"
        );
        // every worker: the shared entry now says revoked
        assert_eq!(
            Memo::default().lookup(&st, || key.clone(), &id, None, NOW + 2, 250),
            Lookup::Fresh(Verdict::Refused(Refusal::Revoked))
        );
        // this worker forgot what it remembered, at once
        assert_eq!(
            memo.lookup(&st, || key.clone(), &id, None, NOW + 2, 250),
            Lookup::Fresh(Verdict::Refused(Refusal::Revoked))
        );
        // and refuses the secret alone and with the user the feed named, until the negative TTL
        let with_user = credential_id(Some("alice"), "s");
        for c in [id, with_user] {
            assert_eq!(neg.get(&c, NOW + 2), Some(Refusal::Revoked));
            assert_eq!(neg.get(&c, NOW + 1 + p.negative_ttl_ms), None);
        }
        // a verdict whose call started before the revocation never overwrites it
        let late = Offer {
            identity: &ident(None),
            binding: Binding::NoUser,
            ttl_hint_s: None,
            started_ms: NOW,
        };
        assert_eq!(store_valid(&st, &key, late, &p, NOW + 3), Stored::Revoked);
        // applied twice (a page read again), nothing new is overwritten
        assert_eq!(
            apply_revocations(&st, "kg", &p, &feed, &mut memo, &mut neg, NOW + 4),
            0
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod secrets_tests {
    use crate::config;
    use crate::gate::{decide, Gate};
    use crate::store::memory::MemoryStore;

    /// Everything the gate writes to shared data for a known key presented through every
    /// carrier (rate-limit buckets keyed by key id, subject and account) holds no byte run of the
    /// secret. (Cache entries and revocation marks are keyed by a `Digest32` and hold an
    /// `Identity` and the Basic user: the types keep the secret out; an earlier half of this test
    /// fed them digests and could not fail.)
    #[test]
    fn shared_data_never_holds_a_secret() {
        let secret = "sk_live_THE-SECRET-VALUE-0001";
        let cfg = format!(
            r#"{{"keys":[{{"id":"k1","sha256":"{}","user":"alice","account":"acme","plan":"p"}}],
                "rate_limit":{{"plans":{{"p":{{"requests":2,"window_s":60,"per":"account"}}}}}}}}"#,
            crate::hash::to_hex(&crate::hash::sha256(secret.as_bytes()))
        );
        let g = Gate::new(config::parse(cfg.as_bytes(), &mut Vec::new()).unwrap());
        let st = MemoryStore::default();
        let now = 1_800_000_000_000_000u64;
        let basic = format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("alice:{secret}")
            )
        );
        let path = format!("/x?_apikey={secret}");
        for h in [
            vec![(":path", path.as_bytes()), ("x-api-key", b"x" as &[u8])],
            vec![(":path", b"/x" as &[u8]), ("x-api-key", secret.as_bytes())],
            vec![
                (":path", b"/x" as &[u8]),
                ("authorization", basic.as_bytes()),
            ],
            vec![(":path", path.as_bytes())],
            vec![(":path", path.as_bytes())],
        ] {
            decide(&g, &h, &st, now);
        }
        let map = st.map.borrow();
        assert!(!map.is_empty(), "the gate wrote nothing");
        let needle = &secret.as_bytes()[8..20];
        for (k, (v, _)) in map.iter() {
            assert!(
                !k.as_bytes().windows(needle.len()).any(|w| w == needle),
                "key {k}"
            );
            assert!(
                !v.windows(needle.len()).any(|w| w == needle),
                "value of {k}"
            );
        }
    }
}
