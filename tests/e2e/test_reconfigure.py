"""A configuration pushed to a running Envoy (Istio does this on every WasmPlugin change).

Envoy keeps the VM and configures a second root context beside the first; keygate exports no
per-stream callback that would tell it which root a stream belongs to, so it routes by plugin
name (src/plugins.rs). These tests load the listener from a watched LDS file, replace it while
Envoy runs, and check that new requests get the new configuration and that a request in flight
under the old one is still finished by it (a body it waits for is checked, never waved through).
"""
from __future__ import annotations

import json
import os
import socket
import uuid

import pytest

from harness import Envoy, Upstream, wait_until
from keys import sha

SECRET = "reconf-reader-key-0001"
FORM = "application/x-www-form-urlencoded"


def conf(realm: str) -> dict:
    return {
        "realm": realm,
        "keys": [{"id": "reader", "sha256": sha(SECRET), "resources": {"aggregator": ["agg-1"]}}],
        "routes": [{"prefix": "/api/event", "owner": {"query": "_id", "resource": "aggregator"}}],
        "auth_throttle": False,
    }


class LdsEnvoy(Envoy):
    """The harness's Envoy with its listener served from a file Envoy watches (LDS)."""

    def lds_path(self):
        return self.workdir / "lds.json"

    def config(self) -> dict:
        cfg = super().config()
        listeners = cfg["static_resources"].pop("listeners")
        self.write_lds(listeners[0])
        cfg["dynamic_resources"] = {"lds_config": {"path_config_source": {"path": str(self.lds_path())},
                                                   "resource_api_version": "V3"}}
        cfg["node"] = {"id": "keygate-e2e", "cluster": "keygate-e2e"}
        return cfg

    def write_lds(self, listener: dict) -> None:
        listener = dict(listener, **{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener"})
        tmp = self.workdir / f"lds.{uuid.uuid4().hex}.json"
        tmp.write_text(json.dumps({"resources": [listener]}))
        os.rename(tmp, self.lds_path())  # Envoy picks up a file moved into place

    def reconfigure(self, plugin_config: dict) -> None:
        self.plugin_config = plugin_config
        self.write_lds(super().config()["static_resources"]["listeners"][0])


@pytest.fixture
def rec():
    u = Upstream()
    yield u
    u.stop()


def realm_of(e: Envoy) -> str | None:
    r = e.req("GET", "/api/event?_id=agg-1")
    return r.header("www-authenticate")


def wait_realm(e: Envoy, realm: str, timeout: float = 15) -> None:
    want = f'Bearer realm="{realm}"'
    wait_until(lambda: realm_of(e) == want, timeout, 0.05, f"the challenge to name realm {realm!r}")


def active_requests(e: Envoy) -> int:
    stats = e.admin("/stats?filter=^http.ingress.downstream_rq_active$")
    return int(stats.split(":")[-1]) if ":" in stats else 0


def test_a_new_configuration_takes_over_and_a_body_in_flight_is_still_checked(rec):
    # one worker: the raw connection below and the probes share its VM
    e = LdsEnvoy(conf("before"), rec.port, concurrency=1).start()
    try:
        wait_realm(e, "before")
        marker = uuid.uuid4().hex
        body = b"name=x&_id=victim"  # names a resource the key does not own
        head = (f"POST /api/event?_id=agg-1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\nx-case: {marker}\r\n"
                f"X-API-Key: {SECRET}\r\nContent-Type: {FORM}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", e.port), timeout=15) as s:
            # headers and the start of the body: keygate lets the headers on and holds the body
            s.sendall(head + body[:7])
            wait_until(lambda: active_requests(e) == 1, 5, 0.02, "Envoy to hold the request")
            e.reconfigure(conf("after"))
            wait_realm(e, "after")
            # the rest of the body arrives after the new configuration took over
            s.sendall(body[7:])
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 404"), data[:300]
        assert b"resource-forbidden" in data, data[:600]
        got = [r for r in rec.received() if ["x-case", marker] in r["headers"]]
        assert got == [], "the upstream handled a body nobody checked"
        # the same VM took the new configuration beside the old one (the case routed by name)
        logs = e.wait_for(e.logs, "configured again")
        assert "keygate: plugin `keygate` configured again" in logs, logs[-2000:]
        # a request under the new configuration: owned resources pass, others do not
        ok = e.req("POST", "/api/event?_id=agg-1", [("x-api-key", SECRET), ("content-type", FORM)],
                   b"name=x&_id=agg-1")
        assert ok.status == 200, ok.body[:300]
        bad = e.req("POST", "/api/event?_id=agg-1", [("x-api-key", SECRET), ("content-type", FORM)], body)
        assert bad.status == 404
        assert "keygate: configuration refused" not in e.logs()
    finally:
        e.stop()


def test_a_body_held_across_a_reconfiguration_is_still_ended_in_time(rec):
    # the body never completes; the plugin that holds it is replaced; the stream is still ended
    # (408) by the retired plugin, and nothing of it reaches the upstream
    cfg = dict(conf("before"), bodies={"timeout_ms": 1500})
    e = LdsEnvoy(cfg, rec.port, concurrency=1).start()
    try:
        wait_realm(e, "before")
        marker = uuid.uuid4().hex
        head = (f"POST /api/event?_id=agg-1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\nx-case: {marker}\r\n"
                f"X-API-Key: {SECRET}\r\nContent-Type: {FORM}\r\nContent-Length: 40\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", e.port), timeout=15) as s:
            s.sendall(head + b"name=x")
            wait_until(lambda: active_requests(e) == 1, 5, 0.02, "Envoy to hold the request")
            e.reconfigure(dict(conf("after"), bodies={"timeout_ms": 60000}))
            wait_realm(e, "after")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 408"), data[:300]
        assert b"body-unchecked" in data
        got = [r for r in rec.received() if ["x-case", marker] in r["headers"]]
        assert got == []
    finally:
        e.stop()
