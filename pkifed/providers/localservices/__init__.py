"""Local stand-ins for cloud key services and object stores.

They let tests and ``pkifed dev up`` run pkifed without a cloud account. Each
one speaks the service's wire protocol closely enough that the real SDK client
talks to it unchanged, and enforces the service's documented rules. They listen
on loopback addresses only.

The AWS stand-ins wrap moto and the Azure Blob one runs Azurite, neither of
which pkifed itself needs. They are imported only inside the modules that use
them, and a missing one raises :class:`LocalServiceError` saying what to install.
"""

from __future__ import annotations

from pkifed.errors import PermanentError

# The install command for every local stand-in's dependencies.
DEV_EXTRA_HINT = (
    "install the dev extra: pip install 'pkifed[dev]', or from a checkout run "
    "PKIFED_EXTRAS=dev bash scripts/setup.sh"
)


class LocalServiceError(PermanentError):
    """A local stand-in that cannot start: a dependency is missing or it failed."""
