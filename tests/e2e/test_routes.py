"""Issue: route policy and what reaches the upstream."""
import re

import pytest

from keys import sha, basic

KEY, OTHER, PAT = "route-key-0001", "route-key-reader", "route-pat-alice-0001"
CONFIG = {
    "keys": [
        {"id": "kw", "sha256": sha(KEY), "subject": "alice", "account": "acme", "plan": "p",
         "scopes": ["read", "write"], "resources": {"aggregator": ["agg-1", "agg 2"]}},
        # a Basic password is its user's only: the same identity for Basic is a key of its own
        {"id": "kw-basic", "sha256": sha(PAT), "user": "alice", "account": "acme", "plan": "p",
         "scopes": ["read", "write"]},
        {"id": "kr", "sha256": sha(OTHER), "account": "acme", "plan": "p", "scopes": ["read"]},
    ],
    "routes": [
        {"exact": "/health", "access": "public"},
        {"prefix": "/v1/auth/login", "methods": ["POST"], "access": "public"},
        {"prefix": "/", "methods": ["OPTIONS"], "access": "public"},
        {"prefix": "/internal", "access": "closed"},
        {"prefix": "/api/event", "owner": {"query": "_id", "resource": "aggregator", "status": 404}},
        {"prefix": "/v1/aggregators/", "owner": {"path_segment": 3, "resource": "aggregator", "status": 403}},
        {"prefix": "/v1/objects", "methods": ["POST", "DELETE"], "scopes": ["write"]},
    ],
}
IDENTITY = ["x-keygate-key-id", "x-keygate-subject", "x-keygate-account", "x-keygate-plan", "x-keygate-scopes"]
FORGED = [(h, "forged") for h in IDENTITY]


@pytest.fixture(scope="module")
def envoy(make_envoy):
    return make_envoy(CONFIG)


def echo(resp):
    assert resp.status == 200, (resp.status, resp.body)
    return resp.json()


def names(e):
    return [k for k, _ in e["headers"]]


def values(e, name):
    return [v for k, v in e["headers"] if k == name]


@pytest.mark.parametrize("headers,path,key_id", [
    ([("X-API-Key", KEY)], "/v1/x?a=1", "kw"),
    ([("Authorization", f"Bearer {KEY}")], "/v1/x?a=1", "kw"),
    ([("Authorization", basic("alice", PAT))], "/v1/x?a=1", "kw-basic"),
    ([], f"/v1/x?a=1&_apikey={KEY}", "kw"),
])
def test_upstream_sees_identity_not_credentials_nor_forgeries(envoy, headers, path, key_id):
    e = echo(envoy.req("GET", path, headers + FORGED + [("X-Other", "kept")]))
    assert e["path"] == "/v1/x?a=1"
    assert "authorization" not in names(e) and "x-api-key" not in names(e)
    assert values(e, "x-keygate-key-id") == [key_id]
    assert values(e, "x-keygate-subject") == ["alice"]
    assert values(e, "x-keygate-account") == ["acme"]
    assert values(e, "x-keygate-plan") == ["p"]
    assert values(e, "x-keygate-scopes") == ["read write"]
    assert values(e, "x-other") == ["kept"]
    assert "forged" not in str(e)


@pytest.mark.parametrize("fillers", [20, 27, 28, 29, 60])
def test_credential_and_forgeries_found_among_many_headers(envoy, fillers):
    """keygate walks the request's headers in a stack array of 32 and spills into a Vec beyond:
    the key and a forged identity header after the spill point are still found."""
    filler = [(f"X-Fill-{i}", f"v{i}") for i in range(fillers)]
    e = echo(envoy.req("GET", "/v1/x", filler + [("X-Keygate-Plan", "forged"), ("X-API-Key", KEY)]))
    assert values(e, "x-keygate-key-id") == ["kw"]
    assert values(e, "x-keygate-plan") == ["p"]
    assert "x-api-key" not in names(e)
    assert [values(e, f"x-fill-{i}") for i in range(fillers)] == [[f"v{i}"] for i in range(fillers)]


@pytest.mark.parametrize("query,kept", [
    (f"_apikey={KEY}&b=2&c=3", "b=2&c=3"),
    (f"b=2&_apikey={KEY}&c=3", "b=2&c=3"),
    (f"b=2&c=3&_apikey={KEY}", "b=2&c=3"),
    (f"b=2&b=2&_apikey={KEY}&c=%2F%20x+y&d", "b=2&b=2&c=%2F%20x+y&d"),
    (f"%5Fapikey={KEY}&e=%C3%A9&&f=", "e=%C3%A9&&f="),
    (f"_apikey={KEY}", None),
])
def test_apikey_removed_rest_of_query_byte_for_byte(envoy, query, kept):
    e = echo(envoy.req("GET", f"/v1/q?{query}"))
    assert e["path"] == ("/v1/q" if kept is None else f"/v1/q?{kept}")


def test_public_routes_need_no_key_and_still_strip_forgeries(envoy):
    e = echo(envoy.req("GET", "/health", FORGED))
    assert not set(IDENTITY) & set(names(e))
    e = echo(envoy.req("POST", "/v1/auth/login", FORGED, body=b'{"email":"a"}'))
    assert not set(IDENTITY) & set(names(e))
    e = echo(envoy.req("OPTIONS", "/v1/anything", [("Origin", "https://x.test")]))
    assert e["method"] == "OPTIONS"
    # a credential sent to a public route is not passed on either
    e = echo(envoy.req("GET", f"/health?_apikey={KEY}", [("X-API-Key", KEY), ("Authorization", f"Bearer {KEY}")]))
    assert e["path"] == "/health" and "x-api-key" not in names(e) and "authorization" not in names(e)
    # GET on the login path is not public
    assert envoy.req("GET", "/v1/auth/login").status == 401


def test_closed_route(envoy):
    r = envoy.req("GET", "/internal/x", [("X-API-Key", KEY)])
    assert r.status == 403 and r.json()["type"] == "urn:keygate:problem:route-closed"


def test_scope_403_names_what_is_missing(envoy):
    r = envoy.req("POST", "/v1/objects/events", [("Authorization", f"Bearer {OTHER}")])
    assert r.status == 403
    body = r.json()
    assert body["type"] == "urn:keygate:problem:insufficient-scope"
    assert body["missing_scope"] == "write" and "write" in body["detail"]
    assert r.header("www-authenticate") == 'Bearer realm="keygate", error="insufficient_scope", scope="write"'
    # X-API-Key: same 403, no Bearer challenge
    r = envoy.req("POST", "/v1/objects/events", [("X-API-Key", OTHER)])
    assert r.status == 403 and r.header("www-authenticate") is None
    # reading needs no scope; writing with the write key passes
    assert envoy.req("GET", "/v1/objects/events", [("X-API-Key", OTHER)]).status == 200
    assert envoy.req("POST", "/v1/objects/events", [("X-API-Key", KEY)]).status == 200


def test_ownership_by_query_parameter(envoy):
    assert echo(envoy.req("GET", "/api/event?_id=agg-1&name=x", [("X-API-Key", KEY)]))["path"] == "/api/event?_id=agg-1&name=x"
    assert envoy.req("GET", "/api/event?_id=agg%202", [("X-API-Key", KEY)]).status == 200
    for q in ["_id=agg-9", "_id=agg-1&_id=agg-9", "name=x"]:
        r = envoy.req("GET", f"/api/event?{q}", [("X-API-Key", KEY)])
        assert r.status == 404, q
        assert r.json()["type"] == "urn:keygate:problem:resource-forbidden"
    # a key with no aggregator list owns nothing
    assert envoy.req("GET", "/api/event?_id=agg-1", [("X-API-Key", OTHER)]).status == 404


def test_ownership_by_path_segment(envoy):
    assert envoy.req("GET", "/v1/aggregators/agg-1/events", [("X-API-Key", KEY)]).status == 200
    r = envoy.req("GET", "/v1/aggregators/agg-7/events", [("X-API-Key", KEY)])
    assert r.status == 403 and r.json()["type"] == "urn:keygate:problem:resource-forbidden"


def test_access_log_records_who_and_what_without_secret(envoy):
    envoy.req("GET", f"/v1/logged?_apikey={KEY}")
    envoy.req("GET", "/v1/logged", [("X-API-Key", "wrong-key-xyz")])
    envoy.req("GET", "/health")
    # keygate's state: its decision, then the path without its query and the request id
    allowed = "decision=allowed key_id=kw account=acme plan=p path=/v1/logged request_id="
    refused = "decision=credential-invalid key_id=- account=- plan=- path=/v1/logged request_id="
    public = "decision=public key_id=- account=- plan=- path=/health request_id="
    log = envoy.wait_for(envoy.access_log, allowed, refused, public)
    for needle, rest in ((allowed, "status=200 method=GET path=/v1/logged"),
                         (refused, "status=401 method=GET path=/v1/logged"),
                         (public, "status=200 method=GET path=/health")):
        assert re.search(re.escape(needle) + r"[0-9a-f-]{36} " + re.escape(rest), log), log
    assert KEY not in log and "wrong-key-xyz" not in log


def test_access_log_state_can_be_turned_off(make_envoy):
    e = make_envoy(dict(CONFIG, access_log_state=False))
    assert e.req("GET", "/v1/logged", [("X-API-Key", KEY)]).status == 200
    assert e.req("GET", "/v1/logged", [("X-API-Key", "wrong-key-xyz")]).status == 401
    allowed, refused = "status=200 method=GET path=/v1/logged", "status=401 method=GET path=/v1/logged"
    log = e.wait_for(e.access_log, allowed, refused)
    # %FILTER_STATE(wasm.keygate:PLAIN)% renders "-" when keygate set nothing
    assert f"- {allowed}" in log and f"- {refused}" in log, log
    assert "decision=" not in log


def test_hide_credentials_can_be_turned_off(make_envoy):
    cfg = dict(CONFIG, credentials={"hide_from_upstream": False})
    e = make_envoy(cfg)
    got = echo(e.req("GET", f"/v1/x?_apikey={KEY}", [("Authorization", f"Bearer {KEY}")]))
    assert got["path"] == f"/v1/x?_apikey={KEY}"
    assert values(got, "authorization") == [f"Bearer {KEY}"]


def test_request_body_and_framing_survive_the_header_rewrite(envoy):
    """keygate rewrites request headers (removes the carrier, adds identity): the body,
    content-length and the pseudo headers must come through intact."""
    body = b"x" * 5000
    e = echo(envoy.req("POST", f"/v1/upload?a=1&_apikey={KEY}", [("Content-Type", "application/octet-stream")], body=body))
    assert e["method"] == "POST" and e["path"] == "/v1/upload?a=1"
    assert e["body_bytes"] == 5000
    assert values(e, "content-length") == ["5000"]
    assert values(e, "host") == ["api.test"]
