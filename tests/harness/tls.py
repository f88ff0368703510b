"""Throwaway TLS material for tests of local HTTPS services.

Each call makes a new CA whose private key is discarded after it signs one
server certificate for 127.0.0.1, ::1 and localhost, so trusting its bundle
trusts nothing else.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from pkifed.providers.localservices.azure_keyvault import (
    LoopbackTls,
    generate_loopback_tls,
)

__all__ = ["LoopbackTls", "client_context", "loopback_tls"]


def loopback_tls(directory: Path) -> LoopbackTls:
    """Write a CA bundle, a server certificate and its key into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    return generate_loopback_tls(directory)


def client_context(tls: LoopbackTls) -> ssl.SSLContext:
    """Build a client TLS context that trusts only the test CA."""
    context = ssl.create_default_context(cafile=str(tls.ca_bundle))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
