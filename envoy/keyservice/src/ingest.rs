//! Receiving the request history: `POST /v1/logs` (OTLP/HTTP, protobuf), as Envoy's
//! OpenTelemetry access logger or any OpenTelemetry collector sends it.
//!
//! An export is decoded and queued in memory, then answered at once: the database is never
//! waited for. One writer stores the queue in batches. Everything is bounded and every loss is
//! counted (`GET /metrics`): a full queue refuses a whole export (503, so Envoy counts its
//! records in `access_logs.open_telemetry_access_log.logs_dropped` too), at most
//! `INGEST_SLOTS` exports are read at once (more: 503 at once), an export's body is at most
//! `MAX_EXPORT_BYTES`, and a batch the database refused is counted and dropped, never retried
//! into an ever-growing queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use crate::history::{self, HistoryRecord};
use crate::store::Store;

/// The largest export read (Envoy sends ~16 KiB; a collector batches more).
pub const MAX_EXPORT_BYTES: usize = 8 << 20;
/// Exports decoded at once.
pub const INGEST_SLOTS: usize = 4;
/// The longest an export's body may take to arrive (it holds a slot meanwhile).
pub const READ_DEADLINE: Duration = Duration::from_secs(5);
/// Records stored per transaction.
const BATCH: usize = 1000;
/// How long a key's account (from the key store) is reused by the writer.
const OWNER_TTL: Duration = Duration::from_secs(30);
const OWNERS_MAX: usize = 10_000;

/// Counters of the history pipeline (exported at `GET /metrics`).
#[derive(Default)]
pub struct Counters {
    /// Log records received in exports that were read.
    pub received: AtomicU64,
    /// Records of requests without a verified key (nothing to keep).
    pub without_key: AtomicU64,
    /// Records stored.
    pub stored: AtomicU64,
    /// Records refused: the queue was full.
    pub dropped_full: AtomicU64,
    /// Records the database refused.
    pub dropped_db: AtomicU64,
    /// Exports refused: unreadable, too large, not protobuf, a wrong token, too many at once.
    pub exports_refused: AtomicU64,
}

pub struct Sink {
    pending: Mutex<Vec<HistoryRecord>>,
    notify: Notify,
    pub slots: Semaphore,
    /// Records the queue may hold.
    pub cap: usize,
    pub counters: Counters,
    /// SHA-256 hex of the token exports must carry (`x-keyservice-ingest-token`), if set.
    pub token_hash: Option<String>,
    pub redact_prefixes: Vec<String>,
}

impl Sink {
    pub fn new(cap: usize, token: Option<&str>, redact_prefixes: Vec<String>) -> Sink {
        Sink {
            pending: Mutex::new(Vec::new()),
            notify: Notify::new(),
            slots: Semaphore::new(INGEST_SLOTS),
            cap,
            counters: Counters::default(),
            token_hash: token.map(|t| crate::model::sha256_hex(t.as_bytes())),
            redact_prefixes,
        }
    }

    /// Whether an export carries the token (any export does when none is set).
    pub fn token_ok(&self, token: Option<&[u8]>) -> bool {
        self.token_hash
            .as_ref()
            .is_none_or(|want| crate::model::sha256_hex(token.unwrap_or_default()) == *want)
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<HistoryRecord>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn depth(&self) -> usize {
        self.queue().len()
    }

    /// Queues a decoded export whole, or refuses it whole when it does not fit (`false`).
    pub fn offer(&self, records: Vec<HistoryRecord>) -> bool {
        let n = records.len();
        {
            let mut q = self.queue();
            if q.len() + n > self.cap {
                drop(q);
                self.counters
                    .dropped_full
                    .fetch_add(n as u64, Ordering::Relaxed);
                return false;
            }
            q.extend(records);
        }
        self.notify.notify_one();
        true
    }

    fn take(&self, max: usize) -> Vec<HistoryRecord> {
        let mut q = self.queue();
        let n = q.len().min(max);
        q.drain(..n).collect()
    }

    pub fn prometheus(&self) -> String {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# TYPE keyservice_history_records_total counter\n\
             keyservice_history_records_total{{outcome=\"received\"}} {}\n\
             keyservice_history_records_total{{outcome=\"without_key\"}} {}\n\
             keyservice_history_records_total{{outcome=\"stored\"}} {}\n\
             keyservice_history_records_total{{outcome=\"dropped_queue_full\"}} {}\n\
             keyservice_history_records_total{{outcome=\"dropped_db_error\"}} {}\n\
             # TYPE keyservice_history_exports_refused_total counter\n\
             keyservice_history_exports_refused_total {}\n\
             # TYPE keyservice_history_queue_records gauge\n\
             keyservice_history_queue_records {}\n",
            get(&c.received),
            get(&c.without_key),
            get(&c.stored),
            get(&c.dropped_full),
            get(&c.dropped_db),
            get(&c.exports_refused),
            self.depth()
        )
    }
}

/// Where a record's key belongs: a key the store holds belongs to the store's account (a
/// record cannot move it); one it does not (keys of keygate's own configuration) to the account
/// keygate named.
struct Owners {
    known: HashMap<String, (Option<String>, Instant)>,
}

impl Owners {
    async fn resolve(&mut self, store: &dyn Store, batch: &mut [HistoryRecord]) {
        if self.known.len() >= OWNERS_MAX {
            self.known.clear();
        }
        for r in batch.iter_mut() {
            let fresh = self
                .known
                .get(&r.key_id)
                .filter(|(_, at)| at.elapsed() < OWNER_TTL)
                .map(|(a, _)| a.clone());
            let account = match fresh {
                Some(a) => a,
                None => {
                    // a lookup that fails is not remembered: the next batch asks again
                    let Ok(k) = store.key_by_id(&r.key_id).await else {
                        continue;
                    };
                    let a = k.map(|k| k.account);
                    self.known
                        .insert(r.key_id.clone(), (a.clone(), Instant::now()));
                    a
                }
            };
            if let Some(a) = account {
                r.account = a;
            }
        }
    }
}

/// The writer: stores what the queue holds, a batch at a time, until the process ends.
pub async fn writer(sink: Arc<Sink>, store: Arc<dyn Store>, keep_per_key: usize) {
    let mut owners = Owners {
        known: HashMap::new(),
    };
    loop {
        let mut batch = sink.take(BATCH);
        if batch.is_empty() {
            // woken by an export, or every second at the latest
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.notify.notified()).await;
            continue;
        }
        owners.resolve(store.as_ref(), &mut batch).await;
        match store.record_history(&batch, keep_per_key).await {
            Ok(n) => {
                sink.counters.stored.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                eprintln!(
                    "keyservice: storing {} history records failed: {e}",
                    batch.len()
                );
                sink.counters
                    .dropped_db
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Why an export was not accepted (status, text).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Token,
    MediaType,
    Body(String),
    Busy,
    Full,
}

/// Reads one export: checks the token and media type, decodes, queues. The answer's body on
/// success is OTLP's `ExportLogsServiceResponse`.
pub fn accept(
    sink: &Sink,
    token: Option<&[u8]>,
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    body: &[u8],
    now_ms: i64,
) -> Result<Vec<u8>, Refused> {
    if !sink.token_ok(token) {
        return Err(Refused::Token);
    }
    let media = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    if media.as_deref() != Some("application/x-protobuf")
        || content_encoding.is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"))
    {
        return Err(Refused::MediaType);
    }
    let d = history::decode(body, now_ms, &sink.redact_prefixes).map_err(Refused::Body)?;
    let c = &sink.counters;
    c.received
        .fetch_add(d.records.len() as u64 + d.without_key, Ordering::Relaxed);
    c.without_key.fetch_add(d.without_key, Ordering::Relaxed);
    if !d.records.is_empty() && !sink.offer(d.records) {
        return Err(Refused::Full);
    }
    Ok(history::response(0, ""))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn rec(i: i64) -> HistoryRecord {
        HistoryRecord {
            key_id: format!("k{i}"),
            account: "a".into(),
            plan: "p".into(),
            at_ms: i,
            method: "GET".into(),
            path: "/".into(),
            status: 200,
            duration_ms: None,
            upstream_ms: None,
            bytes_in: 0,
            bytes_out: 0,
            decision: "allowed".into(),
            request_id: String::new(),
            req_body: None,
            resp_body: None,
        }
    }

    #[test]
    fn the_queue_is_bounded_and_refuses_whole_exports() {
        let s = Sink::new(5, None, vec![]);
        assert!(s.offer((0..3).map(rec).collect()));
        assert!(!s.offer((0..3).map(rec).collect())); // 6 > 5: refused whole
        assert_eq!(s.depth(), 3);
        assert_eq!(s.counters.dropped_full.load(Ordering::Relaxed), 3);
        assert!(s.offer((0..2).map(rec).collect()));
        assert_eq!(s.take(4).len(), 4);
        assert_eq!(s.depth(), 1);
        assert!(s.prometheus().contains("dropped_queue_full\"} 3"));
    }

    #[test]
    fn exports_need_the_token_and_protobuf() {
        let s = Sink::new(5, Some("t0ken"), vec![]);
        let ok_ct = Some("application/x-protobuf");
        assert_eq!(accept(&s, None, ok_ct, None, b"", 0), Err(Refused::Token));
        assert_eq!(
            accept(&s, Some(b"wrong"), ok_ct, None, b"", 0),
            Err(Refused::Token)
        );
        assert_eq!(
            accept(&s, Some(b"t0ken"), Some("application/json"), None, b"", 0),
            Err(Refused::MediaType)
        );
        assert_eq!(
            accept(&s, Some(b"t0ken"), ok_ct, Some("gzip"), b"", 0),
            Err(Refused::MediaType)
        );
        // an empty export is a valid (empty) request
        assert!(accept(&s, Some(b"t0ken"), ok_ct, None, b"", 0).is_ok());
        assert!(matches!(
            accept(&s, Some(b"t0ken"), ok_ct, None, b"\xff\xff", 0),
            Err(Refused::Body(_))
        ));
    }
}
