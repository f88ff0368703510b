"""Observation: what the state store records and what providers and targets hold.

Provider and target reads run concurrently, bounded by ``reconcile.concurrency``,
so a pass over many remote objects waits roughly for the slowest call rather
than for the sum of all of them. Each managed object is read at most once.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cryptography import x509
from sqlalchemy import select
from sqlalchemy.orm import Session

from pkifed.errors import PkifedError
from pkifed.federation.certificates import subject_key_identifier
from pkifed.federation.store import (
    CertificateRecord,
    KeyRecord,
    PublicationRecord,
)
from pkifed.providers.base import KeyInfo
from pkifed.providers.targets.base import StoredObject

T = TypeVar("T")


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


def _authority_key_id(certificate: x509.Certificate) -> bytes | None:
    try:
        extension = certificate.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier
        )
    except x509.ExtensionNotFound:
        return None
    return extension.value.key_identifier


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


def read_snapshot(session: Session) -> Snapshot:
    """Load keys, every certificate ever issued, and publication records."""
    snapshot = Snapshot()
    for key in session.scalars(select(KeyRecord).order_by(KeyRecord.generation)):
        snapshot.next_generations[key.authority] = key.generation + 1
        if key.retired_at is None:
            snapshot.keys[key.authority] = key
    for record in session.scalars(
        select(CertificateRecord).order_by(CertificateRecord.id)
    ):
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
        snapshot.publications[(publication.target, publication.object_name)] = (
            publication
        )
    return snapshot


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """The result of one observation: a value, or the error that prevented it."""

    value: T | None = None
    error: PkifedError | None = None


def run_bounded(
    calls: dict[str, Callable[[], T | None]], concurrency: int
) -> dict[str, Outcome[T]]:
    """Run independent calls on at most ``concurrency`` threads.

    pkifed errors are captured per call, so one failing provider or target
    never hides the results of the others.
    """

    def guarded(call: Callable[[], T | None]) -> Outcome[T]:
        try:
            return Outcome(value=call())
        except PkifedError as error:
            return Outcome(error=error)

    if not calls:
        return {}
    workers = max(1, min(concurrency, len(calls)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="observe") as pool:
        futures = {name: pool.submit(guarded, call) for name, call in calls.items()}
        return {name: future.result() for name, future in futures.items()}


KeyOutcome = Outcome[KeyInfo]
ObjectOutcome = Outcome[StoredObject]
