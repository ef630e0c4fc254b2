"""Clients that send exactly the bytes a test asks for: raw HTTP/1.1 over a socket, and HTTP/2
(prior knowledge, h2c) through the `h2` library with its header validation off, so a test can
send what a hostile client sends (`:method: post`, underscore names, repeated headers)."""
from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


@dataclass
class Answer:
    status: int  # 0: the stream or connection was reset / closed without a response
    headers: list = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def json(self):
        return json.loads(self.body)


def http1(port: int, raw: bytes, timeout: float = 10) -> Answer:
    """Sends `raw` (a whole request, `Connection: close` is up to the caller) and reads to EOF."""
    return exchange1(port, raw, (), timeout)


def request1(port: int, method: str, target: str, headers: list[tuple[str, str]] = (), body: bytes = b"") -> Answer:
    """A raw HTTP/1.1 request line and headers exactly as given (plus Host and Connection)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: gate.test", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    return http1(port, raw)


def request2(port: int, method: str, path: str, headers: list[tuple[str, str]] = (), body: bytes = b"",
             timeout: float = 10) -> Answer:
    """One HTTP/2 request (h2c, prior knowledge) with headers sent as given, unvalidated."""
    return exchange2(port, method, path, headers, [("data", body, True)] if body else [], timeout,
                     end_with_headers=not body)


def exchange2(port: int, method: str, path: str, headers: list[tuple[str, str]] = (), steps=(),
              timeout: float = 10, end_with_headers: bool = False) -> Answer:
    """One HTTP/2 stream driven step by step: after the request headers (which end the stream only
    with `end_with_headers`), each step is ("data", bytes, end_stream), ("trailers", [(name,
    value)]) (a HEADERS frame that ends the stream), ("reset",) or ("sleep", seconds). Returns the
    response (its trailers after its headers), or status 0 when the stream was reset or nothing
    came within `timeout`."""
    cfg = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                    normalize_outbound_headers=False, validate_inbound_headers=False)
    conn = h2.connection.H2Connection(config=cfg)
    conn.initiate_connection()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        sid = conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":path", path), (":scheme", "http"), (":authority", "gate.test")]
        conn.send_headers(sid, hdrs + list(headers), end_stream=end_with_headers)
        s.sendall(conn.data_to_send())
        for step in steps:
            if step[0] == "data":
                conn.send_data(sid, step[1], end_stream=step[2])
            elif step[0] == "trailers":
                conn.send_headers(sid, list(step[1]), end_stream=True)
            elif step[0] == "reset":
                conn.reset_stream(sid)
            elif step[0] == "sleep":
                import time
                time.sleep(step[1])
            s.sendall(conn.data_to_send())
        status, got, data = 0, [], b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            for ev in conn.receive_data(chunk):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    got = [(k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
                           for k, v in ev.headers]
                    status = int(dict(got)[":status"])
                elif isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == sid:
                    got += [(k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
                            for k, v in ev.headers]
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    data += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    return Answer(status, got, data)
                elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    return Answer(0)
            try:
                s.sendall(conn.data_to_send())
            except OSError:
                break
    return Answer(status, got, data)


def exchange1(port: int, head: bytes, parts=(), timeout: float = 10) -> Answer:
    """Raw HTTP/1.1: sends `head` (request line and headers, ending in the blank line), then each
    part (bytes, or a float: seconds to wait), then reads the answer to EOF or `timeout`."""
    import time
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head)
        for p in parts:
            if isinstance(p, (int, float)):
                time.sleep(p)
            else:
                try:
                    s.sendall(p)
                except OSError:
                    break
        data = b""
        try:
            while not complete(data):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    if not data.startswith(b"HTTP/1."):
        return Answer(0)
    head_, _, body = data.partition(b"\r\n\r\n")
    lines = head_.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.append((k.strip().lower(), v.strip()))
    if ("transfer-encoding", "chunked") in headers:
        body = dechunk(body)
    return Answer(int(lines[0].split()[1]), headers, body)


def complete(data: bytes) -> bool:
    """Whether `data` holds a whole HTTP/1.1 response (by its Content-Length or its last chunk), so
    the client need not wait for the server to close (Envoy delays that close by a second after a
    local reply that left the request's body unread)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1."):
        return False
    if head.split(b" ", 2)[1:2] and head.split(b" ", 2)[1].startswith(b"1"):
        return False  # 1xx: the real answer follows
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        k, v = k.strip().lower(), v.strip().lower()
        if k == b"content-length":
            return len(body) >= int(v)
        if k == b"transfer-encoding" and b"chunked" in v:
            return body.endswith(b"0\r\n\r\n") and (body.startswith(b"0\r\n") or b"\r\n0\r\n" in body)
    return False


def dechunk(raw: bytes) -> bytes:
    """The payload of a chunked HTTP/1.1 body (trailers dropped)."""
    out = b""
    while raw:
        line, _, raw = raw.partition(b"\r\n")
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        out, raw = out + raw[:size], raw[size + 2:]
    return out


def chunked(*chunks: bytes, trailers: list[tuple[str, str]] = ()) -> bytes:
    """An HTTP/1.1 chunked body with these chunks and trailers."""
    out = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c)
    return out + b"0\r\n" + b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in trailers) + b"\r\n"


class H2Conn:
    """One HTTP/2 connection (h2c) carrying many streams a test drives one by one: `open` sends a
    stream's headers (never ending it), `data`/`trailers` continue it, `answers` collects the
    responses of the given streams (status 0: reset, or none before the timeout)."""

    def __init__(self, port: int, timeout: float = 10):
        cfg = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                        normalize_outbound_headers=False, validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.got: dict[int, Answer] = {}
        self.done: set[int] = set()
        self.flush()

    def flush(self):
        self.sock.sendall(self.conn.data_to_send())

    def open(self, method: str, path: str, headers=()) -> int:
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":path", path), (":scheme", "http"), (":authority", "gate.test")]
        self.conn.send_headers(sid, hdrs + list(headers), end_stream=False)
        self.flush()
        return sid

    def data(self, sid: int, body: bytes, end: bool):
        self.conn.send_data(sid, body, end_stream=end)
        self.flush()

    def trailers(self, sid: int, trailers):
        self.conn.send_headers(sid, list(trailers), end_stream=True)
        self.flush()

    def answers(self, sids, timeout: float = 10) -> dict[int, Answer]:
        import time
        deadline = time.monotonic() + timeout
        want = set(sids)
        while not want <= self.done and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            for ev in self.conn.receive_data(chunk):
                sid = getattr(ev, "stream_id", None)
                if isinstance(ev, h2.events.ResponseReceived):
                    hs = [(k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
                          for k, v in ev.headers]
                    self.got[sid] = Answer(int(dict(hs)[":status"]), hs)
                elif isinstance(ev, h2.events.DataReceived):
                    if sid in self.got:
                        self.got[sid].body += ev.data
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded):
                    self.done.add(sid)
                elif isinstance(ev, h2.events.StreamReset):
                    self.got[sid] = Answer(0)
                    self.done.add(sid)
            try:
                self.flush()
            except OSError:
                break
        return {s: self.got.get(s, Answer(0)) for s in sids}

    def close(self):
        self.sock.close()
