"""A red team on the request history (keygate's state → Envoy's OpenTelemetry logger → the key
service's POST /v1/logs → the store and the dashboard). Each attack asserts what the client got
and what the store and the owner's pages hold. The fixtures are test_history.py's: the real
Envoy with the history logger, the real key service (SQLite), the recording API."""
from __future__ import annotations

import os
import re
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from attack_clients import request1, request2
from harness import KeyService, free_port, wait_until
from test_history import (ACME_A, ACME_A_ID, EMBEDDED, TOKEN, HistoryEnvoy, KEYGATE, Owner,  # noqa: F401
                          api, bearer, envoy, history_cluster, ks, metrics, otlp_export, post_export,
                          wait_stored, _ld, _varint)


def stored_rows(ks, key_id: str) -> list[dict]:
    """What the key service's database holds for a key, read straight from SQLite."""
    con = sqlite3.connect(f"file:{ks.db}?mode=ro", uri=True, timeout=5)
    try:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT * FROM history WHERE key_id = ? ORDER BY id", (key_id,))]
    finally:
        con.close()


def everything_stored(ks) -> bytes:
    db = Path(ks.db)
    return b"".join(p.read_bytes() for p in db.parent.iterdir() if p.name.startswith(db.name))


# ---------------------------------------------------------------------------------------------
# 1. Secrets: the request id is a value the client chooses (Envoy keeps an internal client's
#    x-request-id), so a key sent in it must be masked like one in the path.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("proto", ["h1", "h2"])
def test_a_key_sent_as_the_request_id_is_not_stored(envoy, ks, proto):
    before = metrics(ks)["stored"]
    path = f"/rid-{proto}"
    hdrs = [("authorization", f"Bearer {ACME_A}"), ("x-request-id", ACME_A)]
    send = request1 if proto == "h1" else request2
    r = send(envoy.port, "GET", path, hdrs)
    assert r.status == 200
    wait_stored(ks, before + 1)
    rows = [r for r in stored_rows(ks, ACME_A_ID) if r["path"] == path]
    assert len(rows) == 1
    assert ACME_A not in rows[0]["request_id"], rows[0]
    # replaced by keygate (the request's own credential), not dropped
    assert rows[0]["request_id"] == "[REDACTED]", rows[0]
    alice = Owner(ks, "alice@example.com", "alice-password")
    row = next(x for x in alice.requests(ACME_A_ID) if x["path"] == path)
    _, page = alice.get(f"/dashboard/keys/{ACME_A_ID}/history/{row['rid']}")
    assert ACME_A not in page
    assert ACME_A.encode() not in everything_stored(ks)


# ---------------------------------------------------------------------------------------------
# 1b. Secrets: a key in the path, percent-encoded (no normalisation decodes it when the listener
#     does not normalise, and `%5F` is how some clients write `_`).
# ---------------------------------------------------------------------------------------------

class RawPathEnvoy(HistoryEnvoy):
    """The history Envoy without path normalisation (Envoy's default)."""

    def config(self) -> dict:
        cfg = super().config()
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["normalize_path"] = False
        hcm["merge_slashes"] = False
        return cfg


@pytest.mark.parametrize("spelling", ["kgb%5Fdemo_acme_business_0001", "kgb%5fdemo%5facme%5Fbusiness%5F0001",
                                      "%6Bgb_demo_acme_business_0001"])
def test_a_percent_encoded_key_in_the_path_is_masked(api, ks, spelling):
    e = RawPathEnvoy(KEYGATE, api, extra_clusters=[ks.cluster(), history_cluster(ks.port)])
    e.start().wait_feed_polled()
    try:
        before = metrics(ks)["stored"]
        path = f"/pathkey/{spelling}/x"
        r = request1(e.port, "GET", path, bearer(ACME_A))
        assert r.status == 200
        wait_stored(ks, before + 1)
        rows = [r for r in stored_rows(ks, ACME_A_ID) if r["path"].startswith("/pathkey/")]
        assert rows, "recorded"
        decoded = [re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), r["path"]) for r in rows]
        for d in decoded:
            assert ACME_A not in d, d
    finally:
        e.stop()


# ---------------------------------------------------------------------------------------------
# 4. Bounds: the receiver reads at most INGEST_SLOTS exports at once. A sender that opens exports
#    and dribbles their bodies must not hold those slots (every export of Envoy refused, all
#    history lost) — neither without the token nor, for long, with it.
# ---------------------------------------------------------------------------------------------

def slow_exports(port: int, n: int, token: str | None) -> list[socket.socket]:
    held = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        head = ("POST /v1/logs HTTP/1.1\r\nHost: ks\r\ncontent-type: application/x-protobuf\r\n"
                "content-length: 100000\r\n")
        if token:
            head += f"x-keyservice-ingest-token: {token}\r\n"
        s.sendall((head + "\r\n").encode() + b"\x0a")
        held.append(s)
    return held


@pytest.fixture()
def own(api):
    ks = KeyService(faults=False, extra_args=["--ingest-token", TOKEN]).start()
    e = HistoryEnvoy(KEYGATE, api, extra_clusters=[ks.cluster(), history_cluster(ks.port)])
    e.start().wait_feed_polled()
    yield ks, e
    e.stop()
    ks.stop()


def traffic_until_stored(ks, e, path: str, seconds: float) -> bool:
    """Requests through Envoy (each answered 200) until one of them is stored, or `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r = e.req("GET", path, bearer(ACME_A))
        assert r.status == 200  # history never costs a request
        if any(r["path"] == path for r in stored_rows(ks, ACME_A_ID)):
            return True
        time.sleep(0.5)
    return False


def test_exports_without_the_token_hold_no_slot(own):
    ks, e = own
    held = slow_exports(ks.port, 8, token=None)
    try:
        time.sleep(0.5)
        # well within the read deadline: only the token check before the slot lets this through
        assert traffic_until_stored(ks, e, "/while-held-no-token", 3.5)
    finally:
        for s in held:
            s.close()


def test_a_dribbled_export_loses_its_slot(own):
    ks, e = own
    held = slow_exports(ks.port, 8, token=TOKEN)
    stop = threading.Event()

    def dribble():  # one byte a second: never idle, never done
        while not stop.wait(1):
            for s in held:
                try:
                    s.sendall(b"\x00")
                except OSError:
                    pass
    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    try:
        assert traffic_until_stored(ks, e, "/while-dribbled", 12)
    finally:
        stop.set()
        t.join()
        for s in held:
            s.close()


def peak_rss_kb(pid: int) -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))


def test_a_protobuf_bomb_is_refused_before_it_is_decoded():
    """8 MiB (the largest export read) of empty log records, two bytes each on the wire and some
    hundred in memory once decoded: four at once (every slot) must not take the key service's
    memory with them, and a real export is stored after."""
    ks = KeyService(faults=False).start()  # no token: anyone who reaches the port may send
    try:
        base = peak_rss_kb(ks.proc.pid)
        scope = b"\x12\x00" * ((8 << 20) // 2 - 16)
        bomb = _ld(1, _ld(2, scope))
        assert len(bomb) <= 8 << 20
        got = []
        threads = [threading.Thread(target=lambda: got.append(post_export(ks.port, bomb, {}))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert got == [400] * 4, got
        grown = peak_rss_kb(ks.proc.pid) - base
        assert grown < 150_000, f"the key service grew by {grown} kB"
        assert post_export(ks.port, otlp_export(3), {}) == 200
        wait_stored(ks, 3)
    finally:
        ks.stop()


# ---------------------------------------------------------------------------------------------
# 2. Forging fields of the line: the method is the only value a client chooses that Envoy writes
#    before the status. Over HTTP/2 a method is any bytes to the client; a record must keep the
#    status Envoy sent (the usage per status class is what an account is billed on).
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["GET status=200", "GET\tstatus=200", "GET\x0bstatus=200"])
def test_a_method_cannot_forge_the_status(envoy, ks, method):
    before = metrics(ks)["stored"]
    path = f"/status/503/m{abs(hash(method)) % 1000}"
    r = request2(envoy.port, method, path, [("authorization", f"Bearer {ACME_A}")])
    if r.status == 0:  # Envoy refused the method: nothing to forge
        return
    wait_stored(ks, before + 1)
    rows = [x for x in stored_rows(ks, ACME_A_ID) if x["path"] == path]
    assert rows and all(x["status"] == r.status for x in rows), (r.status, rows)


# ---------------------------------------------------------------------------------------------
# 5. The excerpt filter reconfigured: an operator adds a field to redact over LDS. The new
#    listener's filter has a new configuration on the same VM (same vm_id and code) while the
#    old one still drains; the new one must be taken (and applied to the new listener's
#    streams), never refused with the old redaction kept.
# ---------------------------------------------------------------------------------------------

from test_history import excerpt_filter, EXCERPT  # noqa: E402
from test_reconfigure import LdsEnvoy  # noqa: E402


class LdsHistoryEnvoy(LdsEnvoy, HistoryEnvoy):
    def reexcerpt(self, config: dict) -> None:
        self.filters_before = [excerpt_filter(config, disabled=True)]
        self.write_lds(HistoryEnvoy.config(self)["static_resources"]["listeners"][0])


def stat(e, name: str) -> int:
    m = re.search(rf"^{re.escape(name)}: (\d+)$", e.admin(f"/stats?filter={re.escape(name)}"), re.M)
    return int(m.group(1)) if m else 0


def test_the_excerpt_filter_takes_a_new_redaction_over_lds(api, ks):
    e = LdsHistoryEnvoy(KEYGATE, api, extra_clusters=[ks.cluster(), history_cluster(ks.port)],
                        filters_before=[excerpt_filter(EXCERPT, disabled=True)], body_routes=True)
    e.start().wait_feed_polled()
    try:
        # bodies are recorded before the change
        before = metrics(ks)["stored"]
        assert e.req("POST", "/bodies/lds-before", bearer(ACME_A) + [("content-type", "application/json")],
                     b'{"a": 1}').status == 200
        wait_stored(ks, before + 1)
        assert [x["req_body"] for x in stored_rows(ks, ACME_A_ID) if x["path"] == "/bodies/lds-before"] != [None]
        ok, bad = stat(e, "listener_manager.lds.update_success"), stat(e, "listener_manager.lds.update_rejected")
        e.reexcerpt({**EXCERPT, "redact_fields": ["ssn", "passport_no"]})
        wait_until(lambda: stat(e, "listener_manager.lds.update_success") > ok
                   or stat(e, "listener_manager.lds.update_rejected") > bad, 15, 0.1, "the LDS update")
        assert stat(e, "listener_manager.lds.update_rejected") == bad, "the new excerpt configuration was refused"
        before = metrics(ks)["stored"]
        path = "/bodies/lds-passport"
        body = b'{"passport_no": "X1234567-passport", "ssn": "123-45-6789"}'

        def sent_and_redacted():
            r = e.req("POST", path, bearer(ACME_A) + [("content-type", "application/json")], body)
            assert r.status == 200
            return r
        sent_and_redacted()
        wait_stored(ks, before + 1)
        rows = [x for x in stored_rows(ks, ACME_A_ID) if x["path"] == path]
        assert rows
        for x in rows:
            assert x["req_body"] and "[REDACTED]" in x["req_body"], x  # recorded, redacted
            stored = " ".join(str(v) for v in x.values())
            assert "123-45-6789" not in stored
            assert "X1234567-passport" not in stored, stored
    finally:
        e.stop()


# ---------------------------------------------------------------------------------------------
# 1c. Secrets in bodies that are not the request's own credential (another key of the service,
#     so only the key-shaped mask can catch it), spelled as readers decode it: percent-encoded
#     in a form, JSON-escaped. Envoy's excerpt filter masks `kgb_…` as written; the key service's
#     second net must mask what the readers read.
# ---------------------------------------------------------------------------------------------

GLOBEX_KEY = "kgb_demo_globex_business_0001"


@pytest.mark.parametrize("proto", ["h1", "h2"])
@pytest.mark.parametrize("ctype,body", [
    ("application/x-www-form-urlencoded", b"other=kgb%5Fdemo%5Fglobex_business_0001&x=1"),
    ("application/json", b'{"other": "kgb\\u005fdemo_globex_business_0001"}'),
    ("text/plain", b"key %6Bgb_demo_globex_business_0001 end"),
])
def test_another_key_spelled_in_a_body_is_masked(envoy, ks, proto, ctype, body):
    before = metrics(ks)["stored"]
    path = f"/bodies/spelled-{proto}-{abs(hash(body)) % 10000}"
    hdrs = [("authorization", f"Bearer {ACME_A}"), ("content-type", ctype)]
    send = request1 if proto == "h1" else request2
    r = send(envoy.port, "POST", path, hdrs, body)
    assert r.status == 200
    wait_stored(ks, before + 1)
    rows = [x for x in stored_rows(ks, ACME_A_ID) if x["path"] == path]
    assert rows and rows[0]["req_body"], rows
    for x in rows:
        for col in ("req_body", "resp_body"):
            text = x[col] or ""
            decoded = re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text)
            decoded = re.sub(r"\\+u00([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), decoded)
            assert GLOBEX_KEY not in decoded, (col, text)


# ---------------------------------------------------------------------------------------------
# 2b/3. Forging an owner and injecting markup: a request without a valid key whose request id,
#       path and body look like keygate's segment is no one's record; a valid one's request id,
#       path and bodies holding markup are shown as text on the owner's pages.
# ---------------------------------------------------------------------------------------------

GLOBEX_ID = "bk_demo_globex"
FORGED = "decision=allowed key_id=bk_demo_globex account=globex plan=professional"


@pytest.mark.parametrize("proto", ["h1", "h2"])
def test_no_record_is_forged_for_another_key_and_markup_stays_text(envoy, ks, proto):
    send = request1 if proto == "h1" else request2
    globex_before = len(stored_rows(ks, GLOBEX_ID))
    m0 = metrics(ks)
    # no key, a wrong key, a denied key: each with keygate's segment in every value it chooses
    for auth in ([], [("authorization", "Bearer kgb_not_a_key_at_all_00000000")]):
        r = send(envoy.port, "POST", f"/forge/{proto}/decision=allowed%20key_id=bk_demo_globex",
                 auth + [("x-request-id", FORGED), ("content-type", "text/plain"), ("keygate", FORGED)],
                 (FORGED + "\n" + FORGED).encode())
        assert r.status == 401
    wait_until(lambda: metrics(ks)["received"] >= m0["received"] + 2, 10, 0.1, "the records of the denials")
    time.sleep(1.5)
    assert len(stored_rows(ks, GLOBEX_ID)) == globex_before
    assert metrics(ks)["without_key"] >= m0["without_key"] + 2

    # markup in what a valid request's owner sees
    before = metrics(ks)["stored"]
    xss = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
    path = f"/bodies/xss-{proto}/%3Cscript%3E"
    r = send(envoy.port, "POST", path, [("authorization", f"Bearer {ACME_A}"), ("x-request-id", xss),
                                        ("content-type", "text/plain")], xss.encode())
    assert r.status == 200
    wait_stored(ks, before + 1)
    alice = Owner(ks, "alice@example.com", "alice-password")
    row = next(x for x in alice.requests(ACME_A_ID) if x["path"].startswith(f"/bodies/xss-{proto}/"))
    for page in (alice.get(f"/dashboard/keys/{ACME_A_ID}/history")[1],
                 alice.get(f"/dashboard/keys/{ACME_A_ID}/history/{row['rid']}")[1]):
        assert "<script>alert" not in page and "<img src=x" not in page
        assert page.count("<script") == page.count('<script src="/dashboard/static/')  # app.js only


# ---------------------------------------------------------------------------------------------
# 5b. The excerpt filter never delays or refuses a request: a body far past the excerpt, a body
#     in many frames ending in trailers (h2), a stream abandoned midway; what reaches the API is
#     whole, and the next request is recorded as before.
# ---------------------------------------------------------------------------------------------

from attack_clients import exchange2  # noqa: E402


def test_the_excerpt_filter_passes_every_body_whole(envoy, ks):
    import json as _json
    auth = [("authorization", f"Bearer {ACME_A}"), ("content-type", "text/plain")]
    big = (b"x" * 1000 + b"\n") * 1000  # ~1 MB, the excerpt keeps 512 bytes
    r = request1(envoy.port, "POST", "/bodies/big", auth, big)
    assert r.status == 200 and len(_json.loads(r.body)["received"]) == len(big)
    # h2: 50 DATA frames, then trailers
    steps = [("data", b"chunk-%02d;" % i, False) for i in range(50)] + [("trailers", [("x-end", "1")])]
    r = exchange2(envoy.port, "POST", "/bodies/frames", auth + [("content-length", str(sum(len(s[1]) for s in steps[:-1])))], steps)
    assert r.status == 200
    assert _json.loads(r.body)["received"] == "".join("chunk-%02d;" % i for i in range(50))
    # abandoned: headers and part of a body, then a reset
    exchange2(envoy.port, "POST", "/bodies/abandoned", auth, [("data", b"part", False), ("reset",)], timeout=2)
    before = metrics(ks)["stored"]
    r = request1(envoy.port, "POST", "/bodies/after", auth, b"after-body")
    assert r.status == 200
    wait_stored(ks, before + 1)
    rows = {x["path"]: x for x in stored_rows(ks, ACME_A_ID)}
    assert "after-body" in (rows["/bodies/after"]["req_body"] or "")
    big_row = rows["/bodies/big"]
    assert '"truncated":true' in big_row["req_body"].replace(" ", "") and len(big_row["req_body"]) < 4096


EMBEDDED_ID = "emb-acme"


@pytest.mark.parametrize("proto", ["h1", "h2"])
def test_an_unprefixed_key_in_the_path_or_request_id_is_not_stored(envoy, ks, proto):
    before = metrics(ks)["stored"]
    send = request1 if proto == "h1" else request2
    r = send(envoy.port, "GET", f"/emb-{proto}/{EMBEDDED}/x", [("authorization", f"Bearer {EMBEDDED}"),
                                                               ("x-request-id", EMBEDDED)])
    assert r.status == 200
    wait_stored(ks, before + 1)
    rows = [x for x in stored_rows(ks, EMBEDDED_ID) if x["path"].startswith(f"/emb-{proto}/")]
    assert rows
    for x in rows:
        assert EMBEDDED not in x["path"] and EMBEDDED not in x["request_id"], x
        # keygate's redacted forms, not a path or id dropped
        assert (x["path"], x["request_id"]) == (f"/emb-{proto}/[REDACTED]/x", "[REDACTED]"), x


# ---------------------------------------------------------------------------------------------
# The stream itself: what Envoy's logger sends can go to any OpenTelemetry collector, which
# keeps what it gets. A key in the query string (`?_apikey=`, a credential keygate reads) must
# never be in it, for a request keygate served or refused.
# ---------------------------------------------------------------------------------------------

def shipped_history_line() -> str:
    import yaml
    text = (Path(__file__).resolve().parents[2] / "envoy" / "demo.yaml").read_text()
    m = re.search(r'string_value: "(%FILTER_STATE\(wasm\.keygate:PLAIN\)%[^"]*)"', text)
    assert m, "envoy/demo.yaml has no history line"
    yaml.safe_load(text)  # and the file still parses
    return m.group(1)


class Collector:
    """An OpenTelemetry collector's OTLP/HTTP receiver: keeps every export's body as received."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        exports: list[bytes] = []
        self.exports = exports

        class Receiver(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                if self.headers.get("content-length") is not None:
                    exports.append(self.rfile.read(int(self.headers["content-length"])))
                else:  # chunked
                    body = b""
                    while (n := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)):
                        body += self.rfile.read(n)
                        self.rfile.readline()
                    self.rfile.readline()
                    exports.append(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", free_port()), Receiver)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def everything(self) -> bytes:
        return b"".join(self.exports)

    def stop(self):
        self.srv.shutdown()


@pytest.mark.parametrize("proto", ["h1", "h2"])
def test_a_key_in_the_query_never_reaches_the_exported_stream(api, ks, proto):
    from test_history import otel_log
    col = Collector()
    exports = col.exports
    otel = otel_log()
    otel["typed_config"]["body"] = {"string_value": shipped_history_line()}
    cfg = {**KEYGATE, "credentials": {"query_param": "_apikey"}}
    e = HistoryEnvoy(cfg, api, otel=otel, extra_clusters=[ks.cluster(), history_cluster(col.port)])
    e.start().wait_feed_polled()
    wrong = "kgb_" + "q" * 32 + "wrong1"
    send = request1 if proto == "h1" else request2
    try:
        assert send(e.port, "GET", f"/served?_apikey={ACME_A}", []).status == 200
        assert send(e.port, "GET", f"/refused?a=1&_apikey={wrong}", []).status == 401
        wait_until(lambda: sum(b"/refused" in x for x in exports) and sum(b"/served" in x for x in exports),
                   10, 0.1, lambda _: f"both requests' records exported ({len(exports)} exports: {b''.join(exports)[:300]!r})")
        everything = b"".join(exports)
        assert ACME_A.encode() not in everything and wrong.encode() not in everything, everything[:400]
        assert b"_apikey" not in everything
    finally:
        e.stop()
        col.stop()


# ---------------------------------------------------------------------------------------------
# A key without a known prefix (keygate's own configuration's), written by the client into its
# path or its x-request-id, as sent or percent-encoded, for a request served or refused: never
# in what the key service stores, nor in the stream any collector receives (the shipped line,
# envoy/demo.yaml, sent to both at once).
# ---------------------------------------------------------------------------------------------

def unquoted(b: bytes, rounds: int = 3) -> bytes:
    for _ in range(rounds):
        b = re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), b)
    return b


class TwoStreams(HistoryEnvoy):
    """The history Envoy sending the shipped line to the key service and to a collector."""

    def __init__(self, *a, second: dict, **kw):
        super().__init__(*a, **kw)
        self.second = second

    def config(self) -> dict:
        cfg = super().config()
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["access_log"].append(self.second)
        return cfg


@pytest.mark.parametrize("proto", ["h1", "h2"])
def test_an_unprefixed_key_never_reaches_the_store_or_the_exported_stream(api, ks, proto):
    from test_history import otel_log
    col = Collector()
    to_ks, to_col = otel_log(), otel_log("collector", token=None)
    for o in (to_ks, to_col):
        o["typed_config"]["body"] = {"string_value": shipped_history_line()}
        o["typed_config"].pop("attributes", None)
    to_col["typed_config"]["http_service"]["http_uri"]["uri"] = "http://collector/v1/logs"
    e = TwoStreams(KEYGATE, api, otel=to_ks, second=to_col,
                   extra_clusters=[ks.cluster(), history_cluster(ks.port), history_cluster(col.port, "collector")])
    e.start().wait_feed_polled()
    send = request1 if proto == "h1" else request2
    wrong = "unknown-unprefixed-key-77"
    spelled = "%65mbedded%2dacme%2Dkey-0003"  # EMBEDDED, percent-encoded in two cases
    p = f"/unpfx-{proto}"
    try:
        before = metrics(ks)["stored"]
        sent = [  # (path, headers, status, stored path, stored request id)
            (f"{p}/a/{EMBEDDED}/x?q={EMBEDDED}", [("authorization", f"Bearer {EMBEDDED}"),
                                                  ("x-request-id", f"rid-{EMBEDDED}")], 200,
             f"{p}/a/[REDACTED]/x", "rid-[REDACTED]"),
            (f"{p}/b/{spelled}", [("x-api-key", EMBEDDED), ("x-request-id", spelled)], 200,
             f"{p}/b/[REDACTED]", "[REDACTED]"),
            (f"{p}/c/plain", [("x-api-key", EMBEDDED), ("x-request-id", f"{p}-c")], 200, f"{p}/c/plain", f"{p}-c"),
        ]
        for path, hdrs, status, _, _ in sent:
            assert send(e.port, "GET", path, hdrs).status == status, path
        # refused: an unknown key, and a request keygate decides before reading its key (a
        # credential sent twice), each written into its path and request id
        assert send(e.port, "GET", f"{p}/d/{wrong}", [("authorization", f"Bearer {wrong}"),
                                                     ("x-request-id", wrong)]).status == 401
        assert send(e.port, "GET", f"{p}/e/{EMBEDDED}", [("authorization", f"Bearer {EMBEDDED}"),
                                                        ("x-api-key", "another-key-0004"),
                                                        ("x-request-id", EMBEDDED)]).status == 400
        wait_stored(ks, before + len(sent))
        wait_until(lambda: all(f"{p}/{c}/".encode() in col.everything() for c in "abcde"), 10, 0.1,
                   lambda _: f"every request's record at the collector ({col.everything()[:400]!r})")
        rows = {x["path"]: x for x in stored_rows(ks, EMBEDDED_ID) if x["path"].startswith(p)}
        assert {(x["path"], x["request_id"]) for x in rows.values()} == {(sp, sr) for *_, sp, sr in sent}, rows
        stream = col.everything()
        for secret in (EMBEDDED, wrong, "another-key-0004"):
            assert secret.encode() not in unquoted(stream), (secret, stream[:600])
            assert secret.encode() not in unquoted(everything_stored(ks))
        # the stream holds keygate's forms: the path without its query, the request id
        assert f"path={p}/a/[REDACTED]/x request_id=rid-[REDACTED] ".encode() in stream
        assert f"path={p}/d/[REDACTED] request_id=[REDACTED] ".encode() in stream
        assert f"path={p}/e/[REDACTED] request_id=[REDACTED] ".encode() in stream
    finally:
        e.stop()
        col.stop()
