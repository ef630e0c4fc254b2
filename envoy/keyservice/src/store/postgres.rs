//! PostgreSQL: several replicas of the service on one database.
//!
//! The revocation cursor is the feed's `seq` (a sequence). Sequence values are handed out in
//! order but committed in any order, so every transaction that appends to the feed first takes
//! one advisory lock (`FEED_LOCK`, held to its commit): an entry becomes visible only after every
//! entry before it did, and a replica that reads cursor N has seen everything up to N. Every
//! replica serves the same feed with the same cursor.

use async_trait::async_trait;
use deadpool_postgres::{Client, Pool, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row, Transaction};

use super::sqlite::KeyRecordRaw;
use super::{
    cols, HistoryQuery, HistoryRow, KeyActivity, KeyChange, KeyFilter, Result, StatusFilter, Store,
    StoreError, UsageOf, UsageRow,
};
use crate::history::{DayCounts, HistoryRecord};
use crate::model::{Account, FeedEntry, KeyRecord, Kind, Session, User};

mod history;
mod migrations;
use migrations::MIGRATIONS;

/// Serialises appends to the revocation feed (see the module's comment).
const FEED_LOCK: i64 = 0x6b65_7967_6174_6501;
/// Serialises migrations when several replicas start at once.
const MIGRATION_LOCK: i64 = 0x6b65_7967_6174_6502;

const KEY_COLS: &str = "k.id, k.kind, k.name, k.key_hash, k.hint, k.username, k.subject, \
    k.account, k.plan, k.scopes, k.resources, k.ratelimit, k.created_at, k.expires_at, \
    k.revoked_at, k.disabled, k.replaced_by, COALESCE(a.disabled, FALSE), COALESCE(u.disabled, FALSE) \
    FROM keys k LEFT JOIN accounts a ON a.name = k.account LEFT JOIN users u ON u.name = k.username";

const USER_COLS: &str = "name, email, account, password_hash, disabled, created_at FROM users";

pub struct PgStore {
    pool: Pool,
}

fn db(e: tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
        StoreError::Conflict("that id, secret, name or email already exists".into())
    } else {
        StoreError::Db(e.to_string())
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Db(format!("no database connection: {e}"))
}

fn key_row(r: &Row) -> Result<KeyRecord> {
    let raw = KeyRecordRaw {
        id: r.try_get(0).map_err(db)?,
        kind: r.try_get(1).map_err(db)?,
        name: r.try_get(2).map_err(db)?,
        key_hash: r.try_get(3).map_err(db)?,
        hint: r.try_get(4).map_err(db)?,
        user: r.try_get(5).map_err(db)?,
        subject: r.try_get(6).map_err(db)?,
        account: r.try_get(7).map_err(db)?,
        plan: r.try_get(8).map_err(db)?,
        scopes: r.try_get(9).map_err(db)?,
        resources: r.try_get(10).map_err(db)?,
        ratelimit: r.try_get(11).map_err(db)?,
        created_at: r.try_get(12).map_err(db)?,
        expires_at: r.try_get(13).map_err(db)?,
        revoked_at: r.try_get(14).map_err(db)?,
        disabled: r.try_get(15).map_err(db)?,
        replaced_by: r.try_get(16).map_err(db)?,
        account_disabled: r.try_get(17).map_err(db)?,
        user_disabled: r.try_get(18).map_err(db)?,
    };
    raw.decode()
}

fn account_row(r: &Row) -> Result<Account> {
    Ok(Account {
        name: r.try_get(0).map_err(db)?,
        plan: r.try_get(1).map_err(db)?,
        disabled: r.try_get(2).map_err(db)?,
        created_at: r.try_get(3).map_err(db)?,
    })
}

fn user_row(r: &Row) -> Result<User> {
    Ok(User {
        name: r.try_get(0).map_err(db)?,
        email: r.try_get(1).map_err(db)?,
        account: r.try_get(2).map_err(db)?,
        password_hash: r.try_get(3).map_err(db)?,
        disabled: r.try_get(4).map_err(db)?,
        created_at: r.try_get(5).map_err(db)?,
    })
}

/// Appends feed entries for the keys `cond` picks (its parameters from `$3` on), under the feed
/// lock, in the caller's transaction.
async fn record(
    tx: &Transaction<'_>,
    cond: &str,
    args: &[&(dyn ToSql + Sync)],
    reason: &str,
    at: i64,
) -> Result<u64> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&FEED_LOCK])
        .await
        .map_err(db)?;
    let mut all: Vec<&(dyn ToSql + Sync)> = vec![&reason, &at];
    all.extend_from_slice(args);
    tx.execute(
        &format!(
            "INSERT INTO revocations(key_id, key_hash, username, reason, recorded_at) \
             SELECT id, key_hash, username, $1::text, $2::bigint FROM keys WHERE {cond} ORDER BY created_at, id"
        ),
        &all,
    )
    .await
    .map_err(db)
}

const INSERT_KEY: &str =
    "INSERT INTO keys(id, kind, name, key_hash, hint, username, subject, account, plan, \
     scopes, resources, ratelimit, created_at, expires_at, revoked_at, disabled, replaced_by) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)";

/// What disabling an account or a user touches: its row, its live keys (revoked into the feed)
/// and, for a user, its sessions. The names are constants, never input.
struct Holder {
    table: &'static str,
    live_keys: &'static str,
    reason: &'static str,
    sessions: bool,
}

const ACCOUNT: Holder = Holder {
    table: "accounts",
    live_keys: "account = $3 AND revoked_at IS NULL AND disabled = FALSE",
    reason: "account disabled",
    sessions: false,
};
const USER: Holder = Holder {
    table: "users",
    live_keys: "username = $3 AND revoked_at IS NULL AND disabled = FALSE",
    reason: "user disabled",
    sessions: true,
};

impl PgStore {
    pub async fn open(url: &str) -> Result<PgStore> {
        let mut cfg = deadpool_postgres::Config::new();
        cfg.url = Some(url.to_string());
        cfg.pool = Some(deadpool_postgres::PoolConfig::new(16));
        let pool = cfg
            .create_pool(Some(Runtime::Tokio1), NoTls)
            .map_err(|e| StoreError::Db(format!("bad database URL: {e}")))?;
        let s = PgStore { pool };
        s.migrate().await?;
        Ok(s)
    }

    async fn client(&self) -> Result<Client> {
        self.pool.get().await.map_err(pool_err)
    }

    async fn migrate(&self) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await
        .map_err(db)?;
        let row = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                &[],
            )
            .await
            .map_err(db)?;
        let applied: i32 = row.try_get(0).map_err(db)?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(applied.max(0) as usize) {
            tx.batch_execute(m).await.map_err(db)?;
            let v = (i + 1) as i32;
            tx.execute(
                "INSERT INTO schema_migrations(version, applied_at) VALUES ($1, $2)",
                &[&v, &crate::model::now_s()],
            )
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    async fn one_key(&self, cond: &str, arg: &str) -> Result<Option<KeyRecord>> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(&format!("SELECT {KEY_COLS} WHERE {cond}"))
            .await
            .map_err(db)?;
        let row = c.query_opt(&st, &[&arg]).await.map_err(db)?;
        row.as_ref().map(key_row).transpose()
    }

    async fn set_disabled(&self, h: &Holder, name: &str, disabled: bool, at: i64) -> Result<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let cur = tx
            .query_opt(
                &format!(
                    "SELECT disabled FROM {} WHERE name = $1 FOR UPDATE",
                    h.table
                ),
                &[&name],
            )
            .await
            .map_err(db)?;
        let Some(cur) = cur else { return Ok(false) };
        let cur: bool = cur.try_get(0).map_err(db)?;
        if disabled && !cur {
            record(&tx, h.live_keys, &[&name], h.reason, at).await?;
            if h.sessions {
                tx.execute("DELETE FROM sessions WHERE username = $1", &[&name])
                    .await
                    .map_err(db)?;
            }
        }
        tx.execute(
            &format!("UPDATE {} SET disabled = $2 WHERE name = $1", h.table),
            &[&name, &disabled],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }
}

fn key_params(k: &KeyRecord) -> (String, String, Option<String>) {
    (
        cols::enc(&k.scopes),
        cols::enc(&k.resources),
        k.ratelimit.as_ref().map(cols::enc),
    )
}

#[async_trait]
impl Store for PgStore {
    async fn key_by_hash(&self, key_hash: &str) -> Result<Option<std::sync::Arc<KeyRecord>>> {
        Ok(self
            .one_key("k.key_hash = $1", key_hash)
            .await?
            .map(std::sync::Arc::new))
    }

    async fn key_by_id(&self, id: &str) -> Result<Option<KeyRecord>> {
        self.one_key("k.id = $1", id).await
    }

    async fn insert_key(&self, k: &KeyRecord, ignore_existing: bool) -> Result<bool> {
        let c = self.client().await?;
        let (scopes, resources, ratelimit) = key_params(k);
        let sql = if ignore_existing {
            format!("{INSERT_KEY} ON CONFLICT DO NOTHING")
        } else {
            INSERT_KEY.to_string()
        };
        let n = c
            .execute(
                &sql,
                &[
                    &k.id,
                    &k.kind.as_str(),
                    &k.name,
                    &k.key_hash,
                    &k.hint,
                    &k.user,
                    &k.subject,
                    &k.account,
                    &k.plan,
                    &scopes,
                    &resources,
                    &ratelimit,
                    &k.created_at,
                    &k.expires_at,
                    &k.revoked_at,
                    &k.disabled,
                    &k.replaced_by,
                ],
            )
            .await
            .map_err(db)?;
        Ok(n == 1)
    }

    async fn list_keys(&self, f: &KeyFilter<'_>) -> Result<Vec<KeyRecord>> {
        let mut sql = format!(
            "SELECT {KEY_COLS} WHERE k.account = $1 AND ($2::text IS NULL OR k.kind = $2) \
             AND ($3::text IS NULL OR k.username = $3)"
        );
        if !f.include_revoked {
            sql += " AND k.revoked_at IS NULL";
        }
        match f.limit {
            Some(n) => sql += &format!(" ORDER BY k.created_at DESC, k.id DESC LIMIT {n}"),
            None => sql += " ORDER BY k.created_at, k.id",
        }
        let c = self.client().await?;
        let kind = f.kind.map(Kind::as_str);
        let rows = c
            .query(&sql, &[&f.account, &kind, &f.user])
            .await
            .map_err(db)?;
        rows.iter().map(key_row).collect()
    }

    async fn count_live_keys(&self, account: &str, now: i64) -> Result<u64> {
        let c = self.client().await?;
        let r = c
            .query_one(
                "SELECT COUNT(*) FROM keys WHERE account = $1 AND revoked_at IS NULL \
                 AND (expires_at IS NULL OR expires_at > $2)",
                &[&account, &now],
            )
            .await
            .map_err(db)?;
        let n: i64 = r.try_get(0).map_err(db)?;
        Ok(n as u64)
    }

    async fn revoke(&self, id: &str, reason: &str, at: i64) -> Result<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let n = record(&tx, "id = $3 AND revoked_at IS NULL", &[&id], reason, at).await?;
        tx.execute(
            "UPDATE keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            &[&id, &at],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(n > 0)
    }

    async fn revoke_all(
        &self,
        account: &str,
        kind: Kind,
        user: Option<&str>,
        at: i64,
    ) -> Result<u64> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let k = kind.as_str();
        let n = record(
            &tx,
            "account = $3 AND kind = $4 AND ($5::text IS NULL OR username = $5) AND revoked_at IS NULL",
            &[&account, &k, &user],
            "revoked",
            at,
        )
        .await?;
        tx.execute(
            "UPDATE keys SET revoked_at = $4 WHERE account = $1 AND kind = $2 \
             AND ($3::text IS NULL OR username = $3) AND revoked_at IS NULL",
            &[&account, &k, &user, &at],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(n)
    }

    async fn update_key(&self, id: &str, ch: &KeyChange) -> Result<Option<KeyRecord>> {
        let n = {
            let c = self.client().await?;
            let set_limit = ch.ratelimit.is_some();
            let limit = ch.ratelimit.flatten().as_ref().map(cols::enc);
            c.execute(
                "UPDATE keys SET plan = COALESCE($2, plan), account = COALESCE($3, account), \
                 subject = COALESCE($4, subject), \
                 ratelimit = CASE WHEN $5 THEN $6 ELSE ratelimit END WHERE id = $1",
                &[&id, &ch.plan, &ch.account, &ch.subject, &set_limit, &limit],
            )
            .await
            .map_err(db)?
        };
        if n == 1 {
            self.key_by_id(id).await
        } else {
            Ok(None)
        }
    }

    async fn set_key_disabled(
        &self,
        id: &str,
        disabled: bool,
        at: i64,
    ) -> Result<Option<KeyRecord>> {
        {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(db)?;
            let cur = tx
                .query_opt("SELECT disabled FROM keys WHERE id = $1 FOR UPDATE", &[&id])
                .await
                .map_err(db)?;
            let Some(cur) = cur else { return Ok(None) };
            let cur: bool = cur.try_get(0).map_err(db)?;
            if disabled && !cur {
                record(
                    &tx,
                    "id = $3 AND revoked_at IS NULL",
                    &[&id],
                    "disabled",
                    at,
                )
                .await?;
            }
            tx.execute(
                "UPDATE keys SET disabled = $2 WHERE id = $1",
                &[&id, &disabled],
            )
            .await
            .map_err(db)?;
            tx.commit().await.map_err(db)?;
        }
        self.key_by_id(id).await
    }

    async fn rotate(&self, old_id: &str, k: &KeyRecord, grace_until: i64, at: i64) -> Result<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let live = tx
            .query_opt(
                "SELECT expires_at FROM keys WHERE id = $1 AND revoked_at IS NULL AND replaced_by IS NULL FOR UPDATE",
                &[&old_id],
            )
            .await
            .map_err(db)?;
        let Some(live) = live else { return Ok(false) };
        let old_expiry: Option<i64> = live.try_get(0).map_err(db)?;
        let (scopes, resources, ratelimit) = key_params(k);
        let none: Option<i64> = None;
        let no_id: Option<String> = None;
        tx.execute(
            INSERT_KEY,
            &[
                &k.id,
                &k.kind.as_str(),
                &k.name,
                &k.key_hash,
                &k.hint,
                &k.user,
                &k.subject,
                &k.account,
                &k.plan,
                &scopes,
                &resources,
                &ratelimit,
                &k.created_at,
                &k.expires_at,
                &none,
                &false,
                &no_id,
            ],
        )
        .await
        .map_err(db)?;
        if grace_until <= at {
            record(&tx, "id = $3", &[&old_id], "rotated", at).await?;
            tx.execute(
                "UPDATE keys SET revoked_at = $2, replaced_by = $3 WHERE id = $1",
                &[&old_id, &at, &k.id],
            )
            .await
            .map_err(db)?;
        } else {
            let until = crate::model::replaced_key_until(old_expiry, grace_until, at);
            tx.execute(
                "UPDATE keys SET expires_at = $2, replaced_by = $3 WHERE id = $1",
                &[&old_id, &until, &k.id],
            )
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    async fn promote_due(&self, now: i64) -> Result<u64> {
        let mut c = self.client().await?;
        let due = c
            .query_one(
                "SELECT COUNT(*) FROM keys WHERE replaced_by IS NOT NULL AND revoked_at IS NULL AND expires_at <= $1",
                &[&now],
            )
            .await
            .map_err(db)?;
        let due: i64 = due.try_get(0).map_err(db)?;
        if due == 0 {
            return Ok(0);
        }
        let tx = c.transaction().await.map_err(db)?;
        // under the feed lock: two replicas promoting at once record each key once
        let cond = "replaced_by IS NOT NULL AND revoked_at IS NULL AND expires_at <= $3";
        let n = record(&tx, cond, &[&now], "rotated", now).await?;
        tx.execute(
            "UPDATE keys SET revoked_at = expires_at WHERE replaced_by IS NOT NULL \
             AND revoked_at IS NULL AND expires_at <= $1",
            &[&now],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(n)
    }

    async fn restore_key(&self, id: &str, key_hash: &str, expires_at: Option<i64>) -> Result<()> {
        let c = self.client().await?;
        c.execute(
            "UPDATE keys SET revoked_at = NULL, disabled = FALSE, replaced_by = NULL, expires_at = $3 \
             WHERE id = $1 AND key_hash = $2",
            &[&id, &key_hash, &expires_at],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn purge(&self, before: i64) -> Result<u64> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let mut n = tx
            .execute(
                "DELETE FROM keys WHERE revoked_at < $1 OR expires_at < $1",
                &[&before],
            )
            .await
            .map_err(db)?;
        // under the feed lock; the newest entry stays, so the cursor never goes back
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&FEED_LOCK])
            .await
            .map_err(db)?;
        n += tx
            .execute(
                "DELETE FROM revocations WHERE recorded_at < $1 AND seq < (SELECT MAX(seq) FROM revocations)",
                &[&before],
            )
            .await
            .map_err(db)?;
        n += tx
            .execute("DELETE FROM sessions WHERE expires_at < $1", &[&before])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(n)
    }

    async fn revocation_cursor(&self) -> Result<i64> {
        let c = self.client().await?;
        let r = c
            .query_one("SELECT COALESCE(MAX(seq), 0)::BIGINT FROM revocations", &[])
            .await
            .map_err(db)?;
        r.try_get(0).map_err(db)
    }

    async fn revocations_since(&self, since: i64, limit: usize) -> Result<(Vec<FeedEntry>, bool)> {
        let c = self.client().await?;
        let lim = limit as i64 + 1;
        let rows = c
            .query(
                "SELECT seq, key_id, key_hash, username FROM revocations WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&since, &lim],
            )
            .await
            .map_err(db)?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(FeedEntry {
                    seq: r.try_get(0).map_err(db)?,
                    key_id: r.try_get(1).map_err(db)?,
                    key_hash: r.try_get(2).map_err(db)?,
                    user: r.try_get(3).map_err(db)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let more = out.len() > limit;
        out.truncate(limit);
        Ok((out, more))
    }

    async fn create_account(&self, a: &Account) -> Result<bool> {
        let c = self.client().await?;
        let n = c
            .execute(
                "INSERT INTO accounts(name, plan, disabled, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&a.name, &a.plan, &a.disabled, &a.created_at],
            )
            .await
            .map_err(db)?;
        Ok(n == 1)
    }

    async fn account(&self, name: &str) -> Result<Option<Account>> {
        let c = self.client().await?;
        let r = c
            .query_opt(
                "SELECT name, plan, disabled, created_at FROM accounts WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(db)?;
        r.as_ref().map(account_row).transpose()
    }

    async fn list_accounts(&self, limit: usize) -> Result<Vec<Account>> {
        let c = self.client().await?;
        let lim = limit.min(i64::MAX as usize) as i64;
        let rows = c
            .query(
                "SELECT name, plan, disabled, created_at FROM accounts ORDER BY name LIMIT $1",
                &[&lim],
            )
            .await
            .map_err(db)?;
        rows.iter().map(account_row).collect()
    }

    async fn set_account_disabled(&self, name: &str, disabled: bool, at: i64) -> Result<bool> {
        self.set_disabled(&ACCOUNT, name, disabled, at).await
    }

    async fn create_user(&self, u: &User) -> Result<()> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO users(name, email, account, password_hash, disabled, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&u.name, &u.email, &u.account, &u.password_hash, &u.disabled, &u.created_at],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        let c = self.client().await?;
        let r = c
            .query_opt(&format!("SELECT {USER_COLS} WHERE name = $1"), &[&name])
            .await
            .map_err(db)?;
        r.as_ref().map(user_row).transpose()
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        let c = self.client().await?;
        let r = c
            .query_opt(&format!("SELECT {USER_COLS} WHERE email = $1"), &[&email])
            .await
            .map_err(db)?;
        r.as_ref().map(user_row).transpose()
    }

    async fn list_users(&self, account: Option<&str>, limit: usize) -> Result<Vec<User>> {
        let c = self.client().await?;
        let lim = limit.min(i64::MAX as usize) as i64;
        let rows = c
            .query(
                &format!("SELECT {USER_COLS} WHERE ($1::text IS NULL OR account = $1) ORDER BY name LIMIT $2"),
                &[&account, &lim],
            )
            .await
            .map_err(db)?;
        rows.iter().map(user_row).collect()
    }

    async fn set_user_disabled(&self, name: &str, disabled: bool, at: i64) -> Result<bool> {
        self.set_disabled(&USER, name, disabled, at).await
    }

    async fn set_password(&self, name: &str, password_hash: &str) -> Result<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let n = tx
            .execute(
                "UPDATE users SET password_hash = $2 WHERE name = $1",
                &[&name, &password_hash],
            )
            .await
            .map_err(db)?;
        tx.execute("DELETE FROM sessions WHERE username = $1", &[&name])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(n == 1)
    }

    async fn create_session(&self, s: &Session, keep_per_user: usize) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        tx.execute(
            "DELETE FROM sessions WHERE expires_at <= $1",
            &[&s.created_at],
        )
        .await
        .map_err(db)?;
        tx.execute(
            "INSERT INTO sessions(id_hash, username, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
            &[&s.id_hash, &s.user, &s.csrf, &s.created_at, &s.expires_at],
        )
        .await
        .map_err(db)?;
        let keep = keep_per_user as i64;
        tx.execute(
            "DELETE FROM sessions WHERE username = $1 AND id_hash NOT IN \
             (SELECT id_hash FROM sessions WHERE username = $1 ORDER BY created_at DESC, id_hash LIMIT $2)",
            &[&s.user, &keep],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn session(&self, id_hash: &str, now: i64) -> Result<Option<Session>> {
        let c = self.client().await?;
        let r = c
            .query_opt(
                "SELECT id_hash, username, csrf, created_at, expires_at FROM sessions WHERE id_hash = $1 AND expires_at > $2",
                &[&id_hash, &now],
            )
            .await
            .map_err(db)?;
        match r {
            None => Ok(None),
            Some(r) => Ok(Some(Session {
                id_hash: r.try_get(0).map_err(db)?,
                user: r.try_get(1).map_err(db)?,
                csrf: r.try_get(2).map_err(db)?,
                created_at: r.try_get(3).map_err(db)?,
                expires_at: r.try_get(4).map_err(db)?,
            })),
        }
    }

    async fn delete_session(&self, id_hash: &str) -> Result<()> {
        let c = self.client().await?;
        c.execute("DELETE FROM sessions WHERE id_hash = $1", &[&id_hash])
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn delete_user_sessions(&self, user: &str) -> Result<()> {
        let c = self.client().await?;
        c.execute("DELETE FROM sessions WHERE username = $1", &[&user])
            .await
            .map_err(db)?;
        Ok(())
    }

    // the request history (its queries in history.rs)
    async fn record_history(&self, batch: &[HistoryRecord], keep_per_key: usize) -> Result<u64> {
        self.record_history_q(batch, keep_per_key).await
    }

    async fn history(&self, q: &HistoryQuery<'_>) -> Result<Vec<HistoryRow>> {
        self.history_q(q).await
    }

    async fn history_entry(&self, key_id: &str, id: i64) -> Result<Option<HistoryRow>> {
        self.history_entry_q(key_id, id).await
    }

    async fn usage(&self, of: UsageOf<'_>, from_day: i64, to_day: i64) -> Result<Vec<UsageRow>> {
        self.usage_q(of, from_day, to_day).await
    }

    async fn key_activity(&self, account: &str, limit: usize) -> Result<Vec<KeyActivity>> {
        self.key_activity_q(account, limit).await
    }

    async fn purge_history(&self, history_before_ms: i64, usage_before_day: i64) -> Result<u64> {
        self.purge_history_q(history_before_ms, usage_before_day)
            .await
    }
}
