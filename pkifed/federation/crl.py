"""CRLs and revocations: building a CRL with pyca and recording ``pkifed revoke``.

A CRL is signed through the issuer's provider like a certificate. pyca hashes
the to-be-signed list itself and hands the provider a digest, so a CRL of any
size is signed the same way on every provider.

Timing rules, per issuer (RFC 5280, section 5.1.2.4 and 5.1.2.5):

- thisUpdate is the signing time, but never earlier than the previous CRL's
  thisUpdate or the latest revocation date it lists. When the clock steps
  back, the CRL keeps the previous thisUpdate, so a client that orders CRLs by
  thisUpdate never takes the new one for an older one. The CRL number still
  increases.
- nextUpdate is thisUpdate plus the configured validity, but never later than
  the issuer certificate's notAfter.
- A CRL is signed again once two thirds of the time from thisUpdate to
  nextUpdate have passed, and at once when a revocation is recorded.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.orm import Session

from pkifed.config.schema import FederationConfig
from pkifed.errors import PermanentError
from pkifed.federation.certificates import (
    IssuanceError,
    signing_arguments,
    subject_key_identifier,
)
from pkifed.federation.hierarchy import descendants
from pkifed.federation.store import (
    CertificateRecord,
    CrlRecord,
    RevocationRecord,
    Store,
)
from pkifed.providers.algorithms import SignatureScheme

# RFC 5280 reason codes (section 5.3.1) that ``pkifed revoke`` accepts. A
# revocation here is permanent and followed by a replacement, so
# certificateHold and removeFromCRL (which undo or suspend it) are not offered,
# and aACompromise applies to attribute authorities only.
REASONS: dict[str, x509.ReasonFlags] = {
    flag.value: flag
    for flag in (
        x509.ReasonFlags.unspecified,
        x509.ReasonFlags.key_compromise,
        x509.ReasonFlags.ca_compromise,
        x509.ReasonFlags.affiliation_changed,
        x509.ReasonFlags.superseded,
        x509.ReasonFlags.cessation_of_operation,
        x509.ReasonFlags.privilege_withdrawn,
    )
}

# Fraction of a CRL's lifetime after which it is signed again.
RESIGN_FRACTION = 2 / 3

# Values of a CRL's state, as the inventory reports it.
CURRENT = "current"
STALE = "stale"
EXPIRED = "expired"


class RevocationError(PermanentError):
    """A revocation that cannot be recorded as requested."""


@dataclass(frozen=True)
class RevokedSerial:
    """One entry of a CRL: a serial number, when and why it was revoked."""

    serial: int
    revoked_at: datetime.datetime
    reason: x509.ReasonFlags


def crl_state(
    this_update: datetime.datetime,
    next_update: datetime.datetime,
    now: datetime.datetime,
) -> str:
    """Classify a CRL as current, stale (two thirds passed) or expired."""
    if next_update <= now:
        return EXPIRED
    if now >= resign_time(this_update, next_update):
        return STALE
    return CURRENT


def resign_time(
    this_update: datetime.datetime, next_update: datetime.datetime
) -> datetime.datetime:
    """Return the moment two thirds of a CRL's lifetime have passed."""
    return this_update + (next_update - this_update) * RESIGN_FRACTION


def crl_times(
    now: datetime.datetime,
    validity: datetime.timedelta,
    issuer_not_after: datetime.datetime,
    *,
    previous_this_update: datetime.datetime | None,
    latest_revocation: datetime.datetime | None,
) -> tuple[datetime.datetime, datetime.datetime]:
    """Return thisUpdate and nextUpdate of a new CRL, by the module's rules.

    Raises:
        IssuanceError: the issuer's certificate expires before thisUpdate.
    """
    this_update = max(
        moment
        for moment in (now, previous_this_update, latest_revocation)
        if moment is not None
    )
    next_update = min(this_update + validity, issuer_not_after)
    if next_update <= this_update:
        raise IssuanceError(
            f"the issuer's certificate expired at {_iso(issuer_not_after)}, before "
            f"the CRL's thisUpdate {_iso(this_update)}; renew the issuer first"
        )
    return this_update, next_update


def revoked_entry(entry: RevokedSerial) -> x509.RevokedCertificate:
    """Build one CRL entry, with a reason code unless it is unspecified.

    RFC 5280, section 5.3.1: the reason code extension should be absent
    instead of carrying unspecified.
    """
    builder = (
        x509.RevokedCertificateBuilder()
        .serial_number(entry.serial)
        .revocation_date(entry.revoked_at)
    )
    if entry.reason is not x509.ReasonFlags.unspecified:
        builder = builder.add_extension(x509.CRLReason(entry.reason), critical=False)
    return builder.build()


def build_crl(
    issuer: x509.Certificate,
    signer: object,
    scheme: SignatureScheme,
    *,
    number: int,
    this_update: datetime.datetime,
    next_update: datetime.datetime,
    revoked: Sequence[x509.RevokedCertificate],
) -> x509.CertificateRevocationList:
    """Sign a CRL of ``revoked`` for ``issuer`` with ``signer``, and verify it.

    The CRL carries the CRL number (RFC 5280, section 5.2.3) and the authority
    key identifier equal to the issuer's subject key identifier (section
    5.2.1), both non-critical.

    Raises:
        IssuanceError: the issuer has no subject key identifier, or the
            signature does not verify with the issuer certificate's key.
    """
    key_identifier = subject_key_identifier(issuer)
    if key_identifier is None:
        raise IssuanceError(
            f"issuer {issuer.subject.rfc4514_string()} has no subject key "
            "identifier to copy into the CRL's authority key identifier"
        )
    # The entries go to the constructor in one list: adding them one by one
    # copies the list each time, which is quadratic for large CRLs.
    builder = (
        x509.CertificateRevocationListBuilder(revoked_certificates=list(revoked))
        .issuer_name(issuer.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier(key_identifier, None, None), critical=False
        )
    )
    hash_algorithm, rsa_padding = signing_arguments(scheme)
    crl = builder.sign(
        signer,  # type: ignore[arg-type]
        hash_algorithm,  # type: ignore[arg-type]
        rsa_padding=rsa_padding,
    )
    if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
        raise IssuanceError(
            f"the CRL signed for {issuer.subject.rfc4514_string()} does not verify "
            "with the issuer certificate's public key; the provider's key is not "
            "the one the certificate certifies. Nothing was recorded or published"
        )
    return crl


def crl_number(crl: x509.CertificateRevocationList) -> int | None:
    """Return the CRL number extension's value, or None when the CRL has none."""
    try:
        extension = crl.extensions.get_extension_for_class(x509.CRLNumber)
    except x509.ExtensionNotFound:
        return None
    return extension.value.crl_number


def to_pem(crl: x509.CertificateRevocationList) -> bytes:
    """Encode the CRL as PEM."""
    return crl.public_bytes(serialization.Encoding.PEM)


def listed_revocations(
    revocations: Iterable[RevocationRecord],
    not_after: dict[str, datetime.datetime],
    previous_this_update: datetime.datetime | None,
) -> list[RevokedSerial]:
    """Entries an issuer's next CRL must list, sorted by serial.

    An entry stays until one CRL issued after the certificate expired has
    listed it (RFC 5280, section 3.3), so it is dropped only once the previous
    CRL's thisUpdate is past the certificate's notAfter. ``not_after`` maps
    hex serials to the certificates' notAfter.
    """
    entries = []
    for record in revocations:
        expiry = not_after.get(record.serial)
        dropped = (
            expiry is not None
            and previous_this_update is not None
            and expiry < previous_this_update
        )
        if not dropped:
            entries.append(
                RevokedSerial(
                    int(record.serial, 16), record.revoked_at, REASONS[record.reason]
                )
            )
    return sorted(entries, key=lambda entry: entry.serial)


# --- revocation -------------------------------------------------------------------


@dataclass(frozen=True)
class RevocationImpact:
    """The changes that revoking an authority's current certificate makes."""

    authority: str
    serial: str
    issuer: str
    not_after: datetime.datetime
    descendants: tuple[str, ...]
    issuer_publishes_crl: bool
    adopted_key: bool
    previous: RevocationRecord | None

    def describe(self) -> list[str]:
        """Lines for a person to read before confirming the revocation."""
        lines = [
            f"authority: {self.authority}",
            f"certificate serial: {self.serial} (valid until {_iso(self.not_after)})",
            f"listed on the CRL of: {self.issuer}",
        ]
        if not self.issuer_publishes_crl:
            lines.append(
                f"warning: {self.issuer} has no crl: section, so no CRL lists the "
                "revocation; relying parties only see the certificate leave the "
                "bundles and chains"
            )
        if self.adopted_key:
            lines.append(
                f"warning: {self.authority}'s key is adopted, and a revoked key is "
                "never certified again; configure a new key to adopt before apply"
            )
        else:
            lines.append(
                f"replacement: the next apply creates a new key for {self.authority} "
                "and issues a new certificate for it"
            )
        replaced = ", ".join(self.descendants) or "none"
        lines.append(f"descendants re-issued because their chains break: {replaced}")
        return lines


def revocation_impact(
    model: FederationConfig, store: Store, session: Session, authority: str
) -> RevocationImpact:
    """Describe what revoking ``authority``'s current certificate does.

    Raises:
        RevocationError: the authority is unknown, is a root, or has no
            certificate.
    """
    config = model.authorities.get(authority)
    if config is None:
        known = ", ".join(sorted(model.authorities))
        raise RevocationError(f"unknown authority {authority!r} (known: {known})")
    if config.parent is None:
        raise RevocationError(
            f"authority {authority} is a root: no issuer above it signs a CRL that "
            "could list it. Rotate it instead: give it a new key in the "
            "configuration and run pkifed apply"
        )
    record = store.current_certificate(session, authority)
    if record is None:
        raise RevocationError(
            f"authority {authority} has no certificate to revoke; nothing was issued "
            "for it yet"
        )
    previous = session.scalars(
        select(RevocationRecord).where(RevocationRecord.serial == record.serial)
    ).first()
    key = store.current_key(session, authority)
    return RevocationImpact(
        authority=authority,
        serial=record.serial,
        issuer=config.parent,
        not_after=record.not_after,
        descendants=tuple(descendants(model, authority)),
        issuer_publishes_crl=model.authorities[config.parent].crl is not None,
        adopted_key=key is not None and key.adopted,
        previous=previous,
    )


def record_revocation(
    store: Store,
    session: Session,
    impact: RevocationImpact,
    reason: str,
    now: datetime.datetime,
) -> RevocationRecord:
    """Record the revocation of ``impact``'s certificate, once.

    Raises:
        RevocationError: ``reason`` is not one of :data:`REASONS`.
    """
    if reason not in REASONS:
        raise RevocationError(
            f"unknown revocation reason {reason!r} (known: {', '.join(REASONS)})"
        )
    if impact.previous is not None:
        return impact.previous
    record = RevocationRecord(
        authority=impact.authority,
        serial=impact.serial,
        issuer=impact.issuer,
        reason=reason,
        revoked_at=now.replace(microsecond=0),
    )
    session.add(record)
    store.record_event(
        session,
        at=now,
        kind="revoke",
        subject=f"authority {impact.authority}",
        outcome="done",
        message=f"certificate {impact.serial} revoked ({reason})",
    )
    return record


def latest_crl(session: Session, issuer: str) -> CrlRecord | None:
    """Return the issuer's CRL with the highest number."""
    query = (
        select(CrlRecord)
        .where(CrlRecord.issuer == issuer)
        .order_by(CrlRecord.number.desc())
    )
    return session.scalars(query).first()


def certificate_expiries(
    session: Session, serials: Iterable[str]
) -> dict[str, datetime.datetime]:
    """Map hex serials to their certificates' notAfter."""
    requested = list(serials)
    if not requested:
        return {}
    query = select(CertificateRecord.serial, CertificateRecord.not_after).where(
        CertificateRecord.serial.in_(requested)
    )
    return {serial: not_after for serial, not_after in session.execute(query)}


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
