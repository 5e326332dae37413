"""``mlwarden scan-model``: find code that model files would run when loaded, without loading them."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from ..integrity.allowlist import Allowlist
from ..integrity.findings import ScanResult, Severity
from ..integrity.model_scan import scan_files
from ._integrity_tables import format_table

__all__ = ["register", "run"]

EXIT_CLEAN = 0
EXIT_FLAGGED = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "scan-model",
        help="scan model files for code that runs when they are loaded",
        description="Walk the pickle opcodes of PyTorch, joblib, NumPy and pickle files without executing "
        "them and report every imported global, flagging those outside the allow-list; check safetensors "
        "headers and ONNX external-data paths. Exit status: 0 all clean, 1 any flagged, 2 usage error.",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="FILE", help="model files or folders to scan")
    parser.add_argument("--allow", action="append", default=[], metavar="MODULE.NAME", help="also allow this global (repeatable)")
    parser.add_argument("--strict", action="store_true", help="allow only tensor and array names, not scikit-learn classes")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    allowlist = (Allowlist.strict() if args.strict else Allowlist.default()).with_names(args.allow)
    results = scan_files(args.paths, allowlist=allowlist)
    status = EXIT_FLAGGED if any(result.flagged for result in results) else EXIT_CLEAN
    if args.json:
        document = {"schema": "mlwarden.scan/1", "flagged": status == EXIT_FLAGGED, "results": [r.to_dict() for r in results]}
        print(json.dumps(document, indent=2))
        return status
    print(format_table(["file", "format", "verdict", "globals", "findings"], [_summary_row(r) for r in results]))
    imports = [row for result in results for row in _global_rows(result)]
    if imports:
        print()
        print(format_table(["file", "imported global", "allowed", "times"], imports))
    details = [
        [result.path, str(finding.severity), finding.kind.value, finding.location, finding.message]
        for result in results
        for finding in result.findings
        if finding.severity >= Severity.WARNING
    ]
    if details:
        print()
        print(format_table(["file", "severity", "kind", "where", "message"], details))
    flagged = sum(result.flagged for result in results)
    print(f"\n{flagged} of {len(results)} files flagged")
    return status


def _summary_row(result: ScanResult) -> list[object]:
    verdict = "FLAGGED" if result.flagged else "clean"
    distinct = len({item.qualified_name for item in result.globals})
    unlisted = len(result.unlisted_globals())
    return [result.path, result.format, verdict, f"{distinct} ({unlisted} not allowed)", len(result.findings)]


def _global_rows(result: ScanResult) -> list[list[object]]:
    counts = Counter(item.qualified_name for item in result.globals)
    allowed = {item.qualified_name: item.allowed for item in result.globals}
    return [[result.path, name, "yes" if allowed[name] else "NO", count] for name, count in counts.items()]
