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

CONFIG = {
    "keys": [
        {"id": "g1", "sha256": sha(KEY), "account": "acme", "plan": "roomy", "scopes": ["read"],
         "resources": {"aggregator": ["Mine"]}},
        {"id": "g2", "sha256": sha(SCOPED), "account": "acme", "plan": "roomy", "scopes": ["read", "admin"]},
        {"id": "g3", "sha256": sha(LIMITED), "account": "acme", "plan": "tiny", "scopes": ["read"]},
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
