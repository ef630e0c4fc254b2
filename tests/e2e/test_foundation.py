"""Issue: four credential styles, embedded key store, problem+json replies, config refusal.

Every test drives a real Envoy (V8) loading the built keygate.wasm in front of the echo upstream.
"""
import json
import subprocess
import time

import pytest

from harness import Envoy
from keys import (ALL_SECRETS, BEARER_KEY, DISABLED_KEY, EXPIRED_KEY, HEADER_KEY, KEYS, PAT,
                  QUERY_KEY, basic)

CONFIG = {"realm": "api", "keys": KEYS, "brand_new_option": True}
IDENTITY = ["x-keygate-key-id", "x-keygate-subject", "x-keygate-account", "x-keygate-plan", "x-keygate-scopes"]


@pytest.fixture(scope="module")
def envoy(make_envoy):
    return make_envoy(CONFIG)


def upstream_saw(resp):
    assert resp.status == 200, (resp.status, resp.body)
    return resp.json()


def hdr(echo, name):
    return [v for k, v in echo["headers"] if k == name]


def assert_problem(resp, status, slug, secret=None):
    assert resp.status == status, (resp.status, resp.body)
    assert resp.header("content-type") == "application/problem+json"
    assert resp.header("cache-control") == "no-store"
    body = resp.json()
    assert body["type"] == f"urn:keygate:problem:{slug}"
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert "?" not in body["instance"]
    for s in ALL_SECRETS + ([secret] if secret else []):
        assert s not in resp.body.decode(errors="replace")
        assert all(s not in v for _, v in resp.headers)
    return body


# --- the four styles -------------------------------------------------------------------------

def test_x_api_key(envoy):
    echo = upstream_saw(envoy.req("GET", "/v1/organization", [("X-API-Key", HEADER_KEY)]))
    assert hdr(echo, "x-keygate-key-id") == ["k-header"]
    assert hdr(echo, "x-keygate-account") == ["evon"]
    assert hdr(echo, "x-keygate-plan") == ["free"]
    assert hdr(echo, "x-keygate-scopes") == ["read"]
    assert hdr(echo, "x-api-key") == []


def test_empty_identity_values_are_not_sent(envoy):
    # k-query has no scopes: no empty x-keygate-scopes reaches the upstream (a forged one is removed)
    echo = upstream_saw(envoy.req("GET", "/v1/x", [("X-API-Key", QUERY_KEY), ("x-keygate-scopes", "admin")]))
    assert hdr(echo, "x-keygate-key-id") == ["k-query"]
    assert hdr(echo, "x-keygate-scopes") == []


def test_identity_headers_can_be_renamed_or_turned_off(make_envoy):
    e = make_envoy({"keys": KEYS, "identity_headers": {"key_id": "x-client-id", "subject": False,
                                                       "scopes": False}})
    echo = upstream_saw(e.req("GET", "/v1/x", [("X-API-Key", HEADER_KEY), ("x-client-id", "forged"),
                                                ("x-keygate-scopes", "client's own")]))
    assert hdr(echo, "x-client-id") == ["k-header"]
    assert hdr(echo, "x-keygate-account") == ["evon"]
    # turned off: keygate neither sets nor removes it
    assert hdr(echo, "x-keygate-scopes") == ["client's own"]
    assert hdr(echo, "x-keygate-subject") == []


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_bearer_scheme_is_case_insensitive(envoy, scheme):
    echo = upstream_saw(envoy.req("GET", "/v1/objects/events", [("Authorization", f"{scheme} {BEARER_KEY}")]))
    assert hdr(echo, "x-keygate-key-id") == ["k-bearer"]
    assert hdr(echo, "x-keygate-scopes") == ["read write"]
    assert hdr(echo, "authorization") == []


def test_basic_user_and_pat(envoy):
    echo = upstream_saw(envoy.req("GET", "/api/records/contacts", [("Authorization", basic("alice", PAT))]))
    assert hdr(echo, "x-keygate-key-id") == ["k-pat"]
    assert hdr(echo, "x-keygate-subject") == ["alice"]
    assert hdr(echo, "authorization") == []


def test_basic_user_is_part_of_identity(envoy):
    r = envoy.req("GET", "/api/records/contacts", [("Authorization", basic("mallory", PAT))])
    assert_problem(r, 401, "credential-invalid")
    # a user-less key is not a Basic credential at all
    r = envoy.req("GET", "/api/records/contacts", [("Authorization", basic("alice", HEADER_KEY))])
    assert_problem(r, 401, "credential-invalid")


def test_query_parameter_percent_decoded_and_stripped(envoy):
    echo = upstream_saw(envoy.req("GET", "/api/event?_id=agg-1&_apikey=cat%2Dtest-key-0001&name=user_signup"))
    assert hdr(echo, "x-keygate-key-id") == ["k-query"]
    assert echo["path"] == "/api/event?_id=agg-1&name=user_signup"


def test_same_key_in_two_carriers_is_one_credential(envoy):
    echo = upstream_saw(envoy.req("GET", f"/e?_apikey={BEARER_KEY}", [("Authorization", f"Bearer {BEARER_KEY}")]))
    assert hdr(echo, "x-keygate-key-id") == ["k-bearer"]
    assert echo["path"] == "/e"


# --- 401s ------------------------------------------------------------------------------------

def test_missing_credential_challenges_without_error(envoy):
    r = envoy.req("GET", "/v1/organization?x=1")
    body = assert_problem(r, 401, "credential-missing")
    assert body["instance"] == "/v1/organization"
    assert body["request_id"]
    assert r.all("www-authenticate") == ['Bearer realm="api"', 'Basic realm="api", charset="UTF-8"']


def test_unknown_token_is_invalid_token(envoy):
    r = envoy.req("GET", "/v1/x", [("X-API-Key", "no-such-key-123")])
    assert_problem(r, 401, "credential-invalid", secret="no-such-key-123")
    ch = r.all("www-authenticate")
    assert ch[0].startswith('Bearer realm="api", error="invalid_token"')
    assert ch[1] == 'Basic realm="api", charset="UTF-8"'


def test_unknown_basic_gets_no_invalid_token(envoy):
    r = envoy.req("GET", "/v1/x", [("Authorization", basic("bob", "nope-nope"))])
    assert_problem(r, 401, "credential-invalid", secret="nope-nope")
    assert r.all("www-authenticate") == ['Bearer realm="api"', 'Basic realm="api", charset="UTF-8"']


def test_expired_and_disabled_keys_are_refused(envoy):
    assert_problem(envoy.req("GET", "/x", [("X-API-Key", EXPIRED_KEY)]), 401, "credential-expired")
    assert_problem(envoy.req("GET", "/x", [("X-API-Key", DISABLED_KEY)]), 401, "credential-disabled")


def test_foreign_scheme_is_missing_not_malformed(envoy):
    r = envoy.req("GET", "/x", [("Authorization", "Digest username=x")])
    body = assert_problem(r, 401, "credential-missing")
    assert "scheme" in body["detail"]


# --- 400s: malformed, conflicting, oversized, odd bytes ----------------------------------------

MALFORMED = [
    ("bad base64", [("Authorization", "Basic !!!notbase64")], "credential-malformed", "base64"),
    ("no colon", [("Authorization", "Basic " + "bm9jb2xvbg==")], "credential-malformed", "':'"),
    ("empty user", [("Authorization", basic("", "tok"))], "credential-malformed", "user is empty"),
    ("empty token", [("Authorization", basic("u", ""))], "credential-malformed", "token is empty"),
    ("control char", [("Authorization", basic("u", "t\x01k"))], "credential-malformed", "control"),
    ("bad utf-8", [("Authorization", "Basic dTr/")], "credential-malformed", "UTF-8"),
    ("empty bearer", [("Authorization", "Bearer")], "credential-malformed", "empty"),
    ("bearer space", [("Authorization", "Bearer a b")], "credential-malformed", "spaces"),
    ("non-ascii key", [("X-API-Key", b"k\xff\xfe")], "credential-malformed", "non-ASCII"),
    ("huge key", [("X-API-Key", "k" * 20000)], "credential-too-large", "longer"),
    ("two authorization", [("Authorization", f"Bearer {BEARER_KEY}"), ("Authorization", f"Bearer {BEARER_KEY}")],
     "credential-conflict", "more than one Authorization"),
    ("two api keys", [("X-API-Key", HEADER_KEY), ("X-API-Key", HEADER_KEY)], "credential-conflict", "more than once"),
    ("different credentials", [("X-API-Key", HEADER_KEY), ("Authorization", f"Bearer {BEARER_KEY}")],
     "credential-conflict", "differ"),
]


@pytest.mark.parametrize("name,headers,slug,why", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_headers_get_400(envoy, name, headers, slug, why):
    r = envoy.req("GET", "/v1/x?_other=1", headers)
    body = assert_problem(r, 400, slug)
    assert why in body["detail"]
    assert r.all("www-authenticate")[0].startswith('Bearer realm="api", error="invalid_request"')


@pytest.mark.parametrize("query,why", [
    ("_apikey=a&_apikey=b", "more than once"),
    ("_apikey=", "empty"),
    ("_apikey=%zz", "percent"),
    ("_apikey=a%00b", "control"),
    ("%5Fapikey=x&_apikey=x", "more than once"),
])
def test_malformed_query_gets_400(envoy, query, why):
    r = envoy.req("GET", f"/api/event?{query}")
    body = assert_problem(r, 400, "credential-conflict" if "once" in why else "credential-malformed")
    assert why in body["detail"]
    assert body["instance"] == "/api/event"


def test_vm_survives_hostile_input(envoy):
    for _ in range(3):
        for _name, headers, _slug, _why in MALFORMED:
            envoy.req("GET", "/x", headers)
    echo = upstream_saw(envoy.req("GET", "/x", [("X-API-Key", HEADER_KEY)]))
    assert hdr(echo, "x-keygate-key-id") == ["k-header"]
    assert "Wasm VM failed" not in envoy.logs()
    assert "panicked" not in envoy.logs()


def test_no_secret_in_envoy_logs(envoy):
    logs = envoy.logs() + envoy.access_log()
    for s in ALL_SECRETS:
        assert s not in logs


# --- config ------------------------------------------------------------------------------------

def test_unknown_field_is_warned_and_ignored(envoy):
    needle = "ignoring unknown config field `brand_new_option`"
    warned = [l for l in envoy.wait_for(envoy.logs, needle).splitlines() if needle in l]
    assert warned


def test_bad_config_is_refused_with_one_line_naming_the_field(upstream):
    bad = dict(CONFIG)
    bad["keys"] = KEYS + [{"id": "x", "sha256": "not-hex"}]
    e = Envoy(bad, upstream.port)
    e.start(wait_ready=False)
    try:
        e.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("Envoy kept running with a refused keygate config")
    finally:
        e.stop()
    lines = [l for l in e.logs().splitlines() if "keygate: configuration refused" in l]
    assert len(lines) == 1, lines
    assert f"field `keys[{len(KEYS)}].sha256`" in lines[0]
    assert e.proc.returncode != 0
