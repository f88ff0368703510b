"""An append-only, hash-chained audit log of every action, in the state store.

Each entry stores the SHA-256 of the previous entry (``prev_hash``, 64 zeros
for the first) and its own ``hash``: SHA-256 over the canonical JSON of all its
other fields, ``prev_hash`` included. Changing, removing or reordering an entry
therefore breaks the chain at that entry, which :func:`verify` reports.

Appends are serialised so two writers never give two entries the same
predecessor. SQLite takes its database write lock with ``BEGIN IMMEDIATE``
before reading the last entry. PostgreSQL takes a transaction-level advisory
lock first: ``SELECT ... FOR UPDATE`` of the last row alone does not serialise,
because a writer that waited for that row gets the same row back once the
holder commits, not the holder's new entry (PostgreSQL manual, "The Locking
Clause" of SELECT), and then collides on ``seq``. The primary key on ``seq``
still rejects any duplicate, and the append is retried.

The chain alone cannot reveal entries removed from its end, because what
remains is still a valid chain. :func:`verify` therefore takes an anchor, a
head that an earlier verification reported and that was kept outside the store
(a ticket, another system), and checks that the entry is still there unchanged.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from pkifed.errors import StateError
from pkifed.federation.store import AuditRecord, Store

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64

# Key of the PostgreSQL advisory lock that serialises appends. Any constant
# works as long as it stays the same and differs from the other pkifed locks.
AUDIT_LOCK_KEY = 0x706B6966656401

# Attempts at appending when another writer took the same sequence number.
# The locks above prevent that, so the retry is only a second line of defence.
APPEND_ATTEMPTS = 5

Fence = Callable[[Session], None]


@dataclass(frozen=True)
class AuditEntry:
    """One audit log entry as stored, with the fields its hash covers."""

    seq: int
    at: str
    actor: str
    fencing_token: int | None
    kind: str
    subject: str
    outcome: str
    reason: str
    message: str
    prev_hash: str
    hash: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class VerifyResult:
    """The result of checking the chain: the first bad entry, or the head."""

    entries: int
    head_seq: int
    head_hash: str
    bad_seq: int | None = None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.bad_seq is None


def entry_hash(fields: dict[str, Any]) -> str:
    """SHA-256 hex of an entry's canonical JSON, all fields but ``hash`` itself.

    Canonical means keys sorted, no whitespace and UTF-8, so every writer and
    verifier hashes the same bytes.
    """
    covered = {key: value for key, value in fields.items() if key != "hash"}
    text = json.dumps(
        covered, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _describe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _entry(record: AuditRecord) -> AuditEntry:
    return AuditEntry(
        seq=record.seq,
        at=record.at,
        actor=record.actor,
        fencing_token=record.fencing_token,
        kind=record.kind,
        subject=record.subject,
        outcome=record.outcome,
        reason=record.reason,
        message=record.message,
        prev_hash=record.prev_hash,
        hash=record.hash,
    )


class AuditLog:
    """Appends to and reads the audit log of one state store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def append(
        self,
        *,
        at: datetime.datetime,
        actor: str,
        kind: str,
        subject: str,
        outcome: str,
        reason: str,
        message: str,
        fencing_token: int | None = None,
        fence: Fence | None = None,
    ) -> AuditEntry:
        """Append one entry after the current last one, in a transaction of its own.

        ``fence`` runs first in the same transaction, so a writer whose lease
        was taken over appends nothing.

        Raises:
            StateError: the database failed, or ``fence`` rejected the write.
        """
        fields: dict[str, Any] = {
            "at": _iso(at),
            "actor": actor,
            "fencing_token": fencing_token,
            "kind": kind,
            "subject": subject,
            "outcome": outcome,
            "reason": reason,
            "message": message,
        }
        for attempt in range(1, APPEND_ATTEMPTS + 1):
            try:
                return self._append_once(fields, fence)
            except IntegrityError:
                logger.debug(
                    "audit log: another writer appended entry first (attempt %d)",
                    attempt,
                )
        raise StateError(
            f"state store {_describe(self.store.url)}: appending to the audit log "
            f"lost to concurrent writers {APPEND_ATTEMPTS} times; retry later"
        )

    def _append_once(self, fields: dict[str, Any], fence: Fence | None) -> AuditEntry:
        try:
            with self.store.engine.connect() as connection:
                dialect = connection.dialect.name
                if dialect == "sqlite":
                    # pysqlite opens transactions lazily, so the write lock is
                    # taken explicitly before the last entry is read.
                    connection.exec_driver_sql("BEGIN IMMEDIATE")
                elif dialect == "postgresql":
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"),
                        {"key": AUDIT_LOCK_KEY},
                    )
                with Session(bind=connection) as session:
                    if fence is not None:
                        fence(session)
                    last_query = select(AuditRecord).order_by(AuditRecord.seq.desc())
                    if dialect == "postgresql":
                        last_query = last_query.with_for_update()
                    last = session.scalars(last_query.limit(1)).first()
                    entry = {
                        "seq": 1 if last is None else last.seq + 1,
                        **fields,
                        "prev_hash": GENESIS_HASH if last is None else last.hash,
                    }
                    entry["hash"] = entry_hash(entry)
                    session.add(AuditRecord(**entry))
                    session.commit()
                connection.commit()
        except IntegrityError:
            raise
        except SQLAlchemyError as error:
            raise StateError(
                f"state store {_describe(self.store.url)}: appending to the "
                f"audit log failed: {type(error).__name__}"
            ) from error
        return AuditEntry(**entry)

    def entries(self) -> Iterator[AuditEntry]:
        """Yield every entry in sequence order."""
        with self.store.transaction() as session:
            query = select(AuditRecord).order_by(AuditRecord.seq)
            for record in session.scalars(query):
                yield _entry(record)

    def verify(self, anchor: tuple[int, str] | None = None) -> VerifyResult:
        """Check every entry's sequence number, link and hash, oldest first.

        With ``anchor``, a ``(seq, hash)`` pair that an earlier verification
        reported as the head, also check that this entry still exists with
        that hash, which catches entries cut from the end since then.
        """
        result = self._verify_chain()
        if anchor is None or not result.ok:
            return result
        seq, expected = anchor
        if seq > result.head_seq:
            return VerifyResult(
                result.entries,
                result.head_seq,
                result.head_hash,
                seq,
                f"the anchor names entry {seq}, but the log ends at entry "
                f"{result.head_seq}; entries were removed from its end",
            )
        found = self._hash_of(seq)
        if found != expected:
            return VerifyResult(
                result.entries,
                result.head_seq,
                result.head_hash,
                seq,
                f"entry {seq} has hash {found}, but the anchor expects {expected}",
            )
        return result

    def _hash_of(self, seq: int) -> str | None:
        with self.store.transaction() as session:
            record = session.get(AuditRecord, seq)
            return None if record is None else record.hash

    def _verify_chain(self) -> VerifyResult:
        count = 0
        previous_hash = GENESIS_HASH
        expected_seq = 1
        for entry in self.entries():
            count += 1
            problem = _entry_problem(entry, expected_seq, previous_hash)
            if problem:
                return VerifyResult(
                    count, expected_seq - 1, previous_hash, expected_seq, problem
                )
            previous_hash = entry.hash
            expected_seq += 1
        return VerifyResult(count, expected_seq - 1, previous_hash)

    def export(self, output: TextIO) -> int:
        """Write every entry as one JSON line; return how many were written."""
        count = 0
        for entry in self.entries():
            output.write(entry.to_json() + "\n")
            count += 1
        return count


def _entry_problem(entry: AuditEntry, expected_seq: int, previous_hash: str) -> str:
    """Why ``entry`` cannot follow the entry before it, or an empty string."""
    if entry.seq != expected_seq:
        return f"expected entry {expected_seq} next, found {entry.seq}: removed"
    if entry.prev_hash != previous_hash:
        return (
            "prev_hash does not match the previous entry's hash: an entry before "
            "it was removed, changed or moved"
        )
    if entry_hash(asdict(entry)) != entry.hash:
        return "hash does not match the entry's fields: the entry was changed"
    return ""
