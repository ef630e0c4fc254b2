#!/usr/bin/env python3
"""The sample upstream: answers every request with JSON describing exactly what it received.

    python3 tests/services/echo.py [--port 8080]

Body: {"method", "path" (raw request target, byte for byte), "headers": [[name, value], ...]
(every header line in order, duplicates kept), "body_bytes"}.
"""
import argparse
import collections
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one write for headers, one for the body: no delayed-ACK stall

    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        out = {
            "method": self.command,
            "path": self.path,
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
            "body_bytes": len(body),
        }
        self.server.received.append(out)
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

    def __getattr__(self, name):  # any other method (post, PURGE, ...) is echoed too
        if name.startswith("do_"):
            return self._answer
        raise AttributeError(name)

    def log_message(self, fmt, *args):  # quiet: tests read bodies, not logs
        pass


def serve(port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    ThreadingHTTPServer.request_queue_size = 128
    srv = ThreadingHTTPServer((host, port), Echo)
    srv.daemon_threads = True
    # what it received, for tests that assert a request never reached the upstream
    srv.received = collections.deque(maxlen=20000)
    return srv


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8080)
    args = ap.parse_args()
    srv = serve(args.port)
    print(f"echo upstream on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
