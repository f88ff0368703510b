"""Azure Key Vault key provider.

Keys live in one vault (Standard or Premium tier; HSM-protected keys need
Premium) and are named ``<federation>-<key name>``. Signing sends only the
digest: Key Vault's sign operation takes a digest whose length matches the JWA
algorithm and returns ECDSA signatures as raw ``r || s`` (RFC 7518 section
3.4), which this provider converts to DER.

Key URIs use step-ca's ``azurekms`` form,
``azurekms:name=<key>;vault=<vault>?version=<version>``, so a key created here
can be handed to step-ca unchanged. ``vault`` is the vault's name (the first
label of ``<name>.vault.azure.net``); for any other host, such as a local
fake, it is the host and port.

The Azure SDKs are imported only when a provider is built, so configurations
that do not use Azure never need them installed.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import Field, field_validator, model_validator

from pkifed.errors import (
    AccessDeniedError,
    KeyNotFoundError,
    KeyUnusableError,
    ProviderError,
    ProviderPermanentError,
    ProviderTemporaryError,
    UnsupportedAlgorithmError,
)
from pkifed.loopback import is_loopback_url
from pkifed.providers.algorithms import (
    KeyAlgorithm,
    PublicKey,
    RsaPadding,
    SignatureScheme,
    algorithm_of_public_key,
    ecdsa_raw_to_der,
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
from pkifed.secrets import SecretRef

if TYPE_CHECKING:
    from azure.keyvault.keys import KeyClient, KeyVaultKey
    from azure.keyvault.keys.crypto import CryptographyClient

logger = logging.getLogger(__name__)

T = TypeVar("T")

URI_SCHEME = "azurekms"

# Key Vault object names: 1 to 127 characters of 0-9, a-z, A-Z and "-".
_KEY_NAME = re.compile(r"^[0-9a-zA-Z-]{1,127}$")

# DNS suffixes of Key Vault in the Azure public, China and US Government clouds.
_VAULT_SUFFIXES = (".vault.azure.net", ".vault.azure.cn", ".vault.usgovcloudapi.net")

# Tags recording which federation created a key and under which key name, so
# list_keys never depends on parsing names that may contain "-" themselves.
FEDERATION_TAG = "pkifed-federation"
KEY_NAME_TAG = "pkifed-key-name"

_CURVES = {
    KeyAlgorithm.EC_P256: "P-256",
    KeyAlgorithm.EC_P384: "P-384",
    KeyAlgorithm.EC_P521: "P-521",
}
_PYCA_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
_SUPPORTED = frozenset(
    {
        KeyAlgorithm.EC_P256,
        KeyAlgorithm.EC_P384,
        KeyAlgorithm.EC_P521,
        KeyAlgorithm.RSA_2048,
        KeyAlgorithm.RSA_3072,
        KeyAlgorithm.RSA_4096,
    }
)
_HSM_KEY_TYPES = frozenset({"EC-HSM", "RSA-HSM"})

# The placeholder bearer token the loopback credential sends when no
# local_token is configured. The local fake accepts any token by default.
_LOCAL_PLACEHOLDER = "pkifed-local-static"


def vault_label(vault_url: str) -> str:
    """Return the ``vault=`` value of key URIs for the vault at ``vault_url``."""
    split = urlsplit(vault_url)
    host = (split.hostname or "").lower()
    for suffix in _VAULT_SUFFIXES:
        if host.endswith(suffix) and split.port in (None, 443):
            return host[: -len(suffix)]
    return split.netloc.lower()


@dataclass(frozen=True)
class AzureKeyUri:
    """A parsed ``azurekms:name=<key>;vault=<vault>?version=<version>`` URI."""

    name: str
    vault: str
    version: str | None = None

    def __str__(self) -> str:
        uri = f"{URI_SCHEME}:name={self.name};vault={self.vault}"
        return f"{uri}?version={self.version}" if self.version else uri


def parse_key_uri(uri: str) -> AzureKeyUri:
    """Parse a step-ca style ``azurekms:`` key URI.

    Raises:
        KeyNotFoundError: the URI is not an ``azurekms:`` URI with a name and a
            vault.
    """
    scheme, _, rest = uri.partition(":")
    if scheme != URI_SCHEME or not rest:
        raise KeyNotFoundError(
            f"key URI {uri!r} is invalid: expected "
            f"{URI_SCHEME}:name=<key>;vault=<vault>[?version=<version>]"
        )
    path, _, query = rest.partition("?")
    attributes: dict[str, str] = {}
    for part in path.split(";"):
        label, _, value = part.partition("=")
        attributes[label.strip()] = value.strip()
    versions = parse_qs(query).get("version", [])
    name = attributes.get("name", "")
    vault = attributes.get("vault", "")
    if not name or not vault:
        raise KeyNotFoundError(f"key URI {uri!r} is invalid: name or vault is missing")
    return AzureKeyUri(
        name=name, vault=vault, version=versions[0] if versions else None
    )


class AzureKeyVaultSettings(ProviderSettings):
    """Settings of an ``azure-keyvault`` provider."""

    type: Literal["azure-keyvault"] = Field(description="Provider type.")
    vault_url: str = Field(
        description="The vault's URL, such as https://my-vault.vault.azure.net.",
    )
    key_protection: Literal["hsm", "software"] = Field(
        default="hsm",
        description=(
            "Protection of keys this provider creates: hsm creates EC-HSM and "
            "RSA-HSM keys (Premium tier vaults only), software creates EC and RSA "
            "keys."
        ),
    )
    credential: Literal["default", "local-static"] = Field(
        default="default",
        description=(
            "How to obtain tokens: default uses azure-identity's "
            "DefaultAzureCredential (environment, workload identity, managed "
            "identity, Azure CLI); local-static sends a fixed token and is accepted "
            "only for a loopback vault_url such as the local Key Vault fake."
        ),
    )
    local_token: SecretRef | None = Field(
        default=None,
        description=(
            "Token the local-static credential sends, as ${env:NAME} or "
            "${file:PATH}; a placeholder is sent when unset."
        ),
    )
    ca_bundle: Path | None = Field(
        default=None,
        description=(
            "PEM file of CA certificates trusted for the vault's TLS certificate, "
            "for local services; a relative path is resolved against the config "
            "file's directory. The system trust store is used when unset."
        ),
    )
    unsafe_skip_challenge_resource_check: bool = Field(
        default=False,
        description=(
            "UNSAFE: accept an authentication challenge whose resource does not "
            "match the vault's host. Needed for a loopback vault_url, whose "
            "address never matches vault.azure.net; rejected for any other URL "
            "and logged as a warning each time a client is built with it."
        ),
    )
    timeout: float = Field(
        default=30.0,
        gt=0,
        description="Connection and read timeout of each request, in seconds.",
    )

    @field_validator("vault_url")
    @classmethod
    def _check_vault_url(cls, value: str) -> str:
        split = urlsplit(value)
        if split.scheme != "https" or not split.hostname:
            raise ValueError(
                f"got {value!r}, expected an https URL such as "
                "https://my-vault.vault.azure.net"
            )
        if split.path.strip("/") or split.query or split.fragment:
            raise ValueError(f"got {value!r}, expected the vault's URL without a path")
        return f"https://{split.netloc}"

    @model_validator(mode="after")
    def _check_loopback_only_settings(self) -> AzureKeyVaultSettings:
        problems: list[str] = []
        loopback = is_loopback_url(self.vault_url)
        if self.unsafe_skip_challenge_resource_check and not loopback:
            problems.append(
                "unsafe_skip_challenge_resource_check is allowed only for a "
                f"loopback vault_url, not {self.vault_url}; remove it"
            )
        if self.credential == "local-static" and not loopback:
            problems.append(
                "credential local-static is allowed only for a loopback vault_url, "
                f"not {self.vault_url}; use credential: default"
            )
        if self.local_token is not None and self.credential != "local-static":
            problems.append("local_token applies only to credential: local-static")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class _LoopbackStaticCredential:
    """An azure-core TokenCredential returning a fixed token for local services.

    It contacts no identity provider and no metadata endpoint.
    """

    def __init__(self, token: str) -> None:
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        expires_on = int(datetime.now(UTC).timestamp()) + 3600
        return AccessToken(self._token, expires_on)

    def close(self) -> None:
        """Release nothing: the credential holds no connection."""

    def __repr__(self) -> str:
        return "_LoopbackStaticCredential(<token hidden>)"


# --- the error table --------------------------------------------------------


def _service_codes(error: Exception) -> tuple[str, str, str]:
    """Return the error's (code, inner code, message) from Key Vault's JSON body."""
    odata = getattr(error, "error", None)
    code = str(getattr(odata, "code", None) or "")
    message = str(getattr(odata, "message", None) or "")
    inner = getattr(odata, "innererror", None) or {}
    inner_code = str(inner.get("code", "")) if isinstance(inner, dict) else ""
    return code, inner_code, message


def _retry_after(error: Exception) -> float | None:
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None) or {}
    value = headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def map_azure_error(
    error: Exception, provider: str, action: str, uri: str
) -> ProviderError:
    """Translate an azure-core or azure-identity exception into a pkifed error.

    This is the provider's one mapping table. Messages name the provider, the
    key URI and the service's error code, never a token or secret.
    """
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    prefix = f"provider {provider!r}: {action} {uri} failed"
    if isinstance(error, ServiceRequestError | ServiceResponseError):
        # A refused or reset connection, or a timeout, may succeed later.
        return ProviderTemporaryError(
            f"{prefix}: {type(error).__name__}, no response from the vault"
        )
    if isinstance(error, ClientAuthenticationError):
        # Token acquisition errors from azure-identity land here too; their text
        # may quote identity-provider responses, so only the type and code are kept.
        code = _service_codes(error)[0] or type(error).__name__
        return AccessDeniedError(
            f"{prefix}: authentication failed ({code}); check the Azure credential"
        )
    if not isinstance(error, HttpResponseError):
        return ProviderPermanentError(f"{prefix}: {type(error).__name__}")

    status = error.status_code or 0
    code, inner_code, message = _service_codes(error)
    detail = f"HTTP {status} {code or 'no code'}"
    if inner_code:
        detail = f"{detail}/{inner_code}"
    if message:
        detail = f"{detail}: {message}"
    if status == 429 or status >= 500:
        return ProviderTemporaryError(
            f"{prefix}: {detail}", retry_after=_retry_after(error)
        )
    if isinstance(error, ResourceNotFoundError) or status == 404:
        return KeyNotFoundError(f"{prefix}: {detail}")
    unusable_codes = {"KeyDisabled", "ObjectIsDeletedButRecoverable"}
    if inner_code in unusable_codes or (status == 403 and "disabled" in message):
        return KeyUnusableError(f"{prefix}: {detail}")
    if status == 409 and "deleted" in message:
        return KeyUnusableError(f"{prefix}: {detail}")
    if status in (401, 403):
        return AccessDeniedError(f"{prefix}: {detail}")
    if status == 400 and "algorithm" in message.lower():
        return UnsupportedAlgorithmError(f"{prefix}: {detail}")
    return ProviderPermanentError(f"{prefix}: {detail}")


# --- the provider -----------------------------------------------------------


class AzureKeyVaultProvider(KeyProvider):
    """Keys in one Azure Key Vault, signed through its REST API."""

    type_name: ClassVar[str] = "azure-keyvault"
    settings_model: ClassVar[type[ProviderSettings]] = AzureKeyVaultSettings
    uri_scheme: ClassVar[str] = URI_SCHEME

    settings: AzureKeyVaultSettings

    def __init__(self, settings: ProviderSettings, context: ProviderContext) -> None:
        if not isinstance(settings, AzureKeyVaultSettings):
            raise TypeError(f"expected AzureKeyVaultSettings, got {type(settings)}")
        super().__init__(settings, context)
        self._vault = vault_label(settings.vault_url)
        self._credential = self._build_credential()
        self._keys: KeyClient = self._build_key_client()
        self._crypto_clients: dict[str, CryptographyClient] = {}
        self._crypto_lock = threading.Lock()

    # --- clients -------------------------------------------------------------

    def _build_credential(self) -> Any:
        if self.settings.credential == "local-static":
            token = self.settings.local_token
            return _LoopbackStaticCredential(
                token.resolve() if token is not None else _LOCAL_PLACEHOLDER
            )
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential()

    def _client_options(self) -> dict[str, Any]:
        # The SDK's own retries are switched off so that pkifed's RetrySettings
        # are the one retry policy, with its backoff and its logs.
        options: dict[str, Any] = {
            "retry_total": 0,
            "connection_timeout": self.settings.timeout,
            "read_timeout": self.settings.timeout,
        }
        if self.settings.ca_bundle is not None:
            bundle = self.settings.ca_bundle.expanduser()
            if not bundle.is_absolute() and self.context.config_dir is not None:
                bundle = Path(self.context.config_dir) / bundle
            options["connection_verify"] = str(bundle)
        if self.settings.unsafe_skip_challenge_resource_check:
            logger.warning(
                "provider %s: unsafe_skip_challenge_resource_check is set, so the "
                "authentication challenge's resource is not checked against %s; "
                "use this only with a local Key Vault",
                self.name,
                self.settings.vault_url,
            )
            options["verify_challenge_resource"] = False
        return options

    def _build_key_client(self) -> KeyClient:
        from azure.keyvault.keys import KeyClient

        return KeyClient(
            self.settings.vault_url, self._credential, **self._client_options()
        )

    def _crypto_client(self, name: str, version: str | None) -> CryptographyClient:
        key_id = f"{self.settings.vault_url}/keys/{name}"
        if version:
            key_id = f"{key_id}/{version}"
        with self._crypto_lock:
            client = self._crypto_clients.get(key_id)
            if client is None:
                from azure.keyvault.keys.crypto import CryptographyClient

                client = CryptographyClient(
                    key_id, self._credential, **self._client_options()
                )
                self._crypto_clients[key_id] = client
            return client

    def close(self) -> None:
        """Close the SDK clients and the credential's connections."""
        with self._crypto_lock:
            clients = list(self._crypto_clients.values())
            self._crypto_clients.clear()
        for client in clients:
            client.close()
        self._keys.close()
        self._credential.close()

    # --- calls through the error table ---------------------------------------

    def _call(self, operation: Callable[[], T], action: str, uri: str) -> T:
        """Run one SDK call, mapping its exceptions through the error table."""
        from azure.core.exceptions import AzureError

        try:
            return operation()
        except AzureError as error:
            raise map_azure_error(error, self.name, action, uri) from error

    def _read(self, operation: Callable[[], T], action: str, uri: str) -> T:
        """Run a read-only SDK call with the provider's retries."""
        return call_with_retry(
            lambda: self._call(operation, action, uri),
            self.settings.retry,
            description=f"provider {self.name}: {action} {uri}",
        )

    # --- naming --------------------------------------------------------------

    def azure_name(self, key_name: str) -> str:
        """Return the Key Vault key name for a federation key name."""
        name = f"{self.context.federation}-{key_name}"
        if not _KEY_NAME.match(name):
            raise ProviderPermanentError(
                f"provider {self.name!r}: key name {name!r} is invalid for Key Vault; "
                "names are 1 to 127 characters of 0-9, a-z, A-Z and -"
            )
        return name

    def _uri(self, name: str, version: str | None) -> str:
        return str(AzureKeyUri(name=name, vault=self._vault, version=version))

    def _parse(self, uri: str) -> AzureKeyUri:
        parsed = parse_key_uri(uri)
        if parsed.vault.lower() != self._vault:
            raise ProviderPermanentError(
                f"provider {self.name!r}: key URI {uri} names vault {parsed.vault}, "
                f"but this provider uses vault {self._vault}"
            )
        return parsed

    # --- KeyProvider ---------------------------------------------------------

    @classmethod
    def offered_algorithms(cls, settings: ProviderSettings) -> frozenset[KeyAlgorithm]:
        return _SUPPORTED

    def supported_algorithms(self) -> frozenset[KeyAlgorithm]:
        return _SUPPORTED

    def find_key(self, key_name: str) -> KeyInfo | None:
        name = self.azure_name(key_name)
        uri = self._uri(name, None)
        try:
            key = self._read(lambda: self._keys.get_key(name), "reading key", uri)
        except KeyNotFoundError:
            return self._find_deleted(name, key_name)
        self._check_owner(key, uri)
        return self._info(self._first_version(key), key_name)

    def create_key(self, key_name: str, algorithm: KeyAlgorithm) -> KeyInfo:
        self.require_algorithm(algorithm)
        name = self.azure_name(key_name)
        uri = self._uri(name, None)

        # CreateKey on an existing name silently adds a NEW VERSION instead of
        # failing, so the name is checked first.
        existing = self.find_key(key_name)
        if existing is not None:
            raise ProviderPermanentError(
                f"provider {self.name!r}: key {existing.uri} already exists; "
                "use find_or_create_key to reuse it"
            )

        # NOTE: two processes that both pass the check above both create a
        # version. Each then pins the oldest version (see _first_version), so
        # they converge on one key, but the younger version stays in the vault.
        tags = {FEDERATION_TAG: self.context.federation, KEY_NAME_TAG: key_name}
        created = self._call(
            lambda: self._create(name, algorithm, tags), "creating key", uri
        )
        logger.info("provider %s: created %s key %s", self.name, algorithm, name)
        return self._info(self._first_version(created), key_name)

    def _create(
        self, name: str, algorithm: KeyAlgorithm, tags: dict[str, str]
    ) -> KeyVaultKey:
        hsm = self.settings.key_protection == "hsm"
        operations = ["sign", "verify"]
        if algorithm.is_ec:
            return self._keys.create_ec_key(
                name,
                curve=_CURVES[algorithm],
                hardware_protected=hsm,
                key_operations=operations,
                tags=tags,
            )
        return self._keys.create_rsa_key(
            name,
            size=algorithm.key_size,
            hardware_protected=hsm,
            key_operations=operations,
            tags=tags,
        )

    def describe_key(self, uri: str) -> KeyInfo:
        parsed = self._parse(uri)
        try:
            key = self._read(
                lambda: self._keys.get_key(parsed.name, parsed.version),
                "reading key",
                uri,
            )
        except KeyNotFoundError:
            deleted = self._find_deleted(parsed.name, None)
            if deleted is None or parsed.version not in (None, _version_of(deleted)):
                raise
            return deleted
        return self._info(key, self._key_name_of(key))

    def list_keys(self) -> list[KeyInfo]:
        # NOTE: keys that are soft-deleted (pending deletion) are not listed;
        # find_key and describe_key still report them.
        vault = self.settings.vault_url
        listed = self._read(
            lambda: list(self._keys.list_properties_of_keys()), "listing keys in", vault
        )
        found: list[KeyInfo] = []
        for properties in listed:
            tags = properties.tags or {}
            key_name = tags.get(KEY_NAME_TAG)
            if tags.get(FEDERATION_TAG) != self.context.federation or not key_name:
                continue
            if properties.name != f"{self.context.federation}-{key_name}":
                continue
            info = self.find_key(key_name)
            if info is not None:
                found.append(info)
        return found

    def public_key(self, uri: str) -> PublicKey:
        parsed = self._parse(uri)
        key = self._read(
            lambda: self._keys.get_key(parsed.name, parsed.version),
            "reading public key",
            uri,
        )
        return _public_key_of(key, uri)

    def _sign_digest(self, uri: str, scheme: SignatureScheme, digest: bytes) -> bytes:
        parsed = self._parse(uri)
        from azure.keyvault.keys.crypto import SignatureAlgorithm

        jwa_name = _jwa_algorithm(scheme)
        algorithm = SignatureAlgorithm(jwa_name)
        client = self._crypto_client(parsed.name, parsed.version)
        try:
            result = self._call(
                lambda: client.sign(algorithm, digest),
                f"signing ({jwa_name}) with",
                uri,
            )
        except KeyNotFoundError as error:
            if self._find_deleted(parsed.name, None) is not None:
                raise KeyUnusableError(
                    f"provider {self.name!r}: key {uri} is pending deletion"
                ) from error
            raise
        signature: bytes = result.signature
        if scheme.key.is_ec:
            # Key Vault returns JWA's fixed-width r || s (RFC 7518 section 3.4).
            return ecdsa_raw_to_der(signature, scheme.key)
        return signature

    def check(self) -> ProviderStatus:
        settings = self.settings
        self.list_keys()
        return ProviderStatus(
            reachable=True,
            identity=f"{settings.vault_url} ({settings.credential} credential)",
            algorithms=self.supported_algorithms(),
            protection_levels=frozenset(
                {ProtectionLevel(self.settings.key_protection)}
            ),
        )

    # --- helpers -------------------------------------------------------------

    def _first_version(self, key: KeyVaultKey) -> KeyVaultKey:
        """Return the oldest version of ``key``, which pkifed pins.

        A key pkifed created has one version unless a create race or a manual
        rotation added more. Pinning the oldest keeps every process on the key
        its certificates were issued for. Key Vault records creation times in
        whole seconds, so versions created in the same second are ordered by
        version id, and every process still picks the same one.
        """
        name = key.name
        uri = self._uri(name, None)
        versions = self._read(
            lambda: list(self._keys.list_properties_of_key_versions(name)),
            "listing versions of",
            uri,
        )
        if len(versions) <= 1:
            return key
        oldest = min(
            versions,
            key=lambda v: (v.created_on or datetime.max.replace(tzinfo=UTC), v.version),
        )
        if oldest.version == key.properties.version:
            return key
        logger.warning(
            "provider %s: key %s has %d versions; using the oldest, %s",
            self.name,
            name,
            len(versions),
            oldest.version,
        )
        return self._read(
            lambda: self._keys.get_key(name, oldest.version), "reading key", uri
        )

    def _find_deleted(self, name: str, key_name: str | None) -> KeyInfo | None:
        uri = self._uri(name, None)
        try:
            deleted = self._read(
                lambda: self._keys.get_deleted_key(name), "reading deleted key", uri
            )
        except (KeyNotFoundError, AccessDeniedError):
            # A vault without soft delete, or a credential without the
            # keys/get permission on deleted keys, has nothing more to report.
            return None
        return self._info(deleted, key_name, state=KeyState.PENDING_DELETION)

    def _check_owner(self, key: KeyVaultKey, uri: str) -> None:
        owner = (key.properties.tags or {}).get(FEDERATION_TAG)
        if owner is not None and owner != self.context.federation:
            raise ProviderPermanentError(
                f"provider {self.name!r}: key {uri} belongs to federation {owner!r}, "
                f"not {self.context.federation!r}"
            )

    def _key_name_of(self, key: KeyVaultKey) -> str | None:
        tags = key.properties.tags or {}
        if tags.get(FEDERATION_TAG) != self.context.federation:
            return None
        return tags.get(KEY_NAME_TAG)

    def _info(
        self,
        key: KeyVaultKey,
        key_name: str | None,
        state: KeyState | None = None,
    ) -> KeyInfo:
        uri = self._uri(key.name, key.properties.version)
        public = _public_key_of(key, uri)
        kty = _key_type(key)
        return KeyInfo(
            uri=uri,
            algorithm=algorithm_of_public_key(public),
            protection_level=(
                ProtectionLevel.HSM
                if kty in _HSM_KEY_TYPES
                else ProtectionLevel.SOFTWARE
            ),
            state=state or _state_of(key),
            name=key_name,
            created_at=key.properties.created_on,
        )


def _version_of(info: KeyInfo) -> str | None:
    return parse_key_uri(info.uri).version


def _state_of(key: KeyVaultKey) -> KeyState:
    properties = key.properties
    if not properties.enabled:
        return KeyState.DISABLED
    now = datetime.now(UTC)
    # Key Vault rejects signing outside a key's nbf/exp window, so such a key
    # is reported as disabled.
    if properties.expires_on is not None and properties.expires_on <= now:
        return KeyState.DISABLED
    if properties.not_before is not None and properties.not_before > now:
        return KeyState.DISABLED
    return KeyState.ENABLED


def _public_key_of(key: KeyVaultKey, uri: str) -> PublicKey:
    """Convert a key's JSON Web Key (RFC 7517) to a pyca public key."""
    kty = _key_type(key)
    if kty in ("EC", "EC-HSM"):
        curve_name = _enum_text(getattr(key.key, "crv", None))
        curve = _PYCA_CURVES.get(curve_name)
        if curve is None:
            raise UnsupportedAlgorithmError(
                f"key {uri} uses unsupported curve {curve_name}"
            )
        numbers = ec.EllipticCurvePublicNumbers(
            _jwk_integer(key, "x", uri), _jwk_integer(key, "y", uri), curve
        )
        return numbers.public_key()
    if kty in ("RSA", "RSA-HSM"):
        rsa_numbers = rsa.RSAPublicNumbers(
            _jwk_integer(key, "e", uri), _jwk_integer(key, "n", uri)
        )
        return rsa_numbers.public_key()
    raise UnsupportedAlgorithmError(f"key {uri} has unsupported key type {kty}")


def _key_type(key: KeyVaultKey) -> str:
    # The SDK returns its enums for known values and a str otherwise.
    return _enum_text(key.key_type)


def _enum_text(value: object) -> str:
    return str(getattr(value, "value", value))


def _jwk_integer(key: KeyVaultKey, member: str, uri: str) -> int:
    # The SDK's JsonWebKey sets its members dynamically, already base64url-decoded.
    value = getattr(key.key, member, None)
    if not isinstance(value, bytes) or not value:
        raise ProviderPermanentError(f"key {uri} has no JWK member {member!r}")
    return int.from_bytes(value, "big")


def _jwa_algorithm(scheme: SignatureScheme) -> str:
    """Return the JWA name (RFC 7518 section 3.1) Key Vault uses for ``scheme``.

    For PS* Key Vault follows RFC 7518 section 3.5: MGF1 with the same hash and
    a salt as long as the hash output, which is pkifed's only PSS salt.
    """
    if scheme.hash is None:
        raise UnsupportedAlgorithmError(f"Key Vault cannot sign with {scheme}")
    bits = scheme.hash.digest_size * 8
    if scheme.key.is_ec:
        return f"ES{bits}"
    if scheme.padding is RsaPadding.PSS:
        return f"PS{bits}"
    return f"RS{bits}"
