"""A local Cloud Storage: this project's fake of the JSON API, on 127.0.0.1.

:class:`GenerationStore` serves the JSON API subset that google-cloud-storage
uses to upload, download, get, delete and list objects. It honours
``ifGenerationMatch`` as Cloud Storage documents it ("Request preconditions"):
0 means the object must not exist, a failed condition is 412
``conditionNotMet``, and each write gets a new, larger generation. Conditional
writes are atomic under one lock. Objects are held in memory and lost on
:meth:`GenerationStore.stop`. Tests can make it fail the next N requests.

gcp-storage-emulator, the usual local Cloud Storage, does not do this: checked
against version 2026.7.19 with google-cloud-storage 3.17, it accepts every
upload and delete whatever the value of ``ifGenerationMatch``, and its
downloads carry no ``x-goog-generation`` header.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from pkifed.providers.localservices.gcp_kms import crc32c


@dataclass
class _Object:
    data: bytes
    generation: int
    content_type: str
    updated: str


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, store: GenerationStore) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.store = store


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self.server.store.handle(self)

    do_POST = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Keep request lines out of test output."""


_OBJECT_PATH = re.compile(r"^(?:/download)?/storage/v1/b/([^/]+)/o/(.+)$")
_LIST_PATH = re.compile(r"^/storage/v1/b/([^/]+)/o/?$")
_UPLOAD_PATH = re.compile(r"^/upload/storage/v1/b/([^/]+)/o/?$")
_BUCKET_PATH = re.compile(r"^/storage/v1/b/([^/]+)/?$")


class GenerationStore:
    """A Cloud Storage JSON API fake that honours object generations."""

    def __init__(self, page_size: int = 2) -> None:
        # A small page size makes every listing of a few objects paginate, so
        # clients' paging is exercised. The real service's maximum is 1,000.
        self.page_size = page_size
        self.requests: list[tuple[str, str]] = []
        self._buckets: dict[str, dict[str, _Object]] = {}
        self._lock = threading.Lock()
        self._generation = 1_700_000_000_000_000
        self._failures: list[list[int]] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    def start(self) -> None:
        """Listen on 127.0.0.1 and a free port."""
        self._server = _Server(self)
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="gcs-fake", daemon=True
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

    def create_bucket(self, prefix: str = "pkifed", *, name: str | None = None) -> str:
        """Create a bucket and return its name: ``name``, or a unique one.

        Creating a bucket that exists keeps its objects.
        """
        bucket = name or f"{prefix}-{uuid.uuid4().hex[:12]}"
        with self._lock:
            self._buckets.setdefault(bucket, {})
        return bucket

    def fail(self, count: int, status: int = 503) -> None:
        """Fail the next ``count`` object requests with ``status``."""
        with self._lock:
            self._failures.append([count, status])

    def clear(self) -> None:
        """Drop every pending failure."""
        with self._lock:
            self._failures.clear()

    # --- requests -------------------------------------------------------------------

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        """Serve one request of the JSON API subset."""
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length)
        split = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        with self._lock:
            self.requests.append((handler.command, handler.path))
            # google-cloud-storage 3.17 may read bucket metadata from a
            # background thread at any moment, so faults apply to object
            # requests only and tests stay deterministic.
            bucket_request = _BUCKET_PATH.match(split.path) is not None
            status = None if bucket_request else self._take_failure()
            if status is not None:
                _send_error(handler, status, "backendError", "injected by the fake")
                return
            self._route(handler, split.path, query, body)

    def _take_failure(self) -> int | None:
        for failure in self._failures:
            if failure[0] > 0:
                failure[0] -= 1
                return failure[1]
        return None

    def _route(
        self,
        handler: BaseHTTPRequestHandler,
        path: str,
        query: dict[str, str],
        body: bytes,
    ) -> None:
        method = handler.command
        if method == "POST" and (match := _UPLOAD_PATH.match(path)):
            self._upload(handler, unquote(match[1]), query, body)
        elif method == "GET" and (match := _BUCKET_PATH.match(path)):
            self._get_bucket(handler, unquote(match[1]))
        elif method == "GET" and (match := _LIST_PATH.match(path)):
            self._list(handler, unquote(match[1]), query)
        elif match := _OBJECT_PATH.match(path):
            bucket, name = unquote(match[1]), unquote(match[2])
            media = query.get("alt") == "media"
            if method == "GET" and media:
                self._download(handler, bucket, name, query)
            elif method == "GET":
                self._get(handler, bucket, name, query)
            elif method == "DELETE":
                self._delete(handler, bucket, name, query)
            else:
                _send_error(handler, 405, "methodNotAllowed", f"{method} {path}")
        else:
            _send_error(handler, 404, "notFound", f"no route for {method} {path}")

    def _get_bucket(self, handler: BaseHTTPRequestHandler, bucket: str) -> None:
        # google-cloud-storage 3.17 reads a bucket's metadata (its location)
        # once per client, before the first object request, and caches it.
        if self._objects(handler, bucket) is not None:
            resource = {
                "kind": "storage#bucket",
                "name": bucket,
                "location": "US",
                "locationType": "multi-region",
                "metageneration": "1",
            }
            _send_json(handler, 200, resource)

    def _objects(
        self, handler: BaseHTTPRequestHandler, bucket: str
    ) -> dict[str, _Object] | None:
        objects = self._buckets.get(bucket)
        if objects is None:
            message = "The specified bucket does not exist."
            _send_error(handler, 404, "notFound", message)
        return objects

    def _precondition_holds(
        self,
        handler: BaseHTTPRequestHandler,
        current: _Object | None,
        query: dict[str, str],
    ) -> bool:
        expected = query.get("ifGenerationMatch")
        if expected is None:
            return True
        generation = 0 if current is None else current.generation
        if int(expected) == generation:
            return True
        _send_error(
            handler,
            412,
            "conditionNotMet",
            "At least one of the pre-conditions you specified did not hold.",
        )
        return False

    def _upload(
        self,
        handler: BaseHTTPRequestHandler,
        bucket: str,
        query: dict[str, str],
        body: bytes,
    ) -> None:
        objects = self._objects(handler, bucket)
        if objects is None:
            return
        if query.get("uploadType") == "multipart":
            metadata, data = _parse_multipart(handler.headers["Content-Type"], body)
        elif query.get("uploadType") == "media":
            metadata, data = {"name": query.get("name", "")}, body
        else:
            _send_error(handler, 501, "notImplemented", "only simple uploads")
            return
        name = str(metadata.get("name", ""))
        if "crc32c" in metadata and metadata["crc32c"] != _crc32c(data):
            _send_error(handler, 400, "invalid", "crc32c does not match the content")
            return
        if not self._precondition_holds(handler, objects.get(name), query):
            return
        self._generation += 1
        stored = _Object(
            data,
            self._generation,
            str(metadata.get("contentType") or "application/octet-stream"),
            datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        )
        objects[name] = stored
        _send_json(handler, 200, self._resource(bucket, name, stored))

    def _get(
        self,
        handler: BaseHTTPRequestHandler,
        bucket: str,
        name: str,
        query: dict[str, str],
    ) -> None:
        stored = self._find(handler, bucket, name, query)
        if stored is not None:
            _send_json(handler, 200, self._resource(bucket, name, stored))

    def _download(
        self,
        handler: BaseHTTPRequestHandler,
        bucket: str,
        name: str,
        query: dict[str, str],
    ) -> None:
        stored = self._find(handler, bucket, name, query)
        if stored is None:
            return
        handler.send_response(200)
        handler.send_header("Content-Type", stored.content_type)
        handler.send_header("x-goog-generation", str(stored.generation))
        handler.send_header("x-goog-metageneration", "1")
        handler.send_header(
            "x-goog-hash", f"crc32c={_crc32c(stored.data)},md5={_md5(stored.data)}"
        )
        handler.send_header("Content-Length", str(len(stored.data)))
        handler.end_headers()
        handler.wfile.write(stored.data)

    def _delete(
        self,
        handler: BaseHTTPRequestHandler,
        bucket: str,
        name: str,
        query: dict[str, str],
    ) -> None:
        stored = self._find(handler, bucket, name, query)
        if stored is None:
            return
        del self._buckets[bucket][name]
        handler.send_response(204)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def _find(
        self,
        handler: BaseHTTPRequestHandler,
        bucket: str,
        name: str,
        query: dict[str, str],
    ) -> _Object | None:
        objects = self._objects(handler, bucket)
        if objects is None:
            return None
        stored = objects.get(name)
        requested = query.get("generation")
        if stored is None or (
            requested is not None and int(requested) != stored.generation
        ):
            _send_error(handler, 404, "notFound", f"No such object: {bucket}/{name}")
            return None
        if not self._precondition_holds(handler, stored, query):
            return None
        return stored

    def _list(
        self, handler: BaseHTTPRequestHandler, bucket: str, query: dict[str, str]
    ) -> None:
        objects = self._objects(handler, bucket)
        if objects is None:
            return
        prefix = query.get("prefix", "")
        names = sorted(n for n in objects if n.startswith(prefix))
        start = int(query.get("pageToken") or 0)
        page = names[start : start + self.page_size]
        document: dict[str, Any] = {
            "kind": "storage#objects",
            "items": [self._resource(bucket, n, objects[n]) for n in page],
        }
        if start + self.page_size < len(names):
            document["nextPageToken"] = str(start + self.page_size)
        _send_json(handler, 200, document)

    def _resource(self, bucket: str, name: str, stored: _Object) -> dict[str, Any]:
        encoded = quote(name, safe="")
        return {
            "kind": "storage#object",
            "id": f"{bucket}/{name}/{stored.generation}",
            "name": name,
            "bucket": bucket,
            "generation": str(stored.generation),
            "metageneration": "1",
            "contentType": stored.content_type,
            "size": str(len(stored.data)),
            "md5Hash": _md5(stored.data),
            "crc32c": _crc32c(stored.data),
            "etag": f"C{stored.generation}=",
            "storageClass": "STANDARD",
            "timeCreated": stored.updated,
            "updated": stored.updated,
            "mediaLink": (
                f"{self.endpoint}/download/storage/v1/b/{bucket}/o/{encoded}"
                f"?generation={stored.generation}&alt=media"
            ),
        }


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], bytes]:
    """Split a multipart/related upload into its JSON metadata and content."""
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    parts = body.split(b"--" + boundary)
    payloads = []
    for part in parts[1:]:
        if part.startswith(b"--"):
            break
        _, _, payload = part.partition(b"\r\n\r\n")
        payloads.append(payload.removesuffix(b"\r\n"))
    metadata = json.loads(payloads[0])
    return metadata, payloads[1]


def _crc32c(data: bytes) -> str:
    # The JSON API sends CRC32C as base64 of the big-endian 4-byte value.
    return base64.b64encode(crc32c(data).to_bytes(4, "big")).decode("ascii")


def _md5(data: bytes) -> str:
    # Cloud Storage reports MD5 as an integrity checksum, not for security.
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")  # noqa: S324


def _send_json(handler: BaseHTTPRequestHandler, status: int, value: Any) -> None:
    body = json.dumps(value).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json; charset=UTF-8")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _send_error(
    handler: BaseHTTPRequestHandler, status: int, reason: str, message: str
) -> None:
    # The JSON API's error document ("HTTP status and error codes").
    error = {"domain": "global", "reason": reason, "message": message}
    document = {"error": {"code": status, "message": message, "errors": [error]}}
    _send_json(handler, status, document)
