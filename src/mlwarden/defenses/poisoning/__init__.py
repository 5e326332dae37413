"""Defenses against poisoned training data: detection, sanitizing, quarantine and guarded retraining.

- detectors with scikit-learn's interface (``fit``, ``score_samples``,
  ``predict``; higher scores are more suspect), all per class:
  :class:`IsolationForestDetector` and :class:`KNNDistanceDetector`
  (outliers in feature space), :class:`LabelNoiseDetector` (confident
  learning on out-of-fold probabilities), :class:`SpectralSignatureDetector`
  and :class:`ActivationClusteringDetector` (backdoors);
- :func:`detection_metrics`: precision and recall against known poison;
- :class:`QuarantineStore`: the persistent record of every rejected sample;
- :func:`sanitize`: remove flagged samples, recording each in the quarantine;
- :class:`IncrementalTrainer`: batch-by-batch fine-tuning with gold-set
  checks, rollback and blocking of denial-of-service streams;
- :class:`DataScanner` and :func:`scan_arrays`: the sharded scan behind
  ``mlwarden scan-data``.
"""

from .backdoor import ActivationClusteringDetector, SpectralSignatureDetector
from .base import PoisonDetector
from .checks import PatchSweepCheck, TriggerCheck, gold_accuracy, mean_loss
from .features import extract_features, feature_extractor, flatten_features
from .incremental import BatchOutcome, IncrementalConfig, IncrementalTrainer, LabelDisagreementScreen
from .label_noise import LabelNoiseDetector
from .metrics import detection_metrics
from .outliers import IsolationForestDetector, KNNDistanceDetector
from .quarantine import QuarantineRecord, QuarantineStore
from .registry import POISON_DETECTORS, build_detector, is_poison_detector
from .sanitize import SanitizeResult, sanitize
from .scan import DataScanner, ScanConfig, ScanReport, Shard, Suspect, merge_top_k, scan_arrays, shards_of

__all__ = [
    "POISON_DETECTORS",
    "ActivationClusteringDetector",
    "BatchOutcome",
    "DataScanner",
    "IncrementalConfig",
    "IncrementalTrainer",
    "IsolationForestDetector",
    "KNNDistanceDetector",
    "LabelDisagreementScreen",
    "LabelNoiseDetector",
    "PatchSweepCheck",
    "PoisonDetector",
    "QuarantineRecord",
    "QuarantineStore",
    "SanitizeResult",
    "ScanConfig",
    "ScanReport",
    "Shard",
    "SpectralSignatureDetector",
    "Suspect",
    "TriggerCheck",
    "build_detector",
    "detection_metrics",
    "extract_features",
    "feature_extractor",
    "flatten_features",
    "gold_accuracy",
    "is_poison_detector",
    "mean_loss",
    "merge_top_k",
    "sanitize",
    "scan_arrays",
    "shards_of",
]
