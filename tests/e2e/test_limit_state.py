"""Rate-limit state that keeps its meaning when the limit around it changes, names that cannot
collide, a rate-limit engine's numbers bounded before keygate acts on them, and rolling windows
judged on the real clock. Every test asserts keygate's answer (status, Retry-After,
X-RateLimit-*) and what reached the recording upstream (or the engine), over HTTP/1.1 and h2c.

- A limit changed under live state (over LDS, by the key service, two plans of one account, a
  plan switched between algorithms, a burst lowered): the use so far still counts, nothing is
  banned beyond the new limit's own longest wait, nothing is admitted beyond the new limit.
- Owner fallbacks (a key with no account or subject counted as itself) never share state or an
  engine descriptor with a real account or subject of that name.
- An engine answering a zero reset, a reset of millennia, more remaining than its limit, or
  slowly: no loop of calls, no ban beyond the plan's window, consistent headers, and every
  request answered within `fleet.timeout_ms` of its arrival, however long it queued.
- A rolling window of N admits no N+1 requests within a window on Envoy's own clock.
"""
from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from attack_clients import request2
from harness import Envoy, KeyService, RlsEngine, grpc_cluster, wait_until
from keys import sha
from test_reconfigure import LdsEnvoy


def key(name: str, **kw) -> dict:
    return {"id": name, "sha256": sha(f"secret-{name}"), **kw}


class Answer:
    """One answer, whichever protocol carried it (status 0: no answer in time)."""

    def __init__(self, status, headers, body=b""):
        self.status, self.headers, self.body = status, headers, body

    def header(self, name):
        return next((v for k, v in self.headers if k == name), None)

    def json(self):
        import json
        return json.loads(self.body)


def send(envoy, name: str, case: str, h2: bool = False, timeout: float = 10) -> Answer:
    headers = [("x-api-key", f"secret-{name}"), ("x-case", case)]
    try:
        if h2:
            r = request2(envoy.port, "GET", "/s", headers, timeout=timeout)
        else:
            r = envoy.req("GET", "/s", headers, timeout=timeout)
    except OSError:
        return Answer(0, [])
    return Answer(r.status, r.headers, r.body)


def received(upstream, case: str) -> int:
    return sum(1 for r in upstream.received() if ["x-case", case] in r["headers"])


def run(envoy, name: str, n: int, case: str) -> list[Answer]:
    """n requests in a row, alternating HTTP/1.1 and h2c."""
    return [send(envoy, name, case, h2=bool(i % 2)) for i in range(n)]


def statuses(answers) -> list[int]:
    return [a.status for a in answers]


def until_denied(envoy, name: str, case: str, most: int) -> tuple[int, Answer]:
    """Requests until the first 429 (at most `most`): how many were allowed, and the 429."""
    for i in range(most):
        a = send(envoy, name, case, h2=bool(i % 2))
        if a.status != 200:
            return i, a
    return most, a


def assert_denied_within(a: Answer, limit: str, longest_s: int, reset_s: int = 3600) -> None:
    """A 429 from the rate limiter naming `limit`, whose wait is no longer than `longest_s`, and
    whose bucket is full again within `reset_s` (the plans here are of an hour)."""
    assert a.status == 429, (a.status, a.body[:300])
    assert a.header("x-ratelimit-limit") == limit, a.headers
    assert a.header("x-ratelimit-remaining") == "0"
    retry = int(a.header("retry-after"))
    assert 1 <= retry <= longest_s, f"Retry-After {retry} s, longer than {longest_s} s"
    assert int(a.header("x-ratelimit-reset")) <= reset_s
    assert a.json()["type"] == "urn:keygate:problem:rate-limited"


# ------------------------------------------------------------------------------------------------
# Class: state misread when a limit changes
# ------------------------------------------------------------------------------------------------

def lds_conf(version: int, p: int, q: int, own: int, sw_algorithm: str, bu_burst: int) -> dict:
    sw = {"requests": 10, "window_s": 3600}
    if sw_algorithm == "rolling_window":
        sw["algorithm"] = "rolling_window"
    return {
        "keys": [key("down", plan="p"), key("up", plan="q"), key("sw", plan="sw"), key("bu", plan="bu"),
                 key("own", plan="p", rate_limit={"requests": own, "window_s": 3600}),
                 key("probe", plan="probe")],
        "rate_limit": {"plans": {
            "p": {"requests": p, "window_s": 3600},
            "q": {"requests": q, "window_s": 3600},
            "sw": sw,
            "bu": {"requests": 60, "window_s": 3600, "burst": bu_burst},
            # its limit names the configuration a request ran under
            "probe": {"requests": 1000 + version, "window_s": 3600},
        }},
        "auth_throttle": False,
    }


def test_limits_changed_over_lds_keep_the_use_and_never_ban(upstream):
    e = LdsEnvoy(lds_conf(0, p=100, q=10, own=100, sw_algorithm="token_bucket", bu_burst=60), upstream.port,
                 concurrency=2).start()
    case = uuid.uuid4().hex
    try:
        wait_until(lambda: send(e, "probe", "probe").header("x-ratelimit-limit") == "1000", 15, 0.05, "the first listener")
        assert statuses(run(e, "down", 5, case)) == [200] * 5
        assert statuses(run(e, "own", 5, case)) == [200] * 5
        assert statuses(run(e, "up", 11, case)) == [200] * 10 + [429]
        assert statuses(run(e, "sw", 6, case)) == [200] * 6
        assert statuses(run(e, "bu", 30, case)) == [200] * 30
        assert received(upstream, case) == 5 + 5 + 10 + 6 + 30

        # lowered (p, a key's own limit, bu's burst), raised (q), switched to a rolling window (sw)
        e.reconfigure(lds_conf(1, p=10, q=30, own=10, sw_algorithm="rolling_window", bu_burst=10))
        wait_until(lambda: send(e, "probe", "probe").header("x-ratelimit-limit") == "1001", 15, 0.05,
                   "the new listener")
        after = uuid.uuid4().hex

        # 5 of the old 100 spent: 5 of the new 10 left, then one every 6 min (not decades)
        n, deny = until_denied(e, "down", after, 20)
        assert n == 5, (n, deny.status, deny.header("retry-after"))
        assert_denied_within(deny, "10", 360)
        n, deny = until_denied(e, "own", after, 20)
        assert n == 5, (n, deny.status, deny.header("retry-after"))
        assert_denied_within(deny, "10", 360)
        assert deny.json()["policy"] == "key"
        # all 10 of the old 10 spent, the plan raised to 30: 20 more, not 30
        n, deny = until_denied(e, "up", after, 40)
        assert n == 20, n
        assert_denied_within(deny, "30", 120)
        # 6 of 10 spent in the bucket; as a rolling window of 10: 4 more in this window
        n, deny = until_denied(e, "sw", after, 20)
        assert n == 4, n
        assert_denied_within(deny, "10", 3600)
        # 30 spent, the burst lowered to 10: an empty bucket refilling at one a minute, not 21 min
        n, deny = until_denied(e, "bu", after, 5)
        assert n == 0, n
        assert_denied_within(deny, "10", 60)
        assert received(upstream, after) == 5 + 5 + 20 + 4
    finally:
        e.stop()


def test_a_key_service_downgrade_and_a_lowered_key_limit(upstream):
    ks = KeyService(seed_demo=False).start()
    conf = {
        "keys": [key("emb-solo", plan="team")],  # no account: counted as itself
        "key_service": {"cluster": "keyservice", "positive_ttl_s": 1, "revocations_path": False},
        "rate_limit": {"plans": {
            "pro": {"requests": 100, "window_s": 3600, "per": "account"},
            "free": {"requests": 10, "window_s": 3600, "per": "account"},
            "team": {"requests": 3, "window_s": 3600, "per": "account"},
        }},
        "auth_throttle": False,
    }
    e = Envoy(conf, upstream.port, extra_clusters=[ks.cluster()]).start()
    case = uuid.uuid4().hex
    try:
        ks.add_key("secret-ks-dg", "ks-dg", account="acct-dg", plan="pro")
        ks.add_key("secret-ks-own", "ks-own", account="acct-own", plan="pro",
                   ratelimit={"requests": 100, "window_s": 3600})
        # a key service (its users) may name an account after another key's id
        ks.add_key("secret-ks-thief", "ks-thief", account="emb-solo", plan="team")
        got = run(e, "ks-dg", 5, case)
        assert statuses(got) == [200] * 5 and got[0].header("x-ratelimit-limit") == "100"
        assert statuses(run(e, "ks-own", 5, case)) == [200] * 5

        ks.update_key("ks-dg", plan="free")
        ks.update_key("ks-own", ratelimit={"requests": 10, "window_s": 3600})
        time.sleep(1.2)  # the cached verdicts (positive_ttl_s 1) expire
        after = uuid.uuid4().hex
        # the free plan's own count for the account: its 10, then one every 6 min (not decades)
        n, deny = until_denied(e, "ks-dg", after, 20)
        assert n == 10, (n, deny.status, deny.header("retry-after"))
        assert_denied_within(deny, "10", 360)
        # the key's own limit lowered from 100 to 10 with 5 spent: 5 left
        n, deny = until_denied(e, "ks-own", after, 20)
        assert n == 5, (n, deny.status, deny.header("retry-after"))
        assert_denied_within(deny, "10", 360)

        # the thief's account `emb-solo` is not the embedded key `emb-solo`
        n, deny = until_denied(e, "ks-thief", after, 10)
        assert n == 3 and deny.status == 429
        n, deny = until_denied(e, "emb-solo", after, 10)
        assert n == 3, (n, deny.status, deny.header("retry-after"))
        assert received(upstream, after) == 10 + 5 + 3 + 3
    finally:
        e.stop()
        ks.stop()


LOCAL = {
    "keys": [
        key("tp-small", account="two", plan="small"), key("tp-big", account="two", plan="big"),
        key("acct-k1", plan="team"), key("k2", account="acct-k1", plan="team"),
        key("subj-k3", plan="solo"), key("k4", subject="subj-k3", plan="solo"),
    ],
    "rate_limit": {"plans": {
        "small": {"requests": 3, "window_s": 3600, "per": "account"},
        "big": {"requests": 1000, "window_s": 3600, "per": "account"},
        "team": {"requests": 3, "window_s": 3600, "per": "account"},
        "solo": {"requests": 3, "window_s": 3600, "per": "subject"},
    }},
    "auth_throttle": False,
}


@pytest.fixture(scope="module")
def local(make_envoy):
    return make_envoy(LOCAL, concurrency=2)


def test_two_per_account_plans_of_one_account_count_apart(local, upstream):
    case = uuid.uuid4().hex
    small, big = [], []
    for i in range(8):
        big.append(send(local, "tp-big", case, h2=bool(i % 2)))
        small.append(send(local, "tp-small", case, h2=not i % 2))
    assert statuses(big) == [200] * 8
    assert [int(a.header("x-ratelimit-remaining")) for a in big] == list(range(999, 991, -1))
    assert statuses(small) == [200] * 3 + [429] * 5, [(a.status, a.header("retry-after")) for a in small]
    assert_denied_within(small[3], "3", 1200)
    assert received(upstream, case) == 8 + 3


@pytest.mark.parametrize("real,fallback", [("k2", "acct-k1"), ("k4", "subj-k3")])
def test_a_name_from_outside_never_meets_a_fallback(local, upstream, real, fallback):
    """`k2`'s account is named `acct-k1`, the id of a key with no account (counted as itself);
    `k4`'s subject is `subj-k3`, the id of a key whose subject defaults to its id."""
    case = uuid.uuid4().hex
    n, deny = until_denied(local, real, case, 10)
    assert n == 3 and deny.status == 429
    n, deny = until_denied(local, fallback, case, 10)
    assert n == 3, (n, deny.status, deny.header("retry-after"))
    assert received(upstream, case) == 6


class TwoPluginEnvoy(Envoy):
    """Two listeners, each with its own keygate plugin, in one VM under one `shared_prefix` (as
    two WasmPlugins on one Istio workload are): `port` runs `plugin_config`, `port_b` `config_b`."""

    config_b: dict | None = None
    port_b: int = 0

    def config(self) -> dict:
        import copy
        import json
        from harness import free_port
        cfg = super().config()
        first = cfg["static_resources"]["listeners"][0]
        second = copy.deepcopy(first)
        self.port_b = self.port_b or free_port()
        second["name"] = "second"
        second["address"]["socket_address"]["port_value"] = self.port_b
        wasm = second["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]["config"]
        wasm["name"] = "keygate-b"
        wasm["configuration"]["value"] = json.dumps(self.config_b)
        cfg["static_resources"]["listeners"].append(second)
        return cfg


def test_two_configurations_at_once_keep_both_counts(upstream):
    """One plan name counted 30 an hour by one plugin and 5 an hour by another, one entry in
    shared data: each side keeps its own count of everything admitted. A count rebased back and
    forth would let the larger side have back what the smaller one's capacity dropped."""
    def conf(n):
        return {"keys": [key("both", plan="x")], "auth_throttle": False,
                "rate_limit": {"plans": {"x": {"requests": n, "window_s": 3600}}}}
    e = TwoPluginEnvoy(conf(30), upstream.port, concurrency=2)
    e.config_b = conf(5)
    e.start()
    b = Envoy.__new__(Envoy)
    case = uuid.uuid4().hex
    try:
        b.port = e.port_b
        assert statuses(run(e, "both", 30, case)) == [200] * 30
        for i in range(6):
            small = send(b, "both", case, h2=bool(i % 2))
            assert_denied_within(small, "5", 720)
            large = send(e, "both", case, h2=not i % 2)
            assert large.status == 429, (i, large.status, large.header("x-ratelimit-remaining"))
            assert_denied_within(large, "30", 120)
        assert received(upstream, case) == 30
    finally:
        e.stop()


# ------------------------------------------------------------------------------------------------
# Fleet: leases and descriptors that collide; an engine's numbers bounded
# ------------------------------------------------------------------------------------------------

LIMITS = """
- {namespace: keygate, max_value: 3, seconds: 3600, conditions: ["descriptors[0].plan == 'lsmall'"], variables: ["descriptors[0].account"]}
- {namespace: keygate, max_value: 100, seconds: 3600, conditions: ["descriptors[0].plan == 'lbig'"], variables: ["descriptors[0].account"]}
- {namespace: keygate, max_value: 2, seconds: 3600, conditions: ["descriptors[0].plan == 'fteam'"], variables: ["descriptors[0].account"]}
- {namespace: keygate, max_value: 100, seconds: 3600, conditions: ["descriptors[0].plan == 'zr'"], variables: ["descriptors[0].key_id"]}
- {namespace: keygate, max_value: 100, seconds: 3600, conditions: ["descriptors[0].plan == 'zg'"], variables: ["descriptors[0].key_id"]}
- {namespace: keygate, max_value: 100, seconds: 3600, conditions: ["descriptors[0].plan == 'hr'"], variables: ["descriptors[0].key_id"]}
- {namespace: keygate, max_value: 100, seconds: 3600, conditions: ["descriptors[0].plan == 'hrl'"], variables: ["descriptors[0].key_id"]}
- {namespace: keygate, max_value: 5, seconds: 3600, conditions: ["descriptors[0].plan == 'rm'"], variables: ["descriptors[0].key_id"]}
- {namespace: keygate, max_value: 5, seconds: 3600, conditions: ["descriptors[0].plan == 'rml'"], variables: ["descriptors[0].key_id"]}
- {namespace: keygate, max_value: 100, seconds: 3600, conditions: ["descriptors[0].plan == 'qd'"], variables: ["descriptors[0].key_id"]}
"""

FLEET_PLANS = {"lsmall": "leased", "lbig": "leased", "fteam": "request", "zr": "leased", "zg": "leased",
               "hr": "request", "hrl": "leased", "rm": "request", "rml": "leased", "qd": "leased"}


def fleet_conf(lease_max=8, timeout_ms=300) -> dict:
    plan = {"requests": 1000, "window_s": 3600}
    plans = {name: dict(plan) for name in FLEET_PLANS}
    plans["fteam"]["per"] = plans["lsmall"]["per"] = plans["lbig"]["per"] = "account"
    # the plan's window bounds every time the engine names
    plans["hr"]["window_s"] = plans["hrl"]["window_s"] = 2
    return {
        "keys": [key("ls-a", account="twoplans", plan="lsmall"), key("lb-b", account="twoplans", plan="lbig"),
                 key("facct", plan="fteam"), key("fk2", account="facct", plan="fteam"),
                 *[key(f"{p}-0", plan=p) for p in ("zr", "zg", "hr", "hrl", "rm", "rml", "qd")]],
        "rate_limit": {"plans": plans},
        "fleet": {"cluster": "ratelimit", "timeout_ms": timeout_ms, "on_failure": "closed",
                  "plans": FLEET_PLANS, "lease": {"max": lease_max, "percent": 20}},
        "auth_throttle": False,
    }


@pytest.fixture(scope="module")
def engine():
    e = RlsEngine(LIMITS)
    yield e
    e.stop()


@pytest.fixture(scope="module")
def fleet(engine, upstream):
    e = Envoy(fleet_conf(), upstream.port, concurrency=1, extra_clusters=[grpc_cluster("ratelimit", engine.port)]).start()
    yield e
    e.stop()


def engine_calls(engine, plan: str, since: int = 0) -> list[str]:
    return [c for c in engine.calls()[since:] if f"desc=plan={plan}," in c]


def granted(calls) -> int:
    return sum(int(c.split("hits=")[1].split()[0]) for c in calls if "code=OK" in c)


def test_two_leased_plans_of_one_account_do_not_share_a_lease(fleet, engine, upstream):
    case = uuid.uuid4().hex
    # the big plan takes a lease of 8 for the account and spends one
    assert send(fleet, "lb-b", case).status == 200
    got = [send(fleet, "ls-a", case, h2=bool(i % 2)) for i in range(12)]
    # the small plan: exactly the 3 its engine limit grants, none of the big plan's tokens
    assert statuses(got) == [200] * 3 + [429] * 9, statuses(got)
    assert granted(engine_calls(engine, "lsmall")) == 3
    assert all(a.header("x-ratelimit-limit") == "3" for a in got)
    assert received(upstream, case) == 1 + 3


def test_a_fallback_owner_has_its_own_engine_descriptor(fleet, engine, upstream):
    case = uuid.uuid4().hex
    before = len(engine.calls())
    # fk2's account is named after facct, a key with no account
    assert statuses([send(fleet, "fk2", case) for _ in range(3)]) == [200, 200, 429]
    got = [send(fleet, "facct", case, h2=True) for _ in range(3)]
    assert statuses(got) == [200, 200, 429], statuses(got)
    calls = engine_calls(engine, "fteam", before)
    assert any(c.endswith("desc=plan=fteam,account=facct") for c in calls), calls
    assert any(c.endswith("desc=plan=fteam,account=~key:facct") for c in calls), calls
    assert received(upstream, case) == 4


def timed(envoy, name, case, h2=False, timeout=5):
    t = time.monotonic()
    a = send(envoy, name, case, h2=h2, timeout=timeout)
    return a, time.monotonic() - t


def test_an_over_limit_with_a_zero_reset_is_not_a_loop(fleet, engine, upstream):
    """Limitador says 0 s to its reset in its window's last second."""
    case = uuid.uuid4().hex
    before = len(engine.calls())
    engine.fault(over_limit=True, reset_s=0, plan="zr")
    try:
        got = [timed(fleet, "zr-0", case, h2=bool(i % 2)) for i in range(3)]
    finally:
        engine.fault()
    assert [a.status for a, _ in got] == [429] * 3, [a.status for a, _ in got]
    assert all(t < 2 for _, t in got), [t for _, t in got]
    assert all(a.header("retry-after") == "1" for a, _ in got)
    calls = engine_calls(engine, "zr", before)
    assert 1 <= len(calls) <= 3, len(calls)
    assert received(upstream, case) == 0


def test_a_grant_with_a_zero_reset_serves_who_asked_and_is_not_a_loop(fleet, engine, upstream):
    case = uuid.uuid4().hex
    before = len(engine.calls())
    engine.fault(reset_s=0, plan="zg")
    try:
        got = [timed(fleet, "zg-0", case, h2=bool(i % 2)) for i in range(5)]
    finally:
        engine.fault()
    assert [a.status for a, _ in got] == [200] * 5, [a.status for a, _ in got]
    assert all(t < 2 for _, t in got)
    assert 1 <= len(engine_calls(engine, "zg", before)) <= 5
    assert received(upstream, case) == 5


@pytest.mark.parametrize("name", ["hr-0", "hrl-0"])
def test_a_reset_of_millennia_is_a_window_at_most(fleet, engine, upstream, name):
    case = uuid.uuid4().hex
    plan = name.split("-")[0]
    engine.fault(over_limit=True, reset_s=100_000_000_000, plan=plan)  # 3,000 years
    try:
        a = send(fleet, name, case, h2=True)
    finally:
        engine.fault()
    assert a.status == 429
    assert 1 <= int(a.header("retry-after")) <= 2, a.header("retry-after")
    assert int(a.header("x-ratelimit-reset")) <= 2
    assert a.json()["resetTime"] <= time.time() + 3
    # the engine is fixed: once the plan's window has passed, the key is served again
    time.sleep(2.1)
    a = send(fleet, name, case)
    assert a.status == 200, (a.status, a.header("retry-after"))
    assert received(upstream, case) == 1


@pytest.mark.parametrize("name", ["rm-0", "rml-0"])
def test_remaining_never_above_the_limit(fleet, engine, upstream, name):
    case = uuid.uuid4().hex
    engine.fault(remaining_add=1000, plan=name.split("-")[0])
    try:
        got = [send(fleet, name, case, h2=bool(i % 2)) for i in range(3)]
    finally:
        engine.fault()
    assert statuses(got) == [200] * 3
    for a in got:
        limit, remaining = int(a.header("x-ratelimit-limit")), int(a.header("x-ratelimit-remaining"))
        assert limit == 5 and 0 <= remaining <= limit, (limit, remaining)
    assert received(upstream, case) == 3


def test_requests_queued_behind_lease_calls_keep_their_own_deadline(engine, upstream):
    """One worker, leases of one token, an engine 250 ms slow, fleet.timeout_ms 300: six requests
    at once queue behind one lease call; each is answered within the timeout of its own arrival
    (the first from the lease, the others by on_failure: closed), not one call after another."""
    e = Envoy(fleet_conf(lease_max=1, timeout_ms=300), upstream.port, concurrency=1,
              extra_clusters=[grpc_cluster("ratelimit", engine.port)]).start()
    case = uuid.uuid4().hex
    engine.fault(delay_ms=250, plan="qd")
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            got = list(pool.map(lambda i: timed(e, "qd-0", case, h2=bool(i % 2)), range(6)))
    finally:
        engine.fault()
        e.stop()
    st = [a.status for a, _ in got]
    assert max(t for _, t in got) < 0.9, sorted(round(t, 3) for _, t in got)
    assert st.count(200) >= 1 and st.count(200) + st.count(503) == 6, st
    for a, _ in got:
        if a.status == 503:
            assert a.json()["type"] == "urn:keygate:problem:rate-limit-unavailable"
    assert received(upstream, case) == st.count(200)


# ------------------------------------------------------------------------------------------------
# Rolling windows on the real clock
# ------------------------------------------------------------------------------------------------

class TimedEnvoy(Envoy):
    """The harness's Envoy with an access log that has each request's start, in µs."""

    def config(self) -> dict:
        cfg = super().config()
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        fmt = "T %START_TIME(%s.%6f)% %RESPONSE_CODE% %REQ(x-case)%\n"
        hcm["access_log"][0]["typed_config"]["log_format"] = {"text_format_source": {"inline_string": fmt}}
        return cfg


def test_a_rolling_window_never_admits_n_plus_1_within_a_window_on_envoys_clock(upstream):
    """N = 1 a second, hammered from three keep-alive connections across 10 window edges: any
    two admitted requests started at least a second apart on Envoy's clock (to within 100 µs of
    scheduling between a request's start and keygate's clock read). A clock read rounded down
    to the millisecond before the window rounds up admits the second up to 1 ms early."""
    import http.client
    conf = {"keys": [key("roll1", plan="r")], "auth_throttle": False,
            "rate_limit": {"plans": {"r": {"requests": 1, "window_s": 1, "algorithm": "rolling_window"}}}}
    e = TimedEnvoy(conf, upstream.port, concurrency=1).start()
    case = uuid.uuid4().hex
    end = time.monotonic() + 10.5

    def hammer(_):
        conn = http.client.HTTPConnection("127.0.0.1", e.port, timeout=5)
        allowed = 0
        while time.monotonic() < end:
            conn.request("GET", "/s", headers={"x-api-key": "secret-roll1", "x-case": case})
            r = conn.getresponse()
            r.read()
            allowed += r.status == 200
        conn.close()
        return allowed

    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            allowed = sum(pool.map(hammer, range(3)))

        def lines():
            got = [l.split() for l in e.access_log().splitlines() if l.startswith("T ") and l.endswith(case)]
            return got if sum(1 for g in got if g[2] == "200") >= allowed else None
        log = wait_until(lines, 10, 0.2, "the access log")
    finally:
        e.stop()
    starts = sorted(float(g[1]) for g in log if g[2] == "200")
    assert len(starts) >= 10, len(starts)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= 1 - 100e-6, f"two admitted {min(gaps) * 1000:.3f} ms apart: {sorted(gaps)[:4]}"
    assert received(upstream, case) == len(starts)
