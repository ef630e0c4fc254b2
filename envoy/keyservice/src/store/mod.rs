//! Storage behind one trait, two backends: SQLite (embedded, one file; the default) and
//! PostgreSQL (several replicas of the service on one database). `tests/store.rs` runs one
//! behaviour suite against both.

use async_trait::async_trait;

use crate::history::{DayCounts, HistoryRecord};
use crate::model::{Account, FeedEntry, KeyRecord, Kind, Session, User};

pub mod cache;
pub mod postgres;
pub mod sqlite;

#[derive(Debug)]
pub enum StoreError {
    /// A key, account or user with that id, secret, name or email already exists.
    Conflict(String),
    /// The database failed (message without any secret: statements carry hashes only).
    Db(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Conflict(m) => write!(f, "conflict: {m}"),
            StoreError::Db(m) => write!(f, "database: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A page of the revocation feed.
pub const FEED_PAGE: usize = 1000;

/// What `update_key` changes (`None`: left as it is; `ratelimit: Some(None)` removes the limit).
#[derive(Clone, Debug, Default)]
pub struct KeyChange {
    pub plan: Option<String>,
    pub account: Option<String>,
    pub subject: Option<String>,
    pub ratelimit: Option<Option<crate::model::RateLimit>>,
}

/// Which keys a listing returns.
#[derive(Clone, Debug, Default)]
pub struct KeyFilter<'a> {
    pub account: &'a str,
    pub kind: Option<Kind>,
    pub user: Option<&'a str>,
    /// Revoked keys too (the dashboard shows them; the JSON API does not).
    pub include_revoked: bool,
    /// At most this many, newest first when set (the dashboard), oldest first otherwise.
    pub limit: Option<usize>,
}

/// Which statuses a history listing returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    Any,
    /// From .. to, inclusive (a class, or one status: `(404, 404)`).
    Range(u16, u16),
    /// Outside 200-599 (no response, 1xx, nonsense).
    Other,
}

/// A page of one key's requests, newest first (by start time, then arrival).
#[derive(Clone, Debug)]
pub struct HistoryQuery<'a> {
    pub key_id: &'a str,
    pub status: StatusFilter,
    /// Requests that started in [from_ms, to_ms).
    pub from_ms: i64,
    pub to_ms: i64,
    /// Only rows after this one (its start time and id) in that order: the next page.
    pub before: Option<(i64, i64)>,
    pub limit: usize,
}

/// One stored request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRow {
    pub id: i64,
    pub record: HistoryRecord,
}

/// Requests per day and class of one key under one account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    pub key_id: String,
    pub account: String,
    pub counts: DayCounts,
}

/// Whose usage: one account's keys, some keys, or every account (the operator's billing).
#[derive(Clone, Copy, Debug)]
pub enum UsageOf<'a> {
    Account(&'a str),
    Keys(&'a [String]),
    All,
}

/// A key seen in the history: when it was last used and under which account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyActivity {
    pub key_id: String,
    pub account: String,
    pub last_used_ms: i64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    // -- keys -------------------------------------------------------------------------------
    /// Shared: the verify path's answer is built from it without copying.
    async fn key_by_hash(&self, key_hash: &str) -> Result<Option<std::sync::Arc<KeyRecord>>>;
    async fn key_by_id(&self, id: &str) -> Result<Option<KeyRecord>>;
    /// Stores a key; `Conflict` on a duplicate id or hash unless `ignore_existing` (then `false`).
    async fn insert_key(&self, rec: &KeyRecord, ignore_existing: bool) -> Result<bool>;
    async fn list_keys(&self, f: &KeyFilter<'_>) -> Result<Vec<KeyRecord>>;
    /// How many keys of an account still work or may (neither revoked nor expired at `now`): what
    /// `--max-keys-per-account` bounds.
    async fn count_live_keys(&self, account: &str, now: i64) -> Result<u64>;
    /// Revokes one key (one feed entry); `false` if it was already revoked.
    async fn revoke(&self, id: &str, reason: &str, at: i64) -> Result<bool>;
    /// Revokes every live key of an account and kind (and user), one feed entry each.
    async fn revoke_all(
        &self,
        account: &str,
        kind: Kind,
        user: Option<&str>,
        at: i64,
    ) -> Result<u64>;
    /// Changes what a key's verdict says (an operator's back office: a plan changed, an account
    /// renamed, a per-key limit set or removed). No feed entry: keygate sees it when its cached
    /// verdict expires. `None` if there is no such key.
    async fn update_key(&self, id: &str, change: &KeyChange) -> Result<Option<KeyRecord>>;
    /// Disables (a feed entry, so caches drop it) or re-enables a key.
    async fn set_key_disabled(
        &self,
        id: &str,
        disabled: bool,
        at: i64,
    ) -> Result<Option<KeyRecord>>;
    /// Rotation: stores `new`, and lets `old_id` work until `grace_until` (its expiry becomes at
    /// most that instant, and it enters the feed then); `grace_until <= at` revokes it now.
    /// `false` if the old key is not live (nothing stored).
    async fn rotate(
        &self,
        old_id: &str,
        new: &KeyRecord,
        grace_until: i64,
        at: i64,
    ) -> Result<bool>;
    /// Moves rotated keys whose grace has ended into the feed (revoked at their instant).
    async fn promote_due(&self, now: i64) -> Result<u64>;
    /// Restores a demo key: not revoked, not disabled, the given expiry (only if the id still
    /// holds that hash).
    async fn restore_key(&self, id: &str, key_hash: &str, expires_at: Option<i64>) -> Result<()>;

    /// Deletes what ended before `before`: keys revoked or expired then, feed entries recorded
    /// then, expired sessions. Keeps every table bounded by what happened since; returns how
    /// many rows went.
    async fn purge(&self, before: i64) -> Result<u64>;

    // -- the revocation feed ------------------------------------------------------------------
    async fn revocation_cursor(&self) -> Result<i64>;
    /// Up to `limit` entries after `since`, in order, and whether more remain.
    async fn revocations_since(&self, since: i64, limit: usize) -> Result<(Vec<FeedEntry>, bool)>;

    // -- accounts and users -------------------------------------------------------------------
    /// `false` if it exists already (left as it is).
    async fn create_account(&self, a: &Account) -> Result<bool>;
    async fn account(&self, name: &str) -> Result<Option<Account>>;
    async fn list_accounts(&self, limit: usize) -> Result<Vec<Account>>;
    /// Disabling refuses every key of the account (feed entries for the live ones). `false` if
    /// there is no such account.
    async fn set_account_disabled(&self, name: &str, disabled: bool, at: i64) -> Result<bool>;
    /// `Conflict` if the name or the email is taken.
    async fn create_user(&self, u: &User) -> Result<()>;
    async fn user_by_name(&self, name: &str) -> Result<Option<User>>;
    async fn user_by_email(&self, email: &str) -> Result<Option<User>>;
    async fn list_users(&self, account: Option<&str>, limit: usize) -> Result<Vec<User>>;
    async fn set_user_disabled(&self, name: &str, disabled: bool, at: i64) -> Result<bool>;
    async fn set_password(&self, name: &str, password_hash: &str) -> Result<bool>;

    // -- dashboard sessions -------------------------------------------------------------------
    /// Stores a session and drops the user's oldest beyond `keep_per_user` and every expired one.
    async fn create_session(&self, s: &Session, keep_per_user: usize) -> Result<()>;
    async fn session(&self, id_hash: &str, now: i64) -> Result<Option<Session>>;
    async fn delete_session(&self, id_hash: &str) -> Result<()>;
    async fn delete_user_sessions(&self, user: &str) -> Result<()>;

    // -- request history ----------------------------------------------------------------------
    /// Stores a batch of requests in one transaction: each in its key's history (then only the
    /// newest `keep_per_key` of each key it touched stay, by start time), counted in its key's usage of the day
    /// by status class, and as the key's last use. Returns how many were stored.
    async fn record_history(&self, batch: &[HistoryRecord], keep_per_key: usize) -> Result<u64>;
    /// A page of one key's requests, newest first (by start time, then arrival).
    async fn history(&self, q: &HistoryQuery<'_>) -> Result<Vec<HistoryRow>>;
    /// One request of a key.
    async fn history_entry(&self, key_id: &str, id: i64) -> Result<Option<HistoryRow>>;
    /// Usage per key, account and day in [from_day, to_day], ordered by day.
    async fn usage(&self, of: UsageOf<'_>, from_day: i64, to_day: i64) -> Result<Vec<UsageRow>>;
    /// The keys an account used (as the history recorded them), most recently used first.
    async fn key_activity(&self, account: &str, limit: usize) -> Result<Vec<KeyActivity>>;
    /// Deletes requests that started before `history_before_ms` and usage of days before
    /// `usage_before_day`; returns how many rows went.
    async fn purge_history(&self, history_before_ms: i64, usage_before_day: i64) -> Result<u64>;
}

/// Opens `--db`: a `postgres://` or `postgresql://` URL, or an SQLite file path; applies the
/// migrations.
pub async fn open(db: &str) -> Result<std::sync::Arc<dyn Store>> {
    if db.starts_with("postgres://") || db.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(postgres::PgStore::open(db).await?))
    } else {
        let sqlite: std::sync::Arc<dyn Store> = std::sync::Arc::new(sqlite::SqliteStore::open(db)?);
        Ok(std::sync::Arc::new(cache::CachedStore::new(
            sqlite,
            std::time::Duration::from_secs(1),
            100_000,
        )))
    }
}

/// What a batch of requests adds: counts per (key, day, account) and each key's last use
/// (and the account of its newest request), in a stable order (rows locked in the same order by
/// every writer).
pub(crate) struct BatchSums {
    pub usage: std::collections::BTreeMap<(String, i64, String), [u64; 5]>,
    pub last: std::collections::BTreeMap<String, (String, i64)>,
}

pub(crate) fn sums(batch: &[HistoryRecord]) -> BatchSums {
    let mut out = BatchSums {
        usage: Default::default(),
        last: Default::default(),
    };
    for r in batch {
        let day = crate::history::day_of(r.at_ms);
        out.usage
            .entry((r.key_id.clone(), day, r.account.clone()))
            .or_default()[crate::history::class_of(r.status)] += 1;
        let e = out
            .last
            .entry(r.key_id.clone())
            .or_insert_with(|| (r.account.clone(), r.at_ms));
        if r.at_ms >= e.1 {
            *e = (r.account.clone(), r.at_ms);
        }
    }
    out
}

/// JSON columns (scopes, resources, ratelimit) are kept as text in both backends.
pub(crate) mod cols {
    use std::collections::BTreeMap;

    use super::{Result, StoreError};
    use crate::model::RateLimit;

    pub fn enc<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap_or_else(|_| "null".into())
    }

    fn bad(what: &str) -> StoreError {
        StoreError::Db(format!("unreadable {what} column"))
    }

    pub fn scopes(s: &str) -> Result<Vec<String>> {
        serde_json::from_str(s).map_err(|_| bad("scopes"))
    }

    pub fn resources(s: &str) -> Result<BTreeMap<String, Vec<String>>> {
        serde_json::from_str(s).map_err(|_| bad("resources"))
    }

    pub fn excerpt(s: Option<String>) -> Option<crate::history::Excerpt> {
        s.and_then(|s| serde_json::from_str(&s).ok())
    }

    pub fn ratelimit(s: Option<String>) -> Result<Option<RateLimit>> {
        match s {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s).map_err(|_| bad("ratelimit")),
        }
    }
}
