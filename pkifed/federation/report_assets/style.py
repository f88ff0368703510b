"""The HTML report's stylesheet and its colours, shared with the SVG drawings."""

from __future__ import annotations

# Colours per severity, text on a white page; "ok" marks an authority with no
# unwaived finding.
SEVERITY_COLOURS = {
    "critical": "#b91c1c",
    "high": "#ea580c",
    "medium": "#ca8a04",
    "low": "#2563eb",
    "info": "#64748b",
    "ok": "#15803d",
}

# Background tints for severity pills, in the same order.
SEVERITY_TINTS = {
    "critical": "#fee2e2",
    "high": "#ffedd5",
    "medium": "#fef9c3",
    "low": "#dbeafe",
    "info": "#f1f5f9",
    "ok": "#dcfce7",
}

PROVIDER_FILLS = ("#f8fafc", "#f5f3ff", "#f0fdfa", "#fff7ed", "#fdf2f8", "#f0f9ff")

STYLESHEET = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body {
  margin: 0; background: #f1f5f9; color: #0f172a;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue",
    Arial, sans-serif;
}
header {
  background: #0f172a; color: #f8fafc; padding: 24px 40px 20px;
}
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header p { margin: 0; color: #cbd5e1; }
.mode {
  display: inline-block; margin-left: 8px; padding: 1px 8px; border-radius: 10px;
  background: #334155; color: #e2e8f0; font-size: 12px;
}
main { padding: 24px 40px 40px; max-width: 1600px; }
section {
  background: #fff; border: 1px solid #e2e8f0; border-radius: 8px;
  padding: 18px 22px; margin-bottom: 20px;
}
section h2 { margin: 0 0 12px; font-size: 16px; font-weight: 600; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; margin-bottom: 20px; }
.card {
  background: #fff; border: 1px solid #e2e8f0; border-radius: 8px;
  padding: 12px 18px; min-width: 120px; border-top: 4px solid #94a3b8;
}
.card .value { font-size: 26px; font-weight: 600; }
.card .label { color: #475569; font-size: 12px; text-transform: uppercase;
  letter-spacing: .04em; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th {
  text-align: left; background: #f8fafc; color: #334155; font-weight: 600;
  border-bottom: 2px solid #e2e8f0; padding: 7px 8px; white-space: nowrap;
}
td { border-bottom: 1px solid #e2e8f0; padding: 6px 8px; vertical-align: top; }
tr.waived td { color: #64748b; }
.mono {
  font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  font-size: 12px; word-break: break-all;
}
.nowrap { white-space: nowrap; word-break: normal; }
.pill {
  display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
  font-weight: 600; white-space: nowrap;
}
.muted { color: #64748b; }
.scroll { overflow-x: auto; }
svg { display: block; max-width: 100%; height: auto; }
footer { color: #64748b; font-size: 12px; padding: 0 40px 24px; }
"""
