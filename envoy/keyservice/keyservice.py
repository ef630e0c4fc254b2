#!/usr/bin/env python3
"""The reference key service behind keygate: issues, verifies and revokes API keys.

    python3 envoy/keyservice/keyservice.py --port 8081 --db PATH [--host 127.0.0.1]
                                           [--seed-demo] [--admin-token TOKEN] [--verbose]

A model for your own service: it implements keygate's key-service contract v1
(envoy/contract/key-service-contract.md) and what a real service needs around it (accounts,
login, key kinds, storage that keeps no secret, a management API). Check yours, or this one, with
``keygate-check --key-service URL --valid-key KEY``.

Standard library only (Python 3.11). Three kinds of key, in the style of two public APIs:

* ``business`` (``kgb_…``): an account's long-lived key; never expires; no user.
* ``personal`` (``kgp_…``): a 24-hour token from ``POST /v1/auth/login``; manages the other keys.
* ``named`` (``kgn_…``): a personal access token with a friendly name and a lifetime of 1 to 90
  days, presented as ``Authorization: Basic base64(user:token)``.

Plans (enforced by keygate from its own configuration, not here): free 60/min, basic 120/min,
professional 300/min, enterprise 1000/min.

Storage: a key is kept only as ``sha256(secret)`` (hex); its secret is returned once, at creation.
Passwords are PBKDF2-HMAC-SHA256 with a random per-user salt. Nothing secret is ever logged.

Endpoints
---------
Verify contract v1 (called by keygate; never routed through Envoy's public listener). Errors on
these two are ``{"error": "..."}`` JSON, as the contract says:

* ``POST /v1/keys/verify`` ``{"key", "user"}`` -> 200 verdict (VALID / NOT_FOUND / REVOKED /
  EXPIRED / DISABLED).
* ``GET /v1/keys/revocations?since=N[&limit=L]`` -> revocation feed with a cursor.

Management (reached through keygate, which verified the caller and set ``x-keygate-*`` headers);
errors are RFC 9457 ``application/problem+json``:

* ``POST /v1/auth/login`` (public): email + password -> new personal token.
* ``GET|POST|DELETE /v1/tokens/business``, ``DELETE /v1/tokens/business/{id}``
* ``DELETE /v1/tokens/personal``, ``DELETE /v1/tokens/personal/all``
* ``GET|POST /v1/tokens/named``, ``DELETE /v1/tokens/named/{id}``

Every ``/v1/tokens/*`` endpoint needs the caller's key to be a live *personal* token.

Operator administration (only with ``--admin-token``; without it these paths do not exist;
header ``x-admin-token`` required, else 403). Not for keygate's public listener: route only
``/v1/auth`` and ``/v1/tokens`` through Envoy, as envoy/demo-remote.yaml does.

* ``POST /admin/keys``: import a key whose secret you chose (e.g. one issued by an older system);
  it is stored hashed like any other.
* ``POST /admin/revoke`` ``{"id"}``, ``POST /admin/disable`` ``{"id", "disabled"}``.

Extending: routes name their handler method (``Route.action``), so a subclass of ``Handler`` may
override an endpoint or add routes, and ``main(server_class=...)`` runs it.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import math
import re
import secrets
import signal
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

CONTRACT = 1
VALID_CACHE_TTL_S = 60
REFUSAL_CACHE_TTL_S = 10
PERSONAL_LIFETIME_S = 86_400
MAX_NAMED_LIFETIME_DAYS = 90
DAY_S = 86_400
REVOCATION_PAGE = 1000
MAX_BODY_BYTES = 1 << 20
PBKDF2_ITERATIONS = 600_000
PROBLEM_BASE = "urn:keyservice:problem:"

KINDS = ("business", "personal", "named")
SECRET_PREFIX = {"business": "kgb_", "personal": "kgp_", "named": "kgn_"}
ID_PREFIX = {"business": "bk_", "personal": "pk_", "named": "nk_"}
DEFAULT_SCOPES = {
    "business": ["read", "write"],
    "personal": ["read", "write", "tokens"],
    "named": ["read", "write"],
}
KEY_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    name        TEXT PRIMARY KEY,
    plan        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    name                 TEXT PRIMARY KEY,
    email                TEXT NOT NULL UNIQUE,
    account              TEXT NOT NULL REFERENCES accounts(name),
    password_salt        BLOB NOT NULL,
    password_hash        BLOB NOT NULL,
    password_iterations  INTEGER NOT NULL,
    created_at           INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('business', 'personal', 'named')),
    name        TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,   -- sha256(secret), hex; the secret itself is never stored
    user        TEXT,                   -- NULL for business keys
    subject     TEXT NOT NULL,
    account     TEXT NOT NULL,
    plan        TEXT NOT NULL,
    scopes      TEXT NOT NULL,          -- JSON list
    resources   TEXT NOT NULL,          -- JSON object
    ratelimit   TEXT,                   -- JSON object or NULL
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER,
    disabled    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS keys_by_account ON keys(account, kind);
CREATE INDEX IF NOT EXISTS keys_by_user ON keys(user, kind);
CREATE TABLE IF NOT EXISTS revocations (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id       TEXT NOT NULL,
    key_hash     TEXT NOT NULL,
    user         TEXT,
    reason       TEXT NOT NULL,
    recorded_at  INTEGER NOT NULL
);
"""


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------

def now_s() -> int:
    """The current unix time in whole seconds."""
    return int(time.time())


def sha256_hex(secret: str) -> str:
    """The stored form of a key: the hex SHA-256 of its UTF-8 secret."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret(kind: str) -> str:
    """A fresh secret for a key of ``kind``: its prefix and 32 random bytes, base64url."""
    return SECRET_PREFIX[kind] + secrets.token_urlsafe(32)


def new_key_id(kind: str) -> str:
    """A fresh public key id, e.g. ``bk_3f9a0c1d2e4b``."""
    return ID_PREFIX[kind] + secrets.token_hex(6)


def hash_password(password: str, salt: bytes, iterations: int) -> bytes:
    """PBKDF2-HMAC-SHA256 of ``password``."""
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class HttpError(Exception):
    """An answer other than success: rendered as problem+json (or ``{"error"}`` on the contract)."""

    def __init__(self, status: int, slug: str, detail: str, *,
                 headers: dict[str, str] | None = None, close: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.headers = headers or {}
        self.close = close


def bad_request(detail: str) -> HttpError:
    return HttpError(400, "bad-request", detail)


def not_found(detail: str = "no such resource") -> HttpError:
    return HttpError(404, "not-found", detail)


# --------------------------------------------------------------------------------------------
# Input validation (request bodies are untrusted JSON)
# --------------------------------------------------------------------------------------------

def parse_json_object(body: bytes, *, allow_empty: bool = False) -> dict[str, Any]:
    """Parses a request body that must be a JSON object (an empty body is ``{}`` if allowed)."""
    if not body.strip():
        if allow_empty:
            return {}
        raise bad_request("a JSON object body is required")
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("the body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise bad_request("the body must be a JSON object")
    return obj


def opt_str(obj: dict[str, Any], name: str, *, max_len: int = 200) -> str | None:
    """An optional non-empty string member (``None`` when absent or null)."""
    v = obj.get(name)
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise bad_request(f"`{name}` must be a non-empty string")
    if len(v) > max_len:
        raise bad_request(f"`{name}` must be at most {max_len} characters")
    return v


def req_str(obj: dict[str, Any], name: str, *, max_len: int = 200) -> str:
    """A required non-empty string member."""
    v = opt_str(obj, name, max_len=max_len)
    if v is None:
        raise bad_request(f"`{name}` is required")
    return v


def opt_int(obj: dict[str, Any], name: str, *, lo: int = 0, hi: int = 2**53) -> int | None:
    """An optional integer member within ``lo..hi`` (booleans are not integers here)."""
    v = obj.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad_request(f"`{name}` must be an integer")
    if not lo <= v <= hi:
        raise bad_request(f"`{name}` must be {lo} to {hi}")
    return v


def req_int(obj: dict[str, Any], name: str, *, lo: int = 0, hi: int = 2**53) -> int:
    """A required integer member within ``lo..hi``."""
    v = opt_int(obj, name, lo=lo, hi=hi)
    if v is None:
        raise bad_request(f"`{name}` is required")
    return v


def parse_scopes(v: Any) -> list[str]:
    """A list of non-empty scope names without spaces (keygate joins them with spaces)."""
    if not isinstance(v, list) or not all(isinstance(s, str) and s and " " not in s for s in v):
        raise bad_request("`scopes` must be a list of non-empty strings without spaces")
    return list(v)


def parse_resources(v: Any) -> dict[str, list[str]]:
    """An object of resource name -> list of strings."""
    if not isinstance(v, dict) or not all(
            isinstance(vals, list) and all(isinstance(x, str) for x in vals)
            for vals in v.values()):
        raise bad_request("`resources` must be an object of name -> list of strings")
    return {str(k): list(vals) for k, vals in v.items()}


def parse_ratelimit(v: Any) -> dict[str, int] | None:
    """``null`` or ``{requests, window_s=60, burst=requests}``, normalised to all three members."""
    if v is None:
        return None
    if not isinstance(v, dict):
        raise bad_request("`ratelimit` must be null or an object {requests, window_s, burst}")
    unknown = set(v) - {"requests", "window_s", "burst"}
    if unknown:
        raise bad_request(f"`ratelimit` has unknown members: {', '.join(sorted(unknown))}")
    requests = req_int(v, "requests", lo=1, hi=1_000_000_000)
    window_s = opt_int(v, "window_s", lo=1, hi=31_536_000) or 60
    burst = opt_int(v, "burst", lo=1, hi=1_000_000_000) or requests
    return {"requests": requests, "window_s": window_s, "burst": burst}


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KeyRecord:
    """One row of ``keys``: everything about a key except its secret, which is never stored."""

    id: str
    kind: str
    name: str
    key_hash: str
    user: str | None
    subject: str
    account: str
    plan: str
    scopes: list[str]
    resources: dict[str, list[str]]
    ratelimit: dict[str, int] | None
    created_at: int
    expires_at: int | None
    revoked_at: int | None
    disabled: bool

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> KeyRecord:
        return cls(
            id=row["id"], kind=row["kind"], name=row["name"], key_hash=row["key_hash"],
            user=row["user"], subject=row["subject"], account=row["account"], plan=row["plan"],
            scopes=json.loads(row["scopes"]), resources=json.loads(row["resources"]),
            ratelimit=json.loads(row["ratelimit"]) if row["ratelimit"] is not None else None,
            created_at=row["created_at"], expires_at=row["expires_at"],
            revoked_at=row["revoked_at"], disabled=bool(row["disabled"]),
        )

    def state(self, now: float) -> str:
        """VALID, or why not: REVOKED, then DISABLED, then EXPIRED (in that precedence)."""
        if self.revoked_at is not None:
            return "REVOKED"
        if self.disabled:
            return "DISABLED"
        if self.expires_at is not None and self.expires_at <= now:
            return "EXPIRED"
        return "VALID"

    def public(self) -> dict[str, Any]:
        """Everything that may be shown to an administrator: no secret, no hash."""
        return {
            "id": self.id, "kind": self.kind, "name": self.name, "user": self.user,
            "subject": self.subject, "account": self.account, "plan": self.plan,
            "scopes": self.scopes, "resources": self.resources, "ratelimit": self.ratelimit,
            "created_at": self.created_at, "expires_at": self.expires_at,
            "revoked": self.revoked_at is not None, "disabled": self.disabled,
        }


class Conflict(Exception):
    """A key with that id or that secret already exists."""


class Store:
    """The SQLite database: one connection shared by all threads, serialised by a lock."""

    def __init__(self, path: str) -> None:
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            # Idempotent: every statement is CREATE … IF NOT EXISTS; one transaction for all.
            self._db.executescript(f"BEGIN IMMEDIATE;\n{SCHEMA}\nPRAGMA user_version=1;\nCOMMIT;")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE … COMMIT, rolled back on error)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- accounts and users ------------------------------------------------------------------

    def ensure_account(self, name: str, plan: str) -> None:
        """Creates the account if it does not exist (an existing one keeps its plan)."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO accounts(name, plan, created_at) VALUES (?, ?, ?)",
                       (name, plan, now_s()))

    def account_plan(self, account: str) -> str | None:
        rows = self._query("SELECT plan FROM accounts WHERE name = ?", (account,))
        return rows[0]["plan"] if rows else None

    def ensure_user(self, name: str, email: str, account: str, password: str) -> None:
        """Creates the user if no user of that name exists (an existing one is left alone)."""
        if self._query("SELECT 1 FROM users WHERE name = ?", (name,)):
            return
        salt = secrets.token_bytes(16)
        digest = hash_password(password, salt, PBKDF2_ITERATIONS)
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO users(name, email, account, password_salt, password_hash,"
                " password_iterations, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, email.lower(), account, salt, digest, PBKDF2_ITERATIONS, now_s()))

    def authenticate(self, email: str, password: str) -> sqlite3.Row | None:
        """The user row if the password matches; the same work is done for an unknown email."""
        rows = self._query("SELECT * FROM users WHERE email = ?", (email.lower(),))
        if not rows:
            hash_password(password, b"\0" * 16, PBKDF2_ITERATIONS)  # same cost either way
            return None
        user = rows[0]
        digest = hash_password(password, user["password_salt"], user["password_iterations"])
        return user if hmac.compare_digest(digest, user["password_hash"]) else None

    # -- keys --------------------------------------------------------------------------------

    def insert_key(self, rec: KeyRecord, *, ignore_existing: bool = False) -> bool:
        """Stores a key; ``Conflict`` on a duplicate id or secret, unless told to ignore those."""
        verb = "INSERT OR IGNORE" if ignore_existing else "INSERT"
        try:
            with self._tx() as db:
                cur = db.execute(
                    f"{verb} INTO keys(id, kind, name, key_hash, user, subject, account, plan,"
                    " scopes, resources, ratelimit, created_at, expires_at, revoked_at, disabled)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (rec.id, rec.kind, rec.name, rec.key_hash, rec.user, rec.subject, rec.account,
                     rec.plan, json.dumps(rec.scopes), json.dumps(rec.resources),
                     json.dumps(rec.ratelimit) if rec.ratelimit is not None else None,
                     rec.created_at, rec.expires_at, rec.revoked_at, int(rec.disabled)))
                return cur.rowcount == 1
        except sqlite3.IntegrityError:
            raise Conflict("a key with that id or that secret already exists") from None

    def create_key(self, *, kind: str, name: str, account: str, plan: str, user: str | None,
                   expires_at: int | None,
                   scopes: list[str] | None = None) -> tuple[KeyRecord, str]:
        """Creates a key with a fresh secret; returns the record and the secret (shown once)."""
        secret = new_secret(kind)
        key_id = new_key_id(kind)
        rec = KeyRecord(
            id=key_id, kind=kind, name=name, key_hash=sha256_hex(secret), user=user,
            subject=user if user is not None else key_id, account=account, plan=plan,
            scopes=list(scopes if scopes is not None else DEFAULT_SCOPES[kind]), resources={},
            ratelimit=None, created_at=now_s(), expires_at=expires_at, revoked_at=None,
            disabled=False)
        self.insert_key(rec)
        return rec, secret

    def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        rows = self._query("SELECT * FROM keys WHERE key_hash = ?", (key_hash,))
        return KeyRecord.from_row(rows[0]) if rows else None

    def key_by_id(self, key_id: str) -> KeyRecord | None:
        rows = self._query("SELECT * FROM keys WHERE id = ?", (key_id,))
        return KeyRecord.from_row(rows[0]) if rows else None

    def active_keys(self, *, account: str, kind: str, user: str | None = None) -> list[KeyRecord]:
        """Non-revoked keys of an account and kind (and user, if given), oldest first."""
        sql = "SELECT * FROM keys WHERE account = ? AND kind = ? AND revoked_at IS NULL"
        params: tuple[Any, ...] = (account, kind)
        if user is not None:
            sql += " AND user = ?"
            params += (user,)
        rows = self._query(sql + " ORDER BY created_at, id", params)
        return [KeyRecord.from_row(r) for r in rows]

    # -- revocation --------------------------------------------------------------------------

    @staticmethod
    def _record_revocation(db: sqlite3.Connection, row: sqlite3.Row | KeyRecord, reason: str,
                           at: int) -> None:
        if isinstance(row, KeyRecord):
            key_id, key_hash, user = row.id, row.key_hash, row.user
        else:
            key_id, key_hash, user = row["id"], row["key_hash"], row["user"]
        db.execute("INSERT INTO revocations(key_id, key_hash, user, reason, recorded_at)"
                   " VALUES (?, ?, ?, ?, ?)", (key_id, key_hash, user, reason, at))

    def revoke(self, key_id: str, reason: str = "revoked") -> bool:
        """Revokes one key; ``False`` if it was already revoked (no second feed entry)."""
        at = now_s()
        with self._tx() as db:
            rows = db.execute("SELECT id, key_hash, user FROM keys"
                              " WHERE id = ? AND revoked_at IS NULL", (key_id,)).fetchall()
            for row in rows:
                db.execute("UPDATE keys SET revoked_at = ? WHERE id = ?", (at, row["id"]))
                self._record_revocation(db, row, reason, at)
            return bool(rows)

    def revoke_all(self, *, account: str, kind: str, reason: str = "revoked") -> int:
        """Revokes every live key of an account and kind, one feed entry each; returns how many."""
        at = now_s()
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, key_hash, user FROM keys WHERE account = ? AND kind = ?"
                " AND revoked_at IS NULL ORDER BY created_at, id", (account, kind)).fetchall()
            for row in rows:
                db.execute("UPDATE keys SET revoked_at = ? WHERE id = ?", (at, row["id"]))
                self._record_revocation(db, row, reason, at)
            return len(rows)

    def set_disabled(self, key_id: str, disabled: bool) -> KeyRecord | None:
        """Disables (recording a feed entry, so caches drop it) or re-enables a key."""
        at = now_s()
        with self._tx() as db:
            row = db.execute("SELECT * FROM keys WHERE id = ?", (key_id,)).fetchone()
            if row is None:
                return None
            if disabled and not row["disabled"]:
                db.execute("UPDATE keys SET disabled = 1 WHERE id = ?", (key_id,))
                if row["revoked_at"] is None:
                    self._record_revocation(db, row, "disabled", at)
            elif not disabled and row["disabled"]:
                db.execute("UPDATE keys SET disabled = 0 WHERE id = ?", (key_id,))
        return self.key_by_id(key_id)

    def revocation_cursor(self) -> int:
        return int(self._query("SELECT COALESCE(MAX(seq), 0) AS c FROM revocations")[0]["c"])

    def revocations_since(self, since: int, limit: int) -> tuple[list[sqlite3.Row], bool]:
        """Up to ``limit`` feed entries with ``seq > since``, in order, and whether more remain."""
        rows = self._query("SELECT seq, key_id, key_hash, user FROM revocations WHERE seq > ?"
                           " ORDER BY seq LIMIT ?", (since, limit + 1))
        return rows[:limit], len(rows) > limit

    # -- demo data ---------------------------------------------------------------------------

    def seed_demo(self) -> None:
        """Creates the demo accounts, users and keys with well-known secrets, or restores them: a
        demo key revoked or disabled in an earlier run works again, and the demo PAT's lifetime
        starts anew (so a demo database never rots). Other keys are left as they are."""
        self.ensure_account("acme", "free")
        self.ensure_account("globex", "professional")
        self.ensure_user("alice", "alice@example.com", "acme", "alice-password")
        self.ensure_user("bob", "bob@example.com", "globex", "bob-password")
        t = now_s()
        demo = [
            ("bk_demo_acme", "business", "acme demo business key", "kgb_demo_acme_business_0001",
             None, "acme", "free", {"aggregator": ["agg-acme-1"]}, None),
            ("nk_demo_alice", "named", "alice demo PAT", "kgn_demo_alice_pat_0001",
             "alice", "acme", "free", {}, t + MAX_NAMED_LIFETIME_DAYS * DAY_S),
            ("bk_demo_globex", "business", "globex demo business key",
             "kgb_demo_globex_business_0001", None, "globex", "professional", {}, None),
        ]
        for key_id, kind, name, secret, user, account, plan, resources, expires_at in demo:
            self.insert_key(KeyRecord(
                id=key_id, kind=kind, name=name, key_hash=sha256_hex(secret), user=user,
                subject=user or key_id, account=account, plan=plan,
                scopes=list(DEFAULT_SCOPES[kind]), resources=resources, ratelimit=None,
                created_at=t, expires_at=expires_at, revoked_at=None, disabled=False,
            ), ignore_existing=True)
            with self._tx() as db:
                db.execute("UPDATE keys SET revoked_at = NULL, disabled = 0, expires_at = ?"
                           " WHERE id = ? AND key_hash = ?", (expires_at, key_id, sha256_hex(secret)))


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Route:
    """One endpoint: method, full-path pattern and the name of the ``Handler`` method that answers
    it (a name, not the function, so a subclass's override answers)."""

    method: str
    pattern: re.Pattern[str]
    action: str
    admin: bool = False


class KeyServiceServer(ThreadingHTTPServer):
    """A threading HTTP server that carries the store and the settings; each connection is
    answered by ``handler`` (``Handler`` or a subclass)."""

    daemon_threads = True
    allow_reuse_address = True
    # Envoy opens many connections at once under load; Python's default backlog of 5 refuses some.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], store: Store, *, admin_token: str | None,
                 verbose: bool, handler: type[Handler] | None = None) -> None:
        super().__init__(address, handler or Handler)
        self.store = store
        self.admin_token = admin_token
        self.verbose = verbose


class Handler(BaseHTTPRequestHandler):
    """Answers one connection's requests (HTTP/1.1, keep-alive, always a Content-Length)."""

    protocol_version = "HTTP/1.1"
    # Answer even an unparseable request line with a status line (the default, HTTP/0.9, has none).
    default_request_version = "HTTP/1.0"
    server_version = "keyservice/1"
    # Headers and body go out in two writes: without TCP_NODELAY every call after the first on a
    # keep-alive connection waits ~40 ms for the peer's delayed ACK (measured: 44 ms vs 0.4 ms).
    disable_nagle_algorithm = True
    server: KeyServiceServer
    routes: ClassVar[list[Route]] = []  # filled in below the class

    # -- plumbing ----------------------------------------------------------------------------

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Request logging only with ``--verbose`` (it shows request lines, never bodies)."""
        if self.server.verbose:
            sys.stderr.write(f"keyservice: {self.address_string()} {format % args}\n")

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _match(self, path: str) -> tuple[Route | None, dict[str, str], list[str]]:
        """The route for this method and path, its path parameters, and the methods allowed."""
        allowed: list[str] = []
        for route in self.routes:
            if route.admin and self.server.admin_token is None:
                continue
            m = route.pattern.fullmatch(path)
            if m is None:
                continue
            if route.method == self.command:
                return route, m.groupdict(), []
            allowed.append(route.method)
        return None, {}, allowed

    def _handle(self) -> None:
        """Reads the body, routes, and turns every failure into an answer (never a dead thread)."""
        self.body = b""
        path = urlsplit(self.path).path or "/"
        if len(path) > 1:
            path = path.rstrip("/") or "/"
        self.contract = path.startswith("/v1/keys/")
        try:
            route, params, allowed = self._match(path)
            self.body = self._read_body()
            if route is None:
                if allowed:
                    raise HttpError(405, "method-not-allowed",
                                    f"{self.command} is not allowed here",
                                    headers={"Allow": ", ".join(sorted(set(allowed)))})
                raise not_found(f"no endpoint at {path}")
            if route.admin:
                self._require_admin()
            getattr(self, route.action)(**params)
        except HttpError as e:
            if e.close:
                self.close_connection = True
            try:
                self._send_error(e)
            except OSError:  # the client has gone; so does the connection
                self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:  # the server must survive anything
            sys.stderr.write("keyservice: internal error\n" + traceback.format_exc())
            self.close_connection = True
            with suppress(OSError):
                self._send_error(HttpError(500, "internal-error", "an unexpected error occurred"))

    def _read_body(self) -> bytes:
        """The request body (Content-Length or chunked), at most ``MAX_BODY_BYTES``."""
        te = self.headers.get("Transfer-Encoding")
        if te is not None:
            if te.strip().lower() != "chunked":
                raise HttpError(501, "not-implemented",
                                "only chunked transfer-encoding is supported", close=True)
            return self._read_chunked()
        cl = self.headers.get("Content-Length")
        if cl is None:
            return b""
        if not cl.strip().isdigit():
            raise HttpError(400, "bad-request", "invalid Content-Length", close=True)
        n = int(cl)
        if n > MAX_BODY_BYTES:
            raise HttpError(413, "payload-too-large", f"the body exceeds {MAX_BODY_BYTES} bytes",
                            close=True)
        data = self.rfile.read(n)
        if len(data) != n:
            raise ConnectionResetError("the client closed the connection mid-body")
        return data

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HttpError(400, "bad-request", "invalid chunked body", close=True) from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(out)
            if len(out) + size > MAX_BODY_BYTES:
                raise HttpError(413, "payload-too-large",
                                f"the body exceeds {MAX_BODY_BYTES} bytes", close=True)
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise ConnectionResetError("the client closed the connection mid-body")
            out += chunk
            self.rfile.readline(1024)  # the CRLF after the chunk

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        """Writes a complete response with an exact Content-Length."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, dumps(obj), "application/json")

    def _send_error(self, e: HttpError) -> None:
        """``{"error"}`` on the verify contract endpoints, RFC 9457 problem+json elsewhere."""
        if getattr(self, "contract", False):
            self._send(e.status, dumps({"error": e.detail}), "application/json", e.headers)
            return
        try:
            title = HTTPStatus(e.status).phrase
        except ValueError:
            title = "Error"
        problem = {
            "type": PROBLEM_BASE + e.slug,
            "title": title,
            "status": e.status,
            "detail": e.detail,
        }
        self._send(e.status, dumps(problem), "application/problem+json", e.headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests caught by the base class: answered as problem+json, then closed."""
        self.close_connection = True
        self.contract = False
        with suppress(OSError):
            self._send_error(HttpError(code, "bad-request" if code == 400 else "protocol-error",
                                       message or explain or "malformed request"))

    def _require_admin(self) -> None:
        token = self.headers.get("x-admin-token") or ""
        expected = self.server.admin_token or ""
        if not hmac.compare_digest(token.encode(), expected.encode()):
            raise HttpError(403, "forbidden", "a valid x-admin-token header is required")

    # -- verify contract -----------------------------------------------------------------------

    def verify(self) -> None:
        """``POST /v1/keys/verify``: the verdict on a presented key (always 200 once checked)."""
        req = parse_json_object(self.body)
        secret = req.get("key")
        if not isinstance(secret, str) or not secret:
            raise bad_request("`key` must be a non-empty string")
        user = req.get("user")
        if user is not None and not isinstance(user, str):
            raise bad_request("`user` must be a string or null")
        self._json(200, self._verdict(secret, user))

    def _verdict(self, secret: str, user: str | None) -> dict[str, Any]:
        """The contract v1 verdict. The key is looked up by its hash; a key with a user matches
        that user or a Bearer presentation (no user); a key without one matches only a Bearer
        presentation."""
        rec = self.server.store.key_by_hash(sha256_hex(secret))
        if rec is None or (user is not None and user != rec.user):
            return {"contract": CONTRACT, "valid": False, "code": "NOT_FOUND",
                    "cache_ttl_s": REFUSAL_CACHE_TTL_S}
        now = time.time()
        state = rec.state(now)
        if state != "VALID":
            return {"contract": CONTRACT, "valid": False, "code": state, "key_id": rec.id,
                    "cache_ttl_s": REFUSAL_CACHE_TTL_S}
        ttl = VALID_CACHE_TTL_S
        if rec.expires_at is not None:
            ttl = max(1, min(ttl, math.floor(rec.expires_at - now)))
        return {
            "contract": CONTRACT, "valid": True, "code": "VALID", "key_id": rec.id,
            "subject": rec.subject, "account": rec.account, "plan": rec.plan,
            "scopes": rec.scopes, "expires_at": rec.expires_at, "ratelimit": rec.ratelimit,
            "resources": rec.resources, "cache_ttl_s": ttl,
        }

    def revocations(self) -> None:
        """``GET /v1/keys/revocations?since=N``: revoked key hashes after cursor N."""
        query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
        since = self._query_int(query, "since", default=-1, lo=-1)
        limit = self._query_int(query, "limit", default=REVOCATION_PAGE, lo=1, hi=REVOCATION_PAGE)
        store = self.server.store
        current = store.revocation_cursor()
        if since == -1:
            self._json(200, {"contract": CONTRACT, "cursor": current, "revoked": [], "more": False})
            return
        rows, more = store.revocations_since(since, limit)
        # A cursor from the future (the database was replaced) is brought back to ours.
        cursor = rows[-1]["seq"] if rows else min(since, current)
        self._json(200, {
            "contract": CONTRACT, "cursor": cursor, "more": more,
            "revoked": [{"key_hash": r["key_hash"], "user": r["user"], "key_id": r["key_id"]}
                        for r in rows],
        })

    @staticmethod
    def _query_int(query: dict[str, list[str]], name: str, *, default: int, lo: int,
                   hi: int = 2**62) -> int:
        values = query.get(name)
        if not values:
            return default
        v = values[0].strip()
        if not re.fullmatch(r"-?\d{1,19}", v) or not lo <= int(v) <= hi:
            raise bad_request(f"`{name}` must be an integer from {lo} to {hi}")
        return int(v)

    # -- management ----------------------------------------------------------------------------

    def _caller(self) -> KeyRecord:
        """The live personal token keygate verified for this request (401 / 403 otherwise)."""
        key_id = self.headers.get("x-keygate-key-id")
        account = self.headers.get("x-keygate-account")
        if not key_id or not account:
            raise HttpError(401, "unauthorized", "this endpoint needs a verified key "
                            "(x-keygate-key-id and x-keygate-account are missing)")
        rec = self.server.store.key_by_id(key_id)
        if rec is None or rec.account != account:
            raise HttpError(401, "unauthorized", "the calling key is unknown")
        if rec.state(time.time()) != "VALID":
            raise HttpError(401, "unauthorized", "the calling key is no longer valid")
        if rec.kind != "personal":
            raise HttpError(403, "forbidden", "this endpoint needs a personal access token "
                            "(POST /v1/auth/login)")
        return rec

    def login(self) -> None:
        """``POST /v1/auth/login``: email + password -> a new 24-hour personal token."""
        req = parse_json_object(self.body)
        email = req_str(req, "email", max_len=320)
        password = req_str(req, "password", max_len=1024)
        store = self.server.store
        user = store.authenticate(email, password)
        if user is None:
            raise HttpError(401, "invalid-credentials", "the email or password is incorrect")
        plan = store.account_plan(user["account"]) or "free"
        now = now_s()
        _, secret = store.create_key(kind="personal", name="personal access token",
                                     account=user["account"], plan=plan, user=user["name"],
                                     expires_at=now + PERSONAL_LIFETIME_S)
        self._json(200, {
            "success": True,
            "data": {"access_token": secret, "token_type": "Bearer",
                     "expires_in": PERSONAL_LIFETIME_S},
            "message": "Successfully authenticated",
        })

    def list_business(self) -> None:
        """``GET /v1/tokens/business``: the account's business keys that are not revoked."""
        caller = self._caller()
        keys = self.server.store.active_keys(account=caller.account, kind="business")
        self._json(200, {"success": True, "data": [
            {"id": k.id, "name": k.name, "created_at": k.created_at, "expires_at": k.expires_at,
             "revoked": False} for k in keys]})

    def create_business(self) -> None:
        """``POST /v1/tokens/business`` ``{"name"}``: a new business key, secret shown once."""
        caller = self._caller()
        name = req_str(parse_json_object(self.body), "name", max_len=100)
        store = self.server.store
        plan = store.account_plan(caller.account) or caller.plan
        rec, secret = store.create_key(kind="business", name=name, account=caller.account,
                                       plan=plan, user=None, expires_at=None)
        self._json(201, {"success": True, "data": {
            "id": rec.id, "name": rec.name, "key": secret, "created_at": rec.created_at}})

    def revoke_business(self, key_id: str) -> None:
        """``DELETE /v1/tokens/business/{keyId}``: revokes one of the account's business keys."""
        caller = self._caller()
        rec = self.server.store.key_by_id(key_id)
        if rec is None or rec.kind != "business" or rec.account != caller.account:
            raise not_found(f"no business key {key_id} in this account")
        self.server.store.revoke(rec.id)
        self._json(200, {"success": True})

    def revoke_all_business(self) -> None:
        """``DELETE /v1/tokens/business``: revokes every business key of the account."""
        caller = self._caller()
        n = self.server.store.revoke_all(account=caller.account, kind="business")
        self._json(200, {"success": True, "revoked": n})

    def revoke_personal(self) -> None:
        """``DELETE /v1/tokens/personal``: revokes the calling personal token."""
        caller = self._caller()
        self.server.store.revoke(caller.id)
        self._json(200, {"success": True})

    def revoke_all_personal(self) -> None:
        """``DELETE /v1/tokens/personal/all``: revokes every personal token of the account."""
        caller = self._caller()
        n = self.server.store.revoke_all(account=caller.account, kind="personal")
        self._json(200, {"success": True, "revoked": n})

    def create_named(self) -> None:
        """``POST /v1/tokens/named`` ``{"name", "lifetime_days"}``: a PAT for Basic user:PAT."""
        caller = self._caller()
        req = parse_json_object(self.body)
        name = req_str(req, "name", max_len=100)
        days = req_int(req, "lifetime_days", lo=1, hi=MAX_NAMED_LIFETIME_DAYS)
        store = self.server.store
        rec, secret = store.create_key(
            kind="named", name=name, account=caller.account,
            plan=store.account_plan(caller.account) or caller.plan, user=caller.user,
            expires_at=now_s() + days * DAY_S)
        self._json(201, {"success": True, "data": {
            "id": rec.id, "name": rec.name, "key": secret, "user": rec.user,
            "created_at": rec.created_at, "expires_at": rec.expires_at}})

    def list_named(self) -> None:
        """``GET /v1/tokens/named``: the caller's named tokens that are not revoked."""
        caller = self._caller()
        now = time.time()
        keys = self.server.store.active_keys(account=caller.account, kind="named",
                                             user=caller.user)
        self._json(200, {"success": True, "data": [
            {"id": k.id, "name": k.name, "user": k.user, "created_at": k.created_at,
             "expires_at": k.expires_at, "expired": k.state(now) == "EXPIRED", "revoked": False}
            for k in keys]})

    def revoke_named(self, key_id: str) -> None:
        """``DELETE /v1/tokens/named/{id}``: revokes one of the caller's named tokens."""
        caller = self._caller()
        rec = self.server.store.key_by_id(key_id)
        if (rec is None or rec.kind != "named" or rec.account != caller.account
                or rec.user != caller.user):
            raise not_found(f"no named token {key_id} of this user")
        self.server.store.revoke(rec.id)
        self._json(200, {"success": True})

    # -- operator administration (--admin-token) -------------------------------------------------

    def admin_create_key(self) -> None:
        """``POST /admin/keys``: a key with a secret chosen by the caller (stored hashed)."""
        req = parse_json_object(self.body)
        secret = req_str(req, "key", max_len=4096)
        kind = req.get("kind", "business")
        if kind not in KINDS:
            raise bad_request(f"`kind` must be one of {', '.join(KINDS)}")
        key_id = opt_str(req, "id", max_len=64) or new_key_id(kind)
        if not KEY_ID_RE.fullmatch(key_id):
            raise bad_request("`id` may hold only letters, digits, '_', '.' and '-'")
        account = req_str(req, "account", max_len=100)
        user = opt_str(req, "user", max_len=100)
        if kind == "business" and user is not None:
            raise bad_request("a business key has no `user`")
        if kind != "business" and user is None:
            raise bad_request(f"a {kind} key needs a `user`")
        plan = (opt_str(req, "plan", max_len=100)
                or self.server.store.account_plan(account) or "free")
        disabled = req.get("disabled", False)
        if not isinstance(disabled, bool):
            raise bad_request("`disabled` must be a boolean")
        rec = KeyRecord(
            id=key_id, kind=kind,
            name=opt_str(req, "name", max_len=100) or key_id,
            key_hash=sha256_hex(secret), user=user,
            subject=opt_str(req, "subject", max_len=200) or user or key_id,
            account=account, plan=plan,
            scopes=parse_scopes(req["scopes"]) if req.get("scopes") is not None
            else list(DEFAULT_SCOPES[kind]),
            resources=parse_resources(req["resources"]) if req.get("resources") is not None else {},
            ratelimit=parse_ratelimit(req.get("ratelimit")),
            created_at=now_s(), expires_at=opt_int(req, "expires_at"),
            revoked_at=None, disabled=disabled)
        try:
            self.server.store.insert_key(rec)
        except Conflict as e:
            raise HttpError(409, "conflict", str(e)) from None
        self._json(201, {"data": rec.public()})

    def _admin_target(self) -> str:
        return req_str(parse_json_object(self.body), "id", max_len=64)

    def admin_revoke(self) -> None:
        """``POST /admin/revoke`` ``{"id"}``: revokes a key (a feed entry the first time)."""
        key_id = self._admin_target()
        if self.server.store.key_by_id(key_id) is None:
            raise not_found(f"no key {key_id}")
        newly = self.server.store.revoke(key_id)
        self._json(200, {"success": True, "revoked": newly})

    def admin_disable(self) -> None:
        """``POST /admin/disable`` ``{"id", "disabled": true|false}``: (re-)enables a key."""
        req = parse_json_object(self.body)
        key_id = req_str(req, "id", max_len=64)
        disabled = req.get("disabled", True)
        if not isinstance(disabled, bool):
            raise bad_request("`disabled` must be a boolean")
        rec = self.server.store.set_disabled(key_id, disabled)
        if rec is None:
            raise not_found(f"no key {key_id}")
        self._json(200, {"success": True, "data": rec.public()})


def route(method: str, path: str, action: str, admin: bool = False) -> Route:
    """A route for ``METHOD path`` (a full-match regex) answered by ``Handler.<action>``."""
    return Route(method, re.compile(path), action, admin)


KEY_ID_PARAM = r"(?P<key_id>[A-Za-z0-9_.-]{1,64})"
Handler.routes = [
    # contract v1, called by keygate
    route("POST", r"/v1/keys/verify", "verify"),
    route("GET", r"/v1/keys/revocations", "revocations"),
    # management, reached through keygate
    route("POST", r"/v1/auth/login", "login"),
    route("GET", r"/v1/tokens/business", "list_business"),
    route("POST", r"/v1/tokens/business", "create_business"),
    route("DELETE", r"/v1/tokens/business", "revoke_all_business"),
    route("DELETE", r"/v1/tokens/business/" + KEY_ID_PARAM, "revoke_business"),
    route("DELETE", r"/v1/tokens/personal", "revoke_personal"),
    route("DELETE", r"/v1/tokens/personal/all", "revoke_all_personal"),
    route("GET", r"/v1/tokens/named", "list_named"),
    route("POST", r"/v1/tokens/named", "create_named"),
    route("DELETE", r"/v1/tokens/named/" + KEY_ID_PARAM, "revoke_named"),
    # operator administration, only with --admin-token
    route("POST", r"/admin/keys", "admin_create_key", admin=True),
    route("POST", r"/admin/revoke", "admin_revoke", admin=True),
    route("POST", r"/admin/disable", "admin_disable", admin=True),
]


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None, *,
         server_class: type[KeyServiceServer] = KeyServiceServer) -> int:
    """Parses the command line, opens the database and serves until SIGTERM or Ctrl-C."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8081, help="TCP port (0: any free port)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    ap.add_argument("--db", required=True, help="SQLite database file (created if missing)")
    ap.add_argument("--seed-demo", action="store_true", help="create the demo accounts and keys")
    ap.add_argument("--admin-token", help="enable the /admin endpoints (import, revoke, disable)")
    ap.add_argument("--verbose", action="store_true", help="log every request line to stderr")
    args = ap.parse_args(argv)
    if args.admin_token is not None and not args.admin_token:
        ap.error("--admin-token must not be empty")

    store = Store(args.db)
    if args.seed_demo:
        store.seed_demo()
    srv = server_class((args.host, args.port), store, admin_token=args.admin_token,
                       verbose=args.verbose)
    # SIGTERM ends serve_forever like Ctrl-C does, so the database is closed cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"keyservice listening on http://{args.host}:{srv.server_port} (db {args.db})",
          file=sys.stderr, flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
