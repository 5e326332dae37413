"""White-box and black-box evasion attacks, one module per family."""

from .apgd import APGD, L2APGD, AutoProjectedGradientDescent, L2AutoProjectedGradientDescent
from .carlini_wagner import CW, CarliniWagnerL2
from .deepfool import DeepFool
from .ensemble import L2StrongestAttack, StrongestAttack
from .fast_gradient import BIM, FGSM, BasicIterativeMethod, FastGradientSignMethod
from .jsma import JSMA, SaliencyMapMethod
from .pgd import PGD, L2PGD, L2ProjectedGradientDescent, ProjectedGradientDescent
from .hopskipjump import HSJA, HopSkipJump
from .onepixel import OnePixel, OnePixelAttack
from .patch import AdversarialPatch
from .simba import SimBA, SimpleBlackBoxAttack
from .square import Square, SquareAttack
from .transfer import TransferAttack
from .universal import UAP, UniversalPerturbation

__all__ = [
    "APGD",
    "CW",
    "L2APGD",
    "L2PGD",
    "PGD",
    "AutoProjectedGradientDescent",
    "CarliniWagnerL2",
    "L2AutoProjectedGradientDescent",
    "L2ProjectedGradientDescent",
    "L2StrongestAttack",
    "ProjectedGradientDescent",
    "StrongestAttack",
    "BIM",
    "FGSM",
    "JSMA",
    "BasicIterativeMethod",
    "DeepFool",
    "FastGradientSignMethod",
    "SaliencyMapMethod",
    "HSJA",
    "AdversarialPatch",
    "HopSkipJump",
    "OnePixel",
    "OnePixelAttack",
    "SimBA",
    "SimpleBlackBoxAttack",
    "Square",
    "SquareAttack",
    "TransferAttack",
    "UAP",
    "UniversalPerturbation",
]
