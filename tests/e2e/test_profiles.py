"""The ready profiles (envoy/profiles/*.yaml), one per seed API, each in a real Envoy.

Each profile is loaded as written, with only what a test machine needs changed: the listener, the
admin and every cluster move to free loopback ports, the .wasm path becomes absolute, and the
stdout access log goes to a file (same format) so the test can read it. Then the profile is driven
the way that API's own documentation tells its clients to: its headers, query parameters, curl
examples, expected statuses, rate-limit headers and retry advice. Where a documented limit is too
big to exhaust quickly, or a documented wait too long for CI, the test patches the loaded config
for that test only and says so next to the patch.

Needs PyYAML (tests/requirements.txt) to read the profiles.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import json
import math
import subprocess
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from harness import ROOT, Envoy, KeyService, free_port, wait_until

PROFILES = ROOT / "envoy" / "profiles"
NAMES = ["eventlyte", "evon", "eventstaff", "eventicat", "astalty"]
WASM_REL = "target/wasm32-wasip1/release/keygate.wasm"
PROBLEM = "application/problem+json"

# The demo secrets each profile documents in its header comment (and declares by SHA-256).
SECRETS = {
    "eventlyte": ["elpat_demo_alice_0001", "elpat_demo_bob_expired_0001", "elpat_demo_carol_revoked_0001"],
    "evon": ["evon_demo_read_0001", "evon_demo_full_0002", "evon_demo_revoked_0003"],
    "eventicat": ["cat_demo_key_0001", "cat_demo_key_0002", "cat_other_key_0001"],
    "astalty": ["ast_demo_owner_0001", "ast_demo_viewer_0002", "ast_demo_revoked_0003"],
}
# eventstaff keeps its keys in the key service; these are what `keyservice serve --seed-demo` creates.
EVENTSTAFF_SEEDED = ["kgb_demo_acme_business_0001", "kgb_demo_globex_business_0001",
                     "alice@example.com", "alice-password"]


# ------------------------------------------------------------------------------------------------
# Loading and running a profile
# ------------------------------------------------------------------------------------------------

def load(name: str) -> dict:
    return yaml.safe_load((PROFILES / f"{name}.yaml").read_text())


def hcm(cfg: dict) -> dict:
    [listener] = cfg["static_resources"]["listeners"]
    [chain] = listener["filter_chains"]
    [f] = chain["filters"]
    assert f["name"] == "envoy.filters.network.http_connection_manager"
    return f["typed_config"]


def wasm_config(cfg: dict) -> dict:
    [w] = [f for f in hcm(cfg)["http_filters"] if f["name"] == "envoy.filters.http.wasm"]
    return w["typed_config"]["config"]


def plugin_config(cfg: dict) -> dict:
    c = wasm_config(cfg)["configuration"]
    assert c["@type"] == "type.googleapis.com/google.protobuf.StringValue"
    return json.loads(c["value"])


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def basic(user: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()


class ProfileEnvoy(Envoy):
    """The harness Envoy, but its bootstrap is a profile with ports, paths and access log moved."""

    def __init__(self, profile: dict, cluster_ports: dict[str, int], patch=None):
        super().__init__(plugin_config={}, upstream_port=cluster_ports["upstream"])
        self.profile = profile
        self.cluster_ports = cluster_ports
        self.patch = patch

    def config(self) -> dict:
        cfg = copy.deepcopy(self.profile)
        [listener] = cfg["static_resources"]["listeners"]
        listener["address"]["socket_address"]["port_value"] = self.port
        cfg["admin"]["address"]["socket_address"]["port_value"] = self.admin_port
        for c in cfg["static_resources"]["clusters"]:
            assert c["name"] in self.cluster_ports, f"no port for cluster {c['name']}"
            for group in c["load_assignment"]["endpoints"]:
                for ep in group["lb_endpoints"]:
                    ep["endpoint"]["address"]["socket_address"]["port_value"] = self.cluster_ports[c["name"]]
        h = hcm(cfg)
        for log in h["access_log"]:  # stdout -> a file the test can read, same format
            if log["name"] == "envoy.access_loggers.open_telemetry":
                continue  # the history's records, to the cluster keyservice_history
            fmt = log["typed_config"]["log_format"]
            log["name"] = "envoy.access_loggers.file"
            log["typed_config"] = {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(self.access_log_path), "log_format": fmt,
            }
        w = wasm_config(cfg)
        for f in h["http_filters"]:  # keygate, and the excerpt filter where bodies are on
            code = f["typed_config"].get("config", {}).get("vm_config", {}).get("code", {}).get("local")
            if code and not Path(code["filename"]).is_absolute():
                code["filename"] = str(ROOT / code["filename"])
        if self.patch is not None:
            pc = plugin_config(cfg)
            self.patch(pc)
            w["configuration"]["value"] = json.dumps(pc)
        return cfg


@pytest.fixture(scope="module")
def start(upstream):
    """start(name, patch=None, keyservice=None): a running Envoy from envoy/profiles/NAME.yaml."""
    started = []

    def run(name: str, patch=None, keyservice: KeyService | None = None) -> ProfileEnvoy:
        # the history's receiver: the key service, or a port where nothing listens (its records
        # are then dropped and counted, and requests go on as ever)
        ports = {"upstream": upstream.port, "keyservice_history": free_port()}
        if keyservice is not None:
            ports["keyservice"] = ports["keyservice_history"] = keyservice.port
        e = ProfileEnvoy(load(name), ports, patch)
        started.append(e)
        return e.start()

    yield run
    for e in started:
        e.stop()


@pytest.fixture(scope="session")
def keygate_check() -> Path:
    """target/debug/keygate-check, built (cargo is a no-op when it is up to date)."""
    subprocess.run(["cargo", "build", "--quiet", "--bin", "keygate-check"], cwd=ROOT, check=True)
    return ROOT / "target" / "debug" / "keygate-check"


# ------------------------------------------------------------------------------------------------
# Assertions
# ------------------------------------------------------------------------------------------------

def problem(r, status: int, base: str, slug: str, instance: str | None = None) -> dict:
    """Asserts an RFC 9457 (RFC 7807) problem answer from keygate and returns its body."""
    assert r.status == status, (r.status, r.body)
    assert r.header("content-type") == PROBLEM
    assert r.header("cache-control") == "no-store"
    p = r.json()
    assert p["type"] == base + slug, p
    assert p["status"] == status
    assert isinstance(p["title"], str) and p["title"]
    assert isinstance(p["detail"], str) and p["detail"]
    if instance is not None:
        assert p["instance"] == instance
    return p


def echo(r) -> dict:
    """What the echo upstream received (asserts the request reached it)."""
    assert r.status == 200, (r.status, r.body)
    assert r.header("content-type") == "application/json"
    return r.json()


def received(e: dict, name: str) -> list[str]:
    return [v for k, v in e["headers"] if k == name]


def drain(send, cap: int):
    """Sends until the first 429: (the 200 responses, the 429, seconds elapsed)."""
    oks = []
    t0 = time.monotonic()
    for _ in range(cap):
        r = send()
        if r.status == 429:
            return oks, r, time.monotonic() - t0
        assert r.status == 200, (r.status, r.body)
        oks.append(r)
    pytest.fail(f"no 429 after {cap} requests")


def assert_bucket(oks, requests: int, window_s: int, elapsed: float) -> None:
    """Exactly the burst passed, give or take the tokens refilled while the loop ran."""
    refill = math.floor(elapsed * requests / window_s) + 1
    assert requests <= len(oks) <= requests + refill, (len(oks), requests, elapsed)
    assert all(r.header("x-ratelimit-limit") == str(requests) for r in oks)
    assert int(oks[0].header("x-ratelimit-remaining")) == requests - 1


def secret_free(text: str, *secrets: str) -> None:
    for s in secrets:
        assert s not in text


# ------------------------------------------------------------------------------------------------
# Every profile: shape, keygate-check, documented secrets
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_profile_has_the_demo_shape(name):
    cfg = load(name)
    [listener] = cfg["static_resources"]["listeners"]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 10000}
    assert cfg["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}
    clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    expected = {"upstream": 8080, "keyservice_history": 8081,
                **({"keyservice": 8081} if name == "eventstaff" else {})}
    assert set(clusters) == set(expected)
    for cname, port in expected.items():
        [group] = clusters[cname]["load_assignment"]["endpoints"]
        [ep] = group["lb_endpoints"]
        assert ep["endpoint"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": port}
    h = hcm(cfg)
    assert h["normalize_path"] is True and h["merge_slashes"] is True
    [log, history] = h["access_log"]
    fmt = log["typed_config"]["log_format"]["text_format_source"]["inline_string"]
    # the request history: Envoy's OpenTelemetry logger to the key service, every field it keeps
    assert history["name"] == "envoy.access_loggers.open_telemetry"
    hc = history["typed_config"]
    assert hc["http_service"]["http_uri"]["cluster"] == "keyservice_history"
    assert hc["buffer_size_bytes"] == 65536  # bounded per worker; fewer exports than the 16 KiB default
    # one line (the cheap form): keygate's state first (only it may name the owner), then every
    # field the key service keeps; the path without its query
    line = hc["body"]["string_value"]
    assert line.startswith("%FILTER_STATE(wasm.keygate:PLAIN)% ")
    assert "%PATH" not in line and "X-REQUEST-ID" not in line  # they hold a key a client wrote there
    fields = dict(t.split("=", 1) for t in line.split(" ")[1:])
    assert fields == {"method": "%REQ(:METHOD)%", "status": "%RESPONSE_CODE%", "duration_ms": "%DURATION%",
                      "upstream_ms": "%COMMON_DURATION(US_TX_BEG:US_RX_END:ms)%", "bytes_in": "%BYTES_RECEIVED%",
                      "bytes_out": "%BYTES_SENT%"}  # the path and request id: keygate's state gives them
    attrs = {a["key"]: a["value"]["string_value"] for a in hc.get("attributes", {}).get("values", [])}
    # Astalty's seed document promises request and response bodies: the excerpt filter, first
    bodies = name == "astalty"
    assert attrs == ({"keygate.bodies": "%FILTER_STATE(wasm.keygate_bodies:PLAIN)%"} if bodies else {})
    assert "%FILTER_STATE(wasm.keygate:PLAIN)%" in fmt  # decision, key id, account, plan
    assert "%PATH(NQ)%" in fmt and "%REQ(:PATH)%" not in fmt
    # a profile whose keygate reads bodies (an owner check that reads them, or routes that name
    # methods: form POSTs are read for `_method`) buffers them between keygate and the router
    # (test_bodies.py checks every shipped config for that)
    routes = plugin_config(cfg).get("routes", [])
    reads_bodies = any(r.get("owner", {}).get("query") and r["owner"].get("body", "read") == "read"
                       for r in routes) or any(r.get("methods") for r in routes)
    assert [f["name"] for f in h["http_filters"]] == (["keygate.excerpt"] if bodies else []) + [
        "envoy.filters.http.wasm"] + (
        ["envoy.filters.http.buffer"] if reads_bodies else []) + ["envoy.filters.http.router"]
    w = wasm_config(cfg)
    assert w["vm_config"]["code"]["local"]["filename"] == WASM_REL
    assert w.get("failure_policy") == "FAIL_RELOAD"  # never FAIL_OPEN: see envoy/failure-policy.md
    # the demo's metric tags (labelled Prometheus series), kept in step with envoy/demo.yaml
    demo = yaml.safe_load((ROOT / "envoy" / "demo.yaml").read_text())
    assert cfg.get("stats_config") == demo.get("stats_config")


@pytest.mark.parametrize("name", NAMES)
def test_profile_passes_keygate_check(name, keygate_check, tmp_path):
    f = tmp_path / f"{name}.json"
    f.write_text(json.dumps(plugin_config(load(name))))
    r = subprocess.run([str(keygate_check), str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ": ok (" in r.stdout
    assert "unknown config field" not in r.stderr, r.stderr


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_demo_secrets_are_documented_and_declared(name):
    text = (PROFILES / f"{name}.yaml").read_text()
    header = text.split("static_resources:")[0]
    declared = {k["sha256"] for k in plugin_config(load(name))["keys"]}
    for s in SECRETS[name]:
        assert s in header, f"{s} not documented at the top of {name}.yaml"
        assert sha(s) in declared, f"{s} not declared in {name}.yaml"
    assert len(declared) == len(SECRETS[name])


def test_eventstaff_documents_the_key_service_demo_credentials():
    header = (PROFILES / "eventstaff.yaml").read_text().split("static_resources:")[0]
    for s in EVENTSTAFF_SEEDED:
        assert s in header
    pc = plugin_config(load("eventstaff"))
    assert not pc.get("keys")  # every key lives in the key service
    assert pc["key_service"]["cluster"] == "keyservice"


# ------------------------------------------------------------------------------------------------
# EventLyte CRM (seed 000): Basic USER:PAT only, RFC 7807 errors, no rate limit
# ------------------------------------------------------------------------------------------------

LYTE = "urn:eventlyte:problem:"
ALICE_PAT = "elpat_demo_alice_0001"
CONTACTS = "/api/records/contacts"


@pytest.fixture(scope="module")
def lyte(start):
    return start("eventlyte")


@pytest.mark.parametrize("name", NAMES + ["../demo", "../demo-remote"])
def test_no_demo_key_carries_a_date_that_will_pass(name):
    """Demos must not rot: a key that works today has no expiry, and one that shows expiry
    expired long ago (a fixed future date would turn the demo's 200 into a 401 one day)."""
    now = datetime.now(timezone.utc).timestamp()
    for k in plugin_config(load(name)).get("keys", []):
        if "expires_at" in k:
            exp = k["expires_at"]
            if isinstance(exp, str):
                exp = datetime.strptime(exp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
            assert exp < now, f"{name}: key {k['id']} expires in the future ({k['expires_at']})"


def test_eventlyte_pats_have_a_user():
    keys = {k["id"]: k for k in plugin_config(load("eventlyte"))["keys"]}
    for k in keys.values():
        assert k.get("user"), k
        assert k["plan"] == "unlimited"
    assert "expires_at" not in keys["pat-alice-demo"]  # the demo PAT never lapses
    assert keys["pat-bob-expired"]["expires_at"] == "2026-08-01T00:00:00Z"
    rl = plugin_config(load("eventlyte"))["rate_limit"]
    assert rl["plans"] == {"unlimited": "unlimited"} and "default" not in rl


def test_eventlyte_401_asks_for_a_personal_access_token(lyte):
    # "The REST API only supports authentication using Personal Access Tokens": no talk of API keys
    r = lyte.req("GET", CONTACTS)
    p = problem(r, 401, LYTE, "credential-missing", instance=CONTACTS)
    assert "personal access token" in p["detail"] and "API key" not in r.body.decode()


def test_eventlyte_documented_curl(lyte):
    # curl --location '…/api/records/contacts' --header 'Content-Type: application/json'
    #      --header 'Authorization: Basic {base64 USER:PAT}' --data '{}'
    r = lyte.req("POST", CONTACTS, [("Content-Type", "application/json"),
                                    ("Authorization", basic("alice", ALICE_PAT))], body=b"{}")
    e = echo(r)
    assert e["method"] == "POST" and e["path"] == CONTACTS and e["body_bytes"] == 2
    assert received(e, "authorization") == []  # the PAT stays at the gateway
    assert received(e, "x-keygate-subject") == ["alice"]
    assert received(e, "x-keygate-key-id") == ["pat-alice-demo"]
    assert received(e, "x-keygate-account") == ["eventlyte-demo"]
    # "There is currently no rate limiting": no X-RateLimit-* headers, and no 429 however many
    assert not [k for k, _ in r.headers if k.startswith("x-ratelimit") or k in ("ratelimit", "retry-after")]
    for _ in range(150):
        assert lyte.req("GET", CONTACTS, [("Authorization", basic("alice", ALICE_PAT))]).status == 200


def test_eventlyte_errors_are_rfc7807(lyte):
    cases = [
        ([], 401, "credential-missing"),
        ([("Authorization", basic("bob", ALICE_PAT))], 401, "credential-invalid"),  # a PAT is its user's
        ([("Authorization", basic("alice", "elpat_wrong"))], 401, "credential-invalid"),
        ([("Authorization", basic("bob", "elpat_demo_bob_expired_0001"))], 401, "credential-expired"),
        ([("Authorization", basic("carol", "elpat_demo_carol_revoked_0001"))], 401, "credential-disabled"),
        ([("Authorization", "Basic !!!not-base64")], 400, "credential-malformed"),
        ([("Authorization", "Basic " + base64.b64encode(b"alice-no-colon").decode())], 400, "credential-malformed"),
    ]
    for headers, status, slug in cases:
        r = lyte.req("POST", CONTACTS + "?page=2", [("Content-Type", "application/json"), *headers], body=b"{}")
        p = problem(r, status, LYTE, slug, instance=CONTACTS)  # instance: the path, never the query
        assert set(p) >= {"type", "title", "status", "detail", "instance"}
        secret_free(r.body.decode(), ALICE_PAT, "elpat_demo_bob_expired_0001", "elpat_wrong")
        if status == 401:  # Basic is the only scheme offered
            assert r.all("www-authenticate") == ['Basic realm="EventLyte CRM", charset="UTF-8"']


def test_eventlyte_only_basic_is_a_credential(lyte):
    for headers, path in [
        ([("Authorization", f"Bearer {ALICE_PAT}")], CONTACTS),
        ([("X-API-Key", ALICE_PAT)], CONTACTS),
        ([], f"{CONTACTS}?_apikey={ALICE_PAT}"),
    ]:
        r = lyte.req("GET", path, headers)
        problem(r, 401, LYTE, "credential-missing", instance=CONTACTS)
        assert r.all("www-authenticate") == ['Basic realm="EventLyte CRM", charset="UTF-8"']


def test_eventlyte_access_log_names_the_pat_never_its_secret(lyte):
    lyte.req("GET", "/api/records/logged", [("Authorization", basic("alice", ALICE_PAT))])
    lyte.req("GET", "/api/records/refused", [("Authorization", basic("bob", ALICE_PAT))])
    line = "GET /api/records/refused 401 decision=credential-invalid key_id=- account=- plan=-"
    ok = "GET /api/records/logged 200 decision=allowed key_id=pat-alice-demo account=eventlyte-demo plan=unlimited"
    log = lyte.wait_for(lyte.access_log, line, ok)
    assert line in log and ok in log
    secret_free(log, ALICE_PAT, "elpat_demo_bob_expired_0001", "elpat_demo_carol_revoked_0001")


# ------------------------------------------------------------------------------------------------
# Evon (seed 001): X-API-Key only, 100/min per key with a unix Reset, 401 / 403
# ------------------------------------------------------------------------------------------------

EVON = "urn:evon:problem:"
EVON_READ, EVON_FULL, EVON_REVOKED = "evon_demo_read_0001", "evon_demo_full_0002", "evon_demo_revoked_0003"
JSON_CT = ("Content-Type", "application/json")


@pytest.fixture(scope="module")
def evon(start):
    return start("evon")


def test_evon_documented_curl(evon):
    # curl -X GET "…/organization" -H "X-API-Key: your_api_key_here" -H "Content-Type: application/json"
    before = time.time()
    r = evon.req("GET", "/organization", [("X-API-Key", EVON_READ), JSON_CT])
    e = echo(r)
    assert e["path"] == "/organization"
    assert received(e, "x-api-key") == []
    assert received(e, "x-keygate-key-id") == ["evon-demo-read"]
    assert received(e, "x-keygate-scopes") == ["read"]
    # X-RateLimit-Limit: 100, X-RateLimit-Remaining: 99, X-RateLimit-Reset: a unix timestamp
    assert r.header("x-ratelimit-limit") == "100"
    assert r.header("x-ratelimit-remaining") == "99"
    reset = int(r.header("x-ratelimit-reset"))
    assert int(before) <= reset <= time.time() + 61


def test_evon_401_missing_and_invalid(evon):
    challenge = 'APIKey realm="Evon API"'
    r = evon.req("GET", "/organization", [JSON_CT])
    p = problem(r, 401, EVON, "credential-missing", instance="/organization")
    assert p["error"] == "API key is required"  # 401 Unauthorized - Missing API Key
    assert p["message"] == p["detail"]  # the seed's generic handler reads error.message
    assert r.all("www-authenticate") == [challenge]
    r = evon.req("GET", "/organization", [("X-API-Key", "evon_not_a_key")])
    assert problem(r, 401, EVON, "credential-invalid")["error"] == "Invalid API key"
    assert r.all("www-authenticate") == [challenge + ', error="invalid_token", error_description="the credential is not valid"']
    # "Verify your API key is correct and hasn't been revoked": a revoked key reads the same
    p = problem(evon.req("GET", "/organization", [("X-API-Key", EVON_REVOKED)]), 401, EVON, "credential-disabled")
    assert p["error"] == "Invalid API key"
    # "Verify header name: Must be exactly X-API-Key": the key anywhere else is no credential
    for headers, path in [([("Authorization", f"Bearer {EVON_READ}")], "/organization"),
                          ([("Api-Key", EVON_READ)], "/organization"),
                          ([], f"/organization?_apikey={EVON_READ}")]:
        problem(evon.req("GET", path, headers), 401, EVON, "credential-missing")
    # the header name itself is case-insensitive (HTTP)
    assert evon.req("GET", "/organization", [("x-api-key", EVON_READ)]).status == 200


def test_evon_403_insufficient_permissions(evon):
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        r = evon.req(method, "/organization", [("X-API-Key", EVON_READ), JSON_CT], body=b'{"name":"x"}')
        p = problem(r, 403, EVON, "insufficient-scope", instance="/organization")
        assert p["missing_scope"] == "write"
        assert p["error"] == "Insufficient permissions"  # 403 Forbidden - Insufficient Permissions
        assert r.header("www-authenticate") is None  # no Bearer challenge for an X-API-Key client
        e = echo(evon.req(method, "/organization", [("X-API-Key", EVON_FULL), JSON_CT], body=b'{"name":"x"}'))
        assert e["method"] == method and received(e, "x-keygate-scopes") == ["read write"]


def test_evon_100_per_minute_per_key_then_429(start):
    e = start("evon")  # its own Envoy: a fresh window, the documented 100 a minute unchanged
    t0 = time.time()
    oks, r, elapsed = drain(lambda: e.req("GET", "/organization", [("X-API-Key", EVON_READ)]), 200)
    assert len(oks) == 100  # a rolling window: exactly 100, nothing refills within the minute
    remaining = [int(x.header("x-ratelimit-remaining")) for x in oks]
    assert remaining == list(range(99, -1, -1))
    now = time.time()
    p = problem(r, 429, EVON, "rate-limited", instance="/organization")
    assert p["error"] == "Rate limit exceeded"
    assert "100 requests in any 60 s" in p["detail"]
    assert r.header("x-ratelimit-limit") == "100" and r.header("x-ratelimit-remaining") == "0"
    reset = int(r.header("x-ratelimit-reset"))
    assert t0 + 60 <= reset <= now + 61  # unix time at which the window is empty again
    assert (p["limit"], p["remaining"], p["resetTime"]) == (100, 0, reset)
    retry_after = int(r.header("retry-after"))
    assert 60 - (now - t0) - 1 <= retry_after <= 60  # until the first request is 60 s old
    # the other key's window is its own
    assert e.req("GET", "/organization", [("X-API-Key", EVON_FULL)]).header("x-ratelimit-remaining") == "99"
    # "Rolling 60-second window": 6 s later nothing has come back (a bucket would have refilled 10)
    time.sleep(6)  # time itself is tested (the window does not refill)
    statuses = [e.req("GET", "/organization", [("X-API-Key", EVON_READ)]).status for _ in range(10)]
    assert statuses == [429] * 10
    r = e.req("GET", "/organization", [("X-API-Key", EVON_READ)])
    assert int(r.header("retry-after")) <= retry_after - 5


def test_evon_documented_retry_loop(start):
    # Patch for this test only: 5 requests per 3 s instead of 100 per 60 s (still a rolling
    # window), so the documented client's wait until X-RateLimit-Reset is 3 s, not a minute.
    def short(pc):
        pc["rate_limit"]["plans"]["evon"].update(requests=5, window_s=3)
    e = start("evon", patch=short)

    def make_request_with_retry(endpoint, max_retries=3):
        """The seed's makeRequestWithRetry, in Python: on 429 wait until X-RateLimit-Reset."""
        waits = []
        for attempt in range(1, max_retries + 1):
            r = e.req("GET", endpoint, [("X-API-Key", EVON_READ), JSON_CT])
            if r.status == 429:
                reset = r.header("x-ratelimit-reset")
                wait = int(reset) * 1000 - time.time() * 1000 if reset else 60000
                waits.append(wait)
                if attempt < max_retries:
                    time.sleep(max(wait, 0) / 1000)  # the documented client waits until the reset
                    continue
            return r, waits
        raise AssertionError("unreachable")

    for _ in range(5):
        assert e.req("GET", "/organization", [("X-API-Key", EVON_READ)]).status == 200
    r, waits = make_request_with_retry("/organization")
    assert r.status == 200, r.body
    assert len(waits) == 1 and 0 < waits[0] <= 4000  # the 3 s window, rounded to a whole second


def test_evon_reset_timestamp_is_never_early(start):
    # Patch for this test only: 1 request per 2 s (still a rolling window), so one request fills
    # the window and the documented client retrying at X-RateLimit-Reset must find room.
    def one(pc):
        pc["rate_limit"]["plans"]["evon"].update(requests=1, window_s=2)
    e = start("evon", patch=one)
    time.sleep((0.3 - time.time() % 1) % 1)  # time itself: mid-second, where rounding down shows
    before = time.time()
    r = e.req("GET", "/organization", [("X-API-Key", EVON_READ)])
    assert r.status == 200
    reset = int(r.header("x-ratelimit-reset"))
    assert reset >= before + 2, (reset, before)  # full again no earlier than 2 s after the request
    time.sleep(max(reset - time.time(), 0))  # time itself is tested: the client retries at reset
    assert e.req("GET", "/organization", [("X-API-Key", EVON_READ)]).status == 200


def test_evon_rolling_window_across_its_boundary(start):
    # Patch for this test only: 6 requests per 2 s instead of 100 per 60 s (still a rolling window).
    def short(pc):
        pc["rate_limit"]["plans"]["evon"].update(requests=6, window_s=2)
    e = start("evon", patch=short)

    def burst(n):
        return [e.req("GET", "/organization", [("X-API-Key", EVON_READ)]) for _ in range(n)]

    first = burst(3)
    t_first = time.time()  # the first three were allowed before this
    assert [r.status for r in first] == [200] * 3
    time.sleep(1)  # time itself is tested: the second burst lands 1 s into the window
    t_second = time.time()  # the second burst's requests are allowed after this
    second = burst(5)
    t_second_end = time.time()  # ... and before this
    assert [r.status for r in second] == [200] * 3 + [429] * 2
    retry = int(second[-1].header("retry-after"))
    assert retry == 1  # the first three are 2 s old about 1 s from now
    # just after the first three are 2 s old: exactly their three slots are back (time itself)
    time.sleep(max(t_first + 2.05 - time.time(), 0))
    third = burst(5)
    assert time.time() < t_second + 2, "the test ran too slowly to check the boundary"
    # and the second burst's slots come back only 2 s after it (time itself)
    time.sleep(max(t_second_end + 2.05 - time.time(), 0))
    assert [r.status for r in burst(4)] == [200] * 3 + [429]
    assert [r.status for r in third] == [200] * 3 + [429] * 2
    assert [int(r.header("x-ratelimit-remaining")) for r in third[:3]] == [2, 1, 0]


# ------------------------------------------------------------------------------------------------
# Event Staff App (seed 002): Bearer only, business keys + personal tokens via the key service,
# four plans, public login
# ------------------------------------------------------------------------------------------------

ESA = "urn:eventstaff:problem:"
ACME_BUSINESS = "kgb_demo_acme_business_0001"
GLOBEX_BUSINESS = "kgb_demo_globex_business_0001"
PLANS = {"free": 60, "basic": 120, "professional": 300, "enterprise": 1000}


@pytest.fixture(scope="module")
def keys():
    k = KeyService().start()  # --seed-demo: alice/bob, the acme and globex business keys
    yield k
    k.stop()


@pytest.fixture(scope="module")
def esa(start, keys):
    return start("eventstaff", keyservice=keys)


def bearer(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")


def login(envoy, email="alice@example.com", password="alice-password"):
    body = json.dumps({"email": email, "password": password}).encode()
    return envoy.req("POST", "/v1/auth/login", [JSON_CT], body=body)


def revoked_soon(envoy, token: str, timeout: float = 6.0):
    """Polls until the token is refused (revocation feed every 1 s): the refusal."""
    return wait_until(lambda: (r := envoy.req("GET", "/v1/objects/events", [bearer(token)])).status != 200 and r,
                      timeout, 0.05, "the token to be refused")


def test_eventstaff_login_then_personal_token(esa):
    r = login(esa)  # public: no credential needed
    assert r.status == 200, r.body
    got = r.json()
    assert got["success"] is True and got["message"] == "Successfully authenticated"
    assert got["data"]["token_type"] == "Bearer" and got["data"]["expires_in"] == 86400
    token = got["data"]["access_token"]
    r = esa.req("GET", "/v1/objects/events", [bearer(token)])
    e = echo(r)
    assert received(e, "authorization") == []
    assert received(e, "x-keygate-subject") == ["alice"]
    assert received(e, "x-keygate-account") == ["acme"]
    assert received(e, "x-keygate-plan") == ["free"]
    assert r.header("x-ratelimit-limit") == "60" and r.header("x-ratelimit-remaining") == "59"
    assert 1 <= int(r.header("x-ratelimit-reset")) <= 60  # seconds until the limit resets
    # a wrong password is the key service's own 401, through the public route
    r = login(esa, password="not-the-password")
    assert r.status == 401 and r.header("content-type") == PROBLEM
    assert "access_token" not in r.body.decode()


def test_eventstaff_business_keys(esa):
    for key, account, plan in [(ACME_BUSINESS, "acme", "free"), (GLOBEX_BUSINESS, "globex", "professional")]:
        r = esa.req("GET", "/v1/objects/events", [bearer(key)])
        e = echo(r)
        assert received(e, "x-keygate-account") == [account] and received(e, "x-keygate-plan") == [plan]
        assert r.header("x-ratelimit-limit") == str(PLANS[plan])


def test_eventstaff_four_plans(esa, keys):
    for plan, limit in PLANS.items():
        secret = f"kgb_plan_{plan}_{uuid.uuid4().hex}"
        keys.add_key(secret, f"bk_{plan}_{uuid.uuid4().hex[:8]}", account=f"acct-{plan}", plan=plan)
        r = esa.req("GET", "/v1/objects/events", [bearer(secret)])
        assert r.status == 200, (plan, r.body)
        assert r.header("x-ratelimit-limit") == str(limit), plan
        assert r.header("x-ratelimit-remaining") == str(limit - 1), plan
        assert 1 <= int(r.header("x-ratelimit-reset")) <= 60


def test_eventstaff_bearer_only(esa):
    challenge = 'Bearer realm="Event Staff App API"'
    for headers, path in [([("X-API-Key", ACME_BUSINESS)], "/v1/objects/events"),
                          ([("Authorization", basic("alice", ACME_BUSINESS))], "/v1/objects/events"),
                          ([], f"/v1/objects/events?_apikey={ACME_BUSINESS}"),
                          ([], "/v1/objects/events")]:
        r = esa.req("GET", path, headers)
        problem(r, 401, ESA, "credential-missing", instance="/v1/objects/events")
        assert r.all("www-authenticate") == [challenge]
    r = esa.req("GET", "/v1/objects/events", [bearer("kgb_" + uuid.uuid4().hex)])
    problem(r, 401, ESA, "credential-invalid")
    assert 'error="invalid_token"' in r.header("www-authenticate")
    # only POST /v1/auth/login is public
    problem(esa.req("GET", "/v1/auth/login"), 401, ESA, "credential-missing")


def test_eventstaff_token_management(esa):
    token = login(esa).json()["data"]["access_token"]
    # GET /v1/tokens/business with the personal token: the account's business keys
    r = esa.req("GET", "/v1/tokens/business", [bearer(token)])
    assert r.status == 200, r.body
    assert "bk_demo_acme" in [k["id"] for k in r.json()["data"]]
    # a business key may not manage keys: keygate refuses it before the key service sees it
    r = esa.req("GET", "/v1/tokens/business", [bearer(ACME_BUSINESS)])
    p = problem(r, 403, ESA, "insufficient-scope", instance="/v1/tokens/business")
    assert p["missing_scope"] == "tokens"
    assert r.header("www-authenticate") == 'Bearer realm="Event Staff App API", error="insufficient_scope", scope="tokens"'
    # create a business key (shown once), use it, revoke it: refused within the poll interval
    r = esa.req("POST", "/v1/tokens/business", [bearer(token), JSON_CT], body=b'{"name":"ci"}')
    assert r.status == 201, r.body
    new = r.json()["data"]
    assert esa.req("GET", "/v1/objects/events", [bearer(new["key"])]).status == 200
    r = esa.req("DELETE", f"/v1/tokens/business/{new['id']}", [bearer(token)])
    assert r.status == 200 and r.json()["success"] is True
    problem(revoked_soon(esa, new["key"]), 401, ESA, "credential-revoked")
    # DELETE /v1/tokens/personal revokes the calling token itself
    assert esa.req("DELETE", "/v1/tokens/personal", [bearer(token)]).status == 200
    problem(revoked_soon(esa, token), 401, ESA, "credential-revoked")


def test_eventstaff_revoke_all(esa, keys):
    # its own account, so the seeded keys other tests use stay valid
    personal = "kgp_" + uuid.uuid4().hex
    keys.add_key(personal, "pk_" + uuid.uuid4().hex[:8], kind="personal", user="zed", account="zeta",
                 scopes=["read", "write", "tokens"])
    made = []
    for name in ("one", "two"):
        r = esa.req("POST", "/v1/tokens/business", [bearer(personal), JSON_CT], body=json.dumps({"name": name}).encode())
        assert r.status == 201, r.body
        made.append(r.json()["data"]["key"])
        assert esa.req("GET", "/v1/objects/events", [bearer(made[-1])]).status == 200
    r = esa.req("DELETE", "/v1/tokens/business", [bearer(personal)])
    assert r.status == 200 and r.json()["revoked"] == 2
    for k in made:
        problem(revoked_soon(esa, k), 401, ESA, "credential-revoked")
    assert esa.req("GET", "/v1/objects/events", [bearer(ACME_BUSINESS)]).status == 200
    # DELETE /v1/tokens/personal/all: every personal token of the account
    assert esa.req("DELETE", "/v1/tokens/personal/all", [bearer(personal)]).status == 200
    problem(revoked_soon(esa, personal), 401, ESA, "credential-revoked")


def test_eventstaff_revocation_right_after_start(start, keys):
    # A key used and revoked in Envoy's first moments, before keygate knows the revocation feed's
    # cursor, must still be refused once the feed reports it.
    # Patch for this test only: a 2 s poll, so the revocation falls within the first interval.
    def slow_poll(pc):
        pc["key_service"]["revocation_poll_ms"] = 2000
    e = start("eventstaff", patch=slow_poll, keyservice=keys)
    secret, key_id = "kgb_early_" + uuid.uuid4().hex, "bk_early_" + uuid.uuid4().hex[:8]
    keys.add_key(secret, key_id, account="acct-early", plan="free")
    assert e.req("GET", "/v1/objects/events", [bearer(secret)]).status == 200  # verdict cached
    keys.revoke(key_id)  # within the first poll interval
    problem(revoked_soon(e, secret, timeout=6.0), 401, ESA, "credential-revoked")


def test_eventstaff_free_plan_60_per_minute(esa, keys):
    secret = "kgb_rl_" + uuid.uuid4().hex  # a fresh key: its own bucket, the documented 60 unchanged
    keys.add_key(secret, "bk_rl_" + uuid.uuid4().hex[:8], account="acct-rl", plan="free")
    oks, r, elapsed = drain(lambda: esa.req("GET", "/v1/objects/events", [bearer(secret)]), 150)
    assert_bucket(oks, 60, 60, elapsed)
    p = problem(r, 429, ESA, "rate-limited")
    assert r.header("x-ratelimit-remaining") == "0"
    assert 55 <= int(r.header("x-ratelimit-reset")) <= 60  # seconds, not a timestamp
    assert p["limit"] == 60 and p["policy"] == "free"
    assert 1 <= int(r.header("retry-after")) <= 60


def test_eventstaff_access_log(esa):
    esa.req("GET", "/v1/logged", [bearer(GLOBEX_BUSINESS)])
    line = "GET /v1/logged 200 decision=allowed key_id=bk_demo_globex account=globex plan=professional"
    log = esa.wait_for(esa.access_log, line)
    assert line in log
    secret_free(log, ACME_BUSINESS, GLOBEX_BUSINESS, "alice-password")


# ------------------------------------------------------------------------------------------------
# Eventicat (seed 003): Bearer or _apikey, aggregator ownership 404, 1000 per account
# ------------------------------------------------------------------------------------------------

CAT = "urn:eventicat:problem:"
CAT_1, CAT_2, CAT_OTHER = "cat_demo_key_0001", "cat_demo_key_0002", "cat_other_key_0001"


@pytest.fixture(scope="module")
def cat(start):
    return start("eventicat")


def test_eventicat_url_parameter_method(cat):
    # GET https://app.eventicat.com/api/event?_id=YOUR_AGGREGATOR_ID&_apikey=YOUR_API_KEY&name=user_signup
    before = time.time()
    r = cat.req("GET", f"/api/event?_id=agg_demo_1&_apikey={CAT_1}&name=user_signup")
    e = echo(r)
    assert e["path"] == "/api/event?_id=agg_demo_1&name=user_signup"  # the key stays at the gateway
    assert received(e, "x-keygate-account") == ["cat-demo"]
    assert r.header("x-ratelimit-limit") == "1000"
    assert int(before) <= int(r.header("x-ratelimit-reset")) <= time.time() + 61  # a timestamp


def test_eventicat_bearer_method(cat):
    # curl -X POST ".../api/event?_id=YOUR_AGGREGATOR_ID" -H "Authorization: Bearer YOUR_API_KEY"
    #      -H "Content-Type: application/json" -d '{"name": "user_signup"}'
    body = json.dumps({"name": "user_signup"}).encode()
    for key in (CAT_1, CAT_2):
        e = echo(cat.req("POST", "/api/event?_id=agg_demo_2", [bearer(key), JSON_CT], body=body))
        assert e["method"] == "POST" and e["path"] == "/api/event?_id=agg_demo_2"
        assert e["body_bytes"] == len(body) and received(e, "authorization") == []
    # the same key in both carriers is one credential
    assert cat.req("GET", f"/api/event?_id=agg_demo_1&_apikey={CAT_1}", [bearer(CAT_1)]).status == 200


def test_eventicat_invalid_aggregator_is_404(cat):
    for path, headers in [("/api/event?_id=agg_other_1", [bearer(CAT_1)]),            # another account's
                          (f"/api/event?_id=agg_demo_1&_apikey={CAT_OTHER}", []),     # and the other way
                          ("/api/event?_id=agg_nope", [bearer(CAT_1)]),               # no such aggregator
                          ("/api/event?name=user_signup", [bearer(CAT_1)]),           # _id is required
                          ("/api/event?_id=agg_demo_1&_id=agg_other_1", [bearer(CAT_1)])]:
        r = cat.req("GET", path, headers)
        p = problem(r, 404, CAT, "resource-forbidden", instance="/api/event")
        assert p["error"] == "Invalid aggregator"
        secret_free(r.body.decode(), CAT_1, CAT_OTHER)
    assert cat.req("GET", "/api/event?_id=agg_other_1", [bearer(CAT_OTHER)]).status == 200


def test_eventicat_401_invalid_or_missing(cat):
    r = cat.req("GET", "/api/event?_id=agg_demo_1&_apikey=cat_wrong_key")
    assert problem(r, 401, CAT, "credential-invalid", instance="/api/event")["error"] == "Invalid API key"
    assert r.header("www-authenticate").startswith('Bearer realm="Eventicat", error="invalid_token"')
    r = cat.req("GET", "/api/event?_id=agg_demo_1")
    assert problem(r, 401, CAT, "credential-missing")["error"] == "Invalid API key"  # "invalid or missing"
    assert r.all("www-authenticate") == ['Bearer realm="Eventicat"']
    problem(cat.req("GET", "/api/event?_id=agg_demo_1", [("X-API-Key", CAT_1)]), 401, CAT, "credential-missing")


def test_eventicat_access_log_never_holds_the_url_key(cat):
    cat.req("GET", f"/api/event?_id=agg_demo_1&_apikey={CAT_2}&name=logged")
    line = "GET /api/event 200 decision=allowed key_id=cat-demo-2 account=cat-demo plan=eventicat"
    log = cat.wait_for(cat.access_log, line)
    assert line in log
    secret_free(log, CAT_1, CAT_2, CAT_OTHER, "cat_wrong_key")


def test_eventicat_rate_limit_per_account(start):
    # Patch for this test only: 20 requests per account instead of 1000 (same minute window).
    def small(pc):
        pc["rate_limit"]["plans"]["eventicat"]["requests"] = 20
    e = start("eventicat", patch=small)
    turn = iter(range(10_000))

    def send():  # the account's two keys take turns: one bucket for both
        key = (CAT_1, CAT_2)[next(turn) % 2]
        return e.req("GET", "/api/event?_id=agg_demo_1&name=x", [bearer(key)])

    oks, r, elapsed = drain(send, 100)
    assert_bucket(oks, 20, 60, elapsed)
    now = time.time()
    p = problem(r, 429, CAT, "rate-limited", instance="/api/event")
    # {"error": "Rate limit exceeded", "limit": 1000, "remaining": 0, "resetTime": 1640995200}
    assert p["error"] == "Rate limit exceeded"
    assert p["limit"] == 20 and p["remaining"] == 0
    assert isinstance(p["resetTime"], int) and now + 55 <= p["resetTime"] <= now + 61
    assert r.header("x-ratelimit-reset") == str(p["resetTime"])
    assert r.header("x-ratelimit-limit") == "20" and r.header("x-ratelimit-remaining") == "0"
    # another account is not affected
    r = e.req("GET", "/api/event?_id=agg_other_1", [bearer(CAT_OTHER)])
    assert r.status == 200 and r.header("x-ratelimit-remaining") == "19"
    # ownership is checked before the bucket: a foreign aggregator is a 404 even with the bucket empty
    problem(e.req("GET", "/api/event?_id=agg_other_1", [bearer(CAT_1)]), 404, CAT, "resource-forbidden")


def test_eventicat_retry_at_reset_time(start):
    # Patch for this test only: 5 requests per 2 s instead of 1000 a minute, so waiting until
    # resetTime ("Monitor rate limits") takes seconds, not a minute.
    def short(pc):
        pc["rate_limit"]["plans"]["eventicat"] = {"requests": 5, "window_s": 2, "per": "account"}
    e = start("eventicat", patch=short)
    oks, r, _ = drain(lambda: e.req("GET", "/api/event?_id=agg_demo_1", [bearer(CAT_1)]), 50)
    reset = r.json()["resetTime"]
    assert 0 < reset - time.time() <= 3
    time.sleep(max(reset - time.time(), 0))  # time itself is tested: the client retries at resetTime
    r = e.req("GET", "/api/event?_id=agg_demo_1", [bearer(CAT_2)])
    assert r.status == 200, r.body


# ------------------------------------------------------------------------------------------------
# Astalty (seed 004): Bearer only, 60/min per key, 401 / 403 / 429
# ------------------------------------------------------------------------------------------------

AST = "urn:astalty:problem:"
AST_OWNER, AST_VIEWER, AST_REVOKED = "ast_demo_owner_0001", "ast_demo_viewer_0002", "ast_demo_revoked_0003"
ACCEPT = ("Accept", "application/json")
PARTICIPANTS = "/public/v1/participants"


@pytest.fixture(scope="module")
def ast(start):
    return start("astalty")


def test_astalty_documented_curl(ast):
    # curl https://api.app.astalty.com.au/public/v1/participants -H "Authorization: Bearer YOUR_API_KEY"
    #      -H "Accept: application/json"
    r = ast.req("GET", PARTICIPANTS, [bearer(AST_OWNER), ACCEPT])
    e = echo(r)
    assert received(e, "authorization") == [] and received(e, "accept") == ["application/json"]
    assert received(e, "x-keygate-subject") == ["owner@demo-clinic"]
    assert r.header("x-ratelimit-limit") == "60" and r.header("x-ratelimit-remaining") == "59"


def test_astalty_401_missing_invalid_revoked(ast):
    for headers, slug in [([], "credential-missing"),
                          ([bearer("ast_not_a_key")], "credential-invalid"),
                          ([bearer(AST_REVOKED)], "credential-disabled")]:
        r = ast.req("GET", PARTICIPANTS, [*headers, ACCEPT])
        p = problem(r, 401, AST, slug, instance=PARTICIPANTS)
        assert r.header("www-authenticate").startswith('Bearer realm="Astalty API"')
        # {"message": "...", "errors": {...}}: the members the documented body has
        assert p["message"] == p["detail"] and p["errors"] == {}
    # "A request with a missing, malformed or revoked key is rejected with a 401"
    for value in ["Bearer", "Bearer ", "Bearer two tokens", "Bearer k\u00e9y".encode().decode("latin-1")]:
        r = ast.req("GET", PARTICIPANTS, [("Authorization", value), ACCEPT])
        p = problem(r, 401, AST, "credential-malformed", instance=PARTICIPANTS)
        assert p["message"] == p["detail"] and p["errors"] == {}
        assert r.header("www-authenticate").startswith('Bearer realm="Astalty API", error="invalid_token"')


def test_astalty_403_without_the_owners_permission(ast):
    body = json.dumps({"email": "p@example.com"}).encode()
    r = ast.req("POST", PARTICIPANTS, [bearer(AST_VIEWER), ACCEPT, JSON_CT], body=body)
    p = problem(r, 403, AST, "insufficient-scope", instance=PARTICIPANTS)
    assert p["missing_scope"] == "write"
    assert p["message"] == p["detail"] and p["errors"] == {}
    assert 'error="insufficient_scope"' in r.header("www-authenticate")
    assert echo(ast.req("GET", PARTICIPANTS, [bearer(AST_VIEWER), ACCEPT]))["method"] == "GET"
    assert echo(ast.req("POST", PARTICIPANTS, [bearer(AST_OWNER), ACCEPT, JSON_CT], body=body))["body_bytes"] == len(body)


def test_astalty_60_per_minute_then_short_delay_and_retry(start):
    e = start("astalty")  # its own Envoy: a fresh bucket, the documented 60 a minute unchanged
    oks, r, elapsed = drain(lambda: e.req("GET", PARTICIPANTS, [bearer(AST_OWNER), ACCEPT]), 150)
    assert_bucket(oks, 60, 60, elapsed)
    p = problem(r, 429, AST, "rate-limited", instance=PARTICIPANTS)
    assert p["message"] == p["detail"] and p["errors"] == {}
    delay = int(r.header("retry-after"))
    assert 1 <= delay <= 2  # one token a second
    assert e.req("GET", PARTICIPANTS, [bearer(AST_VIEWER), ACCEPT]).status == 200  # per key
    time.sleep(delay)  # time itself: "Build a short delay and retry into your integration"
    assert e.req("GET", PARTICIPANTS, [bearer(AST_OWNER), ACCEPT]).status == 200


# ------------------------------------------------------------------------------------------------
# Astalty's API Dashboard: "Every API request made with your keys is logged ..., where you can
# inspect the status, timing, request body and response body." The shipped profile, its history
# in the key service, as the key's owner sees it.
# ------------------------------------------------------------------------------------------------

def test_astalty_history_shows_status_timing_and_both_bodies(start):
    from test_history import Owner, wait_stored
    ks = KeyService(faults=False).start()
    try:
        ks.admin("POST", "/admin/accounts", {"name": "demo-clinic", "plan": "public-api"})
        ks.admin("POST", "/admin/users", {"name": "clinic-owner", "email": "owner@demo-clinic.example",
                                          "account": "demo-clinic", "password": "clinic-password-0001"})
        e = start("astalty", keyservice=ks)
        body = json.dumps({"first_name": "Ada", "medicare_number": "2123 45670 1", "password": "pw-secret-1"})
        r = e.req("POST", "/public/v1/participants", [
            ("Authorization", "Bearer ast_demo_owner_0001"), ("Content-Type", "application/json"),
            ("Accept", "application/json")], body.encode())
        assert r.status == 200
        assert e.req("GET", "/public/v1/participants", [("Authorization", "Bearer ast_demo_viewer_0002")]).status == 200
        wait_stored(ks, 2)
        owner = Owner(ks, "owner@demo-clinic.example", "clinic-password-0001")
        assert set(owner.usage()) == {"ast-demo-owner", "ast-demo-revoked"} or set(owner.usage()) == {"ast-demo-owner"}
        [row] = owner.requests("ast-demo-owner")
        assert (row["method"], row["path"], row["status"]) == ("POST", "/public/v1/participants", "200")
        assert row["total"].isdigit() and row["upstream"].isdigit()
        status, page = owner.get(f"/dashboard/keys/ast-demo-owner/history/{row['rid']}")
        assert status == 200 and 'id="req-body"' in page and 'id="resp-body"' in page
        assert "Ada" in page and "[REDACTED]" in page
        for secret in ("2123 45670 1", "pw-secret-1", "ast_demo_owner_0001"):
            assert secret not in page
        # the viewer's key belongs to another account: not this owner's
        assert owner.get("/dashboard/keys/ast-demo-viewer/history")[0] == 404
    finally:
        ks.stop()
