//! One owner's count under one policy: a token bucket (`ratelimit`) or a rolling window
//! (`window`), in one shared-data value that says what it is.
//!
//! The key (`state_key`) names the policy and the owner. The value names the rest: its
//! algorithm and format, and for a token bucket the limit's parameters, since a bucket's time is
//! scaled by `requests` and its capacity is `burst`: read under other parameters, the same bytes
//! would mean another instant (a ban for decades, or use forgotten). A value written under other
//! parameters or another algorithm is **rebased** to the current ones by the next request, and
//! keeps what it counted:
//!
//! - bucket to bucket: the tokens spent stay spent (the same fraction of a token, rounded
//!   towards refusing), at most the new capacity: a lowered limit is an empty bucket refilling at
//!   the new rate (`Retry-After` of one new interval at most), a raised one counts earlier use;
//! - window to bucket: the recorded instants are replayed through the new bucket;
//! - bucket to window: the tokens still spent (rounded up, at most N) are recorded as taken now;
//! - window to window: the newest instants are kept (`window`).
//!
//! So a plan edited over LDS, a per-key limit the key service lowers or raises, a plan switched
//! between algorithms: the same entry, rebased once (one write), no lockout and no earlier use
//! forgotten. Carrying the parameters in the value, rather than in the key, is what makes that
//! possible (a key per parameter set would start every change from a full bucket, and leave
//! an entry behind per owner and change: shared data has no delete).
//!
//! Layout of a bucket (32 bytes, little-endian): `kgB1`, `requests` u32, `window_s` u32, `burst`
//! u32, the TAT u128 in ns × `requests`; while two parameter sets are in use at once, the other
//! set's 32 bytes and when it was last in use follow ([`PAIR_LEN`], see `rebased`). A window:
//! `kgW1` and its ring (`window`). Anything else (another plugin's bytes) is overwritten as if
//! absent.

use crate::ratelimit::Algorithm;
use crate::ratelimit::{self, div, update, Limit, RateDecision, RateError, Write, NS, NS_PER_MS};
use crate::slots;
use crate::store::SharedStore;
use crate::window;

/// Marks a token bucket's value (and its format version).
pub const BUCKET_TAG: &[u8; 4] = b"kgB1";
/// The size of a token bucket's value.
pub const BUCKET_LEN: usize = 32;
/// How far ahead of its capacity a bucket's TAT may be (worker clocks differ by far less; more
/// is a wall clock stepped back) before it is read as an empty bucket now.
const MAX_AHEAD_NS: u128 = 1_000_000_000;

/// A bucket value's first 16 bytes as one number: the tag, then the parameters it is written
/// under (compared and written whole: one comparison a request, no byte loops).
fn header(limit: &Limit) -> u128 {
    let n = |v: u64| u128::from(u32::try_from(v).unwrap_or(u32::MAX));
    u128::from(u32::from_le_bytes(*BUCKET_TAG))
        | n(limit.requests) << 32
        | n(limit.window_s) << 64
        | n(limit.burst) << 96
}

/// The limit a bucket's header names.
fn limit_of(header: u128) -> Limit {
    let n = |shift: u32| u64::from((header >> shift) as u32).max(1);
    Limit {
        requests: n(32),
        window_s: n(64),
        burst: n(96),
    }
}

fn encode_bucket(header: u128, tat: u128, out: &mut Vec<u8>) {
    let mut b = [0u8; BUCKET_LEN];
    b[..16].copy_from_slice(&header.to_le_bytes());
    b[16..].copy_from_slice(&tat.to_le_bytes());
    out.clear();
    out.extend_from_slice(&b);
}

/// A bucket's header and TAT (`None`: not a bucket's value).
fn decode_bucket(v: &[u8]) -> Option<(u128, u128)> {
    let v: &[u8; BUCKET_LEN] = v.try_into().ok()?;
    let (h, t) = v.split_at(16);
    let header = u128::from_le_bytes(h.try_into().ok()?);
    ((header as u32).to_le_bytes() == *BUCKET_TAG)
        .then(|| Some((header, u128::from_le_bytes(t.try_into().ok()?))))
        .flatten()
}

/// The bucket's debt at `now_ns` (scaled units of `l`), at most its capacity: how far its TAT
/// is ahead of now.
fn debt(l: &Limit, tat: u128, now_ns: u128) -> u128 {
    let req = u128::from(l.requests.max(1));
    let cap = u128::from(l.burst.max(1)) * u128::from(l.window_s.max(1)) * NS;
    tat.saturating_sub(now_ns * req).min(cap)
}

/// A TAT written under `old` read under `new` at `now_ns`: the same tokens spent (to the
/// fraction, rounded towards refusing), at most the new capacity.
fn rebase(old: &Limit, tat: u128, new: &Limit, now_ns: u128) -> u128 {
    let t_old = u128::from(old.window_s.max(1)) * NS;
    let t_new = u128::from(new.window_s.max(1)) * NS;
    let d = debt(old, tat, now_ns);
    // tokens = d / t_old; the same in new units: whole tokens, then the fraction (each product
    // fits u128: the fraction is below t_old <= 3.2e16, times t_new)
    let spent = (d / t_old) * t_new + div((d % t_old) * t_new, t_old, true);
    let cap = u128::from(new.burst.max(1)) * t_new;
    now_ns * u128::from(new.requests.max(1)) + spent.min(cap)
}

/// A window's instants replayed through a bucket of `l`: its TAT (`None`: none recorded).
fn replay(ring: &window::Ring<'_>, l: &Limit, now_ns: u128) -> Option<u128> {
    let req = u128::from(l.requests.max(1));
    let t = u128::from(l.window_s.max(1)) * NS;
    let cap = u128::from(l.burst.max(1)) * t;
    let mut tat: Option<u128> = None;
    for i in 0..ring.len() {
        let Some(ms) = ring.at(i) else { continue };
        let at = (u128::from(ms) * 1_000_000).min(now_ns) * req;
        let base = tat.map_or(at, |x| x.max(at));
        tat = Some((base + t).min(at + cap));
    }
    tat
}

/// Takes one request from the count at `key` under `limit` and `algorithm` at `now_ns` (the
/// host's clock, unrounded; `buf`: scratch for the new value).
pub fn take(
    store: &dyn SharedStore,
    key: &str,
    limit: &Limit,
    algorithm: Algorithm,
    now_ns: u64,
    buf: &mut Vec<u8>,
) -> Result<RateDecision, RateError> {
    match algorithm {
        Algorithm::TokenBucket => {
            let h = header(limit);
            update(store, key, buf, |value, out| {
                bucket(limit, h, value, now_ns, out)
            })
        }
        Algorithm::RollingWindow => update(store, key, buf, |value, out| {
            rolling(limit, value, now_ns, out)
        }),
    }
}

/// Scratch space of a slotted step, kept across requests: the set's key, the owner's value.
#[derive(Default)]
pub struct Bufs {
    pub key: String,
    pub way: Vec<u8>,
    pub value: Vec<u8>,
    /// The owner's name `key` and `tag` were computed for (a hot owner is hashed once).
    name: String,
    tag: u128,
}

/// Bytes before a count's value in its way: the instant (ms) from which it holds nothing (a
/// full bucket, an empty window), so any owner's request may reuse the way.
const FREE_AT: usize = 8;

/// The instant (ms, rounded up) from which a count written under `limit` and `algorithm` holds
/// nothing: every bucket slot full again, or every recorded instant a window old.
fn free_at_ms(limit: &Limit, algorithm: Algorithm, v: &[u8]) -> u64 {
    let ms = |x: u128| u64::try_from(div(x, u128::from(NS_PER_MS), true)).unwrap_or(u64::MAX);
    match (algorithm, decode_pair(v)) {
        (_, Some(((h, tat), other))) => {
            let full =
                |h: u128, tat: u128| ms(div(tat, u128::from(limit_of(h).requests.max(1)), true));
            let o = other.map_or(0, |((oh, ot), _)| full(oh, ot));
            full(h, tat).max(o)
        }
        (_, None) => window::Ring::parse(v).map_or(0, |r| {
            let newest = (0..r.len()).rev().find_map(|i| r.at(i)).unwrap_or(0);
            newest
                .saturating_add(limit.window_s.saturating_mul(1000))
                .saturating_add(1)
        }),
    }
}

/// Whether a way's count still holds something at `now_ms` (its free-from instant is later).
fn counts(way: &[u8], now_ms: u64) -> bool {
    way.get(..FREE_AT)
        .and_then(|x| x.try_into().ok())
        .is_some_and(|x| u64::from_le_bytes(x) > now_ms)
}

/// [`take`] on the owner named `name` in the table of local counts (`slots`): the owner's count
/// is one way of a set. A new owner takes a way whose count holds nothing (full bucket, empty
/// window: reusing it forgets nothing); when every way of the set still counts, the request is
/// refused ([`RateError::Full`], a 429 with the wait until a way frees), never admitted by
/// dropping another owner's count.
#[allow(clippy::too_many_arguments)]
pub fn take_in(
    store: &dyn SharedStore,
    table: &slots::Table,
    name: &str,
    limit: &Limit,
    algorithm: Algorithm,
    now_ns: u64,
    buf: &mut Vec<u8>,
    bufs: &mut Bufs,
) -> Result<RateDecision, RateError> {
    if bufs.key.is_empty() || bufs.name != name {
        bufs.tag = table.locate(name.as_bytes(), &mut bufs.key);
        bufs.name.clear();
        bufs.name.push_str(name);
    }
    let tag = bufs.tag;
    let ways = table.geometry().ways;
    let h = header(limit);
    let now_ms = now_ns / NS_PER_MS;
    let Bufs {
        key, way, value, ..
    } = bufs;
    let mut evicted = false;
    let r = update(store, key, buf, |set, out| {
        // a count that holds nothing under the configuration that wrote it is read as absent,
        // as it is once any other owner's write to the set takes its way (`place`): whether a
        // co-tenant wrote in between never changes this owner's decision (a window lengthened
        // over LDS would re-read instants a reused way forgot)
        let own = slots::find(set, tag)
            .filter(|b| counts(b, now_ms))
            .and_then(|b| b.get(FREE_AT..));
        way.clear();
        way.extend_from_slice(&[0; FREE_AT]);
        let (d, w) = match algorithm {
            Algorithm::TokenBucket => bucket(limit, h, own, now_ns, value),
            Algorithm::RollingWindow => rolling(limit, own, now_ns, value),
        };
        match w {
            Write::New => {
                let free = free_at_ms(limit, algorithm, value);
                way[..FREE_AT].copy_from_slice(&free.to_le_bytes());
                way.extend_from_slice(value);
                let class = |b: &[u8]| match counts(b, now_ms) {
                    true => slots::Class::Keep,
                    false => slots::Class::Free,
                };
                match slots::place(set, ways, tag, way, class, out) {
                    Ok(p) => {
                        evicted = p != slots::Placed::Kept;
                        (Ok(d), Write::New)
                    }
                    Err(slots::Full) => {
                        let first_free = slots::entries(set)
                            .filter_map(|(_, b)| b.get(..FREE_AT)?.try_into().ok())
                            .map(u64::from_le_bytes)
                            .min()
                            .unwrap_or(now_ms);
                        let wait = first_free.saturating_sub(now_ms).max(1);
                        (Err(RateError::Full(wait)), Write::Nothing)
                    }
                }
            }
            other => (Ok(d), other),
        }
    });
    if evicted {
        table.counts.evicted.set(table.counts.evicted.get() + 1);
    }
    match r {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => {
            table.counts.full.set(table.counts.full.get() + 1);
            Err(e)
        }
        Err(e) => Err(e),
    }
}

fn bucket(
    limit: &Limit,
    h: u128,
    value: Option<&[u8]>,
    now_ns: u64,
    out: &mut Vec<u8>,
) -> (RateDecision, Write) {
    let now = u128::from(now_ns);
    let tat = match (value, value.and_then(decode_bucket)) {
        (_, Some((stored, tat))) if stored == h => Some(tat),
        (None, _) => None,
        // written under other parameters, by a window, or foreign bytes
        (Some(v), _) => return rebased(limit, h, v, now, out),
    };
    match ratelimit::step_in(limit, tat, now, NS_PER_MS) {
        (d, Some(new_tat)) => {
            encode_bucket(h, new_tat, out);
            (d, Write::New)
        }
        (d, None) => match tat {
            Some(tat) if maybe_ahead(limit, &d) => {
                ahead_or(limit, h, (value.unwrap_or_default(), tat), now, out, d)
            }
            Some(_) => (d, Write::Unchanged),
            None => (d, Write::Nothing),
        },
    }
}

/// A denial whose wait is long: a TAT beyond the capacity by more than worker clocks differ
/// means the wall clock was stepped back, and the bucket is read as empty now (rebased);
/// otherwise the denial `d` stands. Out of line: its 128-bit products must not be hoisted into
/// every request.
#[cold]
#[inline(never)]
fn ahead_or(
    limit: &Limit,
    h: u128,
    (v, tat): (&[u8], u128),
    now: u128,
    out: &mut Vec<u8>,
    d: RateDecision,
) -> (RateDecision, Write) {
    if clamped(limit, tat, now) != tat {
        rebased(limit, h, v, now, out)
    } else {
        (d, Write::Unchanged)
    }
}

/// The size of a bucket's value while two parameter sets are in use at once: the current slot,
/// the other's, and when the other was last in use (ns).
pub const PAIR_LEN: usize = 72;

/// A bucket's current slot (header, TAT) and, while two parameter sets are in use, the other's
/// with when it was last in use (ns).
type Pair = ((u128, u128), Option<((u128, u128), u64)>);

fn decode_pair(v: &[u8]) -> Option<Pair> {
    let (first, rest) = v.split_at_checked(BUCKET_LEN)?;
    let cur = decode_bucket(first)?;
    match rest.split_at_checked(BUCKET_LEN) {
        None if rest.is_empty() => Some((cur, None)),
        Some((other, seen)) => {
            let seen = u64::from_le_bytes(seen.try_into().ok()?);
            Some((cur, Some((decode_bucket(other)?, seen))))
        }
        None => None,
    }
}

fn encode_pair(cur: (u128, u128), other: Option<((u128, u128), u64)>, out: &mut Vec<u8>) {
    encode_bucket(cur.0, cur.1, out);
    if let Some(((h, tat), seen)) = other {
        let mut b = Vec::with_capacity(BUCKET_LEN);
        encode_bucket(h, tat, &mut b);
        out.extend_from_slice(&b);
        out.extend_from_slice(&seen.to_le_bytes());
    }
}

/// A TAT of `l` charged one request at `now`, never beyond the bucket's capacity.
fn charge(l: &Limit, tat: u128, now: u128) -> u128 {
    let req = u128::from(l.requests.max(1));
    let t = u128::from(l.window_s.max(1)) * NS;
    let cap = u128::from(l.burst.max(1)) * t;
    (tat.max(now * req) + t).min(now * req + cap)
}

/// A bucket step on a value that is not this bucket's as it stands: written under other
/// parameters (or under two sets at once), by a rolling window, foreign bytes, or a TAT from a
/// clock stepped back. Stepped, and written either way.
///
/// Two parameter sets can be in use at once: an LDS update keeps the old listener's
/// connections on the old configuration while new ones get the new one, and two keygate plugins
/// may share a `shared_prefix`. Each set's count is kept beside the other's (the value is then
/// [`PAIR_LEN`] bytes), every request admitted under one is charged to both, and each side
/// decides on its own: neither forgets what the other admitted (a rebase back and forth would
/// drop what a smaller capacity cannot hold, again and again). The other slot goes when it has
/// not been in use for as long as its bucket takes to fill (it could hold nothing more then).
#[cold]
#[inline(never)]
fn rebased(
    limit: &Limit,
    h: u128,
    v: &[u8],
    now: u128,
    out: &mut Vec<u8>,
) -> (RateDecision, Write) {
    let now_ns = u64::try_from(now).unwrap_or(u64::MAX);
    let (mine, other) = match decode_pair(v) {
        Some(((ch, ct), other)) if ch == h => (Some(ct), other),
        // the other set's turn: the slots swap, the current one was in use until now
        Some(((ch, ct), Some(((oh, ot), _)))) if oh == h => (Some(ot), Some(((ch, ct), now_ns))),
        // new parameters: rebased from the current count, which is kept beside
        Some(((ch, ct), _)) => (
            Some(rebase(&limit_of(ch), ct, limit, now)),
            Some(((ch, ct), now_ns)),
        ),
        None => (
            window::Ring::parse(v).and_then(|ring| replay(&ring, limit, now)),
            None,
        ),
    };
    let mine = mine.map(|t| clamped(limit, t, now));
    // an other set unused for as long as its bucket takes to fill: nothing left to keep
    let other = other.filter(|((oh, _), seen)| {
        let o = limit_of(*oh);
        let full_ns = u128::from(o.burst) * u128::from(o.window_s) * NS / u128::from(o.requests);
        u128::from(now_ns.saturating_sub(*seen)) <= full_ns
    });
    match ratelimit::step_in(limit, mine, now, NS_PER_MS) {
        (d, Some(new_tat)) => {
            let other = other.map(|((oh, ot), seen)| ((oh, charge(&limit_of(oh), ot, now)), seen));
            encode_pair((h, new_tat), other, out);
            (d, Write::New)
        }
        // a denial keeps the counts, in the current parameters
        (d, None) => match mine {
            Some(tat) => {
                encode_pair((h, tat), other, out);
                (d, Write::New)
            }
            None => (d, Write::Nothing),
        },
    }
}

/// Whether a denial's wait is long enough that the TAT may lie beyond the bucket's capacity by
/// more than [`MAX_AHEAD_NS`] (cheap: one interval and a second; [`clamped`] tells exactly).
fn maybe_ahead(limit: &Limit, d: &RateDecision) -> bool {
    let interval_ms = limit.window_s.saturating_mul(1000) / limit.requests.max(1);
    d.retry_after_ms > interval_ms.saturating_add(1001)
}

/// The TAT, or the bucket's horizon (its full capacity spent now) when the TAT lies further
/// ahead than that by more than [`MAX_AHEAD_NS`]: only a wall clock stepped back puts it there.
fn clamped(limit: &Limit, tat: u128, now: u128) -> u128 {
    let req = u128::from(limit.requests.max(1));
    let cap = u128::from(limit.burst.max(1)) * u128::from(limit.window_s.max(1)) * NS;
    let horizon = now * req + cap;
    if tat > horizon + MAX_AHEAD_NS * req {
        horizon
    } else {
        tat
    }
}

fn rolling(
    limit: &Limit,
    value: Option<&[u8]>,
    now_ns: u64,
    out: &mut Vec<u8>,
) -> (RateDecision, Write) {
    let (n, w) = (limit.requests, limit.window_s);
    // a bucket's spent tokens become requests taken now
    let converted = value.and_then(decode_pair).map(|((stored, tat), _)| {
        let old = limit_of(stored);
        let d = debt(&old, tat, u128::from(now_ns));
        let spent = div(d, u128::from(old.window_s.max(1)) * NS, true);
        let count =
            usize::try_from(spent.min(u128::from(n.clamp(1, window::MAX_REQUESTS)))).unwrap_or(0);
        let now_ms = window::ms_up(now_ns);
        let mut ring = Vec::new();
        window::write_ring(count.max(1), now_ms, &mut ring, |i| {
            (i < count).then_some(now_ms)
        });
        ring
    });
    let read = converted.as_deref().or(value);
    match window::step(n, w, read, now_ns, out) {
        (d, true) => (d, Write::New),
        (d, false) => match (&converted, read) {
            (Some(ring), _) => {
                out.clear();
                out.extend_from_slice(ring);
                (d, Write::New)
            }
            (None, Some(v)) if window::Ring::parse(v).is_some() => (d, Write::Unchanged),
            _ => (d, Write::Nothing),
        },
    }
}

#[cfg(test)]
mod tests;
