"""The benchmarks at their small size, so none of them stops working unnoticed.

Only completion and the table's rows are checked: timings on a shared CI
machine are not meaningful, and the targets are checked by the benchmark itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

EXPECTED_ROWS = (
    "signing ec-p256: RemoteKey",
    "signing ec-p256: build_ca_certificate",
    "signing ec-p384: RemoteKey",
    "signing ec-p384: build_ca_certificate",
    "latency: 24 CAs, 25 ms calls, concurrency 16",
    "latency: 24 CAs, 25 ms calls, concurrency 64",
    "no-op plan: 10 CAs,",
    "no-op plan: 20 CAs,",
    "no-op plan: 40 CAs,",
    "CRL: 500 entries, ec-p384",
    "footprint: daemon-like, 40 CAs",
    "start: pkifed --help, median of 3",
)


@pytest.mark.slow
def test_small_run_prints_every_row() -> None:
    # One test, so pytest-xdist never runs the benchmarks twice in parallel.
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--size", "small"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=ROOT,
    )
    table_lines = [
        line for line in result.stdout.splitlines() if line.count(" | ") == 5
    ]

    assert result.returncode == 0, result.stderr[-3000:]
    assert "pkifed benchmarks, size small" in result.stdout
    for row in EXPECTED_ROWS:
        assert any(line.startswith(row) for line in table_lines), (
            f"row {row!r} missing from:\n{result.stdout}"
        )
