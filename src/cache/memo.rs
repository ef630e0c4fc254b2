//! A worker's memo of decoded verdicts, and the revocation log that keeps every worker's memo
//! honest.
//!
//! A read of shared data that returns a value is the costliest host call keygate makes (the
//! host calls back into the VM to allocate it; tests/bench/RESULTS.md, "What single calls
//! cost"), and decoding the verdict costs more. So a worker keeps the verdicts it read, by their
//! tag in the verdict table, up to `key_service.worker_cache_entries` of them, and uses one
//! without reading shared data while it is fresh.
//!
//! What may change a fresh verdict before it expires is a revocation. Every revocation mark is
//! followed by an entry in the **revocation log** (`{prefix}:v:log`): a sequence number and the
//! tags of the last [`LOG_LEN`] secrets marked, in order. A worker reads the log at most once
//! per `shared_recheck_ms` (one read for all its keys) and forgets the tags logged since it last
//! looked (everything, when more than [`LOG_LEN`] came). So a revocation marked by another worker
//! is seen within `shared_recheck_ms`, as when each verdict was read again after that time, and
//! a worker serving many keys reads each verdict once, not once per `shared_recheck_ms`. The mark
//! is written before its log entry: a worker that forgets a tag because of the log reads the
//! mark next. A verdict that is no longer fresh is read again from shared data (another worker
//! may have refreshed it). `shared_recheck_ms: 0` keeps no memo: every lookup reads.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use super::{decode, side_key, Entry, Lookup, Verdict};
use crate::hash::TagHasher;
use crate::slots::{self, Table};
use crate::store::{SetOutcome, SharedStore, ABSENT_CAS};

/// Tags the revocation log holds: more revocations than this between two looks of a worker
/// make it forget everything it memoized.
pub const LOG_LEN: usize = 64;
const LOG_TAG: &[u8; 4] = b"kgL1";

/// The default number of verdicts a worker memoizes.
pub const DEFAULT_ENTRIES: usize = 4096;

pub struct Memo {
    /// By the secret's tag in the verdict table (a keyed hash: [`TagHasher`] is safe on it).
    map: HashMap<u128, Entry, BuildHasherDefault<TagHasher>>,
    cap: usize,
    /// The log's sequence number this worker has applied (`None`: not read yet).
    seq: Option<u64>,
    /// When it last read the log (ms).
    synced_ms: u64,
    /// Lookups served from the memo since the last [`Memo::take_served`].
    served: u64,
}

impl Default for Memo {
    fn default() -> Self {
        Memo::new(DEFAULT_ENTRIES)
    }
}

impl Memo {
    /// A memo of at most `cap` verdicts (cleared when full).
    pub fn new(cap: usize) -> Memo {
        Memo {
            map: HashMap::default(),
            cap: cap.max(1),
            seq: None,
            synced_ms: 0,
            served: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The verdict of the secret whose tag in `table` is `tag`, presented with Basic user `user`:
    /// a valid verdict given for another user is a miss (a revoked mark holds for every user).
    pub fn lookup(
        &mut self,
        store: &dyn SharedStore,
        table: &Table,
        tag: u128,
        user: Option<&str>,
        now_ms: u64,
        recheck_ms: u64,
    ) -> Lookup {
        let memoed = if recheck_ms == 0 {
            None
        } else {
            self.sync(store, table, now_ms, recheck_ms);
            self.map
                .get(&tag)
                .filter(|e| now_ms < e.fresh_until_ms)
                .cloned()
        };
        let from_memo = memoed.is_some();
        let entry = match memoed {
            Some(e) => e,
            None => match self.read(store, table, tag, recheck_ms > 0) {
                Some(e) => e,
                None => return Lookup::Miss,
            },
        };
        if matches!(entry.verdict, Verdict::Valid(_)) && !entry.binding.admits(user) {
            return Lookup::Miss;
        }
        if from_memo {
            // a hit (fresh): a verdict for another user above is a miss, not a memo hit
            self.served = self.served.wrapping_add(1);
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

    /// Reads the entry's set from shared data and decodes the entry (memoized if `keep`).
    fn read(
        &mut self,
        store: &dyn SharedStore,
        table: &Table,
        tag: u128,
        keep: bool,
    ) -> Option<Entry> {
        let found = store
            .get(&table.key_of(tag))
            .and_then(|(bytes, _)| slots::find(Some(&bytes), tag).and_then(decode));
        let Some(entry) = found else {
            self.map.remove(&tag);
            return None;
        };
        if keep {
            if self.map.len() >= self.cap {
                self.map.clear();
            }
            self.map.insert(tag, entry.clone());
        }
        Some(entry)
    }

    /// Reads the revocation log if `recheck_ms` passed since the last look (or the clock went
    /// back), and forgets what it names since then.
    fn sync(&mut self, store: &dyn SharedStore, table: &Table, now_ms: u64, recheck_ms: u64) {
        if self.seq.is_some() && now_ms >= self.synced_ms && now_ms - self.synced_ms < recheck_ms {
            return;
        }
        let (seq, tags) = match store.get(&side_key(table, "log")) {
            Some((v, _)) => parse_log(&v),
            None => (0, Vec::new()),
        };
        match self.seq {
            Some(old) if seq == old => {}
            Some(old) if seq > old && seq - old <= tags.len() as u64 => {
                let new = usize::try_from(seq - old).unwrap_or(usize::MAX);
                for t in &tags[tags.len().saturating_sub(new)..] {
                    self.map.remove(t);
                }
            }
            // the first look, more revocations than the log holds, or a log that went back
            _ => self.map.clear(),
        }
        self.seq = Some(seq);
        self.synced_ms = now_ms;
    }

    /// How many lookups the memo served since the last call (for the metrics, on a tick).
    pub fn take_served(&mut self) -> u64 {
        std::mem::take(&mut self.served)
    }

    /// Keeps `entry`, the verdict of `tag` this worker just wrote to shared data (the answer to
    /// its own call): a revocation marked after that write is logged after it, and the next look
    /// at the log forgets it.
    pub fn remember(&mut self, tag: u128, entry: Entry) {
        if self.map.len() >= self.cap {
            self.map.clear();
        }
        self.map.insert(tag, entry);
    }

    /// Forgets the secret of `tag` (this worker just wrote or revoked its entry).
    pub fn forget(&mut self, tag: u128) {
        self.map.remove(&tag);
    }
}

/// The log's sequence number and its tags, oldest first (anything malformed: an empty log,
/// which makes every reader forget everything once).
fn parse_log(v: &[u8]) -> (u64, Vec<u128>) {
    let parsed = (|| {
        let rest = v.strip_prefix(LOG_TAG)?;
        let seq = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
        let tags = rest.get(8..)?;
        if tags.len() % 16 != 0 || tags.len() / 16 > LOG_LEN {
            return None;
        }
        let tags = tags
            .chunks_exact(16)
            .filter_map(|c| c.try_into().ok().map(u128::from_le_bytes))
            .collect::<Vec<_>>();
        Some((seq, tags))
    })();
    parsed.unwrap_or((u64::MAX, Vec::new()))
}

/// Where a log rewritten over foreign bytes restarts: a random sequence in `[2^62, 2^63)`, more
/// than [`LOG_LEN`] past any a reader counted up from 0 (and below `u64::MAX`, what a reader of
/// the foreign bytes holds), so every reader forgets everything once (a reader of an earlier
/// restart meets the same sequence with a chance of about 2^-55).
fn restart_seq() -> u64 {
    use std::hash::BuildHasher;
    let r = std::collections::hash_map::RandomState::new().hash_one(0u8);
    (1 << 62) | (r >> 2)
}

/// Appends `tag` to the revocation log of `table` (after its mark was written). Whether it was
/// logged.
pub(super) fn log_revoked(store: &dyn SharedStore, table: &Table, tag: &u128) -> bool {
    let key = side_key(table, "log");
    for _ in 0..8 {
        let (seq, mut tags, cas) = match store.get(&key) {
            None => (0, Vec::new(), ABSENT_CAS),
            Some((v, cas)) => {
                let (seq, tags) = parse_log(&v);
                // a malformed log starts again from a sequence no reader has seen: not 0 (a
                // reader that saw no log, or the log before the foreign bytes, holds a small
                // one and would forget only what came after)
                (if seq == u64::MAX { restart_seq() } else { seq }, tags, cas)
            }
        };
        tags.push(*tag);
        let from = tags.len().saturating_sub(LOG_LEN);
        let mut out = Vec::with_capacity(12 + 16 * LOG_LEN);
        out.extend_from_slice(LOG_TAG);
        out.extend_from_slice(&seq.wrapping_add(1).to_le_bytes());
        for t in &tags[from..] {
            out.extend_from_slice(&t.to_le_bytes());
        }
        match store.set(&key, &out, cas) {
            SetOutcome::Written => return true,
            SetOutcome::CasMismatch => continue,
            SetOutcome::Failed => return false,
        }
    }
    false
}
