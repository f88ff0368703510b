"""The result table, the targets it checks and the machine it ran on."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass, field
from importlib import metadata


@dataclass(frozen=True)
class Row:
    """One line of the result table.

    ``result`` is ``met``, ``missed by ...`` or ``-`` when no target applies.
    """

    benchmark: str
    pkifed: str
    reference: str
    ratio: str
    target: str
    result: str


@dataclass
class Section:
    """Rows of one benchmark, with lines that explain them."""

    rows: list[Row] = field(default_factory=list)
    details: list[str] = field(default_factory=list)


def at_least(value: float, target: float, unit: str = "") -> str:
    """``met``, or how far ``value`` falls short of a lower bound."""
    if value >= target:
        return "met"
    return f"missed by {target - value:.3g}{unit}"


def at_most(value: float, target: float, unit: str = "") -> str:
    """``met``, or how far ``value`` exceeds an upper bound."""
    if value <= target:
        return "met"
    return f"missed by {value - target:.3g}{unit} ({value / target:.1f}x)"


COLUMNS = ("benchmark", "pkifed", "reference", "ratio", "target", "result")


def render_table(rows: list[Row]) -> str:
    """Format the rows as one plain-text table with a header."""
    cells = [list(COLUMNS)] + [
        [r.benchmark, r.pkifed, r.reference, r.ratio, r.target, r.result] for r in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = []
    for index, line in enumerate(cells):
        lines.append(
            " | ".join(
                cell.ljust(width) for cell, width in zip(line, widths, strict=True)
            )
        )
        if index == 0:
            lines.append("-+-".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _openssl_version() -> str:
    try:
        result = subprocess.run(
            ["openssl", "version"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "not found"
    return result.stdout.strip()


def machine_description() -> list[str]:
    """Describe the CPU, memory and software versions, one fact per line."""
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("cryptography", "SQLAlchemy", "pydantic", "click")
    )
    return [
        f"CPU: {_cpu_model()}, {os.cpu_count()} cores; memory {_memory_gib()}",
        f"Python {platform.python_version()} on {platform.platform()}",
        f"Libraries: {versions}; {_openssl_version()}",
        "Load average (1, 5, 15 min) at the end: "
        + ", ".join(f"{load:.2f}" for load in os.getloadavg()),
    ]
