"""Defenses against evasion, one module per family, and the adaptive attacks that test them.

- robust training: :mod:`.adversarial_training` (PGD, fast FGSM, TRADES, Gaussian noise);
- input transformations: :mod:`.squeezing` (bit depth, median), :mod:`.jpeg`;
- randomization: :mod:`.randomization` (random resize-and-pad, random transformations);
- ensembles: :mod:`.ensemble`;
- certified robustness: :mod:`.smoothing` (randomized smoothing);
- detection: :mod:`.feature_squeezing`, :mod:`.mahalanobis`;
- adaptive evaluation: :mod:`.adaptive` (BPDA, EOT, detector-aware PGD).

Every defense's docstring names the adaptive attack it is known to fall to,
and its class attribute ``known_bypass`` carries that name into reports.
"""

from .adaptive import (
    BPDAView,
    ExpectationOverTransformation,
    SoftSmoothingView,
    adaptive_method,
    adaptive_model,
    detector_aware_attack,
)
from .adversarial_training import (
    TRADES,
    TRAINING_DEFENSES,
    FastAdversarialTraining,
    GaussianAugmentation,
    PGDAdversarialTraining,
    RobustTraining,
    build_training_defense,
    pgd_perturbation,
    robust_accuracy,
)
from .base import AdversarialDetector, InputTransformDefense, straight_through
from .ensemble import Ensemble
from .feature_squeezing import FeatureSqueezingDetector
from .jpeg import JpegCompression, jpeg_compress
from .mahalanobis import MahalanobisDetector
from .randomization import RandomResizePad, RandomTransformation
from .smoothing import ABSTAIN, RandomizedSmoothing, certified_accuracy, clopper_pearson_lower, clopper_pearson_upper
from .squeezing import BitDepthReduction, MedianSmoothing, median_filter, reduce_bit_depth

__all__ = [
    "ABSTAIN",
    "TRADES",
    "TRAINING_DEFENSES",
    "AdversarialDetector",
    "BPDAView",
    "BitDepthReduction",
    "Ensemble",
    "ExpectationOverTransformation",
    "FastAdversarialTraining",
    "FeatureSqueezingDetector",
    "GaussianAugmentation",
    "InputTransformDefense",
    "JpegCompression",
    "MahalanobisDetector",
    "MedianSmoothing",
    "PGDAdversarialTraining",
    "RandomResizePad",
    "RandomTransformation",
    "RandomizedSmoothing",
    "RobustTraining",
    "SoftSmoothingView",
    "adaptive_method",
    "adaptive_model",
    "build_training_defense",
    "certified_accuracy",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "detector_aware_attack",
    "jpeg_compress",
    "median_filter",
    "pgd_perturbation",
    "reduce_bit_depth",
    "robust_accuracy",
    "straight_through",
]
