"""Every configuration keygate ships follows the safe patterns, read from the files themselves:

- each keygate configuration in them (Envoy YAML, Istio WasmPlugins) passes `keygate-check
  --strict`: no unknown field, no rule that lists write methods and lets the others through, no
  key naming an undeclared plan;
- each Envoy connection manager that runs keygate normalises paths, refuses encoded slashes and
  underscore header names, and takes the client address from the TCP peer;
- in a real Envoy, a read-only key of each shipped configuration that has one is refused every
  write method (including ones nobody lists, and lower case over HTTP/2), and the upstream
  receives none of them.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from attack_clients import request1, request2
from harness import ROOT, Envoy, Upstream
from keys import sha

ENVOY_CONFIGS = sorted(p for p in (ROOT / "envoy").rglob("*.yaml")
                       if "static_resources" in p.read_text())
ISTIO_PLUGINS = sorted(p for p in (ROOT / "envoy").rglob("*.yaml") if "kind: WasmPlugin" in p.read_text())
WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


@pytest.fixture(scope="module")
def keygate_check() -> Path:
    subprocess.run(["cargo", "build", "--quiet", "--bin", "keygate-check"], cwd=ROOT, check=True)
    return ROOT / "target" / "debug" / "keygate-check"


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def test_every_shipped_config_is_found():
    names = {rel(p) for p in ENVOY_CONFIGS + ISTIO_PLUGINS}
    assert {"envoy/demo.yaml", "envoy/demo-remote.yaml", "envoy/fleet/demo-fleet.yaml",
            "envoy/istio/wasmplugin.yaml", "envoy/fleet/istio.yaml"} <= names
    assert {f"envoy/profiles/{n}.yaml" for n in ("evon", "eventlyte", "eventstaff", "eventicat", "astalty")} <= names


@pytest.mark.parametrize("path", ENVOY_CONFIGS + ISTIO_PLUGINS, ids=rel)
def test_shipped_config_passes_keygate_check_strict(keygate_check, path):
    r = subprocess.run([str(keygate_check), "--strict", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == "", r.stderr  # not even a warning
    assert ": ok (" in r.stdout


def connection_managers(doc):
    """Every HttpConnectionManager of an Envoy config whose filters include keygate."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if str(node.get("@type", "")).endswith("HttpConnectionManager") and any(
                    f.get("typed_config", {}).get("@type") == WASM for f in node.get("http_filters", [])):
                found.append(node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(doc)
    return found


@pytest.mark.parametrize("path", ENVOY_CONFIGS, ids=rel)
def test_shipped_envoy_config_has_the_safe_connection_manager(path):
    hcms = connection_managers(yaml.safe_load(path.read_text()))
    assert hcms, "no connection manager runs keygate"
    for h in hcms:
        assert h.get("normalize_path") is True
        assert h.get("merge_slashes") is True
        assert h.get("path_with_escaped_slashes_action") == "REJECT_REQUEST"
        assert h.get("common_http_protocol_options", {}).get("headers_with_underscores_action") == "REJECT_REQUEST"
        assert h.get("use_remote_address") is True
        assert h.get("xff_num_trusted_hops", 0) == 0


def test_istio_hardening_refuses_what_a_wasmplugin_cannot():
    docs = list(yaml.safe_load_all((ROOT / "envoy/istio/hardening.yaml").read_text()))
    text = (ROOT / "envoy/istio/hardening.yaml").read_text()
    assert "normalization: MERGE_SLASHES" in text and "numTrustedProxies: 0" in text
    patch = docs[0]["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]
    assert patch["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
    assert patch["common_http_protocol_options"]["headers_with_underscores_action"] == "REJECT_REQUEST"


def plugin_config(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    for h in connection_managers(doc):
        for f in h["http_filters"]:
            # keygate's filter, not the excerpt filter (keygate.excerpt) a config records bodies with
            if f.get("typed_config", {}).get("@type") == WASM and f.get("name") != "keygate.excerpt":
                return json.loads(f["typed_config"]["config"]["configuration"]["value"])
    raise AssertionError(f"no keygate filter in {path}")


def wasmplugin_config(path: Path) -> dict:
    for d in yaml.safe_load_all(path.read_text()):
        if d and d.get("kind") == "WasmPlugin":
            return d["spec"]["pluginConfig"]
    raise AssertionError(f"no WasmPlugin in {path}")


# (config, a read-only key it declares as its credential header, a path its write rule covers)
READ_ONLY = [
    ("envoy/demo.yaml", ("x-api-key", "evon-demo-key-0001"), "/v1/objects/events"),
    ("envoy/fleet/demo-fleet.yaml", ("x-api-key", "evon-demo-key-0001"), "/v1/objects/events"),
    ("envoy/profiles/evon.yaml", ("x-api-key", "evon_demo_read_0001"), "/organization"),
    ("envoy/profiles/astalty.yaml", ("authorization", "Bearer ast_demo_viewer_0002"), "/public/v1/participants"),
]
WRITES = ["POST", "PUT", "PATCH", "DELETE", "PROPPATCH", "PURGE", "MKCOL"]


@pytest.fixture(scope="module")
def rec():
    u = Upstream()
    yield u
    u.stop()


@pytest.mark.parametrize("path,cred,target", READ_ONLY, ids=[c for c, _, _ in READ_ONLY])
def test_a_read_only_key_of_a_shipped_config_writes_nothing(rec, path, cred, target):
    cfg = plugin_config(ROOT / path)
    if "fleet" in cfg:
        # scopes are checked before any engine call; the engine's cluster is not needed here
        cfg["fleet"]["on_failure"] = "local"
    e = Envoy(cfg, rec.port, concurrency=1).start()
    try:
        before = len(rec.received())
        for method in WRITES:
            for proto, m in ((1, method), (2, method), (2, method.lower())):
                send = request1 if proto == 1 else request2
                a = send(e.port, m, target, [cred])
                assert a.status == 403, (path, proto, m, a.status, a.body[:200])
        assert len(rec.received()) == before, "a write reached the upstream"
        ok = request1(e.port, "GET", target, [cred])
        assert ok.status == 200, ok.body[:200]
    finally:
        e.stop()


def test_the_istio_wasmplugin_refuses_writes_with_a_read_only_key(rec):
    cfg = wasmplugin_config(ROOT / "envoy/istio/wasmplugin.yaml")
    # the same rules over the embedded store instead of the mesh's key service
    cfg = dict(cfg)
    cfg.pop("key_service")
    cfg["keys"] = [{"id": "reader", "sha256": sha("istio-reader-0001"), "account": "shop", "scopes": ["read"],
                    **({"plan": next(iter(cfg["rate_limit"]["plans"]))} if cfg.get("rate_limit", {}).get("plans") else {})}]
    e = Envoy(cfg, rec.port, concurrency=1).start()
    try:
        before = len(rec.received())
        for method in WRITES:
            a = request2(e.port, method, "/v1/orders/1", [("x-api-key", "istio-reader-0001")])
            assert a.status == 403, (method, a.status)
        assert len(rec.received()) == before
        assert request1(e.port, "GET", "/v1/orders/1", [("x-api-key", "istio-reader-0001")]).status == 200
    finally:
        e.stop()
