"""A local Azure Key Vault that the real ``azure-keyvault-keys`` client talks to.

The server speaks the Key Vault keys REST API over TLS on 127.0.0.1: the
challenge-based bearer authentication, the ``api-version`` query parameter,
key creation, retrieval, listing with ``nextLink`` paging, signing, updates,
soft deletion and the service's JSON error bodies. Keys are pyca keys held in
memory, one key type per key name, with a new version on every create as the
service does.

Tests steer it through the fault-injection methods (:meth:`throttle`,
:meth:`fail`, :meth:`delay`, :meth:`disable_key`, :meth:`clear`) and read
:attr:`AzureKeyVaultFake.requests` to see what the client sent.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import json
import logging
import re
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pkifed.providers.algorithms import KeyAlgorithm, ecdsa_der_to_raw
from pkifed.providers.azure import parse_key_uri

logger = logging.getLogger(__name__)

# The resource Key Vault names in its challenge, as the public cloud sends it.
VAULT_RESOURCE = "https://vault.azure.net"

# Key Vault limits a page of a list operation to 25 items.
DEFAULT_PAGE_SIZE = 25

_KEY_NAME = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
_CURVES: dict[str, tuple[ec.EllipticCurve, KeyAlgorithm]] = {
    "P-256": (ec.SECP256R1(), KeyAlgorithm.EC_P256),
    "P-384": (ec.SECP384R1(), KeyAlgorithm.EC_P384),
    "P-521": (ec.SECP521R1(), KeyAlgorithm.EC_P521),
}
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_RSA_SIZES = (2048, 3072, 4096)
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
# JWA (RFC 7518 section 3.4) pairs each ES algorithm with exactly one curve.
_ES_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


# --- TLS for loopback services ----------------------------------------------


@dataclass(frozen=True)
class LoopbackTls:
    """A throwaway CA and a server certificate for 127.0.0.1, ::1 and localhost."""

    ca_bundle: Path
    certificate: Path
    private_key: Path

    def server_context(self) -> ssl.SSLContext:
        """Build a server-side TLS context presenting the certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.certificate, self.private_key)
        return context


def generate_loopback_tls(directory: Path, validity_days: int = 7) -> LoopbackTls:
    """Write a new test CA and a loopback server certificate into ``directory``.

    The CA's private key is discarded once the server certificate is signed, so
    the CA can vouch for nothing else. Files: ``ca.pem`` (the bundle a client
    trusts), ``server.pem`` and ``server-key.pem``.
    """
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(minutes=5)
    not_after = now + datetime.timedelta(days=validity_days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "pkifed local test CA")]
    )
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    alternative_names = x509.SubjectAlternativeName(
        [
            x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
            x509.IPAddress(ipaddress.IPv6Address("::1")),
            x509.DNSName("localhost"),
        ]
    )
    server_certificate = (
        x509.CertificateBuilder()
        .subject_name(server_name)
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(alternative_names, critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    tls = LoopbackTls(
        ca_bundle=directory / "ca.pem",
        certificate=directory / "server.pem",
        private_key=directory / "server-key.pem",
    )
    tls.ca_bundle.write_bytes(ca_certificate.public_bytes(serialization.Encoding.PEM))
    tls.certificate.write_bytes(
        server_certificate.public_bytes(serialization.Encoding.PEM)
    )
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tls.private_key.touch(mode=0o600)
    tls.private_key.write_bytes(key_pem)
    return tls


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


# --- the vault's state ------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _from_b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class _KeyVersion:
    name: str
    version: str
    kty: str
    private_key: PrivateKey
    key_ops: list[str]
    tags: dict[str, str]
    created: int
    updated: int
    enabled: bool = True

    def jwk(self, vault_url: str) -> dict[str, Any]:
        key: dict[str, Any] = {
            "kid": f"{vault_url}/keys/{self.name}/{self.version}",
            "kty": self.kty,
            "key_ops": self.key_ops,
        }
        public = self.private_key.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            numbers = public.public_numbers()
            size = (public.curve.key_size + 7) // 8
            key["crv"] = _CURVE_NAMES[public.curve.name]
            key["x"] = _b64url(numbers.x.to_bytes(size, "big"))
            key["y"] = _b64url(numbers.y.to_bytes(size, "big"))
        else:
            rsa_numbers = public.public_numbers()
            key["n"] = _b64url(
                rsa_numbers.n.to_bytes((public.key_size + 7) // 8, "big")
            )
            key["e"] = _b64url(rsa_numbers.e.to_bytes(3, "big"))
        return key

    def attributes(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "created": self.created,
            "updated": self.updated,
            "recoveryLevel": "Recoverable+Purgeable",
            "recoverableDays": 90,
            "exportable": False,
        }

    def bundle(self, vault_url: str) -> dict[str, Any]:
        return {
            "key": self.jwk(vault_url),
            "attributes": self.attributes(),
            "tags": self.tags,
        }

    def item(self, vault_url: str, *, versioned: bool) -> dict[str, Any]:
        kid = f"{vault_url}/keys/{self.name}"
        if versioned:
            kid = f"{kid}/{self.version}"
        return {"kid": kid, "attributes": self.attributes(), "tags": self.tags}


@dataclass
class _Key:
    kty: str
    versions: list[_KeyVersion] = field(default_factory=list)
    deleted_date: int | None = None

    @property
    def latest(self) -> _KeyVersion:
        return self.versions[-1]

    def version(self, version: str) -> _KeyVersion | None:
        if not version:
            return self.latest
        return next((v for v in self.versions if v.version == version), None)


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received, with the response it sent."""

    method: str
    path: str
    query: dict[str, list[str]]
    authorized: bool
    body: Any
    status: int
    response_body: Any


class ServiceError(Exception):
    """An error response in Key Vault's JSON format."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        inner_code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.inner_code = inner_code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.inner_code is not None:
            error["innererror"] = {"code": self.inner_code}
        return {"error": error}


def _key_not_found(name: str) -> ServiceError:
    return ServiceError(
        404,
        "KeyNotFound",
        f"A key with (name/id) {name} was not found in this key vault.",
    )


# --- the server -------------------------------------------------------------


class AzureKeyVaultFake:
    """A Key Vault keys endpoint over TLS on 127.0.0.1, for tests and local runs.

    ``expected_token`` is the only bearer token accepted; None accepts any
    non-empty token, as the fake has no identity provider to check it against.
    The challenge names ``authority`` (by default the fake's own address plus
    a tenant id), so no client is sent towards a real identity provider.
    """

    def __init__(
        self,
        *,
        tls: LoopbackTls | None = None,
        expected_token: str | None = None,
        tenant_id: str = "00000000-0000-0000-0000-000000000000",
        authority: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tls = tls
        self._temporary_directory: tempfile.TemporaryDirectory[str] | None = None
        self._expected_token = expected_token
        self._tenant_id = tenant_id
        self._authority = authority
        self._page_size = page_size
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, _Key] = {}
        self._requests: list[RecordedRequest] = []
        self._throttle_count = 0
        self._fail_count = 0
        self._delay = 0.0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------

    def start(self) -> AzureKeyVaultFake:
        """Listen on a free port of 127.0.0.1 and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("the Key Vault fake is already running")
        if self._tls is None:
            self._temporary_directory = tempfile.TemporaryDirectory(
                prefix="pkifed-keyvault-"
            )
            self._tls = generate_loopback_tls(Path(self._temporary_directory.name))
        server = _TlsServer(("127.0.0.1", 0), _handler_for(self), self._tls)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="azure-keyvault-fake",
            daemon=True,
        )
        self._thread.start()
        logger.info("Azure Key Vault fake listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and remove generated TLS files."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None
        if self._temporary_directory is not None:
            self._temporary_directory.cleanup()
            self._temporary_directory = None
            self._tls = None
        logger.info("Azure Key Vault fake stopped")

    def __enter__(self) -> AzureKeyVaultFake:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The vault URL clients use, such as ``https://127.0.0.1:50123``."""
        if self._server is None:
            raise RuntimeError("the Key Vault fake is not running")
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    @property
    def ca_bundle(self) -> Path:
        """The PEM file a client must trust to accept the fake's certificate."""
        if self._tls is None:
            raise RuntimeError("the Key Vault fake is not running")
        return self._tls.ca_bundle

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    # --- fault injection (tests.providers.conformance.FaultInjector) ---------

    def throttle(self, count: int) -> None:
        """Respond to the next ``count`` sign requests with 429 and Retry-After."""
        with self._lock:
            self._throttle_count = count

    def fail(self, count: int) -> None:
        """Respond to the next ``count`` sign requests with 500."""
        with self._lock:
            self._fail_count = count

    def delay(self, seconds: float) -> None:
        """Wait ``seconds`` before responding to every following request."""
        with self._lock:
            self._delay = seconds

    def disable_key(self, uri: str) -> None:
        """Disable the key version named by an ``azurekms:`` URI or a key id URL."""
        name, version = _name_and_version(uri)
        self.set_enabled(name, version, enabled=False)

    def clear(self) -> None:
        """Stop every injected throttle, failure and delay."""
        with self._lock:
            self._throttle_count = 0
            self._fail_count = 0
            self._delay = 0.0

    # --- direct state access for tests and local setups ----------------------

    def create_key(
        self,
        name: str,
        kty: str,
        *,
        curve: str | None = None,
        size: int | None = None,
        tags: dict[str, str] | None = None,
    ) -> str:
        """Create a key (or a new version) as CreateKey does; return its key id."""
        body: dict[str, Any] = {"kty": kty, "tags": tags or {}}
        if curve is not None:
            body["crv"] = curve
        if size is not None:
            body["key_size"] = size
        with self._lock:
            version = self._create(name, body)
        return f"{self.url}/keys/{name}/{version.version}"

    def delete_key(self, name: str) -> None:
        """Soft-delete a key, as DeleteKey does in a vault with soft delete."""
        with self._lock:
            self._delete(name)

    def set_enabled(self, name: str, version: str | None, *, enabled: bool) -> None:
        """Enable or disable one version of a key (the latest when None)."""
        with self._lock:
            key = self._live_key(name)
            target = key.version(version or "")
            if target is None:
                raise _key_not_found(f"{name}/{version}")
            target.enabled = enabled
            target.updated = int(self._clock())

    # --- request handling ----------------------------------------------------

    def handle(
        self, method: str, target: str, headers: dict[str, str], raw_body: bytes
    ) -> tuple[int, dict[str, str], Any]:
        """Handle one request and return its status, extra headers and JSON body."""
        split = urlsplit(target)
        query = parse_qs(split.query)
        authorized = self._authorized(headers.get("authorization", ""))
        body: Any = None
        try:
            body = _parse_body(raw_body)
            status, extra, response_body = self._dispatch(
                method, split.path, query, headers, body, authorized
            )
        except ServiceError as error:
            logger.debug(
                "Key Vault fake: %s %s failed with %d %s: %s",
                method,
                split.path,
                error.status,
                error.code,
                error.message,
            )
            status, extra, response_body = error.status, error.headers, error.body()
        with self._lock:
            delay = self._delay
            self._requests.append(
                RecordedRequest(
                    method, split.path, query, authorized, body, status, response_body
                )
            )
        if delay:
            time.sleep(delay)
        return status, extra, response_body

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return self._expected_token is None or token.strip() == self._expected_token

    def _challenge(self) -> ServiceError:
        # Key Vault rejects an unauthenticated request with 401 and a Bearer
        # challenge that names the authority, with the tenant as its path, and the
        # resource. Clients request a token for the scope "<resource>/.default".
        authority = self._authority or f"{self.url}/{self._tenant_id}"
        header = f'Bearer authorization="{authority}", resource="{VAULT_RESOURCE}"'
        return ServiceError(
            401,
            "Unauthorized",
            "AKV10000: Request is missing a Bearer or PoP token.",
            headers={"WWW-Authenticate": header},
        )

    def _dispatch(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        body: Any,
        authorized: bool,
    ) -> tuple[int, dict[str, str], Any]:
        if not authorized:
            raise self._challenge()
        if not query.get("api-version"):
            raise ServiceError(
                400, "BadParameter", "The 'api-version' query parameter is missing."
            )
        parts = [part for part in path.split("/") if part]
        with self._lock:
            return 200, {}, self._route(method, parts, query, body)

    def _route(
        self, method: str, parts: list[str], query: dict[str, list[str]], body: Any
    ) -> Any:
        match method, parts:
            case "GET", ["keys"]:
                return self._list_keys(query)
            case "POST", ["keys", name, "create"]:
                return self._create(name, _object(body)).bundle(self.url)
            case "GET", ["keys", name, "versions"]:
                return self._list_versions(name, query)
            case "GET", ["keys", name]:
                return self._get(name, "").bundle(self.url)
            case "GET", ["keys", name, version]:
                return self._get(name, version).bundle(self.url)
            case "PATCH", ["keys", name] | ["keys", name, _]:
                version = parts[2] if len(parts) == 3 else ""
                return self._update(name, version, _object(body)).bundle(self.url)
            case "POST", ["keys", name, version, "sign"]:
                return self._sign(name, version, _object(body))
            case "DELETE", ["keys", name]:
                return self._delete(name)
            case "GET", ["deletedkeys", name]:
                return self._deleted_bundle(name)
            case "DELETE", ["deletedkeys", name]:
                self._purge(name)
                return None
        raise ServiceError(
            400, "BadParameter", f"{method} /{'/'.join(parts)} is not supported."
        )

    # --- operations (called with the lock held) ------------------------------

    def _live_key(self, name: str) -> _Key:
        key = self._keys.get(name)
        if key is None or key.deleted_date is not None:
            raise _key_not_found(name)
        return key

    def _get(self, name: str, version: str) -> _KeyVersion:
        found = self._live_key(name).version(version)
        if found is None:
            raise _key_not_found(f"{name}/{version}")
        return found

    def _check_create(self, name: str, kty: str) -> _Key | None:
        if not _KEY_NAME.match(name):
            raise ServiceError(
                400,
                "BadParameter",
                "The request URI contains an invalid name: "
                f"{name}. Key names are 1 to 127 characters of 0-9, a-z, A-Z and -.",
            )
        existing = self._keys.get(name)
        if existing is not None and existing.deleted_date is not None:
            raise ServiceError(
                409,
                "Conflict",
                f"Key {name} is currently in a deleted but recoverable state, and "
                "its name cannot be reused; in this state, the key can be recovered "
                "or purged.",
                inner_code="ObjectIsDeletedButRecoverable",
            )
        if existing is not None and existing.kty != kty:
            # NOTE: the real service may accept a new version of another key
            # type. The fake keeps one type per name to catch pkifed mixing them.
            raise ServiceError(
                400,
                "BadParameter",
                f"Key {name} is of type {existing.kty}, not {kty}.",
            )
        return existing

    def _create(self, name: str, body: dict[str, Any]) -> _KeyVersion:
        kty = str(body.get("kty", ""))
        existing = self._check_create(name, kty)
        private_key = _generate(kty, body)

        now = int(self._clock())
        attributes = body.get("attributes") or {}
        version = _KeyVersion(
            name=name,
            version=uuid.uuid4().hex,
            kty=kty,
            private_key=private_key,
            key_ops=list(body.get("key_ops") or ["sign", "verify"]),
            tags=dict(body.get("tags") or {}),
            created=now,
            updated=now,
            enabled=bool(attributes.get("enabled", True)),
        )
        if existing is None:
            existing = self._keys[name] = _Key(kty=kty)
        existing.versions.append(version)

        return version

    def _update(self, name: str, version: str, body: dict[str, Any]) -> _KeyVersion:
        target = self._get(name, version)
        attributes = body.get("attributes") or {}
        if "enabled" in attributes:
            target.enabled = bool(attributes["enabled"])
        if "tags" in body and body["tags"] is not None:
            target.tags = dict(body["tags"])
        target.updated = int(self._clock())
        return target

    def _sign(self, name: str, version: str, body: dict[str, Any]) -> dict[str, Any]:
        if self._throttle_count > 0:
            self._throttle_count -= 1
            raise ServiceError(
                429,
                "Throttled",
                "Request was not processed because too many requests were received.",
                headers={"Retry-After": "0"},
            )
        if self._fail_count > 0:
            self._fail_count -= 1
            raise ServiceError(500, "InternalServerError", "Internal server error.")
        target = self._get(name, version)
        if not target.enabled:
            raise ServiceError(
                403,
                "Forbidden",
                "Operation sign is not allowed on a disabled key.",
                inner_code="KeyDisabled",
            )
        if "sign" not in target.key_ops:
            raise ServiceError(
                403, "Forbidden", "Operation sign is not permitted on this key."
            )
        algorithm = str(body.get("alg", ""))
        digest = _decode_value(body.get("value"))
        signature = _sign_digest(target.private_key, algorithm, digest)
        return {
            "kid": f"{self.url}/keys/{name}/{target.version}",
            "value": _b64url(signature),
        }

    def _delete(self, name: str) -> dict[str, Any]:
        key = self._live_key(name)
        key.deleted_date = int(self._clock())
        return self._deleted_bundle(name)

    def _deleted_bundle(self, name: str) -> dict[str, Any]:
        key = self._keys.get(name)
        if key is None or key.deleted_date is None:
            raise ServiceError(404, "KeyNotFound", f"Deleted Key not found: {name}")
        bundle = key.latest.bundle(self.url)
        bundle["recoveryId"] = f"{self.url}/deletedkeys/{name}"
        bundle["deletedDate"] = key.deleted_date
        bundle["scheduledPurgeDate"] = key.deleted_date + 90 * 86400
        return bundle

    def _purge(self, name: str) -> None:
        self._deleted_bundle(name)
        del self._keys[name]

    def _list_keys(self, query: dict[str, list[str]]) -> dict[str, Any]:
        items = [
            key.latest.item(self.url, versioned=False)
            for name, key in sorted(self._keys.items())
            if key.deleted_date is None
        ]
        return self._page(items, "/keys", query)

    def _list_versions(self, name: str, query: dict[str, list[str]]) -> dict[str, Any]:
        key = self._live_key(name)
        items = [version.item(self.url, versioned=True) for version in key.versions]
        return self._page(items, f"/keys/{name}/versions", query)

    def _page(
        self, items: list[dict[str, Any]], path: str, query: dict[str, list[str]]
    ) -> dict[str, Any]:
        size = self._page_size
        if query.get("maxresults"):
            size = max(1, min(size, int(query["maxresults"][0])))
        skip = int(query.get("$skiptoken", ["0"])[0])
        page = items[skip : skip + size]
        next_link = None
        if skip + size < len(items):
            parameters = {
                "api-version": query["api-version"][0],
                "$skiptoken": str(skip + size),
                "maxresults": str(size),
            }
            next_link = f"{self.url}{path}?{urlencode(parameters)}"
        return {"value": page, "nextLink": next_link}


def _name_and_version(uri: str) -> tuple[str, str | None]:
    if uri.startswith("https://"):
        parts = [part for part in urlsplit(uri).path.split("/") if part]
        if len(parts) < 2 or parts[0] != "keys":
            raise ValueError(f"not a Key Vault key id: {uri}")
        return parts[1], parts[2] if len(parts) > 2 else None
    parsed = parse_key_uri(uri)
    return parsed.name, parsed.version


def _parse_body(raw_body: bytes) -> Any:
    if not raw_body:
        return None
    try:
        return json.loads(raw_body)
    except ValueError:
        raise ServiceError(
            400, "BadParameter", "The request body is not JSON."
        ) from None


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ServiceError(400, "BadParameter", "The request body must be an object.")
    return body


def _decode_value(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ServiceError(400, "BadParameter", "Property 'value' is required.")
    try:
        return _from_b64url(value)
    except (binascii.Error, ValueError):
        raise ServiceError(
            400, "BadParameter", "Property 'value' is not base64url."
        ) from None


def _generate(kty: str, body: dict[str, Any]) -> PrivateKey:
    if kty in ("EC", "EC-HSM"):
        curve_name = str(body.get("crv") or "P-256")
        if curve_name not in _CURVES:
            raise ServiceError(
                400, "BadParameter", f"The curve {curve_name} is not supported."
            )
        return ec.generate_private_key(_CURVES[curve_name][0])
    if kty in ("RSA", "RSA-HSM"):
        size = int(body.get("key_size") or 2048)
        if size not in _RSA_SIZES:
            raise ServiceError(
                400, "BadParameter", f"The RSA key size {size} is not supported."
            )
        return rsa.generate_private_key(public_exponent=65537, key_size=size)
    raise ServiceError(400, "BadParameter", f"The key type {kty!r} is not supported.")


def _sign_digest(private_key: PrivateKey, algorithm: str, digest: bytes) -> bytes:
    family, bits = algorithm[:2], algorithm[2:]
    hash_class = _HASHES.get(bits)
    if hash_class is None or family not in ("ES", "RS", "PS"):
        raise ServiceError(
            400, "BadParameter", f"The algorithm {algorithm!r} is not supported."
        )
    hash_algorithm = hash_class()
    if len(digest) != hash_algorithm.digest_size:
        raise ServiceError(
            400,
            "BadParameter",
            f"Invalid length of 'value': {len(digest)} bytes. "
            f"{hash_algorithm.digest_size} bytes is expected for algorithm "
            f"'{algorithm}'.",
        )
    prehashed = Prehashed(hash_algorithm)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        curve = _CURVE_NAMES[private_key.curve.name]
        if family != "ES" or _ES_CURVES[algorithm] != curve:
            raise _incompatible(algorithm)
        der = private_key.sign(digest, ec.ECDSA(prehashed))
        # JWA (RFC 7518 section 3.4) sends ECDSA signatures as fixed-width r || s.
        return ecdsa_der_to_raw(der, _CURVES[curve][1])
    if family == "RS":
        return private_key.sign(digest, padding.PKCS1v15(), prehashed)
    if family == "PS":
        # RFC 7518 section 3.5: the salt is as long as the hash output.
        pss = padding.PSS(padding.MGF1(hash_class()), hash_algorithm.digest_size)
        return private_key.sign(digest, pss, prehashed)
    raise _incompatible(algorithm)


def _incompatible(algorithm: str) -> ServiceError:
    return ServiceError(
        400,
        "BadParameter",
        f"Key and signing algorithm '{algorithm}' are incompatible.",
    )


# --- HTTP plumbing ----------------------------------------------------------


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        tls: LoopbackTls,
    ) -> None:
        self._context = tls.server_context()
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The handshake runs here, in the connection's own thread, so a slow or
        # broken client cannot stall the accept loop.
        # http.server writes the headers and the body separately; without
        # TCP_NODELAY, Nagle's algorithm and delayed ACKs add about 40 ms to
        # every keep-alive response_body.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            connection = self._context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            logger.debug("TLS handshake with %s failed: %s", client_address, error)
            return
        # wrap_socket detaches the plain socket, so the server's own
        # shutdown_request no longer reaches the connection: close it here.
        try:
            super().finish_request(connection, client_address)
        finally:
            connection.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s failed", client_address)


def _handler_for(fake: AzureKeyVaultFake) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "pkifed-keyvault-fake"

        def _respond(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw_body = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            status, extra, response_body = fake.handle(
                self.command, self.path, headers, raw_body
            )
            payload = (
                b"" if response_body is None else json.dumps(response_body).encode()
            )
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("x-ms-request-id", str(uuid.uuid4()))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _respond

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("%s - %s", self.address_string(), format % args)

    return Handler
