"""The key service's key lifecycle through keygate in real Envoy: keys in the published format and
keygate's local format check (`key_service.key_format`), rotation with a grace period honoured
through the verdict's expiry and the revocation feed.

Real Envoy (2 workers), the real key service (envoy/keyservice) behind the test fault proxy,
which counts the verify calls that reach the service."""
import json
import random
import re
import string
import time
import urllib.request

import pytest

from harness import Envoy, KeyService, wait_until

PREFIXES = ["kgb_", "kgp_", "kgn_"]
POLL_MS = 300
def gitleaks_regex() -> re.Pattern:
    """The published format, from the gitleaks rule file secret scanners use."""
    import tomllib
    from harness import ROOT
    rules = tomllib.loads((ROOT / "envoy" / "keyservice" / "gitleaks.toml").read_text())["rules"]
    return re.compile(rules[0]["regex"])


def config(**ks):
    return {
        "key_service": {"cluster": "keyservice", "timeout_ms": 2000, "positive_ttl_s": 60,
                        "negative_ttl_s": 30, "revocation_poll_ms": POLL_MS, **ks},
        "auth_throttle": False,
        "routes": [{"prefix": "/v1/auth/login", "methods": ["POST"], "access": "public"}],
        "rate_limit": {"plans": {"free": {"requests": 100000, "window_s": 60}}},
    }


@pytest.fixture(scope="module")
def ks():
    k = KeyService().start()
    yield k
    k.stop()


@pytest.fixture(scope="module")
def envoys(upstream, ks):
    started = []

    def start(**cfg):
        e = Envoy(config(**cfg), upstream.port, extra_clusters=[ks.cluster()],
                  routes=[("/v1/auth", "keyservice"), ("/v1/tokens", "keyservice")])
        started.append(e)
        e.start()
        return e.wait_feed_polled() if cfg.get("revocations_path", True) else e
    yield start
    for e in started:
        e.stop()


def call(e: Envoy, key: str, path: str = "/v1/objects/events", method: str = "GET", body: bytes | None = None,
         user: str | None = None):
    if user is None:
        auth = f"Bearer {key}"
    else:
        import base64
        auth = "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()
    headers = [("Authorization", auth)]
    if body is not None:
        headers.append(("content-type", "application/json"))
    return e.req(method, path, headers, body)


def login(e: Envoy, email="alice@example.com", password="alice-password") -> str:
    r = e.req("POST", "/v1/auth/login", [("content-type", "application/json")],
              json.dumps({"email": email, "password": password}).encode())
    assert r.status == 200, r.body
    return r.json()["data"]["access_token"]


def new_business_key(e: Envoy, token: str, name: str = "k") -> dict:
    r = call(e, token, "/v1/tokens/business", "POST", json.dumps({"name": name}).encode())
    assert r.status == 201, r.body
    return r.json()["data"]


def random_keys(valid: str, n: int) -> list[str]:
    """Keys a flood would send: the right shape with a wrong checksum, one character of a real key
    changed, the wrong prefix, other lengths, and plain noise."""
    rng = random.Random(7)
    alnum = string.ascii_letters + string.digits
    out = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            out.append(rng.choice(PREFIXES) + "".join(rng.choices(alnum, k=38)))
        elif kind == 1:
            pos = rng.randrange(4, len(valid))
            c = rng.choice([x for x in alnum if x != valid[pos]])
            out.append(valid[:pos] + c + valid[pos + 1:])
        elif kind == 2:
            out.append("kgx_" + valid[4:])
        elif kind == 3:
            out.append(valid + rng.choice(alnum))
        else:
            out.append("".join(rng.choices(alnum + "-._~", k=rng.randrange(8, 60))))
    return out


def test_issued_keys_have_the_published_format(envoys, ks):
    e = envoys()
    token = login(e)
    made = new_business_key(e, token, "format")
    named = call(e, token, "/v1/tokens/named", "POST", b'{"name":"n","lifetime_days":1}').json()["data"]
    rx = gitleaks_regex()
    for secret, prefix in ((token, "kgp"), (made["key"], "kgb"), (named["key"], "kgn")):
        m = rx.search(f"leaked in a commit: token = '{secret}'\n")
        assert m and m.group(1) == secret and secret.startswith(prefix + "_"), secret
    # the demo's readable keys and other strings are not findings
    for other in ("kgb_demo_acme_business_0001", "kgb_" + "x" * 37, "xkgb_" + made["key"][4:] + "9"):
        assert not rx.search(other), other


def test_a_random_key_flood_makes_no_call_with_the_format_check(envoys, ks):
    checked = envoys(key_format={"prefixes": PREFIXES})
    token = login(checked)
    key = new_business_key(checked, token, "flood")["key"]
    calls = ks.verify_calls()
    assert call(checked, key).status == 200  # a real key: one call, then cached
    assert ks.verify_calls() == calls + 1
    flood = random_keys(key, 300)
    calls = ks.verify_calls()
    for k in flood:
        r = call(checked, k)
        assert r.status == 401 and r.json()["type"].endswith("credential-invalid"), (k, r.status, r.body)
    assert ks.verify_calls() == calls, "the flood reached the key service"
    assert call(checked, key).status == 200  # the real key still works (from the cache)
    assert ks.verify_calls() == calls

    # The same flood without the check: every distinct key is a call (this is what it saves).
    unchecked = envoys()
    calls = ks.verify_calls()
    for k in flood[:50]:
        assert call(unchecked, k).status == 401
    # one call per distinct key (a repeated one is in the negative cache; a worker may miss it once)
    distinct = len(set(flood[:50]))
    assert distinct - 2 <= ks.verify_calls() - calls <= distinct + 2


def rotate(e: Envoy, token: str, key_id: str, grace_s: int | None, kind: str = "business") -> dict:
    body = json.dumps({} if grace_s is None else {"grace_s": grace_s}).encode()
    r = call(e, token, f"/v1/tokens/{kind}/{key_id}/rotate", "POST", body)
    assert r.status == 201, r.body
    return r.json()["data"]


def status_until(e: Envoy, key: str, until: float, user: str | None = None) -> list[tuple[float, int]]:
    """(time, status) of calls with `key` every 100 ms until `until`."""
    seen = []
    while time.time() < until:
        seen.append((time.time(), call(e, key, user=user).status))
        time.sleep(0.1)
    return seen


def test_rotation_old_key_works_until_its_instant_then_401_from_the_feed(envoys, ks):
    """The old key's verdict was cached before the rotation (no expiry in it): the feed entry at
    the end of the grace marks it, so the cache stops serving it at the instant."""
    e = envoys()
    token = login(e)
    old = new_business_key(e, token, "rotate-me")
    assert call(e, old["key"]).status == 200  # cached, without an expiry
    calls = ks.verify_calls()
    new = rotate(e, token, old["id"], 3)
    assert new["replaces"] == old["id"] and new["key"] != old["key"] and new["name"] == "rotate-me"
    instant = new["old_key_until"]
    assert abs(instant - (time.time() + 3)) < 2
    before = status_until(e, old["key"], instant - 0.3)
    assert before and all(s == 200 for _, s in before), before
    assert ks.verify_calls() == calls  # served from the cache all along
    # refused within the grace's instant + the service's promotion tick (1 s) + keygate's poll
    wait_until(lambda: call(e, old["key"]).status == 401, instant + 1 + POLL_MS / 1000 + 1.5 - time.time(),
               0.05, "the old key to be refused")
    refused_at = time.time()
    assert refused_at <= instant + 1 + POLL_MS / 1000 + 1.5
    time.sleep(0.3)  # keygate's other worker may use its copy for shared_recheck_ms (250 ms)
    r = call(e, old["key"])
    assert r.status == 401 and r.json()["type"].endswith("credential-revoked"), r.body
    assert call(e, new["key"]).status == 200


def test_rotation_old_key_refused_at_its_instant_by_the_verdicts_expiry(envoys, ks):
    """Verified first during its grace, the old key's verdict carries the instant as expires_at:
    with the revocation feed off, keygate serves it from the cache until then and never after (not
    even as a stale verdict while the service fails); asked again, the service refuses it."""
    e = envoys(revocations_path=False)
    token = login(e)
    old = new_business_key(e, token, "expiry")
    new = rotate(e, token, old["id"], 3)
    instant = new["old_key_until"]
    r = call(e, old["key"])
    assert r.status == 200
    calls = ks.verify_calls()
    ks.mode(verify="status:503")  # from here on only the cache can say yes
    try:
        before = status_until(e, old["key"], instant - 0.3)
        assert before and all(s == 200 for _, s in before), before
        assert ks.verify_calls() == calls  # from the cache
        time.sleep(max(0, instant - time.time()) + 0.2)
        r = call(e, old["key"])
        assert r.status == 503, r.body  # the cached verdict ended at the instant: no stale 200
    finally:
        ks.mode(verify="ok")
    r = call(e, old["key"])
    # EXPIRED, or REVOKED once the service has moved it into the feed (within a second)
    assert r.status == 401 and r.json()["type"].rsplit(":", 1)[1] in ("credential-expired", "credential-revoked"), r.body
    assert call(e, new["key"]).status == 200


def test_rotation_with_no_grace_refuses_the_old_key_at_once(envoys, ks):
    e = envoys()
    token = login(e)
    named = call(e, token, "/v1/tokens/named", "POST", b'{"name":"laptop","lifetime_days":30}').json()["data"]
    assert call(e, named["key"], "/api/records/contacts", user="alice").status == 200
    new = rotate(e, token, named["id"], 0, kind="named")
    assert new["user"] == "alice" and abs(new["expires_at"] - (time.time() + 30 * 86400)) < 60
    wait_until(lambda: call(e, named["key"], "/api/records/contacts", user="alice").status == 401,
               POLL_MS / 1000 + 1.5, 0.05, "the old PAT to be refused")
    assert call(e, new["key"], "/api/records/contacts", user="alice").status == 200
    # regenerating the old key again is refused: it was replaced
    r = call(e, token, f"/v1/tokens/named/{named['id']}/rotate", "POST", b"{}")
    assert r.status == 409, r.body


def test_rotation_grace_is_bounded_and_defaults_to_a_day(envoys, ks):
    e = envoys()
    token = login(e)
    old = new_business_key(e, token, "default-grace")
    new = rotate(e, token, old["id"], None)
    assert abs(new["old_key_until"] - (time.time() + 86400)) < 10
    other = new_business_key(e, token, "too-long")
    for bad in (b'{"grace_s": -1}', b'{"grace_s": 99999999999}', b'{"grace_s": "1"}'):
        r = call(e, token, f"/v1/tokens/business/{other['id']}/rotate", "POST", bad)
        assert r.status == 400, (bad, r.body)


# ---------------------------------------------------------------------------------------------
# PostgreSQL: two replicas of the service on one database
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster (tests/services/pg.sh: Debian's package, as the postgres
    user, a free loopback port)."""
    import subprocess
    import tempfile
    from harness import ROOT
    d = tempfile.mkdtemp(prefix="keygate-pgdir-")
    url = subprocess.run([str(ROOT / "tests" / "services" / "pg.sh"), "start", d], check=True,
                         capture_output=True, text=True).stdout.strip()
    yield url
    subprocess.run([str(ROOT / "tests" / "services" / "pg.sh"), "stop", d], capture_output=True)


def two_endpoint_cluster(name: str, ports: list[int]) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
                for p in ports]}]}}


def test_two_replicas_on_one_database_revoke_everywhere(upstream, postgres):
    a = KeyService(db=postgres, faults=False).start()  # seeds the demo
    b = KeyService(db=postgres, faults=False, seed_demo=False).start()
    started = []
    try:
        def envoy(ports):
            e = Envoy(config(), upstream.port, extra_clusters=[two_endpoint_cluster("keyservice", ports)],
                      routes=[("/v1/auth", "keyservice"), ("/v1/tokens", "keyservice")])
            started.append(e)
            return e.start().wait_feed_polled()
        both, only_b = envoy([a.port, b.port]), envoy([b.port])
        token = login(both)
        keys = [new_business_key(both, token, f"replicated-{i}") for i in range(2)]
        for k in keys:  # verified (by either replica) and cached in both Envoys
            assert call(both, k["key"]).status == 200 and call(only_b, k["key"]).status == 200
        # revoked through the API on whichever replica answered, and on replica A directly
        assert call(both, token, f"/v1/tokens/business/{keys[0]['id']}", "DELETE").status == 200
        a.revoke(keys[1]["id"])
        for e in (both, only_b):
            for k in keys:
                wait_until(lambda: call(e, k["key"]).status == 401, POLL_MS / 1000 + 2, 0.05,
                           "a key revoked on one replica to be refused everywhere")
        # one cursor: both replicas give the same feed
        feed = lambda ks: json.loads(urllib.request.urlopen(  # noqa: E731
            f"http://127.0.0.1:{ks.port}/v1/keys/revocations?since=0", timeout=5).read())
        fa, fb = feed(a), feed(b)
        assert fa == fb and fa["cursor"] >= 2
        assert {r["key_id"] for r in fa["revoked"]} >= {keys[0]["id"], keys[1]["id"]}
    finally:
        for e in started:
            e.stop()
        a.stop()
        b.stop()


def test_a_refusal_written_by_the_cli_while_the_service_runs_reaches_keygate(upstream):
    """The service remembers found keys for a second (SQLite); a user disabled from the command
    line, another process, is still refused by keygate within its poll period, cached or not."""
    import subprocess
    from harness import key_service_bin
    ks = KeyService(faults=False).start()
    e = None
    try:
        e = Envoy(config(), upstream.port, extra_clusters=[ks.cluster()],
                  routes=[("/v1/auth", "keyservice"), ("/v1/tokens", "keyservice")]).start().wait_feed_polled()
        token = login(e)
        key = new_business_key(e, token, "cli")["key"]
        pat = call(e, token, "/v1/tokens/named", "POST", b'{"name":"p","lifetime_days":1}').json()["data"]["key"]
        for _ in range(3):  # cached in keygate and remembered by the service
            assert call(e, pat, "/api/records/contacts", user="alice").status == 200
        r = subprocess.run([str(key_service_bin()), "--db", ks.db, "user", "disable", "alice"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        wait_until(lambda: call(e, pat, "/api/records/contacts", user="alice").status == 401,
                   POLL_MS / 1000 + 1.5, 0.05, "the disabled user's token to be refused")
        time.sleep(0.3)  # keygate's other worker may use its copy for shared_recheck_ms (250 ms)
        for _ in range(5):  # and it stays refused (no answer from the service's memory)
            assert call(e, pat, "/api/records/contacts", user="alice").status == 401
            time.sleep(0.2)
        assert call(e, key).status == 200  # the account's business key is not the user's
    finally:
        if e:
            e.stop()
        ks.stop()
