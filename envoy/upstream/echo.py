#!/usr/bin/env python3
"""The demo's upstream: answers every request with JSON describing exactly what it received.

    python3 envoy/upstream/echo.py [--port 8080]

Body: {"method", "path" (raw request target, byte for byte), "headers": [[name, value], ...]
(every header line in order, duplicates kept), "body_bytes"}. Put it behind keygate to see what
an API receives: the identity headers keygate sets, and that the credential never arrives.
Standard library only; it keeps nothing between requests.
"""
import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one write for headers, one for the body: no delayed-ACK stall

    # Hooks for a subclass (the tests' recording upstream); the demo's do nothing.
    def headers_arrived(self, entry: dict) -> None:
        """A request's headers are in (its body may still be on its way)."""

    def answered(self, entry: dict) -> None:
        """A request was read whole (entry has its `body` and `trailers`) and is being answered."""

    def answers_on_headers(self) -> bool:
        """Answer without reading the body, as a handler that never reads one does."""
        return False

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
        self.headers_arrived({"method": self.command, "path": self.path, "headers": headers})
        if self.answers_on_headers():
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
        self.answered(dict(out, body=body, trailers=trailers))
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

    def log_message(self, fmt, *args):  # quiet: the answers say it all
        pass


def serve(port: int, host: str = "127.0.0.1", handler: type = Echo) -> ThreadingHTTPServer:
    ThreadingHTTPServer.request_queue_size = 128
    srv = ThreadingHTTPServer((host, port), handler)
    srv.daemon_threads = True
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
