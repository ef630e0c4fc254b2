"""The README's demo, as a newcomer runs it: envoy/demo.yaml and envoy/demo-remote.yaml load in a
real Envoy and answer the README's curls as documented (ports rewritten to free ones)."""
import base64
import json
import os
import re
import signal
import socket
import subprocess

import pytest
import yaml

from harness import ROOT, WASM, Envoy, KeyService, free_port, request, wait_until


class YamlEnvoy(Envoy):
    """An Envoy started from one of the repo's YAML configs, ports and paths rewritten."""

    def __init__(self, path, ports):
        super().__init__({}, 0)
        self.source = yaml.safe_load((ROOT / path).read_text())
        self.ports = ports  # original port -> new port

    def config(self):
        cfg = json.loads(json.dumps(self.source))

        def walk(node):
            if isinstance(node, dict):
                for k, v in list(node.items()):
                    if k == "port_value" and v in self.ports:
                        node[k] = self.ports[v]
                    elif k == "filename" and str(v).endswith("keygate.wasm"):
                        node[k] = str(WASM)
                    elif k == "access_log":
                        node[k] = [{"name": "envoy.access_loggers.file", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                            "path": str(self.access_log_path),
                            "log_format": v[0]["typed_config"]["log_format"]}}]
                    else:
                        walk(v)
            elif isinstance(node, list):
                for x in node:
                    walk(x)

        walk(cfg)
        return cfg


def started_demo(upstream_port: int) -> YamlEnvoy:
    """envoy/demo.yaml in a real Envoy on free ports, in front of the upstream at this port."""
    ports = {10000: free_port(), 9901: free_port(), 8080: upstream_port}
    e = YamlEnvoy("envoy/demo.yaml", ports)
    e.port, e.admin_port = ports[10000], ports[9901]
    return e.start()


@pytest.fixture(scope="module")
def demo(upstream):
    e = started_demo(upstream.port)
    yield e
    e.stop()


def test_readme_curls_embedded(demo):
    r = demo.req("GET", "/organization", [("X-API-Key", "evon-demo-key-0001")])
    assert r.status == 200 and r.header("x-ratelimit-limit") == "100"
    assert demo.req("GET", "/v1/objects/events", [("Authorization", "Bearer esa-business-demo-0001")]).status == 200
    b = base64.b64encode(b"alice:pat-alice-demo-0001").decode()
    assert demo.req("GET", "/api/records/contacts", [("Authorization", f"Basic {b}")]).status == 200
    r = demo.req("GET", "/api/event?_id=agg-demo-1&_apikey=cat-demo-key-0001&name=x")
    assert r.status == 200 and r.json()["path"] == "/api/event?_id=agg-demo-1&name=x"
    assert demo.req("GET", "/api/event?_id=someone-else&_apikey=cat-demo-key-0001").status == 404
    assert demo.req("GET", "/organization").status == 401
    r = demo.req("GET", "/organization", [("X-API-Key", "nope")])
    assert r.status == 401 and 'error="invalid_token"' in r.header("www-authenticate")
    assert demo.req("GET", "/organization", [("X-API-Key", "expired-demo-key-0001")]).json()["type"].endswith("credential-expired")
    assert demo.req("GET", "/organization", [("Authorization", "Basic !!!")]).status == 400
    r = demo.req("POST", "/v1/objects/events", [("Authorization", "Bearer evon-demo-key-0001")])
    assert r.status == 403 and 'error="insufficient_scope"' in r.header("www-authenticate")
    assert [demo.req("GET", "/organization", [("X-API-Key", "tiny-demo-key-0001")]).status for _ in range(4)] == [200, 200, 200, 429]
    assert demo.req("GET", "/health").status == 200
    assert demo.req("GET", "/admin/anything", [("X-API-Key", "evon-demo-key-0001")]).status == 403
    prom = demo.prometheus('keygate_requests{decision="allowed"}')
    assert 'keygate_requests{decision="allowed"}' in prom
    log = demo.wait_for(demo.access_log, "decision=allowed key_id=evon-demo account=evon plan=evon")
    assert "evon-demo-key-0001" not in log


def test_the_starter_config_puts_keygate_in_front_of_an_api(upstream):
    """envoy/starter.yaml as README's "Put keygate in front of your API" tells a newcomer to use it:
    its own key, its curls, its routes (reads need `read`, every other method `write`)."""
    ports = {10000: free_port(), 9901: free_port(), 8000: upstream.port}
    e = YamlEnvoy("envoy/starter.yaml", ports)
    e.port, e.admin_port = ports[10000], ports[9901]
    e.start()
    try:
        r = e.req("GET", "/anything", [("X-API-Key", "change-me-0001")])
        assert r.status == 200 and r.json()["path"] == "/anything"
        names = [k for k, _ in r.json()["headers"]]
        assert "x-api-key" not in names and ["x-keygate-key-id", "first-key"] in r.json()["headers"]
        assert r.header("x-ratelimit-limit") == "60"
        assert e.req("POST", "/anything", [("X-API-Key", "change-me-0001")]).status == 200
        r = e.req("GET", "/anything")
        assert r.status == 401 and r.header("content-type") == "application/problem+json"
        assert e.req("GET", "/health").status == 200
    finally:
        e.stop()


def test_readme_lifecycle_remote(upstream):
    ks = KeyService(faults=False).start()  # the product, as README runs it
    ports = {10000: free_port(), 9901: free_port(), 8080: upstream.port, 8081: ks.port}
    e = YamlEnvoy("envoy/demo-remote.yaml", ports)
    e.port, e.admin_port = ports[10000], ports[9901]
    e.start().wait_feed_polled()
    try:
        login = e.req("POST", "/v1/auth/login", [("content-type", "application/json")],
                      body=b'{"email":"alice@example.com","password":"alice-password"}')
        token = login.json()["data"]["access_token"]
        auth = [("Authorization", f"Bearer {token}"), ("content-type", "application/json")]
        assert "bk_demo_acme" in e.req("GET", "/v1/tokens/business", auth).body.decode()
        new = e.req("POST", "/v1/tokens/business", auth, body=b'{"name":"ci"}').json()["data"]
        assert e.req("GET", "/v1/objects/events", [("Authorization", f"Bearer {new['key']}")]).status == 200
        assert e.req("DELETE", f"/v1/tokens/business/{new['id']}", auth).status == 200
        wait_until(lambda: e.req("GET", "/v1/objects/events", [("Authorization", f"Bearer {new['key']}")]).status == 401,
                   3, 0.05, "the revocation to bite")  # README: "sleep 2" then 401
        b = base64.b64encode(b"alice:kgn_demo_alice_pat_0001").decode()
        assert e.req("GET", "/api/records/contacts", [("Authorization", f"Basic {b}")]).status == 200
        assert e.req("GET", "/v1/objects/events", [("Authorization", "Bearer kgb_demo_acme_business_0001")]).status == 200
    finally:
        e.stop()
        ks.stop()


def demo_sh(*args, env=None, **kw):
    return subprocess.Popen(["bash", str(ROOT / "envoy" / "demo.sh"), *args], cwd=ROOT,
                            env={**os.environ, **(env or {})}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_demo_sh_refuses_busy_ports_before_starting_anything():
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    upstream = free_port()
    try:
        p = demo_sh("evon", env={"KEYGATE_PORT": str(port), "KEYGATE_UPSTREAM_PORT": str(upstream)})
        out, err = p.communicate(timeout=30)
        assert p.returncode == 1, (out, err)
        assert f"127.0.0.1:{port} (KEYGATE_PORT) is in use" in err
        # nothing was started: the upstream's port is still free
        s = socket.socket()
        s.bind(("127.0.0.1", upstream))
        s.close()
        p = demo_sh("evon", env={"KEYGATE_ADMIN_PORT": "8x"})
        assert p.wait(timeout=30) == 1 and "KEYGATE_ADMIN_PORT='8x' is not a port number" in p.stderr.read()
    finally:
        busy.close()


def test_demo_sh_runs_a_profile_on_other_ports_and_prints_its_keys():
    ports = {n: free_port() for n in ("KEYGATE_PORT", "KEYGATE_ADMIN_PORT", "KEYGATE_UPSTREAM_PORT",
                                      "KEYGATE_KEYSERVICE_PORT")}
    p = demo_sh("evon", env={k: str(v) for k, v in ports.items()})
    try:
        def answered():
            assert p.poll() is None, p.stderr.read()
            try:
                return request(ports["KEYGATE_PORT"], "GET", "/organization", [("X-API-Key", "evon_demo_read_0001")])
            except OSError:
                return None
        r = wait_until(answered, 60, 0.1, "the demo to answer")
        assert r.status == 200 and r.json()["path"] == "/organization"  # the echo upstream, on its moved port
        assert request(ports["KEYGATE_PORT"], "GET", "/organization").json()["error"] == "API key is required"
        # the request history is on: the key service (on its moved port) stored the keyed request
        def stored():
            text = request(ports["KEYGATE_KEYSERVICE_PORT"], "GET", "/metrics").body.decode()
            m = re.search(r'^keyservice_history_records_total\{outcome="stored"\} (\d+)$', text, re.M)
            return m and int(m.group(1)) >= 1
        wait_until(stored, 10, 0.2, "the demo's history to store a record")
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    # the keys and example requests, with the ports in use
    assert "evon_demo_read_0001" in err and "evon_demo_revoked_0003" in err
    assert f"curl -i localhost:{ports['KEYGATE_PORT']}/organization" in err


def test_demo_sh_remote_runs_the_reference_key_service():
    """`envoy/demo.sh remote`: the key service (envoy/keyservice, the
    product, seeded) behind Envoy, every port moved."""
    names = ("KEYGATE_PORT", "KEYGATE_ADMIN_PORT", "KEYGATE_UPSTREAM_PORT", "KEYGATE_KEYSERVICE_PORT")
    ports = {n: free_port() for n in names}
    p = demo_sh("remote", env={k: str(v) for k, v in ports.items()})
    business = [("Authorization", "Bearer kgb_demo_acme_business_0001")]
    try:
        def answered():
            assert p.poll() is None, p.stderr.read()
            try:
                return request(ports["KEYGATE_PORT"], "GET", "/v1/objects/events", business)
            except OSError:
                return None
        r = wait_until(answered, 60, 0.1, "the remote demo to answer")
        assert r.status == 200 and r.json()["path"] == "/v1/objects/events"  # verified by the service
        login = request(ports["KEYGATE_PORT"], "POST", "/v1/auth/login", [("content-type", "application/json")],
                        body=b'{"email":"alice@example.com","password":"alice-password"}')
        assert login.status == 200 and login.json()["data"]["access_token"].startswith("kgp_")
        b = base64.b64encode(b"alice:kgn_demo_alice_pat_0001").decode()
        assert request(ports["KEYGATE_PORT"], "GET", "/api/records/contacts",
                       [("Authorization", f"Basic {b}")]).status == 200
        # the service itself, on its moved port: the product, without the tests' fault modes
        assert request(ports["KEYGATE_KEYSERVICE_PORT"], "GET", "/admin/mode").status == 404
        # its dashboard, where the printed demo login leads
        page = request(ports["KEYGATE_KEYSERVICE_PORT"], "GET", "/dashboard/login")
        assert page.status == 200 and b"keygate demo API" in page.body and b'id="password"' in page.body
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    assert "kgb_demo_acme_business_0001" in err
    assert f"127.0.0.1:{ports['KEYGATE_KEYSERVICE_PORT']}" in err
    assert f"http://127.0.0.1:{ports['KEYGATE_KEYSERVICE_PORT']}/dashboard" in err
    assert "alice@example.com / alice-password" in err


def test_demo_sh_stops_on_sigterm_to_its_own_pid():
    """A supervisor or `timeout` signals the script's PID only, not its process group: the demo
    must stop at once, and take Envoy and its upstream down with it."""
    ports = {n: free_port() for n in ("KEYGATE_PORT", "KEYGATE_ADMIN_PORT", "KEYGATE_UPSTREAM_PORT",
                                      "KEYGATE_KEYSERVICE_PORT")}
    p = demo_sh("evon", env={k: str(v) for k, v in ports.items()})
    try:
        def answered():
            assert p.poll() is None, p.stderr.read()
            try:
                return request(ports["KEYGATE_PORT"], "GET", "/organization", [("X-API-Key", "evon_demo_read_0001")])
            except OSError:
                return None
        wait_until(answered, 60, 0.1, "the demo to answer")
        p.send_signal(signal.SIGTERM)  # the script's PID alone
        assert p.wait(timeout=10) == 143
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate(timeout=30)

    def all_free():
        for port in ports.values():
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a listener, not TIME_WAIT
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
            finally:
                s.close()
        return True
    wait_until(all_free, 10, 0.1, "Envoy and the upstream to be gone")
