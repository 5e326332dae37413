"""Attack names of the black-box, transfer, universal and patch attacks, registered for ``--attack`` on import.

Defaults are sized for 28x28 gray images in [0, 1] such as Fashion-MNIST:
an L-inf budget of 0.1 for the per-image attacks, 1,000 queries per sample
for the query-based ones. The rates quoted in the comments were measured on
the shipped LeNet and the first Fashion-MNIST test images, as
docs/attacks-blackbox.md describes. Other models and data sets give other
rates.
"""

from __future__ import annotations

from ..registry import AttackEntry, register_attack
from .hopskipjump import HopSkipJump
from .onepixel import OnePixelAttack
from .patch import AdversarialPatch
from .simba import SimpleBlackBoxAttack
from .square import SquareAttack
from .transfer import TransferAttack
from .universal import UniversalPerturbation

__all__ = ["BLACKBOX_ATTACKS", "LINF_EPS", "UNIVERSAL_EPS", "TRANSFER_EPS", "PATCH_TARGET"]

LINF_EPS = 0.1

# A universal perturbation needs a larger budget than a per-image one to fool most images:
# on the shipped LeNet, 0.1 fools about a quarter of the test images, 0.2 most of them.
UNIVERSAL_EPS = 0.2

# Perturbations crafted on a surrogate transfer less than those searched on the target: on the
# shipped LeNet, BIM on the default surrogate fools it on about 35% of the images at 0.1, 60% at 0.15.
TRANSFER_EPS = 0.2

# Class the patch is trained towards by default: "Bag" in Fashion-MNIST, one of the easiest targets there.
PATCH_TARGET = 8

BLACKBOX_ATTACKS = ("square", "simba", "hsja", "onepixel", "transfer", "universal", "patch")

register_attack(
    AttackEntry(
        "square",
        SquareAttack,
        {"norm": "linf", "max_queries": 1000},
        LINF_EPS,
        "Square attack, score-based random search (L-inf; norm=l2 for L2)",
    )
)
register_attack(
    AttackEntry(
        "simba",
        SimpleBlackBoxAttack,
        {"basis": "dct", "step_size": 0.2, "max_queries": 1000},
        None,
        "SimBA-DCT, score-based search along random orthonormal directions (L2)",
    )
)
register_attack(
    AttackEntry(
        "hsja",
        HopSkipJump,
        {"norm": "l2", "max_queries": 1000},
        None,
        "HopSkipJump, decision-based boundary walk (labels only; L2, norm=linf for L-inf)",
    )
)
register_attack(
    AttackEntry(
        "onepixel",
        OnePixelAttack,
        {"pixels": 20, "values": "extreme", "crossover": 0.5, "population": 100, "max_queries": 2000},
        None,
        "few-pixel attack by differential evolution, 20 pixels by default (L0)",
    )
)
register_attack(
    AttackEntry(
        "transfer",
        TransferAttack,
        {"attack": "bim", "labels": "queries", "train_samples": 20_000, "epochs": 5},
        TRANSFER_EPS,
        "transfer attack: BIM on a LeNet surrogate trained on the target's labels of training images (L-inf)",
    )
)
register_attack(
    AttackEntry(
        "universal",
        UniversalPerturbation,
        {"norm": "linf", "fit_samples": 2000, "epochs": 5},
        UNIVERSAL_EPS,
        "universal adversarial perturbation fitted on training images, one for all inputs (L-inf)",
    )
)
register_attack(
    AttackEntry(
        "patch",
        AdversarialPatch,
        {"size": 18, "fit_samples": 2000, "epochs": 5, "target": PATCH_TARGET},
        None,
        "adversarial patch at random positions, trained towards one class (targeted)",
    )
)
