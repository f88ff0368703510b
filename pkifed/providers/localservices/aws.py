"""The local AWS stand-in: moto's server behind proxies, for KMS and S3.

moto's server runs in this process (:class:`moto.server.ThreadedMotoServer`) on
127.0.0.1 and a port the operating system picks. Clients talk to a small
forwarding HTTP proxy in front of it, also on 127.0.0.1. For KMS
(:class:`MotoKms`) the proxy brings moto's Sign closer to AWS and can inject
faults. These corrections live here, in the stand-in, and never in the
``aws-kms`` provider, which is written against the KMS API reference and must
not change to suit moto.

What the KMS proxy corrects, checked in moto 5.2.5:

* moto ignores ``MessageType``: ``KmsResponse.sign`` in moto/kms/responses.py
  reads it but never passes it to the backend, whose keys always hash the
  message, so a ``DIGEST`` is hashed a second time. The proxy signs the digest
  as prehashed instead.
* moto signs RSASSA-PSS with ``PSS.MAX_LENGTH`` salt (``RSAPrivateKey`` in
  moto/kms/utils.py), while KMS uses a salt as long as the digest. The proxy
  signs with the digest length.
* moto signs with disabled keys and keys pending deletion. The proxy rejects
  Sign and GetPublicKey for them with ``DisabledException`` and
  ``KMSInvalidStateException``, as the KMS API reference lists.
* The Sign API rejects ``RAW`` messages over 4,096 bytes and ``DIGEST`` messages
  whose length differs from the hash's, but moto accepts them. The proxy
  rejects both with ``ValidationException``.

For the first two, moto still validates the request (key, usage, algorithm)
and signs. The proxy then replaces the signature with a correct one made with
the same key, which it reads from moto's in-process backend.

For S3 (:class:`MotoS3`), what was checked in moto 5.2.5 (moto/s3/responses.py,
``put_object`` and ``delete_object``): moto honours ``If-None-Match: *`` and
``If-Match`` on PutObject and ``If-Match`` on DeleteObject with 412
``PreconditionFailed``, and responds to If-Match on a missing key with 404
``NoSuchKey``. It checks the precondition and then writes in two steps under no
lock. In 30 racing pairs of ``If-None-Match: *`` writes without the proxy's
lock, no pair both succeeded, but nothing in moto guarantees that. S3 makes the
check and the write atomic, so the proxy serialises conditional writes to match.

moto keeps its state per process, so keys and buckets outlive :meth:`stop` and
are lost when the process exits. moto is imported only when a service starts;
it comes with the ``dev`` extra.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from pkifed.providers.aws import LOOPBACK_ACCESS_KEY_ID, LOOPBACK_SECRET_ACCESS_KEY
from pkifed.providers.localservices import DEV_EXTRA_HINT, LocalServiceError
from pkifed.providers.localservices.proxy import FaultProxy, sigv4_access_key_id

# The credentials every client of the stand-in uses: the placeholders that the
# aws-kms provider and the s3 target send to a loopback endpoint. moto accepts
# any credentials.
ACCESS_KEY_ID = LOOPBACK_ACCESS_KEY_ID
SECRET_ACCESS_KEY = LOOPBACK_SECRET_ACCESS_KEY
REGION = "us-east-1"

# The Sign API's limit on Message (KMS API reference, Sign).
MAX_RAW_MESSAGE = 4096

_HASHES: dict[str, hashes.HashAlgorithm] = {
    "256": hashes.SHA256(),
    "384": hashes.SHA384(),
    "512": hashes.SHA512(),
}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


@dataclass
class _Fault:
    operations: frozenset[str]
    code: str
    status: int
    message: str
    remaining: int
    drop: bool = False


def start_moto_server() -> Any:
    """Start moto's server in this process on 127.0.0.1 and a free port.

    Raises:
        LocalServiceError: moto or its server dependencies are not installed.
    """
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as error:
        raise LocalServiceError(
            f"the local AWS stand-in needs moto's server, which failed to import "
            f"({error}); {DEV_EXTRA_HINT}"
        ) from None
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    return server


def client_environment(*extra: str) -> dict[str, str | None]:
    """Return variables that give boto3 the stand-in's credentials and nothing else.

    A value of None means the variable must be unset. The shared config files
    point at the null device so a developer's profile cannot leak in, and
    AWS_EC2_METADATA_DISABLED keeps boto3 off the instance metadata service.
    ``extra`` names more variables to unset, such as ``AWS_ENDPOINT_URL_KMS``.
    """
    environment: dict[str, str | None] = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_SESSION_TOKEN": None,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_PROFILE": None,
        "AWS_DEFAULT_PROFILE": None,
        "AWS_ROLE_ARN": None,
        "AWS_WEB_IDENTITY_TOKEN_FILE": None,
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": None,
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": None,
        "AWS_ENDPOINT_URL": None,
    }
    environment.update(dict.fromkeys(extra))
    return environment


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, service: MotoKms) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.service = service

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Tests that time out or drop connections close the client before the
        # response is written, which is expected and not a fault of the stand-in.
        error = sys.exc_info()[1]
        if isinstance(error, BrokenPipeError | ConnectionResetError):
            return
        super().handle_error(request, client_address)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm on,
    # the client's delayed ACK adds about 40 ms to every request.
    disable_nagle_algorithm = True
    server: _ProxyServer

    def do_POST(self) -> None:
        self.server.service.handle(self)

    do_GET = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        """Keep request lines out of test output."""


class MotoKms:
    """moto's KMS behind a correcting, fault-injecting proxy.

    Implements the conformance kit's ``FaultInjector``. ``throttle``, ``fail``,
    ``drop``, ``delay`` and ``inject`` apply to Sign requests unless their
    ``operations`` argument names others.
    """

    def __init__(self, region: str = REGION) -> None:
        self.region = region
        self.sign_requests: list[dict[str, Any]] = []
        # Access key IDs of the signed requests, so tests can check which
        # credentials a client sent. The secret key never travels.
        self.access_key_ids: list[str] = []
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._delay = 0.0
        self._delay_operations: frozenset[str] = frozenset({"Sign"})
        self._moto: Any = None
        self._proxy: _ProxyServer | None = None
        self._proxy_thread: threading.Thread | None = None
        self._moto_address: tuple[str, int] | None = None

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start moto's server and the proxy, each on 127.0.0.1 and a free port.

        Raises:
            LocalServiceError: moto is not installed.
        """
        self._moto = start_moto_server()
        self._moto_address = self._moto.get_host_and_port()
        self._proxy = _ProxyServer(self)
        self._proxy_thread = threading.Thread(
            target=self._proxy.serve_forever, name="moto-kms-proxy", daemon=True
        )
        self._proxy_thread.start()

    def stop(self) -> None:
        """Stop the proxy and moto's server."""
        if self._proxy is not None:
            self._proxy.shutdown()
            self._proxy.server_close()
            self._proxy = None
        if self._proxy_thread is not None:
            self._proxy_thread.join()
            self._proxy_thread = None
        if self._moto is not None:
            self._moto.stop()
            self._moto = None

    def __enter__(self) -> MotoKms:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        """The proxy's URL, which clients under test use."""
        if self._proxy is None:
            raise RuntimeError("MotoKms is not started")
        host, port = self._proxy.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def moto_endpoint_url(self) -> str:
        """moto's own URL, without the proxy's corrections or faults."""
        if self._moto_address is None:
            raise RuntimeError("MotoKms is not started")
        host, port = self._moto_address
        return f"http://{host}:{port}"

    def client_environment(self) -> dict[str, str | None]:
        """Return variables that give boto3 the stand-in's credentials only."""
        return client_environment("AWS_ENDPOINT_URL_KMS")

    def client(self, *, direct: bool = False, validate: bool = True) -> Any:
        """Build a boto3 KMS client with the stand-in's credentials.

        ``direct`` talks to moto without the proxy; ``validate=False`` turns off
        botocore's client-side parameter checks so oversized messages reach
        the service.
        """
        import boto3
        from botocore.config import Config

        return boto3.client(
            "kms",
            region_name=self.region,
            endpoint_url=self.moto_endpoint_url if direct else self.endpoint_url,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            config=Config(
                retries={"mode": "standard", "total_max_attempts": 1},
                parameter_validation=validate,
            ),
        )

    # --- faults ---------------------------------------------------------------------

    def throttle(self, count: int) -> None:
        """Fail the next ``count`` Sign requests with ThrottlingException (400)."""
        self.inject("ThrottlingException", 400, count, message="Rate exceeded")

    def fail(self, count: int) -> None:
        """Fail the next ``count`` Sign requests with KMSInternalException (500)."""
        self.inject("KMSInternalException", 500, count, message="Internal failure")

    def inject(
        self,
        code: str,
        status: int,
        count: int,
        *,
        operations: Iterable[str] = ("Sign",),
        message: str = "injected by a test",
    ) -> None:
        """Fail the next ``count`` requests for ``operations`` with an error."""
        fault = _Fault(frozenset(operations), code, status, message, count)
        with self._lock:
            self._faults.append(fault)

    def drop(self, count: int, *, operations: Iterable[str] = ("Sign",)) -> None:
        """Close the connection without a response for the next ``count`` requests."""
        fault = _Fault(frozenset(operations), "", 0, "", count, drop=True)
        with self._lock:
            self._faults.append(fault)

    def delay(self, seconds: float, *, operations: Iterable[str] = ("Sign",)) -> None:
        """Hold every later request for ``operations`` for ``seconds`` until clear()."""
        with self._lock:
            self._delay = seconds
            self._delay_operations = frozenset(operations)

    def disable_key(self, uri: str) -> None:
        """Disable a key through KMS DisableKey; takes a key URI, ID or ARN."""
        self.client(direct=True).disable_key(KeyId=key_id_of(uri))

    def clear(self) -> None:
        """Stop every injected fault and delay, and forget the access key IDs."""
        with self._lock:
            self._faults.clear()
            self._delay = 0.0
            self.access_key_ids.clear()

    # --- proxy ----------------------------------------------------------------------

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        """Serve one proxied request: faults, checks, moto, then corrections."""
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length)
        operation = handler.headers.get("X-Amz-Target", "").rpartition(".")[2]
        access_key = sigv4_access_key_id(handler.headers.get("Authorization", ""))
        if access_key is not None:
            with self._lock:
                self.access_key_ids.append(access_key)
        fault, delay = self._take_fault(operation)
        if delay:
            time.sleep(delay)
        if fault is not None and fault.drop:
            handler.close_connection = True
            return
        if fault is not None:
            _send_error(handler, fault.status, fault.code, fault.message)
            return

        request = _json(body) if operation in ("Sign", "GetPublicKey") else {}
        if operation == "Sign":
            self._record_sign(request)
            rejection = _check_sign_request(request)
            if rejection is not None:
                _send_error(handler, 400, "ValidationException", rejection)
                return

        status, headers, answer = self._forward(handler, body)
        if status == 200 and operation in ("Sign", "GetPublicKey"):
            corrected = self._correct(operation, request, answer)
            if isinstance(corrected, tuple):
                _send_error(handler, 400, *corrected)
                return
            answer = corrected
        _send(handler, status, headers, answer)

    def _take_fault(self, operation: str) -> tuple[_Fault | None, float]:
        with self._lock:
            delay = self._delay if operation in self._delay_operations else 0.0
            for fault in self._faults:
                if operation in fault.operations and fault.remaining > 0:
                    fault.remaining -= 1
                    return fault, delay
        return None, delay

    def _record_sign(self, request: dict[str, Any]) -> None:
        message = base64.b64decode(request.get("Message", ""))
        with self._lock:
            self.sign_requests.append(
                {
                    "KeyId": request.get("KeyId"),
                    "MessageType": request.get("MessageType", "RAW"),
                    "SigningAlgorithm": request.get("SigningAlgorithm"),
                    "MessageLength": len(message),
                }
            )

    def _forward(
        self, handler: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        if self._moto_address is None:
            raise RuntimeError("MotoKms is not started")
        connection = http.client.HTTPConnection(*self._moto_address, timeout=30)
        try:
            # The Host header is forwarded unchanged because SigV4 signs it.
            headers = {k: v for k, v in handler.headers.items()}
            connection.request(handler.command, handler.path, body, headers)
            response = connection.getresponse()
            answer = response.read()
            forwarded_headers = [
                (k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP
            ]
            return response.status, forwarded_headers, answer
        finally:
            connection.close()

    def _correct(
        self, operation: str, request: dict[str, Any], answer: bytes
    ) -> bytes | tuple[str, str]:
        """Apply key states and re-sign; return the new body or an error."""
        response = _json(answer)
        key = self._moto_key(str(response.get("KeyId") or request["KeyId"]))
        if key.key_state == "Disabled":
            return "DisabledException", f"{key.arn} is disabled."
        if key.key_state != "Enabled":
            return "KMSInvalidStateException", f"{key.arn} is {key.key_state}."
        if operation == "GetPublicKey":
            return answer
        message = base64.b64decode(request["Message"])
        signature = _sign_like_kms(
            key.private_key.private_key,
            str(request["SigningAlgorithm"]),
            str(request.get("MessageType", "RAW")),
            message,
        )
        response["Signature"] = base64.b64encode(signature).decode("ascii")
        return json.dumps(response).encode()

    def _moto_key(self, key_id: str) -> Any:
        """moto's key object for a key ID, key ARN or alias."""
        from moto.core.models import DEFAULT_ACCOUNT_ID
        from moto.kms.models import kms_backends

        account, region = DEFAULT_ACCOUNT_ID, self.region
        if key_id.startswith("arn:"):
            # arn:aws:kms:<region>:<account>:key/<key id>
            region, account = key_id.split(":")[3:5]
        backend = kms_backends[account][region]
        return backend.keys[backend.any_id_to_key_id(key_id)]


class MotoS3:
    """moto's S3 on 127.0.0.1 behind a proxy that serialises conditional writes.

    Tests can make the proxy fail the next requests with :meth:`fail`.
    """

    def __init__(self, region: str = REGION) -> None:
        self.region = region
        self._moto: Any = None
        self.proxy: FaultProxy | None = None

    def start(self) -> None:
        """Start moto's server and the proxy, each on 127.0.0.1 and a free port.

        Raises:
            LocalServiceError: moto is not installed.
        """
        self._moto = start_moto_server()
        host, port = self._moto.get_host_and_port()
        self.proxy = FaultProxy((host, port), serialize_conditional_writes=True)
        self.proxy.start()

    def stop(self) -> None:
        """Stop the proxy and moto's server."""
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        if self._moto is not None:
            self._moto.stop()
            self._moto = None

    def __enter__(self) -> MotoS3:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        """The proxy's URL, which clients use."""
        if self.proxy is None:
            raise RuntimeError("MotoS3 is not started")
        host, port = self.proxy.address
        return f"http://{host}:{port}"

    def client_environment(self) -> dict[str, str | None]:
        """Return variables that give boto3 the stand-in's credentials only."""
        return client_environment("AWS_ENDPOINT_URL_S3")

    def client(self) -> Any:
        """Build a boto3 S3 client with the stand-in's credentials, via the proxy."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            config=Config(
                retries={"mode": "standard", "total_max_attempts": 1},
                s3={"addressing_style": "path"},
            ),
        )

    def create_bucket(self, prefix: str = "pkifed", *, name: str | None = None) -> str:
        """Create a bucket and return its name: ``name``, or a unique one."""
        bucket = name or f"{prefix}-{uuid.uuid4().hex[:12]}"
        client = self.client()
        try:
            client.create_bucket(Bucket=bucket)
        finally:
            client.close()
        return bucket

    def fail(self, count: int, code: str = "SlowDown", status: int = 503) -> None:
        """Fail the next ``count`` requests with an S3 error document."""
        if self.proxy is None:
            raise RuntimeError("MotoS3 is not started")
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>injected by a test"
            f"</Message><RequestId>{uuid.uuid4()}</RequestId></Error>"
        ).encode()
        self.proxy.fail(count, status, body, [("Content-Type", "application/xml")])


def key_id_of(uri: str) -> str:
    """Return the key ID or ARN in an ``awskms:key-id=...`` URI, or ``uri`` itself."""
    for part in uri.removeprefix("awskms:").split(";"):
        name, _, value = part.partition("=")
        if name == "key-id":
            return value
    return uri


def _check_sign_request(request: dict[str, Any]) -> str | None:
    message = base64.b64decode(request.get("Message", ""))
    message_type = request.get("MessageType", "RAW")
    algorithm = str(request.get("SigningAlgorithm", ""))
    if message_type == "RAW" and len(message) > MAX_RAW_MESSAGE:
        return (
            "1 validation error detected: Value at 'message' failed to satisfy "
            "constraint: Member must have length less than or equal to "
            f"{MAX_RAW_MESSAGE}"
        )
    hash_algorithm = _HASHES.get(algorithm.rpartition("_")[2])
    if message_type != "DIGEST" or hash_algorithm is None:
        return None
    if len(message) != hash_algorithm.digest_size:
        return (
            f"Digest is invalid length for algorithm {algorithm}: got "
            f"{len(message)} bytes, expected {hash_algorithm.digest_size}"
        )
    return None


def _sign_like_kms(
    private_key: Any, algorithm: str, message_type: str, data: bytes
) -> bytes:
    """Sign as KMS does: prehashed for DIGEST, PSS salt equal to the digest."""
    hash_algorithm = _HASHES[algorithm.rpartition("_")[2]]
    chosen: hashes.HashAlgorithm | Prehashed = hash_algorithm
    if message_type == "DIGEST":
        chosen = Prehashed(hash_algorithm)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(data, ec.ECDSA(chosen))
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise TypeError(f"moto key of type {type(private_key).__name__} cannot sign")
    pad: padding.AsymmetricPadding = padding.PKCS1v15()
    if algorithm.startswith("RSASSA_PSS"):
        pad = padding.PSS(padding.MGF1(hash_algorithm), padding.PSS.DIGEST_LENGTH)
    return private_key.sign(data, pad, chosen)


def _json(body: bytes) -> dict[str, Any]:
    value = json.loads(body or b"{}")
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


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
    handler.wfile.write(body)


def _send_error(
    handler: BaseHTTPRequestHandler, status: int, code: str, message: str
) -> None:
    # The AWS JSON 1.1 protocol's error shape, which botocore parses into
    # ClientError's Code and Message.
    body = json.dumps({"__type": code, "message": message}).encode()
    headers = [
        ("Content-Type", "application/x-amz-json-1.1"),
        ("x-amzn-RequestId", str(uuid.uuid4())),
        ("x-amzn-ErrorType", code),
    ]
    _send(handler, status, headers, body)
