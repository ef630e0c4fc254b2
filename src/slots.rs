//! Fixed-capacity tables in Envoy shared data, so memory is what the operator sets, never the
//! number of keys or owners ever seen (shared data has no delete).
//!
//! A table is `sets` shared-data values (`{prefix}:{table letter}{set}`), each holding at most
//! `ways` entries. An entry is named by a **tag**, a 128-bit keyed hash of the name it used to be
//! stored under (a verdict's credential id, a count's `state_key` name), and the same hash picks
//! its set. The hash is keyed by a per-process secret (the **seed**, drawn at random by the
//! first VM that configures a prefix and kept in shared data for the others), so a client cannot
//! choose keys, accounts or subjects that land in one set. A different tag in the set is a
//! different entry: a name never reads another's value (a 2^-128 chance per pair).
//!
//! A set is one value written whole with compare-and-swap, so placing an entry is atomic: two
//! workers can never put one name in two ways. Layout of a set value: `kgS1`, then per entry
//! the tag (16 bytes, little-endian), the length (u32) and the bytes.
//!
//! **Eviction** is each table's rule, given as a [`Class`] per entry: an entry that means
//! nothing any more ([`Class::Free`]: an expired verdict, a full token bucket, an empty window)
//! is taken first; then an entry whose loss only costs a miss ([`Class::Evictable`], lowest rank
//! first: a valid verdict); an entry whose loss would change a decision ([`Class::Keep`]: a
//! bucket still counting, a fresh revocation) is never taken, and a new entry that finds only
//! such entries is refused ([`Full`]), never stored by forgetting one. See `cache` and
//! `limiter` for the rules of each table.
//!
//! The geometry (sets, ways) and the seed are fixed per prefix for the life of the Envoy
//! process: the first configuration writes them to `{prefix}:slots`, later ones read them. A
//! configuration that asks for another geometry logs it and uses the stored one (two geometries
//! at once would count one owner in two places).

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use crate::store::{SetOutcome, SharedStore, ABSENT_CAS};

const SET_TAG: &[u8; 4] = b"kgS1";
const ENTRY_HEAD: usize = 16 + 4;

/// What a table is asked to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub sets: u32,
    pub ways: u8,
}

impl Geometry {
    /// `slots` entries in sets of `ways` (at least one set).
    pub fn of(slots: u64, ways: u8) -> Geometry {
        let ways = ways.max(1);
        let sets = slots
            .div_ceil(u64::from(ways))
            .clamp(1, u64::from(u32::MAX));
        Geometry {
            sets: u32::try_from(sets).unwrap_or(u32::MAX),
            ways,
        }
    }

    pub fn slots(&self) -> u64 {
        u64::from(self.sets) * u64::from(self.ways)
    }
}

/// How a table's rule sees one entry when room is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Holds nothing that matters (as if absent): reused first.
    Free,
    /// May be dropped: its loss is a miss. Lower ranks go first.
    Evictable(u64),
    /// Must stay: dropping it could change a decision.
    Keep,
}

/// No way of the set could be taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// Counters a table keeps for the host's metrics (read and reset on a tick).
#[derive(Default, Debug)]
pub struct Counts {
    /// A live entry dropped to make room (a verdict: a miss later), or for counts, a way that
    /// held nothing any more reused by another owner.
    pub evicted: Cell<u64>,
    /// An entry that could not be stored (every way was to be kept).
    pub full: Cell<u64>,
}

impl Counts {
    pub fn take(&self) -> (u64, u64) {
        (self.evicted.replace(0), self.full.replace(0))
    }
}

/// One table: where its sets are, and the keyed hash that places names.
#[derive(Debug)]
pub struct Table {
    /// `{prefix}:{letter}`: a set's key is this and the set's number.
    stem: String,
    geometry: Geometry,
    seed: (u64, u64),
    pub counts: Counts,
}

/// Where a name lives: the key of its set and its tag.
#[derive(Clone, Debug)]
pub struct Spot {
    pub key: String,
    pub tag: u128,
}

impl Table {
    pub fn new(prefix: &str, letter: char, geometry: Geometry, seed: (u64, u64)) -> Table {
        let mut stem = String::with_capacity(prefix.len() + 2);
        stem.push_str(prefix);
        stem.push(':');
        stem.push(letter);
        Table {
            stem,
            geometry,
            seed,
            counts: Counts::default(),
        }
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The tag of `name` (two SipHash-2-4 outputs under keys derived from the seed).
    pub fn tag(&self, name: &[u8]) -> u128 {
        let half = |k0: u64, k1: u64| {
            #[allow(deprecated)]
            let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
            h.write(name);
            h.finish()
        };
        let (a, b) = self.seed;
        u128::from(half(a, b)) | u128::from(half(b ^ 0x5bd1_e995, a.rotate_left(17))) << 64
    }

    /// The set a tag lives in.
    pub fn set_of(&self, tag: u128) -> u32 {
        ((tag >> 64) as u64 % u64::from(self.geometry.sets.max(1))) as u32
    }

    /// Writes the key of `name`'s set into `key` and returns its tag.
    pub fn locate(&self, name: &[u8], key: &mut String) -> u128 {
        let tag = self.tag(name);
        key.clear();
        key.push_str(&self.stem);
        key.push_str(itoa::Buffer::new().format(self.set_of(tag)));
        tag
    }

    /// The key of the set `tag` lives in.
    pub fn key_of(&self, tag: u128) -> String {
        let mut key = String::with_capacity(self.stem.len() + 10);
        key.push_str(&self.stem);
        key.push_str(itoa::Buffer::new().format(self.set_of(tag)));
        key
    }

    pub fn spot(&self, name: &[u8]) -> Spot {
        let mut key = String::with_capacity(self.stem.len() + 10);
        let tag = self.locate(name, &mut key);
        Spot { key, tag }
    }
}

/// The entries of a set value, in order: (tag, bytes). Anything malformed ends the walk (what
/// follows is dropped by the next write).
pub fn entries(v: Option<&[u8]>) -> impl Iterator<Item = (u128, &[u8])> {
    let mut rest = match v {
        Some(v) if v.get(..4) == Some(SET_TAG) => &v[4..],
        _ => &[][..],
    };
    std::iter::from_fn(move || {
        let head = rest.get(..ENTRY_HEAD)?;
        let tag = u128::from_le_bytes(head[..16].try_into().ok()?);
        let len = u32::from_le_bytes(head[16..20].try_into().ok()?) as usize;
        let bytes = rest.get(ENTRY_HEAD..ENTRY_HEAD.checked_add(len)?)?;
        rest = &rest[ENTRY_HEAD + len..];
        Some((tag, bytes))
    })
}

/// The bytes of `tag`'s entry in a set value.
pub fn find(v: Option<&[u8]>, tag: u128) -> Option<&[u8]> {
    entries(v).find(|(t, _)| *t == tag).map(|(_, b)| b)
}

fn push_entry(out: &mut Vec<u8>, tag: u128, bytes: &[u8]) {
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// What [`place`] did to make room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed {
    /// The entry of this tag was replaced, or an empty way was used.
    Kept,
    /// Another entry's way that held nothing any more was reused.
    Reused,
    /// A live entry was dropped (counted as an eviction).
    Evicted,
}

/// The set value `v` with `tag`'s entry set to `new`: in its own way if it has one, else in a
/// free way, else in the lowest-ranked evictable way (by `class`), else [`Full`]. Writes the new
/// set value to `out`. Other entries classed free are dropped on the way (they mean nothing), so
/// a set holds what still counts and its value stays small.
pub fn place(
    v: Option<&[u8]>,
    ways: u8,
    tag: u128,
    new: &[u8],
    class: impl Fn(&[u8]) -> Class,
    out: &mut Vec<u8>,
) -> Result<Placed, Full> {
    out.clear();
    out.extend_from_slice(SET_TAG);
    let ways = usize::from(ways.max(1));
    let mut kept = 0;
    let mut own = false;
    let mut dropped_free = false;
    // the lowest-ranked evictable entry: (index, rank)
    let mut victim: Option<(usize, u64)> = None;
    // the ways (of the first 64) classed free, so the copy below need not class them again
    let mut free: u64 = 0;
    for (i, (t, b)) in entries(v).take(ways).enumerate() {
        if t == tag {
            own = true;
            continue;
        }
        match class(b) {
            Class::Free => {
                dropped_free = true;
                if i < 64 {
                    free |= 1 << i;
                }
            }
            Class::Evictable(r) => {
                if victim.is_none_or(|(_, s)| r < s) {
                    victim = Some((i, r));
                }
                kept += 1;
            }
            Class::Keep => kept += 1,
        }
    }
    let evict = if own || kept < ways {
        None
    } else {
        match victim {
            Some((i, _)) => Some(i),
            None => {
                out.clear();
                return Err(Full);
            }
        }
    };
    for (i, (t, b)) in entries(v).take(ways).enumerate() {
        let is_free = if i < 64 {
            free & (1 << i) != 0
        } else {
            class(b) == Class::Free
        };
        if t == tag || evict == Some(i) || is_free {
            continue;
        }
        push_entry(out, t, b);
    }
    push_entry(out, tag, new);
    Ok(if evict.is_some() {
        Placed::Evicted
    } else if dropped_free && !own {
        Placed::Reused
    } else {
        Placed::Kept
    })
}

/// The set value `v` without `tag`'s entry (`None`: it had none).
pub fn without(v: Option<&[u8]>, tag: u128, out: &mut Vec<u8>) -> bool {
    out.clear();
    out.extend_from_slice(SET_TAG);
    let mut found = false;
    for (t, b) in entries(v) {
        if t == tag {
            found = true;
        } else {
            push_entry(out, t, b);
        }
    }
    found
}

/// The tables of one prefix: verdicts (`cache`) and local rate-limit state (`limiter`).
#[derive(Debug)]
pub struct Tables {
    pub verdicts: Table,
    pub states: Table,
}

/// What a configuration asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub verdicts: Geometry,
    pub states: Geometry,
    /// A fixed seed (tests that build colliding names); `None`: drawn at random.
    pub seed: Option<(u64, u64)>,
}

impl Default for Wanted {
    fn default() -> Self {
        Wanted {
            verdicts: Geometry::of(DEFAULT_VERDICT_SLOTS, VERDICT_WAYS),
            states: Geometry::of(DEFAULT_STATE_SLOTS, STATE_WAYS),
            seed: None,
        }
    }
}

pub const VERDICT_WAYS: u8 = 4;
pub const STATE_WAYS: u8 = 8;
pub const DEFAULT_VERDICT_SLOTS: u64 = 32_768;
pub const DEFAULT_STATE_SLOTS: u64 = 131_072;
/// What Envoy spends per shared-data entry beyond the bytes of its key and value (the hash map's
/// slot, the two strings' heap blocks, allocator rounding), generously.
pub const ENTRY_OVERHEAD: u64 = 160;

/// The most shared data a table of `g` can hold when no entry is larger than `max_entry` bytes:
/// every set full, every way at its largest, Envoy's overhead, and an eighth for the
/// allocator's size classes.
pub fn bound_bytes(g: Geometry, max_entry: u64) -> u64 {
    let set = 4 + u64::from(g.ways) * (ENTRY_HEAD as u64 + max_entry);
    let per_set = ENTRY_OVERHEAD + 24 + set + set / 8;
    u64::from(g.sets) * per_set
}

const META_TAG: &[u8; 4] = b"kgM1";
const META_LEN: usize = 4 + 16 + 4 + 1 + 4 + 1;

fn encode_meta(w: &Wanted, seed: (u64, u64)) -> Vec<u8> {
    let mut v = Vec::with_capacity(META_LEN);
    v.extend_from_slice(META_TAG);
    v.extend_from_slice(&seed.0.to_le_bytes());
    v.extend_from_slice(&seed.1.to_le_bytes());
    v.extend_from_slice(&w.verdicts.sets.to_le_bytes());
    v.push(w.verdicts.ways);
    v.extend_from_slice(&w.states.sets.to_le_bytes());
    v.push(w.states.ways);
    v
}

fn decode_meta(v: &[u8]) -> Option<(Wanted, (u64, u64))> {
    if v.len() != META_LEN || &v[..4] != META_TAG {
        return None;
    }
    let u64_at = |i: usize| {
        v.get(i..i + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let u32_at = |i: usize| {
        v.get(i..i + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let seed = (u64_at(4)?, u64_at(12)?);
    let g = |at: usize| -> Option<Geometry> {
        Some(Geometry {
            sets: u32_at(at)?.max(1),
            ways: v.get(at + 4).copied()?.max(1),
        })
    };
    Some((
        Wanted {
            verdicts: g(20)?,
            states: g(25)?,
            seed: Some(seed),
        },
        seed,
    ))
}

/// A store that holds nothing (every read absent, every write refused): tables made with it are
/// a lone gate's own.
pub struct Unshared;

impl SharedStore for Unshared {
    fn get(&self, _: &str) -> Option<(Vec<u8>, u32)> {
        None
    }
    fn set(&self, _: &str, _: &[u8], _: u32) -> SetOutcome {
        SetOutcome::Failed
    }
}

/// A random seed (std's `RandomState` draws its keys from the platform: WASI `random_get`).
fn random_seed() -> (u64, u64) {
    let a = RandomState::new().hash_one(0x6b67_u64);
    let b = RandomState::new().hash_one(0x736c_u64);
    (a, b)
}

/// The tables of `prefix`: the geometry and seed stored for it, or `wanted` stored as the first.
/// `notes` gets a line when the stored ones differ from what was asked.
pub fn establish(
    store: &dyn SharedStore,
    prefix: &str,
    wanted: &Wanted,
    notes: &mut Vec<String>,
) -> Tables {
    let key = format!("{prefix}:slots");
    let mut chosen = None;
    for _ in 0..4 {
        let cur = store.get(&key);
        match cur.as_ref().and_then(|(v, _)| decode_meta(v)) {
            Some(stored) => {
                chosen = Some(stored);
                break;
            }
            None => {
                let seed = wanted.seed.unwrap_or_else(random_seed);
                // absent: insert only; bytes this build cannot read (another format, a value
                // emptied): replaced under their token. Either way a racing VM's first write
                // wins and is read on the retry, so every VM of the prefix keeps one seed
                let cas = cur.map_or(ABSENT_CAS, |(_, cas)| cas);
                if store.set(&key, &encode_meta(wanted, seed), cas) == SetOutcome::Written {
                    chosen = Some((*wanted, seed));
                    break;
                }
            }
        }
    }
    // the store failing: this VM's own choice (a lone VM is still bounded)
    let (got, seed) = chosen.unwrap_or_else(|| (*wanted, wanted.seed.unwrap_or_else(random_seed)));
    if got.verdicts != wanted.verdicts || got.states != wanted.states {
        notes.push(format!(
            "keygate: shared-data tables of prefix `{prefix}` keep the capacity they were created with ({} verdict slots, {} state slots); a new capacity takes effect when Envoy restarts",
            got.verdicts.slots(),
            got.states.slots()
        ));
    }
    if wanted.seed.is_some_and(|s| s != seed) {
        notes.push(format!(
            "keygate: slots.seed ignored: the prefix `{prefix}` already has its seed"
        ));
    }
    Tables {
        verdicts: Table::new(prefix, 'v', got.verdicts, seed),
        states: Table::new(prefix, 's', got.states, seed),
    }
}

/// A lone gate's own tables (tests and tools): seeded at random unless `wanted` names a seed.
pub fn own(prefix: &str, wanted: &Wanted) -> Tables {
    establish(&Unshared, prefix, wanted, &mut Vec::new())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn set_of(pairs: &[(u128, &[u8])]) -> Vec<u8> {
        let mut v = SET_TAG.to_vec();
        for (t, b) in pairs {
            push_entry(&mut v, *t, b);
        }
        v
    }

    #[test]
    fn entries_round_trip_and_malformed_ends() {
        let v = set_of(&[(1, b"a"), (2, b""), (3, b"ccc")]);
        let got: Vec<_> = entries(Some(&v)).collect();
        assert_eq!(got, vec![(1, &b"a"[..]), (2, &b""[..]), (3, &b"ccc"[..])]);
        assert_eq!(find(Some(&v), 3), Some(&b"ccc"[..]));
        assert_eq!(find(Some(&v), 4), None);
        // truncated, foreign, a length past the end
        assert_eq!(entries(Some(&v[..v.len() - 1])).count(), 2);
        assert_eq!(entries(Some(b"junk")).count(), 0);
        let mut bad = SET_TAG.to_vec();
        bad.extend_from_slice(&7u128.to_le_bytes());
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(entries(Some(&bad)).count(), 0);
    }

    #[test]
    fn place_prefers_own_then_free_then_lowest_rank_and_refuses_when_all_kept() {
        let class = |b: &[u8]| match b[0] {
            b'f' => Class::Free,
            b'k' => Class::Keep,
            r => Class::Evictable(u64::from(r)),
        };
        let mut out = Vec::new();
        // room: appended
        let v = set_of(&[(1, b"k")]);
        assert_eq!(
            place(Some(&v), 2, 9, b"n", class, &mut out),
            Ok(Placed::Kept)
        );
        assert_eq!(entries(Some(&out)).count(), 2);
        // own way replaced even when every way is kept
        let v = set_of(&[(1, b"k"), (2, b"k")]);
        assert_eq!(
            place(Some(&v), 2, 2, b"x", class, &mut out),
            Ok(Placed::Kept)
        );
        assert_eq!(find(Some(&out), 2), Some(&b"x"[..]));
        // all kept: full, nothing written
        assert_eq!(place(Some(&v), 2, 9, b"n", class, &mut out), Err(Full));
        // free before evictable
        let v = set_of(&[(1, &[3]), (2, b"f"), (3, &[1])]);
        assert_eq!(
            place(Some(&v), 3, 9, b"n", class, &mut out),
            Ok(Placed::Reused)
        );
        assert!(find(Some(&out), 2).is_none() && find(Some(&out), 1).is_some());
        // lowest rank among evictable
        let v = set_of(&[(1, &[3]), (2, b"k"), (3, &[1])]);
        assert_eq!(
            place(Some(&v), 3, 9, b"n", class, &mut out),
            Ok(Placed::Evicted)
        );
        assert!(find(Some(&out), 3).is_none() && find(Some(&out), 1).is_some());
    }

    #[test]
    fn the_default_tables_fit_64_mib_with_token_buckets() {
        let w = Wanted::default();
        let verdicts = bound_bytes(w.verdicts, crate::cache::MAX_ENTRY_BYTES as u64);
        // a count: the instant it frees, and two parameter sets at once (72 bytes)
        let states = bound_bytes(w.states, 8 + crate::limiter::PAIR_LEN as u64);
        assert!(verdicts + states <= 64 << 20, "{verdicts} + {states}");
    }

    #[test]
    fn geometry_and_seed_are_fixed_by_the_first_configuration() {
        let st = MemoryStore::default();
        let mut notes = Vec::new();
        let a = establish(&st, "kg", &Wanted::default(), &mut notes);
        assert!(notes.is_empty());
        let other = Wanted {
            verdicts: Geometry::of(1000, 4),
            states: Geometry::of(64, 8),
            seed: Some((1, 2)),
        };
        let b = establish(&st, "kg", &other, &mut notes);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert_eq!(a.verdicts.geometry(), b.verdicts.geometry());
        assert_eq!(a.states.tag(b"x"), b.states.tag(b"x"));
        // another prefix: its own
        let c = establish(&st, "other", &other, &mut notes);
        assert_eq!(c.verdicts.geometry().slots(), 1000);
        assert_eq!(c.states.seed, (1, 2));
        // the seed decides the placement: two seeds, different tags
        assert_ne!(a.states.tag(b"x"), c.states.tag(b"x"));
    }

    #[test]
    fn a_foreign_seed_entry_is_taken_over_once_and_every_vm_agrees() {
        // `{prefix}:slots` holding bytes this build cannot read (another version's format,
        // another plugin on the vm_id, a value "removed" to empty): every VM must still end up
        // with one seed, or each worker counts and marks revocations in its own tables
        for foreign in [&b"kgM0 an older layout"[..], b"", &[0u8; META_LEN][..]] {
            let st = MemoryStore::default();
            assert_eq!(st.set("kg:slots", foreign, 0), SetOutcome::Written);
            let mut notes = Vec::new();
            let vms: Vec<Tables> = (0..3)
                .map(|_| establish(&st, "kg", &Wanted::default(), &mut notes))
                .collect();
            assert!(vms
                .iter()
                .all(|t| t.states.tag(b"x") == vms[0].states.tag(b"x")));
            assert!(vms
                .iter()
                .all(|t| t.verdicts.tag(b"x") == vms[0].verdicts.tag(b"x")));
            assert!(st
                .get("kg:slots")
                .and_then(|(v, _)| decode_meta(&v))
                .is_some());
        }
    }

    proptest::proptest! {
        /// Whatever bytes a set holds, placing never panics, never exceeds the ways, and keeps
        /// every entry it does not drop.
        #[test]
        fn place_is_total_and_bounded(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
                                      ways in 1u8..6, tag in 0u128..8, keep in proptest::bool::ANY) {
            let mut v = SET_TAG.to_vec();
            v.extend_from_slice(&raw);
            let mut out = Vec::new();
            let class = |_: &[u8]| if keep { Class::Keep } else { Class::Evictable(0) };
            if place(Some(&v), ways, tag, b"new", class, &mut out).is_ok() {
                proptest::prop_assert!(entries(Some(&out)).count() <= usize::from(ways));
                proptest::prop_assert_eq!(find(Some(&out), tag), Some(&b"new"[..]));
            }
        }
    }
}
