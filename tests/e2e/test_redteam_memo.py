"""A red team on the worker memo and the revocation log (`src/cache/memo.rs`) in a real Envoy
with two workers: a page of more revocations than the log holds reaches every worker's memo
(HTTP/1.1 and HTTP/2, and nothing of a revoked key's request reaches the upstream); Basic
credentials of a revoked key are refused for every user on every worker; no raw key reaches
Envoy's logs at trace level, its stats or the access log; and an older build in the same Envoy
(same `vm_id`, same prefix: an upgrade under way) polls the feed for itself, so each build refuses
a revoked key from its own memo."""
from __future__ import annotations

import base64
import copy
import os
import time
from pathlib import Path

import pytest

from attack_clients import request1, request2
from harness import Envoy, free_port, wait_until
from loadgen import flood, get
from test_scale import Stub, config, counter

RECHECK_MS = 250
WARM = {"match": {"prefix": "/warm"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}


def routes() -> dict:
    """`/warm…` answered by Envoy itself (floods), everything else by the recording upstream."""
    return {"route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        WARM, {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]}}


def key(i: int) -> str:
    return f"kg_stub_{i}"


def memo_config(**ks) -> dict:
    cfg = config({"verdicts": 4096, "states": 4096}, {"big": {"requests": 1_000_000_000, "window_s": 1}})
    cfg["key_service"].update({"positive_ttl_s": 3600, "shared_recheck_ms": RECHECK_MS, **ks})
    return cfg


def start(cfg: dict, upstream_port: int, stub: Stub, envoy_cls=Envoy, **kw) -> Envoy:
    e = envoy_cls(cfg, upstream_port, extra_clusters=[stub.cluster()], hcm=routes(), **kw)
    e.start().wait_feed_polled()
    return e


def warm(e: Envoy, headers_of, n: int, port: int | None = None) -> None:
    """Every key read by every worker: 16 connections, each meets every key."""
    reqs = [get("/warm", headers_of(i)) for _ in range(16) for i in range(n)]
    assert flood(port or e.port, reqs, connections=16) == {200: 16 * n}
    time.sleep(4 * RECHECK_MS / 1000)  # the memos are what serves now


def test_a_page_of_more_revocations_than_the_log_holds_reaches_every_worker(upstream):
    stub = Stub("big")
    e = start(memo_config(), upstream.port, stub)
    try:
        n = 150
        warm(e, lambda i: {"X-API-Key": key(i)}, n)
        calls = stub.verify_calls()
        marked = counter(e, "keygate.revocations.marked")
        gone = list(range(0, 100))  # one page, more than the log's 64
        stub.revoke(*[key(i) for i in gone])
        wait_until(lambda: counter(e, "keygate.revocations.marked") >= marked + len(gone), 5, message="the marks")
        time.sleep(RECHECK_MS / 1000 + 0.15)
        upstream.clear()
        refused = [get(f"/seen/{i}", {"X-API-Key": key(i)}) for _ in range(4) for i in gone]
        assert flood(e.port, refused, connections=16) == {401: 4 * len(gone)}
        for i in (0, 63, 64, 99):
            for send in (request1, request2):
                a = send(e.port, "GET", f"/seen/{i}", [("x-api-key", key(i))])
                assert a.status == 401, (send.__name__, i, a)
                assert a.json()["type"].endswith("credential-revoked"), a.body
        assert [r["path"] for r in upstream.seen()] == [], "a revoked key's request reached the upstream"
        kept = [get("/warm", {"X-API-Key": key(i)}) for _ in range(2) for i in range(100, n)]
        assert flood(e.port, kept, connections=16) == {200: 2 * (n - 100)}
        a = request2(e.port, "GET", "/seen/kept", [("x-api-key", key(120))])
        assert a.status == 200, a
        assert [r["path"] for r in upstream.seen()] == ["/seen/kept"]
        assert stub.verify_calls() == calls, "the kept keys came from the memos and shared data"
    finally:
        e.stop()
        stub.stop()


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def test_basic_credentials_of_a_revoked_key_are_refused_for_every_user_on_every_worker(upstream):
    stub = Stub("big")
    cfg = memo_config()
    cfg["credentials"] = {"basic": True, "bearer": True, "api_key_headers": ["x-api-key"]}
    e = start(cfg, upstream.port, stub)
    try:
        users = ["alice", "bob", "carol"]
        warm(e, lambda i: {"Authorization": basic(users[i % 3], key(i // 3))}, 3 * 20)
        marked = counter(e, "keygate.revocations.marked")
        stub.revoke(key(7))
        wait_until(lambda: counter(e, "keygate.revocations.marked") >= marked + 1, 5, message="the mark")
        time.sleep(RECHECK_MS / 1000 + 0.15)
        upstream.clear()
        # the users it was read with, one it never was, and the key alone
        creds = [basic(u, key(7)) for u in users + ["mallory"]] + ["Bearer " + key(7)]
        reqs = [get("/seen/7", {"Authorization": c}) for _ in range(8) for c in creds]
        assert flood(e.port, reqs, connections=16) == {401: 8 * len(creds)}
        for send in (request1, request2):
            a = send(e.port, "GET", "/seen/7", [("authorization", basic("alice", key(7)))])
            assert a.status == 401, a
        assert upstream.seen() == []
        others = [get("/warm", {"Authorization": basic(u, key(8))}) for _ in range(4) for u in users]
        assert flood(e.port, others, connections=16) == {200: 4 * len(users)}
    finally:
        e.stop()
        stub.stop()


def test_no_raw_key_in_trace_logs_stats_or_the_access_log(upstream):
    stub = Stub("big")
    e = Envoy(memo_config(), upstream.port, extra_clusters=[stub.cluster()], hcm=routes())
    # keygate at trace (Envoy's own http trace prints request headers: not keygate's doing)
    e.start(log_level="info", component_levels="wasm:trace").wait_feed_polled()
    try:
        n = 40
        warm(e, lambda i: {"X-API-Key": key(1000 + i)}, n)
        stub.revoke(*[key(1000 + i) for i in range(0, n, 3)])
        time.sleep(1.0)
        for i in range(n):
            request2(e.port, "GET", "/seen", [("x-api-key", key(1000 + i))])
            request1(e.port, "GET", "/seen", [("authorization", "Bearer " + key(1000 + i))])
        time.sleep(0.3)
        texts = {"log": e.logs(), "access log": e.access_log(), "stats": e.admin("/stats"),
                 "prometheus": e.admin("/stats/prometheus"), "config dump": e.admin("/config_dump")}
        assert "keygate" in texts["log"]
        for name, text in texts.items():
            for i in range(n):
                assert key(1000 + i) not in text, f"{key(1000 + i)} in the {name}"
        # the upstream never sees the key either (hidden credentials)
        for r in upstream.seen():
            assert "kg_stub_" not in str(r["headers"]), r
    finally:
        e.stop()
        stub.stop()


OLD_WASM = Path(os.environ.get("KEYGATE_OLD_WASM", "/tmp/old/target/wasm32-wasip1/release/keygate.wasm"))


class TwoBuilds(Envoy):
    """This build on the first listener, the older one (`KEYGATE_OLD_WASM`) on a second listener:
    one Envoy, one `vm_id`, so one shared data and one prefix, as during an upgrade."""
    old_port: int = 0

    def config(self) -> dict:
        cfg = super().config()
        listeners = cfg["static_resources"]["listeners"]
        old = copy.deepcopy(listeners[0])
        old["name"] = "old"
        self.old_port = self.old_port or free_port()
        old["address"]["socket_address"]["port_value"] = self.old_port
        hcm = old["filter_chains"][0]["filters"][0]["typed_config"]
        for f in hcm["http_filters"]:
            if f["name"] == "envoy.filters.http.wasm":
                f["typed_config"]["config"]["name"] = "keygate-old"
                f["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(OLD_WASM)
        listeners.append(old)
        return cfg


@pytest.mark.skipif(not OLD_WASM.exists(), reason=f"no older build at {OLD_WASM} (KEYGATE_OLD_WASM)")
def test_an_older_build_in_the_same_envoy_polls_the_feed_for_itself(upstream):
    stub = Stub("big")
    e = start(memo_config(), upstream.port, stub, envoy_cls=TwoBuilds)
    try:
        n = 60
        for port in (e.port, e.old_port):
            warm(e, lambda i: {"X-API-Key": key(2000 + i)}, n, port=port)
        stub.revoke(key(2005), key(2040))
        # each build's feed: the poll, one call, shared_recheck_ms, and a margin
        time.sleep(0.1 + 0.5 + RECHECK_MS / 1000 + 0.4)
        upstream.clear()
        for port in (e.port, e.old_port):
            reqs = [get("/seen", {"X-API-Key": key(2000 + i)}) for _ in range(8) for i in (5, 40)]
            assert flood(port, reqs, connections=16) == {401: 16}, port
            others = [get("/warm", {"X-API-Key": key(2000 + i)}) for i in range(n) if i not in (5, 40)]
            assert flood(port, others, connections=16) == {200: n - 2}, port
        assert upstream.seen() == []
    finally:
        e.stop()
        stub.stop()
