"""White-box and black-box evasion attacks, one module per family."""

from .deepfool import DeepFool
from .fast_gradient import BIM, FGSM, BasicIterativeMethod, FastGradientSignMethod
from .jsma import JSMA, SaliencyMapMethod

__all__ = [
    "BIM",
    "FGSM",
    "JSMA",
    "BasicIterativeMethod",
    "DeepFool",
    "FastGradientSignMethod",
    "SaliencyMapMethod",
]
