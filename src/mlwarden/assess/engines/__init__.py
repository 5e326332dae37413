"""Execution engines: where the work units of an assessment or a data scan run.

- ``local`` (default): a process pool on this machine; needs nothing beyond mlwarden.
- ``dask``: a Dask cluster, started on 127.0.0.1 or joined by address; needs
  ``pip install 'mlwarden[dask]'``.

:func:`run_plan` runs an assessment plan on an engine and merges the units
into the ``results.json`` content.
"""

from .assessment import UNITS_FOLDER, run_plan
from .base import ENGINE_NAMES, Engine, get_engine
from .local import LocalEngine

__all__ = ["ENGINE_NAMES", "Engine", "LocalEngine", "UNITS_FOLDER", "get_engine", "run_plan"]
