"""moto's KMS for tests: the project's local AWS stand-in.

The stand-in, its corrections of moto and its fault injection live in
:mod:`pkifed.providers.localservices.aws`, which ``pkifed dev up`` runs too.
"""

from __future__ import annotations

from pkifed.providers.localservices.aws import (
    ACCESS_KEY_ID,
    MAX_RAW_MESSAGE,
    SECRET_ACCESS_KEY,
    MotoKms,
    key_id_of,
)

__all__ = [
    "ACCESS_KEY_ID",
    "MAX_RAW_MESSAGE",
    "SECRET_ACCESS_KEY",
    "MotoKms",
    "key_id_of",
]
