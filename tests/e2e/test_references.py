"""Names that refer to something must refer to something declared, and a credential is read one
way only, in a real Envoy against a recording upstream:

- a key service naming a plan the gateway does not declare gets 503, never an unlimited key
  (embedded keys with such a plan are refused at configuration: `config` unit tests, Envoy
  refuses the listener: `test_configs_that_mean_something_else_are_refused_in_envoy`);
- a key declared for a Basic user is that user's Basic password only, never a Bearer token or an
  API-key header that names no user.
"""
from __future__ import annotations

import uuid

import pytest

from attack_clients import request1, request2
from harness import Envoy, KeyService, Upstream
from keys import basic, sha


@pytest.fixture(scope="module")
def rec():
    u = Upstream()
    yield u
    u.stop()


def marked(rec, marker):
    return [r for r in rec.received() if ["x-case", marker] in r["headers"]]


@pytest.fixture(scope="module")
def ks():
    k = KeyService(seed_demo=False).start()
    yield k
    k.stop()


@pytest.mark.parametrize("proto", [1, 2])
def test_a_plan_the_gateway_does_not_declare_is_refused_not_unlimited(rec, ks, proto):
    cfg = {"key_service": {"cluster": "keyservice", "authority": "keys.internal", "timeout_ms": 1000,
                           "revocations_path": None, "retry_after_s": 7},
           "rate_limit": {"plans": {"free": {"requests": 2, "window_s": 60}}}}
    e = Envoy(cfg, rec.port, extra_clusters=[ks.cluster()], concurrency=1).start()
    try:
        send = request1 if proto == 1 else request2
        typo, known = f"typo-{uuid.uuid4().hex}", f"known-{uuid.uuid4().hex}"
        ks.add_key(typo, f"typo-{proto}", plan="fre")
        ks.add_key(known, f"known-{proto}", plan="free")
        marker = uuid.uuid4().hex
        for _ in range(4):
            a = send(e.port, "GET", "/x", [("x-case", marker), ("x-api-key", typo)])
            assert a.status == 503, a.body
            assert a.json()["type"].endswith("key-service-unavailable")
            assert a.header("retry-after") == "7"
        assert marked(rec, marker) == []
        # the declared plan is limited as declared
        statuses = [send(e.port, "GET", "/x", [("x-api-key", known)]).status for _ in range(3)]
        assert statuses == [200, 200, 429]
        e.wait_for(e.logs, "which rate_limit.plans does not declare")
        assert typo not in e.logs() and known not in e.logs()
    finally:
        e.stop()


PAT = "pat-ref-alice-0001"
PLAIN = "plain-ref-key-0001"
CONFIG = {"keys": [{"id": "alice-pat", "sha256": sha(PAT), "user": "alice"},
                   {"id": "plain", "sha256": sha(PLAIN)}]}


@pytest.mark.parametrize("proto", [1, 2])
def test_a_basic_users_key_is_only_that_users_basic_password(rec, proto):
    e = Envoy(CONFIG, rec.port, concurrency=1).start()
    try:
        send = request1 if proto == 1 else request2
        refused = [
            [("authorization", f"Bearer {PAT}")],
            [("x-api-key", PAT)],
            [("authorization", basic("bob", PAT))],
            [("authorization", basic("alice", PLAIN))],
        ]
        marker = uuid.uuid4().hex
        for h in refused:
            a = send(e.port, "GET", "/x", [("x-case", marker), *h])
            assert a.status == 401, (h, a.status)
        assert marked(rec, marker) == []
        assert send(e.port, "GET", "/x", [("authorization", basic("alice", PAT))]).status == 200
        assert send(e.port, "GET", "/x", [("authorization", f"Bearer {PLAIN}")]).status == 200
    finally:
        e.stop()
