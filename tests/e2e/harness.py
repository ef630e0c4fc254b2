"""End-to-end harness: a real Envoy loading the built keygate.wasm, real services on loopback.

Nothing here stands in for Envoy. If Envoy cannot be found or installed, `Envoy.start` raises and
the tests fail; they never skip.
"""
from __future__ import annotations

import http.client
import json
import os
import shlex
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# KEYGATE_WASM: run the suite against another build (e.g. an older commit's, to see a test fail)
WASM = Path(os.environ.get("KEYGATE_WASM") or ROOT / "target" / "wasm32-wasip1" / "release" / "keygate.wasm")

# keygate's excerpt filter (envoy/excerpt; built by tests/run.sh): body excerpts for the history
EXCERPT_WASM = Path(os.environ.get("KEYGATE_EXCERPT_WASM") or
                    ROOT / "target" / "excerpt" / "wasm32-wasip1" / "release" / "keygate_excerpt.wasm")

# Envoy's tag extraction turns keygate's flat metric names into labelled Prometheus series.
STATS_TAGS = [
    {"tag_name": "decision", "regex": r"^wasmcustom\.keygate\.requests(\.(.+))$"},
    {"tag_name": "plan", "regex": r"^wasmcustom\.keygate\.ratelimit\.rejected(\.(.+))$"},
    {"tag_name": "kind", "regex": r"^wasmcustom\.keygate\.keyservice\.failure(\.(.+))$"},
]

ACCESS_LOG_FORMAT = (
    "%FILTER_STATE(wasm.keygate:PLAIN)% "
    "status=%RESPONSE_CODE% method=%REQ(:METHOD)% path=%PATH(NQ)%\n"
)


def envoy_command() -> list[str]:
    out = subprocess.run([str(ROOT / "envoy" / "find-envoy.sh")], check=True, capture_output=True, text=True)
    return shlex.split(out.stdout.strip())


# Work directories made by this process (Envoy configs and logs, key-service databases): the
# pytest session removes them when every test passed, and keeps them for a look when one failed.
CREATED_DIRS: list[Path] = []


def stop_process(proc: subprocess.Popen | None, grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until(pred: Callable[[], Any], timeout: float = 5, interval: float = 0.02,
               message: str | Callable[[Any], str] | None = None) -> Any:
    """Polls `pred()` every `interval` s until it returns something truthy, and returns that.
    After `timeout` s the test fails: AssertionError "timed out after T s waiting for MESSAGE"
    (`message` may be a function of pred's last value, e.g. to show the state it was in). `pred`
    may raise to give up at once (a process that exited)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message(value) if callable(message) else message
            raise AssertionError(f"timed out after {timeout:g} s waiting for "
                                 f"{what or getattr(pred, '__name__', 'a condition')}")
        time.sleep(interval)  # the poll interval (the only sleep in the harness)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Resp:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]

    def json(self):
        return json.loads(self.body)


def request(port: int, method: str, path: str, headers=(), body: bytes | None = None, timeout: float = 10) -> Resp:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if not any(k.lower() == "host" for k, _ in headers):
            conn.putheader("Host", "api.test")
        for k, v in headers:
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        data = r.read()
        return Resp(r.status, [(k.lower(), v) for k, v in r.getheaders()], data)
    finally:
        conn.close()


def cluster(name: str, port: int, timeout: str = "5s", http1: dict | None = None) -> dict:
    c = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}],
        },
    }
    if http1 is not None:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": http1},
            }
        }
    return c


@dataclass
class Envoy:
    plugin_config: dict | str
    upstream_port: int
    concurrency: int = 2
    extra_clusters: list = field(default_factory=list)
    # (prefix, cluster) routes placed before the catch-all route to the upstream
    routes: list = field(default_factory=list)
    port: int = 0
    admin_port: int = 0
    # HTTP connection manager fields to set (a value of None removes the field)
    hcm: dict = field(default_factory=dict)
    # HTTP filters placed before keygate, and between keygate and the router
    filters_before: list = field(default_factory=list)
    filters_after: list = field(default_factory=list)
    # the upstream cluster's HTTP/1.1 options (e.g. {"enable_trailers": True})
    upstream_http1: dict | None = None
    workdir: Path | None = None
    proc: subprocess.Popen | None = None

    def config(self) -> dict:
        cfg = self._config()
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        for k, v in self.hcm.items():
            if v is None:
                hcm.pop(k, None)
            else:
                hcm[k] = v
        return cfg

    def _config(self) -> dict:
        conf = self.plugin_config if isinstance(self.plugin_config, str) else json.dumps(self.plugin_config)
        return {
            "static_resources": {
                "listeners": [{
                    "name": "main",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": self.port}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "ingress",
                            "normalize_path": True,
                            "merge_slashes": True,
                            "access_log": [{
                                "name": "envoy.access_loggers.file",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                                    "path": str(self.access_log_path),
                                    "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
                                },
                            }],
                            "route_config": {"virtual_hosts": [{
                                "name": "all", "domains": ["*"],
                                "routes": [{"match": {"prefix": p}, "route": {"cluster": c}} for p, c in self.routes]
                                + [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                            }]},
                            "http_filters": self.filters_before + [
                                {
                                    "name": "envoy.filters.http.wasm",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                                        "config": {
                                            "name": "keygate",
                                            "root_id": "keygate",
                                            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": conf},
                                            "vm_config": {
                                                "vm_id": "keygate",
                                                "runtime": "envoy.wasm.runtime.v8",
                                                "code": {"local": {"filename": str(WASM)}},
                                            },
                                        },
                                    },
                                },
                            ] + self.filters_after + [
                                {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                            ],
                        },
                    }]}],
                }],
                "clusters": [cluster("upstream", self.upstream_port, http1=self.upstream_http1)] + self.extra_clusters,
            },
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}},
            "stats_config": {"stats_tags": STATS_TAGS},
        }

    @property
    def access_log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "access.log"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "envoy.log"

    def start(self, wait_ready: bool = True, log_level: str = "info", component_levels: str = "") -> "Envoy":
        if not WASM.exists():
            raise RuntimeError(f"{WASM} is missing: build it with envoy/build-wasm.sh")
        self.workdir = Path(tempfile.mkdtemp(prefix="keygate-e2e-"))
        CREATED_DIRS.append(self.workdir)
        self.port = self.port or free_port()
        self.admin_port = self.admin_port or free_port()
        cfg = self.workdir / "envoy.json"
        cfg.write_text(json.dumps(self.config(), indent=1))
        cmd = envoy_command() + [
            "-c", str(cfg), "--concurrency", str(self.concurrency), "--disable-hot-restart",
            "--log-path", str(self.log_path), "-l", log_level, "--file-flush-interval-msec", "100",
        ]
        if component_levels:
            cmd += ["--component-log-level", component_levels]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as r:
                    if r.status == 200:
                        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                            return True
            except OSError:
                pass
            return False
        wait_until(ready, timeout, 0.05, lambda _: f"envoy to be ready:\n{self.logs()[-3000:]}")

    def stop(self) -> None:
        stop_process(self.proc, grace=10)

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, what, *needles: str, timeout: float = 5) -> str:
        """Polls `what()` (logs or access_log, flushed every 100 ms) until it contains every
        needle; returns the text. Fails the test when one is still missing after `timeout` s."""
        def found() -> str | None:
            text = what()
            return text if all(n in text for n in needles) else None
        return wait_until(found, timeout, 0.05, lambda _: f"{[n for n in needles if n not in what()]} "
                          f"in {getattr(what, '__name__', 'the text')}")

    def access_log(self) -> str:
        try:
            return self.access_log_path.read_text(errors="replace")
        except OSError:
            return ""

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
            return r.read().decode(errors="replace")

    def prometheus(self, *needles: str, timeout: float = 5) -> str:
        """/stats/prometheus once it contains every needle (e.g. `'keygate_requests{decision="allowed"} 3\n'`):
        keygate batches its per-request counts per worker and adds them to Envoy's counters on
        the worker's tick (at least every second), all of a worker's counts at once. So to see
        every count of some requests, wait for counts that each worker that served one of them
        must have flushed (e.g. the decisions' totals)."""
        assert needles, "say what to wait for"

        def text() -> str | None:
            t = self.admin("/stats/prometheus")
            return t if all(n in t for n in needles) else None
        return wait_until(text, timeout, 0.05, lambda _: "{} in /stats/prometheus:\n{}".format(
            [n for n in needles if n not in self.admin("/stats/prometheus")],
            "".join(l + "\n" for l in self.admin("/stats/prometheus").splitlines() if l.startswith("keygate_"))))

    def wait_feed_polled(self, timeout: float = 5) -> "Envoy":
        """Waits for keygate's first revocation-feed poll: it caches valid verdicts only then."""
        wait_until(lambda: "keygate.revocations.polls: " in self.admin("/stats?filter=keygate.revocations.polls"),
                   timeout, message="keygate's first poll of the revocation feed")
        return self

    def req(self, method: str, path: str, headers=(), body: bytes | None = None, timeout: float = 10) -> Resp:
        return request(self.port, method, path, headers, body, timeout)


class Upstream:
    """The echo upstream in a thread of the test process: a real HTTP server on loopback."""

    def __init__(self):
        import sys
        sys.path.insert(0, str(ROOT / "tests" / "services"))
        import echo  # noqa: E402

        self.port = free_port()
        self.srv = echo.serve(self.port)
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def received(self) -> list[dict]:
        """Every request this upstream answered so far: {"method", "path", "headers", "body_bytes",
        "body", "trailers"}."""
        return list(self.srv.received)

    def seen(self) -> list[dict]:
        """Every request whose headers reached this upstream, body or not: {"method", "path",
        "headers"}."""
        return list(self.srv.seen)

    def clear(self) -> None:
        self.srv.received.clear()
        self.srv.seen.clear()

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


# KEYGATE_KEYSERVICE_BIN: run the suite against another build of the key service (as KEYGATE_WASM)
KEY_SERVICE_BIN = Path(os.environ.get("KEYGATE_KEYSERVICE_BIN") or ROOT / "target" / "release" / "keyservice")
FAULT_PROXY = ROOT / "tests" / "services" / "faultproxy.py"


def key_service_bin() -> Path:
    """The key service's binary (envoy/keyservice), built by tests/run.sh
    (`cargo build --release -p keyservice`)."""
    if not KEY_SERVICE_BIN.exists():
        raise RuntimeError(f"{KEY_SERVICE_BIN} is missing: build it with `cargo build --release -p keyservice`")
    return KEY_SERVICE_BIN


def wait_listening(proc: subprocess.Popen, log: Path, what: str, offset: int = 0, timeout: float = 15) -> int:
    """The port from a process's "listening on http://127.0.0.1:PORT" line in `log` (past byte
    `offset`: a restarted process appends to the log of the one before)."""
    import re

    def listening():
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        m = re.search(rf"{what} listening on http://127\.0\.0\.1:(\d+)", text)
        if m:
            return int(m.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}:\n{log.read_text(errors='replace')}")
        return None
    return wait_until(listening, timeout, 0.02, lambda _: f"{what} to listen:\n{log.read_text(errors='replace')}")


class KeyService:
    """The key service (envoy/keyservice, the Rust binary) as a real process on loopback with an
    SQLite database (or `db`, e.g. a postgres:// URL): by default behind the test-only fault proxy
    (tests/services/faultproxy.py: fault modes and call counters); `faults=False` runs the service
    alone, as operators do, where `mode()` and the call counts do not exist. `port` is where
    keygate's cluster points either way."""

    ADMIN_TOKEN = "e2e-admin-token"

    def __init__(self, seed_demo: bool = True, faults: bool = True, db: str | None = None,
                 extra_args: list[str] | None = None):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="keygate-ks-"))
        CREATED_DIRS.append(self.dir)
        self.db = db or str(self.dir / "keys.sqlite")
        self.seed_demo = seed_demo
        self.faults = faults
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen | None = None
        self.proxy: subprocess.Popen | None = None
        self.service_port = 0

    def start(self) -> "KeyService":
        import sys
        log = self.dir / "ks.log"
        cmd = [str(key_service_bin()), "--db", self.db, "serve",
               "--port", "0" if self.faults else str(self.port), *self.extra_args]
        if self.seed_demo:
            cmd.append("--seed-demo")
        env = {**os.environ, "KEYSERVICE_ADMIN_TOKEN": self.ADMIN_TOKEN}
        offset = log.stat().st_size if log.exists() else 0
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "ab"), env=env)
        self.service_port = wait_listening(self.proc, log, "keyservice", offset)
        if self.faults:
            self.proxy = subprocess.Popen(
                [sys.executable, str(FAULT_PROXY), "--port", str(self.port),
                 "--backend", f"127.0.0.1:{self.service_port}", "--admin-token", self.ADMIN_TOKEN],
                stdout=subprocess.DEVNULL, stderr=open(log, "ab"))
            wait_listening(self.proxy, log, "faultproxy", offset)
        return self

    def stop(self) -> None:
        stop_process(self.proxy, grace=5)
        stop_process(self.proc, grace=5)

    def log(self) -> str:
        """What the service and the fault proxy wrote to stderr (e.g. "late verdict decided" under
        the late: mode)."""
        return (self.dir / "ks.log").read_text(errors="replace")

    def admin(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"x-admin-token": self.ADMIN_TOKEN, "content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return json.loads(raw) if raw else {}

    def revocation_calls(self) -> int:
        return int(self.admin("GET", "/admin/stats")["revocation_calls"])

    def verify_calls(self) -> int:
        return int(self.admin("GET", "/admin/stats")["verify_calls"])

    def mode(self, verify: str = "ok", revocations: str = "ok") -> None:
        self.admin("POST", "/admin/mode", {"verify": verify, "revocations": revocations})

    def add_key(self, secret: str, key_id: str, **kw) -> dict:
        body = {"key": secret, "id": key_id, "kind": "business", "account": "acme", "plan": "free",
                "user": None, "scopes": ["read"], "expires_at": None, "ratelimit": None, "resources": {}}
        body.update(kw)
        return self.admin("POST", "/admin/keys", body)

    def update_key(self, key_id: str, **changes) -> dict:
        """Changes a stored key in place (`plan`, `account`, `subject`, `ratelimit`)."""
        return self.admin("POST", "/admin/update-key", {"id": key_id, **changes})

    def revoke(self, key_id: str) -> None:
        self.admin("POST", "/admin/revoke", {"id": key_id})

    def cluster(self, name: str = "keyservice") -> dict:
        return cluster(name, self.port)


RLS_ENGINE = ROOT / "target" / "rls-engine" / "release" / "rls-engine"


def grpc_cluster(name: str, port: int) -> dict:
    """A cluster that speaks HTTP/2 to its endpoint (gRPC), e.g. a rate-limit engine."""
    c = cluster(name, port)
    c["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    return c


class RlsEngine:
    """The test rate-limit engine (tests/rls-engine: Envoy's rate-limit service API over the
    `limitador` library) as a real process on loopback. Built by tests/run.sh."""

    def __init__(self, limits_yaml: str, delay_ms: int = 0, error: bool = False, port: int = 0,
                 limitador_style: bool = False):
        # faults (`fault()`): read by the engine from this file on every call
        if not RLS_ENGINE.exists():
            raise RuntimeError(f"{RLS_ENGINE} is missing: build it with tests/rls-engine/build.sh")
        self.dir = Path(tempfile.mkdtemp(prefix="keygate-rls-"))
        CREATED_DIRS.append(self.dir)
        self.limits = self.dir / "limits.yaml"
        self.limits.write_text(limits_yaml)
        self.port = port or free_port()
        self.delay_ms, self.error = delay_ms, error
        # answer as limitador-server --rate-limit-headers DRAFT_VERSION_03: headers, no statuses
        self.limitador_style = limitador_style
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "engine.log"
        self.faults = self.dir / "faults.yaml"
        self.start()

    def start(self, delay_ms: int | None = None, error: bool | None = None) -> "RlsEngine":
        if delay_ms is not None:
            self.delay_ms = delay_ms
        if error is not None:
            self.error = error
        cmd = [str(RLS_ENGINE), "--limits", str(self.limits), "--addr", f"127.0.0.1:{self.port}",
               "--delay-ms", str(self.delay_ms)] + (["--error"] if self.error else []) \
            + (["--rate-limit-headers"] if self.limitador_style else []) \
            + ["--faults", str(self.faults)]
        out = open(self.log, "a")
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)

        def listening() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rls-engine exited:\n{self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False
        wait_until(listening, 10, 0.05, "rls-engine to listen")
        return self

    def stop(self) -> None:
        stop_process(self.proc, grace=5)

    def fault(self, **faults) -> None:
        """Makes every later answer wrong (tests/rls-engine `--faults`): `reset_s`, `remaining_add`,
        `limit`, `over_limit`, `delay_ms`, `plan` (only that plan's descriptors). No argument:
        the engine answers truthfully again."""
        tmp = self.faults.with_suffix(".tmp")
        tmp.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in faults.items()))
        os.replace(tmp, self.faults)

    def calls(self) -> list[str]:
        """Every ShouldRateLimit the engine answered (one line each)."""
        try:
            return [l for l in self.log.read_text().splitlines() if l.startswith("call ")]
        except OSError:
            return []
