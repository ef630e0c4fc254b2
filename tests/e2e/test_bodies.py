"""Bodies on owner routes: the life of a held stream, and every reading an upstream may take.

Red-team style, like test_attacks.py: each case goes over raw HTTP/1.1 and HTTP/2 (h2c) through a
real Envoy with the built keygate.wasm to the recording echo upstream, and asserts keygate's answer
and what the upstream got: `received` (requests it answered, with body and trailers) and `seen`
(requests whose headers reached it at all, body or not).

Two setups:
- keygate alone (Istio's connection-manager defaults, request trailers on both sides): what keygate
  holds by itself. proxy-wasm in Envoy lets a filter hold a request's body but not its headers
  (a paused header callback stops the body too), so here the headers of a request whose body is
  then refused do reach the upstream; keygate makes sure nothing of its body does, and that no
  answer the upstream gives before the check reaches the client.
- the shipped configs (envoy/demo.yaml, the Istio patch envoy/istio/owner-bodies.yaml): Envoy's
  buffer filter between keygate and the router, so that not even those headers arrive.
"""
from __future__ import annotations

import gzip
import time
import uuid
import zlib
from pathlib import Path

import pytest
import yaml

from attack_clients import H2Conn, chunked, exchange1, exchange2, request1, request2
from harness import ROOT, Envoy, Upstream
from keys import sha
from test_demo import started_demo

READER = "bodies-reader-key-0001"
OWNED, VICTIM = "agg-1", "victim"
CONFIG = {
    "keys": [{"id": "reader", "sha256": sha(READER), "account": "acme", "plan": "p", "scopes": ["read"],
              "resources": {"aggregator": [OWNED]}}],
    "routes": [{"prefix": "/api/event", "owner": {"query": "_id", "resource": "aggregator", "status": 404}}],
    "auth_throttle": False,
}
FORM, JSON = "application/x-www-form-urlencoded", "application/json"
EARLY = "/api/event/early"  # the echo upstream answers these on their headers alone
ISTIO_LIKE = {"normalize_path": None, "merge_slashes": None,
              "http_protocol_options": {"enable_trailers": True}}
BUFFER_FILTER = yaml.safe_load((ROOT / "envoy" / "istio" / "owner-bodies.yaml").read_text())[
    "spec"]["configPatches"][0]["patch"]["value"]


@pytest.fixture(scope="module")
def rec():
    u = Upstream()
    u.srv.early = (EARLY,)
    yield u
    u.stop()


def envoy(rec, config=None, **kw) -> Envoy:
    kw.setdefault("hcm", ISTIO_LIKE)
    return Envoy(config or CONFIG, rec.port, concurrency=1, upstream_http1={"enable_trailers": True}, **kw)


@pytest.fixture(scope="module")
def alone(rec):
    e = envoy(rec).start()
    yield e
    e.stop()


def mark() -> tuple[str, tuple[str, str]]:
    m = uuid.uuid4().hex
    return m, ("x-case", m)


def of(rec, m: str) -> tuple[list, list]:
    """(received, seen) of the case marked `m`. The upstream records before it answers and Envoy
    answers after it, so what reached it is in; the pause stays for what must NOT have reached it
    (an absence cannot be polled for)."""
    time.sleep(0.05)
    def mine(rs):
        return [r for r in rs if ["x-case", m] in r["headers"]]
    return mine(rec.received()), mine(rec.seen())


def send(e, proto, method, target, headers=(), body=b""):
    fn = request1 if proto == 1 else request2
    return fn(e.port, method, target, list(headers), body)


def slug(a) -> str:
    return a.json()["type"].rsplit(":", 1)[-1] if a.body.startswith(b"{") else ""


def h1_head(method, target, headers) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: gate.test", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- 1. the life of a held stream (keygate alone) ------------------------------------------------

@pytest.mark.parametrize("proto", [1, 2])
@pytest.mark.parametrize("body,status", [(b"name=x&_id=victim", 404), (b"name=x", 200)])
def test_a_body_that_ends_in_trailers_is_checked_before_it_goes_on(alone, rec, proto, body, status):
    m, case = mark()
    h = [case, ("x-api-key", READER), ("content-type", FORM)]
    trailers = [("x-checksum", "abc")]
    if proto == 1:
        a = exchange1(alone.port, h1_head("POST", f"/api/event?_id={OWNED}", h + [("transfer-encoding", "chunked")]),
                      [chunked(body[:4], body[4:], trailers=trailers)])
    else:
        a = exchange2(alone.port, "POST", f"/api/event?_id={OWNED}", h,
                      [("data", body[:4], False), ("data", body[4:], False), ("trailers", trailers)])
    got, _ = of(rec, m)
    assert a.status == status, (a.status, a.body[:300])
    if status == 200:
        assert len(got) == 1 and got[0]["body"] == body and got[0]["trailers"] == [["x-checksum", "abc"]]
    else:
        assert slug(a) == "resource-forbidden" and got == []


def test_trailers_alone_end_a_request_that_names_nothing(alone, rec):
    # HEADERS, then HEADERS ending the stream: no data at all, no resource named anywhere
    m, case = mark()
    a = exchange2(alone.port, "POST", "/api/event", [case, ("x-api-key", READER), ("content-type", FORM)],
                  [("trailers", [("x-t", "1")])])
    got, _ = of(rec, m)
    assert a.status == 404 and slug(a) == "resource-forbidden", (a.status, a.body[:200])
    assert got == []


@pytest.mark.parametrize("proto", [1, 2])
def test_identity_headers_in_trailers_never_reach_the_upstream(alone, rec, proto):
    # an upstream that merges trailers into headers (Apache httpd's MergeTrailers) would read them
    m, case = mark()
    h = [case, ("x-api-key", READER), ("content-type", "text/plain")]
    forged = [("x-keygate-account", "victim-corp"), ("x_keygate_plan", "forged"), ("x-keygate-fail-open", "1"),
              ("x-api-key", READER), ("authorization", f"Bearer {READER}"), ("x-other", "kept")]
    if proto == 1:
        a = exchange1(alone.port, h1_head("POST", "/x", h + [("transfer-encoding", "chunked")]),
                      [chunked(b"hello", trailers=forged)])
    else:
        a = exchange2(alone.port, "POST", "/x", h, [("data", b"hello", False), ("trailers", forged)])
    got, _ = of(rec, m)
    assert a.status == 200, (a.status, a.body[:200])
    assert got[0]["body"] == b"hello" and got[0]["trailers"] == [["x-other", "kept"]]


def test_a_transfer_coding_other_than_chunked_never_reaches_the_upstream(alone, rec):
    # Envoy refuses it itself (501): keygate reads no transfer coding but chunked
    for te in ("gzip, chunked", "chunked, gzip", "deflate"):
        m, case = mark()
        a = exchange1(alone.port, h1_head("POST", f"/api/event?_id={OWNED}",
                                          [case, ("x-api-key", READER), ("content-type", FORM),
                                           ("transfer-encoding", te)]),
                      [chunked(gzip.compress(b"_id=victim"))], timeout=3)
        got, seen = of(rec, m)
        assert a.status == 501 and got == [] and seen == [], (te, a.status)


@pytest.mark.parametrize("proto", [1, 2])
def test_trailers_that_would_change_how_the_body_reads_are_refused(alone, rec, proto):
    m, case = mark()
    h = [case, ("x-api-key", READER), ("content-type", JSON)]
    body, trailers = b'{"x": "&_id=victim&"}', [("content-type", FORM)]
    if proto == 1:
        a = exchange1(alone.port, h1_head("POST", f"/api/event?_id={OWNED}", h + [("transfer-encoding", "chunked")]),
                      [chunked(body, trailers=trailers)])
    else:
        a = exchange2(alone.port, "POST", f"/api/event?_id={OWNED}", h, [("data", body, False), ("trailers", trailers)])
    got, _ = of(rec, m)
    assert a.status == 400 and slug(a) == "request-ambiguous", (a.status, a.body[:200])
    assert got == []


@pytest.mark.parametrize("proto", [1, 2])
@pytest.mark.parametrize("method", ["GET", "DELETE", "get", "OPTIONS"])
def test_a_body_promised_on_a_bodyless_method_is_refused_from_the_headers(alone, rec, proto, method):
    # Content-Length promised, the body never sent, to an upstream that answers on headers alone
    m, case = mark()
    h = [case, ("x-api-key", READER), ("content-type", FORM)]
    if proto == 1:
        a = exchange1(alone.port, h1_head(method, EARLY, h + [("content-length", "20")]), [], timeout=5)
    else:
        a = exchange2(alone.port, method, EARLY, h + [("content-length", "20")], [], timeout=5)
    got, seen = of(rec, m)
    # (Envoy's HTTP/1.1 codec refuses a lower-case method itself)
    want = "" if proto == 1 and method.islower() else "request-ambiguous"
    assert a.status == 400 and slug(a) == want, (a.status, a.body[:200])
    assert got == [] and seen == []


@pytest.mark.parametrize("proto", [1, 2])
def test_an_upstream_answer_given_before_the_body_is_checked_is_not_passed_on(alone, rec, proto):
    # names no resource in the query, promises a body naming one, never sends it all: the
    # upstream answers on the headers, which is all keygate alone could not hold
    m, case = mark()
    h = [case, ("x-api-key", READER), ("content-type", FORM)]
    if proto == 1:
        a = exchange1(alone.port, h1_head("POST", EARLY, h + [("content-length", "40")]), [b"name=x"], timeout=5)
    else:
        a = exchange2(alone.port, "POST", EARLY, h + [("content-length", "40")], [("data", b"name=x", False)],
                      timeout=5)
    got, _ = of(rec, m)
    assert a.status == 502 and slug(a) == "body-unchecked", (a.status, a.body[:300])
    assert b"headers" not in a.body  # not the upstream's echo
    assert all(r["body_bytes"] is None for r in got)  # it never had the body


@pytest.fixture(scope="module")
def tight(rec):
    """keygate alone with a short hold and a small table."""
    e = envoy(rec, dict(CONFIG, bodies={"max_held": 16, "timeout_ms": 1000})).start()
    yield e
    e.stop()


@pytest.mark.parametrize("proto", [1, 2])
def test_a_body_held_past_its_time_ends_its_request(tight, rec, proto):
    m, case = mark()
    h = [case, ("x-api-key", READER), ("content-type", FORM)]
    t0 = time.monotonic()
    if proto == 1:
        # the rest of the body comes after keygate ended the request
        a = exchange1(tight.port, h1_head("POST", f"/api/event?_id={OWNED}", h + [("content-length", "17")]),
                      [b"name=x", 3.5, b"&_id=victim"], timeout=8)
    else:
        a = exchange2(tight.port, "POST", f"/api/event?_id={OWNED}", h,
                      [("data", b"name=x", False), ("sleep", 3.5), ("data", b"&_id=victim", True)], timeout=8)
    took = time.monotonic() - t0
    got, _ = of(rec, m)
    assert a.status == 408 and slug(a) == "body-unchecked", (a.status, a.body[:300])
    assert took < 8
    assert got == []
    assert "decision=body-unchecked" in tight.wait_for(tight.access_log, "decision=body-unchecked")


def test_a_full_table_of_held_bodies_refuses_new_ones_and_forgets_none(tight, rec):
    # 16 held (the table's bound), then 8 more on the same worker: refused, not one forgotten
    m, case = mark()
    c = H2Conn(tight.port)
    try:
        h = [case, ("x-api-key", READER), ("content-type", FORM)]
        held = [c.open("POST", f"/api/event?_id={OWNED}", h) for _ in range(16)]
        for sid in held:
            c.data(sid, b"name=x", False)
        time.sleep(0.3)
        extra = [c.open("POST", f"/api/event?_id={OWNED}", h) for _ in range(8)]
        for sid in extra:
            c.data(sid, b"name=x", True)
        refused = c.answers(extra, timeout=5)
        assert {a.status for a in refused.values()} == {503}, refused
        assert all(a.header("retry-after") == "1" and slug(a) == "body-unchecked" for a in refused.values())
        # every held body is still checked when it ends
        for sid in held:
            c.data(sid, b"&_id=victim", True)
        ended = c.answers(held, timeout=5)
        assert {a.status for a in ended.values()} == {404}, ended
    finally:
        c.close()
    got, _ = of(rec, m)
    assert got == []
    ok = send(tight, 2, "POST", f"/api/event?_id={OWNED}", [("x-api-key", READER), ("content-type", FORM)], b"name=x")
    assert ok.status == 200


def test_streams_the_client_abandons_leave_the_table(tight, rec):
    # held, then reset by the client: the table learns it and has room again
    for _ in range(2):
        c = H2Conn(tight.port)
        h = [("x-api-key", READER), ("content-type", FORM)]
        for _ in range(16):
            c.data(c.open("POST", f"/api/event?_id={OWNED}", h), b"name=x", False)
        time.sleep(0.2)
        c.close()  # the connection goes, and its 16 streams with it
    # a full table is swept for gone streams before it refuses
    time.sleep(0.2)
    ok = send(tight, 2, "POST", f"/api/event?_id={OWNED}", [("x-api-key", READER), ("content-type", FORM)], b"name=x")
    assert ok.status == 200, (ok.status, ok.body[:200])


# -- 1b. the shipped configs: Envoy's buffer between keygate and the router ----------------------

def shipped_configs() -> list[Path]:
    return sorted(p for p in (ROOT / "envoy").rglob("*.yaml") if "static_resources" in p.read_text())


def http_filters(cfg: dict) -> list[list[str]]:
    out = []
    for listener in cfg["static_resources"].get("listeners", []):
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                if f["name"] == "envoy.filters.network.http_connection_manager":
                    out.append(f["typed_config"]["http_filters"])
    return out


def reads_bodies(wasm_filter: dict) -> bool:
    """keygate reads bodies: an owner route that reads them, or routes that tell methods apart (a
    form POST is read for `_method` where its method moves it to another route)."""
    import json
    conf = json.loads(wasm_filter["typed_config"]["config"]["configuration"]["value"])
    routes = conf.get("routes", [])
    return any(r.get("owner", {}).get("query") and r["owner"].get("body", "read") == "read"
               for r in routes) or any(r.get("methods") for r in routes)


def test_every_shipped_config_that_reads_bodies_buffers_between_keygate_and_the_router():
    checked = []
    for path in shipped_configs():
        for filters in http_filters(yaml.safe_load(path.read_text())):
            names = [f["name"] for f in filters]
            wasm = [f for f in filters if f["name"] == "envoy.filters.http.wasm"]
            if not wasm or not reads_bodies(wasm[0]):
                continue
            checked.append(path.name)
            k = names.index("envoy.filters.http.wasm")
            assert "envoy.filters.http.buffer" in names[k + 1:names.index("envoy.filters.http.router")], (path, names)
            assert not any(f["name"] == "envoy.filters.http.buffer" and f.get("disabled") for f in filters), path
    assert {"demo.yaml", "eventicat.yaml", "demo-fleet.yaml", "demo-remote.yaml", "astalty.yaml", "evon.yaml",
            "eventstaff.yaml"} <= set(checked), checked
    # the Istio patch: after the AUTHN-phase WasmPlugin, right before the router
    patch = yaml.safe_load((ROOT / "envoy" / "istio" / "owner-bodies.yaml").read_text())["spec"]["configPatches"][0]
    assert patch["patch"]["operation"] == "INSERT_BEFORE"
    assert patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == "envoy.filters.http.router"


@pytest.fixture(scope="module")
def demo(rec):
    e = started_demo(rec.port)
    yield e
    e.stop()


CAT = "cat-demo-key-0001"  # envoy/demo.yaml: owns aggregator agg-demo-1


@pytest.mark.parametrize("proto", [1, 2])
def test_with_the_shipped_config_nothing_of_a_refused_body_reaches_the_upstream(demo, rec, proto):
    h = [("x-api-key", CAT), ("content-type", FORM)]
    # refused bodies, again and again (alone, some of their headers reach the upstream)
    for _ in range(6):
        m, case = mark()
        a = send(demo, proto, "POST", "/api/event?_id=agg-demo-1", [case, *h], b"name=x&_id=victim")
        got, seen = of(rec, m)
        assert a.status == 404 and got == [] and seen == [], (a.status, seen)
    # a body that never ends, to an upstream that would answer on the headers
    m, case = mark()
    if proto == 1:
        a = exchange1(demo.port, h1_head("POST", EARLY, [case, *h, ("content-length", "40")]), [b"name=x"], timeout=1)
    else:
        a = exchange2(demo.port, "POST", EARLY, [case, *h], [("data", b"name=x", False)], timeout=1)
    got, seen = of(rec, m)
    assert a.status == 0 and got == [] and seen == []
    # what passes arrives whole, once
    m, case = mark()
    a = send(demo, proto, "POST", "/api/event?_id=agg-demo-1", [case, *h], b"name=x&_id=agg-demo-1")
    got, seen = of(rec, m)
    assert a.status == 200 and len(got) == 1 and len(seen) == 1 and got[0]["body"] == b"name=x&_id=agg-demo-1"


def test_with_the_shipped_config_trailers_are_checked_and_nothing_arrives_first(demo, rec):
    m, case = mark()
    a = exchange2(demo.port, "POST", "/api/event?_id=agg-demo-1", [case, ("x-api-key", CAT), ("content-type", FORM)],
                  [("data", b"_id=victim", False), ("trailers", [("x-t", "1")])])
    got, seen = of(rec, m)
    assert a.status == 404 and got == [] and seen == []


def test_the_istio_patch_holds_the_headers_in_a_real_envoy(rec):
    # the EnvoyFilter's filter, where it puts it: after keygate, before the router
    e = envoy(rec, filters_after=[BUFFER_FILTER]).start()
    try:
        for proto in (1, 2):
            for _ in range(4):
                m, case = mark()
                a = send(e, proto, "POST", f"/api/event?_id={OWNED}",
                         [case, ("x-api-key", READER), ("content-type", FORM)], b"name=x&_id=victim")
                got, seen = of(rec, m)
                assert a.status == 404 and got == [] and seen == [], (proto, seen)
    finally:
        e.stop()


# -- 2. bodies read differently by upstreams -----------------------------------------------------

def utf16(s: str) -> bytes:
    return s.encode("utf-16-le")


BODIES = [
    # (case, content types, extra headers, body, status)
    ("json member twice, victim last", [JSON], [], b'{"_id": "agg-1", "_id": "victim"}', 400),
    ("json member twice, victim first (gjson, fastjson, simdjson)", [JSON], [], b'{"_id": "victim", "_id": "agg-1"}', 400),
    ("json member twice, escaped", [JSON], [], b'{"_id": "agg-1", "\\u005fid": "victim"}', 400),
    ("type cut at a comma (PHP, Rack: a form)", [FORM + ", x/y+json"], [], b'{"x": "&_id=victim&"}', 400),
    ("type cut at a space (PHP: a form)", [FORM + " x/y+json"], [], b'{"x": "&_id=victim&"}', 400),
    ("two content-type headers", [FORM, JSON], [], b'{"x": "&_id=victim&"}', 400),
    ("utf-16 form (ASP.NET Core)", [FORM + "; charset=utf-16"], [], utf16("_id=victim"), 400),
    ("utf-16le form", [FORM + "; charset=UTF-16LE"], [], utf16("_id=victim"), 400),
    ("utf-32 form", [FORM + '; charset="utf-32"'], [], "_id=victim".encode("utf-32-le"), 400),
    ("utf-16 json", [JSON + "; charset=utf-16"], [], utf16('{"_id": "victim"}'), 400),
    ("utf-7 form", [FORM + "; charset=utf-7"], [], b"+AF8-id=victim", 400),
    ("charset twice", [FORM + "; charset=utf-8; charset=utf-16"], [], b"name=x", 400),
    ("gzip form (decompression middleware)", [FORM], [("content-encoding", "gzip")], gzip.compress(b"_id=victim"), 400),
    ("deflate form", [FORM], [("content-encoding", "deflate")], zlib.compress(b"_id=victim"), 400),
    ("identity, then gzip", [FORM], [("content-encoding", "identity, gzip")], gzip.compress(b"_id=victim"), 400),
    ("JSON sent as a form (Go's json.NewDecoder reads it)", [FORM], [], b'{"_id": "victim"}', 404),
    ("JSON then a form (Go reads the first value)", [FORM], [], b'{"_id": "victim"}&_id=agg-1', 400),
    ("form with a byte-order mark", [FORM], [], b"\xef\xbb\xbf_id=victim", 400),
    ("utf-16 form without a charset", [FORM], [], b"\xff\xfe" + utf16("_id=victim"), 400),
    ("form field cut at NUL (PHP)", [FORM], [], b"_id%00=victim&name=x", 404),
    ("form field with a dotless i (.NET folds it)", [FORM], [], b"_%C4%B1d=victim", 404),
    ("form field in leading brackets (Rack 2)", [FORM], [], b"name=x&[_id]=victim", 404),
    ("json member cut at NUL", [JSON], [], b'{"_id\\u0000": "victim"}', 404),
    ("multipart", ["multipart/form-data; boundary=zz"], [],
     b'--zz\r\nContent-Disposition: form-data; name="_id"\r\n\r\nvictim\r\n--zz--', 400),
    ("text/plain", ["text/plain"], [], b"_id=victim", 400),
    ("no content type", [], [], b"_id=victim", 400),
]


@pytest.mark.parametrize("proto", [1, 2])
@pytest.mark.parametrize("case,ctypes,extra,body,status", BODIES, ids=[b[0] for b in BODIES])
def test_bodies_upstreams_may_read_differently_are_refused(alone, rec, proto, case, ctypes, extra, body, status):
    m, mk = mark()
    h = [mk, ("x-api-key", READER)] + [("content-type", c) for c in ctypes] + extra
    a = send(alone, proto, "POST", f"/api/event?_id={OWNED}", h, body)
    got, seen = of(rec, m)
    assert a.status == status, (case, a.status, a.body[:300])
    assert slug(a) == ("resource-forbidden" if status == 404 else "request-ambiguous"), a.body[:300]
    assert got == [], case
    if status == 400 and (len(ctypes) != 1 or extra or ctypes[0] not in (FORM, JSON)):
        assert seen == [], f"{case}: refused from the headers, yet they reached the upstream"


@pytest.mark.parametrize("proto", [1, 2])
@pytest.mark.parametrize("ctype,body", [
    (FORM + "; charset=UTF-8", b"name=x&_id=agg-1"),
    (FORM, b"name=%7B&_id=agg-1"),
    (JSON, b'{"name": "x", "_ID": "agg-1", "nested": {"a": 1, "a": 2}}'),
    ("application/vnd.api+json", b'["x"]'),
])
def test_bodies_read_one_way_still_pass_whole(alone, rec, proto, ctype, body):
    m, mk = mark()
    a = send(alone, proto, "POST", f"/api/event?_id={OWNED}",
             [mk, ("x-api-key", READER), ("content-type", ctype), ("content-encoding", "identity")], body)
    got, _ = of(rec, m)
    assert a.status == 200, (a.status, a.body[:300])
    assert len(got) == 1 and got[0]["body"] == body


@pytest.mark.parametrize("proto", [1, 2])
@pytest.mark.parametrize("query", ["_id=agg-1&_id%00=victim", "_id=agg-1&_id%00x=victim", "_id=agg-1&%00_id=victim",
                                   "_id=agg-1&_id%01=victim", "_id=agg-1&_i%7Fd=victim", "_id=agg-1&_%C4%B1d=victim",
                                   "_id=agg-1&_%C4%B0D=victim", "_id%00=victim", "_id=agg-1&%5B_id%5D=victim",
                                   "_id=agg-1&%5D_id=victim"])
def test_query_names_every_reader_takes_for_the_owner_must_be_owned(alone, rec, proto, query):
    m, mk = mark()
    a = send(alone, proto, "GET", f"/api/event?{query}", [mk, ("x-api-key", READER)])
    got, seen = of(rec, m)
    assert a.status == 404 and slug(a) == "resource-forbidden", (query, a.status)
    assert got == [] and seen == []


@pytest.mark.parametrize("proto", [1, 2])
@pytest.mark.parametrize("cookie", ["_id=victim", "session=1; _ID=victim", "a=1, _id=victim", "_id%00=victim",
                                    ' _id="agg-1"'])
def test_a_cookie_naming_the_owner_must_be_owned_too(alone, rec, proto, cookie):
    # PHP's $_REQUEST (its default variables_order, as in the official images without a php.ini)
    # and classic ASP.NET's Request[...] read cookies as parameters: a cookie would win
    m, mk = mark()
    a = send(alone, proto, "GET", f"/api/event?_id={OWNED}", [mk, ("x-api-key", READER), ("cookie", cookie)])
    got, seen = of(rec, m)
    assert a.status == 404 and slug(a) == "resource-forbidden", (cookie, a.status)
    assert got == [] and seen == []
    m, mk = mark()
    a = send(alone, proto, "GET", f"/api/event?_id={OWNED}", [mk, ("x-api-key", READER), ("cookie", f"_id={OWNED}")])
    assert a.status == 200 and len(of(rec, m)[0]) == 1
