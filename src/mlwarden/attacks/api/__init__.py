"""Attacks on the prediction API itself, for testing the guards of :mod:`mlwarden.serve`.

- :func:`probe_keys`: requests without keys, with malformed keys and with guessed keys;
- :func:`flood`: a bounded request flood against a service on this machine;
- :func:`evade_through_api`: black-box evasion whose every query goes through the API.

Model extraction through the API lives in :mod:`mlwarden.attacks.extraction`.
"""

from .evasion import EvasionThroughApiResult, evade_through_api
from .flood import FloodResult, LoadResult, check_loopback_url, flood, send_load
from .probes import ProbeResult, probe_keys

__all__ = [
    "EvasionThroughApiResult",
    "FloodResult",
    "LoadResult",
    "ProbeResult",
    "check_loopback_url",
    "evade_through_api",
    "flood",
    "probe_keys",
    "send_load",
]
