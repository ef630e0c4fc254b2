"""Red team of the fixed-size shared-data tables (`slots`, envoy/docs/scale.md): what a client, a
key service or another plugin on keygate's vm_id can do to the verdict and count tables. Each
test asserts keygate's answer and what the recording upstream received.

- the seed and sizes entry `{prefix}:slots` written first by someone else (another format, a
  value emptied): every VM must still share one seed, or each worker keeps its own tables (a
  limit counted once per worker, a revocation marked where only one worker looks);
- tiny tables where every owner collides (`slots.states` 8, `slots.verdicts` 4): a client
  holding a set refuses others only while its counts live (the DoS budget), never admits over
  a limit, and a CAS race between two workers under parallel h1 and h2 clients admits exactly the
  limit;
- a configuration pushed over LDS that changes the sizes, the limit and the algorithm while
  counts are live: the tables keep their sizes and seed, no count is forgotten;
- verdicts over 1 KiB: never cached, so a revoked key is refused at once;
- secrets: Envoy's log at trace level, after mixed traffic, holds no raw key.

The key service is tests/services/stubkeys.py (every `kg_stub_<n>` valid, its own owner)."""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from attack_clients import H2Conn, request1
from harness import Envoy, wait_until
from test_scale import STUB, Stub, config, counter, key
from harness import free_port

WAT = """(module
 (import "env" "proxy_set_shared_data" (func $set (param i32 i32 i32 i32 i32) (result i32)))
 (memory (export "memory") 2)
 (global $bump (mut i32) (i32.const 4096))
 (data (i32.const 16) "{key}")
 (data (i32.const 1024) "{value}")
 (func (export "proxy_abi_version_0_2_1"))
 (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
  (local $p i32)
  (local.set $p (global.get $bump))
  (global.set $bump (i32.add (global.get $bump) (i32.and (i32.add (local.get $n) (i32.const 15)) (i32.const -16))))
  (if (i32.gt_u (global.get $bump) (i32.mul (memory.size) (i32.const 65536)))
   (then (drop (memory.grow (i32.add (i32.div_u (local.get $n) (i32.const 65536)) (i32.const 1))))))
  (local.get $p))
 (func $write
  (drop (call $set (i32.const 16) (i32.const {key_len}) (i32.const 1024) (i32.const {value_len}) (i32.const -1))))
 (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (call $write) (i32.const 1))
 (func (export "proxy_on_configure") (param i32 i32) (result i32) (call $write) (i32.const 1))
 (func (export "proxy_on_context_create") (param i32 i32))
)
"""


def writer_filter(tmp: Path, key_name: str, value: bytes) -> dict:
    """An HTTP filter of a hand-written module on keygate's vm_id (`keygate`: one shared-data map)
    that inserts `value` at `key_name` before keygate starts (insert only: cas = u32::MAX, so
    only the first VM's write lands), as another plugin or another build sharing the vm_id would."""
    if not shutil.which("wasm-as"):
        pytest.skip("wasm-as (Debian: binaryen) is needed to build the writer module")
    esc = lambda b: "".join(f"\\{c:02x}" for c in b)  # noqa: E731
    wat = tmp / "writer.wat"
    wat.write_text(WAT.format(key=esc(key_name.encode()), value=esc(value), key_len=len(key_name),
                              value_len=len(value)))
    out = tmp / "writer.wasm"
    subprocess.run(["wasm-as", str(wat), "-o", str(out)], check=True)
    return {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {"name": "writer", "root_id": "writer",
                   "vm_config": {"vm_id": "keygate", "runtime": "envoy.wasm.runtime.v8",
                                 "code": {"local": {"filename": str(out)}}}}}}


def burst(e: Envoy, path: str, api_key: str, n: int, threads: int = 8) -> list[int]:
    """`n` requests, each on its own connection, from `threads` clients at once (connections
    spread over Envoy's workers)."""
    out: list[int] = []
    lock = threading.Lock()
    todo = list(range(n))

    def run() -> None:
        while True:
            with lock:
                if not todo:
                    return
                todo.pop()
            s = e.req("GET", path, [("X-API-Key", api_key)]).status
            with lock:
                out.append(s)
    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def upstream_paths(upstream, prefix: str) -> list[str]:
    return [x["path"] for x in upstream.received() if x["path"].startswith(prefix)]


@pytest.mark.parametrize("foreign", [b"kgM0 a layout this build cannot read", b""],
                         ids=["another-format", "emptied"])
def test_a_foreign_seed_entry_does_not_split_the_tables_per_worker(upstream, tmp_path, foreign):
    """`rt:slots` holds bytes keygate cannot read when it starts (another build's format, or a
    value "removed" to empty by another plugin on the vm_id). Before the fix every VM drew a seed
    of its own: with 2 workers a key limited to 3 a minute got up to 6 through, and a revoked key
    stayed valid on the worker that did not poll the feed. Now: exactly 3 admitted across both
    workers, and a revoked key is refused on every connection."""
    stub = Stub("three")
    cfg = config({"verdicts": 1024, "states": 1024}, {"three": {"requests": 3, "window_s": 60}},
                 shared_prefix="rt")
    cfg["key_service"]["positive_ttl_s"] = 300
    e = Envoy(cfg, upstream.port, extra_clusters=[stub.cluster()],
              filters_before=[writer_filter(tmp_path, "rt:slots", foreign)])
    try:
        e.start().wait_feed_polled()
        upstream.clear()
        statuses = burst(e, "/seed/limit", key(1), 24)
        assert sorted(statuses) == [200] * 3 + [429] * 21, statuses
        assert len(upstream_paths(upstream, "/seed/limit")) == 3
        # a key cached by both workers (valid, then counted: 200 or 429), then revoked
        assert set(burst(e, "/seed/warm", key(2), 12)) == {200, 429}
        stub.revoke(key(2))
        e.prometheus("keygate_revocations_marked")
        time.sleep(0.4)  # shared_recheck_ms (250): past it, every worker reads the mark
        upstream.clear()
        after = burst(e, "/seed/revoked", key(2), 16)
        assert after == [401] * 16, after
        assert upstream_paths(upstream, "/seed/revoked") == []
    finally:
        e.stop()
        stub.stop()


def lds_envoy(cfg: dict, upstream, stub: Stub):
    from test_reconfigure import LdsEnvoy
    e = LdsEnvoy(cfg, upstream.port, extra_clusters=[stub.cluster()])
    e.start().wait_feed_polled()
    return e


def reconfigure(e, cfg: dict, realm: str) -> None:
    """Pushes `cfg` (with `realm`) over LDS and waits until new connections get it."""
    e.reconfigure(dict(cfg, realm=realm))
    want = f'Bearer realm="{realm}"'
    wait_until(lambda: e.req("GET", "/realm").header("www-authenticate") == want, 15, 0.05,
               f"the challenge to name realm {realm!r}")


def test_a_window_lengthened_over_lds_decides_the_same_whether_or_not_a_co_tenant_took_the_way(upstream):
    """One set of 8 count ways (every owner collides). Key 1 spends a rolling window of 2 a 2 s;
    a configuration pushed over LDS makes it 2 a minute. Once the old window is past, key 1's
    count held nothing under the configuration that wrote it, so any other owner's request to the
    set drops it. Key 1's next answer must not depend on whether that happened: before the fix,
    with no co-tenant request key 1 was refused for a minute (its instants re-read under the new
    length) while with one it was admitted afresh: a client owning a second key could, once per
    such change, reset its first. Checked both ways on two Envoys; the upstream receives exactly what was
    admitted."""
    plan = lambda w: {"w": {"requests": 2, "window_s": w, "algorithm": "rolling_window"}}  # noqa: E731
    outcomes = {}
    for co_tenant in (False, True):
        stub = Stub("w")
        cfg = config({"verdicts": 256, "states": 8}, plan(2), realm="before")
        e = lds_envoy(cfg, upstream, stub)
        try:
            upstream.clear()
            assert [e.req("GET", "/win/1", [("X-API-Key", key(1))]).status for _ in range(3)] == [200, 200, 429]
            t0 = time.monotonic()
            reconfigure(e, config({"verdicts": 256, "states": 8}, plan(60)), "after")
            time.sleep(max(0.0, t0 + 2.5 - time.monotonic()))
            if co_tenant:
                assert e.req("GET", "/win/2", [("X-API-Key", key(2))]).status == 200
            got = [e.req("GET", "/win/1", [("X-API-Key", key(1))]).status for _ in range(3)]
            outcomes[co_tenant] = got
            assert len(upstream_paths(upstream, "/win/1")) == 2 + got.count(200)
        finally:
            e.stop()
            stub.stop()
    assert outcomes[False] == outcomes[True], outcomes
    # the state at the change carries over, as for a token bucket: a full window, 2 more
    assert outcomes[True] == [200, 200, 429]


def test_an_lds_update_keeps_the_sizes_and_seed_and_every_live_count(upstream):
    """A configuration pushed over LDS asks for bigger tables, changes the plan's limit and its
    algorithm while counts are live. The tables keep the sizes they were created with (logged):
    the set that was full is still full (a 9th owner still refused, the 8 owners' counts not
    forgotten), and key 1's spent tokens carry into its new rolling window. The upstream receives
    exactly the admitted requests."""
    stub = Stub("p")
    before = config({"verdicts": 256, "states": 8}, {"p": {"requests": 3, "window_s": 60}}, realm="before")
    e = lds_envoy(before, upstream, stub)
    try:
        upstream.clear()
        assert [e.req("GET", "/lds/1", [("X-API-Key", key(1))]).status for _ in range(4)] == [200] * 3 + [429]
        for k in range(2, 9):
            assert e.req("GET", f"/lds/{k}", [("X-API-Key", key(k))]).status == 200
        r = e.req("GET", "/lds/9", [("X-API-Key", key(9))])
        assert r.status == 429 and b"no room" in r.body, (r.status, r.body[:200])
        after = config({"verdicts": 4096, "states": 4096},
                       {"p": {"requests": 5, "window_s": 60, "algorithm": "rolling_window"}})
        reconfigure(e, after, "after")
        e.wait_for(e.logs, "keep the capacity they were created with (256 verdict slots, 8 state slots)")
        r = e.req("GET", "/lds/9", [("X-API-Key", key(9))])
        assert r.status == 429 and b"no room" in r.body, (r.status, r.body[:200])
        # 3 spent of a bucket become 3 instants of a window of 5: 2 more, then refused
        got = [e.req("GET", "/lds/1", [("X-API-Key", key(1))]).status for _ in range(3)]
        assert got == [200, 200, 429], got
        assert len(upstream_paths(upstream, "/lds/1")) == 5
        assert upstream_paths(upstream, "/lds/9") == []
    finally:
        e.stop()
        stub.stop()


@pytest.mark.parametrize("algorithm", ["token_bucket", "rolling_window"])
def test_parallel_h1_and_h2_clients_on_two_workers_admit_exactly_the_limit_in_one_set(upstream, algorithm):
    """One set of 8 count ways and 8 keys, so every write of every key is a compare-and-swap of the
    same shared-data value from both workers at once: per key, 10 raw HTTP/1.1 requests on their
    own connections and 2 HTTP/2 connections of 10 streams each, all in flight together. Each key
    is admitted exactly its limit (5), whatever the interleaving; the upstream receives exactly
    the 40 admitted; a 9th key finds the set full and is refused, not admitted by dropping a
    count."""
    stub = Stub("p")
    plan = {"requests": 5, "window_s": 60, "algorithm": algorithm}
    e = start_plain(config({"verdicts": 256, "states": 8}, {"p": plan}), upstream, stub)
    try:
        upstream.clear()
        results: dict[int, list[int]] = {k: [] for k in range(1, 9)}
        lock = threading.Lock()
        gate = threading.Barrier(8 * 12)

        def h1(k: int) -> None:
            gate.wait()
            s = request1(e.port, "GET", f"/race/{k}", [("X-API-Key", key(k))]).status
            with lock:
                results[k].append(s)

        def h2(k: int) -> None:
            c = H2Conn(e.port)
            try:
                gate.wait()
                sids = []
                for _ in range(10):
                    sid = c.open("GET", f"/race/{k}", [("x-api-key", key(k))])
                    c.data(sid, b"", True)
                    sids.append(sid)
                got = c.answers(sids, timeout=20)
            finally:
                c.close()
            with lock:
                results[k].extend(a.status for a in got.values())

        ts = [threading.Thread(target=h1, args=(k,)) for k in range(1, 9) for _ in range(10)]
        ts += [threading.Thread(target=h2, args=(k,)) for k in range(1, 9) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for k, got in results.items():
            assert len(got) == 30 and got.count(200) == 5 and got.count(429) == 25, (k, sorted(got))
        for k in range(1, 9):
            assert len(upstream_paths(upstream, f"/race/{k}")) == 5, k
        r = e.req("GET", "/race/9", [("X-API-Key", key(9))])
        assert r.status == 429 and b"no room" in r.body, (r.status, r.body[:200])
        assert upstream_paths(upstream, "/race/9") == []
    finally:
        e.stop()
        stub.stop()


def start_plain(cfg: dict, upstream, stub: Stub, **kw) -> Envoy:
    e = Envoy(cfg, upstream.port, extra_clusters=[stub.cluster()], **kw)
    e.start().wait_feed_polled()
    return e


def test_a_client_holds_a_full_set_only_while_it_keeps_paying_for_it(upstream):
    """The DoS budget of a full set. One set of 8 count ways (every owner collides, as a client
    that learned 8 of its keys share a set from a "no room" 429 would arrange). 2 requests a 2 s
    per key: one request keeps a bucket below full for one interval (1 s), so an attacker holds
    the set with 8 valid keys and 8 requests a second (more requests only hold it longer). Meanwhile every other owner of that set is
    refused with 429 "no room" and an honest Retry-After (when the first way frees), and the upstream sees none of
    them; the attacker's own keys are never admitted over their limit. When the attacker stops,
    the victim is admitted within that Retry-After. (What it costs: a way is held for
    window_s / requests after each request, so a plan with a long window, or a key service's
    per-key limit of 1 a year, makes one request hold a way that long: size `slots.states` for
    it, scale.md.)"""
    stub = Stub("p")
    e = start_plain(config({"verdicts": 256, "states": 8}, {"p": {"requests": 2, "window_s": 2}}), upstream, stub)
    try:
        upstream.clear()
        refused = []
        admitted_attacker = {k: 0 for k in range(1, 9)}
        t_end = time.monotonic() + 3
        while time.monotonic() < t_end:
            for k in range(1, 9):
                s = e.req("GET", f"/dos/{k}", [("X-API-Key", key(k))]).status
                assert s in (200, 429)
                admitted_attacker[k] += s == 200
            r = e.req("GET", "/dos/victim", [("X-API-Key", key(100))])
            refused.append((r.status, r.header("retry-after"), b"no room" in r.body))
            time.sleep(0.5)
        # honest: the first way frees within the Retry-After, at most a bucket's refill (2 s)
        assert refused and all(x[0] == 429 and x[1] in ("1", "2") and x[2] for x in refused), refused
        assert upstream_paths(upstream, "/dos/victim") == []
        # 3 s of a bucket of 2 refilling 1 a second: at most 2 + 3 (+1 for the edges) per key
        assert all(n <= 6 for n in admitted_attacker.values()), admitted_attacker
        # the attacker stops paying: the first way frees within the Retry-After it was told
        time.sleep(int(refused[-1][1]) + 0.05)
        r = e.req("GET", "/dos/victim", [("X-API-Key", key(100))])
        assert r.status == 200, (r.status, r.body[:200])
        assert len(upstream_paths(upstream, "/dos/victim")) == 1
    finally:
        e.stop()
        stub.stop()


class BigStub(Stub):
    """The stub key service with `--big-scopes`: keys numbered from 1,000,000 carry a verdict
    larger than keygate caches."""

    def __init__(self, plan: str, big_scopes: int) -> None:
        import sys
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, str(STUB), "--port", str(self.port), "--plan", plan,
                                      "--big-scopes", str(big_scopes)], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.proc.stdout.readline()


def test_a_verdict_over_1_kib_is_never_cached_and_its_revocation_holds_at_once(upstream):
    """A key whose verdict is 60 scopes of 24 bytes (~1.7 KiB, over the 1 KiB a way may hold):
    every request asks the key service (nothing stored, so nothing evicted for it), the upstream
    receives every scope, and once the key is revoked the very next request is refused, before
    any feed poll, on every connection. A small key beside it is cached as usual."""
    stub = BigStub("p", 60)
    e = start_plain(config({"verdicts": 4, "states": 64}, {"p": {"requests": 1000, "window_s": 1}}),
                    upstream, stub)
    big = key(1_000_001)
    try:
        upstream.clear()
        calls = stub.verify_calls()
        for i in range(4):
            assert e.req("GET", f"/big/{i}", [("X-API-Key", big)]).status == 200
        assert stub.verify_calls() == calls + 4
        got = [x for x in upstream.received() if x["path"].startswith("/big/")]
        assert len(got) == 4
        scopes = dict((k.lower(), v) for k, v in got[0]["headers"]).get("x-keygate-scopes", "")
        assert len(scopes.split()) == 60, scopes[:200]
        # a small key is cached: one call for three requests
        calls = stub.verify_calls()
        for _ in range(3):
            assert e.req("GET", "/small", [("X-API-Key", key(7))]).status == 200
        assert stub.verify_calls() == calls + 1
        stub.revoke(big)
        upstream.clear()
        after = burst(e, "/big/revoked", big, 8)
        assert after == [401] * 8, after
        assert upstream_paths(upstream, "/big/revoked") == []
    finally:
        e.stop()
        stub.stop()


def reader_filter(tmp: Path, names: list[str]) -> dict:
    """An HTTP filter of a hand-written module on keygate's vm_id that, every 200 ms, reads each
    shared-data entry of `names` and logs its bytes as they are (`dump <name> =` then the value)
    to Envoy's log: the only way to see what keygate keeps in shared data in a real Envoy."""
    if not shutil.which("wasm-as"):
        pytest.skip("wasm-as (Debian: binaryen) is needed to build the reader module")
    esc = lambda b: "".join(f"\\{c:02x}" for c in b)  # noqa: E731
    segs, body, at = [], [], 16
    for n in names:
        label = f"dump {n} = ".encode()
        key = n.encode()
        segs.append(f'(data (i32.const {at}) "{esc(key)}")')
        segs.append(f'(data (i32.const {at + 256}) "{esc(label)}")')
        body.append(f"""
  (i32.store (i32.const 8) (i32.const 0))
  (if (i32.eqz (call $get (i32.const {at}) (i32.const {len(key)}) (i32.const 0) (i32.const 4) (i32.const 12)))
   (then
    (call $cat (i32.const {at + 256}) (i32.const {len(label)}))))""")
        at += 512
    wat = f"""(module
 (import "env" "proxy_get_shared_data" (func $get (param i32 i32 i32 i32 i32) (result i32)))
 (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
 (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
 (memory (export "memory") 4)
 (global $bump (mut i32) (i32.const {at + 1024}))
 {" ".join(segs)}
 (func (export "proxy_abi_version_0_2_1"))
 (func $alloc (export "proxy_on_memory_allocate") (param $n i32) (result i32)
  (local $p i32)
  (local.set $p (global.get $bump))
  (global.set $bump (i32.add (global.get $bump) (i32.and (i32.add (local.get $n) (i32.const 15)) (i32.const -16))))
  (if (i32.gt_u (global.get $bump) (i32.mul (memory.size) (i32.const 65536)))
   (then (drop (memory.grow (i32.add (i32.div_u (local.get $n) (i32.const 65536)) (i32.const 1))))))
  (local.get $p))
 ;; logs label ++ value (value at mem[0], length mem[4]) at level warn
 (func $cat (param $l i32) (param $ln i32)
  (local $buf i32)
  (local.set $buf (call $alloc (i32.add (local.get $ln) (i32.load (i32.const 4)))))
  (memory.copy (local.get $buf) (local.get $l) (local.get $ln))
  (memory.copy (i32.add (local.get $buf) (local.get $ln)) (i32.load (i32.const 0)) (i32.load (i32.const 4)))
  (drop (call $log (i32.const 3) (local.get $buf) (i32.add (local.get $ln) (i32.load (i32.const 4))))))
 (func (export "proxy_on_tick") (param i32)
  (local $save i32)
  (local.set $save (global.get $bump))
  {"".join(body)}
  (global.set $bump (local.get $save)))
 (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
 (func (export "proxy_on_configure") (param i32 i32) (result i32) (drop (call $tick (i32.const 200))) (i32.const 1))
 (func (export "proxy_on_context_create") (param i32 i32))
)
"""
    (tmp / "reader.wat").write_text(wat)
    out = tmp / "reader.wasm"
    subprocess.run(["wasm-as", "--enable-bulk-memory", str(tmp / "reader.wat"), "-o", str(out)], check=True)
    return {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {"name": "reader", "root_id": "reader",
                   "vm_config": {"vm_id": "keygate", "runtime": "envoy.wasm.runtime.v8",
                                 "code": {"local": {"filename": str(out)}}}}}}


def test_no_raw_key_in_shared_data_or_in_keygate_logs_at_trace_level(upstream, tmp_path):
    """Mixed traffic through tiny tables (every key in one verdict set and one count set): valid
    keys as a header, a Bearer token, a query parameter and Basic; unknown keys; a revoked key;
    keys refused by their limit and by a full set; a verdict over 1 KiB. Then every shared-data
    entry keygate keeps (the two tables' sets, the seed, the floor, the feed's lease and cursor)
    is read by another module on keygate's vm_id and written to Envoy's log, with keygate's own
    log at trace level (`wasm:trace`): no raw key, no key's SHA-256 in hex, appears anywhere in
    that log, the access log or the stats. (The dump must show the sets, so the test also checks
    it saw them: key ids `s<n>` are there, the secrets are not.)"""
    import base64
    import hashlib
    stub = BigStub("p", 60)
    names = ["rt:slots", "rt:v0", "rt:s0", "rt:v:floor", "rt:rev:lease", "rt:rev:cursor"]
    cfg = config({"verdicts": 4, "states": 8}, {"p": {"requests": 2, "window_s": 60}}, shared_prefix="rt")
    e = Envoy(cfg, upstream.port, extra_clusters=[stub.cluster()], filters_before=[reader_filter(tmp_path, names)])
    secrets = [key(n) for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 1_000_001)] + ["kg_stub_nope", "not-a-key-zz9"]
    try:
        e.start(component_levels="wasm:trace").wait_feed_polled()
        upstream.clear()
        for n in range(1, 12):
            k = key(n)
            for how in ("header", "bearer", "query", "basic"):
                if how == "header":
                    e.req("GET", f"/sweep/{n}", [("X-API-Key", k)])
                elif how == "bearer":
                    e.req("GET", f"/sweep/{n}", [("Authorization", f"Bearer {k}")])
                elif how == "query":
                    e.req("GET", f"/sweep/{n}?_apikey={k}")
                else:
                    tok = base64.b64encode(f"user{n}:{k}".encode()).decode()
                    e.req("GET", f"/sweep/{n}", [("Authorization", f"Basic {tok}")])
        for k in secrets[-3:]:
            e.req("GET", "/sweep/other", [("X-API-Key", k)])
        stub.revoke(key(3))
        time.sleep(0.5)  # the feed is polled every 100 ms
        e.req("GET", "/sweep/revoked", [("X-API-Key", key(3))])
        time.sleep(0.6)  # two dumps after the last request
        e.prometheus("keygate_requests")
        log = e.wait_for(e.logs, "dump rt:v0 = kgS1", "dump rt:s0 = kgS1", "dump rt:slots = kgM1")
        assert "s1" in log  # a key id, in a verdict
        stats = e.admin("/stats") + e.admin("/stats/prometheus")
        everything = log + e.access_log() + stats
        for s in secrets:
            assert s not in everything, s
            assert hashlib.sha256(s.encode()).hexdigest() not in everything, s
        # what reached the upstream carried no key either (query parameter and headers stripped)
        for x in upstream.received():
            assert not any(s in x["path"] for s in secrets), x["path"]
    finally:
        e.stop()
        stub.stop()


def test_a_flood_of_new_valid_keys_cannot_evict_a_held_mark_before_a_late_answer_lands(upstream):
    """One set of 4 verdict ways, a slow key service (every answer takes 1.5 s, timeout 3 s). A
    call for key 2 is on its way when key 2 is revoked; 40 other valid keys then race their own
    (equally slow) answers into the same set, on both workers, to push key 2's mark out before
    key 2's "valid" lands. The mark is held (timeout + 10 s), so every one of them either takes
    another way or is not cached; key 2's answer finds its mark: refused, and the upstream never
    sees it. The 40 keys themselves are served. (A build whose marks are not held, `cache::class`
    without the hold, serves key 2's late answer: 200.)"""
    stub = Stub("big", delay_ms=1500)
    e = start_plain(config({"verdicts": 4, "states": 256}, {"big": {"requests": 1000, "window_s": 1}},
                           timeout_ms=3000), upstream, stub)
    try:
        upstream.clear()
        got: dict[str, int] = {}
        lock = threading.Lock()

        def one(name: str, path: str, k: str) -> None:
            s = e.req("GET", path, [("X-API-Key", k)], timeout=15).status
            with lock:
                got[name] = s
        # the flood's calls start first, so their answers land after key 2's mark (0.1 s after
        # key 2's call starts, seen by the feed within 0.2 s) and before key 2's answer
        flood = [threading.Thread(target=one, args=(f"k{i}", f"/held/{i}", key(300 + i))) for i in range(40)]
        for t in flood:
            t.start()
        time.sleep(0.25)
        late = threading.Thread(target=one, args=("late", "/held/late", key(2)))
        late.start()
        time.sleep(0.1)
        stub.revoke(key(2))
        for t in flood + [late]:
            t.join()
        e.prometheus("keygate_slots_verdicts_evicted")
        assert counter(e, "keygate.slots.verdicts.evicted") >= 30  # the flood did churn the set
        assert got["late"] in (401, 503), got["late"]
        assert upstream_paths(upstream, "/held/late") == []
        assert all(got[f"k{i}"] == 200 for i in range(40)), got
        assert len(upstream_paths(upstream, "/held/")) == 40
        # and from then on refused as revoked, on every connection
        assert burst(e, "/held/after", key(2), 8) == [401] * 8
    finally:
        e.stop()
        stub.stop()
