"""The key-provider interface that hides every key home behind one API.

A provider creates, adopts, describes and lists keys in its home and signs with
them. :meth:`KeyProvider.private_key` wraps a key in a subclass of pyca's
private-key ABCs, so certificate, CRL and OCSP builders use it exactly as they
use a key in memory, while the private key never leaves its home.

The signing contract (enforced here, for every provider):

* The message is hashed locally and only the digest is sent, except for
  schemes that sign the message itself (Ed25519, ML-DSA).
* A hash that does not match the key is rejected before any call is made.
* ``_sign_digest`` returns the signature as X.509 stores it: DER
  ``ECDSA-Sig-Value`` for ECDSA, the raw octet string for RSA. Each provider
  converts its service's format by what that service documents, never by
  inspecting the bytes.
* RSA-PSS uses a salt as long as the digest.
"""

from __future__ import annotations

import abc
import functools
import logging
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, padding, rsa
from pydantic import BaseModel, ConfigDict, Field

from pkifed.errors import UnsupportedAlgorithmError
from pkifed.providers.algorithms import (
    HashName,
    KeyAlgorithm,
    PublicKey,
    RsaPadding,
    SignatureScheme,
    algorithm_of_public_key,
)
from pkifed.providers.retry import RetrySettings, call_with_retry

logger = logging.getLogger(__name__)


class ProtectionLevel(StrEnum):
    """Protection of a key's private half, as the provider reports it."""

    HSM = "hsm"
    SOFTWARE = "software"


class KeyState(StrEnum):
    """A key's lifecycle state in its provider."""

    ENABLED = "enabled"
    DISABLED = "disabled"
    PENDING_DELETION = "pending-deletion"
    DESTROYED = "destroyed"


@dataclass(frozen=True)
class KeyInfo:
    """A key as its provider describes it."""

    uri: str
    algorithm: KeyAlgorithm
    protection_level: ProtectionLevel
    state: KeyState
    name: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class ProviderStatus:
    """Result of ``pkifed providers check`` for one provider."""

    reachable: bool
    identity: str
    algorithms: frozenset[KeyAlgorithm]
    protection_levels: frozenset[ProtectionLevel]
    missing_permissions: tuple[str, ...] = ()
    message: str = ""


class ProviderSettings(BaseModel):
    """Settings shared by every provider type; each type extends this model."""

    # A secret typed in literally by mistake must not be echoed by pydantic.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    type: str = Field(description="Provider type, such as pkcs11 or aws-kms.")
    retry: RetrySettings = Field(
        default_factory=RetrySettings,
        description="Retries of temporary errors (throttling, 5xx, timeouts).",
    )


@dataclass
class ProviderContext:
    """Facts a provider receives from the federation around it."""

    provider_name: str
    federation: str
    config_dir: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class KeyProvider(abc.ABC):
    """A home for private keys: an HSM, a cloud KMS or a local keystore.

    Subclasses set :attr:`type_name`, :attr:`settings_model` and
    :attr:`uri_scheme`, and implement the abstract methods. Keys the federation
    creates are found again by their *key name* (the authority's name, plus a
    generation suffix after a re-key), which each provider maps into its own
    namespace under the federation's name.
    """

    type_name: ClassVar[str]
    settings_model: ClassVar[type[ProviderSettings]]
    uri_scheme: ClassVar[str]

    def __init__(self, settings: ProviderSettings, context: ProviderContext) -> None:
        self.settings = settings
        self.context = context

    @property
    def name(self) -> str:
        """The provider's name in the configuration file."""
        return self.context.provider_name

    @classmethod
    def offered_algorithms(cls, settings: ProviderSettings) -> frozenset[KeyAlgorithm]:
        """Algorithms this provider type can offer, known without contacting it.

        Configuration validation uses this to reject an impossible algorithm before
        any call; :meth:`supported_algorithms` may narrow it further at run time.
        """
        return frozenset(KeyAlgorithm)

    @abc.abstractmethod
    def supported_algorithms(self) -> frozenset[KeyAlgorithm]:
        """Key algorithms this provider can create and sign with."""

    @abc.abstractmethod
    def find_key(self, key_name: str) -> KeyInfo | None:
        """Find the key this federation created under ``key_name``, or None.

        Raises:
            ProviderError: the provider could not be queried.
        """

    @abc.abstractmethod
    def create_key(self, key_name: str, algorithm: KeyAlgorithm) -> KeyInfo:
        """Create a key under ``key_name``; prefer :meth:`find_or_create_key`.

        Raises:
            UnsupportedAlgorithmError: the provider cannot create ``algorithm``.
            ProviderError: the provider rejected or failed the request.
        """

    @abc.abstractmethod
    def describe_key(self, uri: str) -> KeyInfo:
        """Describe the key at ``uri``.

        Raises:
            KeyNotFoundError: no key exists at ``uri``.
            ProviderError: the provider could not be queried.
        """

    @abc.abstractmethod
    def list_keys(self) -> list[KeyInfo]:
        """List the keys this federation created in this provider.

        Raises:
            ProviderError: the provider could not be queried.
        """

    @abc.abstractmethod
    def public_key(self, uri: str) -> PublicKey:
        """Export the public key at ``uri``.

        Raises:
            KeyNotFoundError: no key exists at ``uri``.
            ProviderError: the provider could not be queried.
        """

    @abc.abstractmethod
    def _sign_digest(self, uri: str, scheme: SignatureScheme, digest: bytes) -> bytes:
        """Sign a digest already checked against ``scheme``; return X.509 encoding.

        Raises:
            KeyUnusableError: the key is disabled or scheduled for deletion.
            ProviderError: the provider rejected or failed the request.
        """

    def _sign_message(self, uri: str, scheme: SignatureScheme, message: bytes) -> bytes:
        """Sign a whole message for a scheme that hashes internally.

        Raises:
            UnsupportedAlgorithmError: the provider has no such scheme.
        """
        raise UnsupportedAlgorithmError(
            f"provider {self.name!r} ({self.type_name}) cannot sign {scheme.key}"
        )

    def check(self) -> ProviderStatus:
        """Probe reachability, identity and permissions for ``providers check``.

        The default lists the keys, which needs read access and nothing more.
        """
        self.list_keys()
        return ProviderStatus(
            reachable=True,
            identity=self.type_name,
            algorithms=self.supported_algorithms(),
            protection_levels=frozenset(ProtectionLevel),
        )

    def close(self) -> None:  # noqa: B027 - most providers hold nothing to close.
        """Release sessions and connections."""

    def find_or_create_key(self, key_name: str, algorithm: KeyAlgorithm) -> KeyInfo:
        """Return the key named ``key_name``, creating it if it does not exist.

        Providers whose service can create and name a key atomically override
        this so a crash between the two steps never leaves a second key.

        Raises:
            UnsupportedAlgorithmError: an existing key has another algorithm.
        """
        self.require_algorithm(algorithm)
        existing = self.find_key(key_name)
        if existing is None:
            logger.info(
                "provider %s: creating %s key %s", self.name, algorithm, key_name
            )
            return self.create_key(key_name, algorithm)
        if existing.algorithm != algorithm:
            raise UnsupportedAlgorithmError(
                f"provider {self.name!r}: key {existing.uri} is {existing.algorithm}, "
                f"expected {algorithm}"
            )
        return existing

    def adopt_key(self, uri: str, algorithm: KeyAlgorithm) -> KeyInfo:
        """Take an existing key into management after checking its algorithm.

        Raises:
            KeyNotFoundError: no key exists at ``uri``.
            UnsupportedAlgorithmError: the key has a different algorithm, or the
                provider cannot sign with it.
        """
        self.require_algorithm(algorithm)
        info = self.describe_key(uri)
        if info.algorithm != algorithm:
            raise UnsupportedAlgorithmError(
                f"provider {self.name!r}: key {uri} is {info.algorithm}, "
                f"expected {algorithm}"
            )
        return info

    def require_algorithm(self, algorithm: KeyAlgorithm) -> None:
        """Raise UnsupportedAlgorithmError unless this provider can do ``algorithm``."""
        if algorithm not in self.supported_algorithms():
            supported = ", ".join(sorted(self.supported_algorithms()))
            raise UnsupportedAlgorithmError(
                f"provider {self.name!r} ({self.type_name}) cannot use {algorithm}; "
                f"supported: {supported}"
            )

    def sign_digest(self, uri: str, scheme: SignatureScheme, digest: bytes) -> bytes:
        """Sign a precomputed digest after checking it against the scheme.

        Temporary errors are retried with the provider's retry settings.

        Raises:
            UnsupportedAlgorithmError: the scheme signs messages, or the digest's
                length does not match its hash.
            ProviderError: signing failed after the retries.
        """
        if scheme.hash is None:
            raise UnsupportedAlgorithmError(f"{scheme.key} signs messages, not digests")
        if len(digest) != scheme.hash.digest_size:
            raise UnsupportedAlgorithmError(
                f"digest has {len(digest)} bytes, expected {scheme.hash.digest_size} "
                f"for {scheme.hash}"
            )
        return call_with_retry(
            lambda: self._sign_digest(uri, scheme, digest),
            self.settings.retry,
            description=f"provider {self.name}: signing with {uri}",
        )

    def sign_message(self, uri: str, scheme: SignatureScheme, message: bytes) -> bytes:
        """Sign with a scheme that hashes internally (Ed25519, ML-DSA)."""
        if not scheme.key.signs_message:
            raise UnsupportedAlgorithmError(f"{scheme.key} signs digests, not messages")
        return call_with_retry(
            lambda: self._sign_message(uri, scheme, message),
            self.settings.retry,
            description=f"provider {self.name}: signing with {uri}",
        )

    def private_key(self, uri: str, public_key: PublicKey | None = None) -> RemoteKey:
        """Wrap the key at ``uri`` as a pyca private key for builders.

        ``public_key`` may be passed when already known, saving one call.
        """
        public = public_key if public_key is not None else self.public_key(uri)
        return wrap_remote_key(self, uri, public)


# --- pyca adapters ----------------------------------------------------------------


def _hash_locally(data: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
    digest = hashes.Hash(algorithm)
    digest.update(data)
    return digest.finalize()


def _refuse(operation: str) -> UnsupportedAlgorithmError:
    return UnsupportedAlgorithmError(
        f"{operation} is not possible: the private key never leaves its provider"
    )


class _RemoteKeyMixin:
    _provider: KeyProvider
    _uri: str
    _algorithm: KeyAlgorithm

    @property
    def uri(self) -> str:
        """The key's URI in its provider."""
        return self._uri

    @property
    def provider(self) -> KeyProvider:
        return self._provider

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        raise _refuse("exporting the private key")

    def private_numbers(self) -> Any:
        raise _refuse("reading the private numbers")

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Any:
        return self


@functools.cache
def _ec_scheme(algorithm: KeyAlgorithm, hash_name: HashName) -> SignatureScheme:
    # Schemes are immutable and validated on construction, so each pairing is
    # built and checked once rather than on every signature. A mismatched
    # pairing raises here each time, because failures are not cached.
    return SignatureScheme(algorithm, hash_name)


class RemoteECPrivateKey(_RemoteKeyMixin, ec.EllipticCurvePrivateKey):
    """An EC key held by a provider, usable wherever pyca takes a private key."""

    def __init__(
        self, provider: KeyProvider, uri: str, public: ec.EllipticCurvePublicKey
    ) -> None:
        self._provider = provider
        self._uri = uri
        self._public = public
        self._algorithm = algorithm_of_public_key(public)

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def exchange(self, algorithm: ec.ECDH, peer_public_key: Any) -> bytes:
        raise _refuse("key agreement")

    def sign(self, data: Any, signature_algorithm: Any) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise UnsupportedAlgorithmError("EC keys sign with ECDSA only")
        if signature_algorithm.deterministic_signing:
            raise UnsupportedAlgorithmError("deterministic ECDSA is not offered")
        hash_algorithm = signature_algorithm.algorithm
        if not isinstance(hash_algorithm, hashes.HashAlgorithm):
            raise UnsupportedAlgorithmError("prehashed input is not accepted")
        scheme = _ec_scheme(self._algorithm, HashName.of(hash_algorithm))
        digest = _hash_locally(bytes(data), hash_algorithm)
        return self._provider.sign_digest(self._uri, scheme, digest)


class RemoteRSAPrivateKey(_RemoteKeyMixin, rsa.RSAPrivateKey):
    """An RSA key held by a provider, usable wherever pyca takes a private key."""

    def __init__(
        self, provider: KeyProvider, uri: str, public: rsa.RSAPublicKey
    ) -> None:
        self._provider = provider
        self._uri = uri
        self._public = public
        self._algorithm = algorithm_of_public_key(public)

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    def decrypt(self, ciphertext: bytes, padding: Any) -> bytes:
        raise _refuse("decryption")

    def sign(self, data: Any, padding_: Any, algorithm: Any) -> bytes:
        if not isinstance(algorithm, hashes.HashAlgorithm):
            raise UnsupportedAlgorithmError("prehashed input is not accepted")
        hash_name = HashName.of(algorithm)
        scheme = SignatureScheme(
            self._algorithm, hash_name, _rsa_padding(padding_, hash_name)
        )
        digest = _hash_locally(bytes(data), algorithm)
        return self._provider.sign_digest(self._uri, scheme, digest)


def _rsa_padding(padding_: Any, hash_name: HashName) -> RsaPadding:
    if isinstance(padding_, padding.PKCS1v15):
        return RsaPadding.PKCS1V15
    if not isinstance(padding_, padding.PSS):
        raise UnsupportedAlgorithmError(f"RSA padding {padding_.name} is not offered")

    # pyca keeps the salt length private; DIGEST_LENGTH and an integer equal to
    # the digest size are the two spellings of the only salt pkifed signs with.
    salt = padding_._salt_length
    if salt is not padding.PSS.DIGEST_LENGTH and salt != hash_name.digest_size:
        raise UnsupportedAlgorithmError(
            "RSA-PSS salt length must equal the digest length "
            f"({hash_name.digest_size} bytes for {hash_name})"
        )
    mgf = padding_.mgf
    if not isinstance(mgf, padding.MGF1) or HashName.of(mgf._algorithm) != hash_name:
        raise UnsupportedAlgorithmError("RSA-PSS must use MGF1 with the signature hash")
    return RsaPadding.PSS


class RemoteEd25519PrivateKey(_RemoteKeyMixin, ed25519.Ed25519PrivateKey):
    """An Ed25519 key held by a provider."""

    def __init__(
        self, provider: KeyProvider, uri: str, public: ed25519.Ed25519PublicKey
    ) -> None:
        self._provider = provider
        self._uri = uri
        self._public = public
        self._algorithm = KeyAlgorithm.ED25519

    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self._public

    def private_bytes_raw(self) -> bytes:
        raise _refuse("exporting the private key")

    def sign(self, data: Any) -> bytes:
        scheme = SignatureScheme(KeyAlgorithm.ED25519)
        return self._provider.sign_message(self._uri, scheme, bytes(data))


RemoteKey = RemoteECPrivateKey | RemoteRSAPrivateKey | RemoteEd25519PrivateKey


def wrap_remote_key(provider: KeyProvider, uri: str, public: PublicKey) -> RemoteKey:
    """Build the pyca adapter matching ``public``'s type."""
    if isinstance(public, ec.EllipticCurvePublicKey):
        return RemoteECPrivateKey(provider, uri, public)
    if isinstance(public, rsa.RSAPublicKey):
        return RemoteRSAPrivateKey(provider, uri, public)
    if isinstance(public, ed25519.Ed25519PublicKey):
        return RemoteEd25519PrivateKey(provider, uri, public)
    if isinstance(
        public, mldsa.MLDSA44PublicKey | mldsa.MLDSA65PublicKey | mldsa.MLDSA87PublicKey
    ):
        raise UnsupportedAlgorithmError(
            "ML-DSA keys in a provider cannot be used for certificates yet"
        )
    raise UnsupportedAlgorithmError(f"key type {type(public).__name__} is not used")
