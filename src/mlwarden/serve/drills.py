"""Attacks against a running service, and drills that measure what each guard changes.

:func:`run_attack` runs one of mlwarden's API attacks against a service URL:

- ``extraction``: Knockoff Nets or Jacobian-based augmentation through the
  API, reporting the copy's agreement and accuracy against queries;
- ``evasion``: a black-box evasion attack of the registry (Square by
  default) whose every query goes through the API;
- ``keys``: requests without keys, malformed keys and guessed keys;
- ``flood``: a bounded request flood, with an ordinary client alongside.

:func:`compare_guards` starts the service on 127.0.0.1 once per guard
configuration: no guards, every guard, and every guard but one for each
guard that matters to the attack. It runs the attack against each and
returns one row per configuration with the attack's outcome and the
service's view (alerts, rejections by status). Reading a row against the
"all" row shows what that guard changes.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._validation import check_choice
from ..data import Dataset
from .client import ServiceClient, ServiceRefused
from .config import GUARDS, OutputPolicy, ServiceConfig
from .model import ServedModel
from .server import ServiceThread, build_service


if TYPE_CHECKING:
    from ..defenses.evasion.base import AdversarialDetector

__all__ = ["ATTACK_NAMES", "RELEVANT_GUARDS", "AttackSettings", "run_attack", "guard_configurations", "compare_guards"]

logger = logging.getLogger(__name__)

ATTACK_NAMES = ("extraction", "evasion", "keys", "flood")

# Guards that can change each attack's outcome; the drill leaves each of them out in turn.
RELEVANT_GUARDS = {
    "extraction": ("auth", "rate-limit", "monitor", "hardening"),
    "evasion": ("rate-limit", "monitor", "hardening", "detector"),
    "keys": ("auth", "rate-limit"),
    "flood": ("rate-limit", "payload"),
}

# Slices of the data set (the test split of the served model's data): scoring, evasion targets, attacker's pool.
_EVALUATION = slice(0, 1000)
_EVASION_START = 1000
_POOL_START = 2000


@dataclass
class AttackSettings:
    """Settings of the API attacks; each attack reads the ones that concern it.

    Attributes
    ----------
    method : str
        Extraction: ``jacobian`` or ``knockoff``. Evasion: an attack name of
        the registry that works on query models (``square`` by default).
    transfer : str
        Knockoff transfer set, ``public`` or ``synthetic``.
    budget : int
        Extraction queries.
    epochs : int
        Training epochs of the stolen copy at each checkpoint.
    seed_size : int
        Seed images of Jacobian-based augmentation.
    count, eps, max_queries : int, float, int
        Evasion: images attacked, L-inf budget, queries per image.
    attempts : int
        Key probe: requests sent.
    requests, concurrency, max_seconds : int, int, float
        Flood bounds.
    max_wait : float
        Total seconds a client may wait after 429 responses before it stops.
    seed : int
    """

    method: str = "jacobian"
    transfer: str = "public"
    budget: int = 800
    epochs: int = 5
    seed_size: int = 50
    count: int = 20
    eps: float = 0.1
    max_queries: int = 300
    attempts: int = 120
    requests: int = 1000
    concurrency: int = 16
    max_seconds: float = 10.0
    max_wait: float = 5.0
    seed: int = 0


def run_attack(
    name: str,
    url: str,
    token: str | None,
    settings: AttackSettings,
    data: Dataset,
    *,
    reference: nn.Module | None = None,
    known_key_id: str | None = None,
    bystander_token: str | None = None,
) -> dict[str, Any]:
    """Run one API attack against the service at ``url`` and return its outcome as plain data.

    Parameters
    ----------
    name : {"extraction", "evasion", "keys", "flood"}
    url : str
    token : str or None
        The attacker's API key (unused by ``keys``).
    settings : AttackSettings
    data : Dataset
        Test split of the served model's data set: the attacker's pool,
        the evasion targets and the scoring set are disjoint slices of it.
    reference : nn.Module, optional
        The defender's local copy of the served model, for agreement and for
        checking evasion results without going through the API.
    known_key_id : str, optional
        A real key id for the ``keys`` probe to guess secrets of.
    bystander_token : str, optional
        An ordinary client's key that sends requests during a ``flood``.
    """
    check_choice(name, "attack", "run_attack", ATTACK_NAMES)
    if name == "extraction":
        return _extraction(url, token, settings, data, reference)
    if name == "evasion":
        return _evasion(url, token, settings, data, reference)
    if name == "keys":
        from ..attacks.api import probe_keys

        return probe_keys(url, attempts=settings.attempts, known_key_id=known_key_id, max_seconds=settings.max_seconds).to_dict()
    from ..attacks.api import flood

    body = _prediction_body(data.images[_EVASION_START : _EVASION_START + 1])
    result = flood(
        url,
        token,
        body,
        requests=settings.requests,
        concurrency=settings.concurrency,
        max_seconds=settings.max_seconds,
        bystander_token=bystander_token,
    )
    return result.to_dict()


def _prediction_body(images: torch.Tensor) -> bytes:
    import json

    return json.dumps({"inputs": images.tolist()}).encode("utf-8")


def _extraction(
    url: str, token: str | None, settings: AttackSettings, data: Dataset, reference: nn.Module | None
) -> dict[str, Any]:
    from ..attacks.extraction import ExtractionEvaluation, JacobianAugmentation, KnockoffNets
    from .query_model import ServiceQueryModel

    check_choice(settings.method, "method", "extraction", ("jacobian", "knockoff"))
    evaluation = ExtractionEvaluation(reference, data.images[_EVALUATION], data.labels[_EVALUATION])
    pool = data.images[_POOL_START:]
    with ServiceClient(url, token, max_wait=settings.max_wait) as client:
        try:
            victim = ServiceQueryModel(client)
        except ServiceRefused as refusal:
            return {"queries": 0, "stopped": refusal.message, "agreement": None, "accuracy": None, "checkpoints": []}
        attack: KnockoffNets | JacobianAugmentation
        if settings.method == "knockoff":
            attack = KnockoffNets(transfer=settings.transfer, epochs=settings.epochs, seed=settings.seed)
        else:
            attack = JacobianAugmentation(seed_size=settings.seed_size, epochs=settings.epochs, seed=settings.seed)
        result = attack.extract(victim, pool, budget=settings.budget, evaluation=evaluation)
        outcome = result.to_dict()
        outcome["output_mode"] = victim.output_mode
        outcome["seconds_waiting"] = round(client.waited, 3)
        return outcome


def _evasion(
    url: str, token: str | None, settings: AttackSettings, data: Dataset, reference: nn.Module | None
) -> dict[str, Any]:
    from ..attacks.api import evade_through_api
    from ..attacks.registry import get_attack_entry
    from .query_model import ServiceQueryModel

    method = settings.method if settings.method not in ("jacobian", "knockoff") else "square"
    entry = get_attack_entry(method)
    options = {"max_queries": settings.max_queries} if "max_queries" in entry.setting_names() else {}
    attack, call = entry.build(options)
    eps = settings.eps if call.get("eps") is not None else None
    images = data.images[_EVASION_START : _EVASION_START + settings.count]
    labels = data.labels[_EVASION_START : _EVASION_START + settings.count]
    with ServiceClient(url, token, max_wait=settings.max_wait) as client:
        try:
            victim = ServiceQueryModel(client, reference=reference)
        except ServiceRefused as refusal:
            return {"attack": method, "samples": 0, "success_rate": None, "queries": 0, "stopped": refusal.message}
        outcome = evade_through_api(victim, attack, images, labels, eps=eps).to_dict()
        outcome["output_mode"] = victim.output_mode
        return outcome


def guard_configurations(
    name: str, base: ServiceConfig, *, with_detector: bool = False
) -> list[tuple[str, ServiceConfig]]:
    """Return the labelled configurations a drill runs: no guards, all guards, and all but each relevant one."""
    available = [guard for guard in GUARDS if guard != "detector" or with_detector]
    everything = set(available)
    configurations = [("none", base.with_guards(set())), ("all", base.with_guards(everything))]
    for guard in RELEVANT_GUARDS[name]:
        if guard in everything:
            configurations.append((f"all but {guard}", base.with_guards(everything - {guard})))
    return configurations


def compare_guards(
    name: str,
    settings: AttackSettings,
    model: ServedModel,
    data: Dataset,
    *,
    base: ServiceConfig | None = None,
    detector: AdversarialDetector | None = None,
    workdir: str | Path | None = None,
) -> dict[str, Any]:
    """Run an attack against a fresh local service per guard configuration; return the rows.

    Parameters
    ----------
    name : {"extraction", "evasion", "keys", "flood"}
    settings : AttackSettings
    model : ServedModel
        The model every service serves; also the reference for scoring.
    data : Dataset
        Test split of the model's data set.
    base : ServiceConfig, optional
        Settings other than the guards; by default the service defaults with
        label-only outputs, so that the hardening guard shows its strongest form.
    detector : AdversarialDetector, optional
        A fitted detector; without one the ``detector`` guard is left out.
    workdir : path-like, optional
        Where the databases go; a temporary folder by default.
    """
    check_choice(name, "attack", "compare_guards", ATTACK_NAMES)
    base = base or ServiceConfig(output=OutputPolicy(mode="label"))
    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as folder:
        for index, (label, config) in enumerate(guard_configurations(name, base, with_detector=detector is not None)):
            logger.info("drill %s: configuration %r (guards %s)", name, label, ", ".join(sorted(config.guards)) or "none")
            service = build_service(model, Path(folder) / f"drill-{index}.db", config, detector=detector)
            _, attacker = service.keys.create("attacker", ["predict"], rate=config.default_rate, burst=config.default_burst)
            bystander_key, bystander = service.keys.create("bystander", ["predict"])
            with ServiceThread(service) as thread:
                outcome = run_attack(
                    name,
                    thread.url,
                    attacker,
                    settings,
                    data,
                    reference=model.module,
                    known_key_id=bystander_key.key_id,
                    bystander_token=bystander,
                )
                service.audit.flush()
                rejections = service.database.read().execute(
                    "SELECT status, COUNT(*) AS count FROM audit WHERE status >= 400 GROUP BY status"
                ).fetchall()
                alerts = service.alerts()
            rows.append(
                {
                    "configuration": label,
                    "guards": [guard for guard in GUARDS if guard in config.guards],
                    "outcome": outcome,
                    "service": {
                        "alerts": len(alerts),
                        "first_alert_queries": alerts[-1]["queries"] if alerts else None,
                        "rejections": {str(row["status"]): row["count"] for row in rejections},
                    },
                }
            )
    return {
        "schema": "mlwarden.guard-drill/1",
        "attack": name,
        "settings": asdict(settings),
        "output_policy": base.output.to_dict(),
        "rows": rows,
    }


def with_method(settings: AttackSettings, name: str) -> AttackSettings:
    """Return ``settings`` with the default method of attack ``name`` when none fits it."""
    if name == "evasion" and settings.method in ("jacobian", "knockoff"):
        return replace(settings, method="square")
    return settings
