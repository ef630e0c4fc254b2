//! The SQLite schema, as migrations.

/// Each migration runs once, in order, in one transaction; `PRAGMA user_version` is the number
/// applied. Never edit one that shipped: add another.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE IF NOT EXISTS accounts (
    name        TEXT PRIMARY KEY,
    plan        TEXT NOT NULL,
    disabled    INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    name           TEXT PRIMARY KEY,
    email          TEXT NOT NULL UNIQUE,
    account        TEXT NOT NULL,
    password_hash  TEXT NOT NULL,           -- argon2id, PHC string
    disabled       INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('business', 'personal', 'named')),
    name         TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,      -- sha256(secret), hex; the secret is never stored
    hint         TEXT NOT NULL DEFAULT '',  -- prefix + first characters, for people
    username     TEXT,                      -- NULL for business keys
    subject      TEXT NOT NULL,
    account      TEXT NOT NULL,
    plan         TEXT NOT NULL,
    scopes       TEXT NOT NULL,             -- JSON list
    resources    TEXT NOT NULL,             -- JSON object
    ratelimit    TEXT,                      -- JSON object or NULL
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    disabled     INTEGER NOT NULL DEFAULT 0,
    replaced_by  TEXT
);
CREATE INDEX IF NOT EXISTS keys_by_account ON keys(account, kind);
CREATE INDEX IF NOT EXISTS keys_by_user ON keys(username, kind);
CREATE INDEX IF NOT EXISTS keys_in_grace ON keys(expires_at)
    WHERE replaced_by IS NOT NULL AND revoked_at IS NULL;
CREATE TABLE IF NOT EXISTS revocations (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id       TEXT NOT NULL,
    key_hash     TEXT NOT NULL,
    username     TEXT,
    reason       TEXT NOT NULL,
    recorded_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id_hash     TEXT PRIMARY KEY,
    username    TEXT NOT NULL,
    csrf        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions(username, created_at);
"#,
    r#"
CREATE TABLE IF NOT EXISTS history (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id       TEXT NOT NULL,
    account      TEXT NOT NULL,
    plan         TEXT NOT NULL,
    at_ms        INTEGER NOT NULL,          -- when the request started, Unix ms
    method       TEXT NOT NULL,
    path         TEXT NOT NULL,             -- without its query
    status       INTEGER NOT NULL,
    duration_ms  INTEGER,
    upstream_ms  INTEGER,
    bytes_in     INTEGER NOT NULL,
    bytes_out    INTEGER NOT NULL,
    decision     TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    req_body     TEXT,                      -- JSON excerpt (redacted), where bodies are on
    resp_body    TEXT
);
CREATE INDEX IF NOT EXISTS history_by_key ON history(key_id, at_ms, id);
CREATE INDEX IF NOT EXISTS history_by_key_id ON history(key_id, id);
CREATE INDEX IF NOT EXISTS history_by_time ON history(at_ms);
CREATE TABLE IF NOT EXISTS usage_daily (
    key_id   TEXT NOT NULL,
    day      INTEGER NOT NULL,              -- days since 1970-01-01, UTC
    account  TEXT NOT NULL,
    c2xx     INTEGER NOT NULL DEFAULT 0,
    c3xx     INTEGER NOT NULL DEFAULT 0,
    c4xx     INTEGER NOT NULL DEFAULT 0,
    c5xx     INTEGER NOT NULL DEFAULT 0,
    cother   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day, account)
);
CREATE INDEX IF NOT EXISTS usage_by_account ON usage_daily(account, day);
CREATE INDEX IF NOT EXISTS usage_by_day ON usage_daily(day);
CREATE TABLE IF NOT EXISTS key_activity (
    key_id        TEXT PRIMARY KEY,
    account       TEXT NOT NULL,
    last_used_ms  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS key_activity_by_account ON key_activity(account, last_used_ms);
"#,
];
