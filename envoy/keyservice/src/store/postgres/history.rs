//! The request history's queries (PostgreSQL): records stored and trimmed, a key's history, usage
//! by day, last use.

use super::*;

const HISTORY_COLS: &str = "id, key_id, account, plan, at_ms, method, path, status, duration_ms, \
    upstream_ms, bytes_in, bytes_out, decision, request_id, req_body, resp_body FROM history";

fn history_row(r: &Row) -> Result<HistoryRow> {
    let status: i32 = r.try_get(7).map_err(db)?;
    Ok(HistoryRow {
        id: r.try_get(0).map_err(db)?,
        record: HistoryRecord {
            key_id: r.try_get(1).map_err(db)?,
            account: r.try_get(2).map_err(db)?,
            plan: r.try_get(3).map_err(db)?,
            at_ms: r.try_get(4).map_err(db)?,
            method: r.try_get(5).map_err(db)?,
            path: r.try_get(6).map_err(db)?,
            status: u16::try_from(status).unwrap_or(0),
            duration_ms: r.try_get(8).map_err(db)?,
            upstream_ms: r.try_get(9).map_err(db)?,
            bytes_in: r.try_get(10).map_err(db)?,
            bytes_out: r.try_get(11).map_err(db)?,
            decision: r.try_get(12).map_err(db)?,
            request_id: r.try_get(13).map_err(db)?,
            req_body: cols::excerpt(r.try_get(14).map_err(db)?),
            resp_body: cols::excerpt(r.try_get(15).map_err(db)?),
        },
    })
}

fn usage_row(r: &Row) -> Result<UsageRow> {
    let n = |i| r.try_get::<_, i64>(i).map(|v| v.max(0) as u64).map_err(db);
    Ok(UsageRow {
        key_id: r.try_get(0).map_err(db)?,
        account: r.try_get(1).map_err(db)?,
        counts: DayCounts {
            day: r.try_get(2).map_err(db)?,
            counts: [n(3)?, n(4)?, n(5)?, n(6)?, n(7)?],
        },
    })
}

impl PgStore {
    pub(super) async fn record_history_q(
        &self,
        batch: &[HistoryRecord],
        keep_per_key: usize,
    ) -> Result<u64> {
        if batch.is_empty() {
            return Ok(0);
        }
        let sums = crate::store::sums(batch);
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let ins = tx
            .prepare_cached(
                "INSERT INTO history(key_id, account, plan, at_ms, method, path, status, \
                 duration_ms, upstream_ms, bytes_in, bytes_out, decision, request_id, req_body, resp_body) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            )
            .await
            .map_err(db)?;
        for r in batch {
            let status = i32::from(r.status);
            let (req, resp) = (
                r.req_body.as_ref().map(cols::enc),
                r.resp_body.as_ref().map(cols::enc),
            );
            tx.execute(
                &ins,
                &[
                    &r.key_id,
                    &r.account,
                    &r.plan,
                    &r.at_ms,
                    &r.method,
                    &r.path,
                    &status,
                    &r.duration_ms,
                    &r.upstream_ms,
                    &r.bytes_in,
                    &r.bytes_out,
                    &r.decision,
                    &r.request_id,
                    &req,
                    &resp,
                ],
            )
            .await
            .map_err(db)?;
        }
        let up = tx
            .prepare_cached(
                "INSERT INTO usage_daily(key_id, day, account, c2xx, c3xx, c4xx, c5xx, cother) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT(key_id, day, account) DO UPDATE SET \
                 c2xx = usage_daily.c2xx + excluded.c2xx, c3xx = usage_daily.c3xx + excluded.c3xx, \
                 c4xx = usage_daily.c4xx + excluded.c4xx, c5xx = usage_daily.c5xx + excluded.c5xx, \
                 cother = usage_daily.cother + excluded.cother",
            )
            .await
            .map_err(db)?;
        for ((key, day, account), n) in &sums.usage {
            let n = n.map(|v| v as i64);
            tx.execute(&up, &[key, day, account, &n[0], &n[1], &n[2], &n[3], &n[4]])
                .await
                .map_err(db)?;
        }
        let last = tx
            .prepare_cached(
                "INSERT INTO key_activity(key_id, account, last_used_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT(key_id) DO UPDATE SET account = excluded.account, last_used_ms = excluded.last_used_ms \
                 WHERE excluded.last_used_ms >= key_activity.last_used_ms",
            )
            .await
            .map_err(db)?;
        let trim = tx
            .prepare_cached(
                "DELETE FROM history WHERE key_id = $1 AND id IN \
                 (SELECT id FROM history WHERE key_id = $1 ORDER BY at_ms DESC, id DESC OFFSET $2)",
            )
            .await
            .map_err(db)?;
        let keep = keep_per_key as i64;
        for (key, (account, at)) in &sums.last {
            tx.execute(&last, &[key, account, at]).await.map_err(db)?;
            tx.execute(&trim, &[key, &keep]).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(batch.len() as u64)
    }

    pub(super) async fn history_q(&self, q: &HistoryQuery<'_>) -> Result<Vec<HistoryRow>> {
        let (lo, hi, other): (i32, i32, bool) = match q.status {
            StatusFilter::Any => (0, 65_535, false),
            StatusFilter::Range(lo, hi) => (i32::from(lo), i32::from(hi), false),
            StatusFilter::Other => (200, 599, true),
        };
        let c = self.client().await?;
        let st = c
            .prepare_cached(&format!(
                "SELECT {HISTORY_COLS} WHERE key_id = $1 AND at_ms >= $2 AND at_ms < $3 \
                 AND (at_ms < $9 OR (at_ms = $9 AND id < $4)) \
                 AND ((NOT $7 AND status BETWEEN $5 AND $6) OR ($7 AND status NOT BETWEEN $5 AND $6)) \
                 ORDER BY at_ms DESC, id DESC LIMIT $8"
            ))
            .await
            .map_err(db)?;
        let (before_at, before) = q.before.unwrap_or((i64::MAX, i64::MAX));
        let limit = q.limit as i64;
        let rows = c
            .query(
                &st,
                &[
                    &q.key_id, &q.from_ms, &q.to_ms, &before, &lo, &hi, &other, &limit, &before_at,
                ],
            )
            .await
            .map_err(db)?;
        rows.iter().map(history_row).collect()
    }

    pub(super) async fn history_entry_q(
        &self,
        key_id: &str,
        id: i64,
    ) -> Result<Option<HistoryRow>> {
        let c = self.client().await?;
        let r = c
            .query_opt(
                &format!("SELECT {HISTORY_COLS} WHERE key_id = $1 AND id = $2"),
                &[&key_id, &id],
            )
            .await
            .map_err(db)?;
        r.as_ref().map(history_row).transpose()
    }

    pub(super) async fn usage_q(
        &self,
        of: UsageOf<'_>,
        from_day: i64,
        to_day: i64,
    ) -> Result<Vec<UsageRow>> {
        const COLS: &str =
            "SELECT key_id, account, day, c2xx, c3xx, c4xx, c5xx, cother FROM usage_daily";
        let c = self.client().await?;
        let rows = match of {
            UsageOf::Account(a) => {
                c.query(
                    &format!("{COLS} WHERE account = $1 AND day BETWEEN $2 AND $3 ORDER BY day, key_id"),
                    &[&a, &from_day, &to_day],
                )
                .await
            }
            UsageOf::All => {
                c.query(
                    &format!("{COLS} WHERE day BETWEEN $1 AND $2 ORDER BY day, account, key_id"),
                    &[&from_day, &to_day],
                )
                .await
            }
            UsageOf::Keys(keys) => {
                c.query(
                    &format!("{COLS} WHERE key_id = ANY($1) AND day BETWEEN $2 AND $3 ORDER BY day, key_id"),
                    &[&keys, &from_day, &to_day],
                )
                .await
            }
        }
        .map_err(db)?;
        rows.iter().map(usage_row).collect()
    }

    pub(super) async fn key_activity_q(
        &self,
        account: &str,
        limit: usize,
    ) -> Result<Vec<KeyActivity>> {
        let c = self.client().await?;
        let limit = limit as i64;
        let rows = c
            .query(
                "SELECT key_id, account, last_used_ms FROM key_activity WHERE account = $1 \
                 ORDER BY last_used_ms DESC LIMIT $2",
                &[&account, &limit],
            )
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(KeyActivity {
                    key_id: r.try_get(0).map_err(db)?,
                    account: r.try_get(1).map_err(db)?,
                    last_used_ms: r.try_get(2).map_err(db)?,
                })
            })
            .collect()
    }

    pub(super) async fn purge_history_q(
        &self,
        history_before_ms: i64,
        usage_before_day: i64,
    ) -> Result<u64> {
        let c = self.client().await?;
        let mut n = c
            .execute(
                "DELETE FROM history WHERE at_ms < $1",
                &[&history_before_ms],
            )
            .await
            .map_err(db)?;
        n += c
            .execute(
                "DELETE FROM usage_daily WHERE day < $1",
                &[&usage_before_day],
            )
            .await
            .map_err(db)?;
        let before_ms = usage_before_day.saturating_mul(86_400_000);
        n += c
            .execute(
                "DELETE FROM key_activity WHERE last_used_ms < $1",
                &[&before_ms],
            )
            .await
            .map_err(db)?;
        Ok(n)
    }
}
