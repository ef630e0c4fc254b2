"""Request history end to end: keygate in a real Envoy, Envoy's own OpenTelemetry access logger
sending OTLP/HTTP to the real key service (envoy/keyservice), keygate's excerpt filter
(envoy/excerpt) where bodies are on, and what each key's owner then sees in the dashboard.

Traffic with several keys of two accounts (and requests without a key): each owner's history
holds exactly their own requests, with the right status, path (never its query) and latency;
bodies where they are on, redacted; other accounts' keys are invisible; the key service stopped
under traffic loses records (counted), never requests; a receiver that never answers keeps
Envoy's memory bounded; the usage chart and the history page in a real headless browser; and
no secret anywhere afterwards."""
from __future__ import annotations

import html
import http.client
import http.cookiejar
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from harness import EXCERPT_WASM, ROOT, Envoy, KeyService, cluster, free_port, wait_until
from test_dashboard import new_browser

TOKEN = "e2e-ingest-token-0001"
PER_KEY = 40
# keys (in the key service): two of acme, one of globex; the seeded demo keys too
ACME_A, ACME_A_ID = "kgb_demo_acme_business_0001", "bk_demo_acme"
ACME_B, ACME_B_ID = "kgb_hist_acme_second_key_0002", "bk_hist_acme_b"
GLOBEX, GLOBEX_ID = "kgb_demo_globex_business_0001", "bk_demo_globex"
EMBEDDED, EMBEDDED_ID = "embedded-acme-key-0003", "emb-acme"  # in keygate's config only
SECRETS = [ACME_A, ACME_B, GLOBEX, EMBEDDED, "alice-password", "bob-password", "hunter2-body-secret"]

# What the shipped configs send (envoy/demo.yaml): one line, keygate's state first; the bodies
# as an attribute where the excerpt filter records them
HISTORY_LINE = ("%FILTER_STATE(wasm.keygate:PLAIN)% method=%REQ(:METHOD)% status=%RESPONSE_CODE% "
                "duration_ms=%DURATION% upstream_ms=%COMMON_DURATION(US_TX_BEG:US_RX_END:ms)% "
                "bytes_in=%BYTES_RECEIVED% bytes_out=%BYTES_SENT%")
HISTORY_ATTRIBUTES = [
    ("keygate.bodies", "%FILTER_STATE(wasm.keygate_bodies:PLAIN)%"),
]


def otel_log(cluster_name: str = "keyservice_history", token: str | None = TOKEN) -> dict:
    svc = {"http_uri": {"uri": "http://keyservice/v1/logs", "cluster": cluster_name, "timeout": "1s"}}
    if token:
        svc["request_headers_to_add"] = [{"header": {"key": "x-keyservice-ingest-token", "value": token}}]
    return {
        "name": "envoy.access_loggers.open_telemetry",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
            "http_service": svc,
            "buffer_size_bytes": 65536,
            "body": {"string_value": HISTORY_LINE},
            "attributes": {"values": [{"key": k, "value": {"string_value": v}} for k, v in HISTORY_ATTRIBUTES]},
        },
    }


def history_cluster(port: int, name: str = "keyservice_history") -> dict:
    c = cluster(name, port)
    c["circuit_breakers"] = {"thresholds": [{"max_connections": 8, "max_pending_requests": 8,
                                             "max_requests": 8, "max_retries": 0}]}
    return c


def excerpt_filter(config: dict, disabled: bool = False) -> dict:
    f = {
        "name": "keygate.excerpt",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "excerpt", "root_id": "excerpt",
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                  "value": json.dumps(config)},
                "vm_config": {"vm_id": "keygate-excerpt", "runtime": "envoy.wasm.runtime.v8",
                              "code": {"local": {"filename": str(EXCERPT_WASM)}}},
            },
        },
    }
    if disabled:
        f["disabled"] = True
    return f


class HistoryEnvoy(Envoy):
    """The harness Envoy with the history logger beside its file access log, and (optionally)
    routes under `/bodies/` that turn the excerpt filter on (it is off elsewhere)."""

    def __init__(self, *a, otel: dict | None = None, body_routes: bool = False, **kw):
        super().__init__(*a, **kw)
        self.otel = otel or otel_log()
        self.body_routes = body_routes

    def config(self) -> dict:
        cfg = super().config()
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["access_log"].append(self.otel)
        if self.body_routes:
            vh = hcm["route_config"]["virtual_hosts"][0]
            vh["routes"].insert(0, {
                "match": {"prefix": "/bodies/"}, "route": {"cluster": "upstream"},
                "typed_per_filter_config": {"keygate.excerpt": {
                    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}},
            })
        return cfg


class Api(BaseHTTPRequestHandler):
    """The API behind keygate: `/status/NNN` answers NNN, `/slow/MS` after MS milliseconds,
    anything else 200 with what it received (its body and headers: an API that echoes them)."""
    protocol_version = "HTTP/1.1"

    def _answer(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        path = self.path.split("?")[0]
        status = 200
        if m := re.search(r"/status/(\d{3})", path):
            status = int(m.group(1))
        if m := re.search(r"/slow/(\d+)", path):
            time.sleep(int(m.group(1)) / 1000)
        out = json.dumps({"received": body.decode(errors="replace"),
                          "headers": {k.lower(): v for k, v in self.headers.items()},
                          "path": self.path}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def api():
    srv = ThreadingHTTPServer(("127.0.0.1", free_port()), Api)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


@pytest.fixture(scope="module")
def ks():
    k = KeyService(faults=False, extra_args=["--history-per-key", str(PER_KEY), "--ingest-token", TOKEN]).start()
    k.add_key(ACME_B, ACME_B_ID, account="acme", plan="tiny")
    yield k
    k.stop()


KEYGATE = {
    "key_service": {"cluster": "keyservice", "timeout_ms": 2000, "revocation_poll_ms": 300},
    "keys": [{"id": EMBEDDED_ID, "sha256": __import__("hashlib").sha256(EMBEDDED.encode()).hexdigest(),
              "account": "acme", "plan": "free"}],
    "auth_throttle": False,
    "rate_limit": {"plans": {"free": {"requests": 100000, "window_s": 60},
                             "professional": {"requests": 100000, "window_s": 60},
                             "tiny": {"requests": 3, "window_s": 3600}}},
}
EXCERPT = {"max_bytes": 512, "redact_fields": ["ssn"], "key_prefixes": ["kgb_", "kgp_", "kgn_"]}


@pytest.fixture(scope="module")
def envoy(api, ks):
    e = HistoryEnvoy(KEYGATE, api, extra_clusters=[ks.cluster(), history_cluster(ks.port)],
                     filters_before=[excerpt_filter(EXCERPT, disabled=True)], body_routes=True)
    e.start().wait_feed_polled()
    yield e
    e.stop()


def metrics(ks) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{ks.port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {m.group(1): int(m.group(2)) for m in re.finditer(r'^keyservice_history_records_total\{outcome="(\w+)"\} (\d+)$', text, re.M)}


def envoy_counter(e: Envoy, name: str) -> int:
    m = re.search(rf"^{re.escape(name)}: (\d+)$", e.admin(f"/stats?filter={re.escape(name)}"), re.M)
    return int(m.group(1)) if m else 0


def wait_stored(ks, n: int, timeout: float = 10) -> None:
    wait_until(lambda: metrics(ks).get("stored", 0) >= n, timeout, 0.1,
               lambda _: f"{n} stored history records (metrics: {metrics(ks)})")


class Owner:
    """A dashboard session (the login form's own double-submit token), reading pages as HTML."""

    def __init__(self, ks, email: str, password: str):
        self.base = f"http://127.0.0.1:{ks.port}"
        self.jar = http.cookiejar.CookieJar()
        self.o = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        page = self.o.open(f"{self.base}/dashboard/login", timeout=5).read().decode()
        csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        form = urllib.parse.urlencode({"csrf": csrf, "email": email, "password": password}).encode()
        self.o.open(urllib.request.Request(f"{self.base}/dashboard/login", data=form,
                                           headers={"origin": self.base}), timeout=5).read()

    def get(self, path: str) -> tuple[int, str]:
        try:
            with self.o.open(self.base + path, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def usage(self) -> dict[str, int]:
        status, page = self.get("/dashboard/usage")
        assert status == 200
        return {m.group(1): int(m.group(2)) for m in re.finditer(
            r'<tr data-id="([^"]+)">.*?<td class="num total">(\d+)</td>', page, re.S)}

    def requests(self, key_id: str, query: str = "") -> list[dict]:
        status, page = self.get(f"/dashboard/keys/{key_id}/history{query}")
        assert status == 200, (status, page[:200])
        rows = []
        for m in re.finditer(r'<tr data-rid="(\d+)">(.*?)</tr>', page, re.S):
            cell = lambda cls: re.search(rf'class="[^"]*{cls}[^"]*">(?:<code>)?([^<]*)', m.group(2)).group(1)
            rows.append({"rid": int(m.group(1)), "time": re.search(r"<td>([^<]*)</td>", m.group(2)).group(1),
                         "method": cell("method"), "path": cell("path"),
                         "status": cell("status"), "total": cell("total-ms"), "upstream": cell("upstream-ms"),
                         "decision": cell("decision")})
        return rows


def bearer(key: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {key}")]


def test_each_owner_sees_exactly_their_own_requests(envoy, ks):
    sent: dict[str, list[tuple[str, str, int]]] = {ACME_A_ID: [], ACME_B_ID: [], GLOBEX_ID: [], EMBEDDED_ID: []}

    def send(key_id, key, method, path, expect, body=None, headers=()):
        r = envoy.req(method, path, list(bearer(key)) + list(headers), body)
        assert r.status == expect, (path, r.status, r.body[:200])
        sent[key_id].append((method, path.split("?")[0], expect))
        return r

    before = metrics(ks)
    for i in range(5):
        send(ACME_A_ID, ACME_A, "GET", f"/v1/objects/events?page={i}&token=q-secret-{i}", 200)
    send(ACME_A_ID, ACME_A, "GET", "/status/404", 404)
    send(ACME_A_ID, ACME_A, "DELETE", "/status/503", 503)
    t = time.monotonic()
    send(ACME_A_ID, ACME_A, "GET", "/slow/300", 200)
    slow_wall = (time.monotonic() - t) * 1000
    # ACME_B: plan tiny, 3 an hour: the fourth is keygate's 429 (in the owner's history too)
    for _ in range(3):
        send(ACME_B_ID, ACME_B, "POST", "/v1/objects/events", 200, b'{"name":"x"}', [("content-type", "application/json")])
    send(ACME_B_ID, ACME_B, "POST", "/v1/objects/events", 429, b"{}", [("content-type", "application/json")])
    for _ in range(4):
        send(GLOBEX_ID, GLOBEX, "GET", "/v1/objects/events", 200)
    send(EMBEDDED_ID, EMBEDDED, "GET", "/embedded/path", 200)
    # no key, a wrong key: no owner, nothing kept
    assert envoy.req("GET", "/v1/objects/events").status == 401
    assert envoy.req("GET", "/v1/objects/events", bearer("kgb_" + "x" * 38)).status == 401
    total = sum(len(v) for v in sent.values())
    wait_stored(ks, before.get("stored", 0) + total)
    time.sleep(1.5)  # one more flush period: nothing else may arrive
    after = metrics(ks)
    assert after["stored"] - before.get("stored", 0) == total
    assert after["without_key"] - before.get("without_key", 0) >= 2

    alice = Owner(ks, "alice@example.com", "alice-password")
    bob = Owner(ks, "bob@example.com", "bob-password")
    usage = alice.usage()
    # alice sees acme's keys (and her own PAT, unused), with exact counts; never globex's
    assert usage[ACME_A_ID] == len(sent[ACME_A_ID]) and usage[ACME_B_ID] == len(sent[ACME_B_ID])
    assert usage[EMBEDDED_ID] == 1  # a key of keygate's configuration, recorded under acme
    assert GLOBEX_ID not in usage
    assert bob.usage() == {GLOBEX_ID: 4}
    # each key's history: exactly its requests, newest first, path without the query
    for owner, key_id in ((alice, ACME_A_ID), (alice, ACME_B_ID), (alice, EMBEDDED_ID), (bob, GLOBEX_ID)):
        rows = owner.requests(key_id)
        got = [(r["method"], r["path"], int(r["status"])) for r in rows]
        # exactly these requests (two Envoy workers report in their own batches: order by time)
        assert sorted(got) == sorted(sent[key_id]), key_id
        assert [r["time"] for r in rows] == sorted((r["time"] for r in rows), reverse=True)
    rows = alice.requests(ACME_A_ID)
    assert not any("?" in r["path"] or "q-secret" in r["path"] for r in rows)
    assert [r["decision"] for r in alice.requests(ACME_B_ID)].count("rate-limited") == 1
    # latency: the slow request's upstream time is the API's 300 ms, within the total, which is
    # within what the client waited
    slow = next(r for r in rows if r["path"] == "/slow/300")
    assert 300 <= int(slow["upstream"]) <= int(slow["total"]) <= slow_wall + 5, slow
    fast = next(r for r in rows if r["path"] == "/status/404")
    assert int(fast["total"]) < 300
    # keygate's own 429: no upstream time
    assert next(r for r in alice.requests(ACME_B_ID) if r["status"] == "429")["upstream"] == "-"
    # filters: a class, a code, a day range that holds nothing
    assert {r["status"] for r in alice.requests(ACME_A_ID, "?status=5xx")} == {"503"}
    assert [r["status"] for r in alice.requests(ACME_A_ID, "?code=404")] == ["404"]
    assert alice.requests(ACME_A_ID, "?from=2001-01-01&to=2001-01-02") == []
    assert len(alice.requests(ACME_A_ID, "?status=2xx")) == 6
    # other accounts' keys: not found, whichever page
    for owner, key_id in ((bob, ACME_A_ID), (bob, EMBEDDED_ID), (alice, GLOBEX_ID)):
        assert owner.get(f"/dashboard/keys/{key_id}/history")[0] == 404
        rid = (alice if owner is bob else bob).requests(key_id)[0]["rid"]
        assert owner.get(f"/dashboard/keys/{key_id}/history/{rid}")[0] == 404
    # a request id of another key under one's own key: not found
    globex_rid = bob.requests(GLOBEX_ID)[0]["rid"]
    assert alice.get(f"/dashboard/keys/{ACME_A_ID}/history/{globex_rid}")[0] == 404
    # the operator's billing: requests per account
    with urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{ks.port}/admin/usage", headers={"x-admin-token": ks.ADMIN_TOKEN}), timeout=5) as r:
        billing = {a["account"]: a for a in json.load(r)["data"]}
    assert billing["globex"]["total"] == 4
    assert billing["acme"]["total"] == len(sent[ACME_A_ID]) + len(sent[ACME_B_ID]) + 1
    assert billing["acme"]["classes"]["5xx"] == 1 and billing["acme"]["classes"]["4xx"] == 2


def test_the_history_keeps_the_newest_requests_of_each_key(envoy, ks):
    before = metrics(ks)["stored"]
    for i in range(PER_KEY + 5):
        assert envoy.req("GET", f"/many/{i}", bearer(GLOBEX)).status == 200
    wait_stored(ks, before + PER_KEY + 5)
    rows = Owner(ks, "bob@example.com", "bob-password").requests(GLOBEX_ID)
    assert len(rows) == PER_KEY
    assert rows[0]["path"] == f"/many/{PER_KEY + 4}" and rows[-1]["path"] == "/many/5"


def test_bodies_where_they_are_on_redacted(envoy, ks, api):
    before = metrics(ks)["stored"]
    body = json.dumps({"name": "event", "password": "hunter2-body-secret", "ssn": "123-45-6789",
                       "note": f"my key is {ACME_A}"}).encode()
    r = envoy.req("POST", "/bodies/events?x=1", bearer(ACME_A) + [("content-type", "application/json")], body)
    assert r.status == 200
    # the API echoes what it got (headers with the key, when keygate does not hide it: here it does)
    r2 = envoy.req("POST", "/v1/no-bodies-here", bearer(ACME_A) + [("content-type", "application/json")], body)
    assert r2.status == 200
    r3 = envoy.req("PUT", "/bodies/blob", bearer(ACME_A) + [("content-type", "application/octet-stream")], b"\x00\x01binary")
    assert r3.status == 200
    wait_stored(ks, before + 3)
    alice = Owner(ks, "alice@example.com", "alice-password")
    rows = {r["path"]: r for r in alice.requests(ACME_A_ID)}
    status, page = alice.get(f"/dashboard/keys/{ACME_A_ID}/history/{rows['/bodies/events']['rid']}")
    assert status == 200
    req_body = html.unescape(re.search(r'<pre class="body" id="req-body">(.*?)</pre>', page, re.S).group(1))
    resp_body = html.unescape(re.search(r'<pre class="body" id="resp-body">(.*?)</pre>', page, re.S).group(1))
    assert json.loads(req_body) == {"name": "event", "password": "[REDACTED]", "ssn": "[REDACTED]",
                                    "note": "my key is [REDACTED]"}
    assert '"received": "{\\"name\\": \\"event\\", \\"password\\": \\"[REDACTED]\\"' in resp_body, resp_body
    for s in ("hunter2-body-secret", "123-45-6789", ACME_A):
        assert s not in page
    # no bodies on a route without the excerpt filter; a type not chosen: named, not shown
    status, page = alice.get(f"/dashboard/keys/{ACME_A_ID}/history/{rows['/v1/no-bodies-here']['rid']}")
    assert 'id="no-bodies"' in page and "hunter2" not in page
    status, page = alice.get(f"/dashboard/keys/{ACME_A_ID}/history/{rows['/bodies/blob']['rid']}")
    assert 'id="req-body-omitted"' in page and "content type not recorded" in page


def test_the_requests_own_credential_is_redacted_from_what_the_api_echoes(api, ks, upstream):
    """keygate passes the credential on (hide_from_upstream off) and the API echoes its headers
    and the body: the excerpt holds neither the key nor its query-parameter copy."""
    cfg = {**KEYGATE, "credentials": {"hide_from_upstream": False, "query_param": "_apikey"}}
    e = HistoryEnvoy(cfg, api, extra_clusters=[ks.cluster(), history_cluster(ks.port)],
                     filters_before=[excerpt_filter(EXCERPT)])
    e.start().wait_feed_polled()
    try:
        before = metrics(ks)["stored"]
        r = e.req("POST", f"/echo?_apikey={urllib.parse.quote(ACME_A)}", [("content-type", "text/plain")],
                  f"key={ACME_A}".encode())
        assert r.status == 200 and ACME_A.encode() in r.body  # the API did see and echo it
        r = e.req("POST", "/echo2", bearer(ACME_B) + [("content-type", "text/plain")], b"hello")
        assert r.status == 200 and ACME_B.encode() in r.body
        wait_stored(ks, before + 2)
        alice = Owner(ks, "alice@example.com", "alice-password")
        for key_id, path, secret in ((ACME_A_ID, "/echo", ACME_A), (ACME_B_ID, "/echo2", ACME_B)):
            row = next(r for r in alice.requests(key_id) if r["path"] == path)
            _, page = alice.get(f"/dashboard/keys/{key_id}/history/{row['rid']}")
            assert "[REDACTED]" in page and secret not in page, page
            assert 'id="resp-body"' in page
    finally:
        e.stop()


def test_an_outage_loses_history_never_requests(api, upstream):
    """The key service stopped for a while under traffic: every request is answered as before
    and none waits on the logger; the records of the outage are lost and counted by Envoy; after
    it, history is recorded again."""
    ks = KeyService(faults=False, extra_args=["--ingest-token", TOKEN]).start()
    e = HistoryEnvoy(KEYGATE, api, extra_clusters=[ks.cluster(), history_cluster(ks.port)])
    e.start().wait_feed_polled()
    statuses, slowest, phase_counts = [], [0.0], {"before": 0, "during": 0, "after": 0}
    phase = ["before"]
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            t = time.monotonic()
            r = e.req("GET", "/v1/objects/events", bearer(GLOBEX))
            slowest[0] = max(slowest[0], time.monotonic() - t)
            statuses.append(r.status)
            phase_counts[phase[0]] += 1
            time.sleep(0.005)

    try:
        th = threading.Thread(target=traffic)
        th.start()
        time.sleep(1.5)
        phase[0] = "during"
        ks.stop()
        time.sleep(3)
        phase[0] = "after"
        ks.start()
        time.sleep(2.5)
        stop.set()
        th.join(10)
        # requests: all answered 200, none delayed by the logger (the key service is also
        # keygate's verifier: a cached verdict serves through the outage)
        assert statuses and set(statuses) == {200}, set(statuses)
        assert slowest[0] < 0.5, slowest[0]
        assert phase_counts["during"] > 50
        # losses counted by Envoy; history recorded again after the outage
        dropped = envoy_counter(e, "access_logs.open_telemetry_access_log.logs_dropped")
        assert dropped >= phase_counts["during"] * 0.5, (dropped, phase_counts)
        wait_until(lambda: metrics(ks).get("stored", 0) >= phase_counts["after"] * 0.5, 5, 0.1,
                   lambda _: f"records after the outage (metrics {metrics(ks)}, sent {phase_counts})")
        written = envoy_counter(e, "access_logs.open_telemetry_access_log.logs_written")
        print(f"outage: sent {sum(phase_counts.values())} {phase_counts}, Envoy logs_written {written}, "
              f"logs_dropped {dropped}, slowest request {slowest[0] * 1000:.0f} ms, stored after restart "
              f"{metrics(ks).get('stored', 0)}")
    finally:
        stop.set()
        e.stop()
        ks.stop()


def test_a_receiver_that_never_answers_keeps_envoy_bounded(api, ks):
    """A history receiver that accepts connections and never answers: requests stay fast,
    exports time out and are dropped (counted), at most the circuit breaker's 8 are in flight,
    and Envoy's memory does not grow with the records."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(128)
    held = []
    stop = threading.Event()

    def accept():
        hole.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(hole.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    e = HistoryEnvoy(KEYGATE, api, extra_clusters=[ks.cluster(), history_cluster(hole.getsockname()[1])])
    e.start().wait_feed_polled()
    try:
        def mem() -> int:
            return int(re.search(r"server.memory_allocated: (\d+)", e.admin("/stats?filter=server.memory_allocated")).group(1))

        body = b"x" * 2000  # bigger records: ~6 KB of attributes each would show growth
        def burst(n):
            worst = 0.0
            for _ in range(n):
                t = time.monotonic()
                assert e.req("GET", "/v1/objects/events", bearer(GLOBEX) + [("x-filler", "y" * 1000)]).status == 200
                worst = max(worst, time.monotonic() - t)
            return worst
        burst(300)
        m0 = mem()
        worst = burst(1500)
        time.sleep(2.5)  # exports time out (1 s)
        m1 = mem()
        assert worst < 0.5, worst
        dropped = envoy_counter(e, "access_logs.open_telemetry_access_log.logs_dropped")
        overflow = envoy_counter(e, "cluster.keyservice_history.upstream_rq_pending_overflow")
        assert dropped > 1000, dropped
        # at most the circuit breaker's 8 exports at once (gauges: what is open now)
        assert envoy_counter(e, "cluster.keyservice_history.upstream_cx_active") <= 8
        assert envoy_counter(e, "cluster.keyservice_history.upstream_rq_active") <= 8
        assert m1 - m0 < 2_000_000, (m0, m1)
        print(f"blackhole receiver: 1,500 requests, logs_dropped {dropped}, pending overflow {overflow}, "
              f"memory {m0} -> {m1}, slowest request {worst * 1000:.0f} ms")
        del body
    finally:
        stop.set()
        e.stop()
        for c in held:
            c.close()
        hole.close()


def _varint(n: int) -> bytes:
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def _ld(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def otlp_export(n: int, key_id: str = "bk_demo_globex") -> bytes:
    """An ExportLogsServiceRequest with n records, encoded by hand (protobuf wire format)."""
    def kv(k, v):
        return _ld(1, k.encode()) + _ld(2, _ld(1, v.encode()))
    rec = _varint(1 << 3 | 1) + (time.time_ns()).to_bytes(8, "little")  # time_unix_nano (fixed64)
    for k, v in (("http.request.method", "GET"), ("url.path", "/direct"), ("http.response.status_code", "200"),
                 ("keygate", f"decision=allowed key_id={key_id} account=globex plan=p")):
        rec += _ld(6, kv(k, v))
    scope = b"".join(_ld(2, rec) for _ in range(n))
    return _ld(1, _ld(2, scope))


def post_export(port: int, body: bytes, headers: dict) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/logs", data=body, method="POST",
                                 headers={"content-type": "application/x-protobuf", **headers})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_the_receiver_refuses_what_it_should_and_counts_a_full_queue():
    ks = KeyService(faults=False, extra_args=["--ingest-token", TOKEN, "--history-queue", "5"]).start()
    try:
        tok = {"x-keyservice-ingest-token": TOKEN}
        assert post_export(ks.port, otlp_export(2), {}) == 403  # no token: no forged history
        assert post_export(ks.port, otlp_export(2), {"x-keyservice-ingest-token": "wrong"}) == 403
        assert post_export(ks.port, b"\xff\xff\xff", tok) == 400
        assert post_export(ks.port, otlp_export(2), {**tok, "content-encoding": "gzip"}) == 415
        assert post_export(ks.port, otlp_export(2), tok) == 200
        wait_stored(ks, 2)
        # more than the queue holds at once: refused whole (503: Envoy counts it dropped), counted
        assert post_export(ks.port, otlp_export(6), tok) == 503
        m = metrics(ks)
        assert m["dropped_queue_full"] == 6 and m["stored"] == 2
    finally:
        ks.stop()


def test_usage_chart_and_history_page_in_a_browser(envoy, ks):
    for path in ("/status/201", "/status/404", "/status/404", "/status/500"):
        envoy.req("GET", path, bearer(ACME_A))
    before = metrics(ks)["stored"]
    wait_stored(ks, before)
    time.sleep(1.5)
    d = new_browser()
    try:
        base = f"http://127.0.0.1:{ks.port}"
        d.get(base + "/dashboard")
        d.find_element(By.ID, "email").send_keys("alice@example.com")
        d.find_element(By.ID, "password").send_keys("alice-password")
        d.find_element(By.ID, "login").click()
        wait_until(lambda: d.find_elements(By.ID, "business"), 10, message="the keys page")
        # the keys page: last use, and the way to a key's requests
        row = d.find_element(By.CSS_SELECTOR, f'#business tr[data-id="{ACME_A_ID}"]')
        assert row.find_element(By.CLASS_NAME, "last-used").text.endswith("UTC")
        d.find_element(By.ID, "nav-usage").click()
        wait_until(lambda: d.find_elements(By.CSS_SELECTOR, "svg.usage-chart"), 10, message="the chart")
        days = d.find_elements(By.CSS_SELECTOR, "svg.usage-chart g.day")
        assert len(days) == 30
        today = days[-1]
        total = int(today.get_attribute("data-total"))
        table = {r.get_attribute("data-id"): int(r.find_element(By.CLASS_NAME, "total").text)
                 for r in d.find_elements(By.CSS_SELECTOR, "#usage-keys tbody tr")}
        assert total == sum(table.values()) and total > 0
        classes = {b.get_attribute("data-class"): int(b.get_attribute("data-count"))
                   for b in today.find_elements(By.CSS_SELECTOR, "rect.bar")}
        assert sum(classes.values()) == total and classes["4xx"] >= 2 and classes["5xx"] >= 1
        assert today.find_element(By.CSS_SELECTOR, "rect.c4xx").size["height"] > 0  # drawn
        # the history page: filter to 4xx, then one request's details
        d.find_element(By.CSS_SELECTOR, f'#usage-keys tr[data-id="{ACME_A_ID}"] a.history').click()
        wait_until(lambda: d.find_elements(By.ID, "requests"), 10, message="the history page")
        assert d.find_elements(By.CSS_SELECTOR, "svg.usage-chart g.day")
        Select(d.find_element(By.ID, "status")).select_by_value("4xx")
        d.find_element(By.ID, "apply").click()
        wait_until(lambda: "status=4xx" in d.current_url, 10)
        statuses = [c.text for c in d.find_elements(By.CSS_SELECTOR, "#requests td.status")]
        assert statuses and all(s.startswith("4") for s in statuses), statuses
        d.find_element(By.CSS_SELECTOR, "#requests a.details").click()
        wait_until(lambda: d.find_elements(By.ID, "req-status"), 10, message="the request's details")
        assert d.find_element(By.ID, "req-status").text.startswith("4")
        assert d.find_element(By.ID, "req-id").text  # Envoy's x-request-id, for support
        assert d.execute_script("return document.scripts.length") == 1  # only app.js
        storage = json.dumps(d.execute_script("return [Object.entries(localStorage), Object.entries(sessionStorage)]"))
        for s in SECRETS:
            assert s not in d.page_source and s not in storage
    finally:
        d.quit()


def test_no_secret_in_the_history_store_pages_or_logs(envoy, ks):
    """After the traffic above: no key, password or secret body field in the key service's
    database (history included), its log, Envoy's logs, or any dashboard page of either owner."""
    db = Path(ks.db)
    blob = b"".join(p.read_bytes() for p in db.parent.iterdir() if p.name.startswith(db.name))
    assert b"bk_demo_acme" in blob  # the history is in there
    where = {"database": blob, "service log": ks.log().encode(), "envoy log": envoy.logs().encode(),
             "access log": envoy.access_log().encode()}
    for email, pw, keys in (("alice@example.com", "alice-password", (ACME_A_ID, ACME_B_ID, EMBEDDED_ID)),
                            ("bob@example.com", "bob-password", (GLOBEX_ID,))):
        o = Owner(ks, email, pw)
        pages = [o.get("/dashboard")[1], o.get("/dashboard/usage")[1]]
        for k in keys:
            pages.append(o.get(f"/dashboard/keys/{k}/history")[1])
            for r in o.requests(k)[:20]:
                pages.append(o.get(f"/dashboard/keys/{k}/history/{r['rid']}")[1])
        where[f"pages of {email}"] = "".join(pages).encode()
    for name, b in where.items():
        for s in SECRETS:
            assert s.encode() not in b, f"{s[:10]}… in the {name}"
