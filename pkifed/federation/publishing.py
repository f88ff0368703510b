"""Published objects: every object the federation writes, byte for byte.

The reconciler, the inventory and reports all use these functions, so what is
planned, what is published and what is reported as in sync are the same bytes.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pkifed.config.schema import FederationConfig
from pkifed.errors import PkifedError, StateError
from pkifed.federation import bundles, crl
from pkifed.federation.certificates import fingerprint_sha256, subject_key_identifier
from pkifed.federation.formats import (
    BundleFormat,
    decode_spiffe_bundle,
    encode_bundle,
    object_suffix,
)
from pkifed.federation.hierarchy import ancestors
from pkifed.federation.store import (
    CertificateRecord,
    CrlRecord,
    KeyRecord,
    PublicationRecord,
    RevocationRecord,
)


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
    # The CRL with the highest number, per issuer.
    crls: dict[str, CrlRecord] = field(default_factory=dict)
    revocations: dict[str, RevocationRecord] = field(default_factory=dict)
    _current: dict[str, IssuedCertificate] | None = field(default=None, repr=False)
    _indexed: int = field(default=0, repr=False)

    def current_certificate(self, authority: str) -> IssuedCertificate | None:
        # Planning looks up every authority and object, so the newest current
        # certificate per authority is indexed once instead of scanned for.
        if self._current is None or self._indexed != len(self.history):
            current: dict[str, IssuedCertificate] = {}
            for issued in self.history:
                if issued.current:
                    current[issued.record.authority] = issued
            self._current = current
            self._indexed = len(self.history)
        return self._current.get(authority)

    def known_fingerprints(self) -> set[str]:
        return {issued.record.fingerprint_sha256 for issued in self.history}

    def revocation(self, issued: IssuedCertificate) -> RevocationRecord | None:
        """Return the revocation of ``issued``, or None when it is not revoked."""
        return self.revocations.get(issued.record.serial)

    def revoked_current(self, authority: str) -> RevocationRecord | None:
        """Return the revocation of the authority's current certificate, if any.

        Such an authority waits for its replacement: its certificate leaves
        every bundle and chain, and the next certificate certifies a new key.
        """
        current = self.current_certificate(authority)
        return None if current is None else self.revocation(current)

    def revoked_key_ids(self) -> set[bytes]:
        """Collect the subject key identifiers of keys with a revoked certificate.

        A revoked key may be compromised, so no certificate for it stays a
        trust anchor, even one issued before the revocation.
        """
        return {
            issued.subject_key_id
            for issued in self.history
            if issued.subject_key_id is not None and self.revocation(issued)
        }


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
    for revocation in session.scalars(select(RevocationRecord)):
        snapshot.revocations[revocation.serial] = revocation
    # Only the newest CRL of each issuer is loaded, because older ones are
    # never published again and large CRLs add up.
    newest = (
        select(CrlRecord.issuer, func.max(CrlRecord.number).label("number"))
        .group_by(CrlRecord.issuer)
        .subquery()
    )
    query = select(CrlRecord).join(
        newest,
        (CrlRecord.issuer == newest.c.issuer) & (CrlRecord.number == newest.c.number),
    )
    for signed in session.scalars(query):
        snapshot.crls[signed.issuer] = signed
    return snapshot


@dataclass(frozen=True)
class DesiredObject:
    """An object a target must contain: a bundle in its format, a PEM chain or a CRL.

    A CRL object has ``crl_encoding`` ``der`` or ``pem`` and names its issuer
    as the only authority.
    """

    target: str
    object_name: str
    authorities: tuple[str, ...]
    bundle: str | None = None
    format: BundleFormat = BundleFormat.PEM
    refresh_hint: int | None = None
    crl_encoding: str | None = None
    cross: bool = False

    @property
    def is_bundle(self) -> bool:
        return self.bundle is not None

    @property
    def is_crl(self) -> bool:
        return self.crl_encoding is not None


def desired_objects(model: FederationConfig) -> list[DesiredObject]:
    """List every object the configuration publishes, bundles first."""
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
            if authority.cross_sign and authority.parent is None:
                cross_name = cross_object_name(name)
                desired.append(DesiredObject(target, cross_name, (name,), cross=True))
    for name, authority in model.authorities.items():
        if authority.crl is None:
            continue
        encodings = ("der", "pem") if authority.crl.pem else ("der",)
        for target in authority.crl.targets:
            for encoding in encodings:
                desired.append(
                    DesiredObject(
                        target,
                        crl_object_name(name, encoding),
                        (name,),
                        crl_encoding=encoding,
                    )
                )
    return desired


def cross_object_name(authority: str) -> str:
    """``<root>-cross.pem``: the root's current key certified by earlier keys."""
    return f"{authority}-cross.pem"


def cross_label(authority: str) -> str:
    """Return the state store's authority label of a root's cross certificates."""
    return f"{authority}:cross"


def cross_certificates(
    snapshot: Snapshot, authority: str, now: datetime.datetime
) -> list[IssuedCertificate]:
    """Unexpired cross certificates of the root's current key, oldest first."""
    current = snapshot.current_certificate(authority)
    if current is None:
        return []
    return [
        issued
        for issued in snapshot.history
        if issued.record.authority == cross_label(authority)
        and issued.subject_key_id == current.subject_key_id
        and issued.valid_at(now)
    ]


def crl_object_name(authority: str, encoding: str) -> str:
    """``<authority>.crl`` for DER, ``<authority>.crl.pem`` for PEM."""
    return f"{authority}.crl" if encoding == "der" else f"{authority}.crl.pem"


def anchors(
    snapshot: Snapshot, authority: str, now: datetime.datetime
) -> list[IssuedCertificate]:
    """Certificates of ``authority`` that a trust bundle must still contain.

    The current certificate always, and an earlier one while it is unexpired
    and some unexpired certificate was issued by its key, so certificates
    issued before a rotation keep a trust anchor until they expire. No
    certificate of a key with a revoked certificate is ever an anchor.
    """
    revoked_keys = snapshot.revoked_key_ids()
    current = snapshot.current_certificate(authority)
    chosen = []
    if current is not None and current.subject_key_id not in revoked_keys:
        chosen.append(current)
    issuing_keys = {
        issued.authority_key_id
        for issued in snapshot.history
        if issued.valid_at(now)
        and issued.record.authority != authority
        and snapshot.revocation(issued) is None
    }
    for issued in snapshot.history:
        if issued.current or issued.record.authority != authority:
            continue
        if current is not None and issued.subject_key_id == current.subject_key_id:
            continue
        if issued.subject_key_id in revoked_keys:
            continue
        if issued.valid_at(now) and issued.subject_key_id in issuing_keys:
            chosen.append(issued)
    return chosen


def spiffe_sequence(
    snapshot: Snapshot, authorities: tuple[str, ...], now: datetime.datetime
) -> int:
    """Compute a SPIFFE bundle sequence that grows whenever the content can change.

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
    moments += [
        revocation.revoked_at
        for revocation in snapshot.revocations.values()
        if revocation.authority in authorities
    ]
    return int(max(moments).timestamp()) if moments else 1


def render(snapshot: Snapshot, desired: DesiredObject, now: datetime.datetime) -> bytes:
    """The exact bytes ``desired`` must contain.

    Raises:
        StateError: a chain member has no certificate yet or its certificate
            is revoked, or a CRL's issuer has not signed one yet.
    """
    if desired.is_crl:
        return _render_crl(snapshot, desired)
    if desired.cross:
        crosses = cross_certificates(snapshot, desired.authorities[0], now)
        if not crosses:
            raise StateError(
                f"authority {desired.authorities[0]} has no cross certificate yet"
            )
        return bundles.pem_chain(issued.certificate for issued in crosses)
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
        if snapshot.revocation(issued) is not None:
            raise StateError(
                f"the certificate of authority {authority} is revoked and not "
                "replaced yet"
            )
        chain.append(issued.certificate)
    return bundles.pem_chain(chain)


def _render_crl(snapshot: Snapshot, desired: DesiredObject) -> bytes:
    issuer = desired.authorities[0]
    record = snapshot.crls.get(issuer)
    if record is None:
        raise StateError(f"authority {issuer} has not signed a CRL yet")
    if desired.crl_encoding == "der":
        return record.der
    return crl.to_pem(x509.load_der_x509_crl(record.der))


def decode(data: bytes, bundle_format: BundleFormat) -> list[x509.Certificate] | None:
    """Decode the certificates in a published object; None when it does not parse."""
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
