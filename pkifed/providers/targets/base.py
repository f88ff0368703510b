"""The publish-target interface shared by files and object stores."""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from pkifed.errors import PermanentError, ProviderError, TemporaryError
from pkifed.providers.retry import RetrySettings, call_with_retry

logger = logging.getLogger(__name__)


class TargetSettings(BaseModel):
    """Settings shared by every target type; each type extends this model."""

    # A secret typed in literally by mistake must not be echoed by pydantic.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    type: str = Field(description="Target type, such as file or s3.")
    retry: RetrySettings = Field(
        default_factory=RetrySettings,
        description="Retries of temporary errors (throttling, 5xx, timeouts).",
    )


@dataclass(frozen=True)
class StoredObject:
    """An object read from a target, with the version its store gave it.

    ``version`` is the store's precondition token (an ETag, a generation, or a
    content hash for plain files) and is passed back on the next write.
    """

    data: bytes
    version: str


class PreconditionFailedError(TemporaryError, ProviderError):
    """Someone else changed the object since it was read; read it again."""


class PublishVerificationError(PermanentError, ProviderError):
    """The object read back after a write differs from what was written."""


class PublishTarget(abc.ABC):
    """A store that receives published objects under names like ``root.pem``."""

    type_name: ClassVar[str]
    settings_model: ClassVar[type[TargetSettings]]

    def __init__(self, name: str, settings: TargetSettings, config_dir: Any) -> None:
        self.name = name
        self.settings = settings
        self.config_dir = config_dir

    @abc.abstractmethod
    def read(self, object_name: str) -> StoredObject | None:
        """Read an object, or return None when it does not exist.

        Raises:
            ProviderError: the store could not be read.
        """

    @abc.abstractmethod
    def write(
        self, object_name: str, data: bytes, expected_version: str | None
    ) -> None:
        """Write an object if its current version is ``expected_version``.

        ``None`` means the object must not exist yet.

        Raises:
            PreconditionFailedError: the object changed since it was read.
            ProviderError: the store rejected or failed the write.
        """

    @abc.abstractmethod
    def delete(self, object_name: str, expected_version: str) -> None:
        """Delete an object if its current version is ``expected_version``.

        Raises:
            PreconditionFailedError: the object changed since it was read.
            ProviderError: the store rejected or failed the delete.
        """

    @abc.abstractmethod
    def list_objects(self) -> list[str]:
        """Names of the objects in this target, sorted.

        Raises:
            ProviderError: the store could not be listed.
        """

    @abc.abstractmethod
    def location(self, object_name: str) -> str:
        """A URL or path that names the object for people and reports."""

    def publish(self, object_name: str, data: bytes) -> bool:
        """Make the object's content equal ``data``; return whether it changed.

        The write is conditional on the version just read, and the object is read
        back and compared afterwards, so a concurrent writer or a store that
        mangles content is detected instead of silently accepted.

        Raises:
            PublishVerificationError: the content read back differs.
            ProviderError: the store failed after the retries.
        """

        def attempt() -> bool:
            current = self.read(object_name)
            if current is not None and current.data == data:
                return False
            expected = None if current is None else current.version
            self.write(object_name, data, expected)
            return True

        changed = call_with_retry(
            attempt,
            self.settings.retry,
            description=f"target {self.name}: publishing {object_name}",
        )
        if changed:
            self.verify(object_name, data)
        return changed

    def verify(self, object_name: str, data: bytes) -> None:
        """Read the object back and raise unless it equals ``data``."""
        stored = self.read(object_name)
        if stored is None or stored.data != data:
            raise PublishVerificationError(
                f"target {self.name}: {self.location(object_name)} does not contain "
                "what was just written; another writer or the store changed it"
            )

    def close(self) -> None:  # noqa: B027 - most targets hold nothing to close.
        """Release connections."""
