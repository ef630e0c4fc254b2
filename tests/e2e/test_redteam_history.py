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
    assert rows[0]["request_id"].startswith("kgb_")  # masked, not dropped: still findable
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
