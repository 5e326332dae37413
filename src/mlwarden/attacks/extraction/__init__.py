"""Model extraction: copying a classifier through its prediction API.

- :class:`KnockoffNets`: random queries from public or synthetic transfer data;
- :class:`JacobianAugmentation`: Papernot et al.'s Jacobian-based dataset augmentation.

Both take a :class:`~mlwarden.models.query.QueryModel`, so they run against a
local model or, through :class:`mlwarden.serve.ServiceQueryModel`, against
the guarded service, and report the copy's agreement with the victim and its
accuracy against the queries spent.
"""

from .base import ExtractionCheckpoint, ExtractionEvaluation, ExtractionResult, ModelExtraction, train_copy
from .jacobian import JacobianAugmentation
from .knockoff import TRANSFER_SETS, KnockoffNets, synthetic_images

EXTRACTION_ATTACKS = {"knockoff": KnockoffNets, "jacobian": JacobianAugmentation}

__all__ = [
    "EXTRACTION_ATTACKS",
    "TRANSFER_SETS",
    "ExtractionCheckpoint",
    "ExtractionEvaluation",
    "ExtractionResult",
    "JacobianAugmentation",
    "KnockoffNets",
    "ModelExtraction",
    "synthetic_images",
    "train_copy",
]
