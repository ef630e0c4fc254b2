#!/usr/bin/env python3
"""The sample upstream: answers every request with JSON describing exactly what it received.

    python3 tests/services/echo.py [--port 8080]

Body: {"method", "path" (raw request target, byte for byte), "headers": [[name, value], ...]
(every header line in order, duplicates kept), "body_bytes"}.

For tests it also records, in the server (never in its answer): `seen`, every request whose
headers arrived, at once, before any of its body (an upstream that acts on headers alone sees
this much); and `received`, every request it answered, with its body and chunked trailers.
Paths under one of `early` (a server attribute) are answered on their headers alone, the body
left unread, as a handler that never reads one does.
"""
import argparse
import collections
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one write for headers, one for the body: no delayed-ACK stall

    def _body(self) -> tuple[bytes, list] | None:
        """The whole body and its trailers, as a framework reads it before a handler sees form or
        JSON fields; None when the client (Envoy) went away before it was complete."""
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            body = b""
            while True:
                line = self.rfile.readline(1024)
                if not line.endswith(b"\n"):
                    return None
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    trailers = []
                    while True:  # trailer lines up to the empty line that ends the message
                        line = self.rfile.readline(8192)
                        if not line.endswith(b"\n"):
                            return None
                        if line in (b"\r\n", b"\n"):
                            return body, trailers
                        k, _, v = line.decode("latin-1").partition(":")
                        trailers.append([k.strip().lower(), v.strip()])
                chunk = self.rfile.read(size + 2)
                if len(chunk) != size + 2:
                    return None
                body += chunk[:size]
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        return (body, []) if len(body) == length else None

    def _answer(self):
        headers = [[k.lower(), v] for k, v in self.headers.items()]
        self.server.seen.append({"method": self.command, "path": self.path, "headers": headers})
        if any(self.path.startswith(p) for p in self.server.early):
            body, trailers, self.close_connection = None, [], True
        else:
            got = self._body()
            if got is None:
                self.close_connection = True
                return
            body, trailers = got
        out = {
            "method": self.command,
            "path": self.path,
            "headers": headers,
            "body_bytes": len(body) if body is not None else None,
        }
        self.server.received.append(dict(out, body=body, trailers=trailers))
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
    srv.seen = collections.deque(maxlen=20000)
    srv.early = ()
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
