"""The Istio example (envoy/istio/) cannot rot: its WasmPlugin's pluginConfig passes keygate's own
parser, the key service's cluster name matches its Service, the Dockerfile builds the image Istio
expects, and the configuration runs in a real Envoy the way istiod delivers it (VM id "", the
configuration as a JSON string, the key service behind a cluster named outbound|8080||FQDN).

Needs PyYAML (tests/requirements.txt) to read the manifests.
"""
from __future__ import annotations

import copy
import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from harness import ROOT, Envoy, KeyService
from keys import sha

ISTIO = ROOT / "envoy" / "istio"
CLUSTER = "outbound|8080||keys.keygate.svc.cluster.local"
PROBLEM = "urn:keygate:problem:"


def wasmplugin() -> dict:
    return yaml.safe_load((ISTIO / "wasmplugin.yaml").read_text())


def as_struct_json(v):
    """A YAML value as istiod hands it over: a protobuf Struct marshalled to JSON, so every number
    is a double (whole ones print without a fraction) and anything else YAML makes (a date, say)
    cannot be represented."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, float)):
        f = float(v)
        return int(f) if f.is_integer() and abs(f) < 1e21 else f
    if isinstance(v, list):
        return [as_struct_json(x) for x in v]
    if isinstance(v, dict):
        return {str(k): as_struct_json(x) for k, x in v.items()}
    raise TypeError(f"{type(v).__name__} is not a Struct value (quote it in the YAML): {v!r}")


def plugin_config_json() -> str:
    return json.dumps(as_struct_json(wasmplugin()["spec"]["pluginConfig"]), separators=(",", ":"))


@pytest.fixture(scope="session")
def keygate_check() -> Path:
    """target/debug/keygate-check, built (cargo is a no-op when it is up to date)."""
    subprocess.run(["cargo", "build", "--quiet", "--bin", "keygate-check"], cwd=ROOT, check=True)
    return ROOT / "target" / "debug" / "keygate-check"


# ------------------------------------------------------------------------------------------------
# The manifests
# ------------------------------------------------------------------------------------------------

def test_wasmplugin_resource():
    doc = wasmplugin()
    assert doc["apiVersion"] == "extensions.istio.io/v1alpha1" and doc["kind"] == "WasmPlugin"
    assert doc["metadata"]["name"] and doc["metadata"]["namespace"]
    spec = doc["spec"]
    assert spec["phase"] == "AUTHN"
    assert spec["failStrategy"] == "FAIL_CLOSE"  # FAIL_OPEN would skip authentication
    assert re.fullmatch(r"oci://[a-z0-9.-]+(:\d+)?/([a-z0-9._-]+/)*keygate:0\.1\.0", spec["url"]), spec["url"]
    assert spec["imagePullPolicy"] in ("IfNotPresent", "Always")
    labels = spec["selector"]["matchLabels"]
    assert labels and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
    assert spec["pluginName"] == "keygate"
    assert spec.get("match") == [{"mode": "SERVER"}]


def test_plugin_config_passes_keygate_check(keygate_check, tmp_path):
    f = tmp_path / "pluginConfig.json"
    f.write_text(plugin_config_json())
    r = subprocess.run([str(keygate_check), str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"key service: {CLUSTER})" in r.stdout, r.stdout
    assert "unknown config field" not in r.stderr, r.stderr
    assert r.stderr.strip() == "", r.stderr  # no warning of any kind


def test_plugin_config_is_istio_ready():
    pc = json.loads(plugin_config_json())
    ks = pc["key_service"]
    assert ks["cluster"] == CLUSTER and ks["authority"] == "keys.keygate.svc.cluster.local"
    assert ks.get("on_failure", "closed") == "closed"
    # VM id "" is shared by every WasmPlugin on the proxy: keygate's shared data needs its own prefix
    assert pc["shared_prefix"] and pc["shared_prefix"] != "keygate.v1"
    assert pc["credentials"].get("hide_from_upstream", True) is True


def test_cluster_name_is_the_services():
    docs = [d for d in yaml.safe_load_all((ISTIO / "serviceentry.yaml").read_text()) if d]
    [svc] = [d for d in docs if d["kind"] == "Service"]
    host = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    [port] = svc["spec"]["ports"]
    assert port["name"] == "http" or port.get("appProtocol") == "http"  # Istio must see HTTP
    assert f"outbound|{port['port']}||{host}" == CLUSTER
    pc = json.loads(plugin_config_json())
    assert pc["key_service"]["cluster"] == CLUSTER and pc["key_service"]["authority"] == host


def test_dockerfile_builds_the_compat_image():
    lines = [ln.strip() for ln in (ISTIO / "Dockerfile").read_text().splitlines()]
    instructions = [ln for ln in lines if ln and not ln.startswith("#")]
    assert instructions == ["FROM scratch", "COPY plugin.wasm ./plugin.wasm"]
    # the documented build puts the built module into the context under that name
    text = (ISTIO / "Dockerfile").read_text() + (ISTIO / "README.md").read_text()
    assert 'cp target/wasm32-wasip1/release/keygate.wasm "$ctx/plugin.wasm"' in text
    assert "oras" in text and "buildx" in text


# ------------------------------------------------------------------------------------------------
# The configuration in a real Envoy, shaped the way istiod delivers it
# ------------------------------------------------------------------------------------------------

class IstioShapedEnvoy(Envoy):
    """Envoy with keygate filters as istiod renders a WasmPlugin: no vm_id (""), root_id from
    pluginName, the pluginConfig as a JSON StringValue, Istio's resource-version environment
    variable, FAIL_CLOSE as FAIL_CLOSED, and the key service behind `outbound|8080||…`."""

    def __init__(self, plugins: list[tuple[str, str]], upstream_port: int, ks: KeyService):
        super().__init__(plugin_config={}, upstream_port=upstream_port, extra_clusters=[ks.cluster(CLUSTER)])
        self.plugins = plugins  # (WasmPlugin name, configuration JSON), in filter order

    def config(self) -> dict:
        cfg = super().config()
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        wasm, router = hcm["http_filters"]
        filters = []
        for name, conf in self.plugins:
            f = copy.deepcopy(wasm)
            pc = f["typed_config"]["config"]
            pc["name"] = f"shop.{name}"
            pc["root_id"] = "keygate"
            pc["vm_config"].pop("vm_id", None)
            pc["vm_config"]["environment_variables"] = {
                "key_values": {"ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "1"}}
            pc["failure_policy"] = "FAIL_CLOSED"
            pc["configuration"]["value"] = conf
            filters.append(f)
        hcm["http_filters"] = filters + [router]
        return cfg


@pytest.fixture(scope="module")
def keyservice():
    k = KeyService().start()  # --seed-demo: kgb_demo_acme_business_0001 (account acme, plan free)
    yield k
    k.stop()


@pytest.fixture(scope="module")
def started():
    envoys = []
    yield envoys
    for e in envoys:
        e.stop()


def test_istio_shaped_envoy_runs_the_plugin_config(upstream, keyservice, started):
    e = IstioShapedEnvoy([("keygate", plugin_config_json())], upstream.port, keyservice)
    started.append(e)
    e.start()
    configured = f"keygate: configured (0 embedded keys, 4 routes, key service: {CLUSTER})"
    assert configured in e.wait_for(e.logs, configured)
    calls = keyservice.verify_calls()
    for header in (("Authorization", "Bearer kgb_demo_acme_business_0001"),
                   ("X-API-Key", "kgb_demo_acme_business_0001")):
        r = e.req("GET", "/v1/orders/42", [header])
        assert r.status == 200, r.body
        got = r.json()
        names = [k for k, _ in got["headers"]]
        assert ["x-keygate-account", "acme"] in got["headers"] and "authorization" not in names
        assert "x-api-key" not in names
        assert r.header("x-ratelimit-limit") == "60"
        assert r.header("ratelimit-policy") == '"free";q=60;w=60'
    assert keyservice.verify_calls() >= calls + 1  # verified through the Istio-named cluster
    assert e.req("POST", "/v1/orders", [("X-API-Key", "kgb_demo_acme_business_0001")]).status == 200
    # a read-only key reads, and every other method needs the write scope (the WasmPlugin lists
    # the read methods, never the write ones)
    reader = "kgb_istio_reader_" + uuid.uuid4().hex
    keyservice.add_key(reader, "istio-reader", scopes=["read"])
    assert e.req("GET", "/v1/orders/42", [("X-API-Key", reader)]).status == 200
    for method in ("POST", "PUT", "PATCH", "DELETE", "PROPPATCH", "PURGE"):
        r = e.req(method, "/v1/orders/42", [("X-API-Key", reader)])
        assert r.status == 403 and r.json()["type"] == PROBLEM + "insufficient-scope", method
    r = e.req("GET", "/v1/orders/42", [("X-API-Key", "kgb_" + uuid.uuid4().hex)])
    assert r.status == 401 and r.json()["type"] == PROBLEM + "credential-invalid"
    r = e.req("GET", "/v1/orders/42")
    assert r.status == 401 and r.header("www-authenticate") == 'Bearer realm="orders-api"'
    assert e.req("GET", "/healthz").status == 200
    r = e.req("GET", "/admin/x", [("X-API-Key", "kgb_demo_acme_business_0001")])
    assert r.status == 403 and r.json()["type"] == PROBLEM + "route-closed"
    # fail closed when the key service cannot answer (on_failure: closed)
    keyservice.mode(verify="status:500")
    try:
        r = e.req("GET", "/v1/orders/42", [("X-API-Key", "kgb_" + uuid.uuid4().hex)])
        assert r.status == 503 and r.json()["type"] == PROBLEM + "key-service-unavailable"
    finally:
        keyservice.mode("ok", "ok")


def test_two_keygate_plugins_on_one_proxy_keep_their_own_config(upstream, keyservice, started):
    def conf(realm, header, secret):
        return json.dumps({"realm": realm, "shared_prefix": f"keygate.{realm}.v1",
                           "credentials": {"basic": False, "bearer": False, "query_param": False,
                                           "api_key_headers": [header]},
                           "keys": [{"id": realm, "sha256": sha(secret)}]})
    e = IstioShapedEnvoy([("gate-a", conf("a", "x-a-key", "secret-a")),
                          ("gate-b", conf("b", "x-b-key", "secret-b"))], upstream.port, keyservice)
    started.append(e)
    e.start()
    # the first filter must answer with its own realm when its key is missing
    r = e.req("GET", "/x", [("x-b-key", "secret-b")])
    assert r.status == 401 and r.header("www-authenticate") == 'APIKey realm="a"'
    # and both gates pass a request carrying both keys
    assert e.req("GET", "/x", [("x-a-key", "secret-a"), ("x-b-key", "secret-b")]).status == 200


# ------------------------------------------------------------------------------------------------
# The request history in Istio (history.yaml): the mesh's envoyOtelAls provider, a collector
# forwarding OTLP/HTTP to the key service, the Telemetry resource on the gated workload
# ------------------------------------------------------------------------------------------------

def history_docs() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all((ISTIO / "history.yaml").read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs) == 5, [d["kind"] for d in docs]
    return by_kind


def demo_history_line() -> str:
    cfg = yaml.safe_load((ROOT / "envoy" / "demo.yaml").read_text())
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    [otel] = [a for a in hcm["access_log"] if a["name"] == "envoy.access_loggers.open_telemetry"]
    return otel["typed_config"]["body"]["string_value"]


def test_history_recipe_wires_provider_collector_and_key_service():
    d = history_docs()
    [provider] = d["IstioOperator"]["spec"]["meshConfig"]["extensionProviders"]
    als = provider["envoyOtelAls"]
    # the provider's service is the collector's Service, on its OTLP/gRPC port
    svc = d["Service"]
    assert als["service"] == f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    [port] = svc["spec"]["ports"]
    assert als["port"] == port["port"] == 4317 and port["name"].startswith("grpc")
    # the records carry exactly the demo's line (the key service reads its fields by name)
    assert als["logFormat"]["text"] == demo_history_line()
    # the path and request id come from keygate's state (the credential replaced), never Envoy's
    assert "%REQ(:PATH)%" not in json.dumps(als) and "%PATH" not in als["logFormat"]["text"]
    assert "X-REQUEST-ID" not in als["logFormat"]["text"]
    # the Telemetry resource turns that provider on where the WasmPlugin runs, inbound only
    tel, plugin = d["Telemetry"], wasmplugin()
    assert tel["apiVersion"].startswith("telemetry.istio.io/")
    assert tel["metadata"]["namespace"] == plugin["metadata"]["namespace"]
    assert tel["spec"]["selector"] == plugin["spec"]["selector"]
    [logging] = tel["spec"]["accessLogging"]
    assert logging["providers"] == [{"name": provider["name"]}] and logging["match"] == {"mode": "SERVER"}
    # the collector: OTLP in, OTLP/HTTP (identity-encoded protobuf, with the ingest token) out to
    # the key service's Service (serviceentry.yaml) at /v1/logs; bounded memory
    col = yaml.safe_load(d["ConfigMap"]["data"]["config.yaml"])
    assert col["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(f":{port['port']}")
    [(name, exp)] = col["exporters"].items()
    assert name.startswith("otlphttp")
    host = CLUSTER.split("|")[3]
    assert exp["logs_endpoint"] == f"http://{host}:{CLUSTER.split('|')[1]}/v1/logs"
    assert exp["encoding"] == "proto" and exp["compression"] == "none"
    assert exp["headers"]["x-keyservice-ingest-token"] == "${env:KEYSERVICE_INGEST_TOKEN}"
    assert exp["sending_queue"]["queue_size"] > 0
    logs = col["service"]["pipelines"]["logs"]
    assert logs["receivers"] == ["otlp"] and logs["exporters"] == [name]
    assert "memory_limiter" in logs["processors"]
    [container] = d["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["KEYSERVICE_INGEST_TOKEN"]["valueFrom"]  # never in the manifest
    assert container["resources"]["limits"]["memory"]
    assert d["Deployment"]["spec"]["template"]["metadata"]["labels"] == svc["spec"]["selector"]


def test_history_recipe_format_is_what_the_key_service_stores(upstream):
    """The recipe's format as istiod writes it (its text the body of each record), in a real
    Envoy's OpenTelemetry logger, to the real key service: each request of a key is in its
    owner's history with its method, path (never the query) and status."""
    from test_history import KEYGATE, TOKEN, HistoryEnvoy, Owner, history_cluster, otel_log, wait_stored
    text = history_docs()["IstioOperator"]["spec"]["meshConfig"]["extensionProviders"][0]["envoyOtelAls"][
        "logFormat"]["text"]
    otel = otel_log()
    otel["typed_config"]["body"] = {"string_value": text}
    otel["typed_config"].pop("attributes")
    ks = KeyService(faults=False, extra_args=["--ingest-token", TOKEN]).start()
    e = HistoryEnvoy(KEYGATE, upstream.port, extra_clusters=[ks.cluster(), history_cluster(ks.port)], otel=otel)
    try:
        e.start()
        key = "kgb_demo_acme_business_0001"
        assert e.req("GET", "/v1/orders/7?token=" + key, [("X-API-Key", key)]).status == 200
        assert e.req("DELETE", "/v1/orders/8", [("X-API-Key", key)]).status == 200
        wait_stored(ks, 2)
        rows = Owner(ks, "alice@example.com", "alice-password").requests("bk_demo_acme")
        assert sorted((r["method"], r["path"], r["status"]) for r in rows) == [
            ("DELETE", "/v1/orders/8", "200"), ("GET", "/v1/orders/7", "200")]
        assert all(r["total"].isdigit() for r in rows)
    finally:
        e.stop()
        ks.stop()
