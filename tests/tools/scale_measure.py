#!/usr/bin/env python3
"""Measurements with many keys in a real Envoy (not a test: minutes, and its figures go in
tests/bench/RESULTS.md). Loopback only; every process it starts is stopped at the end.

    python3 tests/tools/scale_measure.py embedded --keys 100000 [--wasm PATH] [--check BIN]
        Envoy (2 workers) with N embedded keys: seconds from Envoy's start until a request with
        the last key is served, the CPU time Envoy used by then (all threads) and the machine's
        load, Envoy's /memory, RSS and peak RSS. With --check, first the time and peak RSS of
        keygate-check (e.g. target/release/keygate-check) on the keygate and Envoy configurations.
        Envoy is stopped when the machine's available memory falls below --min-free-mb.
    python3 tests/tools/scale_measure.py remote --keys 1000000 [--slots '{}'] [--wasm PATH]
        N distinct valid keys from tests/services/stubkeys.py through Envoy (8 connections),
        each a miss, a call and a stored verdict; Envoy's /memory every 100,000 keys, and the
        latency of a probe request (one hot key, every 20 ms, its own connection) throughout:
        count over 10 ms, 50 ms, and the worst, and Envoy's own duration of each slow probe (the
        probe is a thread beside the flood's: what Envoy did not spend, the client waited).
    python3 tests/tools/scale_measure.py spikes --keys 1000000 [--slice-s 2] [--max-s 1500]
        Where tail latency comes from, side by side in one run: three Envoys (2 workers each,
        direct responses) driven in turn, in short slices, by one single-threaded client (8
        connections, one request in flight each, its GC off while it measures): `distinct`
        (keygate, a new stub key every request: a miss, a call, a verdict stored, until --keys),
        `hot` (keygate, one cached key), `router` (no keygate), and `stub` (the stub key service
        itself, a verify call). Per variant: every request's latency as the client saw it (p50 to
        max, counts over 10/50/100 ms, stalls), Envoy's own duration for each slow one (its access
        log), Envoy's histograms and keygate's counters, the load average of each slice, and how
        long the client's, the stub's and that Envoy's threads waited for a core (schedstat).
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
from typing import Callable

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


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def timed_check(binary: str, path: Path) -> dict:
    """keygate-check on one file: its wall time, exit status and peak RSS."""
    import subprocess
    t = time.monotonic()
    proc = subprocess.Popen([binary, str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"file": path.name, "file_mb": round(path.stat().st_size / 2**20, 1), "exit": proc.returncode,
            "wall_s": round(time.monotonic() - t, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "said": out.decode(errors="replace").strip()[-200:]}


def embedded(args) -> None:
    import tempfile
    from harness import Envoy, Upstream
    n = args.keys
    keys = [{"id": f"e{i}", "sha256": hashlib.sha256(f"kg_emb_{i}".encode()).hexdigest(), "plan": "big"}
            for i in range(n)]
    cfg = {"keys": keys, "rate_limit": {"plans": {"big": {"requests": 1000, "window_s": 1}}}}
    up = Upstream()
    e = Envoy(cfg, up.port)
    if args.check:
        d = Path(tempfile.mkdtemp(prefix="keygate-check-"))
        (d / "keygate.json").write_text(json.dumps(cfg))
        e.workdir = d  # the log paths in the configuration; start() makes its own
        (d / "envoy.json").write_text(json.dumps(e.config()))
        e.workdir = None
        for f in ("keygate.json", "envoy.json"):
            print(json.dumps({"keygate_check": timed_check(args.check, d / f), "load_1min": os.getloadavg()[0]}),
                  flush=True)
            (d / f).unlink()
        d.rmdir()
    t0 = time.monotonic()
    e.start(wait_ready=False)
    last = f"kg_emb_{n - 1}"

    def served():
        try:
            return e.req("GET", "/x", [("X-API-Key", last)], timeout=2).status == 200
        except OSError:
            return False
    try:
        low = mem_available_mb()
        ready_s = None
        while not served():
            if e.proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {e.proc.returncode}:\n{e.logs()[-3000:]}")
            low = min(low, mem_available_mb())
            if low < args.min_free_mb:
                raise RuntimeError(f"aborted: the machine's available memory fell to {low:.0f} MB "
                                   f"(Envoy RSS {rss_mb(e.proc.pid):.0f} MB, after {time.monotonic() - t0:.1f} s)")
            if time.monotonic() - t0 > args.max_s:
                raise RuntimeError(f"aborted: not serving after {args.max_s} s")
            if ready_s is None:
                try:
                    if e.admin("/ready").strip() == "LIVE":
                        ready_s = round(time.monotonic() - t0, 2)
                except OSError:
                    pass
            time.sleep(0.05)
        took = time.monotonic() - t0
        cpu = cpu_s(e.proc.pid)
        print(json.dumps({"keys": n, "config_bytes": len(json.dumps(cfg)), "serving_after_s": round(took, 2),
                          "admin_ready_after_s": ready_s, "envoy_cpu_s": round(cpu, 2),
                          "load_1min": os.getloadavg()[0], "peak_rss_mb": round(peak_rss_mb(e.proc.pid), 1),
                          "machine_available_mb_lowest": round(low), **memory(e)}), flush=True)
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
    import tempfile
    log = Path(tempfile.mkdtemp(prefix="keygate-remote-")) / "access.log"
    # Envoy's own duration of each request (ms), beside the probe's: a slow probe that Envoy
    # served fast waited outside Envoy's processing (the client's threads, a core)
    hcm = {**DIRECT, "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": str(log), "log_format": {"text_format_source": {"inline_string": "%PATH(NQ)% %DURATION%\n"}}}}]}
    e = Envoy(cfg, up.port, extra_clusters=[stub.cluster()], hcm=hcm)
    e.start().wait_feed_polled()
    lat: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", e.port, timeout=10)
        while not stop.is_set():
            t = time.monotonic()
            c.request("GET", f"/probe/{len(lat)}", headers={"X-API-Key": "kg_stub_999999999"})
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
        time.sleep(1.5)  # the access log flushed
        slow = {i: x for i, x in enumerate(lat) if x > 0.010}
        envoy_ms = {}
        for line in log.read_text().splitlines():
            path, _, dur = line.partition(" ")
            if path.startswith("/probe/") and int(path[7:]) in slow:
                envoy_ms[int(path[7:])] = int(dur)
        print(json.dumps({"probes_over_10ms": len(slow),
                          "of_which_envoy_duration_over_10ms": sum((envoy_ms.get(i) or 0) >= 10 for i in slow),
                          "worst_probe_ms_and_envoy_ms": sorted((round(x * 1000, 1), envoy_ms.get(i))
                                                                for i, x in slow.items())[-10:]}))
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


def router_envoy(*a, **kw):
    """An Envoy without keygate: the harness's configuration with the wasm filter taken out."""
    from harness import Envoy

    class Router(Envoy):
        def config(self) -> dict:
            cfg = super().config()
            hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.wasm"]
            return cfg
    return Router(*a, **kw)


def drive(port: int, make: "Callable[[int], bytes]", seq: int, conns: int, seconds: float,
          out: list, other: dict) -> int:
    """One client thread, `conns` keep-alive connections, one request in flight on each, for
    `seconds`: appends (start, latency, seq) per 200 response to `out` (time.monotonic seconds),
    and counts any other status in `other` (status: [count, first body]); returns the next
    sequence number. Requests already sent when time is up are awaited."""
    import selectors
    import socket
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(conns):
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.setblocking(False)
        socks.append(c)
    state: dict = {}
    deadline = time.monotonic() + seconds

    def send(c) -> None:
        nonlocal seq
        req = make(seq)
        state[c] = [bytearray(), time.monotonic(), seq]
        seq += 1
        if c.send(req) != len(req):
            raise RuntimeError("a request did not fit in the socket buffer")
    for c in socks:
        sel.register(c, selectors.EVENT_READ)
        send(c)
    busy = len(socks)
    hard = deadline + 15
    while busy and time.monotonic() < hard:
        for k, _ in sel.select(0.5):
            c = k.fileobj
            chunk = c.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            st = state[c]
            buf = st[0]
            buf.extend(chunk)
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                continue
            head = bytes(buf[:end]).lower()
            i = head.find(b"content-length:")
            length = int(head[i + 15:].split(b"\r\n", 1)[0]) if i >= 0 else 0
            if len(buf) < end + 4 + length:
                continue
            t = time.monotonic()
            status = int(head[9:12])
            if status == 200:
                out.append((st[1], t - st[1], st[2]))
            else:
                other.setdefault(status, [0, bytes(buf[end + 4:end + 4 + length]).decode(errors="replace")])[0] += 1
            del buf[:end + 4 + length]
            if t < deadline:
                send(c)
            else:
                sel.unregister(c)
                busy -= 1
    for c in socks:
        c.close()
    sel.close()
    return seq


def runq_wait_s(pid: int | str) -> float:
    """Seconds the process's threads have spent runnable but waiting for a core (schedstat)."""
    total = 0
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((t / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


def quantiles(lat: list[float]) -> dict:
    lat = sorted(lat)
    n = len(lat)

    def q(p: float) -> float:
        return round(lat[min(n - 1, int(n * p))] * 1000, 2)
    return {"requests": n, "p50_ms": q(0.5), "p99_ms": q(0.99), "p99.9_ms": q(0.999),
            "p99.99_ms": q(0.9999), "max_ms": round(lat[-1] * 1000, 1),
            "over_10ms": sum(x > 0.010 for x in lat), "over_50ms": sum(x > 0.050 for x in lat),
            "over_100ms": sum(x > 0.100 for x in lat)}


def histogram(e, name: str) -> str:
    """Envoy's cumulative quantiles of one histogram (`P99.9(…)` of /stats), as one line."""
    for line in e.admin(f"/stats?filter={name}$&histogram_buckets=none").splitlines():
        if line.startswith(name):
            parts = line.split(": ", 1)[1].split()
            return " ".join(p.split("(")[0] + "=" + p.split(",")[1].rstrip(")") for p in parts
                            if p.startswith(("P50(", "P99(", "P99.9(", "P100(")))
    return "(none)"


def spikes(args) -> None:
    import gc
    import tempfile
    from harness import Envoy, Upstream
    from loadgen import get
    from test_scale import DIRECT, Stub, config, key
    stub = Stub("big")
    cfg = config({}, {"big": {"requests": 1_000_000_000, "window_s": 1}})
    cfg.pop("slots")
    up = Upstream()
    logdir = Path(tempfile.mkdtemp(prefix="keygate-spikes-"))
    fmt = "%PATH(NQ)% %DURATION% %START_TIME(%s.%3f)%\n"

    def hcm(name: str) -> dict:
        return {**DIRECT, "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(logdir / f"{name}.log"),
            "log_format": {"text_format_source": {"inline_string": fmt}}}}]}
    envoys = {
        "distinct": Envoy(cfg, up.port, extra_clusters=[stub.cluster()], hcm=hcm("distinct")),
        "hot": Envoy(cfg, up.port, extra_clusters=[stub.cluster()], hcm=hcm("hot")),
        "router": router_envoy(cfg, up.port, extra_clusters=[stub.cluster()], hcm=hcm("router")),
    }
    hot = "kg_stub_999999999"
    makers = {
        "distinct": lambda n: get(f"/d/{n}", {"X-API-Key": key(n)}),
        "hot": lambda n: get(f"/h/{n}", {"X-API-Key": hot}),
        "router": lambda n: get(f"/r/{n}", {"X-API-Key": hot}),
    }

    def verify(n: int) -> bytes:
        body = json.dumps({"key": key(2_000_000_000 + n)}).encode()
        return (b"POST /v1/keys/verify HTTP/1.1\r\nHost: stub\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n" % len(body)) + body
    makers["stub"] = verify
    names = ["distinct", "hot", "router", "stub"]
    recs: dict[str, list] = {n: [] for n in names}
    seqs = {n: 0 for n in names}
    others: dict[str, dict] = {n: {} for n in names}  # statuses other than 200
    slices: list[dict] = []
    try:
        for name, e in envoys.items():
            e.start()
        for name in ("distinct", "hot"):
            envoys[name].wait_feed_polled()
        envoys["hot"].req("GET", "/warm", [("X-API-Key", hot)])
        ports = {n: e.port for n, e in envoys.items()}
        ports["stub"] = stub.port
        print(json.dumps({"start": {n: memory(e) for n, e in envoys.items()}, "load": os.getloadavg()}), flush=True)
        # whose threads waited for a core during each slice: the client, the Envoy or stub it drives
        pids = {"client": "self", "stub": stub.proc.pid, **{n: e.proc.pid for n, e in envoys.items()}}
        gc.collect()
        gc.freeze()
        t0 = time.monotonic()
        r = 0
        while seqs["distinct"] < args.keys and time.monotonic() - t0 < args.max_s:
            order = names[r % 4:] + names[:r % 4]
            for name in order:
                gc.disable()
                w0 = {w: runq_wait_s(pid) for w, pid in pids.items()}
                s0 = time.monotonic()
                before = len(recs[name])
                seqs[name] = drive(ports[name], makers[name], seqs[name], 8, args.slice_s, recs[name], others[name])
                gc.enable()
                slices.append({"round": r, "variant": name, "start": s0 - t0, "requests": len(recs[name]) - before,
                               "load": os.getloadavg()[0], "wait": {w: runq_wait_s(pid) - w0[w] for w, pid in pids.items()}})
                gc.collect()
            r += 1
            if r % 10 == 0:
                print(json.dumps({"round": r, "elapsed_s": round(time.monotonic() - t0, 1), "keys": seqs["distinct"],
                                  "load": os.getloadavg(), "rss_mb": {n: round(rss_mb(e.proc.pid), 1)
                                                                     for n, e in envoys.items()}}), flush=True)
        print(json.dumps({"rounds": r, "elapsed_s": round(time.monotonic() - t0, 1), "slice_s": args.slice_s,
                          "load_per_slice": [min(s["load"] for s in slices), max(s["load"] for s in slices)]}))
        time.sleep(5.5)  # the access logs flushed, the histograms merged (every 5 s)
        for name in names:
            lat = [x[1] for x in recs[name]]
            secs = sum(s_["requests"] and args.slice_s for s_ in slices if s_["variant"] == name)
            row = {"variant": name, **quantiles(lat), "rps": round(len(lat) / secs), "not_200": others[name]}
            mine = [s_ for s_ in slices if s_["variant"] == name]
            # ms a second of this variant's slices that threads waited for a core
            row["runq_wait_ms_per_s"] = {w: round(sum(s_["wait"][w] for s_ in mine) * 1000 / secs, 1)
                                         for w in ("client", "stub", name) if w in pids}
            row["load_min_max"] = [min(s_["load"] for s_ in mine), max(s_["load"] for s_ in mine)]
            if name in envoys:
                e = envoys[name]
                row["envoy_downstream_rq_time"] = histogram(e, "http.ingress.downstream_rq_time")
                row["memory"] = memory(e)
                # Envoy's own duration (ms, its access log) of each request the client saw over 10 ms
                slow = {x[2]: x for x in recs[name] if x[1] > 0.010}
                envoy_ms = {}
                for line in (logdir / f"{name}.log").read_text().splitlines():
                    path, dur, start = line.split(" ")
                    n = path.rsplit("/", 1)[1]
                    if n.isdigit() and int(n) in slow:
                        n = int(n)
                        envoy_ms[n] = int(dur)
                row["slow_envoy_duration_ms"] = sorted((round(slow[n][1] * 1000, 1), envoy_ms.get(n))
                                                       for n in slow)[-15:]
                row["slow_envoy_over_10ms"] = sum(1 for n in slow if (envoy_ms.get(n) or 0) >= 10)
            print(json.dumps(row), flush=True)
        print(histogram(envoys["distinct"], "cluster.stub.upstream_rq_time"))
        # Stalls: the requests over 10 ms that overlap in time, merged into one event. A stall of
        # every connection at once is the client, the machine or a whole Envoy; one request alone is
        # that request's own path.
        for name in names:
            slow = sorted((x for x in recs[name] if x[1] > 0.010), key=lambda x: x[0])
            events: list[list] = []
            for st, l_, n in slow:
                if events and st < events[-1][1]:
                    ev = events[-1]
                    ev[1] = max(ev[1], st + l_)
                    ev[2] = max(ev[2], l_)
                    ev[3] += 1
                else:
                    events.append([st, st + l_, l_, 1])
            worst = sorted(events, key=lambda ev: ev[2])[-5:]
            print(json.dumps({"variant": name, "stalls_over_10ms": len(events),
                              "stalls_over_50ms": sum(ev[2] > 0.05 for ev in events),
                              "requests_per_stall_mean": round(sum(ev[3] for ev in events) / max(1, len(events)), 1),
                              "worst": [{"ms": round(ev[2] * 1000, 1), "at_s": round(ev[0] - t0, 1), "requests": ev[3]}
                                        for ev in worst]}))
        for name in ("distinct", "hot"):
            print(name, envoys[name].admin("/stats?filter=keygate.(slots|keyservice|revocations)").strip().replace("\n", "; "))
    finally:
        for e in envoys.values():
            e.stop()
        up.stop()
        stub.stop()
        import shutil
        shutil.rmtree(logdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["embedded", "remote", "spikes"])
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--slots", default="{}", help="the slots section as JSON ({}: the defaults)")
    ap.add_argument("--wasm", help="another keygate.wasm (an older build)")
    ap.add_argument("--slice-s", type=float, default=2.0, help="spikes: seconds per variant per turn")
    ap.add_argument("--max-s", type=float, default=1500,
                    help="spikes: stop after this long even short of --keys; embedded: give up after this long")
    ap.add_argument("--check", help="embedded: time this keygate-check binary on the configuration first")
    ap.add_argument("--min-free-mb", type=float, default=3072,
                    help="embedded: stop Envoy when the machine's available memory falls below this")
    args = ap.parse_args()
    if args.wasm:
        os.environ["KEYGATE_WASM"] = args.wasm
    {"embedded": embedded, "remote": remote, "spikes": spikes}[args.mode](args)


if __name__ == "__main__":
    main()
