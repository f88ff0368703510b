"""Secret references: ``${env:NAME}`` and ``${file:PATH}``.

A configuration file never contains a secret itself, only a reference to where
it lives. :class:`SecretRef` keeps the reference for messages and resolves the
value only when a provider needs it, so ``repr``, ``str`` and serialisation can
never reveal it.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from pathlib import Path
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import PydanticCustomError, core_schema

from pkifed.errors import SecretError

# The pydantic error type of an invalid reference, whose input is never shown.
SECRET_ERROR_TYPE = "secret_reference"  # noqa: S105 - an error type, not a secret.

_REFERENCE = re.compile(r"^\$\{(?P<kind>env|file):(?P<target>[^}]+)\}$")

# Every value resolved in this process, so logs and messages can be scrubbed of
# them as a second line of defence behind code that never formats a secret.
_resolved: set[str] = set()
_resolved_lock = threading.Lock()

# Values this short would scrub ordinary words from messages.
_MIN_REDACTED_LENGTH = 4

# A file named by ${file:PATH} contains one PIN, token, key, URL or name. A
# larger file is almost certainly the wrong file, such as a certificate given
# where its path was expected.
MAX_REFERENCED_FILE = 64 * 1024


def redact(text: str) -> str:
    """Replace every secret resolved so far in ``text`` with ``***``."""
    with _resolved_lock:
        values = sorted(_resolved, key=len, reverse=True)
    for value in values:
        text = text.replace(value, "***")
    return text


def _remember(value: str) -> str:
    if len(value) >= _MIN_REDACTED_LENGTH:
        with _resolved_lock:
            _resolved.add(value)
    return value


def parse_reference(text: str) -> tuple[str, str] | None:
    """Split ``${env:NAME}`` or ``${file:PATH}`` into its kind and target.

    Returns None when ``text`` as a whole is not such a reference.
    """
    match = _REFERENCE.match(text.strip())
    if match is None:
        return None
    return match["kind"], match["target"]


def read_referenced_file(path: Path) -> str:
    """Read the text of a file named by ``${file:PATH}``, without trailing line breaks.

    Only a regular file is read, and at most MAX_REFERENCED_FILE bytes of it,
    so a FIFO, a device such as /dev/zero or a directory fails at once instead
    of blocking or filling memory.

    Raises:
        ValueError: the file cannot be opened, is not a regular file, is larger
            than MAX_REFERENCED_FILE bytes or is not UTF-8 text. The message
            names the path and never the content.
    """
    try:
        # O_NONBLOCK keeps open() from waiting for a writer when path is a FIFO.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise ValueError(f"{path} is {_file_kind(mode)}, not a regular file")
    with os.fdopen(descriptor, "rb") as stream:
        try:
            data = stream.read(MAX_REFERENCED_FILE + 1)
        except OSError as error:
            raise ValueError(f"cannot read {path}: {error.strerror}") from None
    if len(data) > MAX_REFERENCED_FILE:
        raise ValueError(
            f"{path} is larger than {MAX_REFERENCED_FILE} bytes; a referenced file "
            "must contain only the value"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    # A trailing newline is almost always an editor artefact, not part of the
    # value.
    return text.rstrip("\r\n")


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


class SecretRef:
    """A reference to a secret held in an environment variable or a file."""

    __slots__ = ("_base_dir", "kind", "target")

    def __init__(self, reference: str, base_dir: Path | None = None) -> None:
        match = _REFERENCE.match(reference.strip())
        if match is None:
            # The value may itself be a secret typed in by mistake, so the message
            # never repeats it, and the loader shows no input for this error type.
            raise PydanticCustomError(
                SECRET_ERROR_TYPE,
                "must be a secret reference such as ${env:NAME} or ${file:PATH}; "
                "literal secrets are not accepted in configuration files",
            )
        self.kind = match["kind"]
        self.target = match["target"]
        self._base_dir = base_dir

    @property
    def reference(self) -> str:
        """The reference as written, safe to show in messages."""
        return f"${{{self.kind}:{self.target}}}"

    def resolve(self) -> str:
        """Read the secret's value.

        Raises:
            SecretError: the variable is unset or the file cannot be read.
        """
        if self.kind == "env":
            value = os.environ.get(self.target)
            if value is None:
                raise SecretError(
                    f"secret {self.reference}: environment variable "
                    f"{self.target} is not set"
                )
            return _remember(value)

        path = Path(self.target).expanduser()
        if not path.is_absolute() and self._base_dir is not None:
            path = self._base_dir / path
        try:
            return _remember(read_referenced_file(path))
        except ValueError as error:
            raise SecretError(f"secret {self.reference}: {error}") from None

    def check(self) -> str | None:
        """Return why the reference cannot be used, or None when it can."""
        try:
            value = self.resolve()
        except SecretError as error:
            return str(error)
        if not value:
            return f"secret {self.reference} is empty"
        return None

    def __repr__(self) -> str:
        return f"SecretRef({self.reference!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretRef) and other.reference == self.reference

    def __hash__(self) -> int:
        return hash(self.reference)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def validate(value: Any, info: core_schema.ValidationInfo) -> SecretRef:
            if isinstance(value, SecretRef):
                return value
            if not isinstance(value, str):
                raise PydanticCustomError(
                    SECRET_ERROR_TYPE, "must be a string such as ${env:NAME}"
                )
            context = info.context or {}
            return SecretRef(value, context.get("base_dir"))

        return core_schema.with_info_plain_validator_function(
            validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda ref: ref.reference
            ),
        )
