"""The ``aws-kms`` key provider: asymmetric signing keys in AWS Key Management Service.

Each key the federation creates carries the alias
``alias/pkifed/<federation>/<key name>`` and two tags, ``pkifed:federation`` and
``pkifed:key-name``, set atomically by CreateKey. Keys are found by their alias.
The tags let a restarted process find a key whose CreateAlias never ran, so a
crash between the two calls does not lead to a second key.

Key URIs follow step-ca's ``awskms`` form, ``awskms:key-id=<key id>;region=<region>``.
Only digests are sent (``MessageType=DIGEST``): the Sign API caps ``RAW`` messages
at 4,096 bytes, and CRLs grow past that.

Credentials come from boto3's standard chain, except for a loopback
``endpoint_url`` such as the local stand-in of ``pkifed dev up``: that one gets
fixed placeholder credentials, so no real credential is ever sent to a local
service and boto3 never queries the instance metadata service for one.

boto3 is imported on first use, so ``pkifed --help`` never loads it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key
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
from pkifed.providers.targets.objectstore import check_endpoint

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_kms.literals import (
        KeySpecType,
        MessageTypeType,
        SigningAlgorithmSpecType,
    )
    from mypy_boto3_kms.type_defs import KeyMetadataTypeDef

logger = logging.getLogger(__name__)

URI_SCHEME = "awskms"
TAG_FEDERATION = "pkifed:federation"
TAG_KEY_NAME = "pkifed:key-name"

# Placeholder credentials for a loopback endpoint_url (a local stand-in such as
# moto), which accepts any. They are public and grant nothing anywhere. The s3
# target uses them too.
LOOPBACK_ACCESS_KEY_ID = "PKIFEDLOOPBACKPLACEHOLDER"
LOOPBACK_SECRET_ACCESS_KEY = "pkifed-loopback-placeholder"  # noqa: S105 - public.

# The Sign API's limit on Message, from the KMS API reference (Sign, Message).
MAX_RAW_MESSAGE = 4096

# KMS alias names allow [a-zA-Z0-9:/_-] up to 256 characters (CreateAlias,
# AliasName). Each part pkifed adds is narrower: "/" separates the parts and ":"
# is kept out so the key name can be read back from the alias unambiguously.
_ALIAS_PART = re.compile(r"^[A-Za-z0-9_-]+$")
_MAX_ALIAS = 256

_KEY_SPECS: dict[KeyAlgorithm, KeySpecType] = {
    KeyAlgorithm.EC_P256: "ECC_NIST_P256",
    KeyAlgorithm.EC_P384: "ECC_NIST_P384",
    KeyAlgorithm.EC_P521: "ECC_NIST_P521",
    KeyAlgorithm.RSA_2048: "RSA_2048",
    KeyAlgorithm.RSA_3072: "RSA_3072",
    KeyAlgorithm.RSA_4096: "RSA_4096",
    KeyAlgorithm.ED25519: "ECC_NIST_EDWARDS25519",
    KeyAlgorithm.ML_DSA_44: "ML_DSA_44",
    KeyAlgorithm.ML_DSA_65: "ML_DSA_65",
    KeyAlgorithm.ML_DSA_87: "ML_DSA_87",
}
_ALGORITHMS_BY_SPEC = {spec: algorithm for algorithm, spec in _KEY_SPECS.items()}

# NOTE: KMS also offers Ed25519 (ECC_NIST_EDWARDS25519) and ML-DSA keys, and
# _sign_message implements their documented RAW signing, but moto 5.2.5 cannot
# create them, so that path has never run against a service. They stay out of
# the supported set until a test can exercise them.
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

# Every KeyState value in the KMS API reference. Only Enabled keys can sign, and
# pkifed's states have no finer distinction, so every other state except the
# deletions is reported as disabled. PendingImport has no key material yet,
# Unavailable is a disconnected custom key store, Creating and Updating pass.
_KEY_STATES = {
    "Enabled": KeyState.ENABLED,
    "Disabled": KeyState.DISABLED,
    "PendingImport": KeyState.DISABLED,
    "Unavailable": KeyState.DISABLED,
    "Creating": KeyState.DISABLED,
    "Updating": KeyState.DISABLED,
    "PendingDeletion": KeyState.PENDING_DELETION,
    "PendingReplicaDeletion": KeyState.PENDING_DELETION,
}

# Key material origins (DescribeKey, KeyMetadata.Origin). The KMS Developer Guide
# ("Data protection in AWS KMS") states that key material KMS generates never
# leaves its HSMs unencrypted, and CloudHSM key stores are HSMs too. Imported
# (EXTERNAL) material existed outside KMS before import and external key stores
# live in the customer's own key manager, so pkifed cannot vouch for an HSM and
# reports software for them.
_PROTECTION_BY_ORIGIN = {
    "AWS_KMS": ProtectionLevel.HSM,
    "AWS_CLOUDHSM": ProtectionLevel.HSM,
    "EXTERNAL": ProtectionLevel.SOFTWARE,
    "EXTERNAL_KEY_STORE": ProtectionLevel.SOFTWARE,
}

# The one table from AWS errors to pkifed errors. Keys are the service's error
# codes (botocore ClientError) or botocore exception class names, which are
# matched along the exception's class hierarchy. An unlisted code maps to a
# temporary error for HTTP 5xx and to ProviderPermanentError otherwise.
_ERRORS: dict[str, type[ProviderError]] = {
    # Service codes from the KMS API reference.
    "ThrottlingException": ProviderTemporaryError,
    "KMSInternalException": ProviderTemporaryError,
    "DependencyTimeoutException": ProviderTemporaryError,
    "KeyUnavailableException": ProviderTemporaryError,
    "NotFoundException": KeyNotFoundError,
    "AccessDeniedException": AccessDeniedError,
    "UnrecognizedClientException": AccessDeniedError,
    "InvalidSignatureException": AccessDeniedError,
    "ExpiredTokenException": AccessDeniedError,
    "DisabledException": KeyUnusableError,
    "KMSInvalidStateException": KeyUnusableError,
    "UnsupportedOperationException": UnsupportedAlgorithmError,
    "InvalidKeyUsageException": UnsupportedAlgorithmError,
    # Transport failures raised by botocore before any response arrives.
    "EndpointConnectionError": ProviderTemporaryError,
    "ConnectTimeoutError": ProviderTemporaryError,
    "ReadTimeoutError": ProviderTemporaryError,
    "ConnectionClosedError": ProviderTemporaryError,
    # Credential chain failures.
    "NoCredentialsError": AccessDeniedError,
    "PartialCredentialsError": AccessDeniedError,
}

# AWS access key IDs (documented prefixes AKIA for long-term keys, ASIA for
# temporary ones) and SigV4 header fields that a service message could echo.
_CREDENTIAL_PATTERNS = (
    re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
    re.compile(r"(?i)\b(Credential|Signature|X-Amz-Security-Token)=[^\s,;\"']+"),
)

# Permissions pkifed needs that check() cannot probe without creating or
# signing something.
_UNPROBED_PERMISSIONS = (
    "kms:CreateKey",
    "kms:CreateAlias",
    "kms:TagResource",
    "kms:Sign",
)


def placeholder_credentials(
    endpoint_url: str | None,
) -> tuple[str, str] | tuple[None, None]:
    """Return the access key ID and secret key to give boto3 for ``endpoint_url``.

    A loopback endpoint gets the placeholder credentials, which skip boto3's
    credential chain. Any other endpoint gets ``(None, None)``, so the chain
    runs as usual.
    """
    if endpoint_url is None or not is_loopback_url(endpoint_url):
        return None, None
    return LOOPBACK_ACCESS_KEY_ID, LOOPBACK_SECRET_ACCESS_KEY


class AwsKmsSettings(ProviderSettings):
    """Settings of an ``aws-kms`` provider.

    Credentials come from boto3's standard chain: environment variables, the
    shared config files (optionally a named profile), web identity and container
    or instance roles. None are written in the configuration file. A loopback
    endpoint_url gets placeholder credentials instead of the chain.
    """

    type: Literal["aws-kms"] = Field(description="Provider type: aws-kms.")
    region: str = Field(
        min_length=1,
        pattern=r"^[a-z0-9-]+$",
        description="AWS region holding the keys, such as eu-west-1.",
    )
    endpoint_url: str | None = Field(
        default=None,
        description=(
            "KMS endpoint URL to use instead of the region's public endpoint, such "
            "as a VPC endpoint or a local stand-in. A loopback endpoint "
            "(localhost, 127.0.0.0/8, ::1) is called with fixed placeholder "
            "credentials and never with the default credential chain, so no real "
            "credential reaches a local service."
        ),
    )
    profile: str | None = Field(
        default=None,
        description=(
            "Named profile in the shared AWS config files; unset uses the default "
            "credential chain. Not allowed with a loopback endpoint_url."
        ),
    )
    connect_timeout: float = Field(
        default=5.0, gt=0, description="Time allowed to open a connection, in seconds."
    )
    read_timeout: float = Field(
        default=15.0, gt=0, description="Time allowed for each response, in seconds."
    )

    @field_validator("endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        return None if value is None else check_endpoint(value)

    @model_validator(mode="after")
    def _check_profile(self) -> AwsKmsSettings:
        if self.profile is not None and self.uses_placeholder_credentials:
            raise ValueError(
                f"profile {self.profile!r} would not be used: a loopback "
                f"endpoint_url ({self.endpoint_url}) gets placeholder credentials; "
                "remove profile"
            )
        return self

    @property
    def uses_placeholder_credentials(self) -> bool:
        """Whether endpoint_url is loopback, so placeholder credentials are sent."""
        return self.endpoint_url is not None and is_loopback_url(self.endpoint_url)


def format_key_uri(key_id: str, region: str) -> str:
    """Build step-ca's ``awskms:key-id=<id>;region=<region>`` URI."""
    return f"{URI_SCHEME}:key-id={key_id};region={region}"


def parse_key_uri(uri: str) -> tuple[str, str | None]:
    """Split an ``awskms`` URI into the key ID (or key ARN) and the region.

    The region comes from the ``region`` attribute or from a key ARN, and is None
    when neither names one.

    Raises:
        ProviderPermanentError: the URI is not an ``awskms`` key URI.
    """
    prefix = f"{URI_SCHEME}:"
    if not uri.startswith(prefix):
        raise ProviderPermanentError(
            f"invalid key URI {uri!r}: expected awskms:key-id=<key id>;region=<region>"
        )
    attributes: dict[str, str] = {}
    for part in uri[len(prefix) :].split(";"):
        name, separator, value = part.partition("=")
        if not separator or not value or name not in ("key-id", "region"):
            raise ProviderPermanentError(
                f"invalid key URI {uri!r}: attribute {part!r} is not key-id=<id> or "
                "region=<region>"
            )
        attributes[name] = value
    key_id = attributes.get("key-id")
    if key_id is None:
        raise ProviderPermanentError(f"invalid key URI {uri!r}: key-id is missing")
    if key_id.startswith("alias/") or ":alias/" in key_id:
        # An alias can be moved to another key, so it cannot identify one.
        raise ProviderPermanentError(
            f"invalid key URI {uri!r}: key-id must be a key ID or key ARN, not an alias"
        )
    region = attributes.get("region")
    if key_id.startswith("arn:"):
        arn_region = key_id.split(":")[3] if key_id.count(":") >= 5 else ""
        if region is not None and arn_region != region:
            raise ProviderPermanentError(
                f"invalid key URI {uri!r}: region {region} does not match the key ARN"
            )
        region = arn_region or region
    return key_id, region


# botocore keeps 10 connections per client by default and warns, discarding
# the connection, whenever more threads than that share the client. Up to 256
# reconcile workers (the maximum of reconcile.concurrency) may call at once.
MAX_POOL_CONNECTIONS = 256


def redact_credentials(text: str) -> str:
    """Replace access key IDs and SigV4 credential fields in ``text``."""
    text = _CREDENTIAL_PATTERNS[0].sub("<redacted access key>", text)
    return _CREDENTIAL_PATTERNS[1].sub(r"\1=<redacted>", text)


def signing_algorithm(scheme: SignatureScheme) -> SigningAlgorithmSpecType:
    """Return the KMS SigningAlgorithm for a scheme, such as ``ECDSA_SHA_384``."""
    if scheme.key.family == "ml-dsa":
        return "ML_DSA_SHAKE_256"
    if scheme.key is KeyAlgorithm.ED25519:
        # Pure Ed25519 (RFC 8032), the form RFC 8410 uses in certificates;
        # ED25519_PH_SHA_512 would be Ed25519ph.
        return "ED25519_SHA_512"
    if scheme.hash is None:
        raise UnsupportedAlgorithmError(f"{scheme} needs a hash")
    bits = scheme.hash.digest_size * 8
    if scheme.key.is_ec:
        return cast("SigningAlgorithmSpecType", f"ECDSA_SHA_{bits}")
    if scheme.padding is RsaPadding.PSS:
        # KMS's RSASSA_PSS_SHA_* use MGF1 with the same hash and a salt as long as
        # the digest (KMS Developer Guide, RSA key specs for signing), which is
        # the only PSS salt pkifed signs with.
        return cast("SigningAlgorithmSpecType", f"RSASSA_PSS_SHA_{bits}")
    return cast("SigningAlgorithmSpecType", f"RSASSA_PKCS1_V1_5_SHA_{bits}")


def map_error(
    error: Exception, *, provider: str, operation: str, target: str
) -> ProviderError:
    """Translate a botocore exception by the one error table.

    The message names the provider, the operation, the key URI or alias and
    the AWS error code; credentials that the service echoed are redacted.
    """
    code, detail, status, retry_after = _error_details(error)
    error_type = _ERRORS.get(code)
    if error_type is None:
        error_type = next(
            (_ERRORS[c.__name__] for c in type(error).__mro__ if c.__name__ in _ERRORS),
            None,
        )
    if error_type is None:
        temporary = status is not None and status >= 500
        error_type = ProviderTemporaryError if temporary else ProviderPermanentError
    message = redact_credentials(
        f"provider {provider!r} (aws-kms): {operation} on {target} failed: "
        f"{code}: {detail}"
    )
    if issubclass(error_type, ProviderTemporaryError):
        return error_type(message, retry_after=retry_after)
    return error_type(message)


def _error_details(error: Exception) -> tuple[str, str, int | None, float | None]:
    """Code, message, HTTP status and Retry-After seconds of a botocore error."""
    response: Mapping[str, Any] | None = getattr(error, "response", None)
    if not isinstance(response, Mapping) or "Error" not in response:
        return type(error).__name__, str(error), None, None
    body = response.get("Error", {})
    metadata = response.get("ResponseMetadata", {})
    status = metadata.get("HTTPStatusCode")
    retry_after: float | None = None
    header = metadata.get("HTTPHeaders", {}).get("retry-after")
    if header is not None:
        try:
            retry_after = max(0.0, float(header))
        except ValueError:
            retry_after = None
    return (
        str(body.get("Code", "Unknown")),
        str(body.get("Message", "")),
        status,
        retry_after,
    )


class AwsKmsProvider(KeyProvider):
    """Keys in AWS KMS, found by alias, that sign through the Sign API."""

    type_name: ClassVar[str] = "aws-kms"
    settings_model: ClassVar[type[ProviderSettings]] = AwsKmsSettings
    uri_scheme: ClassVar[str] = URI_SCHEME

    def __init__(self, settings: ProviderSettings, context: ProviderContext) -> None:
        if not isinstance(settings, AwsKmsSettings):
            raise ProviderPermanentError(
                f"provider {context.provider_name!r}: expected aws-kms settings, got "
                f"{type(settings).__name__}"
            )
        super().__init__(settings, context)
        self.aws = settings
        self._client_lock = threading.Lock()
        self._kms: KMSClient | None = None
        _check_alias_part("federation name", context.federation)

    @classmethod
    def offered_algorithms(cls, settings: ProviderSettings) -> frozenset[KeyAlgorithm]:
        return _SUPPORTED

    def supported_algorithms(self) -> frozenset[KeyAlgorithm]:
        return _SUPPORTED

    # --- client and error boundary --------------------------------------------

    def _client(self) -> KMSClient:
        # boto3 sessions are not thread-safe but clients are, so one client is
        # built under a lock and then shared by every thread.
        client = self._kms
        if client is not None:
            return client
        with self._client_lock:
            if self._kms is None:
                with self._errors("creating a KMS client", self._endpoint_label()):
                    self._kms = self._new_client()
            return self._kms

    def _new_client(self) -> KMSClient:
        import boto3
        from botocore.config import Config

        # The settings reject a profile with a loopback endpoint, so at most
        # one of profile and placeholder credentials is given.
        access_key_id, secret_access_key = placeholder_credentials(
            self.aws.endpoint_url
        )
        session = boto3.session.Session(
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            profile_name=self.aws.profile,
            region_name=self.aws.region,
        )
        # pkifed's retry layer retries temporary errors with its own backoff, so
        # botocore makes exactly one attempt per call.
        config = Config(
            connect_timeout=self.aws.connect_timeout,
            read_timeout=self.aws.read_timeout,
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=MAX_POOL_CONNECTIONS,
            user_agent_extra="pkifed",
        )
        return session.client("kms", endpoint_url=self.aws.endpoint_url, config=config)

    def _endpoint_label(self) -> str:
        return self.aws.endpoint_url or f"the public KMS endpoint of {self.aws.region}"

    @contextmanager
    def _errors(self, operation: str, target: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (ClientError, BotoCoreError) as error:
            raise map_error(
                error, provider=self.name, operation=operation, target=target
            ) from error

    def close(self) -> None:
        with self._client_lock:
            if self._kms is not None:
                self._kms.close()
                self._kms = None

    # --- names ----------------------------------------------------------------

    @property
    def alias_prefix(self) -> str:
        """``alias/pkifed/<federation>/``, the namespace of this federation's keys."""
        return f"alias/pkifed/{self.context.federation}/"

    def alias_name(self, key_name: str) -> str:
        """Build the alias that names ``key_name``'s key.

        Raises:
            ProviderPermanentError: the key name cannot be used in a KMS alias.
        """
        _check_alias_part("key name", key_name)
        alias = self.alias_prefix + key_name
        if len(alias) > _MAX_ALIAS:
            raise ProviderPermanentError(
                f"provider {self.name!r}: alias {alias} has {len(alias)} characters; "
                f"KMS allows at most {_MAX_ALIAS}"
            )
        return alias

    def _uri(self, metadata: KeyMetadataTypeDef) -> str:
        return format_key_uri(metadata["KeyId"], self.aws.region)

    def _key_id(self, uri: str) -> str:
        key_id, region = parse_key_uri(uri)
        if region is not None and region != self.aws.region:
            raise ProviderPermanentError(
                f"provider {self.name!r}: key {uri} is in region {region}, but the "
                f"provider uses {self.aws.region}; add a provider for {region}"
            )
        return key_id

    # --- lookups --------------------------------------------------------------

    def _describe(self, key_id: str, target: str) -> KeyMetadataTypeDef:
        def describe() -> KeyMetadataTypeDef:
            with self._errors("DescribeKey", target):
                return self._client().describe_key(KeyId=key_id)["KeyMetadata"]

        return call_with_retry(
            describe,
            self.settings.retry,
            description=f"provider {self.name}: describing {target}",
        )

    def _describe_alias(self, alias: str) -> KeyMetadataTypeDef | None:
        try:
            return self._describe(alias, alias)
        except KeyNotFoundError:
            return None

    def _info(self, metadata: KeyMetadataTypeDef, name: str | None) -> KeyInfo:
        uri = self._uri(metadata)
        if metadata.get("KeyUsage") != "SIGN_VERIFY":
            raise UnsupportedAlgorithmError(
                f"provider {self.name!r}: key {uri} has key usage "
                f"{metadata.get('KeyUsage')}, expected SIGN_VERIFY"
            )
        spec = str(metadata.get("KeySpec") or metadata.get("CustomerMasterKeySpec"))
        if spec not in _ALGORITHMS_BY_SPEC:
            raise UnsupportedAlgorithmError(
                f"provider {self.name!r}: key {uri} has key spec {spec}, which pkifed "
                "does not use"
            )
        origin = str(metadata.get("Origin", "AWS_KMS"))
        state = str(metadata.get("KeyState", "Disabled"))
        return KeyInfo(
            uri=uri,
            algorithm=_ALGORITHMS_BY_SPEC[spec],
            protection_level=_PROTECTION_BY_ORIGIN.get(
                origin, ProtectionLevel.SOFTWARE
            ),
            state=_KEY_STATES.get(state, KeyState.DISABLED),
            name=name,
            created_at=metadata.get("CreationDate"),
        )

    def _aliases(self, key_id: str | None = None) -> list[dict[str, Any]]:
        def list_all() -> list[dict[str, Any]]:
            arguments = {"KeyId": key_id} if key_id is not None else {}
            found: list[dict[str, Any]] = []
            with self._errors("ListAliases", key_id or self.alias_prefix):
                paginator = self._client().get_paginator("list_aliases")
                for page in paginator.paginate(**arguments):  # type: ignore[arg-type]
                    found.extend(dict(alias) for alias in page.get("Aliases", []))
            return found

        return call_with_retry(
            list_all,
            self.settings.retry,
            description=f"provider {self.name}: listing aliases",
        )

    def _name_of(self, key_id: str) -> str | None:
        for alias in self._aliases(key_id):
            alias_name = str(alias.get("AliasName", ""))
            if alias_name.startswith(self.alias_prefix):
                return alias_name[len(self.alias_prefix) :]
        return None

    def describe_key(self, uri: str) -> KeyInfo:
        key_id = self._key_id(uri)
        metadata = self._describe(key_id, uri)
        return self._info(metadata, self._name_of(metadata["KeyId"]))

    def list_keys(self) -> list[KeyInfo]:
        keys: list[KeyInfo] = []
        for alias in self._aliases():
            alias_name = str(alias.get("AliasName", ""))
            target = alias.get("TargetKeyId")
            if not alias_name.startswith(self.alias_prefix) or target is None:
                continue
            metadata = self._describe(str(target), alias_name)
            keys.append(self._info(metadata, alias_name[len(self.alias_prefix) :]))
        return keys

    def find_key(self, key_name: str) -> KeyInfo | None:
        info, _aliased = self._lookup(key_name)
        return info

    def _lookup(self, key_name: str) -> tuple[KeyInfo | None, bool]:
        """Find ``key_name``'s key by alias, else by tags; flag whether it has one."""
        metadata = self._describe_alias(self.alias_name(key_name))
        if metadata is not None:
            return self._info(metadata, key_name), True
        orphan = self._find_unaliased(key_name)
        if orphan is None:
            return None, False
        return self._info(orphan, key_name), False

    def _find_unaliased(self, key_name: str) -> KeyMetadataTypeDef | None:
        """Find an enabled key tagged with ``key_name`` that has no alias.

        Such a key is what a process leaves behind when it dies between
        CreateKey and CreateAlias. Keys with any alias are skipped, which keeps
        the number of ListResourceTags calls to the unaliased keys.
        """
        aliased = {
            str(a["TargetKeyId"]) for a in self._aliases() if a.get("TargetKeyId")
        }
        candidates: list[KeyMetadataTypeDef] = []
        for key_id in self._list_key_ids():
            if key_id in aliased or not self._tagged_as(key_id, key_name):
                continue
            metadata = self._describe(key_id, format_key_uri(key_id, self.aws.region))
            if metadata.get("KeyState") == "Enabled":
                candidates.append(metadata)
        if not candidates:
            return None
        candidates.sort(
            key=lambda m: (m.get("CreationDate") is None, m.get("CreationDate"))
        )
        chosen = candidates[0]
        logger.warning(
            "provider %s: key %s was created for %s but has no alias; using it "
            "(%d unaliased candidates)",
            self.name,
            self._uri(chosen),
            key_name,
            len(candidates),
        )
        return chosen

    def _list_key_ids(self) -> list[str]:
        def list_all() -> list[str]:
            key_ids: list[str] = []
            with self._errors("ListKeys", self._endpoint_label()):
                for page in self._client().get_paginator("list_keys").paginate():
                    key_ids.extend(str(key["KeyId"]) for key in page.get("Keys", []))
            return key_ids

        return call_with_retry(
            list_all,
            self.settings.retry,
            description=f"provider {self.name}: listing keys",
        )

    def _tagged_as(self, key_id: str, key_name: str) -> bool:
        uri = format_key_uri(key_id, self.aws.region)

        def read_tags() -> dict[str, str]:
            tags: dict[str, str] = {}
            with self._errors("ListResourceTags", uri):
                paginator = self._client().get_paginator("list_resource_tags")
                for page in paginator.paginate(KeyId=key_id):
                    tags.update(
                        (t["TagKey"], t["TagValue"]) for t in page.get("Tags", [])
                    )
            return tags

        try:
            tags = call_with_retry(
                read_tags,
                self.settings.retry,
                description=f"provider {self.name}: reading the tags of {uri}",
            )
        except (AccessDeniedError, KeyNotFoundError) as error:
            # Keys of other teams may deny pkifed, and a key may be deleted between
            # ListKeys and this call. Neither can be the key sought.
            logger.debug("provider %s: skipping key %s: %s", self.name, uri, error)
            return False
        return (
            tags.get(TAG_FEDERATION) == self.context.federation
            and tags.get(TAG_KEY_NAME) == key_name
        )

    # --- creation -------------------------------------------------------------

    def create_key(self, key_name: str, algorithm: KeyAlgorithm) -> KeyInfo:
        self.require_algorithm(algorithm)
        self.alias_name(key_name)
        logger.info("provider %s: creating %s key %s", self.name, algorithm, key_name)
        metadata = self._create_unaliased(key_name, algorithm)
        return self._attach_alias(key_name, metadata)

    def find_or_create_key(self, key_name: str, algorithm: KeyAlgorithm) -> KeyInfo:
        """Return ``key_name``'s key, creating it or repairing its alias as needed.

        A key found by its tags alone gets its alias now, so the next lookup
        needs one call again.
        """
        self.require_algorithm(algorithm)
        info, aliased = self._lookup(key_name)
        if info is None:
            return self.create_key(key_name, algorithm)
        if info.algorithm != algorithm:
            raise UnsupportedAlgorithmError(
                f"provider {self.name!r}: key {info.uri} is {info.algorithm}, "
                f"expected {algorithm}"
            )
        if not aliased:
            metadata = self._describe(self._key_id(info.uri), info.uri)
            return self._attach_alias(key_name, metadata)
        return info

    def adopt_key(self, uri: str, algorithm: KeyAlgorithm) -> KeyInfo:
        """Adopt a key after checking that this provider supports its algorithm.

        describe_key recognises Ed25519 and ML-DSA keys, but signing with them
        is untested, so adopting them is rejected like creating them.
        """
        self.require_algorithm(algorithm)
        return super().adopt_key(uri, algorithm)

    def _create_unaliased(
        self, key_name: str, algorithm: KeyAlgorithm
    ) -> KeyMetadataTypeDef:
        """Create a tagged key without its alias (the first of the two steps).

        CreateKey is not retried, because after a lost response a retry would
        create a second key. A key whose response was lost is found later by its
        tags.
        """
        federation = self.context.federation
        with self._errors("CreateKey", self.alias_name(key_name)):
            response = self._client().create_key(
                Description=f"pkifed federation {federation}, key {key_name}",
                KeyUsage="SIGN_VERIFY",
                KeySpec=_KEY_SPECS[algorithm],
                Tags=[
                    {"TagKey": TAG_FEDERATION, "TagValue": federation},
                    {"TagKey": TAG_KEY_NAME, "TagValue": key_name},
                ],
            )
        return response["KeyMetadata"]

    def _attach_alias(self, key_name: str, metadata: KeyMetadataTypeDef) -> KeyInfo:
        alias = self.alias_name(key_name)
        key_id = metadata["KeyId"]

        def create_alias() -> bool:
            from botocore.exceptions import ClientError

            with self._errors("CreateAlias", alias):
                try:
                    self._client().create_alias(AliasName=alias, TargetKeyId=key_id)
                except ClientError as error:
                    if (
                        error.response.get("Error", {}).get("Code")
                        != "AlreadyExistsException"
                    ):
                        raise
                    return False
            return True

        created = call_with_retry(
            create_alias,
            self.settings.retry,
            description=f"provider {self.name}: creating alias {alias}",
        )
        if not created:
            return self._resolve_alias_race(key_name, metadata)
        return self._info(metadata, key_name)

    def _resolve_alias_race(self, key_name: str, ours: KeyMetadataTypeDef) -> KeyInfo:
        """Settle CreateAlias finding the alias taken, by a retry or another process."""
        alias = self.alias_name(key_name)
        current = self._describe(alias, alias)
        if current["KeyId"] == ours["KeyId"]:
            return self._info(current, key_name)
        logger.warning(
            "provider %s: alias %s already names key %s; scheduling deletion of the "
            "duplicate key %s created at the same time",
            self.name,
            alias,
            self._uri(current),
            self._uri(ours),
        )
        try:
            with self._errors("ScheduleKeyDeletion", self._uri(ours)):
                self._client().schedule_key_deletion(
                    KeyId=ours["KeyId"], PendingWindowInDays=7
                )
        except ProviderError as error:
            logger.warning("provider %s: %s; delete the key by hand", self.name, error)
        return self._info(current, key_name)

    # --- keys and signing -----------------------------------------------------

    def public_key(self, uri: str) -> PublicKey:
        key_id = self._key_id(uri)

        def fetch() -> bytes:
            with self._errors("GetPublicKey", uri):
                return self._client().get_public_key(KeyId=key_id)["PublicKey"]

        der = call_with_retry(
            fetch,
            self.settings.retry,
            description=f"provider {self.name}: reading the public key of {uri}",
        )
        public = load_der_public_key(der)
        if not isinstance(
            public,
            ec.EllipticCurvePublicKey
            | rsa.RSAPublicKey
            | ed25519.Ed25519PublicKey
            | mldsa.MLDSA44PublicKey
            | mldsa.MLDSA65PublicKey
            | mldsa.MLDSA87PublicKey,
        ):
            raise UnsupportedAlgorithmError(
                f"provider {self.name!r}: key {uri} has a {type(public).__name__}, "
                "which pkifed does not use"
            )
        return public

    def _sign_digest(self, uri: str, scheme: SignatureScheme, digest: bytes) -> bytes:
        # Sign returns DER ECDSA-Sig-Value for ECDSA and the PKCS #1 octet string
        # for RSA (KMS API reference, SignResponse Signature): X.509's encodings.
        return self._sign(uri, scheme, digest, "DIGEST")

    def _sign_message(self, uri: str, scheme: SignatureScheme, message: bytes) -> bytes:
        # Ed25519 and ML-DSA keys sign the whole message (RAW), which KMS caps.
        # NOTE: ML-DSA's EXTERNAL_MU message type would lift the cap; it is not
        # implemented.
        if len(message) > MAX_RAW_MESSAGE:
            raise UnsupportedAlgorithmError(
                f"provider {self.name!r}: {scheme.key} signs the whole message, and "
                f"KMS accepts at most {MAX_RAW_MESSAGE} bytes; got {len(message)}"
            )
        return self._sign(uri, scheme, message, "RAW")

    def _sign(
        self, uri: str, scheme: SignatureScheme, message: bytes, kind: MessageTypeType
    ) -> bytes:
        key_id = self._key_id(uri)
        with self._errors("Sign", uri):
            response = self._client().sign(
                KeyId=key_id,
                Message=message,
                MessageType=kind,
                SigningAlgorithm=signing_algorithm(scheme),
            )
        return response["Signature"]

    # --- check ----------------------------------------------------------------

    def check(self) -> ProviderStatus:
        """Probe KMS with read-only calls and list the permissions they lacked.

        The identity is the region and endpoint: STS is not reachable everywhere
        (private VPC endpoints), so only KMS is called.
        """
        identity = f"region {self.aws.region}, endpoint {self._endpoint_label()}"
        if self.aws.profile:
            identity += f", profile {self.aws.profile}"
        if self.aws.uses_placeholder_credentials:
            identity += ", placeholder credentials (loopback endpoint)"
        missing: list[str] = []
        try:
            aliases = self._probe("kms:ListAliases", missing, self._aliases)
            self._probe("kms:ListKeys", missing, self._list_key_ids)
            ours = [
                a
                for a in aliases or []
                if str(a.get("AliasName", "")).startswith(self.alias_prefix)
            ]
            if ours:
                target = format_key_uri(str(ours[0]["TargetKeyId"]), self.aws.region)
                self._probe(
                    "kms:DescribeKey", missing, lambda: self.describe_key(target)
                )
                self._probe(
                    "kms:GetPublicKey", missing, lambda: self.public_key(target)
                )
        except ProviderError as error:
            return ProviderStatus(
                reachable=False,
                identity=identity,
                algorithms=_SUPPORTED,
                protection_levels=frozenset({ProtectionLevel.HSM}),
                message=str(error),
            )
        return ProviderStatus(
            reachable=True,
            identity=identity,
            algorithms=_SUPPORTED,
            protection_levels=frozenset({ProtectionLevel.HSM}),
            missing_permissions=tuple(missing),
            message="not probed, because probing would create or sign: "
            + ", ".join(_UNPROBED_PERMISSIONS),
        )

    def _probe(self, permission: str, missing: list[str], call: Any) -> Any:
        try:
            return call()
        except AccessDeniedError:
            missing.append(permission)
            return None


def _check_alias_part(label: str, value: str) -> None:
    if not _ALIAS_PART.match(value):
        raise ProviderPermanentError(
            f"{label} {value!r} cannot be used in a KMS alias: use only letters, "
            "digits, '_' and '-'"
        )
