"""What the federation publishes: every object, on every target, byte for byte.

The reconciler, the inventory and reports all use these functions, so what is
planned, what is published and what is reported as in sync are the same bytes.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7
from sqlalchemy import select
from sqlalchemy.orm import Session

from pkifed.config.schema import FederationConfig
from pkifed.errors import PkifedError, StateError
from pkifed.federation import bundles
from pkifed.federation.certificates import fingerprint_sha256, subject_key_identifier
from pkifed.federation.formats import (
    BundleFormat,
    decode_spiffe_bundle,
    encode_bundle,
    object_suffix,
)
from pkifed.federation.hierarchy import ancestors
from pkifed.federation.store import CertificateRecord, KeyRecord, PublicationRecord


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate from the state store with the fields planning compares."""

    record: CertificateRecord
    certificate: x509.Certificate
    subject_key_id: bytes | None
    authority_key_id: bytes | None

    @property
    def current(self) -> bool:
        return self.record.superseded_at is None

    def valid_at(self, moment: datetime.datetime) -> bool:
        return self.certificate.not_valid_after_utc > moment


@dataclass
class Snapshot:
    """Everything the state store records, read in one transaction."""

    keys: dict[str, KeyRecord] = field(default_factory=dict)
    next_generations: dict[str, int] = field(default_factory=dict)
    history: list[IssuedCertificate] = field(default_factory=list)
    publications: dict[tuple[str, str], PublicationRecord] = field(default_factory=dict)

    def current_certificate(self, authority: str) -> IssuedCertificate | None:
        for issued in reversed(self.history):
            if issued.record.authority == authority and issued.current:
                return issued
        return None

    def known_fingerprints(self) -> set[str]:
        return {issued.record.fingerprint_sha256 for issued in self.history}


def _authority_key_id(certificate: x509.Certificate) -> bytes | None:
    try:
        extension = certificate.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier
        )
    except x509.ExtensionNotFound:
        return None
    return extension.value.key_identifier


def read_snapshot(session: Session) -> Snapshot:
    """Load keys, every certificate ever issued, and publication records."""
    snapshot = Snapshot()
    for key in session.scalars(select(KeyRecord).order_by(KeyRecord.generation)):
        snapshot.next_generations[key.authority] = key.generation + 1
        if key.retired_at is None:
            snapshot.keys[key.authority] = key
    records = session.scalars(select(CertificateRecord).order_by(CertificateRecord.id))
    for record in records:
        certificate = x509.load_der_x509_certificate(record.der)
        snapshot.history.append(
            IssuedCertificate(
                record,
                certificate,
                subject_key_identifier(certificate),
                _authority_key_id(certificate),
            )
        )
    for publication in session.scalars(select(PublicationRecord)):
        location = (publication.target, publication.object_name)
        snapshot.publications[location] = publication
    return snapshot


@dataclass(frozen=True)
class DesiredObject:
    """An object a target must contain: a bundle in its format, or a PEM chain."""

    target: str
    object_name: str
    authorities: tuple[str, ...]
    bundle: str | None = None
    format: BundleFormat = BundleFormat.PEM
    refresh_hint: int | None = None

    @property
    def is_bundle(self) -> bool:
        return self.bundle is not None


def desired_objects(model: FederationConfig) -> list[DesiredObject]:
    """Every object the configuration publishes, bundles first."""
    desired = []
    for bundle_name, bundle in model.bundles.items():
        members = tuple(sorted(set(bundle.authorities)))
        bundle_format = BundleFormat(bundle.format)
        name = bundle_name + object_suffix(bundle_format)
        hint = bundle.refresh_hint
        seconds = int(hint.total_seconds()) if hint is not None else None
        for target in bundle.targets:
            desired.append(
                DesiredObject(
                    target, name, members, bundle_name, bundle_format, seconds
                )
            )
    for name, authority in model.authorities.items():
        chain = (name, *ancestors(model, name))
        for target in authority.publish:
            certificate_name = bundles.certificate_object_name(name)
            chain_name = bundles.chain_object_name(name)
            desired.append(DesiredObject(target, certificate_name, (name,)))
            desired.append(DesiredObject(target, chain_name, chain))
    return desired


def anchors(
    snapshot: Snapshot, authority: str, now: datetime.datetime
) -> list[IssuedCertificate]:
    """Certificates of ``authority`` that a trust bundle must still contain.

    The current certificate always, and an earlier one while it is unexpired
    and some unexpired certificate was issued by its key, so certificates
    issued before a rotation keep a trust anchor until they expire.
    """
    current = snapshot.current_certificate(authority)
    chosen = [] if current is None else [current]
    issuing_keys = {
        issued.authority_key_id
        for issued in snapshot.history
        if issued.valid_at(now) and issued.record.authority != authority
    }
    for issued in snapshot.history:
        if issued.current or issued.record.authority != authority:
            continue
        if current is not None and issued.subject_key_id == current.subject_key_id:
            continue
        if issued.valid_at(now) and issued.subject_key_id in issuing_keys:
            chosen.append(issued)
    return chosen


def spiffe_sequence(
    snapshot: Snapshot, authorities: tuple[str, ...], now: datetime.datetime
) -> int:
    """A SPIFFE bundle sequence that grows whenever the bundle's content can change.

    A bundle changes when one of its authorities gets a certificate or when a
    certificate expires (which can drop an old anchor), so the sequence is the
    latest of those moments in Unix seconds. It is derived from the state
    store alone, so every replica and target computes the same number.
    """
    moments = [
        issued.record.issued_at
        for issued in snapshot.history
        if issued.record.authority in authorities
    ]
    moments += [
        issued.certificate.not_valid_after_utc
        for issued in snapshot.history
        if not issued.valid_at(now)
    ]
    return int(max(moments).timestamp()) if moments else 1


def render(snapshot: Snapshot, desired: DesiredObject, now: datetime.datetime) -> bytes:
    """The exact bytes ``desired`` must contain.

    Raises:
        StateError: a chain member has no certificate yet.
    """
    if desired.is_bundle:
        certificates = [
            issued.certificate
            for authority in desired.authorities
            for issued in anchors(snapshot, authority, now)
        ]
        return encode_bundle(
            certificates,
            desired.format,
            sequence=spiffe_sequence(snapshot, desired.authorities, now),
            refresh_hint=desired.refresh_hint,
        )
    chain = []
    for authority in desired.authorities:
        issued = snapshot.current_certificate(authority)
        if issued is None:
            raise StateError(f"authority {authority} has no certificate yet")
        chain.append(issued.certificate)
    return bundles.pem_chain(chain)


def decode(data: bytes, bundle_format: BundleFormat) -> list[x509.Certificate] | None:
    """The certificates in a published object, or None when it does not parse."""
    try:
        if bundle_format is BundleFormat.PEM:
            return x509.load_pem_x509_certificates(data)
        if bundle_format is BundleFormat.DER:
            return [x509.load_der_x509_certificate(data)]
        if bundle_format is BundleFormat.PKCS7:
            return pkcs7.load_der_pkcs7_certificates(data)
        return decode_spiffe_bundle(data)
    except (ValueError, PkifedError):
        return None


def fingerprints(data: bytes, bundle_format: BundleFormat) -> set[str]:
    """SHA-256 fingerprints of the certificates in a published object."""
    certificates = decode(data, bundle_format) or []
    return {fingerprint_sha256(c) for c in certificates}
