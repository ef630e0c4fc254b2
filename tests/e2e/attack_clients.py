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
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    if not data.startswith(b"HTTP/1."):
        return Answer(0)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.append((k.strip().lower(), v.strip()))
    return Answer(status, headers, body)


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
    cfg = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                    normalize_outbound_headers=False, validate_inbound_headers=False)
    conn = h2.connection.H2Connection(config=cfg)
    conn.initiate_connection()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        sid = conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":path", path), (":scheme", "http"), (":authority", "gate.test")]
        hdrs += list(headers)
        conn.send_headers(sid, hdrs, end_stream=not body)
        if body:
            conn.send_data(sid, body, end_stream=True)
        s.sendall(conn.data_to_send())
        status, got, data = 0, [], b""
        done = False
        while not done:
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
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    data += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    done = True
                elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    return Answer(0)
            s.sendall(conn.data_to_send())
    return Answer(status, got, data)
