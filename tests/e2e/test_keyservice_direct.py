"""The key service (envoy/keyservice), tested directly over HTTP on loopback (no Envoy).

Each service is a real subprocess on a port it picks itself (`--port 0`, read back from its
"listening" line) with a database in a temporary directory: the product for everything it does;
the test-only fault proxy in front of it (`tests/services/faultproxy.py`) for the fault modes and
counters (and to show that they are absent from the product). Where keygate would sit in front of
the management API, `identity()` does what keygate does: verify the key, then pass the verdict on
as `x-keygate-*` headers.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness import FAULT_PROXY, key_service_bin, wait_listening, wait_until

ROOT = Path(__file__).resolve().parents[2]
SERVICE_SRC = ROOT / "envoy" / "keyservice" / "src"  # the product's source
ADMIN = "test-admin-token"
ADMIN_HDR = {"x-admin-token": ADMIN}

DEMO_ACME = "kgb_demo_acme_business_0001"
DEMO_GLOBEX = "kgb_demo_globex_business_0001"
DEMO_ALICE_PAT = "kgn_demo_alice_pat_0001"
DAY = 86_400


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Service:
    """One keyservice subprocess; `stop()` then `start()` again reuses the same database."""

    def __init__(self, workdir: Path, *, seed: bool = True, admin: bool = True,
                 faults: bool = False, extra: list[str] | None = None) -> None:
        self.db = workdir / "keys.db"
        self.log = workdir / "keyservice.log"
        self.args = ["--db", str(self.db), "serve", "--port", "0"] + (["--seed-demo"] if seed else [])
        self.args += extra or []
        self.admin_token = ADMIN if admin or faults else None
        self.faults = faults
        self.proc: subprocess.Popen[bytes] | None = None
        self.proxy: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout: float = 15) -> Service:
        self.log.write_text("")
        env = {k: v for k, v in os.environ.items() if k != "KEYSERVICE_ADMIN_TOKEN"}
        if self.admin_token:
            env["KEYSERVICE_ADMIN_TOKEN"] = self.admin_token
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([str(key_service_bin()), *self.args],
                                         stdout=subprocess.DEVNULL, stderr=log, env=env)
        self.port = wait_listening(self.proc, self.log, "keyservice", timeout=timeout)
        if self.faults:
            with self.log.open("ab") as log:
                self.proxy = subprocess.Popen(
                    [sys.executable, str(FAULT_PROXY), "--port", "0", "--backend",
                     f"127.0.0.1:{self.port}", "--admin-token", ADMIN],
                    stdout=subprocess.DEVNULL, stderr=log)
            self.port = wait_listening(self.proxy, self.log, "faultproxy", timeout=timeout)
        return self

    def stop(self) -> None:
        for p in (self.proxy, self.proc):
            if p and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             timeout: float = 10) -> Resp:
        """One request on a fresh connection; `body` is JSON-encoded unless it is bytes."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers=headers or {})
            r = conn.getresponse()
            return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    def verify(self, key: str, user: str | None = None) -> dict[str, Any]:
        r = self.call("POST", "/v1/keys/verify", {"key": key, "user": user})
        assert r.status == 200, r.body
        assert r.headers["content-type"] == "application/json"
        return r.json()

    def admin(self, method: str, path: str, body: Any = None) -> Resp:
        return self.call(method, path, body, ADMIN_HDR)

    def add_key(self, key: str, **fields: Any) -> dict[str, Any]:
        r = self.admin("POST", "/admin/keys", {"key": key, **fields})
        assert r.status == 201, r.body
        return r.json()["data"]

    def identity(self, key: str, user: str | None = None) -> dict[str, str]:
        """The headers keygate would set after verifying `key`."""
        v = self.verify(key, user)
        assert v["valid"], v
        return {"x-keygate-key-id": v["key_id"], "x-keygate-subject": v["subject"],
                "x-keygate-account": v["account"], "x-keygate-plan": v["plan"],
                "x-keygate-scopes": " ".join(v["scopes"])}

    def login(self, email: str, password: str) -> str:
        r = self.call("POST", "/v1/auth/login", {"email": email, "password": password})
        assert r.status == 200, r.body
        return r.json()["data"]["access_token"]

    def cursor(self) -> int:
        r = self.call("GET", "/v1/keys/revocations")
        assert r.status == 200
        return r.json()["cursor"]

    def feed(self, since: int, **params: int) -> dict[str, Any]:
        qs = "".join(f"&{k}={v}" for k, v in params.items())
        r = self.call("GET", f"/v1/keys/revocations?since={since}{qs}")
        assert r.status == 200, r.body
        return r.json()


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def unique(prefix: str) -> str:
    return f"{prefix}{time.time_ns()}"


def assert_problem(r: Resp, status: int, slug: str | None = None) -> dict[str, Any]:
    assert r.status == status, r.body
    assert r.headers["content-type"] == "application/problem+json"
    p = r.json()
    assert {"type", "title", "status", "detail"} <= set(p) and p["status"] == status
    if slug:
        assert p["type"] == f"urn:keyservice:problem:{slug}"
    return p


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    s = Service(tmp_path_factory.mktemp("keyservice")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The product behind the test-only fault proxy (counters and fault modes)."""
    s = Service(tmp_path_factory.mktemp("keyservice-faults"), faults=True).start()
    yield s
    s.stop()


@pytest.fixture
def faults(faulty: Service) -> Iterator[Service]:
    """The test-only service, restored to normal behaviour after a test that injects faults."""
    yield faulty
    assert faulty.admin("POST", "/admin/mode", {"verify": "ok", "revocations": "ok"}).status == 200


# ---------------------------------------------------------------------------------------------
# The verify contract
# ---------------------------------------------------------------------------------------------

def test_verify_valid_business_key_carries_the_identity(svc: Service) -> None:
    assert svc.verify(DEMO_ACME) == {
        "contract": 1, "valid": True, "code": "VALID", "key_id": "bk_demo_acme",
        "subject": "bk_demo_acme", "account": "acme", "plan": "free", "scopes": ["read", "write"],
        "expires_at": None, "ratelimit": None, "resources": {"aggregator": ["agg-acme-1"]},
        "cache_ttl_s": 60,
    }
    globex = svc.verify(DEMO_GLOBEX)
    assert (globex["account"], globex["plan"]) == ("globex", "professional")


def test_verify_unknown_key_is_not_found(svc: Service) -> None:
    assert svc.verify("kgb_no_such_key") == {
        "contract": 1, "valid": False, "code": "NOT_FOUND", "cache_ttl_s": 10}


def test_user_rules(svc: Service) -> None:
    # A named PAT: its own user (Basic) or no user (Bearer); any other user is NOT_FOUND.
    pat = svc.verify(DEMO_ALICE_PAT, "alice")
    assert pat["code"] == "VALID" and pat["subject"] == "alice" and pat["account"] == "acme"
    assert 0 < pat["expires_at"] - time.time() <= 90 * DAY
    assert svc.verify(DEMO_ALICE_PAT)["code"] == "VALID"
    assert svc.verify(DEMO_ALICE_PAT, "bob")["code"] == "NOT_FOUND"
    assert svc.verify(DEMO_ALICE_PAT, "")["code"] == "NOT_FOUND"
    # A business key has no user: presented with any user at all it is NOT_FOUND.
    for user in ("acme", "bk_demo_acme", "alice", ""):
        assert svc.verify(DEMO_ACME, user) == {
            "contract": 1, "valid": False, "code": "NOT_FOUND", "cache_ttl_s": 10}
    # A personal token from login behaves like a named PAT.
    token = svc.login("alice@example.com", "alice-password")
    assert svc.verify(token, "alice")["code"] == "VALID"
    assert svc.verify(token)["code"] == "VALID"
    assert svc.verify(token, "bob")["code"] == "NOT_FOUND"


def test_revoked_disabled_expired_and_their_precedence(svc: Service) -> None:
    now = int(time.time())
    secrets = {name: unique(f"kgb_test_{name}_") for name in
               ("revoked", "disabled", "expired", "soon", "both", "later_disabled")}
    svc.add_key(secrets["revoked"], id=unique("bk_rev"), account="t1", plan="basic")
    svc.add_key(secrets["disabled"], id=unique("bk_dis"), account="t1", disabled=True)
    svc.add_key(secrets["expired"], id=unique("bk_exp"), account="t1", expires_at=now - 1)
    svc.add_key(secrets["soon"], id=unique("bk_soon"), account="t1", expires_at=now + 30)
    both = svc.add_key(secrets["both"], account="t1", disabled=True)
    later = svc.add_key(secrets["later_disabled"], account="t1")

    assert svc.verify(secrets["revoked"])["code"] == "VALID"
    rev_id = svc.verify(secrets["revoked"])["key_id"]
    assert svc.admin("POST", "/admin/revoke", {"id": rev_id}).json()["revoked"] is True
    assert svc.admin("POST", "/admin/revoke", {"id": both["id"]}).status == 200
    assert svc.admin("POST", "/admin/disable", {"id": later["id"]}).status == 200

    def refusal(code: str, key_id: str) -> dict[str, Any]:
        return {"contract": 1, "valid": False, "code": code, "key_id": key_id, "cache_ttl_s": 10}

    assert svc.verify(secrets["revoked"]) == refusal("REVOKED", rev_id)
    disabled = svc.verify(secrets["disabled"])
    assert disabled["code"] == "DISABLED" and set(disabled) == set(refusal("", ""))
    assert svc.verify(secrets["expired"])["code"] == "EXPIRED"
    assert svc.verify(secrets["both"]) == refusal("REVOKED", both["id"])
    assert svc.verify(secrets["later_disabled"]) == refusal("DISABLED", later["id"])
    soon = svc.verify(secrets["soon"])
    assert soon["code"] == "VALID" and soon["expires_at"] == now + 30
    assert 1 <= soon["cache_ttl_s"] <= 30  # never cached past the key's own expiry
    # Re-enabling brings a disabled key back.
    assert svc.admin("POST", "/admin/disable", {"id": later["id"], "disabled": False}).status == 200
    assert svc.verify(secrets["later_disabled"])["code"] == "VALID"


def test_admin_key_fields_round_trip(svc: Service) -> None:
    key = unique("kgp_test_carol_")
    svc.add_key(key, id=unique("pk_carol"), kind="personal", account="initech",
                plan="enterprise", user="carol", scopes=["read"],
                ratelimit={"requests": 5}, resources={"aggregator": ["a1", "a2"]})
    v = svc.verify(key, "carol")
    assert v["subject"] == "carol" and v["plan"] == "enterprise" and v["scopes"] == ["read"]
    assert v["ratelimit"] == {"requests": 5, "window_s": 60, "burst": 5}
    assert v["resources"] == {"aggregator": ["a1", "a2"]}
    dup = svc.admin("POST", "/admin/keys", {"key": key, "account": "x"})
    assert_problem(dup, 409, "conflict")
    for bad in ({"key": "k1", "account": "x", "user": "u"},                # business with a user
                {"key": "k2", "account": "x", "kind": "named"},              # named without one
                {"key": "k3", "account": "x", "kind": "master"},
                {"key": "k4", "account": "x", "resources": {"a": "b"}},
                {"key": "k5", "account": "x", "ratelimit": {"requests": 0}},
                {"key": "k6", "account": "x", "scopes": "read"},
                {"key": "k7", "account": "x", "expires_at": "tomorrow"},
                {"account": "x"}):
        assert_problem(svc.admin("POST", "/admin/keys", bad), 400, "bad-request")


def test_verify_bad_requests_answer_400_json_and_the_server_lives_on(svc: Service) -> None:
    for body in (b"not json", b"", b"[1,2]", b'{"user":"alice"}', b'{"key":""}',
                 b'{"key":42}', b'{"key":"k","user":7}', b"\xff\xfe"):
        r = svc.call("POST", "/v1/keys/verify", body)
        assert r.status == 400, body
        assert r.headers["content-type"] == "application/json"
        assert set(r.json()) == {"error"}
    assert svc.verify(DEMO_ACME)["code"] == "VALID"


# ---------------------------------------------------------------------------------------------
# The revocation feed
# ---------------------------------------------------------------------------------------------

def test_revocation_feed_cursor_semantics(svc: Service) -> None:
    start = svc.cursor()
    assert svc.feed(-1) == {"contract": 1, "cursor": start, "revoked": [], "more": False}
    assert svc.feed(start) == {"contract": 1, "cursor": start, "revoked": [], "more": False}

    keys = [(unique("kgb_feed_a_"), None), (unique("kgn_feed_b_"), "dave"),
            (unique("kgb_feed_c_"), None)]
    ids = []
    for secret, user in keys:
        kind = "named" if user else "business"
        ids.append(svc.add_key(secret, kind=kind, user=user, account="feed")["id"])
    for key_id in ids:
        assert svc.admin("POST", "/admin/revoke", {"id": key_id}).json()["revoked"] is True
    # Revoking again adds nothing to the feed.
    assert svc.admin("POST", "/admin/revoke", {"id": ids[0]}).json()["revoked"] is False
    assert svc.cursor() == start + 3

    expected = [{"key_hash": sha(s), "user": u, "key_id": i}
                for (s, u), i in zip(keys, ids, strict=True)]
    assert svc.feed(start) == {"contract": 1, "cursor": start + 3, "revoked": expected,
                               "more": False}
    page1 = svc.feed(start, limit=2)
    assert page1["revoked"] == expected[:2] and page1["more"] is True
    page2 = svc.feed(page1["cursor"], limit=2)
    assert page2["revoked"] == expected[2:] and page2["more"] is False
    assert page2["cursor"] == start + 3
    assert svc.feed(start + 3)["revoked"] == []

    # Disabling is announced too (caches must drop the key).
    secret = unique("kgb_feed_d_")
    key_id = svc.add_key(secret, account="feed")["id"]
    svc.admin("POST", "/admin/disable", {"id": key_id})
    assert svc.feed(start + 3)["revoked"] == [{"key_hash": sha(secret), "user": None,
                                               "key_id": key_id}]

    for bad in ("abc", "-2", "1.5", "", "99999999999999999999"):
        r = svc.call("GET", f"/v1/keys/revocations?since={bad}")
        assert r.status == 400 and "error" in r.json(), bad
    assert svc.call("GET", "/v1/keys/revocations?since=0&limit=1001").status == 400


def test_revocation_feed_pages_hold_at_most_1000(tmp_path: Path) -> None:
    s = Service(tmp_path, seed=False, admin=False).start()
    try:
        with sqlite3.connect(s.db) as db:
            db.executemany("INSERT INTO revocations(key_id, key_hash, username, reason, recorded_at)"
                           " VALUES (?, ?, NULL, 'test', 0)",
                           [(f"bk_{i}", sha(str(i))) for i in range(1203)])
        assert s.cursor() == 1203
        first = s.feed(0)
        assert len(first["revoked"]) == 1000 and first["more"] is True
        assert first["cursor"] == 1000 and first["revoked"][0]["key_id"] == "bk_0"
        rest = s.feed(first["cursor"])
        assert len(rest["revoked"]) == 203 and rest["more"] is False and rest["cursor"] == 1203
        # Without --admin-token there are no admin endpoints at all.
        for path in ("/admin/keys", "/admin/revoke", "/admin/disable"):
            assert_problem(s.call("POST", path, {"id": "bk_0"}, headers=ADMIN_HDR), 404)
    finally:
        s.stop()


# ---------------------------------------------------------------------------------------------
# Management API
# ---------------------------------------------------------------------------------------------

def test_login(svc: Service) -> None:
    r = svc.call("POST", "/v1/auth/login", {"email": "Alice@Example.com",
                                            "password": "alice-password"})
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    token = body["data"]["access_token"]
    assert token.startswith("kgp_") and len(token) > 40
    assert body == {"success": True, "data": {"access_token": token, "token_type": "Bearer",
                                              "expires_in": 86400},
                    "message": "Successfully authenticated"}
    v = svc.verify(token)
    assert v["key_id"].startswith("pk_") and v["account"] == "acme" and v["plan"] == "free"
    assert v["scopes"] == ["read", "write", "tokens"]
    assert abs(v["expires_at"] - (time.time() + DAY)) < 10

    for creds in ({"email": "alice@example.com", "password": "wrong"},
                  {"email": "nobody@example.com", "password": "alice-password"}):
        assert_problem(svc.call("POST", "/v1/auth/login", creds), 401, "invalid-credentials")
    for bad in ({"email": "alice@example.com"}, {"email": 1, "password": "x"}, b"{", b"[]"):
        assert_problem(svc.call("POST", "/v1/auth/login", bad), 400, "bad-request")


def test_business_keys_create_list_revoke(svc: Service) -> None:
    me = svc.identity(svc.login("alice@example.com", "alice-password"))
    listed = svc.call("GET", "/v1/tokens/business", headers=me)
    assert listed.status == 200
    ids = [k["id"] for k in listed.json()["data"]]
    assert "bk_demo_acme" in ids and "bk_demo_globex" not in ids

    r = svc.call("POST", "/v1/tokens/business", {"name": "ci pipeline"}, headers=me)
    assert r.status == 201, r.body
    data = r.json()["data"]
    assert set(data) == {"id", "name", "key", "created_at"} and data["name"] == "ci pipeline"
    assert data["key"].startswith("kgb_") and data["id"].startswith("bk_")
    v = svc.verify(data["key"])
    assert (v["code"], v["key_id"], v["subject"], v["account"], v["plan"], v["scopes"]) == (
        "VALID", data["id"], data["id"], "acme", "free", ["read", "write"])
    assert v["expires_at"] is None

    entries = svc.call("GET", "/v1/tokens/business", headers=me).json()["data"]
    mine = [e for e in entries if e["id"] == data["id"]]
    assert mine == [{"id": data["id"], "name": "ci pipeline", "created_at": data["created_at"],
                     "expires_at": None, "revoked": False}]
    assert data["key"] not in json.dumps(entries) and sha(data["key"]) not in json.dumps(entries)

    assert svc.call("DELETE", f"/v1/tokens/business/{data['id']}", headers=me).json() == {
        "success": True}
    assert svc.verify(data["key"])["code"] == "REVOKED"
    ids = [k["id"] for k in svc.call("GET", "/v1/tokens/business", headers=me).json()["data"]]
    assert data["id"] not in ids
    # Another account's key, or no such key: 404.
    assert_problem(svc.call("DELETE", "/v1/tokens/business/bk_demo_globex", headers=me), 404,
                   "not-found")
    assert_problem(svc.call("DELETE", "/v1/tokens/business/bk_nope", headers=me), 404)
    assert svc.verify(DEMO_GLOBEX)["code"] == "VALID"
    for bad in ({}, {"name": ""}, {"name": 5}, b"nope"):
        assert_problem(svc.call("POST", "/v1/tokens/business", bad, headers=me), 400)


def test_business_keys_revoke_all(svc: Service) -> None:
    account = unique("initech")
    token = unique("kgp_t_")
    svc.add_key(token, kind="personal", user="peter", account=account, plan="basic")
    me = svc.identity(token)
    made = [svc.call("POST", "/v1/tokens/business", {"name": f"k{i}"}, headers=me).json()["data"]
            for i in range(3)]
    assert [svc.verify(k["key"])["plan"] for k in made] == ["basic"] * 3
    start = svc.cursor()
    r = svc.call("DELETE", "/v1/tokens/business", headers=me)
    assert r.status == 200 and r.json() == {"success": True, "revoked": 3}
    assert [svc.verify(k["key"])["code"] for k in made] == ["REVOKED"] * 3
    assert svc.call("GET", "/v1/tokens/business", headers=me).json()["data"] == []
    assert {e["key_id"] for e in svc.feed(start)["revoked"]} == {k["id"] for k in made}
    assert svc.verify(DEMO_ACME)["code"] == "VALID"  # other accounts untouched


def test_personal_tokens_revoke_current_and_all(svc: Service) -> None:
    t1 = svc.login("bob@example.com", "bob-password")
    t2 = svc.login("bob@example.com", "bob-password")
    alice = svc.login("alice@example.com", "alice-password")
    r = svc.call("DELETE", "/v1/tokens/personal", headers=svc.identity(t1))
    assert r.status == 200 and r.json() == {"success": True}
    assert svc.verify(t1)["code"] == "REVOKED" and svc.verify(t2)["code"] == "VALID"

    t3 = svc.login("bob@example.com", "bob-password")
    start = svc.cursor()
    r = svc.call("DELETE", "/v1/tokens/personal/all", headers=svc.identity(t2, "bob"))
    assert r.status == 200 and r.json()["success"] is True and r.json()["revoked"] >= 2
    assert svc.verify(t2)["code"] == "REVOKED" and svc.verify(t3)["code"] == "REVOKED"
    assert svc.verify(alice)["code"] == "VALID"  # another account
    feed = svc.feed(start)["revoked"]
    assert {"key_hash": sha(t3), "user": "bob", "key_id": svc.verify(t3)["key_id"]} in feed


def test_management_needs_a_live_personal_token(svc: Service) -> None:
    for path in ("/v1/tokens/business", "/v1/tokens/named"):
        assert_problem(svc.call("GET", path), 401, "unauthorized")
        assert_problem(svc.call("GET", path, headers={"x-keygate-key-id": "bk_demo_acme"}), 401)
        for key, user in ((DEMO_ACME, None), (DEMO_ALICE_PAT, "alice")):
            assert_problem(svc.call("GET", path, headers=svc.identity(key, user)), 403, "forbidden")
    token = svc.login("alice@example.com", "alice-password")
    me = svc.identity(token)
    forged = {**me, "x-keygate-account": "globex"}
    assert_problem(svc.call("GET", "/v1/tokens/business", headers=forged), 401)
    svc.call("DELETE", "/v1/tokens/personal", headers=me)
    assert_problem(svc.call("GET", "/v1/tokens/business", headers=me), 401)
    assert_problem(svc.call("PUT", "/v1/tokens/business", headers=me), 405, "method-not-allowed")
    assert_problem(svc.call("GET", "/v1/nothing/here"), 404, "not-found")


def test_named_pats(svc: Service) -> None:
    me = svc.identity(svc.login("alice@example.com", "alice-password"))
    r = svc.call("POST", "/v1/tokens/named", {"name": "laptop", "lifetime_days": 90}, headers=me)
    assert r.status == 201, r.body
    pat = r.json()["data"]
    assert pat["key"].startswith("kgn_") and pat["id"].startswith("nk_") and pat["user"] == "alice"
    assert abs(pat["expires_at"] - (time.time() + 90 * DAY)) < 10
    v = svc.verify(pat["key"], "alice")
    assert v["code"] == "VALID" and v["key_id"] == pat["id"] and v["subject"] == "alice"
    assert v["expires_at"] == pat["expires_at"] and v["scopes"] == ["read", "write"]
    one_day = svc.call("POST", "/v1/tokens/named", {"name": "d", "lifetime_days": 1}, headers=me)
    assert one_day.status == 201

    for bad in ({"name": "x", "lifetime_days": 91}, {"name": "x", "lifetime_days": 0},
                {"name": "x", "lifetime_days": "30"}, {"name": "x", "lifetime_days": True},
                {"name": "x", "lifetime_days": 30.5}, {"name": "x"}, {"lifetime_days": 30}):
        assert_problem(svc.call("POST", "/v1/tokens/named", bad, headers=me), 400, "bad-request")

    listed = svc.call("GET", "/v1/tokens/named", headers=me).json()["data"]
    assert {"nk_demo_alice", pat["id"]} <= {t["id"] for t in listed}
    assert all("key" not in t and "key_hash" not in t for t in listed)

    # bob can neither see nor revoke alice's tokens.
    bob = svc.identity(svc.login("bob@example.com", "bob-password"))
    assert pat["id"] not in {t["id"] for t in svc.call("GET", "/v1/tokens/named", headers=bob)
                             .json()["data"]}
    assert_problem(svc.call("DELETE", f"/v1/tokens/named/{pat['id']}", headers=bob), 404)
    assert svc.call("DELETE", f"/v1/tokens/named/{pat['id']}", headers=me).json() == {
        "success": True}
    assert svc.verify(pat["key"], "alice") == {"contract": 1, "valid": False, "code": "REVOKED",
                                               "key_id": pat["id"], "cache_ttl_s": 10}
    assert pat["id"] not in {t["id"] for t in svc.call("GET", "/v1/tokens/named", headers=me)
                             .json()["data"]}


# ---------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------

def test_data_survives_a_restart_and_seeding_restores_the_demo(tmp_path: Path) -> None:
    s = Service(tmp_path).start()
    try:
        known = unique("kgb_restart_")
        svc_id = s.add_key(known, account="acme")["id"]
        me = s.identity(s.login("bob@example.com", "bob-password"))
        made = s.call("POST", "/v1/tokens/business", {"name": "persist"}, headers=me).json()["data"]
        gone = unique("kgb_gone_")
        gone_id = s.add_key(gone, account="acme")["id"]
        s.admin("POST", "/admin/revoke", {"id": gone_id})
        s.admin("POST", "/admin/revoke", {"id": "bk_demo_acme"})  # a demo key revoked in this run
        assert s.verify(DEMO_ACME)["code"] == "REVOKED"
        cursor = s.cursor()
        pat_expiry = s.verify(DEMO_ALICE_PAT)["expires_at"]
        with sqlite3.connect(s.db) as db:
            rows = db.execute("SELECT COUNT(*) FROM keys").fetchone()[0]

        s.stop()
        assert s.proc is not None and s.proc.returncode == 0
        s.start()

        assert s.verify(known)["key_id"] == svc_id
        assert s.verify(made["key"])["key_id"] == made["id"]
        assert s.verify(gone)["code"] == "REVOKED"
        assert s.cursor() == cursor
        # the demo is restored: its revoked key works again, its PAT's 90 days start anew
        assert s.verify(DEMO_ACME)["valid"] is True
        assert s.verify(DEMO_ALICE_PAT)["expires_at"] >= pat_expiry
        with sqlite3.connect(s.db) as db:
            assert db.execute("SELECT COUNT(*) FROM keys").fetchone()[0] == rows
            assert db.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 2
        assert s.login("alice@example.com", "alice-password").startswith("kgp_")
    finally:
        s.stop()


def test_no_secret_or_password_is_stored_or_logged(svc: Service) -> None:
    me = svc.identity(svc.login("alice@example.com", "alice-password"))
    created = [
        svc.login("bob@example.com", "bob-password"),
        svc.call("POST", "/v1/tokens/business", {"name": "x"}, headers=me).json()["data"]["key"],
        svc.call("POST", "/v1/tokens/named", {"name": "y", "lifetime_days": 3},
                 headers=me).json()["data"]["key"],
    ]
    known = unique("kgb_plaintext_probe_")
    svc.add_key(known, account="acme")
    secrets = [*created, known, DEMO_ACME, DEMO_GLOBEX, DEMO_ALICE_PAT,
               "alice-password", "bob-password"]

    files = [p for p in svc.db.parent.iterdir() if p.name.startswith(svc.db.name)]
    stored = b"".join(p.read_bytes() for p in files)
    assert sha(known).encode() in stored  # the right files: the hash is there ...
    for secret in secrets:
        assert secret.encode() not in stored, secret  # ... the secret is not
    logged = svc.log.read_bytes()
    assert all(secret.encode() not in logged for secret in secrets)
    with sqlite3.connect(svc.db) as db:
        hashes = [h for (h,) in db.execute("SELECT key_hash FROM keys")]
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes)


# ---------------------------------------------------------------------------------------------
# HTTP behaviour
# ---------------------------------------------------------------------------------------------

def test_keep_alive_and_chunked_bodies(svc: Service) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=5)
    try:
        sock_ids = set()
        for method, path, body, status in [
            ("POST", "/v1/keys/verify", json.dumps({"key": DEMO_ACME}).encode(), 200),
            ("GET", "/nowhere", b"some ignored body", 404),
            ("POST", "/v1/keys/verify", b"{broken", 400),
            ("GET", "/v1/keys/revocations?since=0", None, 200),
            ("POST", "/v1/auth/login", b"{}", 400),
        ]:
            conn.request(method, path, body=body)
            r = conn.getresponse()
            data = r.read()
            assert r.status == status, (path, data)
            assert r.getheader("content-length") == str(len(data))
            assert r.getheader("connection") is None
            sock_ids.add(id(conn.sock))
        assert len(sock_ids) == 1  # one TCP connection served them all

        def chunks() -> Iterator[bytes]:
            yield b'{"key": "'
            yield DEMO_ACME.encode()
            yield b'"}'
        conn.request("POST", "/v1/keys/verify", body=chunks(), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["code"] == "VALID"
    finally:
        conn.close()


def test_malformed_requests_do_not_hurt_the_server(svc: Service) -> None:
    for raw in (b"NONSENSE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                b"POST /v1/keys/verify HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                b"POST /v1/keys/verify HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", svc.port), timeout=5) as s:
            s.sendall(raw)
            reply = s.recv(65536)
        assert re.match(rb"HTTP/1\.[01] [45]\d\d ", reply), (raw, reply[:80])
    assert svc.verify(DEMO_ACME)["code"] == "VALID"


# ---------------------------------------------------------------------------------------------
# Administration; test support: stats, faults
# ---------------------------------------------------------------------------------------------

def test_admin_needs_the_token(svc: Service, faulty: Service) -> None:
    for headers in ({}, {"x-admin-token": "wrong"}):
        for path in ("/admin/keys", "/admin/revoke", "/admin/disable"):
            assert_problem(svc.call("POST", path, {"key": "k", "account": "a", "id": "bk_demo_acme"},
                                    headers=headers), 403, "forbidden")
        assert_problem(faulty.call("GET", "/admin/stats", headers=headers), 403, "forbidden")
        assert_problem(faulty.call("POST", "/admin/mode", {"verify": "reset"}, headers=headers), 403)
    assert_problem(svc.admin("POST", "/admin/revoke", {"id": "no-such-key"}), 404, "not-found")
    assert faulty.call("GET", "/admin/stats", headers=ADMIN_HDR).status == 200


def test_the_product_has_no_test_support(svc: Service) -> None:
    """Counters and fault modes live only in tests/services/faultproxy.py."""
    for method, path, body in [("GET", "/admin/stats", None), ("POST", "/admin/reset-stats", None),
                               ("GET", "/admin/mode", None), ("POST", "/admin/mode", {"verify": "reset"})]:
        assert_problem(svc.admin(method, path, body), 404, "not-found")
    assert svc.verify(DEMO_ACME)["code"] == "VALID"
    source = "".join(p.read_text() for p in SERVICE_SRC.rglob("*.rs"))
    for word in ("Faults", "fault mode", "anyuser", '"late:', '"slow:', "/admin/stats", "/admin/mode"):
        assert word not in source, word


def test_fault_modes(faults: Service) -> None:
    svc = faults
    for bad in ({"verify": "explode"}, {"verify": "slow:abc"}, {"verify": "status:99"},
                {"login": "ok"}, {}):
        assert_problem(svc.admin("POST", "/admin/mode", bad), 400)

    svc.admin("POST", "/admin/mode", {"verify": "slow:0.4"})
    t = time.monotonic()
    assert svc.verify(DEMO_ACME)["code"] == "VALID"
    assert time.monotonic() - t >= 0.4

    svc.admin("POST", "/admin/mode", {"verify": "status:500"})
    r = svc.call("POST", "/v1/keys/verify", {"key": DEMO_ACME})
    assert r.status == 500 and len(r.body) < 200

    svc.admin("POST", "/admin/mode", {"verify": "garbage"})
    r = svc.call("POST", "/v1/keys/verify", {"key": DEMO_ACME})
    assert r.status == 200
    with pytest.raises(ValueError):
        json.loads(r.body)

    svc.admin("POST", "/admin/mode", {"verify": "huge"})
    r = svc.call("POST", "/v1/keys/verify", {"key": DEMO_ACME})
    assert r.status == 200 and len(r.body) == 5 * 1024 * 1024

    svc.admin("POST", "/admin/mode", {"verify": "reset"})
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        svc.call("POST", "/v1/keys/verify", {"key": DEMO_ACME})

    # Modes touch only their endpoint: the feed and the rest still work.
    assert svc.call("GET", "/v1/keys/revocations").status == 200
    assert svc.call("POST", "/v1/auth/login", {"email": "x@y", "password": "z"}).status == 401
    assert svc.admin("GET", "/admin/mode").json() == {"verify": "reset", "revocations": "ok"}

    svc.admin("POST", "/admin/mode", {"verify": "ok", "revocations": "status:503"})
    assert svc.call("GET", "/v1/keys/revocations?since=0").status == 503
    assert svc.verify(DEMO_ACME)["code"] == "VALID"
    svc.admin("POST", "/admin/mode", {"revocations": "garbage"})
    with pytest.raises(ValueError):
        svc.call("GET", "/v1/keys/revocations?since=0").json()
    svc.admin("POST", "/admin/mode", {"revocations": "reset"})
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        svc.call("GET", "/v1/keys/revocations")


def test_stats_count_every_call_whatever_the_mode(faults: Service) -> None:
    svc = faults
    assert svc.admin("POST", "/admin/reset-stats").json() == {"verify_calls": 0,
                                                              "revocation_calls": 0}
    svc.verify(DEMO_ACME)
    svc.verify("nope")
    svc.call("POST", "/v1/keys/verify", b"not json")
    svc.cursor()
    svc.admin("POST", "/admin/mode", {"verify": "reset", "revocations": "status:500"})
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        svc.call("POST", "/v1/keys/verify", {"key": DEMO_ACME})
    svc.call("GET", "/v1/keys/revocations?since=0")
    svc.call("POST", "/v1/auth/login", {"email": "x@y", "password": "z"})  # counted nowhere
    assert svc.admin("GET", "/admin/stats").json() == {"verify_calls": 4, "revocation_calls": 2}
    svc.admin("POST", "/admin/reset-stats")
    assert svc.admin("GET", "/admin/stats").json() == {"verify_calls": 0, "revocation_calls": 0}


# ---------------------------------------------------------------------------------------------
# Attacks: guessing passwords, filling tables, numbers from clients
# ---------------------------------------------------------------------------------------------

def test_login_throttle_per_email_then_per_client(tmp_path: Path) -> None:
    """Ten failures for one email lock that email (even the right password answers 429, with
    Retry-After) while other emails still log in; the throttle is keyed by the email's hash and
    the client address, not by anything the attacker can vary for free."""
    s = Service(tmp_path).start()
    try:
        for _ in range(10):
            assert_problem(s.call("POST", "/v1/auth/login", {"email": "alice@example.com", "password": "guess"}),
                           401, "invalid-credentials")
        for pw in ("guess", "alice-password"):
            r = s.call("POST", "/v1/auth/login", {"email": "ALICE@example.com", "password": pw})
            assert_problem(r, 429, "login-throttled")
            assert 1 <= int(r.headers["retry-after"]) <= 900
        assert s.login("bob@example.com", "bob-password").startswith("kgp_")
        # one client spraying many emails: its own budget (100 failures) runs out too
        for i in range(90):
            s.call("POST", "/v1/auth/login", {"email": f"user{i}@example.com", "password": "x"})
        assert_problem(s.call("POST", "/v1/auth/login", {"email": "bob@example.com", "password": "bob-password"}),
                       429, "login-throttled")
        assert not re.search(rb"alice-password|bob-password|guess", s.log.read_bytes())
    finally:
        s.stop()


def test_bounded_numbers_and_key_counts(tmp_path: Path) -> None:
    s = Service(tmp_path, extra=["--max-keys-per-account", "3", "--max-lifetime-days", "30"]).start()
    try:
        me = s.identity(s.login("alice@example.com", "alice-password"))
        # the seeded acme key, the PAT and this login's token count: room for none more
        r = s.call("POST", "/v1/tokens/business", {"name": "one too many"}, headers=me)
        assert_problem(r, 409, "too-many-keys")
        s.admin("POST", "/admin/revoke", {"id": "bk_demo_acme"})
        assert s.call("POST", "/v1/tokens/business", {"name": "fits"}, headers=me).status == 201
        for bad in ({"name": "x", "lifetime_days": 31}, {"name": "x", "lifetime_days": 10**30},
                    {"name": "x" * 101, "lifetime_days": 1}, {"name": "a\u0000b", "lifetime_days": 1}):
            assert_problem(s.call("POST", "/v1/tokens/named", bad, headers=me), 400, "bad-request")
        for q in ("since=0&limit=0", "since=0&limit=1001", "since=-5", "since=4611686018427387905"):
            r = s.call("GET", f"/v1/keys/revocations?{q}")
            assert r.status == 400 and "error" in r.json(), q
        # a body over 1 MiB is refused from its Content-Length, before it is read
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as sock:
            sock.sendall(b"POST /v1/keys/verify HTTP/1.1\r\nHost: x\r\nContent-Length: 1048600\r\n\r\n"
                         + b'{"key":"' + b"a" * 1000)
            assert re.match(rb"HTTP/1\.1 413 ", sock.recv(4096))
        for bad in ({"key": "k", "account": "x", "scopes": ["a b"]},
                    {"key": "k", "account": "x", "scopes": ["x"] * 129},
                    {"key": "k", "account": "x", "resources": {f"r{i}": [] for i in range(33)}},
                    {"key": "k", "account": "x", "subject": "a\nb"},
                    {"key_hash": "zz" * 32, "account": "x"},
                    {"key": "k", "key_hash": "00" * 32, "account": "x"}):
            assert_problem(s.admin("POST", "/admin/keys", bad), 400, "bad-request")
        # an imported hash verifies the secret it came from (stored as given, never the secret)
        imported = s.admin("POST", "/admin/keys", {"key_hash": sha("legacy-secret-1"), "account": "acme",
                                                  "id": "bk_legacy"})
        assert imported.status == 201
        assert s.verify("legacy-secret-1")["key_id"] == "bk_legacy"
    finally:
        s.stop()


def test_accounts_and_users_through_the_admin_api_and_the_cli(tmp_path: Path) -> None:
    s = Service(tmp_path, seed=False).start()
    try:
        assert s.admin("POST", "/admin/accounts", {"name": "initech", "plan": "basic"}).status == 201
        assert_problem(s.admin("POST", "/admin/accounts", {"name": "initech"}), 409, "conflict")
        assert_problem(s.admin("POST", "/admin/accounts", {"name": "a b"}), 400)
        r = s.admin("POST", "/admin/users", {"name": "peter", "email": "Peter@Initech.example",
                                             "account": "initech", "password": "tps-report-cover"})
        assert r.status == 201 and r.json()["data"] == {
            "name": "peter", "email": "peter@initech.example", "account": "initech", "disabled": False,
            "created_at": r.json()["data"]["created_at"]}
        assert_problem(s.admin("POST", "/admin/users", {"name": "x", "email": "x@y.z", "account": "nope",
                                                        "password": "long enough"}), 400)
        assert_problem(s.admin("POST", "/admin/users", {"name": "x", "email": "x@y.z", "account": "initech",
                                                        "password": "short"}), 400)
        assert [u["name"] for u in s.admin("GET", "/admin/users?account=initech").json()["data"]] == ["peter"]
        token = s.login("peter@initech.example", "tps-report-cover")
        assert s.verify(token)["plan"] == "basic"
        # disabling the user refuses its keys at once and announces them; the login is refused too
        start = s.cursor()
        assert s.admin("POST", "/admin/users/disable", {"name": "peter"}).status == 200
        assert s.verify(token)["code"] == "DISABLED"
        assert sha(token) in {e["key_hash"] for e in s.feed(start)["revoked"]}
        assert_problem(s.call("POST", "/v1/auth/login", {"email": "peter@initech.example",
                                                          "password": "tps-report-cover"}), 401)
        assert s.admin("POST", "/admin/users/disable", {"name": "peter", "disabled": False}).status == 200
        assert s.verify(token)["code"] == "VALID"
        # an account disabled: every key of it
        assert s.admin("POST", "/admin/accounts/disable", {"name": "initech"}).status == 200
        assert s.verify(token)["code"] == "DISABLED"
        listed = s.admin("GET", "/admin/accounts").json()["data"]
        assert listed == [{"name": "initech", "plan": "basic", "disabled": True, "created_at": listed[0]["created_at"]}]
    finally:
        s.stop()
    # the CLI, on the same database with the service stopped
    import subprocess
    from harness import key_service_bin
    cli = lambda *a, inp=None: subprocess.run([str(key_service_bin()), "--db", str(s.db), *a], input=inp,  # noqa: E731
                                              capture_output=True, text=True, timeout=60)
    assert cli("account", "add", "hooli", "--plan", "enterprise").returncode == 0
    assert cli("account", "add", "hooli").returncode == 1
    r = cli("user", "add", "gavin", "--email", "gavin@hooli.example", "--account", "hooli", inp="nucleus-rules\n")
    assert r.returncode == 0, r.stderr
    assert "gavin\tgavin@hooli.example\thooli\tactive" in cli("user", "list").stdout
    assert "initech\tbasic\tdisabled" in cli("account", "list").stdout
    assert cli("account", "enable", "initech").returncode == 0
    lines = "\n".join(json.dumps(x) for x in (
        {"key_hash": sha("old-system-key-1"), "id": "bk_old1", "account": "hooli"},
        {"key": "old-system-key-2", "id": "nk_old2", "kind": "named", "user": "gavin", "account": "hooli"}))
    r = cli("import", "-", inp=lines + "\n")
    assert r.returncode == 0 and "2 keys imported" in r.stdout, r.stderr
    assert "0 keys imported, 2 already there" in cli("import", "-", inp=lines).stdout
    assert cli("import", "-", inp='{"account": "hooli"}').returncode == 1
    assert cli("user", "disable", "nobody").returncode == 1
    s.start()
    try:
        assert s.verify("old-system-key-1")["key_id"] == "bk_old1"
        assert s.verify("old-system-key-2", "gavin")["key_id"] == "nk_old2"
        assert s.login("gavin@hooli.example", "nucleus-rules").startswith("kgp_")
        assert s.verify(s.login("peter@initech.example", "tps-report-cover"))["code"] == "VALID"
        stored = b"".join(p.read_bytes() for p in s.db.parent.iterdir() if p.name.startswith(s.db.name))
        for secret in (b"nucleus-rules", b"tps-report-cover", b"old-system-key-2"):
            assert secret not in stored
    finally:
        s.stop()
