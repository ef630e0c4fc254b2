#!/usr/bin/env python3
"""Measurements with many keys in a real Envoy (not a test: minutes, and its figures go in
tests/bench/RESULTS.md). Loopback only; every process it starts is stopped at the end.

    python3 tests/tools/scale_measure.py embedded --keys 100000 [--wasm PATH]
        Envoy (2 workers) with N embedded keys: seconds from Envoy's start until a request with
        the last key is served, the CPU time Envoy used by then (all threads) and the machine's
        load, Envoy's /memory and RSS.
    python3 tests/tools/scale_measure.py remote --keys 1000000 [--slots '{}'] [--wasm PATH]
        N distinct valid keys from tests/services/stubkeys.py through Envoy (8 connections),
        each a miss, a call and a stored verdict; Envoy's /memory every 100,000 keys, and the
        latency of a probe request (one hot key, every 20 ms, its own connection) throughout:
        count over 10 ms, 50 ms, and the worst.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """CPU time (user + system, every thread) the process has used: on a busy machine, what a
    start-up cost apart from waiting for a core."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory(e) -> dict:
    m = json.loads(e.admin("/memory"))
    return {"allocated_mb": int(m["allocated"]) / 2**20, "heap_mb": int(m["heap_size"]) / 2**20,
            "rss_mb": rss_mb(e.proc.pid)}


def embedded(args) -> None:
    import harness
    from harness import Envoy, Upstream, wait_until
    n = args.keys
    keys = [{"id": f"e{i}", "sha256": hashlib.sha256(f"kg_emb_{i}".encode()).hexdigest(), "plan": "big"}
            for i in range(n)]
    cfg = {"keys": keys, "rate_limit": {"plans": {"big": {"requests": 1000, "window_s": 1}}}}
    up = Upstream()
    e = Envoy(cfg, up.port)
    t0 = time.monotonic()
    e.start(wait_ready=False)
    last = f"kg_emb_{n - 1}"

    def served():
        try:
            return e.req("GET", "/x", [("X-API-Key", last)], timeout=2).status == 200
        except OSError:
            return False
    try:
        wait_until(served, 900, 0.05, message="a request with the last key served")
        took = time.monotonic() - t0
        cpu = cpu_s(e.proc.pid)
        print(json.dumps({"keys": n, "config_bytes": len(json.dumps(cfg)), "serving_after_s": round(took, 2),
                          "envoy_cpu_s": round(cpu, 2), "load_1min": os.getloadavg()[0], **memory(e)}))
    finally:
        e.stop()
        up.stop()


def remote(args) -> None:
    from harness import Envoy, Upstream
    from loadgen import flood, get
    from test_scale import DIRECT, Stub, config, key
    stub = Stub("big")
    slots = json.loads(args.slots)
    cfg = config(slots, {"big": {"requests": 1_000_000_000, "window_s": 1}})
    cfg.pop("slots") if not slots else None
    up = Upstream()
    e = Envoy(cfg, up.port, extra_clusters=[stub.cluster()], hcm=DIRECT)
    e.start().wait_feed_polled()
    lat: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", e.port, timeout=10)
        while not stop.is_set():
            t = time.monotonic()
            c.request("GET", "/probe", headers={"X-API-Key": "kg_stub_999999999"})
            c.getresponse().read()
            lat.append(time.monotonic() - t)
            time.sleep(0.02)
        c.close()
    try:
        base = memory(e)
        print(json.dumps({"keys": 0, **base}), flush=True)
        th = threading.Thread(target=probe, daemon=True)
        th.start()
        t0 = time.monotonic()
        step = 100_000
        for lo in range(0, args.keys, step):
            counts = flood(e.port, [get("/x", {"X-API-Key": key(i)}) for i in range(lo, min(args.keys, lo + step))],
                           connections=8)
            print(json.dumps({"keys": min(args.keys, lo + step), "statuses": dict(counts),
                              "elapsed_s": round(time.monotonic() - t0, 1), **memory(e)}), flush=True)
        stop.set()
        th.join()
        lat.sort()
        print(json.dumps({"probe_requests": len(lat), "p50_ms": round(lat[len(lat) // 2] * 1000, 2),
                          "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 2), "max_ms": round(lat[-1] * 1000, 1),
                          "over_10ms": sum(x > 0.010 for x in lat), "over_50ms": sum(x > 0.050 for x in lat)}))
        print(e.admin("/stats?filter=keygate.slots"))
    finally:
        stop.set()
        e.stop()
        up.stop()
        stub.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["embedded", "remote"])
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--slots", default="{}", help="the slots section as JSON ({}: the defaults)")
    ap.add_argument("--wasm", help="another keygate.wasm (an older build)")
    args = ap.parse_args()
    if args.wasm:
        os.environ["KEYGATE_WASM"] = args.wasm
    embedded(args) if args.mode == "embedded" else remote(args)


if __name__ == "__main__":
    main()
