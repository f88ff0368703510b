"""The state store: keys, certificates, CRLs, revocations, publications and leases.

SQLite is the default and PostgreSQL is supported. Times are stored as ISO-8601
strings in UTC with second precision (``2026-01-31T12:00:00Z``), which sort
correctly as text and read the same in every database. The schema is created and
upgraded by the Alembic revisions in :mod:`pkifed.federation.migrations`.

Counters and leases that several replicas share are changed by compare-and-swap:
an ``UPDATE ... WHERE`` that names the value read, so a replica whose view is
stale changes no row and tries again. This needs no locking statement that only
one database has, and it does not depend on any replica's clock.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

from sqlalchemy import (
    BigInteger,
    CursorResult,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Update,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from pkifed.errors import StateError
from pkifed.federation import migrations

logger = logging.getLogger(__name__)

# Seconds psycopg2 waits for a PostgreSQL server before giving up, unless the URL
# sets connect_timeout itself. Without it a connection to an unreachable host
# waits for the kernel's TCP timeout, about two minutes on Linux by default
# (tcp_syn_retries = 6 in tcp(7)).
POSTGRES_CONNECT_TIMEOUT = 10

# Compare-and-swap attempts before giving up. Each failed attempt means another
# replica changed the row in between, so running out needs that many writers
# winning in a row.
CAS_ATTEMPTS = 100

Outcome = Literal["ok", "failed", "blocked"]


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
    """The schema version of releases before Alembic, kept to stop those releases.

    Releases before Alembic reject any version other than 1 in this table, so the
    migrations set it to 2 and those releases reject a migrated database instead
    of writing to tables whose schema they do not match.
    """

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


class ObjectStatusRecord(Base):
    """The latest attempt on one managed object, such as ``authority/root``."""

    __tablename__ = "object_status"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    last_attempt_at: Mapped[datetime.datetime] = mapped_column(UtcTimestamp)
    outcome: Mapped[str] = mapped_column(String(16))
    next_retry_at: Mapped[datetime.datetime | None] = mapped_column(UtcTimestamp)
    message: Mapped[str] = mapped_column(Text)


class CrlNumberRecord(Base):
    """The last CRL number allocated to an issuer (RFC 5280, section 5.2.3)."""

    __tablename__ = "crl_numbers"

    issuer: Mapped[str] = mapped_column(String(64), primary_key=True)
    number: Mapped[int] = mapped_column(BigInteger)


class CrlRecord(Base):
    """A CRL an authority signed; the one with the highest number is current."""

    __tablename__ = "crls"
    __table_args__ = (UniqueConstraint("issuer", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issuer: Mapped[str] = mapped_column(String(64), index=True)
    number: Mapped[int] = mapped_column(BigInteger)
    # Hex serial of the issuer's certificate the CRL was signed under, so a
    # re-issued issuer is noticed.
    issuer_serial: Mapped[str] = mapped_column(String(42))
    this_update: Mapped[datetime.datetime] = mapped_column(UtcTimestamp)
    next_update: Mapped[datetime.datetime] = mapped_column(UtcTimestamp)
    entries: Mapped[int] = mapped_column(Integer)
    der: Mapped[bytes] = mapped_column(LargeBinary)
    signed_at: Mapped[datetime.datetime] = mapped_column(UtcTimestamp)


class RevocationRecord(Base):
    """A certificate revoked with ``pkifed revoke``, listed on its issuer's CRL."""

    __tablename__ = "revocations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    authority: Mapped[str] = mapped_column(String(64), index=True)
    # Hex of the revoked certificate's serial number.
    serial: Mapped[str] = mapped_column(String(42), unique=True)
    # The authority that issued the certificate and lists it on its CRL.
    issuer: Mapped[str] = mapped_column(String(64), index=True)
    # An RFC 5280 reason code name (section 5.3.1), such as keyCompromise.
    reason: Mapped[str] = mapped_column(String(32))
    revoked_at: Mapped[datetime.datetime] = mapped_column(UtcTimestamp)


class LeaseRecord(Base):
    """A named lease with its holder and fencing token.

    A released lease keeps its row with no holder, so its token keeps counting.
    """

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(255))
    token: Mapped[int] = mapped_column(BigInteger)
    acquired_at: Mapped[datetime.datetime | None] = mapped_column(UtcTimestamp)
    expires_at: Mapped[datetime.datetime | None] = mapped_column(UtcTimestamp)


class AuditRecord(Base):
    """One entry of the append-only, hash-chained audit log.

    :mod:`pkifed.federation.audit` appends and verifies the entries; ``hash`` is
    SHA-256 over the entry's canonical JSON, ``prev_hash`` included.
    """

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    # The ISO-8601 UTC text itself, because the hash covers exactly this text.
    at: Mapped[str] = mapped_column(String(20))
    actor: Mapped[str] = mapped_column(String(255))
    fencing_token: Mapped[int | None] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(255))
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


@dataclass(frozen=True)
class ObjectStatus:
    """The latest attempt on one managed object."""

    object: str
    outcome: str
    last_attempt_at: datetime.datetime
    next_retry_at: datetime.datetime | None
    message: str


@dataclass(frozen=True)
class Lease:
    """A lease held until ``expires_at``.

    ``token`` grows each time the lease is acquired after being free or expired.
    Writes guarded by the lease pass it to :meth:`Store.check_fencing`, so a
    holder that lost the lease without noticing cannot write.
    """

    name: str
    holder: str
    token: int
    expires_at: datetime.datetime


def _describe(url: str) -> str:
    # Database URLs may carry a password, so messages show it masked.
    return make_url(url).render_as_string(hide_password=True)


def _error_text(url: str, error: BaseException) -> str:
    """Describe a database error on one line, with any password in it masked."""
    detail: object = error
    if isinstance(error, DBAPIError) and error.orig is not None:
        # The driver's own message, without SQLAlchemy's copy of the statement
        # and its parameters.
        detail = error.orig
    lines = [line.strip() for line in str(detail).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {'; '.join(lines)}"
    password = make_url(url).password
    if password:
        text = text.replace(str(password), "***")
    return text


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Store:
    """A handle on the state store at one SQLAlchemy URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            parsed = make_url(url)
            backend = parsed.get_backend_name()
            connect_args: dict[str, Any] = {}
            if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            if backend == "postgresql" and "connect_timeout" not in parsed.query:
                connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT
            self.engine: Engine = create_engine(url, connect_args=connect_args)
        except (SQLAlchemyError, OSError) as error:
            raise StateError(
                f"state store {_describe(url)} cannot be opened: "
                f"{_error_text(url, error)}"
            ) from error
        except ImportError as error:
            raise StateError(
                f"state store {_describe(url)} needs a database driver that is not "
                f"installed ({error.name}); for PostgreSQL install pkifed[postgres]"
            ) from error
        if backend == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def initialise(self) -> None:
        """Create the schema or upgrade it to the newest revision.

        Raises:
            StateError: the database is unreachable, is at a schema revision that
                this release does not ship, or contains tables that do not match
                the schema version recorded in it.
        """
        where = _describe(self.url)
        try:
            connection = self.engine.connect()
        except SQLAlchemyError as error:
            if self.engine.dialect.name == "sqlite":
                advice = "check that the file's directory exists and is writable"
            else:
                advice = (
                    "check that the database server is running and that the state "
                    "URL's host, port, database name and credentials are right"
                )
            raise StateError(
                f"state store {where} is unreachable "
                f"({_error_text(self.url, error)}); {advice}"
            ) from error
        try:
            with connection, connection.begin():
                migrations.upgrade(connection, Base.metadata, where)
        except SQLAlchemyError as error:
            raise StateError(
                f"state store {where}: upgrading the schema failed: "
                f"{_error_text(self.url, error)}"
            ) from error

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """Open a session whose changes commit together, or not at all on an error."""
        try:
            with self._sessions.begin() as session:
                yield session
        except SQLAlchemyError as error:
            raise self._state_error(error) from error

    def close(self) -> None:
        self.engine.dispose()

    def _state_error(self, error: SQLAlchemyError) -> StateError:
        return StateError(
            f"state store {_describe(self.url)}: {_error_text(self.url, error)}"
        )

    # --- keys, certificates and publications -----------------------------------

    def current_key(self, session: Session, authority: str) -> KeyRecord | None:
        """Return the newest key of an authority that is not retired."""
        query = (
            select(KeyRecord)
            .where(KeyRecord.authority == authority, KeyRecord.retired_at.is_(None))
            .order_by(KeyRecord.generation.desc())
        )
        return session.scalars(query).first()

    def next_generation(self, session: Session, authority: str) -> int:
        query = select(func.max(KeyRecord.generation)).where(
            KeyRecord.authority == authority
        )
        return (session.scalar(query) or 0) + 1

    def current_certificate(
        self, session: Session, authority: str
    ) -> CertificateRecord | None:
        """Return the authority's newest certificate that has not been superseded."""
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
        models: tuple[type[Base], ...] = (
            KeyRecord,
            CertificateRecord,
            PublicationRecord,
            EventRecord,
            ObjectStatusRecord,
            CrlNumberRecord,
            LeaseRecord,
            CrlRecord,
            RevocationRecord,
        )
        counts = {}
        with self.transaction() as session:
            for model in models:
                query = select(func.count()).select_from(model)
                counts[model.__tablename__] = session.scalar(query) or 0
        return counts

    # --- object status ---------------------------------------------------------

    def record_status(
        self,
        session: Session,
        object: str,
        outcome: Outcome,
        message: str,
        next_retry_at: datetime.datetime | None = None,
        *,
        at: datetime.datetime | None = None,
    ) -> None:
        """Insert or replace the status of ``object`` (``kind/name``).

        ``at`` is the time of the attempt and defaults to now.

        Raises:
            ValueError: ``object`` has no ``kind/`` prefix or ``outcome`` is not
                one of ok, failed, blocked.
        """
        kind, _, name = object.partition("/")
        if not kind or not name:
            raise ValueError(f"expected an object as kind/name, got {object!r}")
        if outcome not in get_args(Outcome):
            raise ValueError(
                f"expected an outcome of ok, failed or blocked, got {outcome!r}"
            )
        values = {
            "kind": kind,
            "name": name,
            "last_attempt_at": at or utc_now(),
            "outcome": outcome,
            "next_retry_at": next_retry_at,
            "message": message,
        }
        # An upsert, so two replicas recording the same object at once both
        # succeed and the later write wins.
        dialect = session.get_bind().dialect.name
        upsert = (
            postgresql.insert(ObjectStatusRecord)
            if dialect == "postgresql"
            else sqlite.insert(ObjectStatusRecord)
        )
        statement = upsert.values(**values).on_conflict_do_update(
            index_elements=["kind", "name"],
            set_={
                key: value
                for key, value in values.items()
                if key not in ("kind", "name")
            },
        )
        session.execute(statement)

    def statuses(self, session: Session) -> list[ObjectStatus]:
        """Return every recorded object status, sorted by object."""
        query = select(ObjectStatusRecord).order_by(
            ObjectStatusRecord.kind, ObjectStatusRecord.name
        )
        return [
            ObjectStatus(
                object=f"{record.kind}/{record.name}",
                outcome=record.outcome,
                last_attempt_at=record.last_attempt_at,
                next_retry_at=record.next_retry_at,
                message=record.message,
            )
            for record in session.scalars(query)
        ]

    # --- CRL numbers -----------------------------------------------------------

    def allocate_crl_number(self, issuer: str) -> int:
        """Allocate the next CRL number of ``issuer`` in a transaction of its own.

        Numbers start at 1 and increase by one per call across every replica
        that shares the store, because each call swaps the stored number only if
        it is still the one it read. RFC 5280, section 5.2.3, requires CRL numbers
        to increase monotonically per issuer.

        Raises:
            StateError: the database failed, or other replicas won the swap
                ``CAS_ATTEMPTS`` times in a row.
        """
        for _ in range(CAS_ATTEMPTS):
            number = self._swap_crl_number(issuer)
            if number is not None:
                return number
            logger.debug("CRL number of %s changed concurrently, retrying", issuer)
        raise StateError(
            f"state store {_describe(self.url)}: allocating a CRL number for "
            f"{issuer} lost to concurrent writers {CAS_ATTEMPTS} times; retry later"
        )

    def _swap_crl_number(self, issuer: str) -> int | None:
        """Try once to allocate a CRL number, returning None if another writer won."""
        try:
            with self._sessions.begin() as session:
                query = select(CrlNumberRecord.number).where(
                    CrlNumberRecord.issuer == issuer
                )
                current = session.scalar(query)
                if current is None:
                    first = insert(CrlNumberRecord).values(issuer=issuer, number=1)
                    session.execute(first)
                    return 1
                swap = (
                    update(CrlNumberRecord)
                    .where(
                        CrlNumberRecord.issuer == issuer,
                        CrlNumberRecord.number == current,
                    )
                    .values(number=current + 1)
                )
                if _rowcount(session, swap) != 1:
                    return None
                return current + 1
        except IntegrityError:
            # Another writer inserted the issuer's first row after this one
            # found none, so the next attempt reads that row.
            return None
        except SQLAlchemyError as error:
            raise self._state_error(error) from error

    # --- leases ----------------------------------------------------------------

    def try_acquire_lease(
        self,
        name: str,
        holder: str,
        ttl: datetime.timedelta,
        now: datetime.datetime,
    ) -> Lease | None:
        """Acquire the lease ``name`` for ``holder``, or extend it if already held.

        Returns None while another holder's lease is unexpired, or when another
        writer changed the lease between this call's read and its write. The
        token grows whenever the lease is taken while free, released or expired.
        A holder extending its own unexpired lease keeps its token.

        Expiry compares ``now`` with the time the previous holder wrote, so the
        replicas' clocks must agree to well within ``ttl``. When they do not,
        two replicas may both believe they hold the lease, and only the token
        checked by :meth:`check_fencing` keeps the older one from writing.
        Times have second precision.
        """
        expires_at = (now + ttl).replace(microsecond=0)
        try:
            with self._sessions.begin() as session:
                record = session.get(LeaseRecord, name)
                if record is None:
                    first = insert(LeaseRecord).values(
                        name=name,
                        holder=holder,
                        token=1,
                        acquired_at=now,
                        expires_at=expires_at,
                    )
                    session.execute(first)
                    return Lease(name, holder, 1, expires_at)
                live = record.expires_at is not None and record.expires_at > now
                if live and record.holder not in (None, holder):
                    return None
                renewal = live and record.holder == holder
                token = record.token if renewal else record.token + 1
                swap = (
                    update(LeaseRecord)
                    .where(
                        LeaseRecord.name == name,
                        LeaseRecord.token == record.token,
                        LeaseRecord.holder.is_not_distinct_from(record.holder),
                        LeaseRecord.expires_at.is_not_distinct_from(record.expires_at),
                    )
                    .values(
                        holder=holder,
                        token=token,
                        acquired_at=record.acquired_at if renewal else now,
                        expires_at=expires_at,
                    )
                )
                if _rowcount(session, swap) != 1:
                    return None
                return Lease(name, holder, token, expires_at)
        except IntegrityError:
            # Another holder created the lease after this call found none.
            return None
        except SQLAlchemyError as error:
            raise self._state_error(error) from error

    def renew_lease(
        self, lease: Lease, ttl: datetime.timedelta, now: datetime.datetime
    ) -> Lease | None:
        """Extend an unexpired lease to ``now + ttl``, returning None if it was lost.

        A lease that expired is not renewed even if no other holder took it,
        because its holder cannot tell what happened in between. The holder calls
        :meth:`try_acquire_lease` again instead and gets a new token.
        """
        expires_at = (now + ttl).replace(microsecond=0)
        swap = (
            update(LeaseRecord)
            .where(
                LeaseRecord.name == lease.name,
                LeaseRecord.holder == lease.holder,
                LeaseRecord.token == lease.token,
                LeaseRecord.expires_at > now,
            )
            .values(expires_at=expires_at)
        )
        with self.transaction() as session:
            if _rowcount(session, swap) != 1:
                return None
        return Lease(lease.name, lease.holder, lease.token, expires_at)

    def release_lease(self, lease: Lease) -> bool:
        """Give up a lease so another holder can take it before it expires.

        Returns False when the lease had already passed to another holder.
        """
        swap = (
            update(LeaseRecord)
            .where(
                LeaseRecord.name == lease.name,
                LeaseRecord.holder == lease.holder,
                LeaseRecord.token == lease.token,
            )
            .values(holder=None, acquired_at=None, expires_at=None)
        )
        with self.transaction() as session:
            return _rowcount(session, swap) == 1

    def check_fencing(self, session: Session, name: str, token: int) -> None:
        """Reject the session's writes unless ``token`` is the lease's newest.

        The check writes the lease row back unchanged, which holds the row lock
        (the database lock on SQLite) until ``session`` ends. A holder change
        therefore commits either before the check, which then fails, or after
        the session's own writes.

        Raises:
            StateError: the lease has a newer token, or no row at all.
        """
        hold = (
            update(LeaseRecord)
            .where(LeaseRecord.name == name, LeaseRecord.token == token)
            .values(token=LeaseRecord.token)
        )
        if _rowcount(session, hold) == 1:
            return
        current = session.scalar(
            select(LeaseRecord.token).where(LeaseRecord.name == name)
        )
        raise StateError(
            f"lease {name}: fencing token {token} is stale (current token: "
            f"{current}); another holder acquired the lease, so this write is "
            "rejected"
        )


def _rowcount(session: Session, statement: Update) -> int:
    """Execute an UPDATE and return the number of rows it matched."""
    result = session.execute(statement.execution_options(synchronize_session=False))
    return cast(CursorResult[Any], result).rowcount


# How long a new connection keeps trying to switch a database to WAL while
# another process holds a lock on it, in seconds.
SQLITE_WAL_TIMEOUT = 30.0


def _sqlite_pragmas(connection: Any, record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    # WAL keeps readers (reports) from blocking a running apply, and full
    # synchronous writes make a committed transaction survive a power loss.
    _use_wal(cursor)
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _use_wal(cursor: Any) -> None:
    """Switch the database to WAL unless it already is.

    The mode is stored in the file, so only the first connection to a new
    database changes it. That change needs an exclusive lock, and SQLite can
    report "database is locked" at once instead of waiting for the busy
    timeout, such as when two processes open a new store together, so the
    switch is tried again until SQLITE_WAL_TIMEOUT passes.
    """
    deadline = time.monotonic() + SQLITE_WAL_TIMEOUT
    delay = 0.01
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
