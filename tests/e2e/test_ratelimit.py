"""Issue: per-key token buckets in shared data, exact across Envoy worker threads."""
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from keys import sha

L = 40  # bucket size for the exactness runs


def key(name: str, **kw) -> dict:
    return {"id": name, "sha256": sha(f"secret-{name}"), **kw}


KEYS = [
    *[key(f"exact-{i}", account=f"solo-{i}", plan="exact") for i in range(3)],
    key("a1", account="shared", plan="team"),
    key("a2", account="shared", plan="team"),
    key("b1", account="other", plan="small"),
    key("b2", account="other", plan="small"),
    key("override", account="x", plan="small", rate_limit={"requests": 2, "window_s": 3600}),
    key("free", account="y", plan="nolimit"),
    key("default-plan", account="z"),  # names no plan: the default
]

CONFIG = {
    "keys": KEYS,
    "rate_limit": {
        "plans": {
            # one token an hour after the burst: refill is negligible during a test
            "exact": {"requests": 1, "window_s": 3600, "burst": L},
            "team": {"requests": 5, "window_s": 3600, "per": "account"},
            "small": {"requests": 3, "window_s": 3600},
            "nolimit": "unlimited",
        },
        "default": {"requests": 7, "window_s": 60},
        "ietf_headers": True,
    },
}


@pytest.fixture(scope="module")
def envoy(make_envoy):
    # several workers on 2 cores: the buckets must be exact across them
    return make_envoy(CONFIG, concurrency=4)


def call(envoy, name):
    return envoy.req("GET", "/r", [("X-API-Key", f"secret-{name}")])


@pytest.mark.parametrize("run", range(3))
def test_exactly_L_successes_under_concurrency(envoy, run):
    name = f"exact-{run}"
    total = 5 * L
    with ThreadPoolExecutor(max_workers=32) as pool:
        statuses = list(pool.map(lambda _: call(envoy, name).status, range(total)))
    assert statuses.count(200) == L, statuses
    assert statuses.count(429) == total - L


def test_headers_on_200_and_429(envoy):
    seen = []
    for _ in range(3):
        r = call(envoy, "b1")
        assert r.status == 200
        seen.append(int(r.header("x-ratelimit-remaining")))
        assert r.header("x-ratelimit-limit") == "3"
        reset = int(r.header("x-ratelimit-reset"))
        assert 0 < reset <= 3 * 1200
        assert r.header("ratelimit-policy") == '"small";q=3;w=3600'
        assert r.header("ratelimit") == f'"small";r={seen[-1]};t={reset}'
    assert seen == [2, 1, 0]
    r = call(envoy, "b1")
    assert r.status == 429
    assert r.header("content-type") == "application/problem+json"
    assert r.header("x-ratelimit-limit") == "3"
    assert r.header("x-ratelimit-remaining") == "0"
    retry = int(r.header("retry-after"))
    assert 1100 <= retry <= 1200  # one token every 1200 s
    body = r.json()
    assert body["type"] == "urn:keygate:problem:rate-limited"
    assert body["policy"] == "small"
    assert body["limit"] == 3 and body["remaining"] == 0
    assert abs(body["resetTime"] - (time.time() + int(r.header("x-ratelimit-reset")))) < 5


def test_two_keys_do_not_share_a_bucket(envoy):
    # b1 is exhausted by the test above (or here); b2 still has its own 3
    for _ in range(4):
        call(envoy, "b1")
    assert [call(envoy, "b2").status for _ in range(4)] == [200, 200, 200, 429]


def test_account_scope_is_shared_by_the_accounts_keys(envoy):
    statuses = [call(envoy, "a1" if i % 2 else "a2").status for i in range(7)]
    assert statuses == [200] * 5 + [429] * 2


def test_per_key_override_and_unlimited_and_default(envoy):
    assert [call(envoy, "override").status for _ in range(3)] == [200, 200, 429]
    r = call(envoy, "override")
    assert r.json()["policy"] == "key"
    r = call(envoy, "free")
    assert r.status == 200 and r.header("x-ratelimit-limit") is None
    r = call(envoy, "default-plan")
    assert r.status == 200 and r.header("x-ratelimit-limit") == "7"


def test_reset_as_unix_time(make_envoy):
    cfg = {"keys": [key("u", plan="p")], "rate_limit": {"plans": {"p": {"requests": 2, "window_s": 60}}, "reset": "unix"}}
    e = make_envoy(cfg)
    r = call(e, "u")
    reset = int(r.header("x-ratelimit-reset"))
    assert abs(reset - (time.time() + 30)) < 5


def test_rate_headers_can_be_turned_off(make_envoy):
    cfg = {"keys": [key("quiet", plan="p")],
           "rate_limit": {"plans": {"p": {"requests": 1, "window_s": 3600}}, "headers": False}}
    e = make_envoy(cfg)
    r = call(e, "quiet")
    assert r.status == 200
    assert [h for h in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")
            if r.header(h) is not None] == []
    # the bucket still counts, and the 429 still tells the client when to come back
    r = call(e, "quiet")
    assert r.status == 429
    assert r.header("x-ratelimit-limit") == "1" and r.header("x-ratelimit-remaining") == "0"
    assert 3000 <= int(r.header("retry-after")) <= 3600


def test_rejections_are_counted_per_plan_and_other(make_envoy):
    cfg = {"keys": [key("listed", plan="p"), key("unlisted")],  # no plan: the default
           "rate_limit": {"plans": {"p": {"requests": 1, "window_s": 3600}},
                          "default": {"requests": 1, "window_s": 3600}}}
    e = make_envoy(cfg)
    assert [call(e, "listed").status for _ in range(3)] == [200, 429, 429]
    assert [call(e, "unlisted").status for _ in range(2)] == [200, 429]
    # every worker that served one of the 5 requests has flushed once the decisions' totals are in
    prom = e.prometheus('keygate_requests{decision="allowed"} 2\n', 'keygate_requests{decision="rate_limited"} 3\n')
    # a plan missing from the table (the default) is counted as `other` (the series stay bounded)
    assert 'keygate_ratelimit_rejected{plan="p"} 2' in prom, prom
    assert 'keygate_ratelimit_rejected{plan="other"} 1' in prom, prom


# ------------------------------------------------------------------------------------------------
# Rolling windows: at most N in any window-length interval, exact across workers
# ------------------------------------------------------------------------------------------------

RN = 20  # requests per window in the rolling-window runs


@pytest.fixture(scope="module")
def rolling(make_envoy):
    keys = [key(f"roll-{i}", plan="roll") for i in range(6)]
    cfg = {"keys": keys, "rate_limit": {"plans": {
        "roll": {"requests": RN, "window_s": 2, "algorithm": "rolling_window"}}}}
    return make_envoy(cfg, concurrency=4)


def concurrent(envoy, name, n):
    """n requests at once from 32 threads: their statuses, and when they were all answered."""
    with ThreadPoolExecutor(max_workers=32) as pool:
        rs = list(pool.map(lambda _: call(envoy, name), range(n)))
    return [r.status for r in rs], rs


@pytest.mark.parametrize("run", range(2))
def test_rolling_window_exactly_n_under_concurrency(rolling, run):
    statuses, rs = concurrent(rolling, f"roll-{run}", 5 * RN)
    assert statuses.count(200) == RN, statuses
    assert statuses.count(429) == 4 * RN
    denied = [r for r in rs if r.status == 429]
    assert all(r.header("x-ratelimit-limit") == str(RN) for r in denied)
    assert all(1 <= int(r.header("retry-after")) <= 2 for r in denied)
    assert sorted(int(r.header("x-ratelimit-remaining")) for r in rs if r.status == 200) == list(range(RN))


def test_rolling_window_across_the_boundary_on_four_workers(rolling):
    # half the window's requests, then a second later a flood: exactly the other half passes
    t0 = time.time()
    statuses, _ = concurrent(rolling, "roll-2", RN // 2)
    assert statuses == [200] * (RN // 2)
    t_first = time.time()  # the first half was allowed in [t0, t_first]
    time.sleep(max(t0 + 1 - time.time(), 0))  # time itself is tested: 1 s into the window
    t_second = time.time()
    statuses, _ = concurrent(rolling, "roll-2", 3 * RN)
    assert statuses.count(200) == RN // 2, statuses  # a token bucket would have refilled RN/2 more
    # once the first half is 2 s old (and before the second half is): exactly its slots are back
    time.sleep(max(t_first + 2.05 - time.time(), 0))  # time itself is tested (the boundary)
    statuses, _ = concurrent(rolling, "roll-2", 3 * RN)
    assert time.time() < t_second + 2, "too slow to test the boundary"
    assert statuses.count(200) == RN // 2, statuses


def test_rolling_window_never_n_plus_1_under_spread_load(rolling):
    """8 clients hammer one key for 5 s: no RN+1 allowed requests fit in any 2 s (judged from the
    client side: a request was decided between its send and its answer), and the window is not
    wasted either (every slot is reused soon after it frees)."""
    duration, window = 5.0, 2.0
    allowed = []  # (sent, answered) of each 200

    def client(_):
        mine = []
        end = time.time() + duration
        while time.time() < end:
            sent = time.time()
            r = call(rolling, "roll-3")
            if r.status == 200:
                mine.append((sent, time.time()))
            else:
                assert r.status == 429
        return mine

    t0 = time.time()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for mine in pool.map(client, range(8)):
            allowed.extend(mine)
    elapsed = time.time() - t0
    # proof of a violation would be RN+1 requests all sent and answered within less than a window
    by_sent = sorted(allowed)
    for i, (s0, _) in enumerate(by_sent):
        later_answers = sorted(a for s, a in by_sent[i:])
        if len(later_answers) > RN:
            assert later_answers[RN] - s0 >= window, f"{RN + 1} allowed within {later_answers[RN] - s0:.3f} s"
    # exact, not merely safe: at least RN per full window elapsed, at most RN per started one
    assert RN * int(elapsed // (window + 0.1)) <= len(allowed) <= RN * (int(elapsed // window) + 1), len(allowed)
