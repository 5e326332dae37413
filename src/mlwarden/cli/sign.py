"""``mlwarden sign``: hash files and folders into a manifest signed with Ed25519."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .._validation import check_output_path
from ..errors import ParameterError
from ..integrity.hashing import DEFAULT_CHUNK_SIZE
from ..integrity.keys import key_id, load_private_key
from ..integrity.manifest import build_manifest, write_manifest
from ._integrity_tables import format_size, format_table

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sign",
        help="write a signed manifest of data sets and model files",
        description="Hash each file (SHA-256, streamed in chunks, with a Merkle root over the chunks) and "
        "write a manifest signed with an Ed25519 private key. Folders expand to all files below them.",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders to sign")
    parser.add_argument("--key", type=Path, required=True, help="private key file from `mlwarden keygen`")
    parser.add_argument(
        "--output", type=Path, default=Path("mlwarden-manifest.json"), help="manifest to write (default: mlwarden-manifest.json)"
    )
    parser.add_argument(
        "--base", type=Path, help="folder that manifest paths are relative to (default: the manifest's folder)"
    )
    parser.add_argument(
        "--chunk-size",
        type=float,
        default=DEFAULT_CHUNK_SIZE / 2**20,
        metavar="MIB",
        help=f"chunk size in MiB for the Merkle tree (default: {DEFAULT_CHUNK_SIZE // 2**20})",
    )
    parser.add_argument("--passphrase-env", metavar="VAR", help="read the private key's passphrase from environment variable VAR")
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    passphrase = None
    if args.passphrase_env:
        value = os.environ.get(args.passphrase_env)
        if not value:
            raise ParameterError(f"sign: environment variable {args.passphrase_env} is not set or empty", value=args.passphrase_env)
        passphrase = value.encode("utf-8")
    # Check the output before the base folder is derived from it and before any file is hashed.
    check_output_path(args.output, "sign")
    if args.output.is_dir():
        raise ParameterError(
            f"sign: --output {str(args.output)!r} is a folder; pass a file name such as "
            f"{str(args.output / 'mlwarden-manifest.json')!r}",
            value=str(args.output),
        )
    private_key = load_private_key(args.key, passphrase)
    base = args.base if args.base is not None else args.output.resolve().parent
    chunk_size = int(args.chunk_size * 2**20)
    manifest = build_manifest(args.paths, base_dir=base, chunk_size=chunk_size, exclude=[args.output])
    write_manifest(manifest, private_key, args.output)
    if not args.quiet:
        rows = [[entry.path, format_size(entry.size), entry.sha256[:16], len(entry.chunk_hashes)] for entry in manifest.files]
        print(format_table(["path", "size", "sha256 (first 16)", "chunks"], rows))
    total = sum(entry.size for entry in manifest.files)
    print(
        f"Signed {len(manifest.files)} files ({format_size(total)}) with key {key_id(private_key.public_key())}; "
        f"manifest written to {args.output}"
    )
    return 0
