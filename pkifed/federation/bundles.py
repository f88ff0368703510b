"""Trust bundles and certificate chains, encoded canonically.

Canonical means the same certificates always give the same bytes, whatever the
order of the configuration file, so every target receives identical content
and drift can be detected by comparing bytes.
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization


def _sort_key(certificate: x509.Certificate) -> tuple[str, bytes]:
    return (
        certificate.subject.rfc4514_string(),
        certificate.fingerprint(hashes.SHA256()),
    )


def canonical_order(
    certificates: Iterable[x509.Certificate],
) -> list[x509.Certificate]:
    """Sort certificates by subject, then by fingerprint, dropping duplicates."""
    unique = {c.fingerprint(hashes.SHA256()): c for c in certificates}
    return sorted(unique.values(), key=_sort_key)


def pem_bundle(certificates: Iterable[x509.Certificate]) -> bytes:
    """Concatenate PEM certificates in canonical order (see canonical_order)."""
    ordered = canonical_order(certificates)
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in ordered)


def pem_chain(chain: Iterable[x509.Certificate]) -> bytes:
    """Concatenate PEM certificates in the order given: the CA first, root last."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)


def bundle_object_name(bundle: str) -> str:
    return f"{bundle}.pem"


def certificate_object_name(authority: str) -> str:
    return f"{authority}.pem"


def chain_object_name(authority: str) -> str:
    return f"{authority}-chain.pem"
