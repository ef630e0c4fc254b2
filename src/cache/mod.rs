//! Verdict caching. Policy, in one place:
//!
//! - **Positive verdicts** live in Envoy shared data (every worker benefits), in the verdict
//!   table (`slots`) under the secret's SHA-256 *without* the Basic user (the digest a
//!   revocation feed names): neither key nor value holds the secret. The entry records which users it was given for
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

use std::cell::Cell;
use std::rc::Rc;

mod memo;
pub use memo::Memo;

use crate::contract;
use crate::hash::{credential_id_from_hash, Digest32};
use crate::ratelimit::Limit;
use crate::slots::{self, Class, Placed, Spot, Table};
use crate::store::{SetOutcome, SharedStore};
use crate::verdict::{Identity, Refusal, Verdict};

mod negative;
pub use negative::NegativeCache;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachePolicy {
    pub positive_ttl_ms: u64,
    pub negative_ttl_ms: u64,
    pub stale_ms: u64,
    pub negative_entries: usize,
    /// How often a worker reads the revocation log (`memo`): a revocation marked by another
    /// worker is seen within this time. 0: no memo, every lookup reads shared data.
    pub recheck_ms: u64,
    /// Verdicts a worker memoizes (`memo`).
    pub memo_entries: usize,
    /// How long a revocation mark may not be evicted: longer than any key-service call that
    /// started before it can take to answer (`key_service.timeout_ms` and a margin).
    pub hold_ms: u64,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            positive_ttl_ms: 300_000,
            negative_ttl_ms: 30_000,
            stale_ms: 600_000,
            negative_entries: 10_000,
            recheck_ms: 250,
            memo_entries: memo::DEFAULT_ENTRIES,
            hold_ms: 500 + HOLD_MARGIN_MS,
        }
    }
}

/// What is added to `key_service.timeout_ms` to hold a revocation mark: worker clocks, a
/// callback that runs late, an answer Envoy delivers after its timer.
pub const HOLD_MARGIN_MS: u64 = 10_000;

/// A cached verdict larger than this is not cached (served, and asked again next time): the
/// verdict table's footprint is its slots times this at most.
pub const MAX_ENTRY_BYTES: usize = 1024;

/// Where a secret's verdict lives: its set in the verdict table (`slots`), its tag there.
#[derive(Clone)]
pub struct Slot<'a> {
    pub table: &'a Table,
    pub spot: Spot,
}

/// The slot of the secret whose id (without a Basic user) is `id`.
pub fn entry_key<'a>(table: &'a Table, id: &Digest32) -> Slot<'a> {
    Slot {
        table,
        spot: table.spot(id),
    }
}

/// The shared-data key `{prefix}:v:{name}` beside `table`'s sets: the revocation floor (see
/// [`mark_revoked`]) and the revocation log (`memo`).
fn side_key(table: &Table, name: &str) -> String {
    let mut k = table.spot(b"").key;
    while k.ends_with(|c: char| c.is_ascii_digit()) {
        k.pop();
    }
    k.push(':');
    k.push_str(name);
    k
}

fn floor_key(table: &Table) -> String {
    side_key(table, "floor")
}

/// The floor entry: the newest revocation whose mark was evicted while held (ms; 0: none), and
/// the longest hold any configuration of the prefix registered ([`register_hold`]; 0: none).
fn read_floor(store: &dyn SharedStore, table: &Table) -> (u64, u64) {
    store
        .get(&floor_key(table))
        .map_or((0, 0), |(v, _)| floor_of(&v))
}

fn floor_of(v: &[u8]) -> (u64, u64) {
    let at = |i: usize| {
        v.get(i..i + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    (at(0), at(8))
}

/// Raises the revocation floor to `at` and the registered hold to `hold` (never lowers either).
/// Whether the entry holds at least both now.
fn raise_floor(store: &dyn SharedStore, table: &Table, at: u64, hold: u64) -> bool {
    let key = floor_key(table);
    for _ in 0..8 {
        let ((cur, cur_hold), cas) = match store.get(&key) {
            None => ((0, 0), crate::store::ABSENT_CAS),
            Some((v, cas)) => (floor_of(&v), cas),
        };
        if cur >= at && cur_hold >= hold {
            return true;
        }
        let mut v = cur.max(at).to_le_bytes().to_vec();
        v.extend_from_slice(&cur_hold.max(hold).to_le_bytes());
        match store.set(&key, &v, cas) {
            SetOutcome::Written => return true,
            SetOutcome::CasMismatch => continue,
            SetOutcome::Failed => return false,
        }
    }
    false
}

/// Registers a configuration's hold (`CachePolicy::hold_ms`) for the prefix: every worker holds
/// a mark for the longest hold registered, so a configuration with a short key-service timeout
/// never evicts a mark an answer under a longer one (an LDS update in progress) may still need.
pub fn register_hold(store: &dyn SharedStore, table: &Table, hold_ms: u64) -> bool {
    raise_floor(store, table, 0, hold_ms)
}

/// How the verdict table's rule sees an entry when room is needed at `now_ms`: a dead one (or
/// foreign bytes) is free; a valid verdict may go (a miss), the soonest to expire first; a
/// revocation mark is kept while held (`hold_ms` after keygate learned of it: an answer to a
/// call that started before it may still come), then may go like a verdict.
fn class(b: &[u8], now_ms: u64, hold_ms: u64) -> Class {
    // the header alone (no identity parsed): this runs for every way of a set on each write
    let Some((stale_until, revoked_at)) = peek(b) else {
        return Class::Free;
    };
    match revoked_at {
        _ if now_ms >= stale_until => Class::Free,
        Some(at) if now_ms < at.saturating_add(hold_ms) => Class::Keep,
        _ => Class::Evictable(stale_until),
    }
}

/// An encoded entry's `stale_until_ms` and, for a revocation mark, its `revoked_at_ms`
/// (`None`: not an entry).
fn peek(b: &[u8]) -> Option<(u64, Option<u64>)> {
    if b.len() < HEADER || &b[..3] != MAGIC {
        return None;
    }
    let stale = u64::from_le_bytes(b.get(11..19)?.try_into().ok()?);
    let at = match b[19] {
        0 => None,
        _ => Some(
            b.get(HEADER..HEADER + 8)
                .and_then(|r| r.try_into().ok())
                .map_or(0, u64::from_le_bytes),
        ),
    };
    Some((stale, at))
}

fn count(c: &Cell<u64>) {
    c.set(c.get().saturating_add(1));
}

const MAGIC: &[u8; 3] = b"KG2";
const HEADER: usize = 3 + 8 + 8 + 1;

/// In a valid entry's binding byte: the identity follows in the binary form below, not as the
/// contract's JSON (read by builds that wrote JSON before; a build that knows only JSON finds an
/// unknown binding, a miss). Decoding JSON was most of a cached request's cost when many keys are
/// active: a key read from shared data is decoded afresh.
const BINARY: u8 = 0x10;

/// The binary form of an identity: strings as a `u16` length and UTF-8, lists as a `u16` count
/// and their items, `expires_at` and the per-key limit as a presence byte and `u64`s. `None`
/// when a length does not fit (the caller writes JSON instead).
fn put_identity(out: &mut Vec<u8>, id: &Identity) -> Option<()> {
    fn n(out: &mut Vec<u8>, len: usize) -> Option<()> {
        out.extend_from_slice(&u16::try_from(len).ok()?.to_le_bytes());
        Some(())
    }
    fn s(out: &mut Vec<u8>, v: &str) -> Option<()> {
        n(out, v.len())?;
        out.extend_from_slice(v.as_bytes());
        Some(())
    }
    fn list(out: &mut Vec<u8>, v: &[String]) -> Option<()> {
        n(out, v.len())?;
        v.iter().try_for_each(|x| s(out, x))
    }
    s(out, &id.key_id)?;
    s(out, &id.subject)?;
    s(out, &id.account)?;
    s(out, &id.plan)?;
    list(out, &id.scopes)?;
    match id.expires_at {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            out.extend_from_slice(&t.to_le_bytes());
        }
    }
    match id.rate_limit {
        None => out.push(0),
        Some(l) => {
            out.push(1);
            for x in [l.requests, l.window_s, l.burst] {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
    n(out, id.resources.len())?;
    for (name, v) in &id.resources {
        s(out, name)?;
        list(out, v)?;
    }
    Some(())
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, k: usize) -> Option<&[u8]> {
        let (a, b) = (self.0.get(..k)?, self.0.get(k..)?);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    fn u16(&mut self) -> Option<usize> {
        Some(usize::from(u16::from_le_bytes(
            self.take(2)?.try_into().ok()?,
        )))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<String> {
        let k = self.u16()?;
        std::str::from_utf8(self.take(k)?).ok().map(str::to_string)
    }
    fn list(&mut self) -> Option<Vec<String>> {
        let k = self.u16()?;
        // each item is at least its 2-byte length: a count past the bytes left is not an entry
        if k > self.0.len() / 2 {
            return None;
        }
        (0..k).map(|_| self.str()).collect()
    }
    fn opt(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
}

fn get_identity(r: &mut Reader<'_>) -> Option<Identity> {
    let key_id = r.str()?;
    let subject = r.str()?;
    let account = r.str()?;
    let plan = r.str()?;
    let scopes = r.list()?;
    let expires_at = if r.opt()? { Some(r.u64()?) } else { None };
    let rate_limit = if r.opt()? {
        Some(Limit {
            requests: r.u64()?,
            window_s: r.u64()?,
            burst: r.u64()?,
        })
    } else {
        None
    };
    let k = r.u16()?;
    if k > r.0.len() / 4 {
        return None;
    }
    let resources = (0..k)
        .map(|_| Some((r.str()?, r.list()?)))
        .collect::<Option<Vec<_>>>()?;
    if !r.0.is_empty() {
        return None;
    }
    Some(Identity {
        key_id,
        subject,
        account,
        plan,
        scopes,
        expires_at,
        rate_limit,
        resources,
    })
}

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

/// The bytes of an entry; empty when a valid verdict's identity has a string or list too long
/// for the binary form (then it is not cached).
pub fn encode(e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + 200);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&e.fresh_until_ms.to_le_bytes());
    out.extend_from_slice(&e.stale_until_ms.to_le_bytes());
    match &e.verdict {
        Verdict::Valid(id) => {
            out.push(0);
            match &e.binding {
                Binding::NoUser => out.push(BINARY),
                Binding::AnyUser => out.push(BINARY | 2),
                Binding::User(u) => {
                    out.push(BINARY | 1);
                    let n = u16::try_from(u.len()).unwrap_or(u16::MAX);
                    out.extend_from_slice(&n.to_le_bytes());
                    out.extend_from_slice(u.as_bytes().get(..usize::from(n)).unwrap_or_default());
                }
            }
            if put_identity(&mut out, id).is_none() {
                // a length past the binary form's (never from a parsed answer, whose strings and
                // lists are far shorter): not an entry, and not cached
                out.clear();
            }
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
            let form = *rest.first()?;
            let (binding, body) = match form & !BINARY {
                0 => (Binding::NoUser, rest.get(1..)?),
                2 => (Binding::AnyUser, rest.get(1..)?),
                1 => {
                    let n = usize::from(u16::from_le_bytes(rest.get(1..3)?.try_into().ok()?));
                    let user = std::str::from_utf8(rest.get(3..3 + n)?).ok()?;
                    (Binding::User(user.to_string()), rest.get(3 + n..)?)
                }
                _ => return None,
            };
            let verdict = if form & BINARY != 0 {
                Verdict::Valid(Rc::new(get_identity(&mut Reader(body))?))
            } else {
                contract::parse_verify(Some(200), body).ok()?.verdict
            };
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

/// What became of a valid answer offered to the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    Written,
    /// The secret was revoked after the call that brought the answer started: the answer lost,
    /// and the request it was for must be refused as revoked.
    Revoked,
    /// The call started before a revocation whose mark had to be evicted while it was held
    /// (every way of its set held a newer one): whether this secret was the one revoked cannot
    /// be told. The answer is not used; the request gets a retryable failure, never the verdict.
    Unsure,
    /// Not cached (every way of the set was to be kept, or the entry is too large); the answer
    /// stands.
    NotCached,
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

/// The entry [`store_valid`] writes for a valid verdict given at `now_ms`: fresh for the
/// positive TTL (or the service's shorter hint), then stale for `stale_ms`, never past the key's
/// expiry.
pub fn valid_entry(
    id: &Rc<Identity>,
    binding: Binding,
    ttl_hint_s: Option<u64>,
    policy: &CachePolicy,
    now_ms: u64,
) -> Entry {
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
    Entry {
        fresh_until_ms: fresh,
        stale_until_ms: stale,
        verdict: Verdict::Valid(id.clone()),
        binding,
        revoked_at_ms: 0,
    }
}

/// Stores a positive verdict brought by a call started at `offer.started_ms`, unless a
/// revocation marked since then is in the way (CAS on the whole set: a mark written between the
/// read and the write makes the write mismatch and the mark is seen on the retry), or a
/// revocation learned since then had its mark evicted (the floor: [`Stored::Unsure`]).
pub fn store_valid(
    store: &dyn SharedStore,
    slot: &Slot<'_>,
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
    // the clock went back while the call was on its way: a mark's time cannot be ordered with
    // the call's start, so any live mark wins and any evicted one makes the answer unsure. A
    // step back shorter than the call is not seen so: a mark wins over a call that started up
    // to `hold_ms` (longer than any call) after it by the clock (the service refuses a revoked
    // key anyway; this only keeps a late answer from being cached over the mark)
    let started_ms = if now_ms < started_ms { 0 } else { started_ms };
    let e = encode(&valid_entry(id, binding, ttl_hint_s, policy, now_ms));
    let Slot { table, spot } = slot;
    let mut out = Vec::new();
    for _ in 0..4 {
        let (set, cas) = match store.get(&spot.key) {
            None => (None, crate::store::ABSENT_CAS),
            Some((bytes, cas)) => (Some(bytes), cas),
        };
        if let Some(old) = slots::find(set.as_deref(), spot.tag).and_then(decode) {
            if old.verdict == Verdict::Refused(Refusal::Revoked)
                && old.revoked_at_ms.saturating_add(policy.hold_ms) >= started_ms
                && now_ms < old.stale_until_ms
            {
                return Stored::Revoked;
            }
        }
        // read after the set: a mark evicted before this read raised the floor first
        let (floor, hold) = read_floor(store, table);
        if floor != 0 && floor >= started_ms {
            return Stored::Unsure;
        }
        let hold = hold.max(policy.hold_ms);
        if e.is_empty() || e.len() > MAX_ENTRY_BYTES {
            return Stored::NotCached;
        }
        let placed = slots::place(
            set.as_deref(),
            table.geometry().ways,
            spot.tag,
            &e,
            |b| class(b, now_ms, hold),
            &mut out,
        );
        match placed {
            Err(slots::Full) => {
                count(&table.counts.full);
                return Stored::NotCached;
            }
            Ok(p) => match store.set(&spot.key, &out, cas) {
                SetOutcome::Written => {
                    if p == Placed::Evicted {
                        count(&table.counts.evicted);
                    }
                    return Stored::Written;
                }
                SetOutcome::CasMismatch => continue,
                SetOutcome::Failed => return Stored::Failed,
            },
        }
    }
    Stored::Failed
}

/// Marks the secret revoked as of `now_ms`, over its entry or as a new one (the feed names real
/// keys, not attacker input), and logs it for the other workers' memos. Returns whether a valid
/// entry was overwritten; `None`: the mark or its log entry could not be written (a set too busy
/// for its compare-and-swap, the store failing).
///
/// A mark is held (never evicted) for `hold_ms`: an answer to a call that started before the
/// revocation can only come within that time, and finds the mark. When every way of the set
/// holds a held mark (more revocations at once than a set has ways), the oldest is evicted all
/// the same, but first the **floor** is raised to its time: from then on any valid answer to a
/// call that started before the floor is refused ([`Stored::Unsure`]), whichever secret it is for.
pub fn mark_revoked(
    store: &dyn SharedStore,
    slot: &Slot<'_>,
    policy: &CachePolicy,
    now_ms: u64,
) -> Option<bool> {
    // held for the longest hold of the prefix's configurations; outlives that hold (an answer
    // on its way: up to 70 s) and any valid entry it replaces
    let hold = read_floor(store, slot.table).1.max(policy.hold_ms);
    let until = now_ms.saturating_add(policy.positive_ttl_ms.max(policy.stale_ms).max(60_000));
    let until = until.max(now_ms.saturating_add(hold));
    let e = encode(&Entry {
        fresh_until_ms: until,
        stale_until_ms: until,
        verdict: Verdict::Refused(Refusal::Revoked),
        binding: Binding::NoUser,
        revoked_at_ms: now_ms,
    });
    let Slot { table, spot } = slot;
    let ways = table.geometry().ways;
    let mut out = Vec::new();
    for _ in 0..8 {
        let (set, cas) = match store.get(&spot.key) {
            None => (None, crate::store::ABSENT_CAS),
            Some((bytes, cas)) => (Some(bytes), cas),
        };
        let set = set.as_deref();
        let was_valid = slots::find(set, spot.tag)
            .and_then(decode)
            .is_some_and(|e| matches!(e.verdict, Verdict::Valid(_)));
        let mut placed = slots::place(
            set,
            ways,
            spot.tag,
            &e,
            |b| class(b, now_ms, hold),
            &mut out,
        );
        if placed.is_err() {
            // every way a held mark: the oldest goes, after the floor rises to its time
            let held = |b: &[u8]| decode(b).map_or(0, |e| e.revoked_at_ms);
            let oldest = slots::entries(set)
                .map(|(_, b)| held(b))
                .min()
                .unwrap_or(now_ms);
            if !raise_floor(store, table, oldest, 0) {
                return None;
            }
            placed = slots::place(
                set,
                ways,
                spot.tag,
                &e,
                |b| Class::Evictable(held(b)),
                &mut out,
            );
        }
        let Ok(p) = placed else { return None };
        match store.set(&spot.key, &out, cas) {
            SetOutcome::Written => {
                if p == Placed::Evicted {
                    count(&table.counts.evicted);
                }
                // logged after the mark: a worker that reads the log and forgets the secret
                // reads the mark next, never the verdict it replaced
                return memo::log_revoked(store, table, &spot.tag).then_some(was_valid);
            }
            SetOutcome::CasMismatch => continue,
            SetOutcome::Failed => return None,
        }
    }
    None
}

/// Applies a page of the revocation feed (`(sha256(secret), user)` items) to this worker and to
/// shared data: the worker forgets what it remembers of each secret and refuses it (per
/// credential: the secret alone, and with the Basic user the feed names) until the negative TTL
/// runs out; the shared entry is marked revoked for every worker. Returns how many valid cached
/// verdicts were overwritten, and whether every mark (and its entry in the revocation log) was
/// written (if not, the page must be applied again: other workers may still hold a valid verdict
/// of a secret not marked).
pub fn apply_revocations(
    store: &dyn SharedStore,
    table: &Table,
    policy: &CachePolicy,
    revoked: &[(Digest32, Option<String>)],
    memo: &mut Memo,
    negative: &mut NegativeCache,
    now_ms: u64,
) -> (usize, bool) {
    let (mut marked, mut all) = (0, true);
    for (hash, user) in revoked {
        // one shared entry per secret, whatever the user; this worker's refusals are per
        // credential
        let entry = *hash;
        let slot = entry_key(table, &entry);
        memo.forget(slot.spot.tag);
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
        match mark_revoked(store, &slot, policy, now_ms) {
            Some(true) => marked += 1,
            Some(false) => {}
            None => all = false,
        }
    }
    (marked, all)
}

#[cfg(test)]
mod redteam;
#[cfg(test)]
mod tests;
