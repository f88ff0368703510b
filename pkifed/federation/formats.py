"""Canonical encodings of a trust bundle: PEM, DER, PKCS#7 and SPIFFE JSON.

Every encoding first puts the certificates in canonical order (by subject,
then by SHA-256 fingerprint, duplicates dropped; see
:func:`pkifed.federation.bundles.canonical_order`), so the same set of
certificates always gives the same bytes, whatever order they were given in.
"""

from __future__ import annotations

import base64
import enum
import json
from collections.abc import Iterable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from pkifed.errors import PermanentError
from pkifed.federation.bundles import canonical_order, pem_bundle


class BundleFormat(enum.StrEnum):
    """Encodings a bundle can be published in."""

    PEM = "pem"
    DER = "der"
    PKCS7 = "pkcs7"
    SPIFFE = "spiffe"


class BundleFormatError(PermanentError):
    """The certificates cannot be encoded in the requested bundle format."""


_SUFFIXES = {
    BundleFormat.PEM: ".pem",
    BundleFormat.DER: ".der",
    BundleFormat.PKCS7: ".p7b",
    BundleFormat.SPIFFE: ".json",
}

# JWK "crv" names of the NIST curves (RFC 7518 section 6.2.1.1).
_JWK_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}

# The JWK "use" of X.509 CA certificates in a SPIFFE bundle (SPIFFE X509-SVID
# specification, section 6.1).
SPIFFE_X509_USE = "x509-svid"


def object_suffix(format: BundleFormat | str) -> str:
    """Return the file name suffix of a format, such as ``.p7b`` for pkcs7."""
    return _SUFFIXES[_format(format)]


def encode_bundle(
    certificates: Iterable[x509.Certificate],
    format: BundleFormat | str,
    *,
    sequence: int = 1,
    refresh_hint: int | None = None,
) -> bytes:
    """Encode certificates canonically in ``format``.

    ``sequence`` and ``refresh_hint`` (in seconds) apply to the spiffe format
    only. The SPIFFE Trust Domain and Bundle specification (section 4.1.1)
    requires the sequence to increase whenever the bundle's content changes,
    so the caller must pass a new, larger number with each new set of
    certificates.

    Raises:
        BundleFormatError: der got other than exactly one certificate, pkcs7
            got none, or spiffe got a key type JWK cannot represent.
    """
    chosen = _format(format)
    ordered = canonical_order(certificates)
    if chosen is BundleFormat.PEM:
        return pem_bundle(ordered)
    if chosen is BundleFormat.DER:
        if len(ordered) != 1:
            raise BundleFormatError(
                f"the der format holds exactly one certificate, got {len(ordered)}; "
                "use pem, pkcs7 or spiffe for bundles of several certificates"
            )
        return ordered[0].public_bytes(serialization.Encoding.DER)
    if chosen is BundleFormat.PKCS7:
        if not ordered:
            raise BundleFormatError("the pkcs7 format needs at least one certificate")
        # A degenerate certs-only SignedData (RFC 5652 section 5.1 and RFC 2315
        # section 9.1): no signers, content and certificates only.
        return pkcs7.serialize_certificates(ordered, serialization.Encoding.DER)
    return _spiffe_bundle(ordered, sequence, refresh_hint)


def decode_spiffe_bundle(data: bytes) -> list[x509.Certificate]:
    """Return the X.509 CA certificates of a SPIFFE bundle, in bundle order.

    Follows section 6.2 of the SPIFFE X509-SVID specification: entries whose
    ``use`` is not ``x509-svid`` or that lack ``x5c`` are ignored, and only the
    first certificate of each ``x5c`` counts.

    Raises:
        BundleFormatError: the data is not a JSON object with a keys array.
    """
    try:
        document = json.loads(data)
    except ValueError as error:
        raise BundleFormatError(f"invalid SPIFFE bundle: {error}") from error
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise BundleFormatError("invalid SPIFFE bundle: expected an object with keys")
    certificates = []
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use") != SPIFFE_X509_USE:
            continue
        chain = entry.get("x5c")
        if not isinstance(chain, list) or not chain:
            continue
        der = base64.b64decode(chain[0], validate=True)
        certificates.append(x509.load_der_x509_certificate(der))
    return certificates


def _format(format: BundleFormat | str) -> BundleFormat:
    try:
        return BundleFormat(format)
    except ValueError:
        known = ", ".join(f.value for f in BundleFormat)
        raise BundleFormatError(
            f"unknown bundle format {format!r}; expected one of {known}"
        ) from None


def _spiffe_bundle(
    certificates: list[x509.Certificate], sequence: int, refresh_hint: int | None
) -> bytes:
    if sequence < 0:
        raise BundleFormatError(f"SPIFFE sequence must be 0 or more, got {sequence}")
    document: dict[str, Any] = {
        "keys": [_x509_svid_jwk(c) for c in certificates],
        "spiffe_sequence": sequence,
    }
    if refresh_hint is not None:
        if refresh_hint <= 0:
            raise BundleFormatError(
                f"SPIFFE refresh hint must be a positive number of seconds, got "
                f"{refresh_hint}"
            )
        document["spiffe_refresh_hint"] = refresh_hint
    # Sorted keys and fixed separators make the JSON text canonical.
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return text.encode("ascii")


def _x509_svid_jwk(certificate: x509.Certificate) -> dict[str, Any]:
    """Build one bundle entry: the key's JWK parameters, use and x5c.

    The X509-SVID specification (section 6.1) requires ``use: x509-svid``, an
    ``x5c`` of exactly this one certificate, and no ``kid``. ``x5c`` contains
    standard base64 DER, not base64url (RFC 7517 section 4.7).
    """
    der = certificate.public_bytes(serialization.Encoding.DER)
    entry = _public_jwk(certificate)
    entry["use"] = SPIFFE_X509_USE
    entry["x5c"] = [base64.b64encode(der).decode("ascii")]
    return entry


def _public_jwk(certificate: x509.Certificate) -> dict[str, Any]:
    """Return the JWK parameters of the certificate's public key (RFC 7518 s. 6)."""
    key = certificate.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = _JWK_CURVES.get(key.curve.name)
        if curve is None:
            raise BundleFormatError(f"JWK has no name for the curve {key.curve.name}")
        # Coordinates are the full size of the curve's field, with leading
        # zeros kept (RFC 7518 section 6.2.1.2).
        size = (key.curve.key_size + 7) // 8
        numbers = key.public_numbers()
        return {
            "kty": "EC",
            "crv": curve,
            "x": _b64url(numbers.x.to_bytes(size, "big")),
            "y": _b64url(numbers.y.to_bytes(size, "big")),
        }
    if isinstance(key, rsa.RSAPublicKey):
        numbers_rsa = key.public_numbers()
        return {
            "kty": "RSA",
            "n": _b64url(_unsigned(numbers_rsa.n)),
            "e": _b64url(_unsigned(numbers_rsa.e)),
        }
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        # Octet key pairs of RFC 8037 section 2.
        curve = "Ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else "Ed448"
        raw = key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return {"kty": "OKP", "crv": curve, "x": _b64url(raw)}
    raise BundleFormatError(
        f"a SPIFFE bundle cannot hold a {type(key).__name__} key of "
        f"{certificate.subject.rfc4514_string()}: JWK has no key type for it"
    )


def _unsigned(value: int) -> bytes:
    """Encode as base64urlUInt wants: big-endian, no leading zero octets."""
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
