"""``mlwarden attack NAME``: attack a running mlwarden service, or drill every guard configuration locally.

With ``--url`` the attack runs against that service with the key from
``--key`` or the environment variable named by ``--key-env``. With
``--compare-guards`` it starts the service on 127.0.0.1 once per guard
configuration instead, runs the attack against each, and prints what each
guard changes. Attacks: ``extraction``, ``evasion``, ``keys`` (requests
without keys and guessed keys), ``flood`` (a bounded request flood). The
flood and the key probe only target the loopback interface; the other
attacks need ``--allow-remote`` for any other host.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import ParameterError
from ..serve.drills import ATTACK_NAMES, AttackSettings, compare_guards, run_attack, with_method
from ._integrity_tables import format_table

__all__ = ["register", "run"]

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "attack",
        help="attack a running mlwarden service, or compare its guards locally",
        description="Run an API attack (extraction, evasion, keys, flood) against a service at --url, or with "
        "--compare-guards against local services with and without each guard.",
    )
    parser.add_argument("name", choices=ATTACK_NAMES, help="the attack")
    target = parser.add_argument_group("target")
    target.add_argument("--url", help="base URL of the service, such as http://127.0.0.1:8000")
    target.add_argument("--key", help="the attacker's API key (visible to other users of this machine; prefer --key-env)")
    target.add_argument("--key-env", default="MLWARDEN_API_KEY", help="environment variable holding the API key (default MLWARDEN_API_KEY)")
    target.add_argument("--allow-remote", action="store_true", help="allow a --url outside the loopback interface (extraction, evasion)")
    target.add_argument("--compare-guards", action="store_true", help="start local services with and without each guard and attack each")
    target.add_argument("--model", default="lenet5", help="model served by --compare-guards, and the local reference for scoring (default lenet5)")
    target.add_argument("--no-reference", action="store_true", help="do not score against a local copy of the model (a truly remote service)")
    target.add_argument("--data", default="fashion-mnist", help="data set whose test split feeds the attacks (default fashion-mnist)")
    target.add_argument("--detector", choices=("mahalanobis", "squeeze-detector"), help="with --compare-guards, include the detector guard")
    target.add_argument("--output", type=Path, help="write the results as JSON to this file")
    defaults = AttackSettings()
    settings = parser.add_argument_group("attack settings")
    settings.add_argument("--method", help="extraction: jacobian (default) or knockoff; evasion: a query-based attack name (default square)")
    settings.add_argument("--transfer", choices=("public", "synthetic"), default=defaults.transfer, help="Knockoff transfer set (default public)")
    settings.add_argument("--budget", type=int, default=defaults.budget, help=f"extraction queries (default {defaults.budget})")
    settings.add_argument("--epochs", type=int, default=defaults.epochs, help=f"training epochs of the copy per checkpoint (default {defaults.epochs})")
    settings.add_argument("--seed-size", type=int, default=defaults.seed_size, help=f"seed images of Jacobian augmentation (default {defaults.seed_size})")
    settings.add_argument("--count", type=int, default=defaults.count, help=f"evasion: images attacked (default {defaults.count})")
    settings.add_argument("--eps", type=float, default=defaults.eps, help=f"evasion: L-inf budget (default {defaults.eps})")
    settings.add_argument("--max-queries", type=int, default=defaults.max_queries, help=f"evasion: queries per image (default {defaults.max_queries})")
    settings.add_argument("--attempts", type=int, default=defaults.attempts, help=f"keys: requests sent (default {defaults.attempts})")
    settings.add_argument("--requests", type=int, default=defaults.requests, help=f"flood: requests sent at most (default {defaults.requests})")
    settings.add_argument("--concurrency", type=int, default=defaults.concurrency, help=f"flood: requests in flight (default {defaults.concurrency})")
    settings.add_argument("--max-seconds", type=float, default=defaults.max_seconds, help=f"flood and keys: time limit in seconds (default {defaults.max_seconds:g})")
    settings.add_argument("--max-wait", type=float, default=defaults.max_wait, help=f"total seconds a client may wait after 429 responses before it stops (default {defaults.max_wait:g})")
    settings.add_argument("--seed", type=int, default=defaults.seed, help="seed of the attack's random choices (default 0)")
    parser.set_defaults(func=run)


def _settings(args: argparse.Namespace) -> AttackSettings:
    method = args.method or ("square" if args.name == "evasion" else "jacobian")
    return with_method(
        AttackSettings(
            method=method,
            transfer=args.transfer,
            budget=args.budget,
            epochs=args.epochs,
            seed_size=args.seed_size,
            count=args.count,
            eps=args.eps,
            max_queries=args.max_queries,
            attempts=args.attempts,
            requests=args.requests,
            concurrency=args.concurrency,
            max_seconds=args.max_seconds,
            max_wait=args.max_wait,
            seed=args.seed,
        ),
        args.name,
    )


def run(args: argparse.Namespace) -> int:
    from ..attacks.api import check_loopback_url
    from ..data import load_dataset

    if args.compare_guards == bool(args.url):
        raise ParameterError("give either --url URL (attack a running service) or --compare-guards (local drill)", value=args.url)
    settings = _settings(args)
    if getattr(args, "verbose", 0) == 0:
        # The drill's services log every rejection they make; the table below sums them up.
        logging.getLogger("mlwarden.serve").setLevel(logging.ERROR)
    data = load_dataset(args.data, "test")
    if args.compare_guards:
        from ..serve.model import load_served_model

        model = load_served_model(args.model)
        detector = _fit_detector(args.detector, model, args.data) if args.detector else None
        document = compare_guards(args.name, settings, model, data, detector=detector)
        print(_table(args.name, document["rows"]))
    else:
        if args.name in ("keys", "flood") or not args.allow_remote:
            check_loopback_url(args.url, f"attack {args.name}")
        token = args.key or os.environ.get(args.key_env) or None
        reference = None
        if not args.no_reference:
            from ..serve.model import load_served_model

            reference = load_served_model(args.model).module
        outcome = run_attack(args.name, args.url, token, settings, data, reference=reference)
        document = {"schema": "mlwarden.api-attack/1", "attack": args.name, "url": args.url, "outcome": outcome}
        print(_table(args.name, [{"configuration": args.url, "outcome": outcome, "service": {}}]))
    if args.output:
        args.output.write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"wrote {args.output}")
    return 0


def _fit_detector(name: str, model: Any, data: str) -> Any:
    from .serve import _fit_detector as fit

    return fit(name, model, data, 5000)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _reason(text: str | None) -> str:
    return text or "-"


def _table(name: str, rows: list[dict[str, Any]]) -> str:
    """Render the rows of a drill (or one run) as a table with the figures that matter for the attack."""
    lines = []
    for row in rows:
        outcome, service = row["outcome"], row.get("service", {})
        alerts = service.get("alerts")
        if name == "extraction":
            lines.append([
                row["configuration"], outcome.get("queries"), _percent(outcome.get("agreement")),
                _percent(outcome.get("accuracy")), "-" if alerts is None else alerts, _reason(outcome.get("stopped")),
            ])
        elif name == "evasion":
            lines.append([
                row["configuration"], outcome.get("samples"), _percent(outcome.get("success_rate")), outcome.get("queries"),
                "-" if alerts is None else alerts, _reason(outcome.get("stopped")),
            ])
        elif name == "keys":
            statuses: dict[str, int] = {}
            for counts in outcome.get("statuses", {}).values():
                for status, count in counts.items():
                    statuses[status] = statuses.get(status, 0) + count
            lines.append([
                row["configuration"], outcome.get("attempts"), outcome.get("accepted"), statuses.get("401", 0),
                statuses.get("429", 0), outcome.get("distinct_401_bodies"),
            ])
        else:
            flood, bystander = outcome["flood"], outcome.get("bystander") or {}
            lines.append([
                row["configuration"], flood["requests"], flood["accepted"], flood["rate_limited"], flood["accepted_per_second"],
                f"{bystander.get('accepted', '-')}/{bystander.get('requests', '-')}", bystander.get("p99_ms", "-"),
            ])
    headers = {
        "extraction": ["configuration", "queries", "agreement", "accuracy", "alerts", "stopped"],
        "evasion": ["configuration", "images", "success", "queries", "alerts", "stopped"],
        "keys": ["configuration", "attempts", "accepted", "401", "429", "distinct 401 bodies"],
        "flood": ["configuration", "sent", "accepted", "429", "accepted/s", "bystander ok", "bystander p99 ms"],
    }[name]
    return format_table(headers, lines)
