"""The inventory: every authority and bundle as the state store records them.

Reading the inventory makes no provider or target calls, so a report works even
when a cloud is unreachable.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass
from typing import Any

from cryptography import x509

from pkifed.config.loader import LoadedConfig
from pkifed.federation import bundles
from pkifed.federation.certificates import (
    fingerprint_sha256,
    subject_key_identifier,
    to_pem,
)
from pkifed.federation.store import Store


@dataclass(frozen=True)
class AuthorityEntry:
    """One authority's row in the inventory; empty strings where nothing exists yet."""

    name: str
    provider: str
    parent: str | None
    key_uri: str
    algorithm: str
    protection_level: str
    subject: str
    issuer: str
    serial: str
    not_before: str
    not_after: str
    days_left: int | None
    fingerprint_sha256: str
    subject_key_identifier: str
    path_length: int | None
    certificate_pem: str


@dataclass(frozen=True)
class TargetEntry:
    name: str
    location: str
    sha256: str
    published_at: str


@dataclass(frozen=True)
class BundleEntry:
    name: str
    authorities: list[str]
    targets: list[TargetEntry]


@dataclass(frozen=True)
class Inventory:
    federation: str
    generated_at: str
    authorities: list[AuthorityEntry]
    bundles: list[BundleEntry]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_inventory(
    config: LoadedConfig, store: Store, now: datetime.datetime
) -> Inventory:
    """Collect the inventory from the configuration and the state store."""
    model = config.model
    authorities = []
    with store.transaction() as session:
        for name, authority in model.authorities.items():
            key = store.current_key(session, name)
            record = store.current_certificate(session, name)
            certificate = (
                x509.load_der_x509_certificate(record.der)
                if record is not None
                else None
            )
            authorities.append(
                _authority_entry(
                    name, authority.provider, authority.parent, key, certificate, now
                )
            )

        bundle_entries = []
        for bundle_name, bundle in model.bundles.items():
            object_name = bundles.bundle_object_name(bundle_name)
            targets = []
            for target in bundle.targets:
                publication = store.publication(session, target, object_name)
                targets.append(
                    TargetEntry(
                        name=target,
                        location=publication.location if publication else "",
                        sha256=publication.sha256 if publication else "",
                        published_at=_iso(publication.published_at)
                        if publication
                        else "",
                    )
                )
            bundle_entries.append(
                BundleEntry(bundle_name, list(bundle.authorities), targets)
            )
    return Inventory(model.name, _iso(now), authorities, bundle_entries)


def _authority_entry(
    name: str,
    provider: str,
    parent: str | None,
    key: Any,
    certificate: x509.Certificate | None,
    now: datetime.datetime,
) -> AuthorityEntry:
    path_length = None
    if certificate is not None:
        constraints = certificate.extensions.get_extension_for_class(
            x509.BasicConstraints
        ).value
        path_length = constraints.path_length
    ski = subject_key_identifier(certificate) if certificate is not None else None
    return AuthorityEntry(
        name=name,
        provider=provider,
        parent=parent,
        key_uri=key.uri if key else "",
        algorithm=key.algorithm if key else "",
        protection_level=key.protection_level if key else "",
        subject=certificate.subject.rfc4514_string() if certificate else "",
        issuer=certificate.issuer.rfc4514_string() if certificate else "",
        serial=format(certificate.serial_number, "x") if certificate else "",
        not_before=_iso(certificate.not_valid_before_utc) if certificate else "",
        not_after=_iso(certificate.not_valid_after_utc) if certificate else "",
        days_left=(certificate.not_valid_after_utc - now).days if certificate else None,
        fingerprint_sha256=fingerprint_sha256(certificate) if certificate else "",
        subject_key_identifier=ski.hex(":") if ski else "",
        path_length=path_length,
        certificate_pem=to_pem(certificate).decode() if certificate else "",
    )
