"""A publish target that writes files into a local directory."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from pkifed.errors import ProviderPermanentError, ProviderTemporaryError
from pkifed.providers.targets.base import (
    PreconditionFailedError,
    PublishTarget,
    StoredObject,
    TargetSettings,
)

_LOCK_NAME = ".pkifed.lock"


class FileTargetSettings(TargetSettings):
    """A directory on the local file system."""

    type: Literal["file"] = Field(description="Target type: file.")
    path: str = Field(
        min_length=1,
        description="Directory that receives the files; relative to the config file.",
    )
    mode: int = Field(
        default=0o644,
        ge=0,
        le=0o777,
        description=(
            "Permission bits of published files, which hold public data. Write "
            "them in octal, such as 0644 (YAML reads a leading 0 as octal); the "
            "default, 420, is 0644."
        ),
    )


class FileTarget(PublishTarget):
    """Publishes each object as a file, replacing it atomically.

    Versions are SHA-256 hashes of the content. Writers serialise on an advisory
    lock file in the directory, so a conditional write cannot interleave with
    another pkifed process.
    """

    type_name = "file"
    settings_model = FileTargetSettings

    def __init__(self, name: str, settings: TargetSettings, config_dir: Any) -> None:
        super().__init__(name, settings, config_dir)
        if not isinstance(settings, FileTargetSettings):
            raise TypeError(f"settings must be FileTargetSettings, got {settings!r}")
        directory = Path(settings.path).expanduser()
        if not directory.is_absolute() and config_dir is not None:
            directory = Path(config_dir) / directory
        self.directory = directory
        self._mode = settings.mode

    def _path(self, object_name: str) -> Path:
        if "/" in object_name or object_name.startswith("."):
            raise ProviderPermanentError(
                f"target {self.name}: invalid object name {object_name!r}"
            )
        return self.directory / object_name

    def read(self, object_name: str) -> StoredObject | None:
        path = self._path(object_name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise self._error("reading", path, error) from error
        return StoredObject(data, hashlib.sha256(data).hexdigest())

    def write(
        self, object_name: str, data: bytes, expected_version: str | None
    ) -> None:
        path = self._path(object_name)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with self._locked():
                current = self.read(object_name)
                current_version = None if current is None else current.version
                if current_version != expected_version:
                    raise PreconditionFailedError(
                        f"target {self.name}: {path} changed while it was being "
                        "published"
                    )
                self._replace(path, data)
        except OSError as error:
            raise self._error("writing", path, error) from error

    def delete(self, object_name: str, expected_version: str) -> None:
        path = self._path(object_name)
        try:
            with self._locked():
                current = self.read(object_name)
                if current is None:
                    return
                if current.version != expected_version:
                    raise PreconditionFailedError(
                        f"target {self.name}: {path} changed before it could be deleted"
                    )
                path.unlink()
                self._sync_directory()
        except OSError as error:
            raise self._error("deleting", path, error) from error

    def list_objects(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.directory.iterdir()
            if entry.is_file() and not entry.name.startswith(".")
        )

    def location(self, object_name: str) -> str:
        return str(self._path(object_name))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.directory / _LOCK_NAME, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _replace(self, path: Path, data: bytes) -> None:
        # Write a temporary file in the same directory, flush it to disk, then
        # rename it over the old one, so readers see either the old or the new
        # content and never a partial file, even after a crash.
        descriptor, temporary = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, self._mode)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        self._sync_directory()

    def _sync_directory(self) -> None:
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def _error(
        self, action: str, path: Path, error: OSError
    ) -> ProviderPermanentError | ProviderTemporaryError:
        message = f"target {self.name}: {action} {path} failed: {error.strerror}"
        # A full disk or an interrupted call may clear up; permissions will not.
        if error.errno in (errno.ENOSPC, errno.EINTR, errno.EAGAIN):
            return ProviderTemporaryError(message)
        return ProviderPermanentError(message)
