#!/usr/bin/env python3
"""The tests' recording upstream: the demo's echo upstream (envoy/upstream/echo.py), answering
the same way, that also records, in the server (never in its answer): `seen`, every request whose
headers arrived, at once, before any of its body (an upstream that acts on headers alone sees
this much); and `received`, every request it answered, with its body and chunked trailers.
Paths under one of `early` (a server attribute) are answered on their headers alone, the body
left unread, as a handler that never reads one does.

    python3 tests/services/echo.py [--port 8080]
"""
import argparse
import collections
import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "keygate_demo_echo", Path(__file__).resolve().parents[2] / "envoy" / "upstream" / "echo.py")
_demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_demo)


class RecordingEcho(_demo.Echo):
    def headers_arrived(self, entry: dict) -> None:
        self.server.seen.append(entry)

    def answered(self, entry: dict) -> None:
        self.server.received.append(entry)

    def answers_on_headers(self) -> bool:
        return any(self.path.startswith(p) for p in self.server.early)


def serve(port: int, host: str = "127.0.0.1"):
    srv = _demo.serve(port, host, RecordingEcho)
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
    print(f"recording echo upstream on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
