//! SQLite: one file, WAL, one writer connection and a few readers. The default.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{
    cols, HistoryQuery, HistoryRow, KeyActivity, KeyChange, KeyFilter, Result, StatusFilter, Store,
    StoreError, UsageOf, UsageRow,
};
use crate::history::{DayCounts, HistoryRecord};
use crate::model::{Account, FeedEntry, KeyRecord, Kind, Session, User};

mod history;
mod migrations;
use migrations::MIGRATIONS;

const KEY_COLS: &str = "k.id, k.kind, k.name, k.key_hash, k.hint, k.username, k.subject, \
    k.account, k.plan, k.scopes, k.resources, k.ratelimit, k.created_at, k.expires_at, \
    k.revoked_at, k.disabled, k.replaced_by, COALESCE(a.disabled, 0), COALESCE(u.disabled, 0) \
    FROM keys k LEFT JOIN accounts a ON a.name = k.account LEFT JOIN users u ON u.name = k.username";

const READERS: usize = 4;

pub struct SqliteStore {
    /// The two lookups' statements, built once.
    by_hash: String,
    by_id: String,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

fn db(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict("that id, secret, name or email already exists".into())
        }
        e => StoreError::Db(e.to_string()),
    }
}

fn connect(path: &str) -> Result<Connection> {
    let c = Connection::open(path).map_err(db)?;
    c.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(db)?;
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
        .map_err(db)?;
    Ok(c)
}

fn key_row(r: &Row<'_>) -> rusqlite::Result<(KeyRecordRaw,)> {
    Ok((KeyRecordRaw {
        id: r.get(0)?,
        kind: r.get(1)?,
        name: r.get(2)?,
        key_hash: r.get(3)?,
        hint: r.get(4)?,
        user: r.get(5)?,
        subject: r.get(6)?,
        account: r.get(7)?,
        plan: r.get(8)?,
        scopes: r.get(9)?,
        resources: r.get(10)?,
        ratelimit: r.get(11)?,
        created_at: r.get(12)?,
        expires_at: r.get(13)?,
        revoked_at: r.get(14)?,
        disabled: r.get::<_, i64>(15)? != 0,
        replaced_by: r.get(16)?,
        account_disabled: r.get::<_, i64>(17)? != 0,
        user_disabled: r.get::<_, i64>(18)? != 0,
    },))
}

/// A row as read, before its JSON columns are decoded (shared with the PostgreSQL backend).
pub(crate) struct KeyRecordRaw {
    pub id: String,
    pub kind: String,
    pub name: String,
    pub key_hash: String,
    pub hint: String,
    pub user: Option<String>,
    pub subject: String,
    pub account: String,
    pub plan: String,
    pub scopes: String,
    pub resources: String,
    pub ratelimit: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub disabled: bool,
    pub replaced_by: Option<String>,
    pub account_disabled: bool,
    pub user_disabled: bool,
}

impl KeyRecordRaw {
    pub fn decode(self) -> Result<KeyRecord> {
        Ok(KeyRecord {
            kind: Kind::parse(&self.kind)
                .ok_or_else(|| StoreError::Db("unknown key kind".into()))?,
            scopes: cols::scopes(&self.scopes)?,
            resources: cols::resources(&self.resources)?,
            ratelimit: cols::ratelimit(self.ratelimit)?,
            id: self.id,
            name: self.name,
            key_hash: self.key_hash,
            hint: self.hint,
            user: self.user,
            subject: self.subject,
            account: self.account,
            plan: self.plan,
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            disabled: self.disabled,
            replaced_by: self.replaced_by,
            account_disabled: self.account_disabled,
            user_disabled: self.user_disabled,
        })
    }
}

fn account_row(r: &Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        name: r.get(0)?,
        plan: r.get(1)?,
        disabled: r.get::<_, i64>(2)? != 0,
        created_at: r.get(3)?,
    })
}

fn user_row(r: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        name: r.get(0)?,
        email: r.get(1)?,
        account: r.get(2)?,
        password_hash: r.get(3)?,
        disabled: r.get::<_, i64>(4)? != 0,
        created_at: r.get(5)?,
    })
}

const USER_COLS: &str = "name, email, account, password_hash, disabled, created_at FROM users";

/// Appends feed entries for the live keys `sel` picks (`SELECT id, key_hash, username FROM keys
/// WHERE …`), in one transaction with the change that caused them.
fn record(
    tx: &Connection,
    sel: &str,
    args: &[&dyn rusqlite::ToSql],
    reason: &str,
    at: i64,
) -> Result<u64> {
    let n = tx
        .execute(
            &format!(
                "INSERT INTO revocations(key_id, key_hash, username, reason, recorded_at) \
                 SELECT id, key_hash, username, '{reason}', {at} FROM keys WHERE {sel} ORDER BY created_at, id"
            ),
            args,
        )
        .map_err(db)?;
    Ok(n as u64)
}

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
    live_keys: "account = ?1 AND revoked_at IS NULL AND disabled = 0",
    reason: "account disabled",
    sessions: false,
};
const USER: Holder = Holder {
    table: "users",
    live_keys: "username = ?1 AND revoked_at IS NULL AND disabled = 0",
    reason: "user disabled",
    sessions: true,
};

fn set_disabled(c: &Connection, h: &Holder, name: &str, disabled: bool, at: i64) -> Result<bool> {
    let cur: Option<i64> = c
        .query_row(
            &format!("SELECT disabled FROM {} WHERE name = ?1", h.table),
            [name],
            |r| r.get(0),
        )
        .optional()
        .map_err(db)?;
    let Some(cur) = cur else { return Ok(false) };
    if disabled && cur == 0 {
        record(c, h.live_keys, &[&name], h.reason, at)?;
        if h.sessions {
            c.execute("DELETE FROM sessions WHERE username = ?1", [name])
                .map_err(db)?;
        }
    }
    c.execute(
        &format!("UPDATE {} SET disabled = ?2 WHERE name = ?1", h.table),
        params![name, disabled as i64],
    )
    .map_err(db)?;
    Ok(true)
}

impl SqliteStore {
    pub fn open(path: &str) -> Result<SqliteStore> {
        let mut w = connect(path)?;
        let tx = w
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let applied: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db)?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(applied.max(0) as usize) {
            tx.execute_batch(m).map_err(db)?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        let readers = (0..READERS)
            .map(|_| connect(path).map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        Ok(SqliteStore {
            by_hash: format!("SELECT {KEY_COLS} WHERE k.key_hash = ?1"),
            by_id: format!("SELECT {KEY_COLS} WHERE k.id = ?1"),
            writer: Mutex::new(w),
            readers,
            next: AtomicUsize::new(0),
        })
    }

    fn w(&self) -> MutexGuard<'_, Connection> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn r(&self) -> MutexGuard<'_, Connection> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.readers.len() {
            if let Ok(g) = self.readers[(start + i) % self.readers.len()].try_lock() {
                return g;
            }
        }
        self.readers[start % self.readers.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in a write transaction (BEGIN IMMEDIATE … COMMIT; rolled back on error).
    fn tx<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let mut w = self.w();
        let tx = w
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let v = f(&tx)?;
        tx.commit().map_err(db)?;
        Ok(v)
    }

    fn one_key(&self, sql: &str, arg: &str) -> Result<Option<KeyRecord>> {
        let c = self.r();
        // cached per connection: verify is this, and compiling it each time cost a third of it
        let mut st = c.prepare_cached(sql).map_err(db)?;
        let raw = st.query_row([arg], key_row).optional().map_err(db)?;
        raw.map(|(r,)| r.decode()).transpose()
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn key_by_hash(&self, key_hash: &str) -> Result<Option<std::sync::Arc<KeyRecord>>> {
        Ok(self
            .one_key(&self.by_hash, key_hash)?
            .map(std::sync::Arc::new))
    }

    async fn key_by_id(&self, id: &str) -> Result<Option<KeyRecord>> {
        self.one_key(&self.by_id, id)
    }

    async fn insert_key(&self, k: &KeyRecord, ignore_existing: bool) -> Result<bool> {
        let verb = if ignore_existing {
            "INSERT OR IGNORE"
        } else {
            "INSERT"
        };
        self.tx(|c| {
            let n = c
                .execute(
                    &format!(
                        "{verb} INTO keys(id, kind, name, key_hash, hint, username, subject, account, plan, \
                         scopes, resources, ratelimit, created_at, expires_at, revoked_at, disabled, replaced_by) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
                    ),
                    params![
                        k.id,
                        k.kind.as_str(),
                        k.name,
                        k.key_hash,
                        k.hint,
                        k.user,
                        k.subject,
                        k.account,
                        k.plan,
                        cols::enc(&k.scopes),
                        cols::enc(&k.resources),
                        k.ratelimit.as_ref().map(cols::enc),
                        k.created_at,
                        k.expires_at,
                        k.revoked_at,
                        k.disabled as i64,
                        k.replaced_by,
                    ],
                )
                .map_err(db)?;
            Ok(n == 1)
        })
    }

    async fn list_keys(&self, f: &KeyFilter<'_>) -> Result<Vec<KeyRecord>> {
        let mut sql = format!("SELECT {KEY_COLS} WHERE k.account = ?1");
        if let Some(kind) = f.kind {
            sql += &format!(" AND k.kind = '{}'", kind.as_str());
        }
        if f.user.is_some() {
            sql += " AND k.username = ?2";
        } else {
            sql += " AND ?2 IS NULL";
        }
        if !f.include_revoked {
            sql += " AND k.revoked_at IS NULL";
        }
        match f.limit {
            Some(n) => sql += &format!(" ORDER BY k.created_at DESC, k.id DESC LIMIT {n}"),
            None => sql += " ORDER BY k.created_at, k.id",
        }
        let c = self.r();
        let mut st = c.prepare(&sql).map_err(db)?;
        let rows = st
            .query_map(params![f.account, f.user], key_row)
            .map_err(db)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r.map_err(db)?.0.decode()?);
        }
        Ok(out)
    }

    async fn count_live_keys(&self, account: &str, now: i64) -> Result<u64> {
        let c = self.r();
        c.query_row(
            "SELECT COUNT(*) FROM keys WHERE account = ?1 AND revoked_at IS NULL \
             AND (expires_at IS NULL OR expires_at > ?2)",
            params![account, now],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n as u64)
        .map_err(db)
    }

    async fn revoke(&self, id: &str, reason: &str, at: i64) -> Result<bool> {
        self.tx(|c| {
            let n = record(c, "id = ?1 AND revoked_at IS NULL", &[&id], reason, at)?;
            c.execute(
                "UPDATE keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, at],
            )
            .map_err(db)?;
            Ok(n > 0)
        })
    }

    async fn revoke_all(
        &self,
        account: &str,
        kind: Kind,
        user: Option<&str>,
        at: i64,
    ) -> Result<u64> {
        self.tx(|c| {
            let cond = "account = ?1 AND kind = ?2 AND (?3 IS NULL OR username = ?3) AND revoked_at IS NULL";
            let n = record(c, cond, &[&account, &kind.as_str(), &user], "revoked", at)?;
            c.execute(
                &format!("UPDATE keys SET revoked_at = ?4 WHERE {cond}"),
                params![account, kind.as_str(), user, at],
            )
            .map_err(db)?;
            Ok(n)
        })
    }

    async fn update_key(&self, id: &str, ch: &KeyChange) -> Result<Option<KeyRecord>> {
        let found = self.tx(|c| {
            let n = c
                .execute(
                    "UPDATE keys SET plan = COALESCE(?2, plan), account = COALESCE(?3, account), \
                     subject = COALESCE(?4, subject), \
                     ratelimit = CASE WHEN ?5 THEN ?6 ELSE ratelimit END WHERE id = ?1",
                    params![
                        id,
                        ch.plan,
                        ch.account,
                        ch.subject,
                        ch.ratelimit.is_some(),
                        ch.ratelimit.flatten().as_ref().map(cols::enc),
                    ],
                )
                .map_err(db)?;
            Ok(n == 1)
        })?;
        if found {
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
        let found = self.tx(|c| {
            let cur: Option<bool> = c
                .query_row("SELECT disabled FROM keys WHERE id = ?1", [id], |r| {
                    r.get::<_, i64>(0).map(|d| d != 0)
                })
                .optional()
                .map_err(db)?;
            let Some(cur) = cur else { return Ok(false) };
            if disabled && !cur {
                record(c, "id = ?1 AND revoked_at IS NULL", &[&id], "disabled", at)?;
            }
            c.execute(
                "UPDATE keys SET disabled = ?2 WHERE id = ?1",
                params![id, disabled as i64],
            )
            .map_err(db)?;
            Ok(true)
        })?;
        if found {
            self.key_by_id(id).await
        } else {
            Ok(None)
        }
    }

    async fn rotate(
        &self,
        old_id: &str,
        new: &KeyRecord,
        grace_until: i64,
        at: i64,
    ) -> Result<bool> {
        let k = new;
        self.tx(|c| {
            let live: Option<Option<i64>> = c
                .query_row(
                    "SELECT expires_at FROM keys WHERE id = ?1 AND revoked_at IS NULL AND replaced_by IS NULL",
                    [old_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            let Some(old_expiry) = live else { return Ok(false) };
            c.execute(
                "INSERT INTO keys(id, kind, name, key_hash, hint, username, subject, account, plan, \
                 scopes, resources, ratelimit, created_at, expires_at, revoked_at, disabled, replaced_by) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, NULL, 0, NULL)",
                params![
                    k.id, k.kind.as_str(), k.name, k.key_hash, k.hint, k.user, k.subject, k.account,
                    k.plan, cols::enc(&k.scopes), cols::enc(&k.resources),
                    k.ratelimit.as_ref().map(cols::enc), k.created_at, k.expires_at
                ],
            )
            .map_err(db)?;
            if grace_until <= at {
                record(c, "id = ?1", &[&old_id], "rotated", at)?;
                c.execute(
                    "UPDATE keys SET revoked_at = ?2, replaced_by = ?3 WHERE id = ?1",
                    params![old_id, at, k.id],
                )
                .map_err(db)?;
            } else {
                let until = crate::model::replaced_key_until(old_expiry, grace_until, at);
                c.execute(
                    "UPDATE keys SET expires_at = ?2, replaced_by = ?3 WHERE id = ?1",
                    params![old_id, until, k.id],
                )
                .map_err(db)?;
            }
            Ok(true)
        })
    }

    async fn promote_due(&self, now: i64) -> Result<u64> {
        // cheap when nothing is due: the partial index holds only keys in their grace
        let due: i64 = self
            .r()
            .query_row(
                "SELECT COUNT(*) FROM keys WHERE replaced_by IS NOT NULL AND revoked_at IS NULL AND expires_at <= ?1",
                [now],
                |r| r.get(0),
            )
            .map_err(db)?;
        if due == 0 {
            return Ok(0);
        }
        self.tx(|c| {
            let cond = "replaced_by IS NOT NULL AND revoked_at IS NULL AND expires_at <= ?1";
            let n = record(c, cond, &[&now], "rotated", now)?;
            c.execute(
                &format!("UPDATE keys SET revoked_at = expires_at WHERE {cond}"),
                [now],
            )
            .map_err(db)?;
            Ok(n)
        })
    }

    async fn restore_key(&self, id: &str, key_hash: &str, expires_at: Option<i64>) -> Result<()> {
        self.tx(|c| {
            c.execute(
                "UPDATE keys SET revoked_at = NULL, disabled = 0, replaced_by = NULL, expires_at = ?3 \
                 WHERE id = ?1 AND key_hash = ?2",
                params![id, key_hash, expires_at],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    async fn purge(&self, before: i64) -> Result<u64> {
        self.tx(|c| {
            let mut n = c
                .execute(
                    "DELETE FROM keys WHERE revoked_at < ?1 OR expires_at < ?1",
                    [before],
                )
                .map_err(db)?;
            // the newest entry stays, so the cursor never goes back
            n += c
                .execute(
                    "DELETE FROM revocations WHERE recorded_at < ?1 \
                     AND seq < (SELECT MAX(seq) FROM revocations)",
                    [before],
                )
                .map_err(db)?;
            n += c
                .execute("DELETE FROM sessions WHERE expires_at < ?1", [before])
                .map_err(db)?;
            Ok(n as u64)
        })
    }

    async fn revocation_cursor(&self) -> Result<i64> {
        self.r()
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM revocations", [], |r| {
                r.get(0)
            })
            .map_err(db)
    }

    async fn revocations_since(&self, since: i64, limit: usize) -> Result<(Vec<FeedEntry>, bool)> {
        let c = self.r();
        let mut st = c
            .prepare_cached(
                "SELECT seq, key_id, key_hash, username FROM revocations WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(db)?;
        let rows = st
            .query_map(params![since, limit as i64 + 1], |r| {
                Ok(FeedEntry {
                    seq: r.get(0)?,
                    key_id: r.get(1)?,
                    key_hash: r.get(2)?,
                    user: r.get(3)?,
                })
            })
            .map_err(db)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r.map_err(db)?);
        }
        let more = out.len() > limit;
        out.truncate(limit);
        Ok((out, more))
    }

    async fn create_account(&self, a: &Account) -> Result<bool> {
        self.tx(|c| {
            c.execute(
                "INSERT OR IGNORE INTO accounts(name, plan, disabled, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![a.name, a.plan, a.disabled as i64, a.created_at],
            )
            .map(|n| n == 1)
            .map_err(db)
        })
    }

    async fn account(&self, name: &str) -> Result<Option<Account>> {
        self.r()
            .query_row(
                "SELECT name, plan, disabled, created_at FROM accounts WHERE name = ?1",
                [name],
                account_row,
            )
            .optional()
            .map_err(db)
    }

    async fn list_accounts(&self, limit: usize) -> Result<Vec<Account>> {
        let c = self.r();
        let mut st = c
            .prepare("SELECT name, plan, disabled, created_at FROM accounts ORDER BY name LIMIT ?1")
            .map_err(db)?;
        let rows = st.query_map([limit as i64], account_row).map_err(db)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
    }

    async fn set_account_disabled(&self, name: &str, disabled: bool, at: i64) -> Result<bool> {
        self.tx(|c| set_disabled(c, &ACCOUNT, name, disabled, at))
    }

    async fn create_user(&self, u: &User) -> Result<()> {
        self.tx(|c| {
            c.execute(
                "INSERT INTO users(name, email, account, password_hash, disabled, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    u.name,
                    u.email,
                    u.account,
                    u.password_hash,
                    u.disabled as i64,
                    u.created_at
                ],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        self.r()
            .query_row(
                &format!("SELECT {USER_COLS} WHERE name = ?1"),
                [name],
                user_row,
            )
            .optional()
            .map_err(db)
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        self.r()
            .query_row(
                &format!("SELECT {USER_COLS} WHERE email = ?1"),
                [email],
                user_row,
            )
            .optional()
            .map_err(db)
    }

    async fn list_users(&self, account: Option<&str>, limit: usize) -> Result<Vec<User>> {
        let c = self.r();
        let mut st = c
            .prepare(&format!(
                "SELECT {USER_COLS} WHERE (?1 IS NULL OR account = ?1) ORDER BY name LIMIT ?2"
            ))
            .map_err(db)?;
        let rows = st
            .query_map(params![account, limit as i64], user_row)
            .map_err(db)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
    }

    async fn set_user_disabled(&self, name: &str, disabled: bool, at: i64) -> Result<bool> {
        self.tx(|c| set_disabled(c, &USER, name, disabled, at))
    }

    async fn set_password(&self, name: &str, password_hash: &str) -> Result<bool> {
        self.tx(|c| {
            let n = c
                .execute(
                    "UPDATE users SET password_hash = ?2 WHERE name = ?1",
                    params![name, password_hash],
                )
                .map_err(db)?;
            c.execute("DELETE FROM sessions WHERE username = ?1", [name])
                .map_err(db)?;
            Ok(n == 1)
        })
    }

    async fn create_session(&self, s: &Session, keep_per_user: usize) -> Result<()> {
        self.tx(|c| {
            c.execute("DELETE FROM sessions WHERE expires_at <= ?1", [s.created_at])
                .map_err(db)?;
            c.execute(
                "INSERT INTO sessions(id_hash, username, csrf, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![s.id_hash, s.user, s.csrf, s.created_at, s.expires_at],
            )
            .map_err(db)?;
            c.execute(
                "DELETE FROM sessions WHERE username = ?1 AND id_hash NOT IN \
                 (SELECT id_hash FROM sessions WHERE username = ?1 ORDER BY created_at DESC, id_hash LIMIT ?2)",
                params![s.user, keep_per_user as i64],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    async fn session(&self, id_hash: &str, now: i64) -> Result<Option<Session>> {
        self.r()
            .query_row(
                "SELECT id_hash, username, csrf, created_at, expires_at FROM sessions WHERE id_hash = ?1 AND expires_at > ?2",
                params![id_hash, now],
                |r| {
                    Ok(Session {
                        id_hash: r.get(0)?,
                        user: r.get(1)?,
                        csrf: r.get(2)?,
                        created_at: r.get(3)?,
                        expires_at: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(db)
    }

    async fn delete_session(&self, id_hash: &str) -> Result<()> {
        self.tx(|c| {
            c.execute("DELETE FROM sessions WHERE id_hash = ?1", [id_hash])
                .map_err(db)?;
            Ok(())
        })
    }

    async fn delete_user_sessions(&self, user: &str) -> Result<()> {
        self.tx(|c| {
            c.execute("DELETE FROM sessions WHERE username = ?1", [user])
                .map_err(db)?;
            Ok(())
        })
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
