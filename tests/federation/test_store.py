"""The state store on SQLite and PostgreSQL: migrations, status, CRL numbers, leases.

Every test taking ``store_url`` runs once on a SQLite file and once on a fresh
PostgreSQL schema (see tests/conftest.py). The concurrency tests start two real
processes, because compare-and-swap only matters between separate connections.
"""

from __future__ import annotations

import datetime
import logging
import multiprocessing
import socket
import time
from collections.abc import Iterator
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, create_engine, insert, inspect, text
from sqlalchemy.engine import make_url

from pkifed.errors import StateError
from pkifed.federation import migrations
from pkifed.federation.store import (
    Base,
    CertificateRecord,
    KeyRecord,
    Lease,
    Store,
)

T0 = datetime.datetime(2026, 1, 31, 12, 0, 0, tzinfo=datetime.UTC)
TTL = datetime.timedelta(seconds=30)
PASSWORD = "pw-must-not-leak-7f3a"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    store = Store(store_url)
    store.initialise()
    yield store
    store.close()


def schema_differences(url: str) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection)
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def query_all(url: str, sql: str) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            result = connection.execute(text(sql))
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


def table_names(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        return inspect(engine).get_table_names()
    finally:
        engine.dispose()


def create_legacy_schema(url: str, version: int = 1) -> None:
    """Create the tables as pkifed's create_all did before Alembic."""
    legacy = MetaData()
    for name in migrations.LEGACY_TABLES:
        Base.metadata.tables[name].to_metadata(legacy)
    engine = create_engine(url)
    try:
        legacy.create_all(engine)
        with engine.begin() as connection:
            schema_info = legacy.tables["schema_info"]
            connection.execute(insert(schema_info).values(version=version))
    finally:
        engine.dispose()


def key_record(authority: str = "root") -> KeyRecord:
    return KeyRecord(
        authority=authority,
        generation=1,
        provider="disk",
        key_name=f"{authority}-1",
        uri=f"local:{authority}-1",
        algorithm="ec-p256",
        protection_level="software",
        adopted=False,
        public_key_der=b"\x30\x00",
        created_at=T0,
        retired_at=None,
    )


def certificate_record(key_id: int, serial: str) -> CertificateRecord:
    return CertificateRecord(
        authority="root",
        serial=serial,
        key_id=key_id,
        issuer_serial=None,
        der=b"\x30\x00",
        fingerprint_sha256="00" * 32,
        not_before=T0,
        not_after=T0 + datetime.timedelta(days=1),
        issued_at=T0,
        superseded_at=None,
    )


# --- migrations -----------------------------------------------------------------


def test_migrations_match_models(store: Store) -> None:
    assert schema_differences(store.url) == []


def test_initialise_reaches_head(store: Store) -> None:
    store.initialise()

    assert query_all(store.url, "SELECT version_num FROM alembic_version") == [
        (migrations.head_revision(),)
    ]
    assert query_all(store.url, "SELECT version FROM schema_info") == [(2,)]


def test_downgrade_to_base_and_back(store: Store) -> None:
    with store.engine.begin() as connection:
        config = migrations.alembic_config(connection, Base.metadata)
        command.downgrade(config, "base")
        assert inspect(connection).get_table_names() == ["alembic_version"]
    store.initialise()

    assert schema_differences(store.url) == []


def test_newer_revision_rejected(store: Store) -> None:
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0999'"))

    with pytest.raises(StateError) as caught:
        store.initialise()

    assert "revision 0999" in str(caught.value)
    assert f"its newest is {migrations.head_revision()}" in str(caught.value)


def test_legacy_database_adopted(store_url: str) -> None:
    create_legacy_schema(store_url)
    store = Store(store_url)
    with store.transaction() as session:
        session.add(key_record())
    store.initialise()

    assert query_all(store_url, "SELECT version_num FROM alembic_version") == [
        (migrations.head_revision(),)
    ]
    assert query_all(store_url, "SELECT version FROM schema_info") == [(2,)]
    assert store.count_rows()["keys"] == 1
    assert schema_differences(store_url) == []
    store.close()


def test_legacy_other_version_rejected(store_url: str) -> None:
    create_legacy_schema(store_url, version=7)
    store = Store(store_url)

    with pytest.raises(StateError, match=r"schema_info holds \[7\]"):
        store.initialise()
    store.close()

    assert "alembic_version" not in table_names(store_url)


def test_legacy_mismatch_rejected(store_url: str) -> None:
    create_legacy_schema(store_url)
    query_all(store_url, "ALTER TABLE events DROP COLUMN message")
    store = Store(store_url)

    with pytest.raises(StateError, match="tables differ") as caught:
        store.initialise()
    store.close()

    assert "message" in str(caught.value)


def initialise_store(
    url: str, count: int, start: Barrier, results: multiprocessing.Queue[list[int]]
) -> None:
    """Initialise a new store in a process of its own, after ``start``."""
    store = Store(url)
    try:
        start.wait()
        store.initialise()
    finally:
        store.close()
    results.put([])


def run_two_processes(target: Any, url: str, count: int) -> list[list[int]]:
    """Run ``target`` in two processes that start together; return their results."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    results: multiprocessing.Queue[list[int]] = context.Queue()
    workers = [
        context.Process(target=target, args=(url, count, start, results))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    outputs = [results.get(timeout=120), results.get(timeout=120)]
    for worker in workers:
        worker.join(timeout=30)
    assert [worker.exitcode for worker in workers] == [0, 0]
    return outputs


def test_initialise_concurrent(store_url: str) -> None:
    run_two_processes(initialise_store, store_url, 0)

    assert query_all(store_url, "SELECT version_num FROM alembic_version") == [
        (migrations.head_revision(),)
    ]
    assert query_all(store_url, "SELECT version FROM schema_info") == [(2,)]


# --- certificates ---------------------------------------------------------------


def test_duplicate_serial_rejected(store: Store) -> None:
    with store.transaction() as session:
        key = key_record()
        session.add(key)
        session.flush()
        session.add(certificate_record(key.id, "0a1b"))
        key_id = key.id

    with pytest.raises(StateError, match="IntegrityError"), store.transaction() as s:
        s.add(certificate_record(key_id, "0a1b"))

    assert store.count_rows()["certificates"] == 1


# --- object status --------------------------------------------------------------


def test_status_recorded_and_replaced(store: Store) -> None:
    retry = T0 + datetime.timedelta(minutes=5)
    with store.transaction() as session:
        store.record_status(session, "target/out/trust.pem", "ok", "published", at=T0)
        store.record_status(session, "authority/root", "ok", "issued", at=T0)
    with store.transaction() as session:
        store.record_status(
            session, "authority/root", "failed", "HSM offline", retry, at=retry
        )
    with store.transaction() as session:
        statuses = store.statuses(session)

    assert [s.object for s in statuses] == ["authority/root", "target/out/trust.pem"]
    assert statuses[0].outcome == "failed"
    assert statuses[0].message == "HSM offline"
    assert statuses[0].last_attempt_at == retry
    assert statuses[0].next_retry_at == retry
    assert statuses[1].next_retry_at is None
    assert store.count_rows()["object_status"] == 2


@pytest.mark.parametrize(
    ("object_name", "outcome"),
    [("root", "ok"), ("/root", "ok"), ("authority/", "ok"), ("authority/root", "done")],
)
def test_status_invalid_rejected(store: Store, object_name: str, outcome: Any) -> None:
    with pytest.raises(ValueError, match="expected"), store.transaction() as session:
        store.record_status(session, object_name, outcome, "message")


# --- CRL numbers ----------------------------------------------------------------


def test_crl_numbers_count_per_issuer(store: Store) -> None:
    root = [store.allocate_crl_number("root") for _ in range(3)]
    issuing = [store.allocate_crl_number("issuing") for _ in range(2)]

    assert root == [1, 2, 3]
    assert issuing == [1, 2]


def allocate_numbers(
    url: str, count: int, start: Barrier, results: multiprocessing.Queue[list[int]]
) -> None:
    """Allocate ``count`` CRL numbers in a process of its own, after ``start``."""
    store = Store(url)
    try:
        start.wait()
        numbers = [store.allocate_crl_number("root") for _ in range(count)]
    finally:
        store.close()
    results.put(numbers)


def test_crl_numbers_concurrent(store: Store) -> None:
    first, second = run_two_processes(allocate_numbers, store.url, 200)

    assert sorted(first + second) == list(range(1, 401))
    assert first == sorted(set(first))
    assert second == sorted(set(second))
    # Each process got numbers before and after the other's, so the two ran
    # at the same time and the swap was contended.
    assert min(first) < max(second)
    assert min(second) < max(first)


# --- leases ---------------------------------------------------------------------


def test_lease_held_until_expiry(store: Store) -> None:
    lease = store.try_acquire_lease("leader", "a", TTL, T0)

    assert lease == Lease("leader", "a", 1, T0 + TTL)
    assert store.try_acquire_lease("leader", "b", TTL, T0 + TTL / 2) is None
    assert store.try_acquire_lease("leader", "b", TTL, T0 + TTL) == Lease(
        "leader", "b", 2, T0 + 2 * TTL
    )


def test_lease_extended_by_holder(store: Store) -> None:
    lease = store.try_acquire_lease("leader", "a", TTL, T0)
    assert lease is not None
    later = T0 + datetime.timedelta(seconds=20)

    renewed = store.renew_lease(lease, TTL, later)
    again = store.try_acquire_lease("leader", "a", TTL, later + TTL / 2)

    assert renewed == Lease("leader", "a", 1, later + TTL)
    assert again == Lease("leader", "a", 1, later + TTL + TTL / 2)
    assert store.try_acquire_lease("leader", "b", TTL, T0 + TTL) is None


def test_lease_lost_cannot_renew(store: Store) -> None:
    old = store.try_acquire_lease("leader", "a", TTL, T0)
    assert old is not None
    new = store.try_acquire_lease("leader", "b", TTL, T0 + TTL)
    assert new is not None

    assert store.renew_lease(old, TTL, T0 + TTL) is None
    assert store.release_lease(old) is False
    assert store.try_acquire_lease("leader", "a", TTL, T0 + TTL) is None


def test_lease_expired_renew_rejected(store: Store) -> None:
    lease = store.try_acquire_lease("leader", "a", TTL, T0)
    assert lease is not None

    assert store.renew_lease(lease, TTL, T0 + TTL) is None
    assert store.try_acquire_lease("leader", "a", TTL, T0 + TTL) == Lease(
        "leader", "a", 2, T0 + 2 * TTL
    )


def test_lease_released_taken_early(store: Store) -> None:
    lease = store.try_acquire_lease("leader", "a", TTL, T0)
    assert lease is not None

    assert store.release_lease(lease) is True
    assert store.try_acquire_lease("leader", "b", TTL, T0 + TTL / 3) == Lease(
        "leader", "b", 2, T0 + TTL / 3 + TTL
    )


def test_lease_names_independent(store: Store) -> None:
    first = store.try_acquire_lease("leader", "a", TTL, T0)
    second = store.try_acquire_lease("crl-root", "b", TTL, T0)

    assert first is not None
    assert second is not None
    assert (first.token, second.token) == (1, 1)


def write_fenced(store: Store, token: int, authority: str) -> None:
    """Add a key for ``authority`` in a transaction guarded by the leader lease."""
    with store.transaction() as session:
        session.add(key_record(authority))
        store.check_fencing(session, "leader", token)


def test_fencing_stale_token_rejected(store: Store) -> None:
    old = store.try_acquire_lease("leader", "a", TTL, T0)
    new = store.try_acquire_lease("leader", "b", TTL, T0 + TTL)
    assert old is not None
    assert new is not None

    write_fenced(store, new.token, "fenced-new")
    with pytest.raises(StateError, match="fencing token 1 is stale"):
        write_fenced(store, old.token, "fenced-old")

    assert store.count_rows()["keys"] == 1


def test_fencing_unknown_lease_rejected(store: Store) -> None:
    with (
        pytest.raises(StateError, match="current token: None"),
        store.transaction() as session,
    ):
        store.check_fencing(session, "nobody", 1)


@pytest.mark.postgres
def test_fencing_holds_row_lock(postgres_url: str) -> None:
    store = Store(postgres_url)
    store.initialise()
    lease = store.try_acquire_lease("leader", "a", TTL, T0)
    assert lease is not None
    # A second store that gives up on a row lock after 200 ms instead of waiting.
    impatient_url = postgres_url.replace(
        "options=", "options=-clock_timeout%3D200ms%20"
    )
    impatient = Store(impatient_url)

    with store.transaction() as session:
        store.check_fencing(session, "leader", lease.token)
        with pytest.raises(StateError, match="lock timeout"):
            impatient.try_acquire_lease("leader", "b", TTL, T0 + TTL)

    assert impatient.try_acquire_lease("leader", "b", TTL, T0 + TTL) is not None
    impatient.close()
    store.close()


# --- errors ---------------------------------------------------------------------


def closed_port() -> int:
    """A loopback port with nothing listening, so connecting is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_unreachable_postgres_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"postgresql+psycopg2://pkifed:{PASSWORD}@127.0.0.1:{closed_port()}/state"
    store = Store(url)

    with pytest.raises(StateError) as caught:
        store.initialise()
    store.close()
    message = str(caught.value)

    assert "\n" not in message
    assert "is unreachable" in message
    assert "check that the database server is running" in message
    assert "pkifed:***@127.0.0.1" in message
    assert PASSWORD not in message
    assert PASSWORD not in caplog.text


def test_unreachable_sqlite_names_directory(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    store = Store(f"sqlite:///{directory}")

    with pytest.raises(StateError) as caught:
        store.initialise()
    store.close()

    assert "is unreachable" in str(caught.value)
    assert "unable to open database file" in str(caught.value)
    assert "directory exists and is writable" in str(caught.value)


def test_unusable_sqlite_path_rejected(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory", encoding="utf-8")

    with pytest.raises(StateError, match="cannot be opened"):
        Store(f"sqlite:///{tmp_path / 'file' / 'state.db'}")


@pytest.mark.postgres
def test_password_never_in_messages(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # The test server trusts loopback connections, so any password logs in and
    # the errors below come from statements, not from authentication.
    url = make_url(postgres_url).set(password=PASSWORD)
    store = Store(url.render_as_string(hide_password=False))
    store.initialise()
    messages = []
    with pytest.raises(StateError) as caught, store.transaction() as session:
        session.execute(
            text("SELECT :secret FROM no_such_table").bindparams(secret=PASSWORD)
        )
    messages.append(str(caught.value))
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    with pytest.raises(StateError) as caught:
        store.initialise()
    messages.append(str(caught.value))
    store.close()

    assert "no_such_table" in messages[0]
    assert "revision 0999" in messages[1]
    assert all("***" in message for message in messages)
    assert not [message for message in messages if PASSWORD in message]
    assert PASSWORD not in caplog.text


@pytest.mark.slow
def test_new_sqlite_store_waits_for_lock(tmp_path: Path) -> None:
    import sqlite3
    import threading

    database = tmp_path / "state.db"
    locked = threading.Event()

    def hold_lock() -> None:
        # Another process migrating a new store keeps its write lock this long
        # on a loaded machine, beyond the sqlite3 module's 5 s default timeout.
        holder = sqlite3.connect(database, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(6)
        holder.execute("COMMIT")
        holder.close()

    thread = threading.Thread(target=hold_lock)
    thread.start()
    assert locked.wait(timeout=10)
    store = Store(f"sqlite:///{database}")
    try:
        store.initialise()
        with store.engine.connect() as connection:
            mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
    finally:
        store.close()
        thread.join()
    assert mode == "wal"
