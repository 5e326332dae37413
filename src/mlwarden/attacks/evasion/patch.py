"""Adversarial patch: a small square, trained once, that turns any image it is pasted on into a target class.

Reference: T. B. Brown, D. Mané, A. Roy, M. Abadi, J. Gilmer, "Adversarial
Patch", arXiv:1712.09665, 2017.

The patch models a physical sticker: it replaces the pixels under it instead
of adding a bounded perturbation, and it must work wherever it lands. It is
trained on a subset of the training split, with expectation over
transformations restricted to random positions. Each step pastes it at a
random place on every image of a batch and descends the cross-entropy of the
target class with Adam, and its values are then clipped to the bounds. At
attack time it
is pasted at a random position per image, drawn from the attack's seed and
the image's global index, so the evaluation uses images and positions the
patch was not trained on.

Limitations: fitting needs the model's gradients (white-box). Rotations,
scaling and lighting changes of a physical sticker are not modelled. One
patch is trained per target class. The patch may cover the object, so on
small images part of its success comes from occlusion: on the shipped
Fashion-MNIST LeNet, a patch must cover about 40% of the image (18x18
pixels) to turn most images into the target class.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..._validation import check_int, check_real, owner_of
from ...data import Dataset
from ...errors import ParameterError
from ...threat import Frequency, Goal, Knowledge, Level, Scope, Specificity, Stage, ThreatProfile
from ..base import EvasionAttack
from ..gradients import CostCounter, evaluation_mode
from ._fitting import progress_disabled, training_subset
from ._querying import SampleRandom
from ._windows import place_pattern, random_corners

__all__ = ["AdversarialPatch"]

logger = logging.getLogger(__name__)

# Salt of the generator that picks the training images.
_SUBSET_SALT = 29


def paste_patch(
    images: torch.Tensor, patch: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """Return ``images`` (N, C, H, W) with ``patch`` (C, s, s) replacing the pixels at each corner."""
    height, width = images.shape[-2:]
    placed, mask = place_pattern(patch, rows, cols, height, width)
    return torch.where(mask, placed, images)


class AdversarialPatch(EvasionAttack):
    """Targeted adversarial patch at random positions (white-box fit).

    Parameters
    ----------
    size : int, default 18
        Side of the square patch in pixels, at least 1 and smaller than the
        images. The default is sized for 28x28 images: on the shipped
        Fashion-MNIST LeNet, patches towards class 8 of side 8, 12, 14, 16
        and 18, trained for 10 epochs on 2,000 images, turned about 14%,
        27%, 43%, 57% and 87% of 500 unseen test images into the target.
    fit_samples : int, default 2000
        Training images the patch is fitted on.
    epochs : int, default 5
    batch_size : int, default 100
    learning_rate : float, default 0.05
        Adam step size, in pixel units.
    seed : int, default 0
        Seed of the initial patch, the training positions and the
        evaluation positions.

    Examples
    --------
    >>> import torch
    >>> from mlwarden.data import load_dataset
    >>> from mlwarden.models import load_pretrained
    >>> lenet, _ = load_pretrained("lenet5")
    >>> attack = AdversarialPatch(epochs=1)
    >>> patch = attack.fit(lenet, load_dataset("fashion-mnist", "train").subset(500), target=8)  # doctest: +SKIP
    >>> test = load_dataset("fashion-mnist", "test").subset(100)
    >>> attack(lenet, test.images, test.labels, torch.full((100,), 8)).success_rate > 0.5  # doctest: +SKIP
    True
    """

    name = "patch"
    norm = None
    needs_eps = False
    profile = ThreatProfile(
        goal=Goal.INTEGRITY,
        stage=Stage.INFERENCE,
        knowledge=Knowledge.WHITE_BOX,
        frequency=Frequency.ITERATIVE,
        specificity=(Specificity.TARGETED,),
        scope=Scope.UNIVERSAL,
        level=Level.PIXEL,
    )

    def __init__(
        self,
        *,
        size: int = 18,
        fit_samples: int = 2000,
        epochs: int = 5,
        batch_size: int = 100,
        learning_rate: float = 0.05,
        seed: int = 0,
    ) -> None:
        owner = owner_of(self)
        self.size = check_int(size, "size", owner, low=1)
        self.fit_samples = check_int(fit_samples, "fit_samples", owner, low=1)
        self.epochs = check_int(epochs, "epochs", owner, low=1)
        self.batch_size = check_int(batch_size, "batch_size", owner, low=1)
        self.learning_rate = check_real(learning_rate, "learning_rate", owner, low=0.0, low_inclusive=False)
        self.seed = check_int(seed, "seed", owner)
        self._fitting: Dataset | None = None
        self._patches: dict[int, torch.Tensor] = {}
        self._progress: bool | None = None

    def settings(self) -> dict[str, object]:
        """Return the constructor settings, without the fitting data and patches."""
        keys = ("size", "fit_samples", "epochs", "batch_size", "learning_rate", "seed")
        return {key: getattr(self, key) for key in keys}

    # --- fitting ------------------------------------------------------------------------------

    def prepare(self, model: nn.Module, context: Any) -> None:
        """Pick the training images from the training split (``assess`` calls this once).

        A patch is trained on first use of each target class.
        """
        self._fitting = training_subset(context, self.fit_samples, _SUBSET_SALT)
        self._patches = {}
        self._progress = context.progress

    def fit(self, model: nn.Module, train: Dataset, target: int) -> torch.Tensor:
        """Train the patch for class ``target`` on the first ``fit_samples`` images of ``train``; return it (C, s, s)."""
        self._fitting = train.subset(self.fit_samples)
        return self._fit(model, int(target), train.bounds)

    def patch(self, target: int) -> torch.Tensor | None:
        """Return the patch trained for class ``target``, or None."""
        return self._patches.get(int(target))

    def _check_size(self, height: int, width: int) -> None:
        if self.size >= min(height, width):
            raise ParameterError(
                f"{self.name}: size must be smaller than the images ({height}x{width}), got {self.size}", value=self.size
            )

    def _fit(self, model: nn.Module, target: int, bounds: tuple[float, float]) -> torch.Tensor:
        if self._fitting is None:
            raise ParameterError(
                f"{self.name}: no training images; call fit(model, train_data, target) first (assess does it "
                "through prepare)",
                value=None,
            )
        low, high = bounds
        # Images of the target class teach the patch nothing.
        keep = self._fitting.labels != target
        images = self._fitting.images[keep]
        channels, height, width = images.shape[1:]
        self._check_size(height, width)

        generator = torch.Generator().manual_seed(self.seed * 1009 + target)
        patch = (low + (high - low) * torch.rand(channels, self.size, self.size, generator=generator)).requires_grad_(True)
        optimizer = torch.optim.Adam([patch], lr=self.learning_rate)
        target_labels = torch.full((self.batch_size,), target, dtype=torch.int64)

        steps = self.epochs * -(-len(images) // self.batch_size)
        bar = tqdm(total=steps, desc=f"{self.name} fit target={target}", unit="step", disable=progress_disabled(self._progress), leave=False)
        with evaluation_mode(model), torch.enable_grad():
            for _ in range(self.epochs):
                order = torch.randperm(len(images), generator=generator)
                for start in range(0, len(images), self.batch_size):
                    batch = images[order[start : start + self.batch_size]]
                    corners = torch.rand(2, len(batch), generator=generator)
                    rows = random_corners(corners[0], self.size, height)
                    cols = random_corners(corners[1], self.size, width)
                    loss = F.cross_entropy(model(paste_patch(batch, patch, rows, cols)), target_labels[: len(batch)])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    with torch.no_grad():
                        patch.clamp_(low, high)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()

        trained = patch.detach()
        self._patches[target] = trained
        logger.info("%s: trained an %dx%d patch for class %d on %d images", self.name, self.size, self.size, target, len(images))
        return trained

    # --- the attack -------------------------------------------------------------------------

    def positions(self, indices: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the evaluation corners (rows, cols) of the samples with these global indices."""
        uniform = SampleRandom(self.seed, indices, salt=1).uniform(2)
        return random_corners(uniform[:, 0], self.size, height), random_corners(uniform[:, 1], self.size, width)

    def _run(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None,
        eps: float | None,
        bounds: tuple[float, float],
        indices: torch.Tensor,
        counter: CostCounter,
    ) -> torch.Tensor:
        assert targets is not None  # the base class rejects untargeted calls of a targeted-only attack
        height, width = inputs.shape[-2:]
        self._check_size(height, width)
        rows, cols = self.positions(indices, height, width)
        adversarial = inputs.clone()
        for target in targets.unique().tolist():
            patch = self._patches.get(int(target))
            if patch is None:
                patch = self._fit(model, int(target), bounds)
            chosen = (targets == target).nonzero().flatten()
            adversarial[chosen] = paste_patch(inputs[chosen], patch, rows[chosen], cols[chosen])
        return adversarial
