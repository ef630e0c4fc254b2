"""Issue #15: fleet-wide limits. Two Envoys (two workers each) share one rate-limit engine (the test
engine over the `limitador` library) on loopback; a key's limit holds across both, per request
(exact) and leased (never over; under-admission within the stated bound). The engine's failures
(down, slow, erroring, garbage, flapping) are failures, never verdicts."""
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import Envoy, RlsEngine, grpc_cluster, cluster, wait_until
from keys import sha

LIMITS = """
- namespace: keygate
  max_value: 30
  seconds: 3600
  conditions: ["descriptors[0].plan == 'perreq'"]
  variables: ["descriptors[0].key_id"]
- namespace: keygate
  max_value: 60
  seconds: 3600
  conditions: ["descriptors[0].plan == 'leased'"]
  variables: ["descriptors[0].key_id"]
- namespace: keygate
  max_value: 40
  seconds: 3600
  conditions: ["descriptors[0].plan == 'team'"]
  variables: ["descriptors[0].account"]
- namespace: keygate
  max_value: 2
  seconds: 3600
  conditions: ["descriptors[0].plan == 'fragile'"]
  variables: ["descriptors[0].key_id"]
- namespace: keygate
  max_value: 4
  seconds: 3600
  conditions: ["descriptors[0].plan == 'key'"]
  variables: ["descriptors[0].key_id"]
- namespace: keygate
  max_value: 5
  seconds: 2
  conditions: ["descriptors[0].plan == 'short'"]
  variables: ["descriptors[0].key_id"]
"""

NAMES = [f"pr-{i}" for i in range(4)] + [f"ls-{i}" for i in range(6)] + ["t1", "t2"] + [f"fr-{i}" for i in range(4)] + ["sh-0", "sh-1", "ov-0"]


def key(name: str) -> dict:
    if name.startswith("ov-"):
        # a key with its own limit: the policy named `key`
        return {"id": name, "sha256": sha(f"secret-{name}"), "account": name, "plan": "perreq",
                "rate_limit": {"requests": 1000, "window_s": 3600}}
    plan = {"pr": "perreq", "ls": "leased", "t1": "team", "t2": "team", "fr": "fragile", "sh": "short"}[name.split("-")[0]]
    return {"id": name, "sha256": sha(f"secret-{name}"), "account": "acme" if plan == "team" else name, "plan": plan}


def config(on_failure="local", timeout_ms=300, engine_cluster="ratelimit"):
    return {
        "keys": [key(n) for n in NAMES],
        "rate_limit": {"plans": {
            # the local limits are per Envoy, and differ from the engine's on purpose: the
            # headers and counts must be the engine's
            "perreq": {"requests": 1000, "window_s": 3600},
            "leased": {"requests": 1000, "window_s": 3600},
            "team": {"requests": 1000, "window_s": 3600, "per": "account"},
            "fragile": {"requests": 3, "window_s": 3600},
            "short": {"requests": 1000, "window_s": 2},
        }},
        "fleet": {"cluster": engine_cluster, "timeout_ms": timeout_ms, "on_failure": on_failure,
                  "plans": {"perreq": "request", "leased": "leased", "team": "leased", "fragile": "request",
                            "short": "leased", "key": "request"},
                  "lease": {"max": 8, "percent": 20}},
    }


@pytest.fixture(scope="module")
def engine():
    e = RlsEngine(LIMITS)
    yield e
    e.stop()


@pytest.fixture(scope="module")
def fleet(engine, upstream):
    envoys = [Envoy(config(), upstream.port, concurrency=2, extra_clusters=[grpc_cluster("ratelimit", engine.port)]).start()
              for _ in range(2)]
    yield envoys
    for e in envoys:
        e.stop()


def call(envoy, name, path="/r"):
    return envoy.req("GET", path, [("X-API-Key", f"secret-{name}")])


def statuses_concurrent(envoys, name, total):
    with ThreadPoolExecutor(max_workers=24) as pool:
        return list(pool.map(lambda i: call(envoys[i % len(envoys)], name).status, range(total)))


def test_per_request_exact_sequential_across_two_envoys(fleet, engine):
    before = len(engine.calls())
    got = [call(fleet[i % 2], "pr-0") for i in range(50)]
    ok = [r for r in got if r.status == 200]
    assert len(ok) == 30, [r.status for r in got]
    assert all(r.status == 429 for r in got[30:])
    # one truthful set of headers: the engine's limit and count, not the local plan's
    assert [r.header("x-ratelimit-limit") for r in ok] == ["30"] * 30
    assert [int(r.header("x-ratelimit-remaining")) for r in ok] == list(range(29, -1, -1))
    assert all(len(r.all("x-ratelimit-limit")) == 1 for r in got)
    deny = got[30]
    assert deny.header("content-type") == "application/problem+json"
    body = deny.json()
    assert body["type"] == "urn:keygate:problem:rate-limited" and body["status"] == 429
    assert body["limit"] == 30 and body["remaining"] == 0 and body["policy"] == "perreq"
    assert int(deny.header("retry-after")) > 3000 and deny.header("x-ratelimit-remaining") == "0"
    # the 31st reached the engine (OVER_LIMIT); later ones were answered from the remembered
    # OVER_LIMIT in each Envoy, without a call
    calls = engine.calls()[before:]
    assert len(calls) <= 31 + 2 * 2, len(calls)
    assert sum("code=OK" in c for c in calls) == 30


@pytest.mark.parametrize("name", ["pr-1", "pr-2"])
def test_per_request_exact_concurrent_across_envoys_and_workers(fleet, name):
    st = statuses_concurrent(fleet, name, 120)
    assert st.count(200) == 30 and st.count(429) == 90, st


@pytest.mark.parametrize("name", ["ls-0", "ls-1"])
def test_leased_never_over_and_within_bound_concurrent(fleet, engine, name):
    before = len(engine.calls())
    st = statuses_concurrent(fleet, name, 200)
    ok = st.count(200)
    # never over the fleet's 60; stranded at most one lease per worker (2 Envoys x 2 workers),
    # each at most max(1, 20% of what remained), and leases shrink as the limit runs out
    assert ok <= 60, ok
    assert ok >= 60 - 4 * 8, ok
    assert st.count(429) == 200 - ok
    calls = engine.calls()[before:]
    granted = sum(int(c.split("hits=")[1].split()[0]) for c in calls if "code=OK" in c)
    assert ok <= granted <= 60
    # most requests never left the proxy
    assert len(calls) < ok / 2, (len(calls), ok)


def test_leased_sequential_exact_and_calls_per_lease(fleet, engine):
    before = len(engine.calls())
    got = [call(fleet[i % 2], "ls-2") for i in range(90)]
    ok = [r for r in got if r.status == 200]
    # sequential traffic spends every lease it takes: exactly the limit
    assert len(ok) == 60, [r.status for r in got]
    calls = engine.calls()[before:]
    leases = [c for c in calls if "code=OK" in c]
    assert sum(int(c.split("hits=")[1].split()[0]) for c in leases) == 60
    assert len(calls) < 30, calls
    assert all(r.header("x-ratelimit-limit") == "60" for r in ok)
    remaining = [int(r.header("x-ratelimit-remaining")) for r in ok]
    assert remaining[-1] == 0 and max(remaining) <= 59
    deny = got[-1]
    assert deny.status == 429 and deny.json()["type"].endswith("rate-limited")


def test_per_account_lease_shared_by_keys_across_envoys(fleet):
    with ThreadPoolExecutor(max_workers=16) as pool:
        st = list(pool.map(lambda i: call(fleet[i % 2], "t1" if i % 3 else "t2").status, range(100)))
    assert 40 - 4 * 8 <= st.count(200) <= 40, st


def timed(envoy, name):
    t = time.time()
    r = call(envoy, name)
    return r, time.time() - t


def test_engine_down_falls_back_to_local_limits(upstream):
    port = RlsEngine.__new__(RlsEngine)  # no engine on this port
    from harness import free_port
    dead = free_port()
    e = Envoy(config(on_failure="local"), upstream.port, extra_clusters=[grpc_cluster("ratelimit", dead)]).start()
    try:
        got = [timed(e, "fr-0") for _ in range(5)]
        # the local plan (3 an hour per Envoy) decides while the engine is down
        assert [r.status for r, _ in got] == [200, 200, 200, 429, 429]
        assert all(t < 2 for _, t in got)
        assert got[0][0].header("x-ratelimit-limit") == "3"
        # the count is batched until the worker's next tick
        wait_until(lambda: "keygate_fleet_fallback_local" in e.admin("/stats/prometheus")
                   or "keygate.fleet.fallback_local" in e.admin("/stats"), 5, 0.05, "the fallback_local count")
    finally:
        e.stop()


@pytest.mark.parametrize("shape", ["down", "slow", "error", "garbage"])
def test_engine_failures_refuse_closed_within_the_timeout(upstream, shape):
    from harness import free_port
    eng = None
    clusters = []
    if shape == "down":
        clusters = [grpc_cluster("ratelimit", free_port())]
    elif shape == "slow":
        eng = RlsEngine(LIMITS, delay_ms=3000)
        clusters = [grpc_cluster("ratelimit", eng.port)]
    elif shape == "error":
        eng = RlsEngine(LIMITS, error=True)
        clusters = [grpc_cluster("ratelimit", eng.port)]
    else:
        # an HTTP/1 server answering 200 JSON: not gRPC
        clusters = [cluster("ratelimit", upstream.port)]
    e = Envoy(config(on_failure="closed", timeout_ms=300), upstream.port, extra_clusters=clusters).start()
    try:
        for name in ["fr-1", "ls-3"]:
            r, t = timed(e, name)
            assert r.status == 503, (shape, r.status, r.body)
            assert t < 1.5, t
            assert r.header("content-type") == "application/problem+json"
            assert r.json()["type"] == "urn:keygate:problem:rate-limit-unavailable"
            assert r.header("retry-after") == "1"
        kind = {"down": "unavailable", "slow": "timeout", "error": "grpc", "garbage": "grpc"}[shape]
        wait_until(lambda: f"keygate.fleet.failure.{kind}: " in e.admin("/stats?filter=keygate.fleet"), 3, 0.05,
                   lambda _: f"keygate.fleet.failure.{kind} in {e.admin('/stats?filter=keygate.fleet')}")
    finally:
        e.stop()
        if eng:
            eng.stop()


def test_flapping_engine(upstream):
    eng = RlsEngine(LIMITS)
    e = Envoy(config(on_failure="closed", timeout_ms=300), upstream.port,
              extra_clusters=[grpc_cluster("ratelimit", eng.port)]).start()
    try:
        assert call(e, "fr-2").status == 200
        eng.stop()
        r, t = timed(e, "fr-2")
        assert r.status == 503 and t < 1.5
        eng.start()
        # back: the engine (in memory, restarted) counts again from zero
        wait_until(lambda: call(e, "fr-3").status == 200, 5, 0.1, "the engine to answer again")
        assert call(e, "fr-3").status == 200
        assert call(e, "fr-3").status == 429
    finally:
        e.stop()
        eng.stop()


def test_the_fleet_demo_holds_one_limit_across_two_envoys(upstream):
    """envoy/demo.sh fleet, as a newcomer runs it (ports rewritten to free ones): the engine with
    envoy/fleet/limits.yaml and two Envoys from envoy/fleet/demo-fleet.yaml."""
    from harness import ROOT, free_port
    from test_demo import YamlEnvoy

    eng = RlsEngine((ROOT / "envoy/fleet/limits.yaml").read_text())
    envoys = []
    try:
        for _ in range(2):
            ports = {10000: free_port(), 9901: free_port(), 8080: upstream.port, 8090: eng.port}
            e = YamlEnvoy("envoy/fleet/demo-fleet.yaml", ports)
            e.port, e.admin_port = ports[10000], ports[9901]
            envoys.append(e.start())
        tiny = [call_key(envoys[i % 2], "tiny-demo-key-0001").status for i in range(6)]
        assert tiny == [200, 200, 200, 429, 429, 429]
        # evon: 100 a minute across both (leased)
        st = [call_key(envoys[i % 2], "evon-demo-key-0001") for i in range(110)]
        assert [r.status for r in st].count(200) == 100
        assert st[0].header("x-ratelimit-limit") == "100"
    finally:
        for e in envoys:
            e.stop()
        eng.stop()


def call_key(envoy, secret):
    return envoy.req("GET", "/x", [("X-API-Key", secret)])


def test_an_engine_answering_like_limitador_server(upstream):
    """limitador-server fills no statuses; with --rate-limit-headers DRAFT_VERSION_03 it sends its
    X-RateLimit-* headers instead. keygate reads those: the same exact count and one set of
    truthful headers."""
    eng = RlsEngine(LIMITS, limitador_style=True)
    envoys = [Envoy(config(), upstream.port, extra_clusters=[grpc_cluster("ratelimit", eng.port)]).start()
              for _ in range(2)]
    try:
        got = [call(envoys[i % 2], "pr-3") for i in range(40)]
        ok = [r for r in got if r.status == 200]
        assert len(ok) == 30
        assert [int(r.header("x-ratelimit-remaining")) for r in ok] == list(range(29, -1, -1))
        assert all(r.header("x-ratelimit-limit") == "30" for r in ok)
        assert 3500 < int(got[-1].header("retry-after")) <= 3600
        st = statuses_concurrent(envoys, "ls-3", 120)
        assert 60 - 4 * 8 <= st.count(200) <= 60
    finally:
        for e in envoys:
            e.stop()
        eng.stop()


def test_the_istio_recipe_is_what_keygate_parses(tmp_path):
    """envoy/fleet/istio.yaml: the WasmPlugin's pluginConfig passes keygate's own parser, names the
    engine's Service as Istio names its cluster, and the engine's limits count the descriptors
    keygate sends (the same limits as the demo's, which the demo test runs)."""
    import subprocess
    import yaml
    from harness import ROOT
    from test_istio import as_struct_json

    docs = [d for d in yaml.safe_load_all((ROOT / "envoy/fleet/istio.yaml").read_text()) if d]
    [plugin] = [d for d in docs if d["kind"] == "WasmPlugin"]
    pc = as_struct_json(plugin["spec"]["pluginConfig"])
    f = tmp_path / "pc.json"
    f.write_text(json.dumps(pc))
    subprocess.run(["cargo", "build", "--quiet", "--bin", "keygate-check"], cwd=ROOT, check=True)
    r = subprocess.run([str(ROOT / "target/debug/keygate-check"), str(f)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stdout + r.stderr
    [svc] = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "limitador"]
    [port] = svc["spec"]["ports"]
    assert port["name"] == "grpc" and port["appProtocol"] == "grpc"  # HTTP/2 from the sidecar
    host = f"limitador.{svc['metadata']['namespace']}.svc.cluster.local"
    assert pc["fleet"]["cluster"] == f"outbound|{port['port']}||{host}"
    [cm] = [d for d in docs if d["kind"] == "ConfigMap"]
    limits = yaml.safe_load(cm["data"]["limits.yaml"])
    demo = yaml.safe_load((ROOT / "envoy/fleet/limits.yaml").read_text())
    assert all(l in demo for l in limits)
    assert {l["conditions"][0].split("'")[1] for l in limits} == set(pc["fleet"]["plans"])


def test_a_replica_that_dies_strands_at_most_its_lease(engine, upstream):
    """Envoy A takes a lease (8 tokens: lease.max), spends one and dies; Envoy B then admits exactly
    the rest of the fleet's 60 less A's 7 unspent tokens: never over, stranding = one lease."""
    a = Envoy(config(), upstream.port, concurrency=1, extra_clusters=[grpc_cluster("ratelimit", engine.port)]).start()
    b = Envoy(config(), upstream.port, concurrency=1, extra_clusters=[grpc_cluster("ratelimit", engine.port)]).start()
    try:
        before = len(engine.calls())
        assert call(a, "ls-4").status == 200
        assert engine.calls()[before:] == [engine.calls()[before]] and "hits=8 " in engine.calls()[before]
        a.stop()
        st = [call(b, "ls-4").status for _ in range(70)]
        assert st.count(200) == 60 - 8, st
        assert st[52:] == [429] * 18
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("name", ["sh-0"])
def test_leases_end_with_the_engines_window(fleet, engine, name):
    """5 per 2-second window (the engine's fixed window starts at the first hit, between the first
    success's send and its arrival): leases are spent only in the window they were taken in, so
    what arrived less than 2 s after the first success was sent is one window, at most 5, and new
    windows admit again."""
    t0 = time.time()
    log = []  # (sent, arrived, status)
    while time.time() - t0 < 5.5:
        sent = time.time()
        r = call(fleet[len(log) % 2], name)
        log.append((sent, time.time(), r.status))
        time.sleep(0.02)  # time itself is tested: paced traffic across the engine's windows
    ok = [(s, a) for s, a, st in log if st == 200]
    first_sent = ok[0][0]
    assert sum(a < first_sent + 2 for _, a in ok) <= 5, [(round(s - t0, 3), round(a - t0, 3), st) for s, a, st in log]
    assert sum(a < first_sent + 2 for _, a in ok) == 5  # sequential traffic spends the whole lease
    # 5.5 s of traffic spans at most 3 windows; a later window admitted again
    assert 10 <= len(ok) <= 15, len(ok)
    assert any(s >= first_sent + 2 for s, _ in ok)


def test_a_keys_own_limit_is_counted_by_the_engine_as_policy_key(fleet):
    st = [call(fleet[i % 2], "ov-0") for i in range(6)]
    assert [r.status for r in st] == [200] * 4 + [429] * 2
    assert st[0].header("x-ratelimit-limit") == "4"
    assert st[4].json()["policy"] == "key"
