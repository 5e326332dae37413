"""Compare mlwarden's model scanner with modelscan and fickling on the integrity test corpus.

Builds the corpus of tests/integrity/corpus.py in a temporary folder, scans
every file with each tool, and prints a Markdown table of which files each one
flags, then the totals. No tool loads a file: every payload would only create
a sentinel file, and the script fails if that file appears.

Usage (the peers come with the ``bench`` extra)::

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/scan_compare.py [--json results.json]

A verdict is ``flagged`` when the tool reports an issue, ``clean`` when it
reports none, ``skipped`` when modelscan does not handle the format,
``error`` when the tool reports a parse error without a verdict, and ``not
parsed`` when fickling could not read the file as pickles.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from mlwarden.integrity import scan_file

ROOT = Path(__file__).resolve().parents[1]


def load_corpus_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("integrity_corpus", ROOT / "tests" / "integrity" / "corpus.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def mlwarden_verdict(path: Path) -> str:
    return "flagged" if scan_file(path).flagged else "clean"


def modelscan_verdict(path: Path) -> str:
    from modelscan.modelscan import ModelScan

    try:
        report = ModelScan().scan(path)
    except Exception as error:  # a crash is a result worth recording, whatever its type
        return f"error ({type(error).__name__})"
    if report.get("issues"):
        return "flagged"
    if report.get("errors"):
        return "error"
    summary = report.get("summary", {})
    if summary.get("scanned", {}).get("total_scanned", 0) == 0:
        return "skipped"
    return "clean"


def fickling_verdict(path: Path) -> str:
    import zipfile

    import fickling

    try:
        # fickling prints its parse warnings on stdout, where they would land in the Markdown table.
        with contextlib.redirect_stdout(sys.stderr):
            if zipfile.is_zipfile(path):
                # fickling's scan_file reads raw pickles only; zip archives (torch.save) have their own entry point.
                results = list(fickling.scan_zip_archive(str(path), graceful=True).values())
            else:
                results = [fickling.scan_file(str(path), graceful=True)]
    except Exception as error:  # a crash is a result worth recording, whatever its type
        return f"error ({type(error).__name__})"
    if any(result.results and not result.is_safe for result in results):
        return "flagged"
    if any(result.errors for result in results) or not results:
        # Parse errors without any analysis: fickling could not read the file as pickles.
        return "not parsed"
    return "clean"


TOOLS: dict[str, Callable[[Path], str]] = {
    "mlwarden": mlwarden_verdict,
    "modelscan 0.8.8": modelscan_verdict,
    "fickling 0.1.12": fickling_verdict,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the verdicts to this JSON file")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    corpus_module = load_corpus_module()
    with tempfile.TemporaryDirectory() as folder:
        sentinel = Path(folder) / "SENTINEL"
        files = corpus_module.build_corpus(Path(folder) / "corpus", sentinel)
        rows = []
        for item in files:
            verdicts = {name: tool(item.path) for name, tool in TOOLS.items()}
            rows.append({"file": item.name, "category": item.category, "trick": item.trick, **verdicts})
        if sentinel.exists():
            raise SystemExit("a payload ran during scanning: the sentinel file exists")
    print(render(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all_peer_catches_matched(rows) else 1


def render(rows: list[dict[str, str]]) -> str:
    names = list(TOOLS)
    lines = ["| file | category | trick | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for row in rows:
        cells = [row["file"], row["category"], row["trick"]] + [_mark(row[name], row["category"]) for name in names]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    malicious = [row for row in rows if row["category"] == "malicious"]
    benign = [row for row in rows if row["category"] == "benign"]
    lines.append("| tool | malicious flagged | benign flagged (false alarms) |")
    lines.append("|---|---|---|")
    for name in names:
        caught = sum(row[name] == "flagged" for row in malicious)
        false_alarms = sum(row[name] == "flagged" for row in benign)
        lines.append(f"| {name} | {caught} of {len(malicious)} | {false_alarms} of {len(benign)} |")
    return "\n".join(lines)


def all_peer_catches_matched(rows: list[dict[str, str]]) -> bool:
    """Return whether mlwarden flags every malicious file a peer flags and no benign file."""
    for row in rows:
        peers_flag = any(row[name] == "flagged" for name in TOOLS if name != "mlwarden")
        if row["category"] == "malicious" and peers_flag and row["mlwarden"] != "flagged":
            return False
        if row["category"] == "benign" and row["mlwarden"] == "flagged":
            return False
    return True


def _mark(verdict: str, category: str) -> str:
    if verdict == "flagged":
        return "**flagged**" if category != "benign" else "flagged (false alarm)"
    if verdict == "clean" and category == "malicious":
        return "missed"
    return verdict


if __name__ == "__main__":
    sys.exit(main())
