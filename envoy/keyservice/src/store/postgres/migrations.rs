//! The PostgreSQL schema, as migrations.

/// Applied in order, each once, in one transaction; `schema_migrations` records them. Never edit
/// one that shipped: add another.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE accounts (
    name        TEXT PRIMARY KEY,
    plan        TEXT NOT NULL,
    disabled    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  BIGINT NOT NULL
);
CREATE TABLE users (
    name           TEXT PRIMARY KEY,
    email          TEXT NOT NULL UNIQUE,
    account        TEXT NOT NULL,
    password_hash  TEXT NOT NULL,
    disabled       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     BIGINT NOT NULL
);
CREATE TABLE keys (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('business', 'personal', 'named')),
    name         TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    hint         TEXT NOT NULL DEFAULT '',
    username     TEXT,
    subject      TEXT NOT NULL,
    account      TEXT NOT NULL,
    plan         TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    resources    TEXT NOT NULL,
    ratelimit    TEXT,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT,
    disabled     BOOLEAN NOT NULL DEFAULT FALSE,
    replaced_by  TEXT
);
CREATE INDEX keys_by_account ON keys(account, kind);
CREATE INDEX keys_by_user ON keys(username, kind);
CREATE INDEX keys_in_grace ON keys(expires_at) WHERE replaced_by IS NOT NULL AND revoked_at IS NULL;
CREATE TABLE revocations (
    seq          BIGSERIAL PRIMARY KEY,
    key_id       TEXT NOT NULL,
    key_hash     TEXT NOT NULL,
    username     TEXT,
    reason       TEXT NOT NULL,
    recorded_at  BIGINT NOT NULL
);
CREATE TABLE sessions (
    id_hash     TEXT PRIMARY KEY,
    username    TEXT NOT NULL,
    csrf        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX sessions_by_user ON sessions(username, created_at);
"#,
    r#"
CREATE TABLE history (
    id           BIGSERIAL PRIMARY KEY,
    key_id       TEXT NOT NULL,
    account      TEXT NOT NULL,
    plan         TEXT NOT NULL,
    at_ms        BIGINT NOT NULL,
    method       TEXT NOT NULL,
    path         TEXT NOT NULL,
    status       INTEGER NOT NULL,
    duration_ms  BIGINT,
    upstream_ms  BIGINT,
    bytes_in     BIGINT NOT NULL,
    bytes_out    BIGINT NOT NULL,
    decision     TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    req_body     TEXT,
    resp_body    TEXT
);
CREATE INDEX history_by_key ON history(key_id, at_ms, id);
CREATE INDEX history_by_key_id ON history(key_id, id);
CREATE INDEX history_by_time ON history(at_ms);
CREATE TABLE usage_daily (
    key_id   TEXT NOT NULL,
    day      BIGINT NOT NULL,
    account  TEXT NOT NULL,
    c2xx     BIGINT NOT NULL DEFAULT 0,
    c3xx     BIGINT NOT NULL DEFAULT 0,
    c4xx     BIGINT NOT NULL DEFAULT 0,
    c5xx     BIGINT NOT NULL DEFAULT 0,
    cother   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day, account)
);
CREATE INDEX usage_by_account ON usage_daily(account, day);
CREATE INDEX usage_by_day ON usage_daily(day);
CREATE TABLE key_activity (
    key_id        TEXT PRIMARY KEY,
    account       TEXT NOT NULL,
    last_used_ms  BIGINT NOT NULL
);
CREATE INDEX key_activity_by_account ON key_activity(account, last_used_ms);
"#,
];
