"""Preload module for the worker processes of the local Dask clusters that mlwarden starts.

Ctrl-C in a terminal sends SIGINT to every process of the foreground group,
which includes the worker processes of a ``LocalCluster``. The client cancels
the work and closes the cluster itself, so the workers ignore SIGINT instead
of each printing a KeyboardInterrupt traceback.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["dask_setup"]


def dask_setup(worker: Any) -> None:
    """Ignore SIGINT in this worker process (Dask calls this hook when the worker starts)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
