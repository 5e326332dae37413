"""Reports rendered from ``results.json`` data: Markdown, figures and the console table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .curves import CURVES_FILE, render_robustness_section
from .figures import render_figures
from .markdown import render_markdown
from .table import ATTACK_COLUMNS, attack_rows, format_table

__all__ = ["render_report", "render_markdown", "render_figures", "format_table", "attack_rows", "ATTACK_COLUMNS"]


def render_report(results: dict[str, Any], directory: str | Path) -> Path:
    """Write ``report.md`` and the figures into ``directory``; return the report's path."""
    directory = Path(directory)
    figures = render_figures(results, directory)
    # Attack figures of an earlier run in the same directory would pass for this run's.
    current = {figure.name for figure in figures}
    for stale in directory.glob("[0-9][0-9]-*.png"):
        if stale.name not in current:
            stale.unlink()
    path = directory / "report.md"
    curves = render_robustness_section(results, directory)
    if CURVES_FILE not in curves and (directory / CURVES_FILE).exists():
        (directory / CURVES_FILE).unlink()
    path.write_text(render_markdown(results, figures) + curves)
    return path
