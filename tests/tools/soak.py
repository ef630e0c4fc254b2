#!/usr/bin/env python3
"""Soak: a bounded mixed-traffic run through keygate in a real Envoy, sampling Envoy's memory.

    python3 tests/tools/soak.py [--seconds 180] [--connections 8]

Traffic mix per round: valid cached keys (embedded and remote, each style), a key over its
limit, unknown random keys (from several fake client addresses via X-Forwarded-For is not
trusted here, so one client: the throttle engages), malformed credentials, public routes, and
a key created and revoked every few seconds. Envoy's `/memory` (allocated, heap_size) is sampled
every 10 s; the report gives the growth from the first sample after warm-up to the last.
Loopback only; stops by itself.
"""
import argparse
import json
import secrets
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))  # the harness

from harness import Envoy, KeyService, Upstream  # noqa: E402
from keys import basic, sha  # noqa: E402
from loadgen import flood, get  # noqa: E402


def memory(e: Envoy) -> dict:
    m = json.loads(e.admin("/memory"))
    return {"allocated": int(m["allocated"]), "heap_size": int(m["heap_size"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=180)
    ap.add_argument("--connections", type=int, default=8)
    args = ap.parse_args()
    up = Upstream()
    ks = KeyService().start()
    cfg = {
        "keys": [{"id": "emb", "sha256": sha("soak-embedded-key"), "user": "alice", "plan": "big"},
                 {"id": "tiny", "sha256": sha("soak-tiny-key"), "plan": "tiny"}],
        "key_service": {"cluster": "keyservice", "timeout_ms": 500, "revocation_poll_ms": 500},
        "rate_limit": {"plans": {"big": {"requests": 1_000_000, "window_s": 1}, "tiny": {"requests": 1, "window_s": 3600},
                                 "free": {"requests": 1_000_000, "window_s": 1}}},
        "routes": [{"exact": "/health", "access": "public"}],
    }
    e = Envoy(cfg, up.port, extra_clusters=[ks.cluster()]).start().wait_feed_polled()
    remote = ["kgs_" + uuid.uuid4().hex for _ in range(20)]
    for i, k in enumerate(remote):
        ks.add_key(k, f"soak_{i}")
    samples = []
    counts = {}
    t_end = time.time() + args.seconds
    next_sample = 0.0
    rnd = 0
    try:
        while time.time() < t_end:
            rnd += 1
            reqs = []
            for k in remote:
                reqs.append(get("/v1/x", {"Authorization": f"Bearer {k}"}))
                reqs.append(get(f"/v1/x?a=1&_apikey={k}", {}))
            reqs += [get("/v1/x", {"X-API-Key": "soak-embedded-key"}),
                     get("/v1/x", {"Authorization": basic("alice", "soak-embedded-key")}),
                     get("/v1/x", {"X-API-Key": "soak-tiny-key"}),
                     get("/v1/x", {"Authorization": "Basic !!!"}),
                     get("/health", {"x-keygate-key-id": "forged"})]
            reqs += [get("/v1/x", {"X-API-Key": secrets.token_hex(16)}) for _ in range(20)]
            for status, n in flood(e.port, reqs * 5, connections=args.connections).items():
                counts[status] = counts.get(status, 0) + n
            if rnd % 20 == 0:  # lifecycle churn: a new key, used, revoked
                k = "kgs_" + uuid.uuid4().hex
                ks.add_key(k, f"soak_churn_{rnd}")
                flood(e.port, [get("/v1/x", {"X-API-Key": k})], connections=1)
                ks.revoke(f"soak_churn_{rnd}")
            if time.time() >= next_sample:
                samples.append((round(time.time() - (t_end - args.seconds)), memory(e)))
                next_sample = time.time() + 10
        samples.append((args.seconds, memory(e)))
    finally:
        e.stop()
        ks.stop()
        up.stop()
    base = samples[1][1] if len(samples) > 2 else samples[0][1]
    last = samples[-1][1]
    print(f"soak: {args.seconds}s, {sum(counts.values())} requests, statuses {dict(sorted(counts.items()))}")
    for t, m in samples:
        print(f"  t={t:>4}s allocated={m['allocated'] / 1e6:8.2f} MB heap={m['heap_size'] / 1e6:8.2f} MB")
    print(f"growth after warm-up: allocated {(last['allocated'] - base['allocated']) / 1e6:+.2f} MB, "
          f"heap {(last['heap_size'] - base['heap_size']) / 1e6:+.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
