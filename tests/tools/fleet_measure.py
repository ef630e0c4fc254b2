#!/usr/bin/env python3
"""Measures fleet-wide limits (issue #15) with real processes on loopback: two Envoys (two workers
each) and the test engine. For each mode, `--keys` keys each get `--requests` concurrent requests
spread over both Envoys (limit 60 a key in the engine); prints what was admitted (never over 60;
under-admission is what leases stranded) and the engine calls it took. keygate's stranded-token
counter is not read here: under continuous load every lease is spent (a replica strands tokens
when its traffic stops before the window ends, or it dies: test_fleet.py measures that). Not a test (tests/e2e/test_fleet.py asserts the bounds); run:

    .venv/bin/python tests/tools/fleet_measure.py [--keys 10] [--requests 200]
"""
import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))  # the harness
from harness import Envoy, RlsEngine, Upstream, grpc_cluster, stop_process  # noqa: E402
from keys import sha  # noqa: E402

LIMITS = """
- namespace: keygate
  max_value: 60
  seconds: 3600
  conditions: ["descriptors[0].plan == 'm'"]
  variables: ["descriptors[0].key_id"]
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=10)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    up = Upstream()
    for mode, lease in [("request", {}), ("leased", {"max": 8, "percent": 20}),
                        ("leased", {"max": 100, "percent": 10})]:
        eng = RlsEngine(LIMITS)
        names = [f"{mode}-{i}" for i in range(args.keys)]
        cfg = {"keys": [{"id": n, "sha256": sha(f"secret-{n}"), "account": n, "plan": "m"} for n in names],
               "rate_limit": {"plans": {"m": {"requests": 60, "window_s": 3600}}},
               "fleet": {"cluster": "ratelimit", "plans": {"m": mode}, "lease": lease}}
        envoys = [Envoy(cfg, up.port, concurrency=2, extra_clusters=[grpc_cluster("ratelimit", eng.port)]).start()
                  for _ in range(2)]
        admitted, calls = [], []
        t0 = time.time()
        for n in names:
            before = len(eng.calls())
            with ThreadPoolExecutor(max_workers=24) as pool:
                st = list(pool.map(lambda i: envoys[i % 2].req("GET", "/m", [("X-API-Key", f"secret-{n}")]).status,
                                   range(args.requests)))
            admitted.append(st.count(200))
            calls.append(len(eng.calls()) - before)
        secs = time.time() - t0
        print(f"{mode:8} lease={lease or '-'}: admitted per key (limit 60) min {min(admitted)} "
              f"mean {statistics.mean(admitted):.1f} max {max(admitted)}; engine calls per key "
              f"mean {statistics.mean(calls):.1f}; {args.keys * args.requests / secs:.0f} req/s")
        for e in envoys:
            e.stop()
        eng.stop()
    up.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
