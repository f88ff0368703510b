"""Durations written as ``20y``, ``90d``, ``12h`` or ``30m`` in configuration files."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

# A year is 365 days and a month 30 days. Calendar arithmetic would make a
# certificate's lifetime depend on the day it was issued, which makes plans
# harder to predict; the difference is at most a few days over decades.
_UNITS = {
    "y": timedelta(days=365),
    "mo": timedelta(days=30),
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
}
# Certificates end in 9999 at the latest (RFC 5280 section 4.1.2.5), so a
# century leaves room for any real CA while keeping datetime arithmetic in range.
MAX_DURATION = timedelta(days=36500)

_PATTERN = re.compile(r"^(?P<count>\d+)\s*(?P<unit>y|mo|w|d|h|m|s)$")


def parse_duration(value: Any) -> timedelta:
    """Parse ``<number><unit>`` with unit y, mo, w, d, h, m or s."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as '90d' or '20y', got {value!r}")
    match = _PATTERN.match(value.strip())
    if match is None:
        raise ValueError(
            f"invalid duration {value!r}; expected a number and a unit "
            "(y, mo, w, d, h, m, s), such as '90d' or '20y'"
        )
    count = int(match["count"])
    unit = _UNITS[match["unit"]]
    if count * unit.total_seconds() > MAX_DURATION.total_seconds():
        raise ValueError(f"duration {value!r} is longer than the maximum, 100y")
    duration = count * unit
    if duration <= timedelta(0):
        raise ValueError(f"duration {value!r} must be longer than zero")
    return duration


def format_duration(duration: timedelta) -> str:
    """Write a duration in the largest unit that divides it exactly."""
    for unit, size in _UNITS.items():
        if duration % size == timedelta(0):
            return f"{duration // size}{unit}"
    return f"{int(duration.total_seconds())}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
