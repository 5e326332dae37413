"""The guarded model service: predictions and data ingest behind authentication, limits and monitors.

- :mod:`.app`: the FastAPI application (routes, audit middleware);
- :mod:`.service`: the guards applied to every request, apart from HTTP;
- :mod:`.keys`, :mod:`.limits`: API keys with scopes, token buckets and daily quotas;
- :mod:`.monitor`: the PRADA-style extraction monitor per key;
- :mod:`.hardening`, :mod:`.payload`: output hardening, and decoding with size limits;
- :mod:`.ingest`: signed device records into the quarantine;
- :mod:`.database`, :mod:`.audit`, :mod:`.metrics`, :mod:`.logs`: state, audit log, metrics, structured logs;
- :mod:`.server`, :mod:`.client`, :mod:`.query_model`: running on uvicorn, the HTTP client, and
  the service as a black-box query model.
"""

from .app import create_app
from typing import Any

from .client import ServiceClient, ServiceRefused
from .config import GUARDS, MonitorSettings, OutputPolicy, PayloadLimits, ServiceConfig
from .database import ServiceDatabase
from .keys import SCOPES, ApiKey, KeyStore
from .model import ServedModel, load_served_model
from .monitor import ExtractionMonitor, MonitorVerdict
from .server import ServiceThread, build_service, run_server
from .service import Service

__all__ = [
    "GUARDS",
    "SCOPES",
    "ApiKey",
    "ExtractionMonitor",
    "KeyStore",
    "MonitorSettings",
    "MonitorVerdict",
    "OutputPolicy",
    "PayloadLimits",
    "ServedModel",
    "Service",
    "ServiceClient",
    "ServiceConfig",
    "ServiceDatabase",
    "ServiceQueryModel",
    "ServiceRefused",
    "ServiceThread",
    "build_service",
    "create_app",
    "load_served_model",
    "run_server",
]


def __getattr__(name: str) -> Any:
    # The query model needs mlwarden.models.query and torch's nn at import; the server does not.
    if name == "ServiceQueryModel":
        from .query_model import ServiceQueryModel

        return ServiceQueryModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
