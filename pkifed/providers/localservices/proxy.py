"""A forwarding HTTP proxy on 127.0.0.1 in front of a local object store.

Clients talk to the proxy instead of the service. The proxy can serialise
conditional writes (PUT, POST or DELETE with If-Match or If-None-Match) so a
service that checks a precondition and then writes in two unlocked steps
behaves like a store that does both atomically. Tests can also make it fail
the next N requests with an error of their choosing.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}
_WRITE_METHODS = {"PUT", "POST", "DELETE"}
# The access key ID in a SigV4 Authorization header (AWS General Reference,
# "Signature Version 4"): Credential=<access key id>/<date>/<region>/...
_SIGV4_ACCESS_KEY = re.compile(r"Credential=([^/\s,]+)/")


@dataclass
class _Fault:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    remaining: int


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, proxy: FaultProxy) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.proxy = proxy


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self.server.proxy.handle(self)

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Keep request lines out of test output."""


class FaultProxy:
    """Forwards every request to ``upstream`` unless a fault is pending."""

    def __init__(
        self, upstream: tuple[str, int], *, serialize_conditional_writes: bool = False
    ) -> None:
        self.upstream = upstream
        self.serialize_conditional_writes = serialize_conditional_writes
        self.requests: list[tuple[str, str]] = []
        # Access key IDs of the SigV4-signed requests, so tests can check which
        # credentials a client sent. The secret key never travels.
        self.access_key_ids: list[str] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen on 127.0.0.1 and a free port."""
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fault-proxy", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def address(self) -> tuple[str, int]:
        """Host and port that clients connect to."""
        if self._server is None:
            raise RuntimeError("FaultProxy is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def fail(
        self,
        count: int,
        status: int,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        """Fail the next ``count`` requests with ``status`` and ``body``."""
        with self._lock:
            self._faults.append(_Fault(status, list(headers or []), body, count))

    def clear(self) -> None:
        """Drop every pending fault and the request log."""
        with self._lock:
            self._faults.clear()
            self.requests.clear()
            self.access_key_ids.clear()

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        """Serve one request: a pending fault, or the upstream's response."""
        body = _read_body(handler)
        access_key = sigv4_access_key_id(handler.headers.get("Authorization", ""))
        with self._lock:
            self.requests.append((handler.command, handler.path))
            if access_key is not None:
                self.access_key_ids.append(access_key)
            fault = next((f for f in self._faults if f.remaining > 0), None)
            if fault is not None:
                fault.remaining -= 1
        if fault is not None:
            _send(handler, fault.status, fault.headers, fault.body)
            return
        conditional = handler.command in _WRITE_METHODS and (
            "If-Match" in handler.headers or "If-None-Match" in handler.headers
        )
        if conditional and self.serialize_conditional_writes:
            with self._write_lock:
                status, headers, answer = self._forward(handler, body)
        else:
            status, headers, answer = self._forward(handler, body)
        _send(handler, status, headers, answer)

    def _forward(
        self, handler: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            # Headers and body go out in separate writes; with Nagle's algorithm
            # on, the service's delayed ACK adds about 40 ms to each request.
            connection.connect()
            if connection.sock is None:
                raise ConnectionError(f"cannot connect to {self.upstream}")
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # The Host header goes through unchanged because SigV4 signs it.
            headers = {
                k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP
            }
            headers["Content-Length"] = str(len(body))
            connection.request(handler.command, handler.path, body, headers)
            response = connection.getresponse()
            answer = response.read()
            forwarded = [
                (k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP
            ]
            return response.status, forwarded, answer
        finally:
            connection.close()


def sigv4_access_key_id(authorization: str) -> str | None:
    """Return the access key ID of a SigV4 Authorization header, or None."""
    match = _SIGV4_ACCESS_KEY.search(authorization)
    return None if match is None else match[1]


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                # Skip trailer fields up to the blank line that ends them.
                while handler.rfile.readline().strip():
                    pass
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length)


def _send(
    handler: BaseHTTPRequestHandler,
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
) -> None:
    handler.send_response(status)
    for name, value in headers:
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)
