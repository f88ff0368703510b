"""Inline SVG drawings: the hierarchy grouped by provider, and the expiry timeline.

Every text and attribute value is escaped with :func:`html.escape`, because
names and subjects come from the configuration and the certificates.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable
from dataclasses import dataclass
from html import escape

from pkifed.federation.inventory import AuthorityEntry, Inventory
from pkifed.federation.report_assets.style import PROVIDER_FILLS, SEVERITY_COLOURS

NODE_WIDTH = 236
NODE_HEIGHT = 66
NODE_GAP = 18
ROW_HEIGHT = 112
PROVIDER_PADDING = 16
PROVIDER_HEADER = 34
PROVIDER_GAP = 28
MARGIN = 12

TIMELINE_LABEL = 170
TIMELINE_WIDTH = 1100
TIMELINE_ROW = 30
TIMELINE_HEADER = 34


def _text(value: object, limit: int) -> str:
    """Escape ``value``, shortened with an ellipsis to ``limit`` characters."""
    text = str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return escape(text)


@dataclass(frozen=True)
class _Placed:
    entry: AuthorityEntry
    x: float
    y: float


def _depths(inventory: Inventory) -> dict[str, int]:
    parents = {entry.name: entry.parent for entry in inventory.authorities}
    depths = {}
    for name in parents:
        depth, parent = 0, parents[name]
        while parent is not None and parent in parents and depth < len(parents):
            depth, parent = depth + 1, parents[parent]
        depths[name] = depth
    return depths


def hierarchy_svg(inventory: Inventory, colours: dict[str, str]) -> str:
    """Draw providers as boxes, authorities inside, and lines parent to child.

    ``colours`` maps an authority to the colour of its worst unwaived finding.
    """
    depths = _depths(inventory)
    providers: dict[str, list[AuthorityEntry]] = {}
    for entry in inventory.authorities:
        providers.setdefault(entry.provider, []).append(entry)
    rows = max(depths.values(), default=0) + 1
    types = {p.name: p.type for p in inventory.providers}

    placed: dict[str, _Placed] = {}
    boxes = []
    x = MARGIN
    for index, (provider, entries) in enumerate(providers.items()):
        slots: dict[int, int] = {}
        for entry in entries:
            slot = slots.get(depths[entry.name], 0)
            slots[depths[entry.name]] = slot + 1
            placed[entry.name] = _Placed(
                entry,
                x + PROVIDER_PADDING + slot * (NODE_WIDTH + NODE_GAP),
                MARGIN + PROVIDER_HEADER + depths[entry.name] * ROW_HEIGHT,
            )
        columns = max(slots.values())
        width = 2 * PROVIDER_PADDING + columns * NODE_WIDTH + (columns - 1) * NODE_GAP
        height = PROVIDER_HEADER + rows * ROW_HEIGHT - (ROW_HEIGHT - NODE_HEIGHT) + 16
        label = f"{provider} ({types.get(provider, '?')})"
        fill = PROVIDER_FILLS[index % len(PROVIDER_FILLS)]
        boxes.append(
            f'<rect x="{x}" y="{MARGIN}" width="{width}" height="{height}" rx="10" '
            f'fill="{fill}" stroke="#cbd5e1" stroke-dasharray="4 3"/>'
            f'<text x="{x + PROVIDER_PADDING}" y="{MARGIN + 22}" font-size="13" '
            f'font-weight="600" fill="#334155">{_text(label, 40)}</text>'
        )
        x += width + PROVIDER_GAP

    total_width = x - PROVIDER_GAP + MARGIN
    total_height = 2 * MARGIN + PROVIDER_HEADER + rows * ROW_HEIGHT - 30
    edges = [
        _edge(placed[entry.parent], placed[entry.name])
        for entry in inventory.authorities
        if entry.parent is not None and entry.parent in placed
    ]
    nodes = [
        _node(p, colours.get(p.entry.name, SEVERITY_COLOURS["ok"]))
        for p in placed.values()
    ]
    return (
        f'<svg viewBox="0 0 {total_width} '
        f'{total_height}" width="{total_width}" height="{total_height}" '
        'role="img" aria-label="CA hierarchy by provider" '
        'font-family="system-ui, -apple-system, Segoe UI, Roboto, Arial, sans-serif">'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" '
        'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        '<path d="M0 0 L10 5 L0 10 z" fill="#64748b"/></marker></defs>'
        + "".join(boxes)
        + "".join(edges)
        + "".join(nodes)
        + "</svg>"
    )


def _edge(parent: _Placed, child: _Placed) -> str:
    x1 = parent.x + NODE_WIDTH / 2
    y1 = parent.y + NODE_HEIGHT
    x2 = child.x + NODE_WIDTH / 2
    y2 = child.y - 2
    middle = (y1 + y2) / 2
    return (
        f'<path d="M{x1:.1f} {y1:.1f} C{x1:.1f} {middle:.1f} {x2:.1f} {middle:.1f} '
        f'{x2:.1f} {y2:.1f}" fill="none" stroke="#64748b" stroke-width="1.6" '
        'marker-end="url(#arrow)"/>'
    )


def _node(placed: _Placed, colour: str) -> str:
    entry = placed.entry
    x, y = placed.x, placed.y
    protection = entry.protection_level or "no key"
    detail = f"{entry.algorithm or entry.configured_algorithm} \u00b7 {protection}"
    expiry = f"expires {entry.not_after[:10]}" if entry.not_after else "not issued"
    footer = f"{expiry} \u00b7 {entry.level}"
    tooltip = f"{entry.name}: {entry.subject or 'not issued'}"
    return (
        f"<g><title>{escape(tooltip)}</title>"
        f'<rect x="{x}" y="{y}" width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="6" '
        f'fill="#ffffff" stroke="{colour}" stroke-width="1.5"/>'
        f'<rect x="{x}" y="{y}" width="6" height="{NODE_HEIGHT}" rx="3" '
        f'fill="{colour}"/>'
        f'<text x="{x + 16}" y="{y + 21}" font-size="14" font-weight="600" '
        f'fill="#0f172a">{_text(entry.name, 26)}</text>'
        f'<text x="{x + 16}" y="{y + 39}" font-size="12" fill="#475569">'
        f"{_text(detail, 34)}</text>"
        f'<text x="{x + 16}" y="{y + 56}" font-size="12" fill="#475569">'
        f"{_text(footer, 34)}</text></g>"
    )


def _parse(value: str) -> datetime.datetime:
    parsed = datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    return parsed.replace(tzinfo=datetime.UTC)


def timeline_svg(inventory: Inventory, colours: dict[str, str]) -> str:
    """Draw one bar per issued authority from now to its notAfter, with year ticks."""
    now = _parse(inventory.generated_at)
    issued = [e for e in inventory.authorities if e.not_after]
    if not issued:
        return '<p class="muted">No certificates issued yet.</p>'
    end = max(
        max(_parse(e.not_after) for e in issued), now + datetime.timedelta(days=365)
    )
    span = (end - now).total_seconds()
    plot = TIMELINE_WIDTH - TIMELINE_LABEL - 120

    def position(moment: datetime.datetime) -> float:
        offset = max(0.0, (moment - now).total_seconds())
        return TIMELINE_LABEL + plot * offset / span

    height = TIMELINE_HEADER + len(issued) * TIMELINE_ROW + 10
    parts = [_ticks(now, end, position, height)]
    for row, entry in enumerate(issued):
        y = TIMELINE_HEADER + row * TIMELINE_ROW
        not_after = _parse(entry.not_after)
        colour = colours.get(entry.name, SEVERITY_COLOURS["ok"])
        left = position(now)
        right = max(position(not_after), left + 3)
        days = entry.days_left if entry.days_left is not None else 0
        label = "expired" if not_after <= now else f"{entry.not_after[:10]} ({days} d)"
        parts.append(
            f'<text x="{TIMELINE_LABEL - 10}" y="{y + 15}" font-size="12" '
            f'text-anchor="end" fill="#0f172a">{_text(entry.name, 22)}</text>'
            f'<rect x="{left:.1f}" y="{y + 4}" width="{right - left:.1f}" height="14" '
            f'rx="3" fill="{colour}" opacity="0.85"><title>{escape(entry.name)} '
            f"valid until {escape(entry.not_after)}</title></rect>"
            f'<text x="{right + 6:.1f}" y="{y + 15}" font-size="11" fill="#334155">'
            f"{escape(label)}</text>"
        )
    return (
        f'<svg viewBox="0 0 {TIMELINE_WIDTH} '
        f'{height}" width="{TIMELINE_WIDTH}" height="{height}" role="img" '
        'aria-label="Certificate expiry timeline" '
        'font-family="system-ui, -apple-system, Segoe UI, Roboto, Arial, sans-serif">'
        + "".join(parts)
        + "</svg>"
    )


def _ticks(
    now: datetime.datetime,
    end: datetime.datetime,
    position: Callable[[datetime.datetime], float],
    height: int,
) -> str:
    years = (end - now).days / 365
    step = max(1, math.ceil(years / 10))
    parts = [
        f'<line x1="{position(now):.1f}" y1="20" x2="{position(now):.1f}" '
        f'y2="{height}" stroke="#0f172a" stroke-width="1.2"/>'
        f'<text x="{position(now):.1f}" y="14" font-size="11" text-anchor="middle" '
        f'fill="#0f172a">now</text>'
    ]
    year = now.year + 1
    while True:
        moment = datetime.datetime(year, 1, 1, tzinfo=datetime.UTC)
        if moment > end:
            break
        if (year - now.year) % step == 0:
            x = position(moment)
            parts.append(
                f'<line x1="{x:.1f}" y1="20" x2="{x:.1f}" y2="{height}" '
                'stroke="#e2e8f0"/>'
                f'<text x="{x:.1f}" y="14" font-size="11" text-anchor="middle" '
                f'fill="#64748b">{year}</text>'
            )
        year += 1
    return "".join(parts)
