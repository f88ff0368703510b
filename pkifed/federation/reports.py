"""Rendering the inventory for people (a table) and for programs (JSON)."""

from __future__ import annotations

import json

from pkifed.federation.inventory import Inventory


def render_json(inventory: Inventory) -> str:
    """The inventory as indented JSON, keys in a stable order."""
    return json.dumps(inventory.to_dict(), indent=2) + "\n"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [
            max(width, len(cell)) for width, cell in zip(widths, row, strict=True)
        ]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    ]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        )
    return "\n".join(lines)


def render_table(inventory: Inventory) -> str:
    """The inventory as aligned text tables for a terminal."""
    authority_rows = [
        [
            entry.name,
            entry.parent or "-",
            entry.provider,
            entry.algorithm or "-",
            entry.protection_level or "-",
            entry.not_after[:10] or "not issued",
            "-" if entry.days_left is None else str(entry.days_left),
            entry.serial[:16] or "-",
        ]
        for entry in inventory.authorities
    ]
    sections = [
        f"Federation {inventory.federation} at {inventory.generated_at}",
        "",
        _table(
            [
                "AUTHORITY",
                "PARENT",
                "PROVIDER",
                "ALGORITHM",
                "PROTECTION",
                "EXPIRES",
                "DAYS",
                "SERIAL",
            ],
            authority_rows,
        ),
    ]
    bundle_rows = [
        [
            bundle.name,
            target.name,
            target.location or "not published",
            target.sha256[:16],
        ]
        for bundle in inventory.bundles
        for target in bundle.targets
    ]
    if bundle_rows:
        sections += [
            "",
            _table(["BUNDLE", "TARGET", "LOCATION", "SHA256"], bundle_rows),
        ]
    return "\n".join(sections) + "\n"
