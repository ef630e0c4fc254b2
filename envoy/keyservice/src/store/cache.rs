//! A one-second memory of key lookups in front of SQLite, for the verify path.
//!
//! Safe only where this process sees every change first or learns of it from the revocation
//! feed before keygate can: one process on one SQLite file. Every write through this process
//! empties it; a write by another process (the CLI) that refuses a key also appends to the
//! feed, and the feed's cursor is read (and the memory emptied when it moved) before any feed
//! answer leaves this process and every second, so keygate, which re-asks about a key only after
//! it read that entry, is answered from the database. A lookup that started before an emptying
//! is not remembered (a generation count). Only found keys are remembered (a flood of unknown
//! keys cannot fill it), at most `cap`; full, it is emptied. Not used for PostgreSQL, where
//! another replica's write would not pass through here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    HistoryQuery, HistoryRow, KeyActivity, KeyChange, KeyFilter, Result, Store, UsageOf, UsageRow,
};
use crate::history::HistoryRecord;
use crate::model::{Account, FeedEntry, KeyRecord, Kind, Session, User};

struct Memory {
    generation: u64,
    cursor: Option<i64>,
    keys: HashMap<String, (Arc<KeyRecord>, Instant)>,
}

pub struct CachedStore {
    inner: Arc<dyn Store>,
    memory: Mutex<Memory>,
    ttl: Duration,
    cap: usize,
}

impl CachedStore {
    pub fn new(inner: Arc<dyn Store>, ttl: Duration, cap: usize) -> CachedStore {
        CachedStore {
            inner,
            memory: Mutex::new(Memory {
                generation: 0,
                cursor: None,
                keys: HashMap::new(),
            }),
            ttl,
            cap,
        }
    }

    fn mem(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget(&self) {
        let mut m = self.mem();
        m.generation += 1;
        m.keys.clear();
    }

    /// Runs a write, then forgets everything (also when the write failed: it may have landed).
    async fn write<T>(&self, r: Result<T>) -> Result<T> {
        self.forget();
        r
    }
}

#[async_trait]
impl Store for CachedStore {
    async fn key_by_hash(&self, key_hash: &str) -> Result<Option<Arc<KeyRecord>>> {
        let generation = {
            let m = self.mem();
            if let Some((rec, at)) = m.keys.get(key_hash) {
                if at.elapsed() < self.ttl {
                    return Ok(Some(Arc::clone(rec)));
                }
            }
            m.generation
        };
        let rec = self.inner.key_by_hash(key_hash).await?;
        if let Some(r) = &rec {
            let mut m = self.mem();
            if m.generation == generation {
                if m.keys.len() >= self.cap {
                    m.keys.clear();
                }
                m.keys
                    .insert(key_hash.to_string(), (r.clone(), Instant::now()));
            }
        }
        Ok(rec)
    }

    async fn key_by_id(&self, id: &str) -> Result<Option<KeyRecord>> {
        self.inner.key_by_id(id).await
    }
    async fn insert_key(&self, rec: &KeyRecord, ignore_existing: bool) -> Result<bool> {
        self.write(self.inner.insert_key(rec, ignore_existing).await)
            .await
    }
    async fn list_keys(&self, f: &KeyFilter<'_>) -> Result<Vec<KeyRecord>> {
        self.inner.list_keys(f).await
    }
    async fn count_live_keys(&self, account: &str, now: i64) -> Result<u64> {
        self.inner.count_live_keys(account, now).await
    }
    async fn revoke(&self, id: &str, reason: &str, at: i64) -> Result<bool> {
        self.write(self.inner.revoke(id, reason, at).await).await
    }
    async fn revoke_all(
        &self,
        account: &str,
        kind: Kind,
        user: Option<&str>,
        at: i64,
    ) -> Result<u64> {
        self.write(self.inner.revoke_all(account, kind, user, at).await)
            .await
    }
    async fn update_key(&self, id: &str, change: &KeyChange) -> Result<Option<KeyRecord>> {
        self.write(self.inner.update_key(id, change).await).await
    }
    async fn set_key_disabled(
        &self,
        id: &str,
        disabled: bool,
        at: i64,
    ) -> Result<Option<KeyRecord>> {
        self.write(self.inner.set_key_disabled(id, disabled, at).await)
            .await
    }
    async fn rotate(
        &self,
        old_id: &str,
        new: &KeyRecord,
        grace_until: i64,
        at: i64,
    ) -> Result<bool> {
        self.write(self.inner.rotate(old_id, new, grace_until, at).await)
            .await
    }
    async fn promote_due(&self, now: i64) -> Result<u64> {
        let n = self.inner.promote_due(now).await?;
        if n > 0 {
            self.forget();
        }
        Ok(n)
    }
    async fn restore_key(&self, id: &str, key_hash: &str, expires_at: Option<i64>) -> Result<()> {
        self.write(self.inner.restore_key(id, key_hash, expires_at).await)
            .await
    }
    async fn purge(&self, before: i64) -> Result<u64> {
        self.write(self.inner.purge(before).await).await
    }
    /// Read before every feed answer and every second: a cursor that moved (a refusal written
    /// by another process) empties the memory.
    async fn revocation_cursor(&self) -> Result<i64> {
        let c = self.inner.revocation_cursor().await?;
        let moved = {
            let mut m = self.mem();
            let moved = m.cursor != Some(c);
            m.cursor = Some(c);
            moved
        };
        if moved {
            self.forget();
        }
        Ok(c)
    }
    async fn revocations_since(&self, since: i64, limit: usize) -> Result<(Vec<FeedEntry>, bool)> {
        self.inner.revocations_since(since, limit).await
    }
    async fn create_account(&self, a: &Account) -> Result<bool> {
        self.write(self.inner.create_account(a).await).await
    }
    async fn account(&self, name: &str) -> Result<Option<Account>> {
        self.inner.account(name).await
    }
    async fn list_accounts(&self, limit: usize) -> Result<Vec<Account>> {
        self.inner.list_accounts(limit).await
    }
    async fn set_account_disabled(&self, name: &str, disabled: bool, at: i64) -> Result<bool> {
        self.write(self.inner.set_account_disabled(name, disabled, at).await)
            .await
    }
    async fn create_user(&self, u: &User) -> Result<()> {
        self.write(self.inner.create_user(u).await).await
    }
    async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        self.inner.user_by_name(name).await
    }
    async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        self.inner.user_by_email(email).await
    }
    async fn list_users(&self, account: Option<&str>, limit: usize) -> Result<Vec<User>> {
        self.inner.list_users(account, limit).await
    }
    async fn set_user_disabled(&self, name: &str, disabled: bool, at: i64) -> Result<bool> {
        self.write(self.inner.set_user_disabled(name, disabled, at).await)
            .await
    }
    async fn set_password(&self, name: &str, password_hash: &str) -> Result<bool> {
        self.write(self.inner.set_password(name, password_hash).await)
            .await
    }
    async fn create_session(&self, s: &Session, keep_per_user: usize) -> Result<()> {
        self.inner.create_session(s, keep_per_user).await
    }
    async fn session(&self, id_hash: &str, now: i64) -> Result<Option<Session>> {
        self.inner.session(id_hash, now).await
    }
    async fn delete_session(&self, id_hash: &str) -> Result<()> {
        self.inner.delete_session(id_hash).await
    }
    async fn delete_user_sessions(&self, user: &str) -> Result<()> {
        self.inner.delete_user_sessions(user).await
    }
    // request history: no key changes, nothing to forget
    async fn record_history(&self, batch: &[HistoryRecord], keep_per_key: usize) -> Result<u64> {
        self.inner.record_history(batch, keep_per_key).await
    }
    async fn history(&self, q: &HistoryQuery<'_>) -> Result<Vec<HistoryRow>> {
        self.inner.history(q).await
    }
    async fn history_entry(&self, key_id: &str, id: i64) -> Result<Option<HistoryRow>> {
        self.inner.history_entry(key_id, id).await
    }
    async fn usage(&self, of: UsageOf<'_>, from_day: i64, to_day: i64) -> Result<Vec<UsageRow>> {
        self.inner.usage(of, from_day, to_day).await
    }
    async fn key_activity(&self, account: &str, limit: usize) -> Result<Vec<KeyActivity>> {
        self.inner.key_activity(account, limit).await
    }
    async fn purge_history(&self, history_before_ms: i64, usage_before_day: i64) -> Result<u64> {
        self.inner
            .purge_history(history_before_ms, usage_before_day)
            .await
    }
}
