"""Latency hiding: one pass over a federation whose providers respond after 25 ms.

Four local keystores stand in for four cloud KMSs: each remote call waits
25 ms first (see DelayedLocalProvider). The pass is the real reconciler's plan
and apply, issuing every authority from nothing.
"""

from __future__ import annotations

import datetime
import math
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event

from bench.federation import (
    DelayedLocalProvider,
    TimedReconciler,
    depth,
    install_delayed_providers,
    opened,
    write_federation,
)
from bench.report import Row, Section, at_most
from pkifed.federation.store import Store

TARGET_SECONDS = 2.0


class _CommitCounter:
    """Counts the state store's writing commits through SQLAlchemy engine events.

    A commit counts when its transaction ran an INSERT, UPDATE or DELETE, so
    read-only transactions, which SQLite commits without syncing, are left out.
    """

    def __init__(self, store: Store) -> None:
        self.count = 0
        self._lock = threading.Lock()
        event.listen(store.engine, "before_cursor_execute", self._on_execute)
        event.listen(store.engine, "commit", self._on_commit)

    def _on_execute(self, connection: Any, *arguments: Any) -> None:
        statement = str(arguments[1]).lstrip().upper()
        if statement.startswith(("INSERT", "UPDATE", "DELETE")):
            connection.info["pkifed_bench_writes"] = True

    def _on_commit(self, connection: Any) -> None:
        if connection.info.pop("pkifed_bench_writes", False):
            with self._lock:
                self.count += 1


def commit_cost(directory: Path, commits: int) -> float:
    """Seconds one small state-store commit takes on this file system."""
    directory.mkdir(parents=True, exist_ok=True)
    store = Store(f"sqlite:///{directory / 'commit-cost.db'}")
    store.initialise()
    try:
        start = time.perf_counter()
        for index in range(commits):
            with store.transaction() as session:
                store.record_event(
                    session,
                    at=datetime.datetime.now(datetime.UTC),
                    kind="benchmark",
                    subject=f"commit {index}",
                    outcome="done",
                    message="",
                )
        return (time.perf_counter() - start) / commits
    finally:
        store.close()


def run_pass(directory: Path, count: int, concurrency: int) -> dict[str, object]:
    """Issue ``count`` authorities in one delayed pass; return what was measured."""
    path = write_federation(directory, count, concurrency)
    with opened(path) as (config, store, runtime):
        providers = install_delayed_providers(runtime)
        commits = _CommitCounter(store)
        reconciler = TimedReconciler(config, store, runtime)
        start = time.perf_counter()
        plan = reconciler.plan()
        result = reconciler.apply(plan)
        wall = time.perf_counter() - start
    if result.failed or plan.problems:
        raise RuntimeError(
            f"the delayed pass did not converge: {len(result.failed)} actions "
            f"failed, {len(plan.problems)} problems"
        )
    calls = {name: sum(p.calls.values()) for name, p in providers.items()}
    return {
        "wall": wall,
        "calls": calls,
        "commits": commits.count,
        "timings": reconciler.timings,
        "actions": len(plan.actions),
    }


def run(directory: Path, count: int, concurrencies: tuple[int, ...]) -> Section:
    """Run the delayed pass at each concurrency and compare it with its bounds."""
    section = Section()
    delay = DelayedLocalProvider.delay
    levels = depth(count)
    per_commit = commit_cost(directory / "commit-cost", 100)
    section.details.append(
        f"State store: one commit takes {per_commit * 1000:.2f} ms here (SQLite, "
        "WAL, synchronous=FULL); the reconciler groups writes that arrive during a "
        "commit into the next transaction."
    )
    for concurrency in concurrencies:
        measured = run_pass(directory / f"c{concurrency}", count, concurrency)
        wall = float(measured["wall"])  # type: ignore[arg-type]
        calls: dict[str, int] = measured["calls"]  # type: ignore[assignment]
        total_calls = sum(calls.values())
        sequential = total_calls * delay
        ideal = math.ceil(total_calls / concurrency) * delay + levels * delay
        section.rows.append(
            Row(
                f"latency: {count} CAs, 25 ms calls, concurrency {concurrency}",
                f"{wall:.2f} s",
                f"sequential {sequential:.1f} s, ideal {ideal:.2f} s",
                f"{wall / sequential:.3f} of seq., {wall / ideal:.1f}x ideal",
                f"< {TARGET_SECONDS:g} s",
                at_most(wall, TARGET_SECONDS, " s"),
            )
        )
        commits = int(measured["commits"])  # type: ignore[call-overload]
        phases = ", ".join(
            f"{label} {seconds:.2f} s"
            for label, seconds in measured["timings"]  # type: ignore[attr-defined]
        )
        section.details.append(
            f"Concurrency {concurrency}: {total_calls} delayed calls "
            f"({', '.join(f'{n} {c}' for n, c in calls.items())}), "
            f"{measured['actions']} actions, {commits} writing commits "
            f"(about {commits * per_commit:.1f} s of serialised commit time), "
            f"depth {levels}. Phases: {phases}"
        )
    return section
