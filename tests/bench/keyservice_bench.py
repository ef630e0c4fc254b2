#!/usr/bin/env python3
"""The key service's benchmark (not a test): the Rust service (envoy/keyservice) and the Python
reference it replaced, side by side in one run, then what keygate's key-format check saves.

    python3 tests/bench/keyservice_bench.py [--seconds 10] [--rounds 2] [--connections 16] [--out FILE]

Needs `wrk` (apt-get install -y wrk), Envoy (envoy/find-envoy.sh), the built keygate.wasm
(`cargo wasm`) and key service (`cargo build --release -p keyservice`). The Python reference is
no longer in the tree: it is taken from git history (the last commit that had
envoy/keyservice/keyservice.py) into a temporary directory. Everything listens on loopback; every
load run is bounded by --seconds.

1. **The service alone**: `wrk` posts `/v1/keys/verify` with 2,000 valid keys in turn (each
   service holds the same 2,000 imported keys in SQLite): verifications a second, p50 and p99.
   The service is pinned to CPU 0, wrk to CPU 1.
2. **End to end through Envoy**: one Envoy worker with keygate (CPU 0) in front of the echo
   upstream, the key service (CPU 1) behind it, `wrk` (CPU 1) sending a new random key in the
   published format on every request: each request is a keygate cache miss and a verify call
   (answered NOT_FOUND, so 401). Requests a second, p50, p99.
3. **A random-key flood with and without `key_service.key_format`** (the Rust service): the same
   load; calls that reached the service (its /metrics) and Envoy's CPU seconds per 1,000
   requests (/proc/PID/stat).

Rounds alternate the variants (A B A B ...) so the machine's drift hits each alike; the table
gives the median of the rounds.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "tests" / "bench"
WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "keygate.wasm"
RUST_BIN = ROOT / "target" / "release" / "keyservice"
REFERENCE_PATH = "envoy/keyservice/keyservice.py"
N_KEYS = 2000
CHECK_PREFIXES = ["kgb_", "kgp_", "kgn_"]

VERIFY_LUA = """
local f = assert(io.open("%(keys)s", "r"))
keys = {}
for line in f:lines() do keys[#keys + 1] = line end
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local i = 0
request = function()
   i = i + 1
   return wrk.format(nil, "/v1/keys/verify", nil, '{"key":"' .. keys[(i %% #keys) + 1] .. '","user":null}')
end
"""

# a random key in the published shape (prefix, 38 base62 characters) whose checksum is wrong
# (almost always: 1 in 62^6 is right by chance)
RANDOM_KEY_LUA = """
local f = assert(io.open("/dev/urandom", "rb"))
local bytes = f:read(6)
f:close()
local seed = 0
for i = 1, #bytes do seed = seed * 256 + bytes:byte(i) end
math.randomseed(seed)
local alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
request = function()
   local t = {"kgb_"}
   for i = 1, 38 do
      local n = math.random(62)
      t[#t + 1] = alphabet:sub(n, n)
   end
   return wrk.format(nil, "/v1/objects/events", {["Authorization"] = "Bearer " .. table.concat(t)})
end
"""


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"exited {proc.returncode}:\n{log.read_text(errors='replace')[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listens on {port}:\n{log.read_text(errors='replace')[-2000:]}")


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        p = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            self.stop(p)


def reference_source(work: Path) -> tuple[Path, str]:
    """envoy/keyservice/keyservice.py from the last commit that had it."""
    last = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%H", "--", REFERENCE_PATH],
                          check=True, capture_output=True, text=True).stdout.strip()
    if not last:
        raise BenchError(f"{REFERENCE_PATH} is in no commit")
    for rev in (last, f"{last}^"):
        r = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{REFERENCE_PATH}"], capture_output=True)
        if r.returncode == 0:
            out = work / "keyservice.py"
            out.write_bytes(r.stdout)
            commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True,
                                    capture_output=True, text=True).stdout.strip()
            return out, commit
    raise BenchError(f"could not read {REFERENCE_PATH} from {last} or its parent")


class Service:
    def __init__(self, procs: Procs, name: str, cmd: list[str], work: Path, cpu: str,
                 env: dict | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.log = work / f"{name}.log"
        full = ["taskset", "-c", cpu] + [c.replace("{port}", str(self.port)) for c in cmd]
        env = {**os.environ, **(env or {}), "KEYSERVICE_ADMIN_TOKEN": self.token}
        full = [c.replace("{token}", self.token) for c in full]
        self.proc = procs.start(full, self.log, env)
        wait_port(self.port, self.proc, self.log)

    def post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
                                     method="POST", headers={"x-admin-token": self.token,
                                                             "content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"{}")


def envoy_config(port: int, admin: int, upstream: int, ks: int, key_format: bool) -> dict:
    ks_cfg = {"cluster": "keyservice", "timeout_ms": 2000, "revocation_poll_ms": 1000, "negative_ttl_s": 30}
    if key_format:
        ks_cfg["key_format"] = {"prefixes": CHECK_PREFIXES}
    plugin = {"key_service": ks_cfg, "auth_throttle": False}

    def cluster(name: str, p: int) -> dict:
        return {"name": name, "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}]}]}}
    return {
        "static_resources": {
            "listeners": [{"name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                           "filter_chains": [{"filters": [{
                               "name": "envoy.filters.network.http_connection_manager",
                               "typed_config": {
                                   "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                   "stat_prefix": "ingress",
                                   "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                                       {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]},
                                   "http_filters": [
                                       {"name": "envoy.filters.http.wasm", "typed_config": {
                                           "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                                           "config": {"name": "keygate", "root_id": "keygate",
                                                      "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                                                        "value": json.dumps(plugin)},
                                                      "vm_config": {"vm_id": "keygate", "runtime": "envoy.wasm.runtime.v8",
                                                                    "code": {"local": {"filename": str(WASM)}}}}}},
                                       {"name": "envoy.filters.http.router", "typed_config": {
                                           "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}],
            "clusters": [cluster("upstream", upstream), cluster("keyservice", ks)],
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
    }


def wrk(port: int, lua: Path, seconds: float, connections: int, cpu: str = "1") -> dict:
    cmd = ["taskset", "-c", cpu, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "5s",
           "-s", str(lua), f"http://127.0.0.1:{port}/"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    out = run.stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise BenchError(f"wrk failed: {' '.join(cmd)}\n{out}\n{run.stderr}")
    rps = float(m.group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "requests": total, "p50_ms": pct("50"), "p99_ms": pct("99"),
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(1) if errors else ""}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rust_verify_calls(svc: Service) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{svc.port}/metrics", timeout=10) as r:
        m = re.search(r"^keyservice_verify_calls_total (\d+)$", r.read().decode(), re.M)
    return int(m.group(1)) if m else -1


def envoy_counter(admin: int, name: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter={name}", timeout=10) as r:
        m = re.search(rf"{re.escape(name)}: (\d+)", r.read().decode())
    return int(m.group(1)) if m else 0


def med(runs: list[dict], k: str) -> float:
    return statistics.median(r[k] for r in runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--out", help="results file (default: tests/bench/keyservice-results-DATE.md)")
    args = ap.parse_args()
    if not 1 <= args.seconds <= 120:
        raise SystemExit("--seconds: 1 to 120")
    for need, how in ((shutil.which("wrk"), "apt-get install -y wrk"), (WASM.exists() or None, "cargo wasm"),
                      (RUST_BIN.exists() or None, "cargo build --release -p keyservice")):
        if not need:
            raise SystemExit(f"missing: {how}")
    envoy_cmd = subprocess.run([str(ROOT / "envoy" / "find-envoy.sh")], check=True, capture_output=True,
                               text=True).stdout.split()
    work = Path(tempfile.mkdtemp(prefix="keygate-ksbench-"))
    procs = Procs()
    results: dict = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                     "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
                     "seconds": args.seconds, "rounds": args.rounds, "connections": args.connections}
    try:
        ref_py, ref_commit = reference_source(work)
        results["reference_commit"] = ref_commit
        rust_commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True,
                                     capture_output=True, text=True).stdout.strip()
        results["rust_commit"] = rust_commit
        keys = [f"kgb_bench_{i:05d}_{secrets.token_hex(12)}" for i in range(N_KEYS)]
        keyfile = work / "keys.txt"
        keyfile.write_text("\n".join(keys) + "\n")
        verify_lua = work / "verify.lua"
        verify_lua.write_text(VERIFY_LUA % {"keys": keyfile})
        random_lua = work / "random-key.lua"
        random_lua.write_text(RANDOM_KEY_LUA)

        def start(name: str, cpu: str) -> Service:
            if name == "rust":
                return Service(procs, "rust", [str(RUST_BIN), "--db", str(work / "rust.sqlite"), "serve",
                                               "--port", "{port}"], work, cpu)
            return Service(procs, "python", [sys.executable, str(ref_py), "--port", "{port}", "--db",
                                             str(work / "python.sqlite"), "--admin-token", "{token}"], work, cpu)

        def seed(svc: Service) -> None:
            for i, k in enumerate(keys):
                svc.post("/admin/keys", {"key": k, "id": f"bk_bench_{i:05d}", "account": "bench", "plan": "free"})

        # ---- 1. the service alone
        print("1. the service alone (wrk -> /v1/keys/verify)", file=sys.stderr)
        alone: dict[str, list] = {"rust": [], "python": []}
        svcs = {n: start(n, "0") for n in ("rust", "python")}
        for svc in svcs.values():
            seed(svc)
        for name, svc in svcs.items():
            wrk(svc.port, verify_lua, 2, args.connections)  # warm-up
        for rnd in range(args.rounds):
            for name, svc in svcs.items():
                r = wrk(svc.port, verify_lua, args.seconds, args.connections)
                if r["non2xx"] or r["socket_errors"]:
                    raise BenchError(f"{name}: {r}")
                alone[name].append(r)
                print(f"   round {rnd + 1} {name}: {r['rps']:.0f}/s p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms",
                      file=sys.stderr)
        for svc in svcs.values():
            procs.stop(svc.proc)
        results["alone"] = alone

        # ---- 2. end to end, a new key on every request; 3. the flood with and without the check
        upstream_port = free_port()
        procs.start(["taskset", "-c", "1", sys.executable, str(ROOT / "tests" / "services" / "echo.py"),
                     "--port", str(upstream_port)], work / "echo.log")
        svcs = {n: start(n, "1") for n in ("rust", "python")}

        def envoy(ks: Service, key_format: bool, tag: str) -> tuple[subprocess.Popen, int, int]:
            port, admin = free_port(), free_port()
            cfg = work / f"envoy-{tag}.json"
            cfg.write_text(json.dumps(envoy_config(port, admin, upstream_port, ks.port, key_format)))
            p = procs.start(["taskset", "-c", "0", *envoy_cmd, "-c", str(cfg), "--concurrency", "1",
                             "--disable-hot-restart", "-l", "warning"],
                            work / f"envoy-{tag}.log")
            wait_port(port, p, work / f"envoy-{tag}.log")
            deadline = time.monotonic() + 10
            while envoy_counter(admin, "keygate.revocations.polls") < 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            return p, port, admin

        print("2. end to end through Envoy (1 worker), a new random key on every request", file=sys.stderr)
        e2e: dict[str, list] = {"rust": [], "python": []}
        envoys = {n: envoy(svcs[n], False, f"e2e-{n}") for n in svcs}
        for name, (p, port, admin) in envoys.items():
            wrk(port, random_lua, 2, args.connections, "1")
        for rnd in range(args.rounds):
            for name, (p, port, admin) in envoys.items():
                time.sleep(1.5)  # keygate adds its counts to Envoy's on the worker's tick (<= 1 s)
                calls0 = envoy_counter(admin, "keygate.keyservice.calls")
                r = wrk(port, random_lua, args.seconds, args.connections, "1")
                time.sleep(1.5)
                r["calls_per_request"] = (envoy_counter(admin, "keygate.keyservice.calls") - calls0) / max(1, r["requests"])
                e2e[name].append(r)
                print(f"   round {rnd + 1} {name}: {r['rps']:.0f}/s p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms "
                      f"(calls/request {r['calls_per_request']:.3f}, non-2xx {r['non2xx']})", file=sys.stderr)
        for p, _, _ in envoys.values():
            procs.stop(p)
        results["e2e"] = e2e

        print("3. random-key flood, the Rust service, key_format off and on", file=sys.stderr)
        flood: dict[str, list] = {"off": [], "on": []}
        envoys = {"off": envoy(svcs["rust"], False, "flood-off"), "on": envoy(svcs["rust"], True, "flood-on")}
        for rnd in range(args.rounds):
            for name, (p, port, admin) in envoys.items():
                time.sleep(1.5)  # calls still in flight from the run before land before the count starts
                calls0, cpu0 = rust_verify_calls(svcs["rust"]), cpu_seconds(p.pid)
                r = wrk(port, random_lua, args.seconds, args.connections, "1")
                cpu1 = cpu_seconds(p.pid)
                time.sleep(1.5)
                r["service_calls"] = rust_verify_calls(svcs["rust"]) - calls0
                r["envoy_cpu_ms_per_1k"] = (cpu1 - cpu0) * 1e6 / max(1, r["requests"])
                flood[name].append(r)
                print(f"   round {rnd + 1} key_format {name}: {r['rps']:.0f}/s, {r['service_calls']} service calls "
                      f"for {r['requests']} requests, Envoy {r['envoy_cpu_ms_per_1k']:.0f} ms CPU / 1k requests",
                      file=sys.stderr)
        results["flood"] = flood
    finally:
        procs.stop_all()

    ratio_alone = med(results["alone"]["rust"], "rps") / med(results["alone"]["python"], "rps")
    ratio_e2e = med(results["e2e"]["rust"], "rps") / med(results["e2e"]["python"], "rps")
    lines = [
        f"# Key service benchmark, {results['date']}",
        "",
        f"`python3 tests/bench/keyservice_bench.py --seconds {args.seconds:g} --rounds {args.rounds} "
        f"--connections {args.connections}` on {results['machine']}; the Rust service at {results['rust_commit']}, "
        f"the Python reference from {results['reference_commit']} (git history). Medians of {args.rounds} rounds, "
        f"wrk -t1 -c{args.connections}, SQLite for both, 2,000 keys.",
        "",
        "## 1. The service alone (`POST /v1/keys/verify`, valid keys; service on CPU 0, wrk on CPU 1)",
        "",
        "| service | verifications/s | p50 | p99 |",
        "| --- | ---: | ---: | ---: |",
    ]
    for n in ("rust", "python"):
        lines.append(f"| {n} | {med(results['alone'][n], 'rps'):,.0f} | {med(results['alone'][n], 'p50_ms'):.2f} ms "
                     f"| {med(results['alone'][n], 'p99_ms'):.2f} ms |")
    lines += ["", f"Rust / Python: **{ratio_alone:.1f}×** verifications a second.", "",
              "## 2. End to end: Envoy (1 worker, CPU 0) + keygate, a new random key on every request (a verify call each; 401)",
              "", "| service | requests/s | p50 | p99 | verify calls / request |", "| --- | ---: | ---: | ---: | ---: |"]
    for n in ("rust", "python"):
        lines.append(f"| {n} | {med(results['e2e'][n], 'rps'):,.0f} | {med(results['e2e'][n], 'p50_ms'):.2f} ms "
                     f"| {med(results['e2e'][n], 'p99_ms'):.2f} ms | {med(results['e2e'][n], 'calls_per_request'):.3f} |")
    lines += ["", f"Rust / Python: **{ratio_e2e:.1f}×** requests a second.", "",
              "## 3. Random-key flood (published shape, wrong checksum) against the Rust service",
              "", "| `key_service.key_format` | requests/s | p50 | p99 | calls reaching the service | Envoy CPU per 1,000 requests |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for n in ("off", "on"):
        f = results["flood"][n]
        lines.append(f"| {n} | {med(f, 'rps'):,.0f} | {med(f, 'p50_ms'):.2f} ms | {med(f, 'p99_ms'):.2f} ms "
                     f"| {sum(r['service_calls'] for r in f):,} of {sum(r['requests'] for r in f):,} "
                     f"| {med(f, 'envoy_cpu_ms_per_1k'):.0f} ms |")
    lines += ["", "Raw runs:", "", "```json", json.dumps(results, indent=1), "```", ""]
    out = Path(args.out) if args.out else BENCH / f"keyservice-results-{dt.date.today().isoformat()}.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines[:40]))
    print(f"\nwritten to {out}", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
