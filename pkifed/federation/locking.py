"""One apply at a time per state store.

Two applies on the same federation would each find a key missing and create
one, so apply takes an exclusive lock first: a lock file beside a SQLite
database, or a PostgreSQL session advisory lock, which the server releases
when the holding connection dies, so a killed process never leaves it stuck.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from pkifed.errors import StateError


class LockHeldError(StateError):
    """Another pkifed process holds the lock on this state store."""


def _describe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@contextlib.contextmanager
def exclusive_run(url: str, purpose: str = "apply") -> Iterator[None]:
    """Hold the state store's run lock, or raise LockHeldError at once.

    Raises:
        LockHeldError: another process holds the lock.
        StateError: the lock could not be taken for another reason.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:":
            yield
            return
        with _file_lock(Path(f"{database}.lock"), url, purpose):
            yield
        return
    with _advisory_lock(url, purpose):
        yield


@contextlib.contextmanager
def _file_lock(path: Path, url: str, purpose: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeldError(
                f"another pkifed {purpose} is running against state store "
                f"{_describe(url)} (lock file {path}); wait for it to finish"
            ) from None
        yield
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def _advisory_lock(url: str, purpose: str) -> Iterator[None]:
    # The lock id is derived from the URL so different databases on one
    # server never contend; 63 bits keep it inside PostgreSQL's bigint.
    lock_id = int.from_bytes(hashlib.sha256(url.encode()).digest()[:8], "big") >> 1
    try:
        engine = create_engine(url, pool_pre_ping=True)
        connection = engine.connect()
    except (SQLAlchemyError, ImportError) as error:
        raise StateError(
            f"state store {_describe(url)}: cannot connect to take the run lock: "
            f"{type(error).__name__}"
        ) from error
    try:
        acquired = connection.execute(
            text("SELECT pg_try_advisory_lock(:id)"), {"id": lock_id}
        ).scalar()
        if not acquired:
            raise LockHeldError(
                f"another pkifed {purpose} is running against state store "
                f"{_describe(url)}; wait for it to finish"
            )
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id})
    finally:
        connection.close()
        engine.dispose()
