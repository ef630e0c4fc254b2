"""gRPC clients through Envoy over HTTP/2: every denial reaches a real gRPC client (grpcio) as the
status its library expects (RESOURCE_EXHAUSTED for limits, UNAUTHENTICATED, PERMISSION_DENIED,
NOT_FOUND, INVALID_ARGUMENT, UNAVAILABLE only for the key service) with a short readable message
and the retry hints, and an allowed call reaches a real gRPC upstream (a grpcio server).

The calls are generic unary calls with raw bytes (no generated code)."""
from __future__ import annotations

import time
from concurrent import futures

import grpc
import pytest

from harness import cluster, free_port
from keys import sha

KEY, SCOPED, LIMITED = "grpc-key-0001", "grpc-admin-0002", "grpc-limited-0003"
WEB_LIMITED = "grpc-web-limited-0004"

CONFIG = {
    "keys": [
        {"id": "g1", "sha256": sha(KEY), "account": "acme", "plan": "roomy", "scopes": ["read"],
         "resources": {"aggregator": ["Mine"]}},
        {"id": "g2", "sha256": sha(SCOPED), "account": "acme", "plan": "roomy", "scopes": ["read", "admin"]},
        {"id": "g3", "sha256": sha(LIMITED), "account": "acme", "plan": "tiny", "scopes": ["read"]},
        {"id": "g4", "sha256": sha(WEB_LIMITED), "account": "acme", "plan": "tiny", "scopes": ["read"]},
    ],
    "rate_limit": {"plans": {"roomy": {"requests": 1000, "window_s": 60},
                             "tiny": {"requests": 2, "window_s": 60, "algorithm": "rolling_window"}}},
    "routes": [
        {"prefix": "/kg.Echo/Admin", "scopes": ["admin"]},
        {"prefix": "/kg.Closed/", "access": "closed"},
        # a gRPC call always has a body: a path-segment owner needs nothing more (`body` "read")
        {"prefix": "/kg.Agg/", "owner": {"path_segment": 2, "resource": "aggregator", "status": 404}},
        # `body` "reject": a call with a body is refused, 400 request-ambiguous
        {"prefix": "/kg.Strict/", "owner": {"path_segment": 2, "resource": "aggregator", "status": 404,
                                            "body": "reject"}},
    ],
}


class Upstream:
    """A grpcio server answering /kg.Echo/* and /kg.Agg/* with what it received."""

    def __init__(self):
        self.port = free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))

        def echo(request: bytes, context) -> bytes:
            md = dict(context.invocation_metadata())
            seen = [f"{k}={v}" for k, v in sorted(md.items()) if k.startswith("x-keygate") or k in ("x-api-key", "authorization")]
            return b"echo:" + request + b"|" + ";".join(seen).encode()

        handlers = {m: grpc.unary_unary_rpc_method_handler(echo) for m in ("Say", "Admin")}
        self.server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler("kg.Echo", handlers),
            grpc.method_handlers_generic_handler("kg.Agg", {"Mine": grpc.unary_unary_rpc_method_handler(echo)}),
        ))
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.server.start()

    def stop(self):
        self.server.stop(grace=None)


def h2_cluster(name: str, port: int) -> dict:
    c = cluster(name, port)
    c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}
    return c


@pytest.fixture(scope="module")
def grpc_upstream():
    u = Upstream()
    yield u
    u.stop()


def start(make_envoy, grpc_upstream, config, **kw):
    return make_envoy(config, extra_clusters=[h2_cluster("grpc", grpc_upstream.port), *kw.pop("clusters", [])],
                      routes=[("/kg.", "grpc")], **kw)


@pytest.fixture(scope="module")
def envoy(make_envoy, grpc_upstream):
    return start(make_envoy, grpc_upstream, CONFIG)


@pytest.fixture(scope="module")
def channel(envoy):
    ch = grpc.insecure_channel(f"127.0.0.1:{envoy.port}")
    yield ch
    ch.close()


def unary(channel, method: str, metadata=(), body: bytes = b"hi"):
    """(status code, details, trailing metadata as a dict, response or None)."""
    call = channel.unary_unary(method)
    try:
        resp, c = call.with_call(body, metadata=list(metadata), timeout=5)
        return c.code(), c.details(), dict(c.trailing_metadata() or ()), resp
    except grpc.RpcError as e:
        return e.code(), e.details(), dict(e.trailing_metadata() or ()), None


def test_an_allowed_call_reaches_the_grpc_upstream(channel):
    code, _, _, resp = unary(channel, "/kg.Echo/Say", [("x-api-key", KEY)], b"ping")
    assert code == grpc.StatusCode.OK
    assert resp.startswith(b"echo:ping|")
    assert b"x-keygate-key-id=g1" in resp and b"x-api-key" not in resp  # identity in, key hidden
    code, _, _, resp = unary(channel, "/kg.Echo/Say", [("authorization", f"Bearer {KEY}")])
    assert code == grpc.StatusCode.OK and b"authorization" not in resp


@pytest.mark.parametrize("metadata, code, message", [
    ([], grpc.StatusCode.UNAUTHENTICATED, "this endpoint needs an API key"),
    ([("x-api-key", "grpc-nope")], grpc.StatusCode.UNAUTHENTICATED, "the credential is not valid"),
    ([("authorization", "Bearer two tokens")], grpc.StatusCode.INVALID_ARGUMENT, None),
    ([("x-api-key", KEY), ("authorization", f"Bearer {SCOPED}")], grpc.StatusCode.INVALID_ARGUMENT, None),
])
def test_credential_denials(channel, metadata, code, message):
    got, details, trailers, resp = unary(channel, "/kg.Echo/Say", metadata)
    assert got == code, (got, details)
    assert resp is None
    if message is not None:
        assert details == message
    assert details and len(details) <= 256 and not details.startswith("{")  # short, not the JSON problem


def test_permission_and_ownership(channel):
    code, details, _, _ = unary(channel, "/kg.Echo/Admin", [("x-api-key", KEY)])
    assert code == grpc.StatusCode.PERMISSION_DENIED and "admin" in details
    assert unary(channel, "/kg.Echo/Admin", [("x-api-key", SCOPED)])[0] == grpc.StatusCode.OK
    assert unary(channel, "/kg.Closed/Any", [("x-api-key", KEY)])[0] == grpc.StatusCode.PERMISSION_DENIED
    code, details, _, _ = unary(channel, "/kg.Agg/Other", [("x-api-key", KEY)])
    assert code == grpc.StatusCode.NOT_FOUND and details == "no such aggregator for this account"
    assert unary(channel, "/kg.Agg/Mine", [("x-api-key", KEY)])[0] == grpc.StatusCode.OK
    code, details, _, _ = unary(channel, "/kg.Strict/Mine", [("x-api-key", KEY)])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "takes no body" in details


def test_over_the_limit_is_resource_exhausted_with_retry_hints(channel):
    codes = [unary(channel, "/kg.Echo/Say", [("x-api-key", LIMITED)])[0] for _ in range(2)]
    assert codes == [grpc.StatusCode.OK] * 2
    code, details, trailers, _ = unary(channel, "/kg.Echo/Say", [("x-api-key", LIMITED)])
    # not UNAVAILABLE, which clients and retry policies retry at once
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 requests in any 60 s" in details
    retry = int(trailers["retry-after"])
    assert 58 <= retry <= 60
    assert trailers["grpc-retry-pushback-ms"] == str(retry * 1000)
    assert trailers["x-ratelimit-remaining"] == "0" and trailers["x-ratelimit-limit"] == "2"
    assert trailers["cache-control"] == "no-store"  # a denial is never cached


def test_malformed_as_401_is_unauthenticated(make_envoy, grpc_upstream):
    e = start(make_envoy, grpc_upstream, {**CONFIG, "credentials": {"malformed_status": 401}})
    with grpc.insecure_channel(f"127.0.0.1:{e.port}") as ch:
        code, _, _, _ = unary(ch, "/kg.Echo/Say", [("authorization", "Bearer two tokens")])
        assert code == grpc.StatusCode.UNAUTHENTICATED


def test_key_service_down_is_unavailable(make_envoy, grpc_upstream):
    dead = free_port()  # nothing listens there
    cfg = {"key_service": {"cluster": "keyservice", "timeout_ms": 300, "retry_after_s": 2}}
    e = start(make_envoy, grpc_upstream, cfg, clusters=[cluster("keyservice", dead)])
    with grpc.insecure_channel(f"127.0.0.1:{e.port}") as ch:
        t0 = time.time()
        code, details, trailers, _ = unary(ch, "/kg.Echo/Say", [("x-api-key", "grpc-unknown")])
        assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
        assert time.time() - t0 < 3
        assert trailers["retry-after"] == "2" and trailers["grpc-retry-pushback-ms"] == "2000"


def test_http_clients_still_get_problem_json(envoy):
    r = envoy.req("GET", "/kg.Echo/Say", [("x-api-key", "grpc-nope")])
    assert r.status == 401 and r.header("content-type") == "application/problem+json"


# -- gRPC-Web ------------------------------------------------------------------------------------
# Browsers speak gRPC-Web (HTTP/1.1 or HTTP/2, `application/grpc-web…`) to Envoy's `grpc_web`
# filter, which turns it into gRPC for the upstream. Envoy's docs put that filter first
# (grpc_web, cors, router); an operator adds keygate before or after it. Either way a client must
# read keygate's status: before this, with the filter first, Envoy's own mapping turned a 429 into
# UNAVAILABLE (clients retry that at once), and with keygate first the client got problem+json.

GRPC_WEB = {"name": "envoy.filters.http.grpc_web",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"}}
CORS = {"name": "envoy.filters.http.cors",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}}


def web_call(port: int, proto: int, path: str, metadata=(), text: bool = False, message: bytes = b"hi"):
    """A gRPC-Web unary call: (HTTP status, grpc-status, grpc-message, response headers, messages)."""
    import base64
    import struct
    from attack_clients import request1, request2
    frame = b"\x00" + struct.pack(">I", len(message)) + message
    ct = "application/grpc-web-text" if text else "application/grpc-web+proto"
    body = base64.b64encode(frame) if text else frame
    headers = [("content-type", ct), ("x-grpc-web", "1"), *metadata]
    a = (request1 if proto == 1 else request2)(port, "POST", path, headers, body)
    data = a.body
    if (a.header("content-type") or "").startswith("application/grpc-web-text"):
        # frame by frame, each in its own base64: 4 characters at a time
        data = b"".join(base64.b64decode(a.body[i:i + 4]) for i in range(0, len(a.body), 4))
    status = a.header("grpc-status")
    message_ = a.header("grpc-message")
    msgs = []
    while len(data) >= 5:  # frames: data (flag 0) and the trailers frame (flag 0x80)
        flag, n = data[0], struct.unpack(">I", data[1:5])[0]
        payload, data = data[5:5 + n], data[5 + n:]
        if flag & 0x80:
            for line in payload.decode().split("\r\n"):
                k, _, v = line.partition(":")
                if k.strip() == "grpc-status":
                    status = v.strip()
                elif k.strip() == "grpc-message":
                    message_ = v.strip()
        else:
            msgs.append(payload)
    return a.status, status, message_, a, msgs


@pytest.fixture(scope="module")
def web_envoys(make_envoy, grpc_upstream):
    """keygate with Envoy's grpc_web filter first (as Envoy's docs order it, keygate after it),
    with keygate first, and with no grpc_web filter at all."""
    return {
        "grpc_web first": start(make_envoy, grpc_upstream, CONFIG, filters_before=[GRPC_WEB, CORS]),
        "keygate first": start(make_envoy, grpc_upstream, CONFIG, filters_after=[GRPC_WEB, CORS]),
        "no grpc_web": start(make_envoy, grpc_upstream, CONFIG),
    }


@pytest.mark.parametrize("order", ["grpc_web first", "keygate first", "no grpc_web"])
def test_grpc_web_clients_read_keygates_status(web_envoys, order):
    e = web_envoys[order]
    # over the limit: RESOURCE_EXHAUSTED with the retry hints, never UNAVAILABLE
    statuses = [web_call(e.port, 2, "/kg.Echo/Say", [("x-api-key", WEB_LIMITED)])[1] for _ in range(4)]
    http, status, message, a, _ = web_call(e.port, 1, "/kg.Echo/Say", [("x-api-key", WEB_LIMITED)], text=True)
    assert (http, status) == (200, "8"), (order, statuses, http, status, a.headers)
    assert "requests in any 60 s" in message and int(a.header("retry-after")) > 0
    assert a.header("grpc-retry-pushback-ms") == str(int(a.header("retry-after")) * 1000)
    cases = [("/kg.Echo/Say", [], "16"), ("/kg.Echo/Say", [("x-api-key", "nope")], "16"),
             ("/kg.Echo/Admin", [("x-api-key", KEY)], "7"), ("/kg.Agg/Other", [("x-api-key", KEY)], "5"),
             ("/kg.Echo/Say", [("authorization", "Bearer two tokens")], "3")]
    for proto in (1, 2):
        for text in (False, True):
            # (over HTTP/1.1 each denial costs Envoy's 1 s delayed close: one case there)
            for path, md, code in cases if proto == 2 else cases[2:3]:
                http, status, message, a, msgs = web_call(e.port, proto, path, md, text)
                where = (order, proto, text, path, md)
                assert (http, status) == (200, code), (where, http, status, a.headers, a.body[:200])
                assert message and not message.startswith("{"), where
                assert a.header("cache-control") == "no-store", where
                assert a.header("content-type").startswith("application/grpc-web"), where
                assert msgs == [], where


@pytest.mark.parametrize("order", ["grpc_web first", "keygate first"])
def test_an_allowed_grpc_web_call_reaches_the_grpc_upstream(web_envoys, order):
    for proto in (1, 2):
        for text in (False, True):
            http, status, _, a, msgs = web_call(web_envoys[order].port, proto, "/kg.Echo/Say",
                                                [("x-api-key", KEY)], text, b"ping")
            assert (http, status) == (200, "0"), (order, proto, text, a.headers, a.body[:200])
            assert len(msgs) == 1 and msgs[0].startswith(b"echo:ping|") and b"x-keygate-key-id=g1" in msgs[0]
