"""From quarantine to training: screen uploads with poisoning detectors, then release them through a guarded trainer.

An upload leaves the quarantine in two steps, each recorded in the
``uploads`` table (nothing is ever deleted):

1. :meth:`UploadScreen.screen` scores every quarantined, unscreened upload
   with poisoning detectors from :mod:`mlwarden.defenses.poisoning`, fitted
   on trusted data in the served model's feature space. A flagged upload
   becomes ``rejected`` with the detector's reason; the others stay
   ``quarantined`` with their ``screened`` time set.
2. :meth:`UploadScreen.release` submits the screened uploads to the
   rollback-guarded incremental training loop
   (:class:`mlwarden.defenses.poisoning.IncrementalTrainer`). Uploads it
   learns become ``released``. Uploads it does not learn become ``rejected``
   with the reason it recorded in its quarantine store.

The default screen is a per-class k-nearest-neighbour distance detector on
the model's penultimate features: a flipped label puts an image far from
the images of the class it claims.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from ..errors import ParameterError
from .database import ServiceDatabase
from .ingest import decode_sample
from .model import ServedModel

__all__ = ["UploadScreen", "ScreenReport", "GuardedTrainer"]

logger = logging.getLogger(__name__)


@runtime_checkable
class GuardedTrainer(Protocol):
    """Interface of the rollback-guarded training loop, as :class:`mlwarden.defenses.poisoning.IncrementalTrainer` has it.

    ``submit`` fine-tunes a copy of ``model`` on a batch and keeps it only
    if its checks pass, recording every sample it does not learn in
    ``quarantine`` with the batch id, the sample's index and the reason.
    ``predict`` reads the served model under the trainer's lock.
    """

    model: nn.Module
    quarantine: Any

    def submit(self, inputs: torch.Tensor, labels: torch.Tensor, *, batch_id: str | None = None, source: str | None = None) -> Any:
        ...

    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        ...


@dataclass
class ScreenReport:
    """Outcome of one screening or release pass."""

    examined: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    passed: int = 0
    released: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"examined": self.examined, "rejected": self.rejected, "passed": self.passed, "released": self.released}


class UploadScreen:
    """Poisoning detectors fitted on trusted data, applied to the quarantined uploads.

    Parameters
    ----------
    model : ServedModel
        Its ``features`` method (or the layer given) is the detectors' feature space.
    detectors : sequence of PoisonDetector
        Fitted on the features of trusted data.
    layer : str, optional
        Submodule whose output is the feature vector; default the model's ``features`` method.
    """

    def __init__(self, model: ServedModel, detectors: Sequence[Any], *, layer: str | None = None) -> None:
        if not detectors:
            raise ParameterError("UploadScreen needs at least one fitted poisoning detector", value=0)
        self.model = model
        self.detectors = list(detectors)
        self.layer = layer

    @classmethod
    def fit(
        cls,
        model: ServedModel,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        detectors: Sequence[Any] | None = None,
        layer: str | None = None,
    ) -> UploadScreen:
        """Fit the detectors (default: one k-NN distance detector) on trusted images and return the screen."""
        from ..defenses.poisoning.features import extract_features
        from ..defenses.poisoning.outliers import KNNDistanceDetector

        chosen = list(detectors) if detectors is not None else [KNNDistanceDetector()]
        features = extract_features(model.module, images, layer=layer)
        for detector in chosen:
            detector.fit(features, labels)
        logger.info("upload screen fitted on %d trusted images: %s", len(images), ", ".join(d.name for d in chosen))
        return cls(model, chosen, layer=layer)

    def _load(self, database: ServiceDatabase, limit: int, screened: bool) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        condition = "screened IS NOT NULL" if screened else "screened IS NULL"
        rows = database.read().execute(
            f"SELECT id, payload FROM uploads WHERE status = 'quarantined' AND {condition} ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        ids, images, labels = [], [], []
        spec = self.model.spec
        for row in rows:
            image, label = decode_sample(row["payload"], spec, self.model.num_classes, len(row["payload"]) + 1)
            ids.append(int(row["id"]))
            images.append(image)
            labels.append(label)
        if not ids:
            return [], torch.empty(0, *spec.shape), torch.empty(0, dtype=torch.int64)
        return ids, torch.stack(images), torch.tensor(labels, dtype=torch.int64)

    def screen(self, database: ServiceDatabase, *, limit: int = 10_000) -> ScreenReport:
        """Score the unscreened quarantined uploads; reject the flagged ones with the detector's reason."""
        from ..defenses.poisoning.features import extract_features

        ids, images, labels = self._load(database, limit, screened=False)
        report = ScreenReport(examined=len(ids))
        if not ids:
            return report
        features = extract_features(self.model.module, images, layer=self.layer)
        reasons: list[str | None] = [None] * len(ids)
        for detector in self.detectors:
            flags = np.asarray(detector.predict(features, labels.numpy()), dtype=bool)
            for position in np.flatnonzero(flags):
                if reasons[position] is None:
                    reasons[position] = f"poisoning screen: {detector.reason} ({detector.name})"
        now = time.time()
        with database.write(durable=True) as connection:
            for upload_id, reason in zip(ids, reasons):
                if reason is None:
                    connection.execute("UPDATE uploads SET screened = ?, updated = ? WHERE id = ?", (now, now, upload_id))
                else:
                    connection.execute(
                        "UPDATE uploads SET status = 'rejected', reason = ?, screened = ?, updated = ? WHERE id = ?",
                        (reason, now, now, upload_id),
                    )
                    report.rejected[reason] = report.rejected.get(reason, 0) + 1
        report.passed = sum(reason is None for reason in reasons)
        logger.info(
            "screened %d uploads: %d passed, %d rejected",
            len(ids),
            report.passed,
            len(ids) - report.passed,
            extra={"event": "ingest.screened", "examined": len(ids), "passed": report.passed},
        )
        return report

    def release(self, database: ServiceDatabase, trainer: GuardedTrainer, *, limit: int = 10_000) -> ScreenReport:
        """Submit the screened uploads to the guarded trainer as one batch and record its decision on each.

        Uploads the trainer learned become ``released``. Those it quarantined
        (rolled back, rejected before training, flagged by its own screen, or
        from a blocked source) become ``rejected`` with its reason.
        """
        if not isinstance(trainer, GuardedTrainer):
            raise ParameterError(
                "release needs a rollback-guarded trainer with submit(inputs, labels, batch_id=, source=), predict() "
                f"and a quarantine store, got {type(trainer).__name__}",
                value=type(trainer).__name__,
            )
        ids, images, labels = self._load(database, limit, screened=True)
        report = ScreenReport(examined=len(ids))
        if not ids:
            return report
        batch_id = f"uploads-{ids[0]}-{ids[-1]}-{int(time.time())}"
        outcome = trainer.submit(images, labels, batch_id=batch_id, source="ingest")
        # The trainer records each sample it does not learn, by index in the batch, with its reason.
        not_learned = {
            int(record.index): record.reason for record in trainer.quarantine.records(status=None, batch_id=batch_id)
        }
        prefix = "rolled back: " if outcome.status == "rolled back" else "training loop: "
        now = time.time()
        with database.write(durable=True) as connection:
            for row, upload_id in enumerate(ids):
                if row in not_learned:
                    reason = prefix + not_learned[row]
                    connection.execute(
                        "UPDATE uploads SET status = 'rejected', reason = ?, updated = ? WHERE id = ?", (reason, now, upload_id)
                    )
                    report.rejected[reason] = report.rejected.get(reason, 0) + 1
                else:
                    connection.execute("UPDATE uploads SET status = 'released', updated = ? WHERE id = ?", (now, upload_id))
                    report.released += 1
        logger.info(
            "release of %d screened uploads as batch %s: %s, %d learned",
            len(ids),
            batch_id,
            outcome.status,
            report.released,
            extra={"event": "ingest.released", "uploads": len(ids), "status": outcome.status, "learned": report.released},
        )
        return report
