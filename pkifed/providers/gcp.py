"""The ``gcp-kms`` key provider: signing keys in Google Cloud KMS.

Layout: one key ring per federation (``key_ring``, by default the federation's
name) and one ``ASYMMETRIC_SIGN`` crypto key per key name, whose crypto key id
is the key name. Key URIs use step-ca's form,
``cloudkms:projects/P/locations/L/keyRings/R/cryptoKeys/K/cryptoKeyVersions/N``.

Cloud KMS binds the whole signature algorithm, hash and RSA padding included,
to each key version (``RSA_SIGN_PKCS1_2048_SHA256``, ``RSA_SIGN_PSS_2048_SHA256``
and so on), so an RSA key signs with one padding only. Keys are created with
RSASSA-PKCS1-v1_5 and SHA-256 unless ``rsa_padding: pss`` is set, and a scheme
that does not match a version's algorithm is rejected before any request.
Cloud KMS offers no P-521 curve.

Asymmetric keys have no primary version (only ``ENCRYPT_DECRYPT`` keys do), so a
URI that names a crypto key without a version resolves to its lowest-numbered
version that still has key material.

Every ``AsymmetricSign`` and ``GetPublicKey`` response is checked as the
integrity fields of those messages document: the service verified the
digest's CRC32C, the signature and PEM match their CRC32C, and the response
names the key version requested. On a mismatch the documentation says to
discard the response and retry a limited number of times, so it raises
:class:`IntegrityError`, which the provider's retry settings retry.
"""

from __future__ import annotations

import datetime
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from pydantic import Field, field_validator

from pkifed.errors import (
    AccessDeniedError,
    IntegrityError,
    KeyNotFoundError,
    KeyUnusableError,
    PluginError,
    ProviderError,
    ProviderPermanentError,
    ProviderTemporaryError,
    UnsupportedAlgorithmError,
)
from pkifed.loopback import is_loopback_url
from pkifed.providers.algorithms import (
    HashName,
    KeyAlgorithm,
    PublicKey,
    RsaPadding,
    SignatureScheme,
    algorithm_of_public_key,
)
from pkifed.providers.base import (
    KeyInfo,
    KeyProvider,
    KeyState,
    ProtectionLevel,
    ProviderContext,
    ProviderSettings,
    ProviderStatus,
)
from pkifed.providers.retry import call_with_retry

logger = logging.getLogger(__name__)

T = TypeVar("T")

URI_PREFIX = "cloudkms:"
_RESOURCE_ID = r"^[a-zA-Z0-9_-]{1,63}$"
_VERSION_NAME = re.compile(
    r"^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+"
    r"(/cryptoKeyVersions/[0-9]+)?$"
)


# --- algorithms --------------------------------------------------------------------


@dataclass(frozen=True)
class _GcpAlgorithm:
    """Key type, hash and padding that one Cloud KMS signing algorithm fixes."""

    key: KeyAlgorithm
    hash: HashName | None
    padding: RsaPadding | None = None

    def accepts(self, scheme: SignatureScheme) -> bool:
        return (scheme.key, scheme.hash, scheme.padding) == (
            self.key,
            self.hash,
            self.padding,
        )


# Signing algorithms of CryptoKeyVersionAlgorithm in google-cloud-kms 3.18.
# RSA_SIGN_RAW_*, secp256k1, ML-DSA and SLH-DSA are left out. pkifed has no
# equivalent of the first two, and cannot yet use a provider's ML-DSA key.
_ALGORITHMS: dict[str, _GcpAlgorithm] = {
    "EC_SIGN_P256_SHA256": _GcpAlgorithm(KeyAlgorithm.EC_P256, HashName.SHA256),
    "EC_SIGN_P384_SHA384": _GcpAlgorithm(KeyAlgorithm.EC_P384, HashName.SHA384),
    # NOTE: EC_SIGN_ED25519 signs the data field and is tested against the
    # local fake only; which protection levels the real service offers it at
    # is not checked here.
    "EC_SIGN_ED25519": _GcpAlgorithm(KeyAlgorithm.ED25519, None),
    "RSA_SIGN_PKCS1_2048_SHA256": _GcpAlgorithm(
        KeyAlgorithm.RSA_2048, HashName.SHA256, RsaPadding.PKCS1V15
    ),
    "RSA_SIGN_PKCS1_3072_SHA256": _GcpAlgorithm(
        KeyAlgorithm.RSA_3072, HashName.SHA256, RsaPadding.PKCS1V15
    ),
    "RSA_SIGN_PKCS1_4096_SHA256": _GcpAlgorithm(
        KeyAlgorithm.RSA_4096, HashName.SHA256, RsaPadding.PKCS1V15
    ),
    "RSA_SIGN_PKCS1_4096_SHA512": _GcpAlgorithm(
        KeyAlgorithm.RSA_4096, HashName.SHA512, RsaPadding.PKCS1V15
    ),
    "RSA_SIGN_PSS_2048_SHA256": _GcpAlgorithm(
        KeyAlgorithm.RSA_2048, HashName.SHA256, RsaPadding.PSS
    ),
    "RSA_SIGN_PSS_3072_SHA256": _GcpAlgorithm(
        KeyAlgorithm.RSA_3072, HashName.SHA256, RsaPadding.PSS
    ),
    "RSA_SIGN_PSS_4096_SHA256": _GcpAlgorithm(
        KeyAlgorithm.RSA_4096, HashName.SHA256, RsaPadding.PSS
    ),
    "RSA_SIGN_PSS_4096_SHA512": _GcpAlgorithm(
        KeyAlgorithm.RSA_4096, HashName.SHA512, RsaPadding.PSS
    ),
}


def _creation_algorithm(algorithm: KeyAlgorithm, rsa_padding: RsaPadding) -> str:
    """Name the Cloud KMS algorithm that new keys of ``algorithm`` get."""
    for name, gcp in _ALGORITHMS.items():
        if gcp.key is not algorithm:
            continue
        if gcp.hash not in (None, algorithm.default_hash):
            continue
        if gcp.padding in (None, rsa_padding):
            return name
    raise UnsupportedAlgorithmError(
        f"Cloud KMS has no signing algorithm for {algorithm}"
    )


SUPPORTED_ALGORITHMS = frozenset(gcp.key for gcp in _ALGORITHMS.values())

# Version states to KeyState. PENDING_GENERATION and PENDING_IMPORT are missing
# on purpose: such a version has no usable key yet, so it raises a temporary
# error. Failed generation or import leaves no key material, as destruction does.
_STATES = {
    "ENABLED": KeyState.ENABLED,
    "DISABLED": KeyState.DISABLED,
    "DESTROY_SCHEDULED": KeyState.PENDING_DELETION,
    "PENDING_EXTERNAL_DESTRUCTION": KeyState.PENDING_DELETION,
    "EXTERNAL_DESTRUCTION_FAILED": KeyState.PENDING_DELETION,
    "DESTROYED": KeyState.DESTROYED,
    "GENERATION_FAILED": KeyState.DESTROYED,
    "IMPORT_FAILED": KeyState.DESTROYED,
}
_PENDING_STATES = frozenset({"PENDING_GENERATION", "PENDING_IMPORT"})
_LIVE_STATES = frozenset({"ENABLED", "DISABLED", *_PENDING_STATES})

# The ProtectionLevel enum of google-cloud-kms 3.18 documents HSM_SINGLE_TENANT
# as "performed in a single-tenant HSM", which is still an HSM.
_PROTECTION_LEVELS = {
    "HSM": ProtectionLevel.HSM,
    "HSM_SINGLE_TENANT": ProtectionLevel.HSM,
    "SOFTWARE": ProtectionLevel.SOFTWARE,
}


# --- errors ------------------------------------------------------------------------

# The one table from Google's canonical status codes to pkifed errors. REST
# responses carry the code in the JSON body; gRPC errors carry it in their type.
_ERRORS: dict[str, type[ProviderError]] = {
    "RESOURCE_EXHAUSTED": ProviderTemporaryError,
    "UNAVAILABLE": ProviderTemporaryError,
    "INTERNAL": ProviderTemporaryError,
    "DEADLINE_EXCEEDED": ProviderTemporaryError,
    "ABORTED": ProviderTemporaryError,
    "CANCELLED": ProviderTemporaryError,
    "UNKNOWN": ProviderTemporaryError,
    "NOT_FOUND": KeyNotFoundError,
    "PERMISSION_DENIED": AccessDeniedError,
    "UNAUTHENTICATED": AccessDeniedError,
    # Cloud KMS returns FAILED_PRECONDITION when a version is not ENABLED.
    "FAILED_PRECONDITION": KeyUnusableError,
    "INVALID_ARGUMENT": ProviderPermanentError,
    "OUT_OF_RANGE": ProviderPermanentError,
    "ALREADY_EXISTS": ProviderPermanentError,
    "UNIMPLEMENTED": UnsupportedAlgorithmError,
}

# Canonical codes of HTTP statuses, for REST errors whose body has no status.
_HTTP_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _status_of(error: Exception) -> str | None:
    """Return the canonical status code of an SDK error, or None if unknown."""
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions

    if isinstance(error, api_exceptions.GoogleAPICallError):
        return _call_error_status(error)
    if isinstance(error, api_exceptions.RetryError):
        return "DEADLINE_EXCEEDED"
    if isinstance(error, auth_exceptions.DefaultCredentialsError):
        return "UNAUTHENTICATED"
    if isinstance(error, auth_exceptions.TransportError):
        return "UNAVAILABLE"

    import requests

    if isinstance(error, requests.Timeout):
        return "DEADLINE_EXCEEDED"
    if isinstance(error, requests.ConnectionError):
        return "UNAVAILABLE"
    return None


def _call_error_status(error: Any) -> str:
    response = getattr(error, "response", None)
    if response is not None and hasattr(response, "json"):
        try:
            status = response.json().get("error", {}).get("status")
        except (ValueError, AttributeError):
            status = None
        if isinstance(status, str) and status:
            return status
    grpc_code = getattr(error, "grpc_status_code", None)
    if grpc_code is not None:
        return str(grpc_code.name)
    return _HTTP_STATUSES.get(int(error.code or 0), "UNKNOWN")


def _is_connection_failure(error: Exception) -> bool:
    """Return whether ``error`` means no connection to the service was made."""
    import requests

    if isinstance(error, requests.ConnectionError) and not isinstance(
        error, requests.Timeout
    ):
        return True
    cause = error.__cause__ or error.__context__
    return (
        cause is not None
        and cause is not error
        and _is_connection_failure(
            cause  # type: ignore[arg-type]
        )
    )


class _PendingKeyError(ProviderTemporaryError):
    """A key version that is still being generated or imported."""


# --- URIs --------------------------------------------------------------------------


def parse_uri(uri: str) -> str:
    """Return the resource name in a ``cloudkms:`` URI.

    Both step-ca spellings are accepted: ``cloudkms:projects/...`` and
    ``cloudkms:resource=projects/...``. The name is a crypto key or a version.

    Raises:
        KeyNotFoundError: the URI is not a Cloud KMS key URI.
    """
    if not uri.startswith(URI_PREFIX):
        raise KeyNotFoundError(f"{uri!r} is not a Cloud KMS key URI (cloudkms:...)")
    name = uri.removeprefix(URI_PREFIX).removeprefix("resource=")
    if not _VERSION_NAME.match(name):
        raise KeyNotFoundError(
            f"{uri!r} is not a Cloud KMS key URI; expected cloudkms:projects/P/"
            "locations/L/keyRings/R/cryptoKeys/K[/cryptoKeyVersions/N]"
        )
    return name


def _uri(name: str) -> str:
    return URI_PREFIX + name


# --- settings ----------------------------------------------------------------------


class GcpKmsSettings(ProviderSettings):
    """Settings of a ``gcp-kms`` provider."""

    type: Literal["gcp-kms"] = Field(description="Provider type: gcp-kms.")
    project: str = Field(
        min_length=1, description="Google Cloud project id that contains the key ring."
    )
    location: str = Field(
        pattern=_RESOURCE_ID,
        description="Cloud KMS location of the key ring, such as global or us-east1.",
    )
    key_ring: str | None = Field(
        default=None,
        pattern=_RESOURCE_ID,
        description="Key ring id; defaults to the federation's name.",
    )
    endpoint: str | None = Field(
        default=None,
        description=(
            "Cloud KMS API endpoint URL; selects the REST transport. A loopback "
            "http:// endpoint (a local fake) is called with anonymous credentials; "
            "any other endpoint must be https:// and uses the default credentials."
        ),
    )
    protection_level: ProtectionLevel = Field(
        default=ProtectionLevel.HSM,
        description="Protection level of keys this provider creates: hsm or software.",
    )
    rsa_padding: RsaPadding = Field(
        default=RsaPadding.PKCS1V15,
        description=(
            "RSA padding bound into RSA keys this provider creates. Cloud KMS fixes "
            "the padding per key, so a pkcs1v15 key cannot sign RSA-PSS."
        ),
    )
    timeout: float = Field(
        default=30.0, gt=0, description="Timeout of each Cloud KMS request, in seconds."
    )
    generation_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Maximum wait for a new key version to be generated, in seconds.",
    )

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"got {value!r}, expected an http:// or https:// URL")
        if parts.scheme == "http" and not is_loopback_url(value):
            raise ValueError(
                f"got {value!r}: plain http:// is allowed for loopback addresses "
                "only; use https://"
            )
        return value


# --- the provider ------------------------------------------------------------------


class GcpKmsProvider(KeyProvider):
    """Keys in Google Cloud KMS, signed with ``AsymmetricSign``."""

    type_name: ClassVar[str] = "gcp-kms"
    settings_model: ClassVar[type[ProviderSettings]] = GcpKmsSettings
    uri_scheme: ClassVar[str] = "cloudkms"

    settings: GcpKmsSettings

    def __init__(self, settings: ProviderSettings, context: ProviderContext) -> None:
        if not isinstance(settings, GcpKmsSettings):
            raise TypeError(f"expected GcpKmsSettings, got {type(settings).__name__}")
        super().__init__(settings, context)
        self._client_lock = threading.Lock()
        self._kms_client: Any = None
        self._key_ring_ready = False
        # A version's algorithm never changes, so it is safe to cache by name.
        self._algorithms: dict[str, str] = {}

    # --- names -------------------------------------------------------------------

    @property
    def key_ring_name(self) -> str:
        """Resource name of this federation's key ring."""
        ring = self.settings.key_ring or self.context.federation
        return (
            f"projects/{self.settings.project}/locations/{self.settings.location}"
            f"/keyRings/{ring}"
        )

    def _crypto_key_name(self, key_name: str) -> str:
        if not re.match(_RESOURCE_ID, key_name):
            raise ProviderPermanentError(
                f"provider {self.name!r} (gcp-kms): key name {key_name!r} is not a "
                "valid crypto key id; use 1 to 63 letters, digits, '_' or '-'"
            )
        return f"{self.key_ring_name}/cryptoKeys/{key_name}"

    # --- SDK access --------------------------------------------------------------

    def _client(self) -> Any:
        with self._client_lock:
            if self._kms_client is None:
                self._kms_client = self._new_client()
            return self._kms_client

    def _new_client(self) -> Any:
        kms = _import_sdk()
        endpoint = self.settings.endpoint
        if endpoint is None:
            return kms.KeyManagementServiceClient()
        credentials = None
        if is_loopback_url(endpoint):
            from google.auth.credentials import AnonymousCredentials

            # A local fake has no identity to check, and default credentials
            # must never be sent to it.
            credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
        return kms.KeyManagementServiceClient(
            transport="rest",
            credentials=credentials,
            client_options={"api_endpoint": endpoint},
        )

    def _call(
        self,
        action: str,
        uri: str,
        operation: Callable[[Any], T],
        *,
        retry: bool = True,
    ) -> T:
        """Run one SDK call, translating its errors, with retries when asked."""

        def attempt() -> T:
            client = self._client()
            try:
                return operation(client)
            except Exception as error:
                status = _status_of(error)
                if status is None:
                    raise
                raise self._translate(action, uri, status, error) from error

        if not retry:
            return attempt()
        return call_with_retry(
            attempt,
            self.settings.retry,
            description=f"provider {self.name}: {action} {uri}",
        )

    def _translate(
        self, action: str, uri: str, status: str, error: Exception
    ) -> ProviderError:
        error_type = _ERRORS.get(status, ProviderPermanentError)
        message = getattr(error, "message", None) or str(error)
        if _is_connection_failure(error):
            # The transport's own text repeats the whole request URL and
            # urllib3's internals; the endpoint is what the reader needs.
            endpoint = self.settings.endpoint or "https://cloudkms.googleapis.com"
            message = f"cannot connect to {endpoint}"
        return error_type(
            f"provider {self.name!r} (gcp-kms): {action} {uri} failed with {status}: "
            f"{message}"
        )

    def _options(self) -> dict[str, Any]:
        # pkifed retries on its own terms, so the SDK's default retry is off.
        return {"retry": None, "timeout": self.settings.timeout}

    # --- key rings and keys ------------------------------------------------------

    @classmethod
    def offered_algorithms(cls, settings: ProviderSettings) -> frozenset[KeyAlgorithm]:
        return SUPPORTED_ALGORITHMS

    def supported_algorithms(self) -> frozenset[KeyAlgorithm]:
        return SUPPORTED_ALGORITHMS

    def _ensure_key_ring(self) -> None:
        if self._key_ring_ready:
            return
        ring = self.key_ring_name
        try:
            self._call(
                "reading key ring",
                ring,
                lambda c: c.get_key_ring(request={"name": ring}, **self._options()),
            )
        except KeyNotFoundError:
            self._create_key_ring(ring)
        self._key_ring_ready = True

    def _create(self, action: str, uri: str, operation: Callable[[Any], Any]) -> bool:
        """Run a create call; return False if the resource already exists."""

        def create(client: Any) -> bool:
            try:
                operation(client)
            except Exception as error:
                if _status_of(error) == "ALREADY_EXISTS":
                    return False
                raise
            return True

        return self._call(action, uri, create)

    def _create_key_ring(self, ring: str) -> None:
        parent, _, ring_id = ring.rpartition("/keyRings/")
        request = {"parent": parent, "key_ring_id": ring_id, "key_ring": {}}
        logger.info("provider %s: creating key ring %s", self.name, ring)
        # ALREADY_EXISTS means another process created it first, which is fine.
        self._create(
            "creating key ring",
            ring,
            lambda c: c.create_key_ring(request=request, **self._options()),
        )

    def _create_crypto_key(self, key_name: str, algorithm: KeyAlgorithm) -> bool:
        """Create the crypto key; return False if it already exists."""
        self.require_algorithm(algorithm)
        name = self._crypto_key_name(key_name)
        gcp_algorithm = _creation_algorithm(algorithm, self.settings.rsa_padding)
        self._ensure_key_ring()
        request = {
            "parent": self.key_ring_name,
            "crypto_key_id": key_name,
            "crypto_key": {
                "purpose": "ASYMMETRIC_SIGN",
                "version_template": {
                    "algorithm": gcp_algorithm,
                    "protection_level": self.settings.protection_level.name,
                },
                "labels": {"managed-by": "pkifed"},
            },
        }
        logger.info(
            "provider %s: creating %s crypto key %s (%s)",
            self.name,
            self.settings.protection_level,
            name,
            gcp_algorithm,
        )
        return self._create(
            "creating crypto key",
            _uri(name),
            lambda c: c.create_crypto_key(request=request, **self._options()),
        )

    def create_key(self, key_name: str, algorithm: KeyAlgorithm) -> KeyInfo:
        if not self._create_crypto_key(key_name, algorithm):
            raise ProviderPermanentError(
                f"provider {self.name!r} (gcp-kms): crypto key "
                f"{self._crypto_key_name(key_name)} already exists"
            )
        return self._wait_for_generation(
            f"{self._crypto_key_name(key_name)}/cryptoKeyVersions/1"
        )

    def find_or_create_key(self, key_name: str, algorithm: KeyAlgorithm) -> KeyInfo:
        """Create the crypto key under a fixed id, or find the one that exists.

        CreateCryptoKey with a fixed id is atomic, so two processes racing, or
        one that crashed after creating, still end with one key.
        """
        if self._create_crypto_key(key_name, algorithm):
            return self._wait_for_generation(
                f"{self._crypto_key_name(key_name)}/cryptoKeyVersions/1"
            )
        # The creator may have crashed a moment ago, so the version can still
        # be PENDING_GENERATION.
        version = self._resolve_version(self._crypto_key_name(key_name))
        if version is None:
            raise ProviderPermanentError(
                f"provider {self.name!r} (gcp-kms): crypto key {key_name} exists but "
                "has no key version"
            )
        existing = self._wait_for_generation(str(version.name))
        if existing.algorithm != algorithm:
            raise UnsupportedAlgorithmError(
                f"provider {self.name!r}: key {existing.uri} is {existing.algorithm}, "
                f"expected {algorithm}"
            )
        return existing

    def _wait_for_generation(self, version_name: str) -> KeyInfo:
        # HSM versions stay PENDING_GENERATION for a moment after creation.
        deadline = time.monotonic() + self.settings.generation_timeout
        delay = self.settings.retry.base_delay
        while True:
            try:
                return self.describe_key(_uri(version_name))
            except _PendingKeyError:
                if time.monotonic() > deadline:
                    raise
            logger.info(
                "provider %s: waiting %.2f s for %s to be generated",
                self.name,
                delay,
                version_name,
            )
            time.sleep(delay)
            delay = min(delay * 2, self.settings.retry.max_delay)

    def find_key(self, key_name: str) -> KeyInfo | None:
        name = self._crypto_key_name(key_name)
        try:
            key = self._call(
                "reading crypto key",
                _uri(name),
                lambda c: c.get_crypto_key(request={"name": name}, **self._options()),
            )
        except KeyNotFoundError:
            return None
        self._check_purpose(key)
        version = self._resolve_version(name)
        if version is None:
            return None
        return self._key_info(version)

    def list_keys(self) -> list[KeyInfo]:
        ring = self.key_ring_name
        try:
            keys = self._call(
                "listing crypto keys",
                ring,
                lambda c: list(
                    c.list_crypto_keys(request={"parent": ring}, **self._options())
                ),
            )
        except KeyNotFoundError:
            return []
        found: list[KeyInfo] = []
        for key in keys:
            if key.purpose.name != "ASYMMETRIC_SIGN":
                continue
            version = self._resolve_version(key.name)
            if version is not None:
                found.append(self._key_info(version))
        return found

    def describe_key(self, uri: str) -> KeyInfo:
        name = parse_uri(uri)
        if "/cryptoKeyVersions/" not in name:
            version = self._resolve_version(name)
            if version is None:
                raise KeyNotFoundError(
                    f"provider {self.name!r} (gcp-kms): {uri} has no key version"
                )
            return self._key_info(version)
        version = self._call(
            "reading key version",
            uri,
            lambda c: c.get_crypto_key_version(
                request={"name": name}, **self._options()
            ),
        )
        return self._key_info(version)

    def _resolve_version(self, crypto_key_name: str) -> Any:
        """Return the version a crypto key's URI means, or None without versions.

        That is the lowest-numbered version that still has key material, or
        the highest-numbered one when all are destroyed.
        """
        versions = self._call(
            "listing key versions",
            _uri(crypto_key_name),
            lambda c: list(
                c.list_crypto_key_versions(
                    request={"parent": crypto_key_name}, **self._options()
                )
            ),
        )
        if not versions:
            return None
        by_number = sorted(versions, key=lambda v: int(v.name.rpartition("/")[2]))
        live = [v for v in by_number if v.state.name in _LIVE_STATES]
        return live[0] if live else by_number[-1]

    def _key_info(self, version: Any) -> KeyInfo:
        uri = _uri(version.name)
        state_name = version.state.name
        if state_name in _PENDING_STATES:
            raise _PendingKeyError(
                f"provider {self.name!r} (gcp-kms): {uri} is {state_name}; its key "
                "is not ready yet"
            )
        self._algorithms[version.name] = version.algorithm.name
        created = version.create_time
        return KeyInfo(
            uri=uri,
            algorithm=self._algorithm(version.algorithm.name, uri).key,
            protection_level=self._protection_level(version.protection_level.name, uri),
            state=_STATES.get(state_name, KeyState.DISABLED),
            name=version.name.split("/cryptoKeys/")[1].split("/")[0],
            created_at=created if isinstance(created, datetime.datetime) else None,
        )

    def _check_purpose(self, key: Any) -> None:
        if key.purpose.name != "ASYMMETRIC_SIGN":
            raise UnsupportedAlgorithmError(
                f"provider {self.name!r} (gcp-kms): crypto key {key.name} has purpose "
                f"{key.purpose.name}, expected ASYMMETRIC_SIGN"
            )

    def _algorithm(self, gcp_name: str, uri: str) -> _GcpAlgorithm:
        if gcp_name not in _ALGORITHMS:
            raise UnsupportedAlgorithmError(
                f"provider {self.name!r} (gcp-kms): {uri} uses {gcp_name}, which "
                "pkifed does not sign with"
            )
        return _ALGORITHMS[gcp_name]

    def _protection_level(self, gcp_name: str, uri: str) -> ProtectionLevel:
        if gcp_name in _PROTECTION_LEVELS:
            return _PROTECTION_LEVELS[gcp_name]
        # Cloud KMS signs with EXTERNAL and EXTERNAL_VPC keys only from the whole
        # message (the data field), but pkifed sends digests. Reporting such a
        # key as HSM or SOFTWARE would also be false, so it is rejected.
        # Source: https://cloud.google.com/kms/docs/create-validate-signatures
        raise UnsupportedAlgorithmError(
            f"provider {self.name!r} (gcp-kms): {uri} has protection level "
            f"{gcp_name}; pkifed uses HSM and SOFTWARE keys only"
        )

    # --- public keys and signing -------------------------------------------------

    def public_key(self, uri: str) -> PublicKey:
        name = self._version_name(uri)

        def fetch() -> PublicKey:
            response = self._call(
                "reading public key",
                uri,
                lambda c: c.get_public_key(request={"name": name}, **self._options()),
                retry=False,
            )
            pem = response.pem.encode("ascii")
            self._check_integrity(
                uri,
                ("pem_crc32c", _crc32c(pem) == response.pem_crc32c),
                ("name", response.name == name),
            )
            self._algorithms[name] = response.algorithm.name
            public = serialization.load_pem_public_key(pem)
            return _as_public_key(public, uri)

        return call_with_retry(
            fetch, self.settings.retry, description=f"provider {self.name}: {uri}"
        )

    def _version_name(self, uri: str) -> str:
        name = parse_uri(uri)
        if "/cryptoKeyVersions/" in name:
            return name
        version = self._resolve_version(name)
        if version is None:
            raise KeyNotFoundError(
                f"provider {self.name!r} (gcp-kms): {uri} has no key version"
            )
        return str(version.name)

    def _version_algorithm(self, name: str, uri: str) -> _GcpAlgorithm:
        if name not in self._algorithms:
            version = self._call(
                "reading key version",
                uri,
                lambda c: c.get_crypto_key_version(
                    request={"name": name}, **self._options()
                ),
            )
            self._algorithms[name] = version.algorithm.name
        return self._algorithm(self._algorithms[name], uri)

    def _checked_version(self, uri: str, scheme: SignatureScheme) -> str:
        """Return the version to sign with, after matching ``scheme`` against it."""
        name = self._version_name(uri)
        algorithm = self._version_algorithm(name, uri)
        if not algorithm.accepts(scheme):
            gcp_name = self._algorithms[name]
            hint = ""
            if algorithm.padding is not None and scheme.padding != algorithm.padding:
                hint = (
                    f"; Cloud KMS binds the padding to the key, so {scheme.padding} "
                    f"needs a key created with rsa_padding: {scheme.padding}"
                )
            raise UnsupportedAlgorithmError(
                f"provider {self.name!r} (gcp-kms): {uri} is {gcp_name} and cannot "
                f"sign {scheme}{hint}"
            )
        return name

    def _sign_digest(self, uri: str, scheme: SignatureScheme, digest: bytes) -> bytes:
        name = self._checked_version(uri, scheme)
        assert scheme.hash is not None  # noqa: S101 - sign_digest checked it.
        request = {
            "name": name,
            "digest": {scheme.hash.value: digest},
            "digest_crc32c": _crc32c(digest),
        }
        response = self._call(
            "signing with",
            uri,
            lambda c: c.asymmetric_sign(request=request, **self._options()),
            retry=False,
        )
        return self._checked_signature(uri, name, response, "verified_digest_crc32c")

    def _sign_message(self, uri: str, scheme: SignatureScheme, message: bytes) -> bytes:
        name = self._checked_version(uri, scheme)
        request = {"name": name, "data": message, "data_crc32c": _crc32c(message)}
        response = self._call(
            "signing with",
            uri,
            lambda c: c.asymmetric_sign(request=request, **self._options()),
            retry=False,
        )
        return self._checked_signature(uri, name, response, "verified_data_crc32c")

    def _checked_signature(
        self, uri: str, name: str, response: Any, verified_field: str
    ) -> bytes:
        # Cloud KMS returns ECDSA signatures DER-encoded (as its EC
        # verification sample shows) and RSA signatures as the PKCS #1 octet
        # string. Both are what X.509 stores, so nothing is converted.
        signature = bytes(response.signature)
        self._check_integrity(
            uri,
            (verified_field, bool(getattr(response, verified_field))),
            ("signature_crc32c", _crc32c(signature) == response.signature_crc32c),
            ("name", response.name == name),
        )
        return signature

    def _check_integrity(self, uri: str, *checks: tuple[str, bool]) -> None:
        failed = [field for field, passed in checks if not passed]
        if not failed:
            return
        logger.warning(
            "provider %s: response for %s failed integrity checks (%s); discarding it",
            self.name,
            uri,
            ", ".join(failed),
        )
        raise IntegrityError(
            f"provider {self.name!r} (gcp-kms): response for {uri} failed integrity "
            f"checks: {', '.join(failed)}"
        )

    # --- status and cleanup ------------------------------------------------------

    def check(self) -> ProviderStatus:
        self.list_keys()
        return ProviderStatus(
            reachable=True,
            identity=f"gcp-kms {self.key_ring_name}",
            algorithms=self.supported_algorithms(),
            protection_levels=frozenset(_PROTECTION_LEVELS.values()),
        )

    def close(self) -> None:
        with self._client_lock:
            client, self._kms_client = self._kms_client, None
        if client is not None:
            client.transport.close()


def _import_sdk() -> Any:
    try:
        from google.cloud import kms_v1
    except ImportError as error:
        raise PluginError(
            f"the gcp-kms provider needs google-cloud-kms ({error}); install it with: "
            "pip install 'pkifed[gcp]'"
        ) from error
    return kms_v1


def _crc32c(data: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.value(data))


def _as_public_key(public: object, uri: str) -> PublicKey:
    # algorithm_of_public_key rejects key types and sizes pkifed does not use.
    algorithm_of_public_key(public)  # type: ignore[arg-type]
    return public  # type: ignore[return-value]
