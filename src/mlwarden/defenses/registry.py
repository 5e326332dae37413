"""Defense names for ``--defense`` and assessment plans, with their builders.

Each entry maps a lower-case name to a builder ``factory(model, context,
**settings)`` that wraps the assessed model (or fits nothing yet, for
detectors), and lists the evaluation settings that the assessment consumes
instead of the builder (such as ``eot_samples``). Unknown settings are
rejected with the list of known ones.

A robust-trained model is not a defense entry: train it with ``mlwarden
train --defense pgd`` and pass the weights file with ``--model``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import PlanError
from .evasion import (
    BitDepthReduction,
    Ensemble,
    FeatureSqueezingDetector,
    JpegCompression,
    MahalanobisDetector,
    MedianSmoothing,
    RandomizedSmoothing,
    RandomResizePad,
    RandomTransformation,
)
from .evasion.randomization import RANDOM_TRANSFORM_KINDS

__all__ = ["DefenseEntry", "DEFENSES", "register_defense", "get_defense_entry", "MODEL_DEFENSE", "DETECTOR"]

MODEL_DEFENSE = "model"
DETECTOR = "detector"

# Evaluation settings every defense of a kind accepts, with their defaults.
_MODEL_EVALUATION = {"eot_samples": 10}
_DETECTOR_EVALUATION = {"fit_samples": 5000, "attack_steps": 40, "detector_weight": 1.0}


@dataclass(frozen=True)
class DefenseEntry:
    """A named defense of ``assess``: its builder, kind and evaluation settings.

    Attributes
    ----------
    name : str
        Name used by ``--defense`` and in reports.
    kind : {"model", "detector"}
        ``model`` for defenses that change predictions (an ``nn.Module``
        wrapping the model), ``detector`` for detectors of adversarial inputs.
    factory : callable
        ``factory(model, context, **settings)`` returning the defense.
    evaluation : dict
        Settings consumed by the assessment, with their defaults.
    summary : str
        One line for ``--help`` and the report.
    """

    name: str
    kind: str
    factory: Callable[..., Any]
    evaluation: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    def setting_names(self) -> list[str]:
        """Return the builder's settings followed by the evaluation settings."""
        parameters = inspect.signature(self.factory).parameters.values()
        names = [parameter.name for parameter in parameters if parameter.kind is parameter.KEYWORD_ONLY]
        return names + [name for name in self.evaluation if name not in names]

    def build(self, model: nn.Module, context: Any, settings: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Return the defense built around ``model``, and the evaluation settings merged with their defaults.

        Raises
        ------
        PlanError
            A setting is unknown to this defense.
        MlwardenError
            A setting has an invalid value (the defense's own check).
        """
        known = self.setting_names()
        unknown = [key for key in settings if key not in known]
        if unknown:
            raise PlanError(
                f"defense {self.name!r} has no setting {unknown[0]!r}; its settings are {', '.join(known)}",
                value=unknown[0],
            )
        evaluation = {**self.evaluation, **{key: value for key, value in settings.items() if key in self.evaluation}}
        builder_settings = {key: value for key, value in settings.items() if key not in self.evaluation}
        return self.factory(model, context, **builder_settings), evaluation


DEFENSES: dict[str, DefenseEntry] = {}


def register_defense(entry: DefenseEntry) -> DefenseEntry:
    """Add an entry to :data:`DEFENSES` and return it."""
    if entry.name in DEFENSES:
        raise ValueError(f"defense name {entry.name!r} is already registered")
    DEFENSES[entry.name] = entry
    return entry


def get_defense_entry(name: str) -> DefenseEntry:
    """Return the entry for ``name``; raise :class:`PlanError` listing the known names otherwise."""
    key = name.strip().lower()
    if key not in DEFENSES:
        raise PlanError(
            f"unknown defense {name!r}; known defenses: {', '.join(sorted(DEFENSES))}. A robust-trained model goes "
            "through --model FILE.safetensors",
            value=name,
        )
    return DEFENSES[key]


def _seed(context: Any, seed: int | None) -> int:
    return int(getattr(context, "seed", 0)) if seed is None else seed


def _bit_depth(model: nn.Module, context: Any, *, bits: int = 4) -> BitDepthReduction:
    return BitDepthReduction(model, bits=bits)


def _median(model: nn.Module, context: Any, *, size: int = 2, approximation: str = "identity") -> MedianSmoothing:
    return MedianSmoothing(model, size=size, approximation=approximation)


def _jpeg(model: nn.Module, context: Any, *, quality: int = 75, approximation: str = "identity") -> JpegCompression:
    return JpegCompression(model, quality=quality, approximation=approximation)


def _random_resize(model: nn.Module, context: Any, *, min_size: int | None = None, seed: int | None = None) -> RandomResizePad:
    return RandomResizePad(model, min_size=min_size, seed=_seed(context, seed))


def _random_transform(
    model: nn.Module,
    context: Any,
    *,
    kinds: Sequence[str] = RANDOM_TRANSFORM_KINDS,
    count: int = 2,
    noise: float = 0.05,
    rotation: float = 10.0,
    shift: float = 2.0,
    min_bits: int = 4,
    seed: int | None = None,
) -> RandomTransformation:
    return RandomTransformation(
        model, kinds=kinds, count=count, noise=noise, rotation=rotation, shift=shift, min_bits=min_bits, seed=_seed(context, seed)
    )


def _ensemble(
    model: nn.Module, context: Any, *, members: Sequence[str] = (), vote: str = "average", include_model: bool = True
) -> Ensemble:
    from ..models import resolve_model

    if isinstance(members, str):
        members = [members]
    if not isinstance(members, Sequence):
        raise PlanError(f"ensemble: members must be a list of model specs, got {members!r}", value=members)
    models = ([model] if include_model else []) + [resolve_model(str(spec)).model for spec in members]
    if len(models) < 2:
        raise PlanError(
            "ensemble needs at least two models: give members=[FILE.safetensors,...] (zoo names, weights files with "
            "sidecars or TorchScript files); the assessed model is included unless include_model=false",
            value=list(members),
        )
    return Ensemble(models, vote=vote)


def _smoothing(
    model: nn.Module, context: Any, *, sigma: float = 0.25, samples: int = 100, seed: int | None = None
) -> RandomizedSmoothing:
    return RandomizedSmoothing(model, sigma=sigma, samples=samples, seed=_seed(context, seed))


def _squeeze_detector(
    model: nn.Module, context: Any, *, bits: int | None = 4, median_size: int | None = 2, fpr: float = 0.05
) -> FeatureSqueezingDetector:
    return FeatureSqueezingDetector(model, bits=bits, median_size=median_size, fpr=fpr)


def _mahalanobis(
    model: nn.Module, context: Any, *, layer: str | None = None, fpr: float = 0.05, calibration_fraction: float = 0.2
) -> MahalanobisDetector:
    return MahalanobisDetector(
        model, layer=layer, fpr=fpr, calibration_fraction=calibration_fraction, seed=_seed(context, None)
    )


register_defense(DefenseEntry("bit-depth", MODEL_DEFENSE, _bit_depth, _MODEL_EVALUATION, "bit-depth reduction (feature squeezing)"))
register_defense(DefenseEntry("median", MODEL_DEFENSE, _median, _MODEL_EVALUATION, "median smoothing"))
register_defense(DefenseEntry("jpeg", MODEL_DEFENSE, _jpeg, _MODEL_EVALUATION, "JPEG-style compression (block DCT quantization)"))
register_defense(
    DefenseEntry("random-resize", MODEL_DEFENSE, _random_resize, _MODEL_EVALUATION, "random resize and pad (Xie et al.)")
)
register_defense(
    DefenseEntry(
        "random-transform", MODEL_DEFENSE, _random_transform, _MODEL_EVALUATION, "random chain of noise, affine, bit-depth, median"
    )
)
register_defense(
    DefenseEntry("ensemble", MODEL_DEFENSE, _ensemble, _MODEL_EVALUATION, "ensemble: averaged probabilities or majority vote")
)
register_defense(
    DefenseEntry(
        "smoothing",
        MODEL_DEFENSE,
        _smoothing,
        {
            **_MODEL_EVALUATION,
            "predict_n": 100,
            "n": 1000,
            "n0": 100,
            "alpha": 0.001,
            "radii": [0.25, 0.5, 1.0],
            "certify_limit": None,
        },
        "randomized smoothing with certified L2 radii (Cohen et al.)",
    )
)
register_defense(
    DefenseEntry("squeeze-detector", DETECTOR, _squeeze_detector, _DETECTOR_EVALUATION, "feature-squeezing detector")
)
register_defense(
    DefenseEntry("mahalanobis", DETECTOR, _mahalanobis, _DETECTOR_EVALUATION, "Mahalanobis distance on hidden features")
)
