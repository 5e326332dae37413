"""Classifier ensembles: averaged probabilities, or a majority vote of the members' labels.

References
----------
F. Tramèr, A. Kurakin, N. Papernot, I. Goodfellow, D. Boneh, P. McDaniel,
"Ensemble adversarial training: attacks and defenses", ICLR 2018.
W. He, J. Wei, X. Chen, N. Carlini, D. Song, "Adversarial example defenses:
ensembles of weak defenses are not strong", USENIX WOOT 2017.

An ensemble of models trained alike shares their weaknesses: white-box
attacks on the averaged output transfer to every member (He et al., 2017).
The majority vote is piecewise constant, so its gradient is zero and naive
gradient attacks fail against it; BPDA with the averaged probabilities as the
backward pass removes that obstacle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..._validation import check_choice, owner_of
from ...attacks.base import model_bounds
from ...errors import ParameterError
from ...threat import DefenseProfile, Posture, Stage
from .base import piecewise_constant, straight_through

__all__ = ["Ensemble", "ENSEMBLE_VOTES"]

ENSEMBLE_VOTES = ("average", "majority")


class Ensemble(nn.Module):
    """A classifier that combines several models of the same inputs and classes.

    Parameters
    ----------
    members : sequence of nn.Module
        At least two classifiers returning logits of the same shape. A member
        may itself be a defense.
    vote : {"average", "majority"}, default "average"
        ``average`` returns the log of the mean of the members' softmax
        probabilities; ``majority`` returns each class's share of the members'
        predicted labels, ties broken by the mean probability, as logits whose
        argmax is the majority label.
    bounds : (low, high), optional
        Input range; default the first member's ``bounds`` or (0, 1).

    Notes
    -----
    Averaged probabilities are known to fall to the plain white-box attack on
    the ensemble (He et al., 2017). The majority vote is known to fall to
    BPDA with the averaged probabilities as its backward pass;
    :meth:`forward_bpda` computes exactly that.
    """

    name = "ensemble"
    profile = DefenseProfile(Posture.PROACTIVE, Stage.INFERENCE, ("evasion",))
    randomized = False

    def __init__(self, members: Sequence[nn.Module], *, vote: str = "average", bounds: Sequence[float] | None = None) -> None:
        super().__init__()
        owner = owner_of(self)
        if isinstance(members, nn.Module) or not isinstance(members, Sequence) or len(members) < 2:
            raise ParameterError(f"{owner}: members must be a list of at least two models, got {members!r}", value=members)
        for position, member in enumerate(members):
            if not isinstance(member, nn.Module):
                raise ParameterError(
                    f"{owner}: member {position} must be a torch.nn.Module, got {type(member).__name__}", value=position
                )
        self.members = nn.ModuleList(members)
        self.vote = check_choice(vote, "vote", owner, ENSEMBLE_VOTES)
        self.bounds = model_bounds(members[0], bounds)
        self.randomized = any(getattr(member, "randomized", False) for member in members)

    @property
    def differentiable(self) -> bool:
        """Whether autograd through the ensemble already gives a useful gradient (averaged probabilities)."""
        return self.vote == "average" and not any(
            callable(getattr(member, "forward_bpda", None)) and not getattr(member, "differentiable", True)
            for member in self.members
        )

    @property
    def known_bypass(self) -> str:
        """The adaptive attack this ensemble is known to fall to."""
        if self.vote == "average":
            return "white-box attack on the averaged output"
        return "BPDA with the averaged probabilities as the backward pass"

    def _member_log_probabilities(self, inputs: torch.Tensor, adaptive: bool = False) -> torch.Tensor:
        """Return log-softmax outputs of every member, shape (members, N, classes)."""
        outputs = []
        for member in self.members:
            forward = getattr(member, "forward_bpda", None) if adaptive else None
            logits = forward(inputs) if callable(forward) else member(inputs)
            outputs.append(torch.log_softmax(logits, dim=1))
        return torch.stack(outputs)

    @staticmethod
    def _average(log_probabilities: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(log_probabilities, dim=0) - math.log(log_probabilities.shape[0])

    @staticmethod
    def _majority(log_probabilities: torch.Tensor) -> torch.Tensor:
        """Return vote shares plus a tie-breaking term below half a vote, with no gradient."""
        with torch.no_grad():
            members, _, classes = log_probabilities.shape
            labels = log_probabilities.argmax(dim=2)
            votes = torch.nn.functional.one_hot(labels, classes).sum(dim=0).to(log_probabilities.dtype)
            mean_probabilities = log_probabilities.exp().mean(dim=0)
            return (votes + 0.5 * mean_probabilities) / members

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        log_probabilities = self._member_log_probabilities(inputs)
        if self.vote == "average":
            return self._average(log_probabilities)
        return piecewise_constant(self._majority(log_probabilities), inputs)

    def forward_bpda(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return :meth:`forward`'s logits, differentiated through the averaged probabilities.

        Members that are defenses are differentiated through their own BPDA.
        """
        log_probabilities = self._member_log_probabilities(inputs, adaptive=True)
        average = self._average(log_probabilities)
        if self.vote == "average":
            return average
        return straight_through(self._majority(log_probabilities), average)

    def settings(self) -> dict[str, object]:
        """Return the ensemble's settings, as stored in ``results.json``."""
        return {"vote": self.vote, "members": len(self.members)}
