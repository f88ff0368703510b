"""The state store: keys, certificates, publications and events, in SQLAlchemy.

SQLite is the default and PostgreSQL is supported. Times are stored as ISO-8601
strings in UTC (``2026-01-31T12:00:00Z``), which sort correctly as text and read
the same in every database.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from pkifed.errors import StateError

SCHEMA_VERSION = 1


class UtcTimestamp(TypeDecorator[datetime.datetime]):
    """A timezone-aware UTC datetime stored as an ISO-8601 string."""

    impl = String(20)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, datetime.datetime) or value.tzinfo is None:
            raise ValueError(f"expected a timezone-aware datetime, got {value!r}")
        return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def process_result_value(
        self, value: Any, dialect: Any
    ) -> datetime.datetime | None:
        if value is None:
            return None
        parsed = datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
        return parsed.replace(tzinfo=datetime.UTC)


class Base(DeclarativeBase):
    pass


class SchemaInfo(Base):
    __tablename__ = "schema_info"

    version: Mapped[int] = mapped_column(Integer, primary_key=True)


class KeyRecord(Base):
    """A key the federation created or adopted for an authority."""

    __tablename__ = "keys"
    __table_args__ = (UniqueConstraint("authority", "generation"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    authority: Mapped[str] = mapped_column(String(64), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    provider: Mapped[str] = mapped_column(String(64))
    key_name: Mapped[str] = mapped_column(String(128))
    uri: Mapped[str] = mapped_column(Text)
    algorithm: Mapped[str] = mapped_column(String(16))
    protection_level: Mapped[str] = mapped_column(String(16))
    adopted: Mapped[bool]
    public_key_der: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime.datetime] = mapped_column(UtcTimestamp)
    retired_at: Mapped[datetime.datetime | None] = mapped_column(UtcTimestamp)


class CertificateRecord(Base):
    """A certificate the federation issued; the newest per authority is current."""

    __tablename__ = "certificates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    authority: Mapped[str] = mapped_column(String(64), index=True)
    # Hex of the serial number, unique so a serial is never issued twice.
    serial: Mapped[str] = mapped_column(String(42), unique=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("keys.id"))
    issuer_serial: Mapped[str | None] = mapped_column(String(42))
    der: Mapped[bytes] = mapped_column(LargeBinary)
    fingerprint_sha256: Mapped[str] = mapped_column(String(95))
    not_before: Mapped[datetime.datetime] = mapped_column(UtcTimestamp)
    not_after: Mapped[datetime.datetime] = mapped_column(UtcTimestamp)
    issued_at: Mapped[datetime.datetime] = mapped_column(UtcTimestamp)
    superseded_at: Mapped[datetime.datetime | None] = mapped_column(UtcTimestamp)


class PublicationRecord(Base):
    """The content last published to one object of one target."""

    __tablename__ = "publications"
    __table_args__ = (UniqueConstraint("target", "object_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target: Mapped[str] = mapped_column(String(64))
    object_name: Mapped[str] = mapped_column(String(255))
    location: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    published_at: Mapped[datetime.datetime] = mapped_column(UtcTimestamp)


class EventRecord(Base):
    """Something the reconciler did, with its reason and outcome."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime.datetime] = mapped_column(UtcTimestamp)
    kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(255))
    outcome: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)


def _describe(url: str) -> str:
    # Database URLs may carry a password, so messages show it masked.
    return make_url(url).render_as_string(hide_password=True)


class Store:
    """A handle on the state store at one SQLAlchemy URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (
            None,
            "",
            ":memory:",
        ):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url, future=True)
        if parsed.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def initialise(self) -> None:
        """Create the tables if they are missing and check the schema version.

        Raises:
            StateError: the database is unreachable or has another schema version.
        """
        try:
            Base.metadata.create_all(self.engine)
            with self._sessions.begin() as session:
                versions = session.scalars(select(SchemaInfo.version)).all()
                if not versions:
                    session.add(SchemaInfo(version=SCHEMA_VERSION))
                elif versions != [SCHEMA_VERSION]:
                    raise StateError(
                        f"state store {_describe(self.url)} has schema version "
                        f"{versions}, expected {SCHEMA_VERSION}"
                    )
        except SQLAlchemyError as error:
            raise StateError(
                f"state store {_describe(self.url)} is not usable: "
                f"{type(error).__name__}: {getattr(error, 'orig', None) or error}"
            ) from error

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose changes commit together, or not at all on an error."""
        try:
            with self._sessions.begin() as session:
                yield session
        except SQLAlchemyError as error:
            raise StateError(
                f"state store {_describe(self.url)}: {type(error).__name__}"
            ) from error

    def close(self) -> None:
        self.engine.dispose()

    # --- queries ---------------------------------------------------------------

    def current_key(self, session: Session, authority: str) -> KeyRecord | None:
        """The newest key of an authority that is not retired."""
        query = (
            select(KeyRecord)
            .where(KeyRecord.authority == authority, KeyRecord.retired_at.is_(None))
            .order_by(KeyRecord.generation.desc())
        )
        return session.scalars(query).first()

    def next_generation(self, session: Session, authority: str) -> int:
        query = select(KeyRecord.generation).where(KeyRecord.authority == authority)
        generations = session.scalars(query).all()
        return max(generations, default=0) + 1

    def current_certificate(
        self, session: Session, authority: str
    ) -> CertificateRecord | None:
        """The authority's newest certificate that has not been superseded."""
        query = (
            select(CertificateRecord)
            .where(
                CertificateRecord.authority == authority,
                CertificateRecord.superseded_at.is_(None),
            )
            .order_by(CertificateRecord.id.desc())
        )
        return session.scalars(query).first()

    def publication(
        self, session: Session, target: str, object_name: str
    ) -> PublicationRecord | None:
        query = select(PublicationRecord).where(
            PublicationRecord.target == target,
            PublicationRecord.object_name == object_name,
        )
        return session.scalars(query).first()

    def record_event(
        self,
        session: Session,
        *,
        at: datetime.datetime,
        kind: str,
        subject: str,
        outcome: str,
        message: str,
    ) -> None:
        session.add(
            EventRecord(
                at=at, kind=kind, subject=subject, outcome=outcome, message=message
            )
        )

    def count_rows(self) -> dict[str, int]:
        """Row counts per table, for tests and reports."""
        counts = {}
        with self.transaction() as session:
            for model in (KeyRecord, CertificateRecord, PublicationRecord, EventRecord):
                counts[model.__tablename__] = len(
                    session.scalars(select(model.id)).all()
                )
        return counts


def _sqlite_pragmas(connection: Any, record: Any) -> None:
    cursor = connection.cursor()
    # WAL keeps readers (reports) from blocking a running apply, and full
    # synchronous writes make a committed transaction survive a power loss.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
