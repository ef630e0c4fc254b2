//! The request history's queries (SQLite): records stored and trimmed, a key's history, usage
//! by day, last use.

use super::*;

const HISTORY_COLS: &str = "id, key_id, account, plan, at_ms, method, path, status, duration_ms, \
    upstream_ms, bytes_in, bytes_out, decision, request_id, req_body, resp_body FROM history";

fn history_row(r: &Row<'_>) -> rusqlite::Result<HistoryRow> {
    Ok(HistoryRow {
        id: r.get(0)?,
        record: HistoryRecord {
            key_id: r.get(1)?,
            account: r.get(2)?,
            plan: r.get(3)?,
            at_ms: r.get(4)?,
            method: r.get(5)?,
            path: r.get(6)?,
            status: u16::try_from(r.get::<_, i64>(7)?).unwrap_or(0),
            duration_ms: r.get(8)?,
            upstream_ms: r.get(9)?,
            bytes_in: r.get(10)?,
            bytes_out: r.get(11)?,
            decision: r.get(12)?,
            request_id: r.get(13)?,
            req_body: cols::excerpt(r.get(14)?),
            resp_body: cols::excerpt(r.get(15)?),
        },
    })
}

fn usage_row(r: &Row<'_>) -> rusqlite::Result<UsageRow> {
    let n = |i| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
    Ok(UsageRow {
        key_id: r.get(0)?,
        account: r.get(1)?,
        counts: DayCounts {
            day: r.get(2)?,
            counts: [n(3)?, n(4)?, n(5)?, n(6)?, n(7)?],
        },
    })
}

impl SqliteStore {
    pub(super) async fn record_history_q(
        &self,
        batch: &[HistoryRecord],
        keep_per_key: usize,
    ) -> Result<u64> {
        if batch.is_empty() {
            return Ok(0);
        }
        let sums = crate::store::sums(batch);
        self.tx(|c| {
            {
                let mut ins = c
                    .prepare_cached(
                        "INSERT INTO history(key_id, account, plan, at_ms, method, path, status, \
                         duration_ms, upstream_ms, bytes_in, bytes_out, decision, request_id, req_body, resp_body) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                    )
                    .map_err(db)?;
                for r in batch {
                    ins.execute(params![
                        r.key_id,
                        r.account,
                        r.plan,
                        r.at_ms,
                        r.method,
                        r.path,
                        r.status,
                        r.duration_ms,
                        r.upstream_ms,
                        r.bytes_in,
                        r.bytes_out,
                        r.decision,
                        r.request_id,
                        r.req_body.as_ref().map(cols::enc),
                        r.resp_body.as_ref().map(cols::enc),
                    ])
                    .map_err(db)?;
                }
            }
            let mut up = c
                .prepare_cached(
                    "INSERT INTO usage_daily(key_id, day, account, c2xx, c3xx, c4xx, c5xx, cother) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT(key_id, day, account) DO UPDATE SET \
                     c2xx = c2xx + excluded.c2xx, c3xx = c3xx + excluded.c3xx, c4xx = c4xx + excluded.c4xx, \
                     c5xx = c5xx + excluded.c5xx, cother = cother + excluded.cother",
                )
                .map_err(db)?;
            for ((key, day, account), n) in &sums.usage {
                let n = n.map(|v| v as i64);
                up.execute(params![key, day, account, n[0], n[1], n[2], n[3], n[4]])
                    .map_err(db)?;
            }
            let mut last = c
                .prepare_cached(
                    "INSERT INTO key_activity(key_id, account, last_used_ms) VALUES (?1, ?2, ?3) \
                     ON CONFLICT(key_id) DO UPDATE SET account = excluded.account, last_used_ms = excluded.last_used_ms \
                     WHERE excluded.last_used_ms >= key_activity.last_used_ms",
                )
                .map_err(db)?;
            let mut trim = c
                .prepare_cached(
                    "DELETE FROM history WHERE key_id = ?1 AND id IN \
                     (SELECT id FROM history WHERE key_id = ?1 ORDER BY at_ms DESC, id DESC LIMIT -1 OFFSET ?2)",
                )
                .map_err(db)?;
            for (key, (account, at)) in &sums.last {
                last.execute(params![key, account, at]).map_err(db)?;
                trim.execute(params![key, keep_per_key as i64]).map_err(db)?;
            }
            Ok(batch.len() as u64)
        })
    }

    pub(super) async fn history_q(&self, q: &HistoryQuery<'_>) -> Result<Vec<HistoryRow>> {
        let (lo, hi, other) = match q.status {
            StatusFilter::Any => (0, 65_535, false),
            StatusFilter::Range(lo, hi) => (i64::from(lo), i64::from(hi), false),
            StatusFilter::Other => (200, 599, true),
        };
        let c = self.r();
        let mut st = c
            .prepare_cached(&format!(
                "SELECT {HISTORY_COLS} WHERE key_id = ?1 AND at_ms >= ?2 AND at_ms < ?3 \
                 AND (at_ms < ?9 OR (at_ms = ?9 AND id < ?4)) \
                 AND ((?7 = 0 AND status BETWEEN ?5 AND ?6) OR (?7 = 1 AND status NOT BETWEEN ?5 AND ?6)) \
                 ORDER BY at_ms DESC, id DESC LIMIT ?8"
            ))
            .map_err(db)?;
        let rows = st
            .query_map(
                params![
                    q.key_id,
                    q.from_ms,
                    q.to_ms,
                    q.before.map_or(i64::MAX, |b| b.1),
                    lo,
                    hi,
                    other as i64,
                    q.limit as i64,
                    q.before.map_or(i64::MAX, |b| b.0),
                ],
                history_row,
            )
            .map_err(db)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
    }

    pub(super) async fn history_entry_q(
        &self,
        key_id: &str,
        id: i64,
    ) -> Result<Option<HistoryRow>> {
        self.r()
            .query_row(
                &format!("SELECT {HISTORY_COLS} WHERE key_id = ?1 AND id = ?2"),
                params![key_id, id],
                history_row,
            )
            .optional()
            .map_err(db)
    }

    pub(super) async fn usage_q(
        &self,
        of: UsageOf<'_>,
        from_day: i64,
        to_day: i64,
    ) -> Result<Vec<UsageRow>> {
        const COLS: &str =
            "SELECT key_id, account, day, c2xx, c3xx, c4xx, c5xx, cother FROM usage_daily";
        let c = self.r();
        match of {
            UsageOf::Account(a) => {
                let mut st = c
                    .prepare_cached(&format!(
                        "{COLS} WHERE account = ?1 AND day BETWEEN ?2 AND ?3 ORDER BY day, key_id"
                    ))
                    .map_err(db)?;
                let rows = st
                    .query_map(params![a, from_day, to_day], usage_row)
                    .map_err(db)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
            }
            UsageOf::All => {
                let mut st = c
                    .prepare_cached(&format!(
                        "{COLS} WHERE day BETWEEN ?1 AND ?2 ORDER BY day, account, key_id"
                    ))
                    .map_err(db)?;
                let rows = st
                    .query_map(params![from_day, to_day], usage_row)
                    .map_err(db)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
            }
            UsageOf::Keys(keys) => {
                let mut st = c
                    .prepare_cached(&format!(
                        "{COLS} WHERE key_id = ?1 AND day BETWEEN ?2 AND ?3 ORDER BY day"
                    ))
                    .map_err(db)?;
                let mut out = Vec::new();
                for k in keys {
                    let rows = st
                        .query_map(params![k, from_day, to_day], usage_row)
                        .map_err(db)?;
                    for r in rows {
                        out.push(r.map_err(db)?);
                    }
                }
                out.sort_by(|a, b| (a.counts.day, &a.key_id).cmp(&(b.counts.day, &b.key_id)));
                Ok(out)
            }
        }
    }

    pub(super) async fn key_activity_q(
        &self,
        account: &str,
        limit: usize,
    ) -> Result<Vec<KeyActivity>> {
        let c = self.r();
        let mut st = c
            .prepare_cached(
                "SELECT key_id, account, last_used_ms FROM key_activity WHERE account = ?1 \
                 ORDER BY last_used_ms DESC LIMIT ?2",
            )
            .map_err(db)?;
        let rows = st
            .query_map(params![account, limit as i64], |r| {
                Ok(KeyActivity {
                    key_id: r.get(0)?,
                    account: r.get(1)?,
                    last_used_ms: r.get(2)?,
                })
            })
            .map_err(db)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
    }

    pub(super) async fn purge_history_q(
        &self,
        history_before_ms: i64,
        usage_before_day: i64,
    ) -> Result<u64> {
        self.tx(|c| {
            let mut n = c
                .execute("DELETE FROM history WHERE at_ms < ?1", [history_before_ms])
                .map_err(db)?;
            n += c
                .execute("DELETE FROM usage_daily WHERE day < ?1", [usage_before_day])
                .map_err(db)?;
            n += c
                .execute(
                    "DELETE FROM key_activity WHERE last_used_ms < ?1",
                    [usage_before_day.saturating_mul(86_400_000)],
                )
                .map_err(db)?;
            Ok(n as u64)
        })
    }
}
