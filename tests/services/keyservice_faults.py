#!/usr/bin/env python3
"""The reference key service (envoy/keyservice/keyservice.py) with test-only additions: call
counters and fault injection on the two contract endpoints. For the e2e tests and the benchmark;
never for operators (run envoy/keyservice/keyservice.py).

    python3 tests/services/keyservice_faults.py --port 8081 --db PATH --admin-token TOKEN
                                                [--seed-demo] [--host 127.0.0.1] [--verbose]

Everything the reference service does, unchanged, plus (only with ``--admin-token``; header
``x-admin-token`` required, else 403):

* ``GET /admin/stats``, ``POST /admin/reset-stats``: ``{"verify_calls", "revocation_calls"}``,
  every call to the endpoint counted, whatever its mode or outcome.
* ``GET|POST /admin/mode`` ``{"verify": MODE, "revocations": MODE}`` (either or both), MODE one of
  ``ok``; ``slow:S`` (wait S seconds, then answer normally); ``late:S`` (verify: decide the
  verdict, then wait S seconds before sending it, so a revocation can happen while it is on its
  way); ``status:NNN`` (that status, a small JSON body); ``garbage`` (200, not JSON); ``huge``
  (200, a 5 MiB JSON body); ``reset`` (a TCP reset, no answer); ``anyuser`` (verify: a key matches
  whatever Basic user, as a service the contract allows may do).
* ``POST /admin/update-key`` ``{"id", "plan"?, "account"?, "subject"?, "ratelimit"?}``: changes a
  stored key in place (a plan downgrade, a lowered per-key limit, a renamed account), as an
  operator's back office would; keygate sees it once its cached verdict expires.
"""
from __future__ import annotations

import json
import re
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "envoy" / "keyservice"))
import keyservice  # noqa: E402  (the reference service: the product this file extends)
from keyservice import bad_request, dumps, route  # noqa: E402

HUGE_BODY_BYTES = 5 * 1024 * 1024
FAULT_RE = re.compile(r"ok|garbage|huge|reset|anyuser|(slow|late):\d{1,3}(\.\d{1,3})?|status:[2-5]\d\d")
COUNTED = ("verify", "revocations")  # the handler methods whose calls /admin/stats counts


class Stats:
    """Counters since start (or the last reset), safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.verify_calls = 0
        self.revocation_calls = 0

    def count(self, endpoint: str) -> None:
        with self._lock:
            if endpoint == "verify":
                self.verify_calls += 1
            else:
                self.revocation_calls += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"verify_calls": self.verify_calls, "revocation_calls": self.revocation_calls}

    def reset(self) -> None:
        with self._lock:
            self.verify_calls = self.revocation_calls = 0


class Faults:
    """The current fault mode of the two contract endpoints (``ok`` = behave normally)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._modes = {"verify": "ok", "revocations": "ok"}

    def get(self, endpoint: str) -> str:
        with self._lock:
            return self._modes[endpoint]

    def set(self, endpoint: str, mode: str) -> None:
        with self._lock:
            self._modes[endpoint] = mode

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return dict(self._modes)


def check_fault_mode(mode: Any) -> str:
    """Validates a mode: ok, slow:SECONDS (<= 120; late:SECONDS decides first, then waits),
    status:NNN, garbage, huge, reset, or anyuser (verify: a key matches whatever Basic user)."""
    if not isinstance(mode, str) or not FAULT_RE.fullmatch(mode):
        raise bad_request("mode must be ok, slow:SECONDS, status:NNN, garbage, huge or reset")
    if mode.startswith(("slow:", "late:")) and float(mode[5:]) > 120:
        raise bad_request("slow/late: at most 120 seconds")
    if mode.startswith("status:") and int(mode[7:]) in (204, 205, 304):
        raise bad_request("status: a status that carries a body, please")
    return mode


class FaultServer(keyservice.KeyServiceServer):
    """The reference server with counters and fault modes, answered by `FaultHandler`."""

    def __init__(self, address: tuple[str, int], store: keyservice.Store, *,
                 admin_token: str | None, verbose: bool,
                 handler: type[keyservice.Handler] | None = None) -> None:
        super().__init__(address, store, admin_token=admin_token, verbose=verbose,
                         handler=handler or FaultHandler)
        self.stats = Stats()
        self.faults = Faults()


class FaultHandler(keyservice.Handler):
    """The reference handler; the contract endpoints are counted and obey their fault mode."""

    server: FaultServer
    routes = keyservice.Handler.routes + [
        route("GET", r"/admin/stats", "admin_stats", admin=True),
        route("POST", r"/admin/reset-stats", "admin_reset_stats", admin=True),
        route("GET", r"/admin/mode", "admin_get_mode", admin=True),
        route("POST", r"/admin/mode", "admin_set_mode", admin=True),
        route("POST", r"/admin/update-key", "admin_update_key", admin=True),
    ]

    def _match(self, path: str) -> tuple[keyservice.Route | None, dict[str, str], list[str]]:
        """Routes as the reference does, counting a contract call before its body is read (so a
        call that fails later, even by a fault, is counted)."""
        found, params, allowed = super()._match(path)
        if found is not None and found.action in COUNTED:
            self.server.stats.count(found.action)
        return found, params, allowed

    # -- the contract endpoints under faults ---------------------------------------------------

    def verify(self) -> None:
        if self._apply_fault("verify"):
            return
        self._verify_mode = self.server.faults.get("verify")
        super().verify()

    def _verdict(self, secret: str, user: str | None) -> dict[str, Any]:
        mode = getattr(self, "_verify_mode", "ok")
        # anyuser: any Basic user matches (the reference then ignores the user, as for Bearer)
        verdict = super()._verdict(secret, None if mode == "anyuser" else user)
        if mode.startswith("late:"):
            # the verdict is decided now and delivered later (a revocation can happen while it
            # is on its way); the log line tells a test when to revoke
            sys.stderr.write(f"keyservice: late verdict decided ({verdict['code']})\n")
            sys.stderr.flush()
            time.sleep(float(mode[5:]))
        return verdict

    def revocations(self) -> None:
        if self._apply_fault("revocations"):
            return
        super().revocations()

    def _apply_fault(self, endpoint: str) -> bool:
        """Acts on the endpoint's fault mode; ``True`` if that already answered (or hung up)."""
        mode = self.server.faults.get(endpoint)
        # late: and anyuser act on the verdict itself (see _verdict)
        if mode == "ok" or mode == "anyuser" or mode.startswith("late:"):
            return False
        if mode.startswith("slow:"):
            time.sleep(float(mode[5:]))
            return False
        if mode.startswith("status:"):
            code = int(mode[7:])
            self._send(code, dumps({"error": f"injected status {code}"}), "application/json")
        elif mode == "garbage":
            self._send(200, b"<html>this is not JSON {", "application/json")
        elif mode == "huge":
            self._send_huge()
        elif mode == "reset":
            self._hang_up()
        return True

    def _send_huge(self) -> None:
        """200 with a 5 MiB JSON body (a single padding member), written in pieces."""
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
        """Closes the connection without answering, with a TCP reset (SO_LINGER 0)."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- test-support admin --------------------------------------------------------------------

    def admin_stats(self) -> None:
        self._json(200, self.server.stats.snapshot())

    def admin_reset_stats(self) -> None:
        self.server.stats.reset()
        self._json(200, self.server.stats.snapshot())

    def admin_get_mode(self) -> None:
        self._json(200, self.server.faults.snapshot())

    def admin_set_mode(self) -> None:
        """``POST /admin/mode`` ``{"verify": MODE, "revocations": MODE}`` (either or both)."""
        req = keyservice.parse_json_object(self.body)
        unknown = set(req) - {"verify", "revocations"}
        if unknown or not req:
            raise bad_request("give `verify` and/or `revocations`, nothing else")
        modes = {endpoint: check_fault_mode(mode) for endpoint, mode in req.items()}
        for endpoint, mode in modes.items():
            self.server.faults.set(endpoint, mode)
        self._json(200, self.server.faults.snapshot())


    def admin_update_key(self) -> None:
        """``POST /admin/update-key`` ``{"id", "plan"?, "account"?, "subject"?, "ratelimit"?}``."""
        req = keyservice.parse_json_object(self.body)
        key_id = keyservice.req_str(req, "id", max_len=64)
        unknown = set(req) - {"id", "plan", "account", "subject", "ratelimit"}
        if unknown:
            raise bad_request(f"unknown members: {', '.join(sorted(unknown))}")
        sets: dict[str, Any] = {}
        for name in ("plan", "account", "subject"):
            if name in req:
                sets[name] = keyservice.req_str(req, name, max_len=200)
        if "ratelimit" in req:
            rl = keyservice.parse_ratelimit(req["ratelimit"])
            sets["ratelimit"] = json.dumps(rl) if rl is not None else None
        if self.server.store.key_by_id(key_id) is None:
            raise keyservice.not_found(f"no key {key_id}")
        with self.server.store._tx() as db:
            for column, value in sets.items():
                db.execute(f"UPDATE keys SET {column} = ? WHERE id = ?", (value, key_id))
        self._json(200, {"data": self.server.store.key_by_id(key_id).public()})


if __name__ == "__main__":
    sys.exit(keyservice.main(server_class=FaultServer))
