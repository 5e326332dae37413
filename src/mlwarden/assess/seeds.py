"""Seeds of work units, derived from the plan's seed and what a unit computes.

An assessment may be split into units (attack x defense x data shard) and run
on any number of workers. Every random choice of an attack (random targets,
random starts, fitted perturbations) is seeded from the plan's seed and the
attack's identity, never from the shard, the worker or the order of
execution. Per-sample randomness is further keyed by the global sample index
(see :class:`~mlwarden.attacks.base.EvasionAttack`), so any split of the data
gives the same per-sample results as one run over the whole set.

The defense is deliberately not part of the identity: the same attack against
the undefended and the defended model draws the same targets and starts, so
the two runs form paired samples.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["derive_seed", "attack_identity", "SEED_BITS"]

# Seeds stay below 2**31 so that callers may scale them (AssessmentContext.generator
# multiplies by about 10**6) without leaving the range torch.Generator.manual_seed accepts.
SEED_BITS = 31


def attack_identity(name: str, settings: dict[str, Any]) -> str:
    """Return a canonical text for an attack and its settings, independent of the settings' order."""
    return name + ":" + json.dumps(settings, sort_keys=True, default=repr, separators=(",", ":"))


def derive_seed(plan_seed: int, *identity: str) -> int:
    """Return a seed in ``[0, 2**31)`` from the plan's seed and the parts of a unit's identity.

    The seed is the first bytes of a SHA-256 digest, so it is the same on
    every machine and Python version (``hash()`` is salted per process).

    Examples
    --------
    >>> derive_seed(0, "fgsm:{}") == derive_seed(0, "fgsm:{}")
    True
    >>> derive_seed(0, "fgsm:{}") != derive_seed(1, "fgsm:{}")
    True
    """
    text = json.dumps([int(plan_seed), *identity], separators=(",", ":"))
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & ((1 << SEED_BITS) - 1)
