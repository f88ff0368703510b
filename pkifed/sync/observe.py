"""Observation: what the state store records and what providers and targets hold.

Provider and target reads run concurrently, bounded by ``reconcile.concurrency``,
so a pass over many remote objects waits roughly for the slowest call rather
than for the sum of all of them. Each managed object is read at most once.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from pkifed.errors import PkifedError
from pkifed.federation.publishing import IssuedCertificate, Snapshot, read_snapshot
from pkifed.providers.base import KeyInfo
from pkifed.providers.targets.base import StoredObject

T = TypeVar("T")


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


__all__ = [
    "IssuedCertificate",
    "KeyOutcome",
    "ObjectOutcome",
    "Outcome",
    "Snapshot",
    "read_snapshot",
    "run_bounded",
]
