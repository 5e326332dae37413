"""Attack names of the black-box, transfer, universal and patch attacks, registered for ``--attack`` on import.

Defaults are sized for 28x28 gray images in [0, 1] such as Fashion-MNIST:
an L-inf budget of 0.1 for the per-image attacks, 1,000 queries per sample
for the query-based ones. An attack whose norm is a setting takes its
default budget from the norm, and every L2 default is 15 times the L-inf
one, the ratio of the white-box suite's PGD budgets (L-inf 0.1, L2 1.5).
The rates quoted in the comments were measured on
the shipped LeNet and the first Fashion-MNIST test images, as
docs/attacks-blackbox.md describes. Other models and data sets give other
rates.
"""

from __future__ import annotations


from ..registry import AttackEntry, NormBudgetEntry, register_attack
from .hopskipjump import HopSkipJump
from .onepixel import OnePixelAttack
from .patch import AdversarialPatch
from .simba import SimpleBlackBoxAttack
from .square import SquareAttack
from .transfer import TransferAttack
from .universal import UniversalPerturbation

__all__ = [
    "BLACKBOX_ATTACKS",
    "LINF_EPS",
    "L2_EPS",
    "UNIVERSAL_EPS",
    "UNIVERSAL_L2_EPS",
    "TRANSFER_EPS",
    "TRANSFER_L2_EPS",
    "PATCH_TARGET",
    "NormBudgetEntry",
]

LINF_EPS = 0.1

# On the shipped LeNet and the first 100 test images, Square with 1,000 queries fooled 80% at L2 1.5
# (100% at L-inf 0.1). pgd-l2 uses the same L2 budget, so the two are comparable.
L2_EPS = 1.5

# A universal perturbation needs a larger budget than a per-image one to fool most images:
# on the shipped LeNet, 0.1 fools about a quarter of the test images, 0.2 most of them.
UNIVERSAL_EPS = 0.2
# On the first 500 test images, the L2 perturbation fooled 39%, 71% and 88% at 2.0, 3.0 and 4.0.
UNIVERSAL_L2_EPS = 3.0

# Perturbations crafted on a surrogate transfer less than those searched on the target: on the
# shipped LeNet, BIM on the default surrogate fools it on about 35% of the images at 0.1, 60% at 0.15.
TRANSFER_EPS = 0.2
# With attack=pgd-l2 on the default surrogate, it fooled the shipped LeNet on 32%, 71% and 82% of the
# first 300 test images at L2 1.5, 3.0 and 4.0.
TRANSFER_L2_EPS = 3.0

# Class the patch is trained towards by default: "Bag" in Fashion-MNIST, one of the easiest targets there.
PATCH_TARGET = 8

BLACKBOX_ATTACKS = ("square", "simba", "hsja", "onepixel", "transfer", "universal", "patch")


register_attack(
    NormBudgetEntry(
        "square",
        SquareAttack,
        {"norm": "linf", "max_queries": 1000},
        LINF_EPS,
        f"Square attack, score-based random search (L-inf, eps {LINF_EPS}; norm=l2 for L2, eps {L2_EPS})",
        budgets={"linf": LINF_EPS, "l2": L2_EPS},
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
    NormBudgetEntry(
        "transfer",
        TransferAttack,
        {"attack": "bim", "labels": "queries", "train_samples": 20_000, "epochs": 5},
        TRANSFER_EPS,
        "transfer attack: BIM on a LeNet surrogate trained on the target's labels of training images "
        f"(L-inf, eps {TRANSFER_EPS}; an L2 attack such as attack=pgd-l2 gets eps {TRANSFER_L2_EPS})",
        budgets={"linf": TRANSFER_EPS, "l2": TRANSFER_L2_EPS},
    )
)
register_attack(
    NormBudgetEntry(
        "universal",
        UniversalPerturbation,
        {"norm": "linf", "fit_samples": 2000, "epochs": 5},
        UNIVERSAL_EPS,
        "universal adversarial perturbation fitted on training images, one for all inputs "
        f"(L-inf, eps {UNIVERSAL_EPS}; norm=l2 for L2, eps {UNIVERSAL_L2_EPS})",
        budgets={"linf": UNIVERSAL_EPS, "l2": UNIVERSAL_L2_EPS},
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
