"""Azurite for tests: the project's local Azure Blob stand-in.

The launcher and its proxy live in :mod:`pkifed.providers.localservices.azurite`.
Tests use the development account, whose key is public.
"""

from __future__ import annotations

from pkifed.providers.localservices.azurite import (
    ACCOUNT_KEY,
    ACCOUNT_NAME,
    AZURITE_VERSION,
    Azurite,
    azurite_command,
)

__all__ = [
    "ACCOUNT_KEY",
    "ACCOUNT_NAME",
    "AZURITE_VERSION",
    "Azurite",
    "azurite_command",
]
