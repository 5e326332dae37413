"""The mlwarden service as a black-box query model, so that black-box and extraction attacks run through its API.

:class:`ServiceQueryModel` is a :class:`~mlwarden.models.query.QueryModel`
over the service, so every black-box attack and the extraction attacks run
through the HTTP API, with the queries counted. Whatever the output policy
reveals becomes a probability vector. Full scores are renormalized after
rounding, and top-k scores are completed by spreading the remaining mass
evenly over the classes not shown. A label-only service makes the model
decision-based.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.query import QueryModel
from .client import ServiceClient, predictions_to_probabilities

__all__ = ["ServiceQueryModel"]


class ServiceQueryModel(QueryModel):
    """The mlwarden service as a :class:`~mlwarden.models.query.QueryModel`.

    Parameters
    ----------
    client : ServiceClient
        With a key of scope ``predict``.
    labels_only : bool, default False
        Use only the labels even when the service returns scores.
    budget : int, optional
        Query budget (one query per image).
    reference : nn.Module, optional
        The defender's local copy of the served model. When given, the
        evaluator's view (``forward``, with which attacks verify their
        results) runs it instead of sending requests, so verification
        neither spends the attacker's rate limit nor feeds the extraction monitor.

    The output kind, classes and bounds come from ``/v1/model``.

    Examples
    --------
    >>> client = ServiceClient("http://127.0.0.1:8000", "mlw_...")  # doctest: +SKIP
    >>> victim = ServiceQueryModel(client, budget=1000)  # doctest: +SKIP
    >>> victim.predict_labels(images)  # doctest: +SKIP
    """

    def __init__(
        self,
        client: ServiceClient,
        *,
        labels_only: bool = False,
        budget: int | None = None,
        reference: nn.Module | None = None,
    ) -> None:
        info = client.model_info()
        output_mode = str(info.get("output", {}).get("mode", "scores"))
        super().__init__(
            output="labels" if output_mode == "label" else "probabilities",
            labels_only=labels_only,
            budget=budget,
            bounds=tuple(info["input"]["bounds"]),
            num_classes=int(info["num_classes"]),
        )
        self.client = client
        self.info = info
        self.output_mode = output_mode
        self.reference = reference

    def describe(self) -> str:
        return f"mlwarden service at {self.client.url}"

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return log-probabilities from the local reference when there is one, else from the service."""
        if self.reference is None or (torch.is_grad_enabled() and inputs.requires_grad):
            # The base class raises for gradient requests: the attacker has no gradients of the service.
            return super().forward(inputs)
        self.evaluations += int(inputs.shape[0])
        with torch.no_grad():
            return torch.log_softmax(self.reference(inputs).to(torch.float32), dim=1)

    def _predict(self, inputs: torch.Tensor) -> torch.Tensor:
        predictions = self.client.predict(inputs)
        assert self.num_classes is not None  # set from /v1/model
        if self.output == "labels":
            return torch.tensor([int(p["label"]) for p in predictions], dtype=torch.int64)
        return predictions_to_probabilities(predictions, self.num_classes)
