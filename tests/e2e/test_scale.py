"""Many keys in bounded shared data (`slots`): 100,000 distinct valid keys through a verdict table
of 1,000 slots leave Envoy's memory where the capacity puts it; revoked keys stay refused while
their marks are evicted, including an answer that was on its way; limits stay exact while owners
that share one set take each other's ways. The key service is `tests/services/stubkeys.py` (every
`kg_stub_<n>` valid, its own owner), fast enough for 100,000 calls in seconds."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import Envoy, free_port, wait_until
from loadgen import flood, get

STUB = Path(__file__).resolve().parents[1] / "services" / "stubkeys.py"


class Stub:
    def __init__(self, plan: str, delay_ms: int = 0) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, str(STUB), "--port", str(self.port), "--plan", plan,
                                      "--delay-ms", str(delay_ms)], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.proc.stdout.readline()  # listening

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        import urllib.request
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def revoke(self, *keys: str) -> None:
        self.call("POST", "/admin/revoke", {"keys": list(keys)})

    def verify_calls(self) -> int:
        return self.call("GET", "/admin/stats")["verify"]

    def cluster(self) -> dict:
        return {"name": "stub", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "stub", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.port}}}}]}]}}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def config(slots: dict, plan: dict, timeout_ms: int = 500, **extra) -> dict:
    cfg = {"key_service": {"cluster": "stub", "timeout_ms": timeout_ms, "revocation_poll_ms": 100},
           "rate_limit": {"plans": plan}, "auth_throttle": False, "slots": slots}
    cfg.update(extra)
    return cfg


# answered by Envoy itself after keygate: a 100,000-request flood is not bounded by a Python upstream
DIRECT = {"route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
    {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]}}


def start(cfg: dict, upstream_port: int, stub: Stub, **kw) -> Envoy:
    e = Envoy(cfg, upstream_port, extra_clusters=[stub.cluster()], **kw)
    e.start().wait_feed_polled()
    return e


def allocated(e: Envoy) -> int:
    return int(json.loads(e.admin("/memory"))["allocated"])


def counter(e: Envoy, name: str) -> int:
    text = e.admin(f"/stats?filter={name}$")
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if k.endswith(name):
            return int(v)
    return 0


def key(n: int) -> str:
    return f"kg_stub_{n}"


def test_100k_keys_through_1000_slots_keep_memory_bounded(upstream):
    """100,000 distinct valid keys, each a miss, a call and a stored verdict, through 1,000
    verdict slots and 1,000 count slots: Envoy's allocated memory grows by what those slots can
    hold (~2 MB at most, each verdict at most 2 KiB), not by an entry per key (before the tables,
    ~540 B a key: +54 MB)."""
    stub = Stub("big")
    e = start(config({"verdicts": 1000, "states": 1000},
                     {"big": {"requests": 1_000_000_000, "window_s": 1}}), upstream.port, stub, hcm=DIRECT)
    try:
        warm = [get("/x", {"X-API-Key": key(10_000_000 + i)}) for i in range(5000)]
        assert flood(e.port, warm, connections=8) == {200: 5000}
        before = allocated(e)
        n = 100_000
        t0 = time.time()
        counts = flood(e.port, [get("/x", {"X-API-Key": key(i)}) for i in range(n)], connections=8)
        took = time.time() - t0
        growth = allocated(e) - before
        print(f"{n} keys in {took:.1f}s: {dict(counts)}, Envoy allocated {growth / 1e6:+.2f} MB")
        assert counts == {200: n}
        # 1,000 verdict slots x (2 KiB + way header) + 1,000 counts x 100 B + Envoy's own noise
        assert growth < 3_000_000, growth
        e.prometheus("keygate_slots_verdicts_evicted")
        evicted = counter(e, "keygate.slots.verdicts.evicted")
        # nearly every key took a live verdict's way (the rest reused expired or free ones)
        assert evicted > n * 0.9, evicted
        # and a key seen early is a miss now, asked again, and still valid
        calls = stub.verify_calls()
        assert e.req("GET", "/x", [("X-API-Key", key(0))]).status == 200
        assert stub.verify_calls() == calls + 1
    finally:
        e.stop()
        stub.stop()


def test_revoked_keys_stay_refused_through_evictions(upstream):
    """One set of 4 verdict ways (every key collides). A cached key is revoked along with 5
    others, so its mark is evicted while held: it is refused all the same (the service is asked
    again). Then an answer on its way when its key is revoked and its mark evicted: refused
    (503, retry), never served, and the upstream never sees it."""
    stub = Stub("big", delay_ms=1500)
    e = start(config({"verdicts": 4, "states": 64}, {"big": {"requests": 1000, "window_s": 1}},
                     timeout_ms=3000), upstream.port, stub)
    try:
        # a cached valid key, then revoked with five more: six marks through four ways
        assert e.req("GET", "/cached", [("X-API-Key", key(1))]).status == 200
        assert e.req("GET", "/cached", [("X-API-Key", key(1))]).status == 200
        read = time.monotonic()
        stub.revoke(key(1), *[key(100 + i) for i in range(5)])
        e.prometheus("keygate_revocations_polls")
        wait_until(lambda: counter(e, "keygate.revocations.marked") >= 1, 5, message="the mark")
        wait_until(lambda: counter(e, "keygate.slots.verdicts.evicted") >= 2, 5, message="marks evicted")
        # a worker that read the verdict uses it for shared_recheck_ms (250) without reading shared
        # data again (scale.md): past that, every worker must see the revocation
        time.sleep(max(0.0, read + 0.3 - time.monotonic()))
        for _ in range(3):
            r = e.req("GET", "/after-revocation", [("X-API-Key", key(1))], timeout=10)
            assert r.status == 401 and "revoked" in r.body.decode(), (r.status, r.body[:200])
        # an answer on its way: the call starts, the key is revoked and its mark evicted by four
        # newer ones while the (slow) service still answers "valid"
        upstream.clear()
        import threading
        got = {}

        def slow() -> None:
            got["r"] = e.req("GET", "/late", [("X-API-Key", key(2))], timeout=10)

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.3)
        stub.revoke(key(2), *[key(200 + i) for i in range(4)])
        t.join()
        r = got["r"]
        assert r.status in (401, 503), (r.status, r.body[:300])
        assert r.status == 503 or "revoked" in r.body.decode()
        assert not [x for x in upstream.received() if x["path"].startswith("/late")]
        # and from then on refused as revoked
        assert e.req("GET", "/late", [("X-API-Key", key(2))], timeout=10).status == 401
    finally:
        e.stop()
        stub.stop()


def test_limits_stay_exact_while_colliding_owners_share_ways(upstream):
    """One set of 8 count ways: 8 keys at 2 requests a second hold all 8; a 9th key is refused
    (429 with Retry-After) rather than admitted by forgetting another's count; once the counts
    refill, 20 keys in turn reuse the ways, and no key is ever admitted more than 2 in a second.
    The upstream receives exactly the admitted requests."""
    stub = Stub("two")
    e = start(config({"verdicts": 256, "states": 8}, {"two": {"requests": 2, "window_s": 1}}),
              upstream.port, stub)
    try:
        upstream.clear()
        statuses = {k: [] for k in range(20)}
        for k in range(8):
            for _ in range(3):
                statuses[k].append(e.req("GET", f"/l/{k}", [("X-API-Key", key(k))]).status)
        assert all(statuses[k] == [200, 200, 429] for k in range(8)), statuses
        r = e.req("GET", "/l/8", [("X-API-Key", key(8))])
        assert r.status == 429 and r.header("retry-after") == "1", (r.status, r.body[:300])
        assert b"no room" in r.body
        admitted: dict[int, list[float]] = {k: [] for k in range(20)}
        for rnd in range(3):
            time.sleep(1.1)
            # a different first key each round: the ways go to other keys in turn
            for k in [(rnd * 7 + i) % 20 for i in range(20)]:
                for _ in range(3):
                    t = time.time()
                    s = e.req("GET", f"/l/{k}", [("X-API-Key", key(k))]).status
                    assert s in (200, 429), s
                    if s == 200:
                        admitted[k].append(t)
        # a bucket of 2 refilling one every 0.5 s: from any admission on, at most 2 more than
        # what refilled (50 ms slack for the client's clock reading)
        for k, ts in admitted.items():
            for i, t in enumerate(ts):
                for j in range(i, len(ts)):
                    assert j - i + 1 <= 2 + int((ts[j] - t + 0.05) / 0.5), (k, ts)
        # some keys beyond the first eight got ways (reuse), and the set refused others
        assert any(admitted[k] for k in range(8, 20))
        e.prometheus("keygate_slots_states_full")
        assert counter(e, "keygate.slots.states.full") >= 1
        total = 16 + sum(len(v) for v in admitted.values())
        assert len([x for x in upstream.received() if x["path"].startswith("/l/")]) == total
    finally:
        e.stop()
        stub.stop()


def test_a_revocation_reaches_every_workers_memo(upstream):
    """Each worker keeps the verdicts it read and uses them while fresh (an hour here) without
    reading shared data; a revocation marked by whichever worker polls the feed reaches the
    others through the revocation log within `shared_recheck_ms`. 201 keys, each read by both
    workers over 16 connections; well past `shared_recheck_ms`, two of them are revoked: within
    the feed's poll and `shared_recheck_ms` every request with them is refused on every
    connection, and the others are still served from the memos (no call to the service). A build
    whose marks are not logged serves the revoked keys from the other worker's memo for the hour."""
    stub = Stub("big")
    cfg = config({"verdicts": 4096, "states": 4096}, {"big": {"requests": 1_000_000_000, "window_s": 1}})
    cfg["key_service"].update({"positive_ttl_s": 3600, "shared_recheck_ms": 250})
    e = start(cfg, upstream.port, stub, hcm=DIRECT)
    try:
        keys = [key(i) for i in range(201)]  # 201 and 16 connections: every connection meets every key
        assert flood(e.port, [get("/x", {"X-API-Key": k}) for _ in range(16) for k in keys],
                     connections=16) == {200: 16 * 201}
        time.sleep(1.0)  # four times shared_recheck_ms: the memos are what serves now
        calls = stub.verify_calls()
        marked = counter(e, "keygate.revocations.marked")
        stub.revoke(keys[5], keys[150])
        wait_until(lambda: counter(e, "keygate.revocations.marked") >= marked + 2, 5, message="the marks")
        time.sleep(0.4)  # shared_recheck_ms and a margin
        revoked = [get("/x", {"X-API-Key": k}) for _ in range(32) for k in (keys[5], keys[150])]
        assert flood(e.port, revoked, connections=16) == {401: 64}
        others = [get("/x", {"X-API-Key": k}) for _ in range(2) for k in keys if k not in (keys[5], keys[150])]
        assert flood(e.port, others, connections=16) == {200: 2 * 199}
        assert stub.verify_calls() == calls, "the other keys came from the memos and shared data"
        # the memos served them (counted on the workers' next tick)
        wait_until(lambda: counter(e, "keygate.cache.memo_hit") >= 2 * 199, 5, message="memo hits")
    finally:
        e.stop()
        stub.stop()
