"""moto's S3 for tests: the project's local AWS stand-in.

The stand-in, with its proxy that serialises conditional writes and injects
faults, lives in :mod:`pkifed.providers.localservices.aws`.
"""

from __future__ import annotations

from pkifed.providers.localservices.aws import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    MotoS3,
)

__all__ = ["ACCESS_KEY_ID", "REGION", "SECRET_ACCESS_KEY", "MotoS3"]
