"""The report's formats: JSON against its schema, CSV, Markdown and HTML.

The HTML report is also rendered by headless Chromium when it is installed, and
the screenshot is decoded to check that the page is drawn, not blank.
"""

from __future__ import annotations

import csv
import io
import json
import re
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from pkifed.federation.reports import CSV_COLUMNS, Report, render
from tests.federation.test_policy import (
    PASSPHRASE,
    Federation,
    make_federation,
)

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "report.schema.json"
CHROMIUM = Path("/usr/bin/chromium")
FORMATS = ("table", "json", "csv", "markdown", "html")
# A subject with characters that every format must escape.
HOSTILE_NAME = 'Issuing <script>alert("x")</script> | & co'


@pytest.fixture(scope="module")
def applied(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Federation, Report, Report]]:
    """A federation with violations, with its offline and its live report."""
    monkeypatch = pytest.MonkeyPatch()
    federation = make_federation(tmp_path_factory.mktemp("reports"), monkeypatch)
    issuing = federation.document["authorities"]["issuing"]
    issuing["subject"] = {"common_name": HOSTILE_NAME, "organization": "Example"}
    issuing["validity"] = "30d"
    issuing["renew_before"] = "5d"
    federation.apply()
    trust = federation.directory / "mirror" / "trust.pem"
    trust.write_bytes(trust.read_bytes() + b"# tampered\n")
    offline = federation.report()
    live = federation.report(live=True)
    yield federation, offline, live
    monkeypatch.undo()


def test_json_matches_schema(applied: tuple[Federation, Report, Report]) -> None:
    _, offline, live = applied
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)

    jsonschema.Draft202012Validator.check_schema(schema)
    for report in (offline, live):
        document = json.loads(render(report, "json"))
        errors = [error.message for error in validator.iter_errors(document)]
        assert errors == []


def test_json_keeps_earlier_fields(applied: tuple[Federation, Report, Report]) -> None:
    _, offline, _ = applied
    document = json.loads(render(offline, "json"))
    root = next(a for a in document["authorities"] if a["name"] == "root")
    target = document["bundles"][0]["targets"][0]

    assert root["parent"] is None
    for name in (
        "name",
        "provider",
        "key_uri",
        "algorithm",
        "protection_level",
        "subject",
        "serial",
        "not_before",
        "not_after",
        "fingerprint_sha256",
        "certificate_pem",
    ):
        assert root[name], name
    assert root["certificate_pem"].startswith("-----BEGIN CERTIFICATE-----")
    assert document["bundles"][0]["name"] == "trust"
    assert set(target) >= {"name", "location", "sha256"}
    assert len(target["sha256"]) == 64


def test_json_inventory_fields(applied: tuple[Federation, Report, Report]) -> None:
    _, _, live = applied
    document = json.loads(render(live, "json"))
    issuing = next(a for a in document["authorities"] if a["name"] == "issuing")
    root = next(a for a in document["authorities"] if a["name"] == "root")

    assert document["live"] is True
    assert issuing["level"] == "issuing"
    assert root["level"] == "root"
    assert issuing["key_state"] == "enabled"
    assert issuing["key_size"] == 256
    assert issuing["authority_key_identifier"] == root["subject_key_identifier"]
    assert issuing["name_constraints"] == {
        "permitted": ["dns:example.com"],
        "excluded": [],
    }
    assert issuing["path_length"] == 0
    assert issuing["crl"]["state"] == "none"
    assert issuing["chain"] == {"valid": True, "length": 2, "problems": []}
    assert root["bundles"] == ["trust"]
    assert {p["state"] for p in issuing["publications"]} == {"in-sync"}
    assert document["summary"]["findings"]["high"] >= 3


def test_offline_target_state_from_record(
    applied: tuple[Federation, Report, Report],
) -> None:
    _, offline, live = applied
    offline_states = {t.name: t.state for t in offline.inventory.bundles[0].targets}
    live_states = {t.name: t.state for t in live.inventory.bundles[0].targets}

    assert offline_states == {"out": "in-sync", "mirror": "in-sync"}
    assert live_states == {"out": "in-sync", "mirror": "drifted"}
    assert offline.inventory.authority("root").key_state == "unknown"


def test_csv_one_row_per_authority(
    applied: tuple[Federation, Report, Report],
) -> None:
    _, _, live = applied
    rows = list(csv.reader(io.StringIO(render(live, "csv"))))
    header, body = rows[0], rows[1:]
    records = [dict(zip(header, row, strict=True)) for row in body]
    issuing = next(r for r in records if r["authority"] == "issuing")

    assert tuple(header) == CSV_COLUMNS
    assert [r["authority"] for r in records] == ["root", "issuing"]
    assert issuing["level"] == "issuing"
    assert issuing["chain_valid"] == "true"
    assert issuing["highest_severity"] == "high"
    assert issuing["name_constraints"] == "permitted dns:example.com"
    assert "out/issuing.pem=in-sync" in issuing["targets"]
    assert int(issuing["days_left"]) < 31


def test_csv_neutralises_formulas(
    applied: tuple[Federation, Report, Report],
) -> None:
    from pkifed.federation.reports import _csv_cell

    assert _csv_cell("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert _csv_cell("@SUM(A1)") == "'@SUM(A1)"
    assert _csv_cell(-5) == "-5"
    assert _csv_cell(None) == ""
    assert _csv_cell("CN=Root") == "CN=Root"


def test_markdown_sections(applied: tuple[Federation, Report, Report]) -> None:
    _, _, live = applied
    text = render(live, "markdown")

    assert text.startswith("# PKI report: audit\n")
    assert "## Findings" in text
    assert "## Inventory" in text
    assert "| high | target_drift:target/mirror/trust.pem |" in text
    assert "<script>" not in text
    assert "\\|" in text


def test_table_lists_findings(applied: tuple[Federation, Report, Report]) -> None:
    _, _, live = applied
    text = render(live, "table")

    assert "(live)" in text
    assert "HIGH      hsm_protection:authority/root" in text
    assert "drifted" in text


EXTERNAL_REFERENCE = re.compile(
    r"""(?:src|href|xlink:href|action|srcset)\s*=\s*["']?\s*(?:https?:)?//""",
    re.IGNORECASE,
)


def test_html_self_contained(applied: tuple[Federation, Report, Report]) -> None:
    _, _, live = applied
    page = render(live, "html")

    assert EXTERNAL_REFERENCE.search(page) is None
    assert "<script" not in page.lower()
    assert "@import" not in page
    assert re.findall(r"url\(([^)]*)\)", page) == ["#arrow"]
    assert "<link" not in page.lower()
    assert page.count("<svg") == 2


def test_html_escapes_values(applied: tuple[Federation, Report, Report]) -> None:
    _, _, live = applied
    page = render(live, "html")

    assert "alert(\\&quot;x\\&quot;)" in page
    assert "&lt;/script" in page
    assert "<script" not in page
    assert "| &amp; co" in page


def test_no_secret_in_any_format(
    applied: tuple[Federation, Report, Report],
) -> None:
    federation, offline, live = applied
    outputs = [render(report, f) for report in (offline, live) for f in FORMATS]
    result = federation.cli("--live", "--format", "json")

    assert result.exit_code == 0, result.output
    outputs.append(result.output)
    for output in outputs:
        assert PASSPHRASE not in output
        assert PASSPHRASE[:12] not in output


def test_cli_writes_file(applied: tuple[Federation, Report, Report]) -> None:
    federation, _, _ = applied
    target = federation.directory / "report.md"

    result = federation.cli("--format", "markdown", "-o", str(target))

    assert result.exit_code == 0, result.output
    assert f"Wrote {target}" in result.output
    assert target.read_text(encoding="utf-8").startswith("# PKI report: audit")


# --- rendering in a browser -------------------------------------------------------


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB or RGBA PNG into its width, height and pixel rows.

    Only the subset Chromium writes is supported: no interlacing, and filter
    types 0 to 4 of PNG specification section 9.
    """
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, compressed = 8, b""
    width = height = channels = 0
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        offset += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(
                ">IIBBBBB", body
            )
            assert depth == 8
            assert interlace == 0
            channels = {2: 3, 6: 4}[colour]
        elif kind == b"IDAT":
            compressed += body
    raw = zlib.decompress(compressed)
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind = raw[start]
        line = bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - corner
                distances = (
                    abs(estimate - left),
                    abs(estimate - up),
                    abs(estimate - corner),
                )
                if distances[0] <= distances[1] and distances[0] <= distances[2]:
                    predictor = left
                elif distances[1] <= distances[2]:
                    predictor = up
                else:
                    predictor = corner
                line[i] = (line[i] + predictor) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, [bytes(r) for r in rows]


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Chromium is not installed (Debian package chromium at /usr/bin/chromium)",
)
def test_html_renders_in_chromium(
    applied: tuple[Federation, Report, Report], tmp_path: Path
) -> None:
    _, _, live = applied
    page = tmp_path / "report.html"
    page.write_text(render(live, "html"), encoding="utf-8")
    screenshot = tmp_path / "report.png"
    profile = tmp_path / "profile"

    result = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--screenshot={screenshot}",
            "--window-size=1400,2000",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    width, height, rows = decode_png(screenshot.read_bytes())
    channels = len(rows[0]) // width
    # Every 4th pixel of every 4th row is enough to see what is drawn.
    pixels = [
        row[x : x + 3] for row in rows[::4] for x in range(0, len(row), 4 * channels)
    ]
    non_white = sum(1 for p in pixels if p != b"\xff\xff\xff")
    colours = set(pixels)

    assert (width, height) == (1400, 2000)
    assert len(colours) > 50
    assert non_white / len(pixels) > 0.2
    # The header band is the dark slate of the stylesheet (#0f172a).
    assert rows[20][:3] == bytes([0x0F, 0x17, 0x2A])


def test_png_decoder_on_known_image() -> None:
    # A 2x1 RGB image, red then white, filter type 1 (Sub) on its only row.
    line = bytes([1, 255, 0, 0, 0, 255, 255])
    header = struct.pack(">IIBBBBB", 2, 1, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(line))
        + chunk(b"IEND", b"")
    )

    assert decode_png(data) == (2, 1, [bytes([255, 0, 0, 255, 255, 255])])
