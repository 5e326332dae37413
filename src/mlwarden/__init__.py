"""mlwarden: attacks, defenses and assessments for every stage of a machine-learning pipeline."""

from .errors import MlwardenError

__version__ = "0.1.0"

__all__ = ["MlwardenError", "__version__"]
