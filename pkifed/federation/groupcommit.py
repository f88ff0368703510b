"""Group commit: state writes from many threads share one transaction.

Each commit to the state store waits for the disk (SQLite with
``synchronous=FULL`` calls fsync), so worker threads that write one
transaction at a time queue behind each other's fsync. :class:`GroupWriter`
queues the writes that arrive while a commit is under way and runs them
together in the next transaction. A caller still returns only after its own
write is durable, so nothing that follows a write ever runs before the write
is on disk.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from pkifed.federation.store import Store

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Called first in every transaction, with the transaction's session; raises to
# stop the writes, such as when a daemon has lost its leadership.
Guard = Callable[[Session], None]


@dataclass
class _Write:
    function: Callable[[Session], Any]
    finished: bool = False
    result: Any = None
    error: BaseException | None = None


class GroupWriter:
    """Runs write functions in shared transactions, each durable on return.

    A write function must only change the session: if the shared transaction
    fails, each function of the batch runs again in a transaction of its own,
    so a failing write does not fail the others. A failing guard fails them all.
    """

    def __init__(self, store: Store, guard: Guard | None = None) -> None:
        self.store = store
        self.guard = guard
        self._condition = threading.Condition()
        self._pending: list[_Write] = []
        self._committing = False
        self.transactions = 0

    def write(self, function: Callable[[Session], T]) -> T:
        """Run ``function`` in a transaction and return its result once committed.

        Raises:
            Whatever ``function`` or the guard raised, or StateError when the
            commit failed.
        """
        item = _Write(function)
        with self._condition:
            self._pending.append(item)
            while self._committing and not item.finished:
                self._condition.wait()
            if not item.finished:
                # No commit is under way, so this thread commits every write
                # queued so far, its own included.
                self._committing = True
                batch, self._pending = self._pending, []
            else:
                batch = []
        if batch:
            try:
                self._commit(batch)
            finally:
                with self._condition:
                    for done in batch:
                        done.finished = True
                    self._committing = False
                    self._condition.notify_all()
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[no-any-return]

    def _commit(self, batch: list[_Write]) -> None:
        try:
            self._run(batch)
        except Exception as error:
            if len(batch) == 1:
                batch[0].error = error
                return
            logger.debug(
                "a batch of %d state writes failed (%s); writing each on its own",
                len(batch),
                error,
            )
            for item in batch:
                try:
                    self._run([item])
                except Exception as single_error:
                    item.error = single_error
        except BaseException as error:
            # An interrupt stops every write of the batch, not only this thread's.
            for item in batch:
                item.error = error
            raise

    def _run(self, batch: list[_Write]) -> None:
        self.transactions += 1
        with self.store.transaction() as session:
            if self.guard is not None:
                self.guard(session)
            for item in batch:
                item.result = item.function(session)
