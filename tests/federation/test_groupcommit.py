"""Group commit: concurrent state writes share transactions, each durable on return."""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pkifed.errors import StateError
from pkifed.federation.groupcommit import GroupWriter
from pkifed.federation.store import EventRecord, Store

T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    store = Store(store_url)
    store.initialise()
    yield store
    store.close()


def add_event(subject: str) -> Callable[[Session], str]:
    def write(session: Session) -> str:
        session.add(
            EventRecord(
                at=T0, kind="test", subject=subject, outcome="done", message=subject
            )
        )
        return subject

    return write


def subjects(store: Store) -> set[str]:
    with store.transaction() as session:
        return set(session.scalars(select(EventRecord.subject)))


def queue_behind_gate(
    writer: GroupWriter, functions: list[Callable[[Session], str]]
) -> dict[str, object]:
    """Run ``functions`` from threads while a first write keeps the commit open.

    Every function queues before the first write finishes, so they all land in
    the next batch. Returns each function's result or raised error by index.
    """
    gate = threading.Event()
    inside = threading.Event()

    def first(session: Session) -> str:
        inside.set()
        gate.wait(timeout=10)
        return add_event("first")(session)

    results: dict[str, object] = {}

    def call(key: str, function: Callable[[Session], str]) -> None:
        try:
            results[key] = writer.write(function)
        except Exception as error:
            results[key] = error

    leader = threading.Thread(target=call, args=("first", first))
    leader.start()
    assert inside.wait(timeout=10)
    threads = [
        threading.Thread(target=call, args=(str(index), function))
        for index, function in enumerate(functions)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while len(writer._pending) < len(functions) and time.monotonic() < deadline:
        time.sleep(0.005)
    gate.set()
    for thread in [leader, *threads]:
        thread.join(timeout=10)
    return results


def test_concurrent_writes_share_transactions(store: Store) -> None:
    writer = GroupWriter(store)
    functions = [add_event(f"event-{index}") for index in range(20)]
    results = queue_behind_gate(writer, functions)
    assert results["first"] == "first"
    for index in range(20):
        assert results[str(index)] == f"event-{index}"
    assert subjects(store) == {"first", *(f"event-{index}" for index in range(20))}
    # One transaction for the write that held the gate, one for the rest.
    assert writer.transactions == 2


def test_failing_write_fails_alone(store: Store) -> None:
    writer = GroupWriter(store)

    def broken(session: Session) -> str:
        add_event("broken")(session)
        raise StateError("this write is invalid")

    functions = [add_event("before"), broken, add_event("after")]
    results = queue_behind_gate(writer, functions)
    assert results["0"] == "before"
    assert isinstance(results["1"], StateError)
    assert results["2"] == "after"
    assert subjects(store) == {"first", "before", "after"}


def test_guard_failure_stops_every_write(store: Store) -> None:
    def guard(session: Session) -> None:
        raise StateError("this replica is no longer the leader")

    writer = GroupWriter(store, guard)
    with pytest.raises(StateError, match="no longer the leader"):
        writer.write(add_event("fenced"))
    assert subjects(store) == set()


def test_guard_runs_in_write_transaction(store: Store) -> None:
    seen: list[int] = []

    def guard(session: Session) -> None:
        count = session.scalar(select(func.count()).select_from(EventRecord))
        seen.append(int(count or 0))

    writer = GroupWriter(store, guard)
    writer.write(add_event("one"))
    writer.write(add_event("two"))
    assert seen == [0, 1]


def test_write_durable_on_return(store_url: str, store: Store) -> None:
    writer = GroupWriter(store)
    writer.write(add_event("durable"))
    other = Store(store_url)
    try:
        assert subjects(other) == {"durable"}
    finally:
        other.close()


def test_interrupt_fails_whole_batch(store: Store) -> None:
    writer = GroupWriter(store)

    def interrupted(session: Session) -> str:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        writer.write(interrupted)
    # The writer is usable again: nothing is left marked as committing.
    assert writer.write(add_event("after")) == "after"
    assert subjects(store) == {"after"}
