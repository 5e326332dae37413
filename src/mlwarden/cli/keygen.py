"""``mlwarden keygen``: make an Ed25519 key pair for manifests, or a device key for collectors."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .._validation import check_output_path
from ..errors import ParameterError
from ..integrity.collectors import DeviceKey
from ..integrity.keys import write_keypair
from ._integrity_tables import format_table

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "keygen",
        help="make an Ed25519 key pair for signing manifests, or a device key",
        description="Write an Ed25519 key pair for `mlwarden sign` and `mlwarden verify`: NAME.key "
        "(private, PKCS#8 PEM, mode 0600) and NAME.pub (public, PEM). With --device, write a shared-secret "
        "device key for authenticated collectors instead.",
    )
    parser.add_argument("--output", type=Path, default=Path("."), help="folder for the key files (default: current folder)")
    parser.add_argument("--name", default="mlwarden", help="base name of the key files (default: mlwarden)")
    parser.add_argument("--private", type=Path, help="path of the private key file (overrides --output/--name)")
    parser.add_argument("--public", type=Path, help="path of the public key file (overrides --output/--name)")
    parser.add_argument(
        "--passphrase-env",
        metavar="VAR",
        help="encrypt the private key with the passphrase in environment variable VAR",
    )
    parser.add_argument("--device", metavar="ID", help="write a device key for collector ID (JSON, mode 0600)")
    parser.add_argument("--force", action="store_true", help="replace existing key files")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.device:
        if args.private is None:
            check_output_path(args.output, "keygen", folder=True)
        path = args.private or args.output / f"{args.device}.device.json"
        _check_key_file(path, "--private" if args.private else "--output", args.force)
        DeviceKey.generate(args.device).save(path)
        print(format_table(["file", "kind", "mode", "device"], [[path, "device key (HMAC-SHA256)", "0600", args.device]]))
        print("Give this file to the device and register it with the receiver; keep it secret.")
        return 0
    if args.private is None or args.public is None:
        check_output_path(args.output, "keygen", folder=True)
    private = args.private or args.output / f"{args.name}.key"
    public = args.public or args.output / f"{args.name}.pub"
    _check_key_file(private, "--private" if args.private else "--output", args.force)
    _check_key_file(public, "--public" if args.public else "--output", args.force)
    passphrase = _passphrase(args.passphrase_env)
    identifier = write_keypair(private, public, passphrase=passphrase, overwrite=args.force)
    rows = [
        [private, "private key (Ed25519)" + (", encrypted" if passphrase else ""), "0600", identifier],
        [public, "public key (Ed25519)", "0644", identifier],
    ]
    print(format_table(["file", "kind", "mode", "key id"], rows))
    print(f"Sign with: mlwarden sign PATH... --key {private}")
    print(f"Verify with: mlwarden verify MANIFEST --key {public}")
    return 0


def _check_key_file(path: Path, option: str, force: bool) -> None:
    """Reject a key path that cannot be written, or that exists when --force is not given, before any key is made."""
    check_output_path(path, "keygen", name=option)
    if path.is_dir():
        raise ParameterError(f"keygen: {option} {str(path)!r} is a folder; pass a file path", value=str(path))
    if path.exists() and not force:
        raise ParameterError(
            f"keygen: {str(path)!r} already exists; pass --force to replace it, or choose another {option}",
            value=str(path),
        )


def _passphrase(variable: str | None) -> bytes | None:
    if not variable:
        return None
    value = os.environ.get(variable)
    if not value:
        raise ParameterError(f"keygen: environment variable {variable} is not set or empty; export the passphrase in it", value=variable)
    return value.encode("utf-8")
