"""The ``azure-blob`` publish target: block blobs in an Azure Storage container.

Versions are ETags. Writes are conditional on the server, with
``If-None-Match: *`` when the blob must not exist yet and ``If-Match: <ETag>``
otherwise. Deletes send ``If-Match`` too. A failed condition comes back as
412 ``ConditionNotMet``, or as 409 ``BlobAlreadyExists`` for ``If-None-Match``
on an existing blob (as Azurite 3.37 responds). Both mean another writer got
there first.

Credentials: an account key or a SAS token given as a secret reference, or,
when neither is set, azure-identity's ``DefaultAzureCredential``. The Azure
SDKs are imported on first use.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urlsplit

from pydantic import Field, field_validator, model_validator

from pkifed.errors import (
    AccessDeniedError,
    ProviderError,
    ProviderPermanentError,
    ProviderTemporaryError,
)
from pkifed.loopback import is_loopback_url
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
from pkifed.secrets import SecretRef

logger = logging.getLogger(__name__)

# The one table from Azure Storage errors to pkifed errors. Keys are the
# service's error codes, or azure-core and azure-identity exception class
# names, which are matched along the exception's class hierarchy. An unlisted
# code maps to a temporary error for HTTP 429 and 5xx and to a permanent one
# otherwise.
_ERRORS: dict[str, type[ProviderError]] = {
    "ConditionNotMet": PreconditionFailedError,
    "BlobAlreadyExists": PreconditionFailedError,
    "ServerBusy": ProviderTemporaryError,
    "InternalError": ProviderTemporaryError,
    "OperationTimedOut": ProviderTemporaryError,
    "AuthenticationFailed": AccessDeniedError,
    "AuthorizationFailure": AccessDeniedError,
    "AuthorizationPermissionMismatch": AccessDeniedError,
    "AuthorizationResourceTypeMismatch": AccessDeniedError,
    "InsufficientAccountPermissions": AccessDeniedError,
    "AccountIsDisabled": AccessDeniedError,
    "ContainerNotFound": ProviderPermanentError,
    "BlobNotFound": ProviderPermanentError,
    # Transport failures: no request reached the service, or no response came.
    "ServiceRequestError": ProviderTemporaryError,
    "ServiceResponseError": ProviderTemporaryError,
    # Credential failures: 401 and 403 responses, and credential chains that
    # found no usable identity.
    "ClientAuthenticationError": AccessDeniedError,
    "CredentialUnavailableError": AccessDeniedError,
}

# Container names are 3 to 63 lowercase letters, digits and single '-',
# starting and ending with a letter or digit.
_CONTAINER = r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$"
_ACCOUNT = r"^[a-z0-9]{3,24}$"

# DNS suffixes of Blob Storage in the Azure public, China and US Government
# clouds, whose first label is the account name.
_BLOB_SUFFIXES = (
    ".blob.core.windows.net",
    ".blob.core.chinacloudapi.cn",
    ".blob.core.usgovcloudapi.net",
)


def account_name_of(account_url: str) -> str | None:
    """Return the storage account named by a Blob service URL, if it names one.

    ``https://<account>.blob.core.windows.net`` names it in the host; a local
    emulator such as Azurite names it in the first path segment.
    """
    parts = urlsplit(account_url)
    host = (parts.hostname or "").lower()
    for suffix in _BLOB_SUFFIXES:
        if host.endswith(suffix):
            return host[: -len(suffix)]
    segment = parts.path.strip("/").split("/")[0]
    return segment or None


class AzureBlobTargetSettings(TargetSettings):
    """Settings of an ``azure-blob`` target."""

    type: Literal["azure-blob"] = Field(description="Target type: azure-blob.")
    account_url: str = Field(
        description=(
            "Blob service URL of the storage account, such as "
            "https://<account>.blob.core.windows.net. Plain http:// is accepted "
            "for loopback addresses only."
        ),
    )
    container: str = Field(pattern=_CONTAINER, description="Name of the container.")
    prefix: str = Field(
        default="",
        description=(
            "Blob name prefix that objects are published under, such as pki/prod; "
            "empty publishes at the top of the container."
        ),
    )
    account_name: str | None = Field(
        default=None,
        pattern=_ACCOUNT,
        description=(
            "Storage account name used with account_key; defaults to the name in "
            "account_url."
        ),
    )
    account_key: SecretRef | None = Field(
        default=None,
        description=(
            "Reference to the storage account key, such as ${env:AZURE_STORAGE_KEY}; "
            "unset uses sas_token or DefaultAzureCredential."
        ),
    )
    sas_token: SecretRef | None = Field(
        default=None,
        description=(
            "Reference to a shared access signature with read, write, delete and "
            "list permissions on the container; unset uses account_key or "
            "DefaultAzureCredential."
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

    @field_validator("container")
    @classmethod
    def _check_container(cls, value: str) -> str:
        if "--" in value:
            raise ValueError(f"got {value!r}: container names cannot contain '--'")
        return value

    @field_validator("account_url")
    @classmethod
    def _check_account_url(cls, value: str) -> str:
        return check_endpoint(value).rstrip("/")

    @model_validator(mode="after")
    def _check_credentials(self) -> AzureBlobTargetSettings:
        if self.account_key is not None and self.sas_token is not None:
            raise ValueError("set account_key or sas_token, not both")
        if self.account_key is not None and self.resolved_account_name is None:
            raise ValueError(
                "account_name is missing and account_url names no storage account"
            )
        if is_loopback_url(self.account_url) and (
            self.account_key is None and self.sas_token is None
        ):
            # DefaultAzureCredential would look for an identity, possibly on a
            # metadata service, to authenticate to a local test service.
            raise ValueError(
                "a loopback account_url needs account_key or sas_token, such as "
                "the emulator's development account key"
            )
        return self

    @property
    def resolved_account_name(self) -> str | None:
        """The account name: account_name, or the one in account_url."""
        return self.account_name or account_name_of(self.account_url)


def _error_code(error: Exception) -> str | None:
    code = getattr(error, "error_code", None)
    if code is None:
        return None
    # azure-storage-blob returns some codes as members of its StorageErrorCode
    # string enum, whose str() is the member name rather than the code.
    return str(getattr(code, "value", code))


def error_type_of(error: Exception) -> type[ProviderError] | None:
    """Return the pkifed error type of an Azure SDK exception, or None."""
    code = _error_code(error)
    if code in _ERRORS:
        return _ERRORS[code]
    status = getattr(error, "status_code", None)
    if isinstance(status, int) and (status == 429 or status >= 500):
        return ProviderTemporaryError
    for cls in type(error).__mro__:
        if cls.__name__ in _ERRORS:
            return _ERRORS[cls.__name__]
    if isinstance(status, int):
        return ProviderPermanentError
    return None


class AzureBlobTarget(PublishTarget):
    """Publishes each object as a block blob with conditional writes."""

    type_name: ClassVar[str] = "azure-blob"
    settings_model: ClassVar[type[TargetSettings]] = AzureBlobTargetSettings

    def __init__(self, name: str, settings: TargetSettings, config_dir: Any) -> None:
        if not isinstance(settings, AzureBlobTargetSettings):
            raise TypeError(
                f"settings must be AzureBlobTargetSettings, got {settings!r}"
            )
        super().__init__(name, settings, config_dir)
        self.azure = settings
        self.keys = ObjectKeys(name, settings.prefix)
        self._client_lock = threading.Lock()
        self._container_client: Any = None
        self._credential: Any = None

    # --- client and error boundary --------------------------------------------

    def _container(self) -> Any:
        with self._client_lock:
            if self._container_client is None:
                with self._errors("connecting to", self.location("")):
                    self._container_client = self._new_client()
            return self._container_client

    def _new_client(self) -> Any:
        from azure.storage.blob import ContainerClient

        # Each publish attempt is retried as a whole (read, conditional write),
        # so the SDK's own retries are off.
        return ContainerClient(
            self.azure.account_url,
            self.azure.container,
            credential=self._new_credential(),
            retry_total=0,
            connection_timeout=self.azure.connect_timeout,
            read_timeout=self.azure.read_timeout,
        )

    def _new_credential(self) -> Any:
        if self.azure.account_key is not None:
            from azure.core.credentials import AzureNamedKeyCredential

            account = self.azure.resolved_account_name
            if account is None:
                raise ProviderPermanentError(
                    f"target {self.name} (azure-blob): account_name is missing"
                )
            return AzureNamedKeyCredential(account, self.azure.account_key.resolve())
        if self.azure.sas_token is not None:
            from azure.core.credentials import AzureSasCredential

            return AzureSasCredential(self.azure.sas_token.resolve())
        from azure.identity import DefaultAzureCredential

        self._credential = DefaultAzureCredential()
        return self._credential

    @contextmanager
    def _errors(
        self, action: str, location: str, *, conditional: bool = False
    ) -> Iterator[None]:
        try:
            yield
        except Exception as error:
            error_type = error_type_of(error)
            if error_type is None:
                raise
            code = _error_code(error) or type(error).__name__
            if conditional and code == "BlobNotFound":
                # If-Match on a blob that is gone: it was deleted since it was
                # read, which is a changed object like any other.
                error_type = PreconditionFailedError
            lines = str(getattr(error, "message", None) or error).splitlines()
            detail = lines[0] if lines else type(error).__name__
            raise error_type(
                f"target {self.name} (azure-blob): {action} {location} failed: "
                f"{code}: {detail}"
            ) from error

    # --- PublishTarget --------------------------------------------------------

    def read(self, object_name: str) -> StoredObject | None:
        blob = self._container().get_blob_client(self.keys.key(object_name))
        from azure.core.exceptions import ResourceNotFoundError

        with self._errors("reading", self.location(object_name)):
            try:
                downloader = blob.download_blob()
            except ResourceNotFoundError as error:
                if _error_code(error) == "BlobNotFound":
                    return None
                raise
            # Later ranges of a large blob are requested with If-Match on the
            # first response's ETag, so the content belongs to this version.
            data = downloader.readall()
            version = str(downloader.properties.etag)
        return StoredObject(bytes(data), version)

    def write(
        self, object_name: str, data: bytes, expected_version: str | None
    ) -> None:
        from azure.core import MatchConditions
        from azure.storage.blob import ContentSettings

        blob = self._container().get_blob_client(self.keys.key(object_name))
        conditions: dict[str, Any] = {"match_condition": MatchConditions.IfMissing}
        if expected_version is not None:
            conditions = {
                "etag": expected_version,
                "match_condition": MatchConditions.IfNotModified,
            }
        settings = ContentSettings(content_type=content_type(object_name))
        location = self.location(object_name)
        with self._errors("writing", location, conditional=True):
            # overwrite=True keeps the SDK from adding its own If-None-Match;
            # the conditions above decide whether the write may replace a blob.
            blob.upload_blob(
                data, overwrite=True, content_settings=settings, **conditions
            )
        logger.info("target %s: wrote %s", self.name, location)

    def delete(self, object_name: str, expected_version: str) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceNotFoundError

        blob = self._container().get_blob_client(self.keys.key(object_name))
        location = self.location(object_name)
        with self._errors("deleting", location):
            try:
                blob.delete_blob(
                    etag=expected_version,
                    match_condition=MatchConditions.IfNotModified,
                )
            except ResourceNotFoundError as error:
                # The blob is already gone, which is what was asked.
                if _error_code(error) != "BlobNotFound":
                    raise
        logger.info("target %s: deleted %s", self.name, location)

    def list_objects(self) -> list[str]:
        container = self._container()
        with self._errors("listing", self.location("")):
            blobs = container.list_blobs(name_starts_with=self.keys.list_prefix)
            keys = [blob.name for blob in blobs]
        return self.keys.names(keys)

    def location(self, object_name: str) -> str:
        # Built from the settings, never from the SDK's URL, which carries the
        # SAS token when one is used.
        key = quote(self.keys.list_prefix + object_name)
        return f"{self.azure.account_url}/{self.azure.container}/{key}"

    def close(self) -> None:
        with self._client_lock:
            if self._container_client is not None:
                self._container_client.close()
                self._container_client = None
            if self._credential is not None:
                self._credential.close()
                self._credential = None
