"""Footprint: peak memory of a daemon-like process, and the command line's start.

The memory figure comes from a child process that loads a converged
federation, runs one no-op plan, keeps every object alive and then reports
its peak resident set (VmHWM in /proc/self/status). Start times are the
median wall time of fresh processes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.report import Row, Section, at_most

MEMORY_TARGET_MB = 200.0
START_TARGET_SECONDS = 0.3
CLOUD_IMPORTS = "import boto3, google.cloud.kms, azure.keyvault.keys, pkcs11"

# Run by a fresh interpreter, so nothing the benchmark loaded counts.
_DAEMON_CHILD = """
import json, sys, time
start = time.perf_counter()
from pkifed.config.loader import load_config
from pkifed.federation.runtime import Runtime
from pkifed.federation.store import Store
from pkifed.sync.reconcile import Reconciler

def peak_kib():
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1

imported = peak_kib()
config = load_config(sys.argv[1])
store = Store(config.state_url)
runtime = Runtime(config)
reconciler = Reconciler(config, store, runtime)
plan = reconciler.plan()
alive = (config, store, runtime, reconciler, plan)
print(json.dumps({
    "peak_kib": peak_kib(),
    "imported_kib": imported,
    "actions": len(plan.actions),
    "seconds": time.perf_counter() - start,
}))
"""


def _child_environment() -> dict[str, str]:
    """Build the environment for child processes, importing pkifed beside bench/.

    The repository root goes first on PYTHONPATH, so children run the same
    pkifed as this process even when another copy is installed.
    """
    root = str(Path(__file__).resolve().parent.parent)
    existing = os.environ.get("PYTHONPATH")
    path = root if not existing else f"{root}{os.pathsep}{existing}"
    return {**os.environ, "PYTHONPATH": path}


def _pkifed_command() -> list[str]:
    script = Path(sys.executable).parent / "pkifed"
    if script.exists():
        return [str(script)]
    found = shutil.which("pkifed")
    return [found] if found else [sys.executable, "-m", "pkifed"]


def _median_start(command: list[str], runs: int) -> float:
    durations = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            command, capture_output=True, check=True, env=_child_environment()
        )
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def _import_costs(limit: int) -> list[str]:
    """List the direct imports of pkifed.sync.cli by cumulative time, largest first.

    python -X importtime indents each module by two spaces per level and
    charges a module shared by several importers to the first one.
    """
    command = [sys.executable, "-X", "importtime", "-m", "pkifed", "--help"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    pattern = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)")
    # A module's line follows the lines of everything it imported, so the
    # second-level lines just before pkifed.sync.cli's line are its imports.
    costs: list[tuple[int, str]] = []
    pending: list[tuple[int, str]] = []
    total = 0
    for line in result.stderr.splitlines():
        match = pattern.match(line)
        if match is None:
            continue
        name, indent = match.group(4), len(match.group(3))
        if indent == 3:
            pending.append((int(match.group(2)), name))
        elif indent == 1:
            if name == "pkifed.sync.cli":
                total = int(match.group(2))
                costs = pending
            pending = []
    costs.sort(reverse=True)
    lines = [f"  pkifed.sync.cli with everything it imports: {total / 1000:.1f} ms"]
    lines += [f"  {micros / 1000:7.1f} ms  {name}" for micros, name in costs[:limit]]
    return lines


def memory_row(federation_file: Path, count: int) -> tuple[Row, str]:
    """Measure the daemon-like child over a converged federation file."""
    result = subprocess.run(
        [sys.executable, "-c", _DAEMON_CHILD, str(federation_file)],
        capture_output=True,
        text=True,
        check=True,
        env=_child_environment(),
    )
    measured = json.loads(result.stdout)
    baseline = subprocess.run(
        [sys.executable, "-c", _DAEMON_CHILD.split("imported = ")[0] + _PRINT_PEAK],
        capture_output=True,
        text=True,
        check=True,
        env=_child_environment(),
    )
    peak_mb = measured["peak_kib"] / 1024
    interpreter_mb = int(baseline.stdout) / 1024
    row = Row(
        f"footprint: daemon-like, {count} CAs",
        f"{peak_mb:.0f} MB peak RSS",
        f"{interpreter_mb:.0f} MB after imports only",
        f"{peak_mb / interpreter_mb:.1f}x",
        f"< {MEMORY_TARGET_MB:g} MB",
        at_most(peak_mb, MEMORY_TARGET_MB, " MB"),
    )
    detail = (
        f"Daemon-like process at {count} authorities: peak {peak_mb:.1f} MB, "
        f"{measured['actions']} actions planned (a no-op), load and plan "
        f"{measured['seconds']:.2f} s"
    )
    return row, detail


_PRINT_PEAK = """
with open("/proc/self/status", encoding="ascii") as status:
    for line in status:
        if line.startswith("VmHWM:"):
            print(line.split()[1])
"""


def run(federation_file: Path, count: int, runs: int) -> Section:
    """Measure memory at ``count`` authorities and the start of ``pkifed --help``."""
    section = Section()
    row, detail = memory_row(federation_file, count)
    section.rows.append(row)
    section.details.append(detail)

    pkifed = _median_start([*_pkifed_command(), "--help"], runs)
    cloud = _median_start([sys.executable, "-c", CLOUD_IMPORTS], runs)
    interpreter = _median_start([sys.executable, "-c", "pass"], runs)
    section.rows.append(
        Row(
            f"start: pkifed --help, median of {runs}",
            f"{pkifed:.3f} s",
            f"{cloud:.3f} s (import the 4 cloud SDKs)",
            f"{pkifed / cloud:.2f}",
            f"< {START_TARGET_SECONDS:g} s",
            at_most(pkifed, START_TARGET_SECONDS, " s"),
        )
    )
    section.details.append(f"An empty Python process starts in {interpreter:.3f} s.")
    if pkifed > START_TARGET_SECONDS:
        section.details.append(
            "Top imports of pkifed --help by cumulative time (python -X importtime):"
        )
        section.details.extend(_import_costs(12))
    return section
