"""Entry point of the ``mlwarden`` command.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to the
function that runs it. User mistakes (:class:`~mlwarden.errors.MlwardenError`)
are printed on one line and end the process with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import MlwardenError

__all__ = ["main", "build_parser", "SUBCOMMAND_MODULES"]

# Module names under mlwarden.cli, in the order their subcommands are listed in --help.
SUBCOMMAND_MODULES = [
    "assess",
    "train",
    "keygen",
    "sign",
    "verify",
    "scan_model",
    "serve",
    "keys",
    "attack",
    "scan_data",
]

EXIT_USAGE = 2


def _requested_modules(argv: Sequence[str]) -> list[str]:
    """Return the subcommand modules to import: only the one named in ``argv``, else all.

    Importing only the requested subcommand keeps a quick command such as
    ``mlwarden verify`` from paying for the import of PyTorch.
    """
    for argument in argv:
        if argument.startswith("-"):
            continue
        module = argument.replace("-", "_")
        return [module] if module in SUBCOMMAND_MODULES else list(SUBCOMMAND_MODULES)
    return list(SUBCOMMAND_MODULES)


def build_parser(modules: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Build the parser with the given subcommand modules (default: all of them)."""
    parser = argparse.ArgumentParser(
        prog="mlwarden",
        description="Attack, defend and assess a machine-learning pipeline.",
    )
    parser.add_argument("--version", action="version", version=f"mlwarden {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more detail (-v: INFO, -vv: DEBUG)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES if modules is None else modules:
        module = importlib.import_module(f"{__package__}.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mlwarden`` command and return its exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_requested_modules(arguments))
    args = parser.parse_args(arguments)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        status = args.func(args)
    except MlwardenError as error:
        print(f"mlwarden: error: {error.message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mlwarden: interrupted", file=sys.stderr)
        return 130
    return 0 if status is None else int(status)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
