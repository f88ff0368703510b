"""Building CA certificates with pyca, to the profile each authority declares."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pkifed.errors import PermanentError
from pkifed.providers.algorithms import (
    PublicKey,
    RsaPadding,
    SignatureScheme,
    algorithm_of_public_key,
)


class IssuanceError(PermanentError):
    """A certificate that must not be issued as requested."""


@dataclass(frozen=True)
class CaProfile:
    """Contents an authority's certificate must have, whenever it is issued."""

    subject: x509.Name
    validity: datetime.timedelta
    path_length: int | None
    name_constraints: x509.NameConstraints | None
    scheme: SignatureScheme
    # The issuer's CRL locations (RFC 5280, section 4.2.1.13); None: no extension.
    crl_distribution_points: x509.CRLDistributionPoints | None = None

    def differences(self, certificate: x509.Certificate) -> list[str]:
        """Describe how ``certificate`` departs from this profile; empty if it matches.

        The issuer's scheme decides the signature, so it is compared by the caller.
        """
        found = []
        if certificate.subject.public_bytes() != self.subject.public_bytes():
            found.append(
                f"subject is {certificate.subject.rfc4514_string()!r}, "
                f"expected {self.subject.rfc4514_string()!r}"
            )
        constraints = _extension(certificate, x509.BasicConstraints)
        if constraints is None or constraints.path_length != self.path_length:
            actual = None if constraints is None else constraints.path_length
            found.append(f"path length is {actual}, expected {self.path_length}")
        if _extension(certificate, x509.NameConstraints) != self.name_constraints:
            found.append("name constraints differ")
        points = _extension(certificate, x509.CRLDistributionPoints)
        if points != self.crl_distribution_points:
            found.append("CRL distribution points differ")
        lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        # The backdate and a parent's earlier expiry both shorten or lengthen the
        # lifetime a little, so only a change of more than a day counts.
        if abs(lifetime - self.validity) > datetime.timedelta(days=1) and not (
            lifetime < self.validity and _capped_by_issuer(certificate)
        ):
            found.append(
                f"validity is {lifetime.days} days, expected {self.validity.days} days"
            )
        return found


def _capped_by_issuer(certificate: x509.Certificate) -> bool:
    # The caller cannot tell here whether the parent's notAfter capped this one,
    # so a shorter lifetime is accepted when the certificate is not self-signed.
    return certificate.issuer != certificate.subject


_Extension = TypeVar("_Extension", bound=x509.ExtensionType)


def _extension(
    certificate: x509.Certificate, kind: type[_Extension]
) -> _Extension | None:
    try:
        return certificate.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def signing_arguments(
    scheme: SignatureScheme,
) -> tuple[hashes.HashAlgorithm | None, padding.PSS | None]:
    """Return the hash and RSA padding pyca's builders take for ``scheme``."""
    if scheme.hash is None:
        return None, None
    hash_algorithm = scheme.hash.algorithm()
    if scheme.padding is RsaPadding.PSS:
        # Salt length equals the digest length (RFC 4055 section 3.1 and
        # RFC 8017 section 9.1), and pyca records it in the certificate.
        return hash_algorithm, padding.PSS(
            mgf=padding.MGF1(hash_algorithm), salt_length=padding.PSS.DIGEST_LENGTH
        )
    return hash_algorithm, None


def subject_key_identifier(certificate: x509.Certificate) -> bytes | None:
    """Return the SKI extension's value, or None when the certificate has none."""
    extension = _extension(certificate, x509.SubjectKeyIdentifier)
    return None if extension is None else extension.digest


@dataclass(frozen=True)
class Issuer:
    """The certificate and signing key of the CA that signs a new certificate."""

    certificate: x509.Certificate
    key: object
    scheme: SignatureScheme


def build_ca_certificate(
    profile: CaProfile,
    public_key: PublicKey,
    *,
    issuer: Issuer | None,
    self_signing_key: object | None = None,
    now: datetime.datetime,
    backdate: datetime.timedelta,
    serial_number: int | None = None,
) -> x509.Certificate:
    """Issue a CA certificate for ``public_key``.

    ``issuer`` is None for a self-signed root, which is then signed with
    ``self_signing_key``. Serials are 159 random bits, positive and at most 20
    octets (RFC 5280 section 4.1.2.2).

    Raises:
        IssuanceError: the issuer has expired, is not a CA, or its hash does
            not match its key.
    """
    not_before = now - backdate
    not_after = now + profile.validity
    if issuer is None:
        issuer_name = profile.subject
        signer = self_signing_key
        scheme = profile.scheme
        authority_key_id = None
    else:
        parent = issuer.certificate
        _require_usable_issuer(parent, now)
        # The issuer name is the parent's subject exactly as encoded there
        # (RFC 5280 section 4.1.2.4), which pyca preserves from the parsed name.
        issuer_name = parent.subject
        not_before = max(not_before, parent.not_valid_before_utc)
        not_after = min(not_after, parent.not_valid_after_utc)
        signer = issuer.key
        scheme = issuer.scheme
        authority_key_id = subject_key_identifier(parent)
        if authority_key_id is None:
            raise IssuanceError(
                f"issuer {parent.subject.rfc4514_string()} has no subject key "
                "identifier to copy into the authority key identifier"
            )

    _require_matching_scheme(signer, scheme)
    builder = (
        x509.CertificateBuilder()
        .subject_name(profile.subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(serial_number or x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=profile.path_length),
            critical=True,
        )
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
    )
    if authority_key_id is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier(authority_key_id, None, None), critical=False
        )
    if profile.name_constraints is not None:
        # RFC 5280 section 4.2.1.10: conforming CAs mark name constraints critical.
        builder = builder.add_extension(profile.name_constraints, critical=True)
    if profile.crl_distribution_points is not None:
        # RFC 5280 section 4.2.1.13: the extension SHOULD be non-critical.
        builder = builder.add_extension(profile.crl_distribution_points, critical=False)

    hash_algorithm, rsa_padding = signing_arguments(scheme)
    return builder.sign(
        signer,  # type: ignore[arg-type]
        hash_algorithm,  # type: ignore[arg-type]
        rsa_padding=rsa_padding,
    )


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _require_usable_issuer(parent: x509.Certificate, now: datetime.datetime) -> None:
    name = parent.subject.rfc4514_string()
    if parent.not_valid_after_utc <= now:
        raise IssuanceError(f"issuer {name} expired at {parent.not_valid_after_utc}")
    constraints = _extension(parent, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise IssuanceError(f"issuer {name} is not a CA certificate")


def _require_matching_scheme(signer: object, scheme: SignatureScheme) -> None:
    public = signer.public_key()  # type: ignore[attr-defined]
    algorithm = algorithm_of_public_key(public)
    if algorithm != scheme.key:
        raise IssuanceError(
            f"signing key is {algorithm}, but the scheme is for {scheme}"
        )
    if isinstance(public, rsa.RSAPublicKey) and scheme.padding is None:
        raise IssuanceError("an RSA signing key needs a padding")


def distribution_points(urls: Iterable[str]) -> x509.CRLDistributionPoints | None:
    """Build one distribution point naming every URL, or None without URLs.

    RFC 5280, section 4.2.1.13: a point whose fullName lists several names
    offers the same CRL at each of them.
    """
    names = [x509.UniformResourceIdentifier(url) for url in urls]
    if not names:
        return None
    return x509.CRLDistributionPoints([x509.DistributionPoint(names, None, None, None)])


def fingerprint_sha256(certificate: x509.Certificate) -> str:
    """Return the SHA-256 fingerprint as lowercase hex with colons."""
    return certificate.fingerprint(hashes.SHA256()).hex(":")


def to_pem(certificate: x509.Certificate) -> bytes:
    """Encode the certificate as PEM."""
    return certificate.public_bytes(serialization.Encoding.PEM)
