"""The ``gcs`` publish target: objects in a Google Cloud Storage bucket.

Versions are object generations. Writes send ``ifGenerationMatch``, which is
``0`` when the object must not exist yet and its generation otherwise. Deletes
send the generation too, and Cloud Storage rejects a failed condition with 412.
A read
fetches the object's metadata, then downloads its content on the condition
that the generation is still the same, so content and version always belong
together.

Credentials are Application Default Credentials. A loopback ``http://``
endpoint (a local test service) is called with anonymous credentials instead,
so real credentials are never sent to it. google-cloud-storage is imported on
first use.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field, field_validator

from pkifed.errors import (
    AccessDeniedError,
    IntegrityError,
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

logger = logging.getLogger(__name__)

# The one table from Cloud Storage errors to pkifed errors. Integer keys are
# the HTTP status of a JSON API error (Cloud Storage documentation, "HTTP
# status and error codes"); string keys are exception class names from
# google-api-core, google-auth, google-resumable-media and requests, matched
# along the exception's class hierarchy. An unlisted 5xx status is temporary.
_ERRORS: dict[int | str, type[ProviderError]] = {
    # ifGenerationMatch did not hold: another writer changed the object.
    412: PreconditionFailedError,
    401: AccessDeniedError,
    403: AccessDeniedError,
    404: ProviderPermanentError,
    408: ProviderTemporaryError,
    429: ProviderTemporaryError,
    # A download whose checksum does not match X-Goog-Hash.
    "DataCorruption": IntegrityError,
    "RetryError": ProviderTemporaryError,
    "DefaultCredentialsError": AccessDeniedError,
    "RefreshError": AccessDeniedError,
    "TransportError": ProviderTemporaryError,
    "Timeout": ProviderTemporaryError,
    "ConnectionError": ProviderTemporaryError,
    "ChunkedEncodingError": ProviderTemporaryError,
}

# Cloud Storage bucket names (documentation, "Bucket naming"): 3 to 222
# lowercase letters, digits, '.', '-' and '_', starting and ending with a
# letter or digit.
_BUCKET = r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$"

T = TypeVar("T")


class GcsTargetSettings(TargetSettings):
    """Settings of a ``gcs`` target."""

    type: Literal["gcs"] = Field(description="Target type: gcs.")
    bucket: str = Field(pattern=_BUCKET, description="Name of the bucket.")
    prefix: str = Field(
        default="",
        description=(
            "Object name prefix that objects are published under, such as "
            "pki/prod; empty publishes at the top of the bucket."
        ),
    )
    project: str = Field(
        min_length=1,
        description="Google Cloud project id that requests are billed to.",
    )
    endpoint: str | None = Field(
        default=None,
        description=(
            "Cloud Storage API endpoint URL. A loopback http:// endpoint (a local "
            "test service) is called with anonymous credentials; any other "
            "endpoint must be https:// and uses the default credentials."
        ),
    )
    timeout: float = Field(
        default=30.0, gt=0, description="Timeout of each request, in seconds."
    )

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        return normalize_prefix(value)

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        return None if value is None else check_endpoint(value)


def error_type_of(error: Exception) -> type[ProviderError] | None:
    """Return the pkifed error type of an SDK exception, or None if not one."""
    code = getattr(error, "code", None)
    if isinstance(code, int) and not isinstance(code, bool):
        if code in _ERRORS:
            return _ERRORS[code]
        if code >= 500:
            return ProviderTemporaryError
        return ProviderPermanentError
    for cls in type(error).__mro__:
        if cls.__name__ in _ERRORS:
            return _ERRORS[cls.__name__]
    return None


class GcsTarget(PublishTarget):
    """Publishes each object to a Cloud Storage bucket with generation checks."""

    type_name: ClassVar[str] = "gcs"
    settings_model: ClassVar[type[TargetSettings]] = GcsTargetSettings

    def __init__(self, name: str, settings: TargetSettings, config_dir: Any) -> None:
        if not isinstance(settings, GcsTargetSettings):
            raise TypeError(f"settings must be GcsTargetSettings, got {settings!r}")
        super().__init__(name, settings, config_dir)
        self.gcs = settings
        self.keys = ObjectKeys(name, settings.prefix)
        self._client_lock = threading.Lock()
        self._storage_client: Any = None

    # --- client and error boundary --------------------------------------------

    def _bucket(self) -> Any:
        with self._client_lock:
            if self._storage_client is None:
                with self._errors("connecting to", self.location("")):
                    self._storage_client = self._new_client()
            return self._storage_client.bucket(self.gcs.bucket)

    def _new_client(self) -> Any:
        # google-cloud-storage ships no type information, so mypy cannot find
        # the module in the google.cloud namespace package.
        from google.cloud import storage  # type: ignore[attr-defined, unused-ignore]

        endpoint = self.gcs.endpoint
        if endpoint is None:
            return storage.Client(project=self.gcs.project)
        credentials = None
        if is_loopback_url(endpoint):
            from google.auth.credentials import AnonymousCredentials

            # A local test service has no identity to check, and default
            # credentials must never be sent to it.
            credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
        return storage.Client(
            project=self.gcs.project,
            credentials=credentials,
            client_options={"api_endpoint": endpoint},
        )

    def _options(self) -> dict[str, Any]:
        # Each publish attempt is retried as a whole (read, conditional write),
        # so the SDK's own retries are off.
        return {"retry": None, "timeout": self.gcs.timeout}

    @contextmanager
    def _errors(self, action: str, location: str) -> Iterator[None]:
        try:
            yield
        except Exception as error:
            error_type = error_type_of(error)
            if error_type is None:
                raise
            detail = getattr(error, "message", None) or str(error)
            code = getattr(error, "code", None) or type(error).__name__
            raise error_type(
                f"target {self.name} (gcs): {action} {location} failed: {code}: "
                f"{detail}"
            ) from error

    def _run(self, action: str, object_name: str, call: Callable[[], T]) -> T:
        with self._errors(action, self.location(object_name)):
            return call()

    # --- PublishTarget --------------------------------------------------------

    def read(self, object_name: str) -> StoredObject | None:
        key = self.keys.key(object_name)
        bucket = self._bucket()
        from google.api_core.exceptions import NotFound

        with self._errors("reading", self.location(object_name)):
            blob = bucket.get_blob(key, **self._options())
            if blob is None:
                return None
            generation = int(blob.generation)
            try:
                data = blob.download_as_bytes(
                    if_generation_match=generation, **self._options()
                )
            except NotFound:
                # Deleted between the metadata request and the download.
                return None
        return StoredObject(bytes(data), str(generation))

    def write(
        self, object_name: str, data: bytes, expected_version: str | None
    ) -> None:
        key = self.keys.key(object_name)
        generation = self._generation(object_name, expected_version)
        blob = self._bucket().blob(key)
        self._run(
            "writing",
            object_name,
            lambda: blob.upload_from_string(
                data,
                content_type=content_type(object_name),
                if_generation_match=generation,
                **self._options(),
            ),
        )
        logger.info("target %s: wrote %s", self.name, self.location(object_name))

    def delete(self, object_name: str, expected_version: str) -> None:
        key = self.keys.key(object_name)
        generation = self._generation(object_name, expected_version)
        blob = self._bucket().blob(key)
        from google.api_core.exceptions import NotFound

        def delete() -> None:
            # NotFound means the object is already gone, which is what was asked.
            with contextlib.suppress(NotFound):
                blob.delete(if_generation_match=generation, **self._options())

        self._run("deleting", object_name, delete)
        logger.info("target %s: deleted %s", self.name, self.location(object_name))

    def list_objects(self) -> list[str]:
        bucket = self._bucket()
        prefix = self.keys.list_prefix
        with self._errors("listing", self.location("")):
            blobs = bucket.client.list_blobs(bucket, prefix=prefix, **self._options())
            keys = [blob.name for blob in blobs]
        return self.keys.names(keys)

    def location(self, object_name: str) -> str:
        return f"gs://{self.gcs.bucket}/{self.keys.list_prefix}{object_name}"

    def close(self) -> None:
        with self._client_lock:
            if self._storage_client is not None:
                self._storage_client.close()
                self._storage_client = None

    def _generation(self, object_name: str, version: str | None) -> int:
        """Return the ifGenerationMatch value: 0 means "must not exist"."""
        if version is None:
            return 0
        if not version.isdigit():
            raise ProviderPermanentError(
                f"target {self.name} (gcs): invalid version {version!r} for "
                f"{self.location(object_name)}; expected an object generation"
            )
        return int(version)
