#!/usr/bin/env python3
"""A fast key service for tests and benchmarks with many keys (contract v1, test-only).

Every key `<prefix><n>` (n decimal) is valid: key id `s<n>`, plan `--plan`, no account (each key
is its own owner); any other key is NOT_FOUND. Keys revoked through `POST /admin/revoke`
(`{"keys": [...]}`) answer REVOKED from then on and are named in the revocation feed. `GET
/admin/stats` answers `{"verify": <calls>, "revoked": <n>}`. One asyncio loop, HTTP/1.1
keep-alive, no framework: it answers tens of thousands of calls a second, so a test can push
100,000 distinct keys through Envoy in seconds.

    python3 tests/services/stubkeys.py --port 8090 [--prefix kg_stub_] [--plan big] [--delay-ms 0]
        [--big-scopes 0]

`--delay-ms` holds every verify answer that long (a slow service: answers in flight while a
revocation lands). `--big-scopes N` gives keys whose number is at least 1,000,000 N scopes
of 24 bytes each (a verdict larger than keygate caches, for N of 50 or more).
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys


class Keys:
    def __init__(self, prefix: str, plan: str, delay_ms: int, big_scopes: int = 0) -> None:
        self.big_scopes = big_scopes
        self.prefix = prefix
        self.plan = plan
        self.delay = delay_ms / 1000
        self.revoked: list[str] = []  # sha256 hex, in feed order
        self.revoked_set: set[str] = set()
        self.verify_calls = 0

    def verify(self, body: bytes) -> dict:
        self.verify_calls += 1
        try:
            req = json.loads(body)
            key = req["key"]
        except (ValueError, KeyError, TypeError):
            return {"contract": 1, "valid": False, "code": "NOT_FOUND"}
        if not isinstance(key, str) or not key.startswith(self.prefix) or not key[len(self.prefix):].isdigit():
            return {"contract": 1, "valid": False, "code": "NOT_FOUND"}
        if hashlib.sha256(key.encode()).hexdigest() in self.revoked_set:
            return {"contract": 1, "valid": False, "code": "REVOKED"}
        n = key[len(self.prefix):]
        answer = {"contract": 1, "valid": True, "key_id": f"s{n}", "plan": self.plan, "user_bound": False}
        if self.big_scopes and int(n) >= 1_000_000:
            answer["scopes"] = [f"scope.{i:06d}.xxxxxxxxxxxx" for i in range(self.big_scopes)]
        return answer

    def feed(self, since: int) -> dict:
        if since < 0:
            return {"contract": 1, "cursor": len(self.revoked), "revoked": [], "more": False}
        page = self.revoked[since:since + 1000]
        return {"contract": 1, "cursor": since + len(page),
                "revoked": [{"key_hash": h, "user": None} for h in page],
                "more": since + len(page) < len(self.revoked)}

    def revoke(self, body: bytes) -> dict:
        keys = json.loads(body)["keys"]
        for k in keys:
            h = hashlib.sha256(k.encode()).hexdigest()
            if h not in self.revoked_set:
                self.revoked_set.add(h)
                self.revoked.append(h)
        return {"revoked": len(self.revoked)}


async def handle(keys: Keys, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            path, _, query = target.partition("?")
            status = 200
            if method == "POST" and path == "/v1/keys/verify":
                answer = keys.verify(body)
                if keys.delay:
                    await asyncio.sleep(keys.delay)
            elif method == "GET" and path == "/v1/keys/revocations":
                since = -1
                for part in query.split("&"):
                    if part.startswith("since="):
                        since = int(part[6:])
                answer = keys.feed(since)
            elif method == "POST" and path == "/admin/revoke":
                answer = keys.revoke(body)
            elif method == "GET" and path == "/admin/stats":
                answer = {"verify": keys.verify_calls, "revoked": len(keys.revoked)}
            else:
                status, answer = 404, {"error": "not found"}
            out = json.dumps(answer, separators=(",", ":")).encode()
            writer.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                         % (status, len(out)) + out)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--prefix", default="kg_stub_")
    ap.add_argument("--plan", default="default")
    ap.add_argument("--delay-ms", type=int, default=0)
    ap.add_argument("--big-scopes", type=int, default=0)
    args = ap.parse_args(argv)
    keys = Keys(args.prefix, args.plan, args.delay_ms, args.big_scopes)
    server = await asyncio.start_server(lambda r, w: handle(keys, r, w), "127.0.0.1", args.port)
    print(f"stubkeys on 127.0.0.1:{args.port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1:]))
    except KeyboardInterrupt:
        pass
