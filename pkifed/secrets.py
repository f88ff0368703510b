"""Secret references: ``${env:NAME}`` and ``${file:PATH}``.

A configuration file never contains a secret itself, only a reference to where
it lives. :class:`SecretRef` keeps the reference for messages and resolves the
value only when a provider needs it, so ``repr``, ``str`` and serialisation can
never reveal it.
"""

from __future__ import annotations

import os
import re
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
            # A trailing newline is almost always an editor artefact, not part of
            # the secret.
            return _remember(path.read_text(encoding="utf-8").rstrip("\r\n"))
        except OSError as error:
            raise SecretError(
                f"secret {self.reference}: cannot read {path}: {error.strerror}"
            ) from None

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
