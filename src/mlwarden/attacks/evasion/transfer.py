"""Transfer attack: craft adversarial examples on a surrogate model, then send them to the target.

References: N. Papernot, P. McDaniel, I. Goodfellow, S. Jha, Z. B. Celik,
A. Swami, "Practical black-box attacks against machine learning", AsiaCCS
2017 (surrogate trained on labels obtained from the target); F. Tramèr, N.
Papernot, I. Goodfellow, D. Boneh, P. McDaniel, "The space of transferable
adversarial examples", arXiv:1704.03453, 2017.

The attacker trains a surrogate on the same kind of data, labelled either
with the true labels (a gray-box attacker who has the training data) or
with the target's own predictions, one label query per training image (a
black-box attacker who only has unlabelled data). Any white-box attack of
the registry then runs on the surrogate, and its outputs are sent to the
target unchanged. The reported success rate is the transfer success rate:
the fraction of attacked samples that fool the target.

Limitations: transfer rates depend on how close the surrogate is to the
target (architecture, data, training); a surrogate of another architecture
usually transfers less. Perturbations that exactly reach the surrogate's
boundary (DeepFool, minimal attacks) rarely transfer: use a budgeted attack
such as BIM or PGD with a generous ``eps``.

Cost: the label queries that fit the surrogate are spent once, before any
sample is attacked, and are kept in ``fitting_queries`` (``assess`` reports
them next to the per-sample queries). Per sample, the attack sends only the
final input to the target, so its per-sample query count is 0.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..._validation import check_choice, check_int, check_real, owner_of
from ...data import Dataset
from ...errors import ParameterError
from ...models.query import as_query_model
from ...models.training import TrainingConfig, train_model
from ...models.zoo import ARCHITECTURES, build
from ...threat import Frequency, Goal, Knowledge, Level, Scope, Specificity, Stage, ThreatProfile
from ..base import EvasionAttack
from ..gradients import CostCounter

__all__ = ["TransferAttack"]

logger = logging.getLogger(__name__)

# Salt of the generator that picks the surrogate's training images.
_SUBSET_SALT = 17

# Training images held out to measure how often the surrogate agrees with the target.
_AGREEMENT_SAMPLES = 1000

# Rows per label query while labelling the surrogate's training data.
_LABEL_BATCH = 1000


class TransferAttack(EvasionAttack):
    """Transfer (gray-box) attack through a surrogate model.

    Parameters
    ----------
    attack : str, default "bim"
        Registered name of the white-box attack run on the surrogate.
    attack_settings : dict, optional
        Constructor settings of that attack (its ``eps`` is the call's
        ``eps``). An attack with an ``early_stop`` setting gets
        ``early_stop=False`` unless it is given here. Stopping as soon as the
        surrogate is fooled leaves the input at the surrogate's boundary,
        which rarely fools the target: on the shipped LeNet, about a third
        as often at eps 0.1.
    surrogate : str, default "lenet5"
        Zoo architecture of the surrogate, trained by :meth:`fit`.
    labels : {"queries", "true"}, default "queries"
        Train on the target's predictions (one label query per training
        image), or on the data set's labels. A surrogate that learns the
        target's own decisions transfers far better: on the shipped LeNet,
        about 77% against 42% at eps 0.1.
    train_samples : int, default 20000
        Training images of the surrogate, at least 100.
    epochs : int, default 5
    learning_rate : float, default 1e-3
    seed : int, default 0
        Seed of the surrogate's training.

    Examples
    --------
    >>> from mlwarden.data import load_dataset
    >>> from mlwarden.models import load_pretrained
    >>> target, _ = load_pretrained("lenet5")
    >>> attack = TransferAttack(train_samples=2000, epochs=1)
    >>> attack.fit(target, load_dataset("fashion-mnist", "train"))  # doctest: +SKIP
    >>> test = load_dataset("fashion-mnist", "test").subset(100)
    >>> attack(target, test.images, test.labels, eps=0.1).success_rate > 0.3  # doctest: +SKIP
    True
    """

    name = "transfer"
    norm = "linf"
    needs_eps = False
    profile = ThreatProfile(
        goal=Goal.INTEGRITY,
        stage=Stage.INFERENCE,
        knowledge=Knowledge.GRAY_BOX,
        frequency=Frequency.ONE_SHOT,
        specificity=(Specificity.UNTARGETED, Specificity.TARGETED),
        scope=Scope.INDIVIDUAL,
        level=Level.IMAGE,
    )

    def __init__(
        self,
        *,
        attack: str = "bim",
        attack_settings: dict[str, Any] | None = None,
        surrogate: str = "lenet5",
        labels: str = "queries",
        train_samples: int = 20_000,
        epochs: int = 5,
        learning_rate: float = 1e-3,
        seed: int = 0,
    ) -> None:
        owner = owner_of(self)
        from ..registry import get_attack_entry  # the registry imports this package

        if attack_settings is not None and not isinstance(attack_settings, dict):
            raise ParameterError(
                f"{owner}: attack_settings must be a mapping such as {{'steps': 20}}, got {attack_settings!r}",
                value=attack_settings,
            )
        entry = get_attack_entry(attack)
        white_box_settings = dict(attack_settings or {})
        if "early_stop" in entry.setting_names():
            white_box_settings.setdefault("early_stop", False)
        white_box, call = entry.build(white_box_settings)
        if white_box.profile.knowledge is not Knowledge.WHITE_BOX:
            raise ParameterError(
                f"{owner}: attack must be a white-box attack run on the surrogate, got {attack!r} "
                f"({white_box.profile.knowledge.value})",
                value=attack,
            )
        self.attack = entry.name
        self.attack_settings = dict(attack_settings or {})
        self.surrogate = check_choice(surrogate, "surrogate", owner, sorted(ARCHITECTURES))
        self.labels = check_choice(labels, "labels", owner, ("true", "queries"))
        self.train_samples = check_int(train_samples, "train_samples", owner, low=100)
        self.epochs = check_int(epochs, "epochs", owner, low=1)
        self.learning_rate = check_real(learning_rate, "learning_rate", owner, low=0.0, low_inclusive=False)
        self.seed = check_int(seed, "seed", owner)
        # The transfer attack spends its budget in the white-box attack's norm.
        self.norm = white_box.norm  # type: ignore[misc]
        self.needs_eps = white_box.needs_eps  # type: ignore[misc]
        self._white_box = white_box
        self._default_eps = call.get("eps")
        self._model: nn.Module | None = None
        self.fitting_queries = 0
        self.surrogate_agreement: float | None = None

    def settings(self) -> dict[str, object]:
        """Return the constructor settings, without the fitted surrogate."""
        keys = ("attack", "attack_settings", "surrogate", "labels", "train_samples", "epochs", "learning_rate", "seed")
        return {key: getattr(self, key) for key in keys}

    # --- fitting ------------------------------------------------------------------------------

    def prepare(self, model: nn.Module, context: Any) -> None:
        """Train the surrogate on the training split (``assess`` calls this once)."""
        self.fit(model, context.train(), generator=context.generator(_SUBSET_SALT), progress=context.progress)

    def fit(
        self,
        model: nn.Module,
        train: Dataset,
        *,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
    ) -> nn.Module:
        """Train the surrogate on ``train_samples`` images of ``train`` and return it.

        With ``labels="queries"`` the images are labelled by the target,
        which costs one label query each (kept in ``fitting_queries``).
        The agreement of surrogate and target on held-out training images is
        kept in ``surrogate_agreement``.
        """
        generator = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        count = min(self.train_samples, len(train) - _AGREEMENT_SAMPLES)
        if count < 100:
            raise ParameterError(
                f"{type(self).__name__}: the training data has {len(train)} images; it needs at least "
                f"{100 + _AGREEMENT_SAMPLES} (100 to train, {_AGREEMENT_SAMPLES} to measure agreement)",
                value=len(train),
            )
        order = torch.randperm(len(train), generator=generator)
        chosen, held_out = order[:count], order[count : count + _AGREEMENT_SAMPLES]
        images = train.images[chosen]
        labels = train.labels[chosen]
        query = as_query_model(model)
        self.fitting_queries = 0
        if self.labels == "queries":
            before = query.queries
            labels = torch.cat([query.predict_labels(images[start : start + _LABEL_BATCH]) for start in range(0, count, _LABEL_BATCH)])
            self.fitting_queries = query.queries - before
        fitting = Dataset(images, labels, train.class_names, train.name, "train", train.bounds)
        checking = Dataset(train.images[held_out], train.labels[held_out], train.class_names, train.name, "train", train.bounds)
        surrogate = build(self.surrogate, num_classes=train.num_classes)
        config = TrainingConfig(epochs=self.epochs, learning_rate=self.learning_rate, seed=self.seed)
        train_model(surrogate, fitting, checking, config, progress=progress)
        surrogate.eval()
        with torch.no_grad():
            agree = surrogate(checking.images).argmax(1) == query(checking.images).argmax(1)
        self.surrogate_agreement = float(agree.float().mean())
        logger.info(
            "%s: surrogate %s trained on %d images (%s labels, %d queries), agrees with the target on %.1f%% of "
            "held-out images",
            self.name,
            self.surrogate,
            count,
            self.labels,
            self.fitting_queries,
            100 * self.surrogate_agreement,
        )
        self._model = surrogate
        return surrogate

    def use_surrogate(self, surrogate: nn.Module, *, fitting_queries: int = 0) -> None:
        """Use an already trained surrogate instead of fitting one.

        ``fitting_queries`` is the number of target queries that training it
        took, kept so that reports show the attack's whole cost.
        """
        if not isinstance(surrogate, nn.Module):
            raise ParameterError(
                f"{type(self).__name__}: surrogate must be a torch.nn.Module, got {type(surrogate).__name__}",
                value=type(surrogate),
            )
        self.fitting_queries = check_int(fitting_queries, "fitting_queries", type(self).__name__, low=0)
        self._model = surrogate

    # --- the attack -------------------------------------------------------------------------

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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._model is None:
            raise ParameterError(
                f"{self.name}: no surrogate yet; call fit(model, train_data) or use_surrogate(module) first "
                "(assess does it through prepare)",
                value=None,
            )
        budget = eps if eps is not None else self._default_eps
        result = self._white_box(self._model, inputs, labels, targets, eps=budget, bounds=bounds, indices=indices)
        logger.debug(
            "%s: %d/%d samples adversarial on the surrogate", self.name, int(result.success.sum()), len(inputs)
        )
        # No query per sample reaches the target beyond sending the final input.
        return result.adversarial, torch.zeros(len(inputs), dtype=torch.int64)
