"""The exception hierarchy shared by every layer of pkifed.

Every error pkifed raises derives from :class:`PkifedError`. Whether an operation
may be retried is carried by the type: :class:`TemporaryError` (with a suggested
delay) or :class:`PermanentError`. SDK exceptions are translated into these at the
provider boundary and chained with ``raise ... from``, so the CLI can catch the
root once and print one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class PkifedError(Exception):
    """Root of every error pkifed raises on purpose."""


class PermanentError(PkifedError):
    """An error that retrying the same request will not fix."""


class TemporaryError(PkifedError):
    """An error that may go away on retry, such as throttling or a 5xx answer."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Problem:
    """One invalid value in a configuration file, located by its dotted path."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(PermanentError):
    """A configuration file that cannot be used, with every problem found in it."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = [f"{source}: {count} {noun}"]
        lines.extend(f"  {problem}" for problem in self.problems)
        super().__init__("\n".join(lines))


class SecretError(PermanentError):
    """A secret reference that could not be resolved.

    The message names the reference (``${env:NAME}``), never the secret's value.
    """


class ProviderError(PkifedError):
    """Base for errors raised by a key provider or publish target."""


class KeyNotFoundError(PermanentError, ProviderError):
    """The key named by a URI or label does not exist in its provider."""


class KeyUnusableError(PermanentError, ProviderError):
    """The key exists but cannot sign: disabled, pending deletion or destroyed."""


class AccessDeniedError(PermanentError, ProviderError):
    """The provider's credentials lack a permission the operation needs."""


class UnsupportedAlgorithmError(PermanentError, ProviderError):
    """The provider or key cannot perform the requested algorithm or hash."""


class ProviderPermanentError(PermanentError, ProviderError):
    """Any other provider failure that a retry will not fix."""


class ProviderTemporaryError(TemporaryError, ProviderError):
    """A provider failure that may succeed on retry: throttling, 5xx, timeouts."""


class IntegrityError(TemporaryError, ProviderError):
    """A response failed an integrity check (CRC32C, key version) and was discarded.

    It is temporary because the documented remedy is to retry. After the bounded
    retries run out it surfaces to the caller as this type.
    """


class PluginError(PermanentError):
    """A provider or target plugin that is missing, duplicated or fails to load."""


class StateError(PermanentError):
    """The state store is unreachable, corrupt or at an unexpected schema version."""
