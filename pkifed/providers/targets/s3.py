"""The ``s3`` publish target: objects in an Amazon S3 bucket.

Versions are ETags. Writes are conditional on the server: ``IfNoneMatch="*"``
when the object must not exist yet and ``IfMatch=<ETag>`` otherwise (S3 User
Guide, "How to prevent object overwrites with conditional writes"). S3 checks
and writes atomically, so two writers racing on the same version cannot both
succeed. Deletes send ``IfMatch`` too.

Credentials come from boto3's standard chain (environment variables, shared
config files, web identity, container or instance roles); none are written in
the configuration. A loopback ``endpoint_url``, such as a local stand-in, gets
fixed placeholder credentials instead, so no real credential is sent to it and
boto3 never queries the instance metadata service. boto3 is imported on first use.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from pkifed.errors import (
    AccessDeniedError,
    ProviderError,
    ProviderPermanentError,
    ProviderTemporaryError,
)
from pkifed.providers.aws import (
    MAX_POOL_CONNECTIONS,
    placeholder_credentials,
    redact_credentials,
)
from pkifed.providers.targets.base import (
    PreconditionFailedError,
    PublishTarget,
    StoredObject,
    TargetSettings,
)
from pkifed.providers.targets.objectstore import (
    ObjectKeys,
    check_endpoint,
    content_type,
    normalize_prefix,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

# The one table from S3 errors to pkifed errors. Keys are S3 error codes (S3
# API reference, "List of error codes") or botocore exception class names,
# which are matched along the exception's class hierarchy. An unlisted code
# maps to a temporary error for HTTP 429 and 5xx and to a permanent one
# otherwise.
_ERRORS: dict[str, type[ProviderError]] = {
    # A conditional write whose ETag no longer matches (412), and a write that
    # lost a race with another conditional write on the same key (409).
    "PreconditionFailed": PreconditionFailedError,
    "ConditionalRequestConflict": PreconditionFailedError,
    "SlowDown": ProviderTemporaryError,
    "Throttling": ProviderTemporaryError,
    "ThrottlingException": ProviderTemporaryError,
    "RequestTimeout": ProviderTemporaryError,
    "InternalError": ProviderTemporaryError,
    "ServiceUnavailable": ProviderTemporaryError,
    "AccessDenied": AccessDeniedError,
    "AllAccessDisabled": AccessDeniedError,
    "InvalidAccessKeyId": AccessDeniedError,
    "SignatureDoesNotMatch": AccessDeniedError,
    "ExpiredToken": AccessDeniedError,
    "InvalidToken": AccessDeniedError,
    "NoSuchBucket": ProviderPermanentError,
    "NoSuchKey": ProviderPermanentError,
    # Transport failures raised by botocore before or while a response arrives.
    "EndpointConnectionError": ProviderTemporaryError,
    "ConnectTimeoutError": ProviderTemporaryError,
    "ReadTimeoutError": ProviderTemporaryError,
    "ConnectionClosedError": ProviderTemporaryError,
    "ResponseStreamingError": ProviderTemporaryError,
    "IncompleteReadError": ProviderTemporaryError,
    # Credential chain failures.
    "NoCredentialsError": AccessDeniedError,
    "PartialCredentialsError": AccessDeniedError,
}

# S3 general purpose bucket names (S3 User Guide, "Bucket naming rules"):
# 3 to 63 lowercase letters, digits, '.' and '-', starting and ending with a
# letter or digit.
_BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"


class S3TargetSettings(TargetSettings):
    """Settings of an ``s3`` target."""

    type: Literal["s3"] = Field(description="Target type: s3.")
    bucket: str = Field(pattern=_BUCKET, description="Name of the S3 bucket.")
    prefix: str = Field(
        default="",
        description=(
            "Key prefix that objects are published under, such as pki/prod; "
            "empty publishes at the top of the bucket."
        ),
    )
    region: str = Field(
        min_length=1,
        pattern=r"^[a-z0-9-]+$",
        description="AWS region of the bucket, such as eu-west-1.",
    )
    endpoint_url: str | None = Field(
        default=None,
        description=(
            "S3 endpoint URL to use instead of the region's public endpoint, such "
            "as a VPC endpoint or a local test service; requests then use "
            "path-style addressing. Plain http:// is accepted for loopback "
            "addresses only. A loopback endpoint (localhost, 127.0.0.0/8, ::1) is "
            "called with fixed placeholder credentials and never with the default "
            "credential chain, so no real credential reaches a local service."
        ),
    )
    connect_timeout: float = Field(
        default=5.0, gt=0, description="Time allowed to open a connection, in seconds."
    )
    read_timeout: float = Field(
        default=30.0, gt=0, description="Time allowed for each response, in seconds."
    )

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        return normalize_prefix(value)

    @field_validator("endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        return None if value is None else check_endpoint(value)


def map_error(
    error: Exception, *, target: str, action: str, location: str
) -> ProviderError:
    """Translate a botocore exception by the one error table.

    The message names the target, the action, the object's ``s3://`` URL and
    the S3 error code; credentials that the service echoed are redacted.
    """
    code, detail, status = _error_details(error)
    error_type = _ERRORS.get(code)
    if error_type is None:
        error_type = next(
            (_ERRORS[c.__name__] for c in type(error).__mro__ if c.__name__ in _ERRORS),
            None,
        )
    if error_type is None:
        temporary = status is not None and (status == 429 or status >= 500)
        error_type = ProviderTemporaryError if temporary else ProviderPermanentError
    message = redact_credentials(
        f"target {target} (s3): {action} {location} failed: {code}: {detail}"
    )
    return error_type(message)


def _error_details(error: Exception) -> tuple[str, str, int | None]:
    """Return the code, message and HTTP status of a botocore error."""
    response: Mapping[str, Any] | None = getattr(error, "response", None)
    if not isinstance(response, Mapping) or "Error" not in response:
        return type(error).__name__, str(error), None
    body = response.get("Error", {})
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(body.get("Code", "Unknown")), str(body.get("Message", "")), status


def _error_code(error: Exception) -> str | None:
    response = getattr(error, "response", None)
    if isinstance(response, Mapping):
        code = response.get("Error", {}).get("Code")
        return None if code is None else str(code)
    return None


_loader_lock = threading.Lock()
_shared_loader: Any = None


def _botocore_session() -> Any:
    """Return a new botocore session whose service models come from a shared cache.

    Loading the S3 model takes about 0.2 s; sharing the loader pays that once
    per process rather than once per target. Credentials stay per session.
    """
    import botocore.loaders
    import botocore.session

    global _shared_loader
    with _loader_lock:
        if _shared_loader is None:
            _shared_loader = botocore.loaders.create_loader()
        loader = _shared_loader
    session = botocore.session.Session()
    session.register_component("data_loader", loader)
    return session


class S3Target(PublishTarget):
    """Publishes each object to an S3 bucket with conditional writes."""

    type_name: ClassVar[str] = "s3"
    settings_model: ClassVar[type[TargetSettings]] = S3TargetSettings

    def __init__(self, name: str, settings: TargetSettings, config_dir: Any) -> None:
        if not isinstance(settings, S3TargetSettings):
            raise TypeError(f"settings must be S3TargetSettings, got {settings!r}")
        super().__init__(name, settings, config_dir)
        self.s3 = settings
        self.keys = ObjectKeys(name, settings.prefix)
        self._client_lock = threading.Lock()
        self._s3_client: S3Client | None = None

    # --- client and error boundary --------------------------------------------

    def _client(self) -> S3Client:
        # boto3 clients are thread-safe once built, but building one is not.
        with self._client_lock:
            if self._s3_client is None:
                with self._errors("creating an S3 client for", self.location("")):
                    self._s3_client = self._new_client()
            return self._s3_client

    def _new_client(self) -> S3Client:
        import boto3
        from botocore.config import Config

        access_key_id, secret_access_key = placeholder_credentials(self.s3.endpoint_url)
        session = boto3.session.Session(
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            botocore_session=_botocore_session(),
            region_name=self.s3.region,
        )
        # Each publish attempt is retried as a whole (read, conditional write),
        # so botocore makes exactly one attempt per call. Custom endpoints such
        # as MinIO or a local test service have no per-bucket DNS names.
        style: Literal["path", "auto"] = "path" if self.s3.endpoint_url else "auto"
        config = Config(
            connect_timeout=self.s3.connect_timeout,
            read_timeout=self.s3.read_timeout,
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=MAX_POOL_CONNECTIONS,
            s3={"addressing_style": style},
            user_agent_extra="pkifed",
        )
        return session.client("s3", endpoint_url=self.s3.endpoint_url, config=config)

    @contextmanager
    def _errors(
        self, action: str, location: str, *, conditional: bool = False
    ) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (ClientError, BotoCoreError) as error:
            if conditional and _error_code(error) == "NoSuchKey":
                # IfMatch on a key that is gone: it was deleted since it was
                # read, which is a changed object like any other.
                raise PreconditionFailedError(
                    f"target {self.name} (s3): {location} was deleted while it was "
                    "being published"
                ) from error
            raise map_error(
                error, target=self.name, action=action, location=location
            ) from error

    # --- PublishTarget --------------------------------------------------------

    def read(self, object_name: str) -> StoredObject | None:
        key = self.keys.key(object_name)
        location = self.location(object_name)
        client = self._client()
        from botocore.exceptions import ClientError

        with self._errors("reading", location):
            try:
                response = client.get_object(Bucket=self.s3.bucket, Key=key)
            except ClientError as error:
                if _error_code(error) == "NoSuchKey":
                    return None
                raise
            data = response["Body"].read()
        return StoredObject(data, response["ETag"])

    def write(
        self, object_name: str, data: bytes, expected_version: str | None
    ) -> None:
        key = self.keys.key(object_name)
        location = self.location(object_name)
        client = self._client()
        kind = content_type(object_name)
        with self._errors("writing", location, conditional=True):
            if expected_version is None:
                client.put_object(
                    Bucket=self.s3.bucket,
                    Key=key,
                    Body=data,
                    ContentType=kind,
                    IfNoneMatch="*",
                )
            else:
                client.put_object(
                    Bucket=self.s3.bucket,
                    Key=key,
                    Body=data,
                    ContentType=kind,
                    IfMatch=expected_version,
                )
        logger.info("target %s: wrote %s", self.name, location)

    def delete(self, object_name: str, expected_version: str) -> None:
        key = self.keys.key(object_name)
        location = self.location(object_name)
        client = self._client()
        from botocore.exceptions import ClientError

        with self._errors("deleting", location):
            try:
                client.delete_object(
                    Bucket=self.s3.bucket, Key=key, IfMatch=expected_version
                )
            except ClientError as error:
                # The object is already gone, which is what was asked.
                if _error_code(error) != "NoSuchKey":
                    raise
        logger.info("target %s: deleted %s", self.name, location)

    def list_objects(self) -> list[str]:
        client = self._client()
        keys: list[str] = []
        with self._errors("listing", self.location("")):
            paginator = client.get_paginator("list_objects_v2")
            pages = paginator.paginate(
                Bucket=self.s3.bucket, Prefix=self.keys.list_prefix
            )
            for page in pages:
                keys.extend(item["Key"] for item in page.get("Contents", []))
        return self.keys.names(keys)

    def location(self, object_name: str) -> str:
        return f"s3://{self.s3.bucket}/{self.keys.list_prefix}{object_name}"

    def close(self) -> None:
        with self._client_lock:
            if self._s3_client is not None:
                self._s3_client.close()
                self._s3_client = None
