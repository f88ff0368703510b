"""The HTML report: one self-contained page with inline CSS and inline SVG.

The page has no scripts and references no URL, so it renders the same offline.
Every value is escaped with :func:`html.escape`.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from pkifed.config.policy import Severity
from pkifed.federation.inventory import AuthorityEntry, TargetEntry
from pkifed.federation.policy import Finding
from pkifed.federation.report_assets.style import (
    SEVERITY_COLOURS,
    SEVERITY_TINTS,
    STYLESHEET,
)
from pkifed.federation.report_assets.svg import hierarchy_svg, timeline_svg

if TYPE_CHECKING:
    from pkifed.federation.reports import Report


def _pill(label: str, key: str) -> str:
    return (
        f'<span class="pill" style="color:{SEVERITY_COLOURS[key]};'
        f'background:{SEVERITY_TINTS[key]}">{escape(label)}</span>'
    )


def _cell(value: object, css: str = "") -> str:
    text = "" if value is None else str(value)
    attribute = f' class="{css}"' if css else ""
    return f"<td{attribute}>{escape(text)}</td>"


def _colours(report: Report) -> dict[str, str]:
    # Info findings are advice, so an authority with nothing worse is drawn as ok.
    colours = {}
    for entry in report.inventory.authorities:
        worst = report.worst_severity(entry.name)
        key = "ok" if worst in (None, Severity.INFO) else str(worst)
        colours[entry.name] = SEVERITY_COLOURS[key]
    return colours


def _cards(report: Report) -> str:
    summary = report.policy.summary()
    cards = [
        ("Authorities", len(report.inventory.authorities), "#0f172a"),
        *(
            (str(s).capitalize(), summary["findings"][str(s)], SEVERITY_COLOURS[s])
            for s in reversed(Severity)
        ),
        ("Waived", summary["waived"], "#94a3b8"),
    ]
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card" style="border-top-color:{colour}">'
            f'<div class="value">{escape(str(value))}</div>'
            f'<div class="label">{escape(label)}</div></div>'
            for label, value, colour in cards
        )
        + "</div>"
    )


def _finding_row(finding: Finding) -> str:
    waiver = ""
    if finding.waiver is not None:
        waiver = (
            f"{finding.waiver.owner} until {finding.waiver.expires}: "
            f"{finding.waiver.reason}"
        )
    css = ' class="waived"' if finding.waived else ""
    return (
        f"<tr{css}><td>{_pill(finding.severity, finding.severity)}</td>"
        + _cell(finding.id, "mono nowrap")
        + _cell(finding.message)
        + _cell(finding.remediation)
        + _cell(waiver)
        + "</tr>"
    )


def _findings(report: Report) -> str:
    if not report.policy.findings:
        return "<p>No findings.</p>"
    rows = "".join(_finding_row(f) for f in report.policy.findings)
    return (
        '<div class="scroll"><table><thead><tr><th>Severity</th><th>Id</th>'
        "<th>Message</th><th>Remediation</th><th>Waiver</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div>"
    )


def _state_pill(state: str) -> str:
    keys = {"in-sync": "ok", "drifted": "high", "missing": "high"}
    return _pill(state, keys.get(state, "info"))


def _targets(entries: list[TargetEntry]) -> str:
    if not entries:
        return '<span class="muted">none</span>'
    return "<br>".join(
        f"{escape(t.name)}/{escape(t.object_name)} {_state_pill(t.state)}"
        for t in entries
    )


def _chain(entry: AuthorityEntry) -> str:
    if entry.chain.valid is None:
        return '<span class="muted">not issued</span>'
    if entry.chain.valid:
        return _pill("valid", "ok")
    problems = escape("; ".join(entry.chain.problems))
    return f'{_pill("invalid", "critical")}<br><span class="muted">{problems}</span>'


def _name_cell(entry: AuthorityEntry, colour: str) -> str:
    return (
        f'<td style="border-left:4px solid {colour}"><b>{escape(entry.name)}</b>'
        f'<br><span class="muted">{escape(entry.level)}</span></td>'
    )


def _authority_row(entry: AuthorityEntry, colour: str) -> str:
    days = "" if entry.days_left is None else entry.days_left
    validity = ""
    if entry.not_after:
        validity = f"{entry.not_before[:10]} to {entry.not_after[:10]}"
    return (
        "<tr>"
        + _name_cell(entry, colour)
        + _cell(entry.parent or "")
        + _cell(f"{entry.provider} ({entry.provider_type})")
        + _cell(
            f"{entry.algorithm or entry.configured_algorithm} "
            f"({entry.key_size or '?'} bits)"
        )
        + _cell(entry.protection_level)
        + _cell(entry.key_state)
        + _cell(validity, "nowrap")
        + _cell(days)
        + _cell(entry.crl.state)
        + _cell(", ".join(entry.bundles))
        + f"<td>{_targets(entry.publications)}</td>"
        + f"<td>{_chain(entry)}</td></tr>"
    )


def _certificate_row(entry: AuthorityEntry, colour: str) -> str:
    constraints = ""
    if entry.name_constraints is not None:
        constraints = "; ".join(
            [f"permitted {n}" for n in entry.name_constraints.permitted]
            + [f"excluded {n}" for n in entry.name_constraints.excluded]
        )
    return (
        "<tr>"
        + _name_cell(entry, colour)
        + _cell(entry.subject)
        + _cell(entry.issuer)
        + _cell(entry.serial, "mono")
        + _cell(entry.signature_algorithm)
        + _cell("no limit" if entry.path_length is None else entry.path_length)
        + _cell(constraints)
        + _cell(entry.key_uri, "mono")
        + "<td>"
        + "".join(
            f'<div class="mono"><span class="muted">{label}</span> '
            f"{escape(value or '-')}</div>"
            for label, value in (
                ("SHA-256", entry.fingerprint_sha256),
                ("SKI", entry.subject_key_identifier),
                ("AKI", entry.authority_key_identifier),
            )
        )
        + "</td></tr>"
    )


def _table(headers: tuple[str, ...], rows: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )


def _inventory(report: Report, colours: dict[str, str]) -> str:
    entries = report.inventory.authorities
    return _table(
        (
            "Authority",
            "Parent",
            "Provider",
            "Algorithm",
            "Protection",
            "Key state",
            "Validity",
            "Days left",
            "CRL",
            "Bundles",
            "Published objects",
            "Chain",
        ),
        "".join(_authority_row(e, colours[e.name]) for e in entries),
    )


def _certificates(report: Report, colours: dict[str, str]) -> str:
    entries = report.inventory.authorities
    return _table(
        (
            "Authority",
            "Subject",
            "Issuer",
            "Serial",
            "Signature",
            "Path length",
            "Name constraints",
            "Key URI",
            "Fingerprint and key identifiers",
        ),
        "".join(_certificate_row(e, colours[e.name]) for e in entries),
    )


def _bundles(report: Report) -> str:
    rows = "".join(
        "<tr>"
        + _cell(bundle.name)
        + _cell(", ".join(bundle.authorities))
        + _cell(target.name)
        + _cell(target.location, "mono")
        + f"<td>{_state_pill(target.state)}</td>"
        + _cell(target.source)
        + _cell(target.sha256[:16], "mono")
        + _cell(target.published_at)
        + "</tr>"
        for bundle in report.inventory.bundles
        for target in bundle.targets
    )
    if not rows:
        return "<p>No bundles configured.</p>"
    return (
        '<div class="scroll"><table><thead><tr><th>Bundle</th><th>Authorities</th>'
        "<th>Target</th><th>Location</th><th>State</th><th>Source</th>"
        "<th>SHA-256</th><th>Published</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div>"
    )


def render_html(report: Report) -> str:
    """Render the report as one HTML page with no external references."""
    inventory = report.inventory
    colours = _colours(report)
    mode = "live observation" if inventory.live else "state store only"
    title = f"PKI report: {inventory.federation}"
    sections = [
        ("Hierarchy by provider", hierarchy_svg(inventory, colours)),
        ("Expiry timeline", timeline_svg(inventory, colours)),
        ("Findings", _findings(report)),
        ("Inventory", _inventory(report, colours)),
        ("Certificates and keys", _certificates(report, colours)),
        ("Bundles", _bundles(report)),
    ]
    body = "".join(
        f'<section><h2>{escape(heading)}</h2><div class="scroll">{content}</div>'
        "</section>"
        for heading, content in sections
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLESHEET}</style></head><body>"
        f"<header><h1>{escape(title)}</h1><p>Generated "
        f'{escape(inventory.generated_at)}<span class="mode">{escape(mode)}</span>'
        "</p></header>"
        f"<main>{_cards(report)}{body}</main>"
        "<footer>Generated by pkifed report. Findings are sorted by severity; "
        "waived findings are greyed out.</footer>"
        "</body></html>\n"
    )
