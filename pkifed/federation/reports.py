"""The report: the inventory with the policy's findings, in five formats.

``table`` is for a terminal, ``json`` for programs (its schema is
``docs/report.schema.json``), ``csv`` for spreadsheets, ``markdown`` for pull
requests and wikis, and ``html`` for people: one self-contained file (see
:mod:`pkifed.federation.report_assets.html`).

CSV columns, one row per authority, in this order (stable: columns are only
ever added at the end):

========================  =========================================================
federation                the federation's name
generated_at              report time, ISO-8601 UTC
authority                 the authority's name
level                     root, intermediate or issuing (by position)
parent                    the parent's name; empty for a root
provider                  the provider's name
provider_type             its type (local, pkcs11, aws-kms, gcp-kms, ...)
key_uri                   the current key's URI
algorithm                 the key's algorithm (ec-p384, rsa-3072, ...)
key_size                  key size in bits
protection_level          hsm or software, as the provider reports it
key_state                 enabled, disabled, ...; unknown unless --live
subject                   RFC 4514 subject
issuer                    RFC 4514 issuer
serial                    serial number in hex
not_before                ISO-8601 UTC
not_after                 ISO-8601 UTC
days_left                 whole days until not_after (negative once expired)
fingerprint_sha256        SHA-256 of the DER certificate, colon-separated hex
subject_key_identifier    SKI, colon-separated hex
authority_key_identifier  AKI key identifier, colon-separated hex
path_length               basic constraints path length; empty: no limit
name_constraints          "permitted a; b | excluded c"; empty: none
signature_algorithm       such as ecdsa-with-sha384
crl_state                 none, current, stale or expired
bundles                   bundle names, separated by ";"
targets                   target/object=state pairs, separated by ";"
chain_valid               true, false, or empty when not issued
findings                  number of unwaived findings on the authority
highest_severity          the highest severity among them; empty: none
========================  =========================================================

A cell that starts with ``=``, ``+``, ``-`` or ``@`` and is not a number gets a
leading ``'``, so spreadsheets do not evaluate it as a formula.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
from dataclasses import dataclass
from typing import Any

from pkifed.config.loader import LoadedConfig
from pkifed.config.policy import Severity
from pkifed.federation.inventory import AuthorityEntry, Inventory, build_inventory
from pkifed.federation.policy import Finding, PolicyResult, evaluate
from pkifed.federation.report_assets.html import render_html
from pkifed.federation.runtime import Runtime
from pkifed.federation.store import Store

FORMAT_VERSION = 1

CSV_COLUMNS = (
    "federation",
    "generated_at",
    "authority",
    "level",
    "parent",
    "provider",
    "provider_type",
    "key_uri",
    "algorithm",
    "key_size",
    "protection_level",
    "key_state",
    "subject",
    "issuer",
    "serial",
    "not_before",
    "not_after",
    "days_left",
    "fingerprint_sha256",
    "subject_key_identifier",
    "authority_key_identifier",
    "path_length",
    "name_constraints",
    "signature_algorithm",
    "crl_state",
    "bundles",
    "targets",
    "chain_valid",
    "findings",
    "highest_severity",
)


@dataclass(frozen=True)
class Report:
    """An inventory and the findings of the policy on it."""

    inventory: Inventory
    policy: PolicyResult

    def to_dict(self) -> dict[str, Any]:
        """Build the JSON document that ``docs/report.schema.json`` describes."""
        inventory = self.inventory.to_dict()
        return {
            "format_version": FORMAT_VERSION,
            "federation": inventory.pop("federation"),
            "generated_at": inventory.pop("generated_at"),
            "live": inventory.pop("live"),
            "summary": {
                "authorities": len(self.inventory.authorities),
                **self.policy.summary(),
            },
            **inventory,
            **self.policy.to_dict(),
        }

    def findings_for(self, authority: str) -> list[Finding]:
        """List the unwaived findings about one authority."""
        return [f for f in self.policy.unwaived if f.authority == authority]

    def worst_severity(self, authority: str) -> Severity | None:
        """Return the highest severity of an authority's unwaived findings."""
        return max(
            (Severity(f.severity) for f in self.findings_for(authority)),
            key=lambda s: s.rank,
            default=None,
        )


def build_report(
    config: LoadedConfig,
    store: Store,
    now: datetime.datetime,
    runtime: Runtime | None = None,
) -> Report:
    """Collect the inventory (live when given a runtime) and evaluate the policy."""
    inventory = build_inventory(config, store, now, runtime)
    return Report(inventory, evaluate(inventory, config.model, now))


# --- JSON -------------------------------------------------------------------------


def render_json(report: Report) -> str:
    """Render the report as indented JSON, keys in a stable order."""
    return json.dumps(report.to_dict(), indent=2) + "\n"


# --- terminal table ---------------------------------------------------------------


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


def _days(entry: AuthorityEntry) -> str:
    return "-" if entry.days_left is None else str(entry.days_left)


def _chain(entry: AuthorityEntry) -> str:
    if entry.chain.valid is None:
        return "-"
    return "valid" if entry.chain.valid else "INVALID"


def _targets_summary(entry: AuthorityEntry) -> str:
    states = sorted({target.state for target in entry.publications})
    return ",".join(states) or "-"


def render_table(report: Report) -> str:
    """Render the report as aligned text tables for a terminal."""
    inventory = report.inventory
    mode = "live" if inventory.live else "from the state store"
    authority_rows = [
        [
            entry.name,
            entry.level,
            entry.parent or "-",
            entry.provider,
            entry.algorithm or "-",
            entry.protection_level or "-",
            entry.key_state,
            entry.not_after[:10] or "not issued",
            _days(entry),
            _chain(entry),
            _targets_summary(entry),
        ]
        for entry in inventory.authorities
    ]
    sections = [
        f"Federation {inventory.federation} at {inventory.generated_at} ({mode})",
        "",
        _table(
            [
                "AUTHORITY",
                "LEVEL",
                "PARENT",
                "PROVIDER",
                "ALGORITHM",
                "PROTECTION",
                "KEY STATE",
                "EXPIRES",
                "DAYS",
                "CHAIN",
                "TARGETS",
            ],
            authority_rows,
        ),
    ]
    bundle_rows = [
        [
            bundle.name,
            target.name,
            target.location or "not published",
            target.state,
            target.sha256[:16],
        ]
        for bundle in inventory.bundles
        for target in bundle.targets
    ]
    if bundle_rows:
        sections += [
            "",
            _table(["BUNDLE", "TARGET", "LOCATION", "STATE", "SHA256"], bundle_rows),
        ]
    sections += ["", _findings_text(report)]
    return "\n".join(sections) + "\n"


def _findings_text(report: Report) -> str:
    if not report.policy.findings:
        return "Findings: none."
    rows = [
        [
            finding.severity.upper(),
            finding.id,
            ("waived until " + finding.waiver.expires) if finding.waiver else "",
            finding.message,
        ]
        for finding in report.policy.findings
    ]
    return _table(["SEVERITY", "ID", "WAIVER", "MESSAGE"], rows)


# --- CSV --------------------------------------------------------------------------


def _name_constraints_text(entry: AuthorityEntry) -> str:
    constraints = entry.name_constraints
    if constraints is None:
        return ""
    parts = []
    if constraints.permitted:
        parts.append("permitted " + "; ".join(constraints.permitted))
    if constraints.excluded:
        parts.append("excluded " + "; ".join(constraints.excluded))
    return " | ".join(parts)


def _chain_valid(entry: AuthorityEntry) -> str:
    if entry.chain.valid is None:
        return ""
    return "true" if entry.chain.valid else "false"


def _csv_row(report: Report, entry: AuthorityEntry) -> dict[str, Any]:
    worst = report.worst_severity(entry.name)
    return {
        "federation": report.inventory.federation,
        "generated_at": report.inventory.generated_at,
        "authority": entry.name,
        "level": entry.level,
        "parent": entry.parent or "",
        "provider": entry.provider,
        "provider_type": entry.provider_type,
        "key_uri": entry.key_uri,
        "algorithm": entry.algorithm,
        "key_size": entry.key_size,
        "protection_level": entry.protection_level,
        "key_state": entry.key_state,
        "subject": entry.subject,
        "issuer": entry.issuer,
        "serial": entry.serial,
        "not_before": entry.not_before,
        "not_after": entry.not_after,
        "days_left": entry.days_left,
        "fingerprint_sha256": entry.fingerprint_sha256,
        "subject_key_identifier": entry.subject_key_identifier,
        "authority_key_identifier": entry.authority_key_identifier,
        "path_length": entry.path_length,
        "name_constraints": _name_constraints_text(entry),
        "signature_algorithm": entry.signature_algorithm,
        "crl_state": entry.crl.state,
        "bundles": ";".join(entry.bundles),
        "targets": ";".join(
            f"{t.name}/{t.object_name}={t.state}" for t in entry.publications
        ),
        "chain_valid": _chain_valid(entry),
        "findings": len(report.findings_for(entry.name)),
        "highest_severity": str(worst) if worst is not None else "",
    }


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)
    text = str(value)
    # Text a spreadsheet would evaluate as a formula gets a leading apostrophe,
    # so opening the file runs nothing.
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


def render_csv(report: Report) -> str:
    """Render one row per authority, with the columns :data:`CSV_COLUMNS` lists."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for entry in report.inventory.authorities:
        row = _csv_row(report, entry)
        writer.writerow([_csv_cell(row[column]) for column in CSV_COLUMNS])
    return buffer.getvalue()


# --- Markdown ---------------------------------------------------------------------


def _md(value: Any) -> str:
    """Escape a table cell's pipes and HTML brackets, and join its lines."""
    text = "" if value is None else str(value)
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    text = text.replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(text.split())


def _md_table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines.extend("| " + " | ".join(_md(cell) for cell in row) + " |" for row in rows)
    return lines


def render_markdown(report: Report) -> str:
    """Render a summary, the findings and the inventory tables in Markdown."""
    inventory = report.inventory
    summary = report.policy.summary()
    counts = summary["findings"]
    mode = "live observation" if inventory.live else "state store only"
    lines = [
        f"# PKI report: {_md(inventory.federation)}",
        "",
        f"Generated {inventory.generated_at} ({mode}).",
        "",
        f"- Authorities: {len(inventory.authorities)}",
        "- Unwaived findings: "
        + ", ".join(f"{counts[str(s)]} {s}" for s in reversed(Severity)),
        f"- Waived findings: {summary['waived']}",
        "",
        "## Findings",
        "",
    ]
    if report.policy.findings:
        lines += _md_table(
            ["Severity", "Id", "Message", "Remediation", "Waiver"],
            [
                [
                    f.severity,
                    f.id,
                    f.message,
                    f.remediation,
                    (
                        f"{f.waiver.owner} until {f.waiver.expires}: {f.waiver.reason}"
                        if f.waiver
                        else ""
                    ),
                ]
                for f in report.policy.findings
            ],
        )
    else:
        lines.append("No findings.")
    lines += ["", "## Inventory", ""]
    lines += _md_table(
        [
            "Authority",
            "Level",
            "Parent",
            "Provider",
            "Algorithm",
            "Protection",
            "Key state",
            "Subject",
            "Serial",
            "Not after",
            "Days left",
            "Chain",
            "Targets",
        ],
        [
            [
                e.name,
                e.level,
                e.parent or "",
                e.provider,
                e.algorithm,
                e.protection_level,
                e.key_state,
                e.subject,
                e.serial,
                e.not_after,
                "" if e.days_left is None else e.days_left,
                _chain(e),
                _targets_summary(e),
            ]
            for e in inventory.authorities
        ],
    )
    if inventory.bundles:
        lines += ["", "## Bundles", ""]
        lines += _md_table(
            ["Bundle", "Authorities", "Target", "Location", "State", "SHA-256"],
            [
                [
                    b.name,
                    ", ".join(b.authorities),
                    t.name,
                    t.location,
                    t.state,
                    t.sha256,
                ]
                for b in inventory.bundles
                for t in b.targets
            ],
        )
    return "\n".join(lines) + "\n"


def render(report: Report, output_format: str) -> str:
    """Render the report in ``table``, ``json``, ``csv``, ``markdown`` or ``html``."""
    renderers = {
        "table": render_table,
        "json": render_json,
        "csv": render_csv,
        "markdown": render_markdown,
        "html": render_html,
    }
    return renderers[output_format](report)


FORMATS = ("table", "json", "csv", "markdown", "html")
