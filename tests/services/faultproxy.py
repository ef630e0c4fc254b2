#!/usr/bin/env python3
"""A test-only fault proxy in front of the real key service (envoy/keyservice): it forwards every
request unchanged, counts the calls to the two contract endpoints and, on request, misbehaves on
them. For the e2e tests; never for operators (the service has none of this).

    python3 tests/services/faultproxy.py --port 8081 --backend 127.0.0.1:18081 --admin-token TOKEN

Its own endpoints (header ``x-admin-token`` required, else 403; everything else is forwarded):

* ``GET /admin/stats``, ``POST /admin/reset-stats``: ``{"verify_calls", "revocation_calls"}``,
  every call to the endpoint counted, whatever its mode or outcome.
* ``GET|POST /admin/mode`` ``{"verify": MODE, "revocations": MODE}`` (either or both), MODE one of
  ``ok``; ``slow:S`` (wait S seconds, then forward); ``late:S`` (verify: forward at once, so the
  service decides now, then wait S seconds before passing the verdict on, so a revocation can
  happen while it is on its way; "late verdict decided (CODE)" goes to stderr);
  ``status:NNN`` (that status, a small JSON body); ``garbage`` (200, not JSON); ``huge`` (200, a
  5 MiB JSON body); ``reset`` (a TCP reset, no answer); ``anyuser`` (verify: the Basic user is
  dropped before forwarding, so a key matches whatever user, as a service the contract allows may).
"""
from __future__ import annotations

import argparse
import hmac
import http.client
import json
import re
import signal
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HUGE_BODY_BYTES = 5 * 1024 * 1024
MAX_BODY_BYTES = 1 << 20
FAULT_RE = re.compile(r"ok|garbage|huge|reset|anyuser|(slow|late):\d{1,3}(\.\d{1,3})?|status:[2-5]\d\d")
COUNTED = {("POST", "/v1/keys/verify"): "verify", ("GET", "/v1/keys/revocations"): "revocations"}
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length",
       "proxy-connection"}
LOCAL = {"/admin/stats": {"GET"}, "/admin/reset-stats": {"POST"}, "/admin/mode": {"GET", "POST"}}


class BadRequest(Exception):
    pass


def check_fault_mode(mode: Any) -> str:
    if not isinstance(mode, str) or not FAULT_RE.fullmatch(mode):
        raise BadRequest("mode must be ok, slow:SECONDS, late:SECONDS, status:NNN, garbage, huge, reset "
                         "or anyuser")
    if mode.startswith(("slow:", "late:")) and float(mode[5:]) > 120:
        raise BadRequest("slow/late: at most 120 seconds")
    if mode.startswith("status:") and int(mode[7:]) in (204, 205, 304):
        raise BadRequest("status: a status that carries a body, please")
    return mode


class Proxy(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], backend: tuple[str, int], admin_token: str) -> None:
        super().__init__(address, Handler)
        self.backend = backend
        self.admin_token = admin_token
        self.lock = threading.Lock()
        self.stats = {"verify_calls": 0, "revocation_calls": 0}
        self.modes = {"verify": "ok", "revocations": "ok"}
        self.local = threading.local()

    def count(self, endpoint: str) -> None:
        with self.lock:
            self.stats["verify_calls" if endpoint == "verify" else "revocation_calls"] += 1

    def mode(self, endpoint: str) -> str:
        with self.lock:
            return self.modes[endpoint]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"
    server_version = "faultproxy"
    disable_nagle_algorithm = True
    server: Proxy

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    # -- plumbing ------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers or []:
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _problem(self, status: int, slug: str, detail: str) -> None:
        body = json.dumps({"type": f"urn:keyservice:problem:{slug}", "title": slug, "status": status,
                           "detail": detail}).encode()
        self._send(status, body, "application/problem+json")

    def _read_body(self) -> bytes:
        if (self.headers.get("Transfer-Encoding") or "").strip().lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline(1024).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(1024)
                if len(out) > MAX_BODY_BYTES:
                    raise BadRequest("body too large")
        n = int(self.headers.get("Content-Length") or 0)
        if n < 0 or n > MAX_BODY_BYTES:
            raise BadRequest("bad Content-Length")
        return self.rfile.read(n)

    def _backend(self) -> http.client.HTTPConnection:
        conn = getattr(self.server.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(*self.server.backend, timeout=150)
            self.server.local.conn = conn
        return conn

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP]
        for attempt in (0, 1):
            conn = self._backend()
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in headers:
                    conn.putheader(k, v)
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
                r = conn.getresponse()
                data = r.read()
                return r.status, [(k, v) for k, v in r.getheaders() if k.lower() not in HOP], data
            except (OSError, http.client.HTTPException):
                conn.close()
                self.server.local.conn = None
                if attempt:
                    raise
        raise OSError("unreachable")

    def _relay(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in ("server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    # -- requests ------------------------------------------------------------------------------

    def _handle(self) -> None:
        path = urlsplit(self.path).path or "/"
        if len(path) > 1:
            path = path.rstrip("/") or "/"
        endpoint = COUNTED.get((self.command, path))
        if endpoint:
            self.server.count(endpoint)  # before anything else: every call is counted
        try:
            body = self._read_body()
            if path in LOCAL:
                self._local(path, body)
                return
            mode = self.server.mode(endpoint) if endpoint else "ok"
            if mode.startswith("slow:"):
                time.sleep(float(mode[5:]))
            elif mode.startswith("status:"):
                code = int(mode[7:])
                self._send(code, json.dumps({"error": f"injected status {code}"}).encode())
                return
            elif mode == "garbage":
                self._send(200, b"<html>this is not JSON {")
                return
            elif mode == "huge":
                self._send_huge()
                return
            elif mode == "reset":
                self._hang_up()
                return
            elif mode == "anyuser":
                body = self._without_user(body)
            status, headers, data = self._forward(body)
            if mode.startswith("late:"):
                try:
                    code = json.loads(data).get("code")
                except (ValueError, AttributeError):
                    code = None
                sys.stderr.write(f"keyservice: late verdict decided ({code})\n")
                sys.stderr.flush()
                time.sleep(float(mode[5:]))
            self._relay(status, headers, data)
        except BadRequest as e:
            self.close_connection = True
            self._problem(400, "bad-request", str(e))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except (OSError, http.client.HTTPException) as e:
            self.close_connection = True
            try:
                self._send(502, json.dumps({"error": f"fault proxy: backend failed: {e}"}).encode())
            except OSError:
                pass

    @staticmethod
    def _without_user(body: bytes) -> bytes:
        try:
            obj = json.loads(body)
        except ValueError:
            return body
        if isinstance(obj, dict) and "user" in obj:
            obj["user"] = None
            return json.dumps(obj).encode()
        return body

    def _local(self, path: str, body: bytes) -> None:
        token = (self.headers.get("x-admin-token") or "").encode()
        if not hmac.compare_digest(token, self.server.admin_token.encode()):
            self._problem(403, "forbidden", "a valid x-admin-token header is required")
            return
        if self.command not in LOCAL[path]:
            self._problem(405, "method-not-allowed", f"{self.command} is not allowed here")
            return
        srv = self.server
        if path == "/admin/stats":
            with srv.lock:
                self._send(200, json.dumps(srv.stats).encode())
        elif path == "/admin/reset-stats":
            with srv.lock:
                srv.stats = {"verify_calls": 0, "revocation_calls": 0}
                self._send(200, json.dumps(srv.stats).encode())
        elif self.command == "GET":
            with srv.lock:
                self._send(200, json.dumps(srv.modes).encode())
        else:
            try:
                req = json.loads(body or b"null")
            except ValueError:
                raise BadRequest("the body is not valid JSON") from None
            if not isinstance(req, dict) or not req or set(req) - {"verify", "revocations"}:
                raise BadRequest("give `verify` and/or `revocations`, nothing else")
            modes = {k: check_fault_mode(v) for k, v in req.items()}
            with srv.lock:
                srv.modes.update(modes)
                self._send(200, json.dumps(srv.modes).encode())

    def _send_huge(self) -> None:
        head, tail = b'{"padding":"', b'"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(HUGE_BODY_BYTES))
        self.end_headers()
        self.wfile.write(head)
        left = HUGE_BODY_BYTES - len(head) - len(tail)
        piece = b"x" * 65536
        while left > 0:
            n = min(left, len(piece))
            self.wfile.write(piece[:n])
            left -= n
        self.wfile.write(tail)

    def _hang_up(self) -> None:
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--backend", required=True, help="HOST:PORT of the real key service")
    ap.add_argument("--admin-token", required=True)
    args = ap.parse_args()
    host, _, port = args.backend.rpartition(":")
    srv = Proxy((args.host, args.port), (host, int(port)), args.admin_token)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"faultproxy listening on http://{args.host}:{srv.server_port}", file=sys.stderr, flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
