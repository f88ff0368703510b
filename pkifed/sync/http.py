"""The daemon's HTTP endpoint: /healthz, /readyz and /metrics.

``/healthz`` returns 200 while the process serves requests. ``/readyz`` returns
200 when the last pass succeeded and is recent, 503 otherwise, with the reason
as JSON. ``/metrics`` is the Prometheus text format. The endpoints have no
authentication, so the daemon binds a loopback address unless configured otherwise.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pkifed.errors import PermanentError
from pkifed.loopback import is_loopback_host

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Readiness:
    """Whether the daemon is ready, and why not."""

    ready: bool
    reason: str
    details: dict[str, Any]


class _Ipv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _server_class(host: str) -> type[ThreadingHTTPServer]:
    """Return the server class whose socket family fits ``host``.

    ThreadingHTTPServer always opens an IPv4 socket, so an IPv6 address such as
    ``::1`` needs a subclass with the IPv6 family.
    """
    if ":" in host:
        return _Ipv6Server
    return ThreadingHTTPServer


class HealthServer:
    """Serves the endpoints on a daemon thread."""

    def __init__(
        self,
        host: str,
        port: int,
        readiness: Callable[[], Readiness],
        metrics: Callable[[], bytes],
    ) -> None:
        self._readiness = readiness
        self._metrics = metrics
        try:
            self._server = _server_class(host)((host, port), _handler(self))
        except OSError as error:
            raise PermanentError(
                f"http: cannot listen on {host}:{port}: {error.strerror}; choose "
                "another address with daemon.listen or --listen"
            ) from error
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="http", daemon=True
        )
        if not is_loopback_host(host):
            logger.warning(
                "http: listening on %s, which is not a loopback address; "
                "/metrics and /readyz have no authentication, so restrict access "
                "to this port",
                host,
            )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return (host.decode() if isinstance(host, bytes) else str(host), int(port))

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()
        logger.info("http: serving /healthz, /readyz and /metrics on %s", self.url)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler(server: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "pkifed"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
            elif path == "/readyz":
                readiness = server._readiness()
                status = (
                    HTTPStatus.OK if readiness.ready else HTTPStatus.SERVICE_UNAVAILABLE
                )
                body = {"ready": readiness.ready, "reason": readiness.reason}
                body.update(readiness.details)
                self._send(
                    status, json.dumps(body).encode() + b"\n", "application/json"
                )
            elif path == "/metrics":
                self._send(HTTPStatus.OK, server._metrics(), CONTENT_TYPE_LATEST)
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Probes hit these endpoints every few seconds; access logs would
            # drown the reconcile logs.
            logger.debug("http: %s %s", self.address_string(), format % args)

    return Handler
