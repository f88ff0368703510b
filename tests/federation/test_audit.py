"""The hash-chained audit log: appends, verification and tampering caught by SQL."""

from __future__ import annotations

import datetime
import io
import itertools
import json
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from pkifed.errors import StateError
from pkifed.federation.audit import GENESIS_HASH, AuditLog, entry_hash
from pkifed.federation.store import Store

T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
ENTRIES = 5


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    store = Store(store_url)
    store.initialise()
    yield store
    store.close()


def append(log: AuditLog, index: int, **overrides: object) -> None:
    fields: dict[str, object] = {
        "at": T0 + datetime.timedelta(minutes=index),
        "actor": "replica-a",
        "kind": "publish",
        "subject": f"target out: object-{index}.pem",
        "outcome": "done",
        "reason": "missing",
        "message": f"published {index}",
        "fencing_token": 1,
    }
    fields.update(overrides)
    log.append(**fields)  # type: ignore[arg-type]


@pytest.fixture
def filled(store: Store) -> AuditLog:
    log = AuditLog(store)
    for index in range(1, ENTRIES + 1):
        append(log, index)
    return log


def execute(store: Store, sql: str, **parameters: object) -> None:
    with store.engine.begin() as connection:
        connection.execute(text(sql), parameters)


def test_append_links_chain(filled: AuditLog) -> None:
    entries = list(filled.entries())

    assert [entry.seq for entry in entries] == [1, 2, 3, 4, 5]
    assert entries[0].prev_hash == GENESIS_HASH
    for previous, entry in itertools.pairwise(entries):
        assert entry.prev_hash == previous.hash
    assert entries[0].at == "2026-03-01T12:01:00Z"


def test_hash_covers_canonical_json(filled: AuditLog) -> None:
    entry = next(filled.entries())
    fields = json.loads(entry.to_json())

    assert entry_hash(fields) == entry.hash
    assert entry_hash({**fields, "message": "other"}) != entry.hash


def test_verify_intact(filled: AuditLog) -> None:
    result = filled.verify()

    assert result.ok
    assert result.entries == ENTRIES
    assert result.head_seq == ENTRIES
    assert result.head_hash == list(filled.entries())[-1].hash


def test_verify_empty(store: Store) -> None:
    result = AuditLog(store).verify()

    assert result.ok
    assert result.entries == 0
    assert result.head_hash == GENESIS_HASH


@pytest.mark.parametrize(
    "column", ["at", "actor", "kind", "subject", "outcome", "reason", "message"]
)
def test_changed_field_caught(filled: AuditLog, column: str) -> None:
    # The column comes from the parameter list above, never from input.
    tamper = f"UPDATE audit_log SET {column} = 'x' WHERE seq = 3"  # noqa: S608
    execute(filled.store, tamper)

    result = filled.verify()

    assert result.bad_seq == 3
    assert "changed" in result.problem


def test_changed_token_caught(filled: AuditLog) -> None:
    execute(filled.store, "UPDATE audit_log SET fencing_token = 9 WHERE seq = 2")

    assert filled.verify().bad_seq == 2


def test_rehashed_entry_caught(filled: AuditLog) -> None:
    """An entry changed and rehashed breaks the link of the entry after it."""
    entry = list(filled.entries())[2]
    fields = {**json.loads(entry.to_json()), "outcome": "failed"}
    rehashed = entry_hash(fields)
    execute(
        filled.store,
        "UPDATE audit_log SET outcome = 'failed', hash = :hash WHERE seq = 3",
        hash=rehashed,
    )

    result = filled.verify()

    assert result.bad_seq == 4
    assert "prev_hash" in result.problem


def test_deleted_entry_caught(filled: AuditLog) -> None:
    execute(filled.store, "DELETE FROM audit_log WHERE seq = 2")

    result = filled.verify()

    assert result.bad_seq == 2
    assert "removed" in result.problem


def test_anchor_catches_cut_end(filled: AuditLog) -> None:
    head = filled.verify()
    execute(filled.store, "DELETE FROM audit_log WHERE seq > :seq", seq=ENTRIES - 2)

    assert filled.verify().ok
    result = filled.verify((head.head_seq, head.head_hash))

    assert result.bad_seq == ENTRIES
    assert "entries were removed from its end" in result.problem


def test_anchor_catches_changed_hash(filled: AuditLog) -> None:
    result = filled.verify((3, "0" * 64))

    assert result.bad_seq == 3
    assert "but the anchor expects" in result.problem


def test_anchor_holds_after_appends(filled: AuditLog) -> None:
    head = filled.verify()
    append(filled, ENTRIES + 1)

    result = filled.verify((head.head_seq, head.head_hash))

    assert result.ok
    assert result.head_seq == ENTRIES + 1


def test_deleted_first_entry_caught(filled: AuditLog) -> None:
    execute(filled.store, "DELETE FROM audit_log WHERE seq = 1")

    assert filled.verify().bad_seq == 1


def test_swapped_entries_caught(filled: AuditLog) -> None:
    # Renumber through a free value, because seq is the primary key.
    execute(filled.store, "UPDATE audit_log SET seq = 100 WHERE seq = 2")
    execute(filled.store, "UPDATE audit_log SET seq = 2 WHERE seq = 3")
    execute(filled.store, "UPDATE audit_log SET seq = 3 WHERE seq = 100")

    result = filled.verify()

    assert result.bad_seq == 2
    assert result.head_seq == 1


def test_append_after_tamper_keeps_break(filled: AuditLog) -> None:
    execute(filled.store, "UPDATE audit_log SET message = 'x' WHERE seq = 4")
    append(filled, 6)

    assert filled.verify().bad_seq == 4


def test_export_json_lines(filled: AuditLog) -> None:
    output = io.StringIO()

    count = filled.export(output)

    lines = output.getvalue().splitlines()
    assert count == ENTRIES
    assert len(lines) == ENTRIES
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3, 4, 5]
    assert json.loads(lines[0])["prev_hash"] == GENESIS_HASH


def test_fence_rejects_append(store: Store) -> None:
    log = AuditLog(store)

    def fence(session: Session) -> None:
        raise StateError("lease daemon: fencing token 1 is stale")

    with pytest.raises(StateError, match="stale"):
        append(log, 1, fence=fence)

    assert list(log.entries()) == []


def test_concurrent_appends_one_chain(store_url: str, store: Store) -> None:
    writers = 4
    per_writer = 10
    start = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        own = Store(store_url)
        try:
            log = AuditLog(own)
            start.wait()
            for index in range(per_writer):
                append(log, index, actor=f"replica-{writer}")
        except BaseException as error:
            errors.append(error)
        finally:
            own.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    result = AuditLog(store).verify()
    assert errors == []
    assert result.ok
    assert result.entries == writers * per_writer
