"""``mlwarden verify``: check a signed manifest and every file it lists; exit 0 if intact, 1 if not."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..integrity.keys import load_public_key
from ..integrity.manifest import verify_manifest
from ._integrity_tables import format_table

__all__ = ["register", "run"]

EXIT_INTACT = 0
EXIT_TAMPERED = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="verify a signed manifest and the files it lists",
        description="Check the manifest's Ed25519 signature, then the size and hashes of every file, and name "
        "each file added, removed or changed. Exit status: 0 intact, 1 tampered, 2 usage error.",
    )
    parser.add_argument("manifest", type=Path, metavar="MANIFEST", help="manifest written by `mlwarden sign`")
    parser.add_argument("--key", type=Path, required=True, help="public key file (.pub from `mlwarden keygen`)")
    parser.add_argument("--base", type=Path, help="folder that manifest paths are relative to (default: the manifest's folder)")
    parser.add_argument("--all", action="store_true", help="list unchanged files too")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    public_key = load_public_key(args.key)
    report = verify_manifest(args.manifest, public_key, base_dir=args.base)
    status = EXIT_INTACT if report.intact else EXIT_TAMPERED
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return status
    if not report.signature_valid:
        print(f"TAMPERED: signature check failed: {report.signature_detail}; files were not checked")
        return status
    shown = report.files if args.all else report.problems()
    if shown:
        print(format_table(["path", "status", "detail"], [[c.path, c.status.value, c.detail] for c in shown]))
    problems = report.problems()
    if problems:
        counts: dict[str, int] = {}
        for check in problems:
            counts[check.status.value] = counts.get(check.status.value, 0) + 1
        summary = ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))
        print(f"TAMPERED: {summary} of {len(report.files)} files; {report.signature_detail}")
    else:
        print(f"INTACT: {len(report.files)} files match the manifest, {report.signature_detail}")
    return status
