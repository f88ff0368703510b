"""No-op reconcile: a plan over a converged federation reads and never writes.

Each size is converged with the real reconciler first. The plan then runs
against counting providers and targets, which tally every public call, and
is timed over a few repetitions.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from bench.federation import (
    CallLog,
    install_counters,
    opened,
    write_federation,
)
from bench.report import Row, Section
from pkifed.sync.reconcile import Reconciler

MAX_EXPONENT = 1.15


def converge(directory: Path, count: int) -> Path:
    """Write and converge a federation of ``count`` authorities; return its file."""
    path = write_federation(directory, count, concurrency=16)
    with opened(path) as (config, store, runtime):
        results = Reconciler(config, store, runtime).converge()
    last = results[-1]
    if not last.plan.empty or any(r.failed for r in results):
        raise RuntimeError(f"the federation of {count} authorities did not converge")
    return path


def measure(path: Path, repetitions: int) -> dict[str, object]:
    """Count the calls of one no-op plan, and time the best of ``repetitions``."""
    log = CallLog()
    with opened(path) as (config, store, runtime):
        install_counters(runtime, log)
        reconciler = Reconciler(config, store, runtime)
        plan = reconciler.plan()
        reads, writes = dict(log.reads), dict(log.writes)
        best = math.inf
        for _ in range(repetitions):
            start = time.perf_counter()
            reconciler.plan()
            best = min(best, time.perf_counter() - start)
        managed = len(config.model.authorities) + len(reconciler._desired_objects())
    return {
        "actions": len(plan.actions),
        "reads": reads,
        "writes": writes,
        "seconds": best,
        "managed": managed,
    }


def run(directory: Path, sizes: tuple[int, ...], repetitions: int) -> Section:
    """Converge each size, then measure its no-op plan."""
    section = Section()
    measured: dict[int, dict[str, object]] = {}
    for count in sizes:
        path = converge(directory / f"n{count}", count)
        measured[count] = measure(path, repetitions)

    smallest = sizes[0]
    base = float(measured[smallest]["seconds"]) / int(measured[smallest]["managed"])  # type: ignore[arg-type, call-overload]
    for index, count in enumerate(sizes):
        values = measured[count]
        managed = int(values["managed"])  # type: ignore[call-overload]
        seconds = float(values["seconds"])  # type: ignore[arg-type]
        reads: dict[str, int] = values["reads"]  # type: ignore[assignment]
        writes: dict[str, int] = values["writes"]  # type: ignore[assignment]
        per_object = seconds / managed
        reads_per_object = sum(reads.values()) / managed
        problems = []
        if reads_per_object > 1:
            problems.append(f"{reads_per_object:.2f} reads/object")
        if writes:
            problems.append(f"{sum(writes.values())} writes")
        if values["actions"]:
            problems.append(f"{values['actions']} actions")
        growth = "-"
        if index > 0:
            previous = sizes[index - 1]
            exponent = math.log(
                seconds / float(measured[previous]["seconds"])  # type: ignore[arg-type]
            ) / math.log(count / previous)
            growth = f"t ~ n^{exponent:.2f} from n={previous}"
            if exponent > MAX_EXPONENT:
                problems.append(f"grows as n^{exponent:.2f}, not linearly")
        section.rows.append(
            Row(
                f"no-op plan: {count} CAs, {managed} objects",
                f"{seconds * 1000:.1f} ms, {per_object * 1e6:.0f} us/object",
                f"{reads_per_object:.2f} reads, {sum(writes.values())} writes "
                "per object",
                f"{per_object / base:.2f}x us/object at n={smallest}; {growth}",
                f"<= 1 read, 0 writes, t ~ n^<={MAX_EXPONENT}",
                "met" if not problems else "missed: " + "; ".join(problems),
            )
        )
        section.details.append(
            f"No-op plan at {count} authorities: reads {reads}, writes {writes}"
        )
    return section
