"""A small pipelined HTTP/1.1 load generator for floods (stdlib only, loopback only).

Raw sockets, keep-alive, one request in flight per connection (Envoy 1.40 closed connections that
pipelined 10 requests at once here; batch > 1 pipelines anyway). ~9k requests/s from one Python
process on this machine, enough for a 100,000-key flood in seconds.
"""
from __future__ import annotations

import socket
import threading
from collections import Counter


def _read_responses(sock: socket.socket, n: int, buf: bytearray) -> tuple[list[int], bool]:
    """Reads n responses; also says whether the server asked to close the connection."""
    statuses = []
    close = False
    while len(statuses) < n:
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed mid-batch")
            buf.extend(chunk)
            continue
        head = bytes(buf[:head_end]).decode("latin-1")
        lines = head.split("\r\n")
        status = int(lines[0].split(" ")[1])
        length = 0
        for line in lines[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v.strip())
            elif k.strip().lower() == "connection" and v.strip().lower() == "close":
                close = True
        total = head_end + 4 + length
        while len(buf) < total:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed mid-body")
            buf.extend(chunk)
        del buf[:total]
        statuses.append(status)
        if close:
            break
    return statuses, close


def flood(port: int, requests: list[bytes], connections: int = 4, batch: int = 1, timeout: float = 30) -> Counter:
    """Sends every raw request (bytes, a full HTTP/1.1 request) and counts response statuses."""
    counts: Counter = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(part: list[bytes]) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            buf = bytearray()
            i = 0
            while i < len(part):
                chunk = part[i:i + batch]
                sock.sendall(b"".join(chunk))
                got, close = _read_responses(sock, len(chunk), buf)
                with lock:
                    counts.update(got)
                i += len(got)
                if close:  # Envoy closes after some local replies (e.g. 400): reconnect
                    sock.close()
                    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
                    buf = bytearray()
            sock.close()
        except BaseException as e:  # reported to the caller
            errors.append(e)

    parts = [requests[i::connections] for i in range(connections)]
    threads = [threading.Thread(target=worker, args=(p,)) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return counts


def get(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: api.test"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
