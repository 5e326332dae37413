"""Files written by a scan: ``suspects.csv``, ``summary.json`` and ``summary.md``.

``suspects.csv`` lists the reported rows, most suspect first, with the
columns ``rank, index, score, reason, label, suggested_label, detector``.
``index`` is the row's position in the scanned data (0-based, header and
blank lines not counted). ``score`` is the suspicion: the largest decision
of any detector in units of that detector's spread, above 0 when flagged,
``inf`` for rows of a class too rare to model.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from .scan import ScanReport

__all__ = ["write_scan_outputs", "summary_table", "SCAN_SUMMARY_SCHEMA", "SUSPECT_COLUMNS"]

SCAN_SUMMARY_SCHEMA = "mlwarden.scan/1"
SUSPECT_COLUMNS = ("rank", "index", "score", "reason", "label", "suggested_label", "detector")


def write_scan_outputs(report: ScanReport, directory: str | Path, *, source: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write the three files into ``directory`` and return their paths by name."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    suspects_path = directory / "suspects.csv"
    with suspects_path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(SUSPECT_COLUMNS)
        for rank, suspect in enumerate(report.suspects, start=1):
            score = "inf" if math.isinf(suspect.score) else f"{suspect.score:.6g}"
            suggested = "" if suspect.suggested_label is None else suspect.suggested_label
            writer.writerow((rank, suspect.index, score, suspect.reason, suspect.label, suggested, suspect.detector))
    summary = {"schema": SCAN_SUMMARY_SCHEMA, "source": source or {}, **report.summary}
    summary_path = directory / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    markdown_path = directory / "summary.md"
    markdown_path.write_text(summary_markdown(report, source) + "\n")
    return {"suspects": suspects_path, "summary": summary_path, "markdown": markdown_path}


def summary_table(report: ScanReport) -> list[list[str]]:
    """Return the per-class table (class, rows, flagged, share) as rows of text, header first."""
    table = [["class", "rows", "flagged", "share"]]
    for entry in report.summary["classes"]:
        share = entry["flagged"] / entry["rows"] if entry["rows"] else 0.0
        table.append([str(entry["name"]), str(entry["rows"]), str(entry["flagged"]), f"{share:.1%}"])
    table.append(["all", str(report.summary["rows"]), str(report.summary["flagged"]), f"{report.summary['flagged'] / max(report.summary['rows'], 1):.1%}"])
    return table


def summary_markdown(report: ScanReport, source: dict[str, Any] | None = None) -> str:
    """Return the summary as Markdown: the data, the detectors, the per-class table and the top suspects."""
    summary = report.summary
    lines = ["# Data scan", ""]
    if source:
        lines += [f"- {key}: `{value}`" for key, value in source.items()]
    lines += [
        f"- rows: {summary['rows']}, fitted on {summary['fit_rows']}",
        f"- flagged: {summary['flagged']} ({summary['flagged'] / max(summary['rows'], 1):.1%}), reported: {summary['reported']}",
        f"- seconds: {summary['seconds']:.1f}",
        "",
        "| detector | flagged |",
        "|---|---:|",
    ]
    lines += [f"| {entry['name']} | {entry['flagged']} |" for entry in summary["detectors"]]
    lines += ["", "| " + " | ".join(summary_table(report)[0]) + " |", "|---|---:|---:|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in summary_table(report)[1:]]
    if report.suspects:
        lines += ["", "Most suspect rows (all in `suspects.csv`):", "", "| rank | index | score | label | reason |", "|---:|---:|---:|---:|---|"]
        for rank, suspect in enumerate(report.suspects[:20], start=1):
            lines.append(f"| {rank} | {suspect.index} | {suspect.score:.3g} | {suspect.label} | {suspect.reason} |")
    return "\n".join(lines)
