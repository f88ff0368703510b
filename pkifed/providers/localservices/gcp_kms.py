"""A local, wire-level fake of the Cloud KMS v1 REST API.

The unmodified ``google-cloud-kms`` client talks to it over REST
(``transport="rest"``, anonymous credentials, ``api_endpoint`` set to
:attr:`FakeCloudKms.endpoint`). It serves the asymmetric-signing subset of
the API that pkifed uses: key rings, crypto keys, crypto key versions, public
keys and ``asymmetricSign``, with the rules the REST reference documents
(https://cloud.google.com/kms/docs/reference/rest):

* JSON field names are camelCase, bytes are base64, and int64 values (the
  CRC32C fields) are decimal strings.
* Each key version has one algorithm, which fixes the digest field and its
  length (``sha256`` with 32 bytes for ``*_SHA256``) and, for RSA, the padding.
* A ``digestCrc32c`` or ``dataCrc32c`` that does not match is rejected with
  400 ``INVALID_ARGUMENT``. The response carries ``verifiedDigestCrc32c``,
  ``signatureCrc32c`` and the ``name`` of the version used.
* ECDSA signatures are DER, as Cloud KMS returns them. RSA-PSS uses a salt as
  long as the digest.
* Errors use Google's JSON error body: ``{"error": {"code", "message",
  "status"}}``.

Keys are pyca keys held in memory and lost on :meth:`FakeCloudKms.stop`. The
server listens on a loopback address only. It also implements the
conformance kit's fault injector, plus a few faults of its own that corrupt a
signing response so integrity checks can be tested.

Run it on its own with ``python -m pkifed.providers.localservices.gcp_kms``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime
import json
import logging
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from pkifed.loopback import is_loopback_host

logger = logging.getLogger(__name__)

# --- CRC32C ------------------------------------------------------------------------


def _crc32c_table() -> tuple[int, ...]:
    # CRC-32C (Castagnoli), reflected polynomial 0x82F63B78 (RFC 3720 B.4).
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """Compute the CRC32C checksum that Cloud KMS puts in its ``*Crc32c`` fields."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --- enums and algorithms ----------------------------------------------------------

# Proto enum numbers of google.cloud.kms.v1, used when a client asks for
# ``$alt=json;enum-encoding=int`` (the Python client does).
_ENUM_NUMBERS: dict[str, dict[str, int]] = {
    "algorithm": {
        "CRYPTO_KEY_VERSION_ALGORITHM_UNSPECIFIED": 0,
        "RSA_SIGN_PSS_2048_SHA256": 2,
        "RSA_SIGN_PSS_3072_SHA256": 3,
        "RSA_SIGN_PSS_4096_SHA256": 4,
        "RSA_SIGN_PSS_4096_SHA512": 15,
        "RSA_SIGN_PKCS1_2048_SHA256": 5,
        "RSA_SIGN_PKCS1_3072_SHA256": 6,
        "RSA_SIGN_PKCS1_4096_SHA256": 7,
        "RSA_SIGN_PKCS1_4096_SHA512": 16,
        "EC_SIGN_P256_SHA256": 12,
        "EC_SIGN_P384_SHA384": 13,
        "EC_SIGN_ED25519": 40,
    },
    "state": {
        "CRYPTO_KEY_VERSION_STATE_UNSPECIFIED": 0,
        "ENABLED": 1,
        "DISABLED": 2,
        "DESTROYED": 3,
        "DESTROY_SCHEDULED": 4,
        "PENDING_GENERATION": 5,
    },
    "protectionLevel": {
        "PROTECTION_LEVEL_UNSPECIFIED": 0,
        "SOFTWARE": 1,
        "HSM": 2,
    },
    "purpose": {
        "CRYPTO_KEY_PURPOSE_UNSPECIFIED": 0,
        "ENCRYPT_DECRYPT": 1,
        "ASYMMETRIC_SIGN": 5,
        "ASYMMETRIC_DECRYPT": 6,
        "MAC": 9,
    },
}
_ENUM_NAMES = {
    kind: {number: name for name, number in numbers.items()}
    for kind, numbers in _ENUM_NUMBERS.items()
}


@dataclass(frozen=True)
class _Algorithm:
    """Key type, hash and padding that a Cloud KMS signing algorithm fixes."""

    family: str
    size: int
    hash_name: str | None
    pss: bool = False

    def generate(self) -> Any:
        if self.family == "ec":
            curve = {256: ec.SECP256R1(), 384: ec.SECP384R1()}[self.size]
            return ec.generate_private_key(curve)
        if self.family == "rsa":
            return rsa.generate_private_key(public_exponent=65537, key_size=self.size)
        return ed25519.Ed25519PrivateKey.generate()

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return {
            "sha256": hashes.SHA256(),
            "sha384": hashes.SHA384(),
            "sha512": hashes.SHA512(),
        }[self.hash_name or ""]


_ALGORITHMS = {
    "EC_SIGN_P256_SHA256": _Algorithm("ec", 256, "sha256"),
    "EC_SIGN_P384_SHA384": _Algorithm("ec", 384, "sha384"),
    "EC_SIGN_ED25519": _Algorithm("ed25519", 256, None),
    "RSA_SIGN_PKCS1_2048_SHA256": _Algorithm("rsa", 2048, "sha256"),
    "RSA_SIGN_PKCS1_3072_SHA256": _Algorithm("rsa", 3072, "sha256"),
    "RSA_SIGN_PKCS1_4096_SHA256": _Algorithm("rsa", 4096, "sha256"),
    "RSA_SIGN_PKCS1_4096_SHA512": _Algorithm("rsa", 4096, "sha512"),
    "RSA_SIGN_PSS_2048_SHA256": _Algorithm("rsa", 2048, "sha256", pss=True),
    "RSA_SIGN_PSS_3072_SHA256": _Algorithm("rsa", 3072, "sha256", pss=True),
    "RSA_SIGN_PSS_4096_SHA256": _Algorithm("rsa", 4096, "sha256", pss=True),
    "RSA_SIGN_PSS_4096_SHA512": _Algorithm("rsa", 4096, "sha512", pss=True),
}

_DIGEST_SIZES = {"sha256": 32, "sha384": 48, "sha512": 64}
_RESOURCE_ID = re.compile(r"^[a-zA-Z0-9_-]{1,63}$")
_DEFAULT_PAGE_SIZE = 100
# Cloud KMS schedules destruction 30 days ahead unless the key sets
# destroyScheduledDuration.
_DESTROY_SCHEDULED_DURATION = "2592000s"


class ApiError(Exception):
    """An error response in Google's JSON error format."""

    def __init__(self, http_status: HTTPStatus, status: str, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.status = status
        self.message = message

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": int(self.http_status),
                "message": self.message,
                "status": self.status,
            }
        }


def _not_found(name: str) -> ApiError:
    return ApiError(HTTPStatus.NOT_FOUND, "NOT_FOUND", f"{name} not found.")


def _invalid(message: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT", message)


def _failed_precondition(message: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, "FAILED_PRECONDITION", message)


def _timestamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# --- resources ---------------------------------------------------------------------


@dataclass
class _KeyRing:
    name: str
    created: datetime.datetime

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "createTime": _timestamp(self.created)}


@dataclass
class _Version:
    name: str
    algorithm: str
    protection_level: str
    private_key: Any
    created: datetime.datetime
    state: str = "ENABLED"
    # Until this monotonic time the version reports PENDING_GENERATION.
    ready_at: float = 0.0
    destroy_time: datetime.datetime | None = None

    def current_state(self) -> str:
        if self.state == "PENDING_GENERATION" and time.monotonic() >= self.ready_at:
            self.state = "ENABLED"
        return self.state

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "state": self.current_state(),
            "protectionLevel": self.protection_level,
            "algorithm": self.algorithm,
            "createTime": _timestamp(self.created),
        }
        if self.state != "PENDING_GENERATION":
            body["generateTime"] = _timestamp(self.created)
        if self.destroy_time is not None:
            body["destroyTime"] = _timestamp(self.destroy_time)
        return body


@dataclass
class _CryptoKey:
    name: str
    purpose: str
    algorithm: str
    protection_level: str
    created: datetime.datetime
    labels: dict[str, str]
    versions: list[_Version] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        # Asymmetric keys have no primary version: only ENCRYPT_DECRYPT keys do.
        return {
            "name": self.name,
            "purpose": self.purpose,
            "createTime": _timestamp(self.created),
            "versionTemplate": {
                "protectionLevel": self.protection_level,
                "algorithm": self.algorithm,
            },
            "labels": dict(self.labels),
            "destroyScheduledDuration": _DESTROY_SCHEDULED_DURATION,
        }


@dataclass
class _Faults:
    throttle: int = 0
    fail: int = 0
    delay: float = 0.0
    corrupt_signature_crc32c: int = 0
    wrong_version_name: int = 0
    unverified_digest: int = 0

    @staticmethod
    def take(value: int) -> tuple[bool, int]:
        """Return whether a counted fault fires now and the count left."""
        return (value > 0, max(value - 1, 0))


# --- the service -------------------------------------------------------------------


class FakeCloudKms:
    """An in-memory Cloud KMS served over HTTP on a loopback address.

    Use :meth:`start` and :meth:`stop`, or the instance as a context manager.
    ``pending_generation_seconds`` keeps each new version in
    ``PENDING_GENERATION`` for that long, as HSM keys are in the real service.
    ``max_page_size`` caps every list page, so small values make clients
    follow ``nextPageToken``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        pending_generation_seconds: float = 0.0,
        max_page_size: int = _DEFAULT_PAGE_SIZE,
    ) -> None:
        if not is_loopback_host(host):
            raise ValueError(f"host {host!r} is not a loopback address")
        self._host = host
        self._port = port
        self.pending_generation_seconds = pending_generation_seconds
        self.max_page_size = max_page_size
        self._lock = threading.RLock()
        self._key_rings: dict[str, _KeyRing] = {}
        self._crypto_keys: dict[str, _CryptoKey] = {}
        self._faults = _Faults()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        # (HTTP method, resource path) of every request, oldest first.
        self.requests: list[tuple[str, str]] = []

    # --- lifecycle ---------------------------------------------------------------

    def start(self) -> FakeCloudKms:
        """Bind the port and serve requests on a daemon thread."""
        if self._server is not None:
            raise RuntimeError("the fake Cloud KMS is already running")
        server = ThreadingHTTPServer((self._host, self._port), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="fake-cloud-kms", daemon=True
        )
        self._thread.start()
        logger.info("fake Cloud KMS listening on %s", self.endpoint)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; keys are discarded."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None
        logger.info("fake Cloud KMS stopped")

    def __enter__(self) -> FakeCloudKms:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """The ``http://host:port`` base URL to pass as ``api_endpoint``."""
        if self._server is None:
            raise RuntimeError("the fake Cloud KMS is not running")
        host, port = self._server.server_address[:2]
        host_name = host.decode() if isinstance(host, bytes) else str(host)
        url_host = f"[{host_name}]" if ":" in host_name else host_name
        return f"http://{url_host}:{port}"

    # --- fault injection ---------------------------------------------------------

    def throttle(self, count: int) -> None:
        """Fail the next ``count`` signing requests with 429 RESOURCE_EXHAUSTED."""
        with self._lock:
            self._faults.throttle = count

    def fail(self, count: int) -> None:
        """Fail the next ``count`` signing requests with 500 INTERNAL."""
        with self._lock:
            self._faults.fail = count

    def delay(self, seconds: float) -> None:
        """Sleep ``seconds`` before responding to each signing request."""
        with self._lock:
            self._faults.delay = seconds

    def corrupt_signature_crc32c(self, count: int) -> None:
        """Send a wrong ``signatureCrc32c`` in the next ``count`` signing responses."""
        with self._lock:
            self._faults.corrupt_signature_crc32c = count

    def wrong_version_name(self, count: int) -> None:
        """Name another key version in the next ``count`` signing responses."""
        with self._lock:
            self._faults.wrong_version_name = count

    def unverified_digest(self, count: int) -> None:
        """Send ``verifiedDigestCrc32c: false`` in the next ``count`` responses."""
        with self._lock:
            self._faults.unverified_digest = count

    def disable_key(self, uri: str) -> None:
        """Set the key version at ``uri`` to DISABLED.

        ``uri`` is a resource name, with or without the ``cloudkms:`` prefix.
        A crypto key's name disables all its versions.
        """
        name = uri.removeprefix("cloudkms:")
        with self._lock:
            versions = self._versions_named(name)
            for version in versions:
                version.state = "DISABLED"

    def clear(self) -> None:
        """Stop all injected faults."""
        with self._lock:
            self._faults = _Faults()

    def _versions_named(self, name: str) -> list[_Version]:
        if name in self._crypto_keys:
            return list(self._crypto_keys[name].versions)
        version = self._find_version(name)
        if version is None:
            raise LookupError(f"no crypto key or key version named {name}")
        return [version]

    # --- request dispatch --------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        """Serve one request; raise :class:`ApiError` for an error response."""
        with self._lock:
            self.requests.append((method, path))
        for pattern, handlers in _ROUTES:
            match = pattern.match(path)
            if match is None:
                continue
            handler = handlers.get(method)
            if handler is None:
                raise ApiError(
                    HTTPStatus.METHOD_NOT_ALLOWED,
                    "UNIMPLEMENTED",
                    f"{method} is not supported on {path}",
                )
            return handler(self, match.group(1), query, body)
        raise ApiError(
            HTTPStatus.NOT_FOUND, "NOT_FOUND", f"no method serves the path {path}"
        )

    # --- key rings ---------------------------------------------------------------

    def _create_key_ring(
        self, parent: str, query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        ring_id = query.get("keyRingId", "")
        _check_id("key_ring_id", ring_id)
        name = f"{parent}/keyRings/{ring_id}"
        with self._lock:
            if name in self._key_rings:
                raise ApiError(
                    HTTPStatus.CONFLICT,
                    "ALREADY_EXISTS",
                    f"KeyRing {name} already exists.",
                )
            ring = _KeyRing(name, _now())
            self._key_rings[name] = ring
            return ring.to_json()

    def _list_key_rings(
        self, parent: str, query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        with self._lock:
            rings = [
                ring.to_json()
                for name, ring in sorted(self._key_rings.items())
                if name.startswith(parent + "/keyRings/")
            ]
        return _page(rings, "keyRings", query, self.max_page_size)

    def _get_key_ring(
        self, name: str, query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        with self._lock:
            ring = self._key_rings.get(name)
            if ring is None:
                raise _not_found(name)
            return ring.to_json()

    # --- crypto keys -------------------------------------------------------------

    def _create_crypto_key(
        self, parent: str, query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        key_id = query.get("cryptoKeyId", "")
        _check_id("crypto_key_id", key_id)

        purpose = _enum_in("purpose", body.get("purpose"))
        if purpose != "ASYMMETRIC_SIGN":
            raise _invalid(
                f"purpose {purpose} is not served by this fake; use ASYMMETRIC_SIGN"
            )
        template = body.get("versionTemplate") or {}
        algorithm = _enum_in("algorithm", template.get("algorithm"))
        if algorithm not in _ALGORITHMS:
            raise _invalid(
                f"version_template.algorithm {algorithm} is not valid for purpose "
                "ASYMMETRIC_SIGN"
            )
        protection = _enum_in("protectionLevel", template.get("protectionLevel"))
        if protection == "PROTECTION_LEVEL_UNSPECIFIED":
            protection = "SOFTWARE"
        if protection not in ("SOFTWARE", "HSM"):
            raise _invalid(f"protection level {protection} is not served by this fake")

        skip_version = query.get("skipInitialVersionCreation", "false") == "true"
        name = f"{parent}/cryptoKeys/{key_id}"
        with self._lock:
            if parent not in self._key_rings:
                raise _not_found(parent)
            if name in self._crypto_keys:
                raise ApiError(
                    HTTPStatus.CONFLICT,
                    "ALREADY_EXISTS",
                    f"CryptoKey {name} already exists.",
                )
            key = _CryptoKey(
                name,
                purpose,
                algorithm,
                protection,
                _now(),
                dict(body.get("labels") or {}),
            )
            self._crypto_keys[name] = key

        if not skip_version:
            self._add_version(key)
        return key.to_json()

    def _list_crypto_keys(
        self, parent: str, query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        _reject_filters(query)
        with self._lock:
            if parent not in self._key_rings:
                raise _not_found(parent)
            keys = [
                key.to_json()
                for name, key in sorted(self._crypto_keys.items())
                if name.startswith(parent + "/cryptoKeys/")
            ]
        return _page(keys, "cryptoKeys", query, self.max_page_size)

    def _get_crypto_key(
        self, name: str, query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        return self._crypto_key(name).to_json()

    def _crypto_key(self, name: str) -> _CryptoKey:
        with self._lock:
            key = self._crypto_keys.get(name)
        if key is None:
            raise _not_found(name)
        return key

    # --- key versions ------------------------------------------------------------

    def _add_version(self, key: _CryptoKey) -> _Version:
        # Key generation runs outside the lock: RSA-4096 takes a while.
        private_key = _ALGORITHMS[key.algorithm].generate()
        with self._lock:
            version = _Version(
                name=f"{key.name}/cryptoKeyVersions/{len(key.versions) + 1}",
                algorithm=key.algorithm,
                protection_level=key.protection_level,
                private_key=private_key,
                created=_now(),
            )
            if self.pending_generation_seconds > 0:
                version.state = "PENDING_GENERATION"
                version.ready_at = time.monotonic() + self.pending_generation_seconds
            key.versions.append(version)
        return version

    def _create_version(
        self, parent: str, query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        return self._add_version(self._crypto_key(parent)).to_json()

    def _list_versions(
        self, parent: str, query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        _reject_filters(query)
        key = self._crypto_key(parent)
        with self._lock:
            versions = [version.to_json() for version in key.versions]
        return _page(versions, "cryptoKeyVersions", query, self.max_page_size)

    def _find_version(self, name: str) -> _Version | None:
        parent, _, number = name.rpartition("/cryptoKeyVersions/")
        key = self._crypto_keys.get(parent)
        if key is None or not number.isdigit():
            return None
        index = int(number) - 1
        if not 0 <= index < len(key.versions):
            return None
        return key.versions[index]

    def _version(self, name: str) -> _Version:
        with self._lock:
            version = self._find_version(name)
        if version is None:
            raise _not_found(name)
        return version

    def _get_version(
        self, name: str, query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        return self._version(name).to_json()

    def _patch_version(
        self, name: str, query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        if query.get("updateMask") != "state":
            raise _invalid("update_mask must be 'state'; other fields are read-only")
        target = _enum_in("state", body.get("state"))
        if target not in ("ENABLED", "DISABLED"):
            raise _invalid(f"state may be set to ENABLED or DISABLED, not {target}")
        version = self._version(name)
        with self._lock:
            current = version.current_state()
            if current not in ("ENABLED", "DISABLED"):
                raise _failed_precondition(
                    f"{name} is {current}; only ENABLED and DISABLED versions change "
                    "state this way"
                )
            version.state = target
            return version.to_json()

    def _destroy_version(
        self, name: str, query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        version = self._version(name)
        with self._lock:
            current = version.current_state()
            if current not in ("ENABLED", "DISABLED"):
                raise _failed_precondition(
                    f"{name} is {current} and cannot be destroyed"
                )
            version.state = "DESTROY_SCHEDULED"
            version.destroy_time = _now() + datetime.timedelta(days=30)
            return version.to_json()

    def _restore_version(
        self, name: str, query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        version = self._version(name)
        with self._lock:
            if version.current_state() != "DESTROY_SCHEDULED":
                raise _failed_precondition(f"{name} is not DESTROY_SCHEDULED")
            version.state = "DISABLED"
            version.destroy_time = None
            return version.to_json()

    def _public_key(
        self, name: str, query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        version = self._version(name)
        with self._lock:
            state = version.current_state()
        if state not in ("ENABLED", "DISABLED"):
            raise _failed_precondition(
                f"{name} is {state}; the public key is available for ENABLED and "
                "DISABLED versions only"
            )
        pem = version.private_key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        return {
            "pem": pem.decode("ascii"),
            "algorithm": version.algorithm,
            "pemCrc32c": str(crc32c(pem)),
            "name": version.name,
            "protectionLevel": version.protection_level,
        }

    # --- signing -----------------------------------------------------------------

    def _asymmetric_sign(
        self, name: str, query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        faults = self._take_faults()
        version = self._version(name)
        with self._lock:
            state = version.current_state()
        if state != "ENABLED":
            raise _failed_precondition(
                f"The request cannot be fulfilled. Resource {name} has value {state} "
                "in field crypto_key_version.state."
            )
        algorithm = _ALGORITHMS[version.algorithm]
        if "digest" in body and "data" in body:
            raise _invalid("digest and data cannot both be set")
        if "digest" in body:
            digest = _signing_digest(algorithm, version.algorithm, body)
            signature = _sign_digest(version.private_key, algorithm, digest)
        elif "data" in body:
            signature = _sign_data(version.private_key, algorithm, body)
        else:
            raise _invalid("one of digest or data must be set")

        signature_crc = crc32c(signature)
        if faults.corrupt_signature_crc32c:
            signature_crc ^= 0x1
        returned_name = version.name
        if faults.wrong_version_name:
            returned_name = version.name.rpartition("/")[0] + "/999"
        return {
            "signature": base64.b64encode(signature).decode("ascii"),
            "signatureCrc32c": str(signature_crc),
            "verifiedDigestCrc32c": "digestCrc32c" in body
            and not faults.unverified_digest,
            "verifiedDataCrc32c": "dataCrc32c" in body,
            "name": returned_name,
            "protectionLevel": version.protection_level,
        }

    def _take_faults(self) -> _Faults:
        """Apply the request-level faults and return which response faults fire."""
        with self._lock:
            faults = self._faults
            delay = faults.delay
            throttled, faults.throttle = _Faults.take(faults.throttle)
            failed, faults.fail = _Faults.take(faults.fail)
            corrupt, faults.corrupt_signature_crc32c = _Faults.take(
                faults.corrupt_signature_crc32c
            )
            wrong_name, faults.wrong_version_name = _Faults.take(
                faults.wrong_version_name
            )
            unverified, faults.unverified_digest = _Faults.take(
                faults.unverified_digest
            )
        if delay:
            time.sleep(delay)
        if throttled:
            raise ApiError(
                HTTPStatus.TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded for quota metric 'Cryptographic requests' (injected).",
            )
        if failed:
            raise ApiError(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "Internal error encountered (injected).",
            )
        return _Faults(
            corrupt_signature_crc32c=int(corrupt),
            wrong_version_name=int(wrong_name),
            unverified_digest=int(unverified),
        )


# --- signing helpers ---------------------------------------------------------------


def _signing_digest(algorithm: _Algorithm, name: str, body: dict[str, Any]) -> bytes:
    digest_fields = body["digest"] or {}
    if algorithm.hash_name is None:
        raise _invalid(f"{name} signs data, not a digest; set the data field")
    if set(digest_fields) != {algorithm.hash_name}:
        raise _invalid(
            f"{name} requires digest.{algorithm.hash_name}; got digest fields "
            f"{sorted(digest_fields) or 'none'}"
        )
    digest = _decode_bytes(digest_fields[algorithm.hash_name], "digest")
    expected = _DIGEST_SIZES[algorithm.hash_name]
    if len(digest) != expected:
        raise _invalid(
            f"digest.{algorithm.hash_name} has {len(digest)} bytes, expected {expected}"
        )
    _check_crc32c(body, "digestCrc32c", digest, "digest")
    return digest


def _sign_digest(private_key: Any, algorithm: _Algorithm, digest: bytes) -> bytes:
    prehashed = Prehashed(algorithm.hash_algorithm())
    if algorithm.family == "ec":
        signature: bytes = private_key.sign(digest, ec.ECDSA(prehashed))
        return signature
    if algorithm.pss:
        pss = padding.PSS(padding.MGF1(algorithm.hash_algorithm()), len(digest))
        signature = private_key.sign(digest, pss, prehashed)
        return signature
    signature = private_key.sign(digest, padding.PKCS1v15(), prehashed)
    return signature


def _sign_data(private_key: Any, algorithm: _Algorithm, body: dict[str, Any]) -> bytes:
    data = _decode_bytes(body["data"], "data")
    _check_crc32c(body, "dataCrc32c", data, "data")
    if algorithm.family == "ed25519":
        signature: bytes = private_key.sign(data)
        return signature
    digest = hashes.Hash(algorithm.hash_algorithm())
    digest.update(data)
    return _sign_digest(private_key, algorithm, digest.finalize())


def _check_crc32c(body: dict[str, Any], field_name: str, value: bytes, of: str) -> None:
    if field_name not in body:
        return
    try:
        expected = int(body[field_name])
    except (TypeError, ValueError):
        raise _invalid(f"{field_name} must be an integer") from None
    if crc32c(value) != expected:
        raise _invalid(
            f"The checksum in field {field_name} did not match the data in field {of}."
        )


# --- request parsing helpers -------------------------------------------------------


def _decode_bytes(value: Any, field_name: str) -> bytes:
    # Proto3 JSON accepts standard and URL-safe base64, with or without padding.
    if not isinstance(value, str):
        raise _invalid(f"{field_name} must be a base64 string")
    text = value.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise _invalid(f"{field_name} is not valid base64") from None


def _enum_in(kind: str, value: Any) -> str:
    if value is None:
        return _ENUM_NAMES[kind][0]
    if isinstance(value, int):
        if value not in _ENUM_NAMES[kind]:
            raise _invalid(f"{kind} value {value} is not known to this fake")
        return _ENUM_NAMES[kind][value]
    if isinstance(value, str) and value in _ENUM_NUMBERS[kind]:
        return value
    raise _invalid(f"invalid value {value!r} for {kind}")


def _enums_to_numbers(value: Any) -> Any:
    """Rewrite enum names as numbers, for ``$alt=json;enum-encoding=int``."""
    if isinstance(value, list):
        return [_enums_to_numbers(item) for item in value]
    if not isinstance(value, dict):
        return value
    converted: dict[str, Any] = {}
    for key, item in value.items():
        if key in _ENUM_NUMBERS and isinstance(item, str):
            converted[key] = _ENUM_NUMBERS[key][item]
        else:
            converted[key] = _enums_to_numbers(item)
    return converted


def _check_id(field_name: str, value: str) -> None:
    if not _RESOURCE_ID.match(value):
        raise _invalid(
            f"{field_name} {value!r} must match the regular expression "
            "[a-zA-Z0-9_-]{1,63}"
        )


def _reject_filters(query: dict[str, str]) -> None:
    for name in ("filter", "orderBy"):
        if query.get(name):
            raise _invalid(f"{name} is not supported by this fake")


def _page(
    items: list[dict[str, Any]],
    field_name: str,
    query: dict[str, str],
    max_page_size: int,
) -> dict[str, Any]:
    try:
        size = min(int(query.get("pageSize") or max_page_size), max_page_size)
        start = int(query.get("pageToken") or 0)
    except ValueError:
        raise _invalid("page_size and page_token must be integers here") from None
    if size <= 0 or start < 0:
        raise _invalid("page_size must be positive and page_token not negative")
    body: dict[str, Any] = {
        field_name: items[start : start + size],
        "totalSize": len(items),
    }
    if start + size < len(items):
        body["nextPageToken"] = str(start + size)
    return body


_Handler = Callable[[FakeCloudKms, str, dict[str, str], dict[str, Any]], dict[str, Any]]
_RING = r"projects/[^/]+/locations/[^/]+/keyRings/[^/:]+"
_KEY = _RING + r"/cryptoKeys/[^/:]+"
_VERSION = _KEY + r"/cryptoKeyVersions/[^/:]+"
_ROUTES: list[tuple[re.Pattern[str], dict[str, _Handler]]] = [
    (
        re.compile(r"^(projects/[^/]+/locations/[^/:]+)/keyRings$"),
        {"POST": FakeCloudKms._create_key_ring, "GET": FakeCloudKms._list_key_rings},
    ),
    (re.compile(rf"^({_RING})$"), {"GET": FakeCloudKms._get_key_ring}),
    (
        re.compile(rf"^({_RING})/cryptoKeys$"),
        {
            "POST": FakeCloudKms._create_crypto_key,
            "GET": FakeCloudKms._list_crypto_keys,
        },
    ),
    (re.compile(rf"^({_KEY})$"), {"GET": FakeCloudKms._get_crypto_key}),
    (
        re.compile(rf"^({_KEY})/cryptoKeyVersions$"),
        {"POST": FakeCloudKms._create_version, "GET": FakeCloudKms._list_versions},
    ),
    (
        re.compile(rf"^({_VERSION})$"),
        {"GET": FakeCloudKms._get_version, "PATCH": FakeCloudKms._patch_version},
    ),
    (re.compile(rf"^({_VERSION})/publicKey$"), {"GET": FakeCloudKms._public_key}),
    (
        re.compile(rf"^({_VERSION}):asymmetricSign$"),
        {"POST": FakeCloudKms._asymmetric_sign},
    ),
    (re.compile(rf"^({_VERSION}):destroy$"), {"POST": FakeCloudKms._destroy_version}),
    (re.compile(rf"^({_VERSION}):restore$"), {"POST": FakeCloudKms._restore_version}),
]


# --- HTTP --------------------------------------------------------------------------


def _make_handler(service: FakeCloudKms) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "fake-cloud-kms"
        # Headers and body go out in separate writes; with Nagle's algorithm on,
        # each keep-alive response waits for the client's delayed ACK.
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PATCH(self) -> None:
            self._serve("PATCH")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def _serve(self, method: str) -> None:
            split = urlsplit(self.path)
            query = {key: values[-1] for key, values in parse_qs(split.query).items()}
            path = unquote(split.path)
            ints = "enum-encoding=int" in query.get("$alt", "")
            try:
                body = self._read_body()
                if not path.startswith("/v1/"):
                    raise _not_found(path)
                status, response = (
                    HTTPStatus.OK,
                    service.handle(method, path.removeprefix("/v1/"), query, body),
                )
                if ints:
                    response = _enums_to_numbers(response)
            except ApiError as error:
                status, response = error.http_status, error.body()
            self._send(status, response)

        def _read_body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if not raw:
                return {}
            try:
                parsed = json.loads(raw)
            except ValueError:
                raise _invalid("the request body is not valid JSON") from None
            if not isinstance(parsed, dict):
                raise _invalid("the request body must be a JSON object")
            return parsed

        def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("fake Cloud KMS: %s", format % args)

    return Handler


def main(argv: list[str] | None = None) -> None:
    """Run the fake until interrupted."""
    parser = argparse.ArgumentParser(description="Serve a fake Cloud KMS REST API.")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="Loopback address to bind (default 127.0.0.1).",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="TCP port; 0 picks a free one (default 0)."
    )
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stopped = threading.Event()
    # A supervisor stops the fake with SIGTERM, a terminal with Ctrl-C.
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    service = FakeCloudKms(arguments.host, arguments.port).start()
    print(f"fake Cloud KMS endpoint: {service.endpoint}", flush=True)
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()


if __name__ == "__main__":
    main()
