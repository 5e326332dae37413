"""The reference table of an assessment: one row for clean data, then one per attack."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["ATTACK_COLUMNS", "attack_rows", "format_table", "percent", "number"]

ATTACK_COLUMNS = (
    "attack",
    "accuracy",
    "success rate",
    "mean L2",
    "median L2",
    "mean L-inf",
    "median L-inf",
    "seconds",
    "gradients/sample",
)


def percent(value: float | None) -> str:
    """Format a fraction as a percentage with two decimals, or '-'."""
    return "-" if value is None else f"{100 * value:.2f}%"


def number(value: float | None, digits: int = 3) -> str:
    """Format a number with fixed decimals, or '-'."""
    return "-" if value is None else f"{value:.{digits}f}"


def attack_rows(results: dict[str, Any]) -> list[list[str]]:
    """Return the table rows: clean accuracy first, then each attack with its figures."""
    rows = [["clean", percent(results["clean"]["accuracy"]), "-", "0", "0", "0", "0", "0", "0"]]
    for attack in results["attacks"]:
        rows.append(
            [
                attack["label"],
                percent(attack["accuracy"]),
                percent(attack["success_rate"]),
                number(attack["l2"]["mean"]),
                number(attack["l2"]["median"]),
                number(attack["linf"]["mean"]),
                number(attack["linf"]["median"]),
                number(attack["seconds"], 1),
                number(attack["gradients_per_sample"], 1),
            ]
        )
    return rows


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Return a plain-text table with columns padded to their widest cell."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * width for width in widths))
    for row in rows:
        cells = [str(cell).ljust(width) if i == 0 else str(cell).rjust(width) for i, (cell, width) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
