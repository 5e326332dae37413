"""``mlwarden keys``: API keys and device registrations of the guarded service's database.

- ``create``: a new API key with scopes and limits; its token is printed once and never stored.
- ``list``: every key with its scopes, limits and state (no secrets).
- ``revoke KEY_ID``: the key stops authenticating, for good.
- ``clear KEY_ID``: a key blocked or throttled by the extraction monitor becomes active again.
- ``add-device FILE``: register a device key written by ``mlwarden keygen --device ID``.
- ``revoke-device ID``: stop accepting the device's records.
- ``devices``: every registered device (no secrets).

A running server applies every change at its next request, because it
reads the keys from the database each time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import ParameterError
from ..integrity import DeviceKey
from ..serve.database import ServiceDatabase
from ..serve.ingest import DeviceRegistry
from ..serve.keys import SCOPES, KeyStore
from ._integrity_tables import format_table

__all__ = ["register", "run", "DEFAULT_DATABASE"]

DEFAULT_DATABASE = Path("mlwarden-serve.db")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "keys",
        help="create, list and revoke API keys and devices of the guarded service",
        description="Manage the API keys and device registrations stored in the service database.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        action = actions.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        action.add_argument("--db", type=Path, default=DEFAULT_DATABASE, help=f"service database (default {DEFAULT_DATABASE})")
        return action

    create = add("create", "create an API key and print it once")
    create.add_argument("--name", default="client", help="name of the key holder, shown by 'keys list' (default: client)")
    create.add_argument(
        "--scope", action="append", choices=SCOPES, required=True, help="a scope of the key; repeat for several"
    )
    create.add_argument("--rate", type=float, default=20.0, help="sustained requests per second (default 20)")
    create.add_argument("--burst", type=int, default=40, help="requests allowed at once (default 40)")
    create.add_argument("--daily-quota", type=int, default=100_000, help="requests per UTC day (default 100000)")
    listing = add("list", "list the API keys")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    revoke = add("revoke", "revoke an API key for good")
    revoke.add_argument("key_id", help="the 12-hex-digit key id shown by 'keys list'")
    clear = add("clear", "set a key blocked or throttled by the extraction monitor back to active")
    clear.add_argument("key_id", help="the 12-hex-digit key id shown by 'keys list'")
    device = add("add-device", "register a device key made by 'mlwarden keygen --device ID'")
    device.add_argument("key_file", type=Path, help="the device key file (JSON)")
    revoke_device = add("revoke-device", "stop accepting the records of a device")
    revoke_device.add_argument("device_id")
    devices = add("devices", "list the registered devices")
    devices.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


# Actions that write key records and so may start a new database; the others need an existing one.
_CREATING_ACTIONS = ("create", "add-device")


def run(args: argparse.Namespace) -> int:
    if args.action not in _CREATING_ACTIONS and not args.db.exists():
        raise ParameterError(
            f"keys {args.action}: database {str(args.db)!r} not found; check --db, or create the database with "
            f"`mlwarden keys create --db {args.db} --scope predict`",
            value=str(args.db),
        )
    with ServiceDatabase(args.db) as database:
        keys = KeyStore(database)
        registry = DeviceRegistry(database)
        if args.action == "create":
            key, token = keys.create(
                args.name, args.scope, rate=args.rate, burst=args.burst, daily_quota=args.daily_quota
            )
            print(f"key id   {key.key_id}")
            print(f"scopes   {', '.join(sorted(key.scopes))}")
            print(f"limits   {key.rate:g}/s, burst {key.burst}, {key.daily_quota} per day")
            print(f"API key  {token}")
            print("Store the API key now: only its hash is kept, so it cannot be shown again.")
        elif args.action == "list":
            rows = [key.to_dict() for key in keys.list()]
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                print(
                    format_table(
                        ["key id", "name", "scopes", "rate/s", "burst", "per day", "status", "created"],
                        [
                            [r["key_id"], r["name"], ",".join(r["scopes"]), f"{r['rate']:g}", r["burst"], r["daily_quota"],
                             r["status"], r["created"]]
                            for r in rows
                        ],
                    )
                )
        elif args.action == "revoke":
            key = keys.revoke(args.key_id)
            print(f"revoked key {key.key_id} ({key.name})")
        elif args.action == "clear":
            key = keys.set_status(args.key_id, "active", "cleared by an operator")
            print(f"key {key.key_id} ({key.name}) is active again")
        elif args.action == "add-device":
            device_key = DeviceKey.load(args.key_file)
            registry.add(device_key)
            print(f"registered device {device_key.device_id}")
        elif args.action == "revoke-device":
            registry.revoke(args.device_id)
            print(f"revoked device {args.device_id}")
        elif args.action == "devices":
            rows = registry.list()
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                table = [[r["device_id"], _utc(r["created"]), _utc(r["revoked"])] for r in rows]
                print(format_table(["device", "created", "revoked"], table))
    return 0


def _utc(epoch: float | None) -> str:
    return "" if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
