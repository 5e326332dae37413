"""A client of the mlwarden service.

:class:`ServiceClient` sends batches to ``/v1/predict`` (split to the
service's batch limit), records to ``/v1/ingest``, and turns a refusal (401,
403, 429) into :class:`ServiceRefused`, after waiting out ``Retry-After``
when the caller allows it. :func:`predictions_to_probabilities` turns what
the output policy reveals into probability vectors, as
:class:`~mlwarden.serve.query_model.ServiceQueryModel` uses them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import httpx
import torch

from ..errors import BudgetExhausted, ModelError, ParameterError
from ..integrity import SignedRecord

__all__ = ["ServiceClient", "ServiceRefused", "predictions_to_probabilities"]

logger = logging.getLogger(__name__)


class ServiceRefused(BudgetExhausted):
    """The service refused a request (401, 403 or 429), so the attacker's budget ends here.

    Attributes
    ----------
    status : int
    retry_after : float or None
        Seconds the service asked to wait (429 only).
    """

    def __init__(self, status: int, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"the service refused the request with {status}: {detail}", value=status)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


def predictions_to_probabilities(predictions: list[dict[str, Any]], num_classes: int) -> torch.Tensor:
    """Return (N, num_classes) probabilities rebuilt from the service's predictions (see the module docstring)."""
    rows = torch.zeros(len(predictions), num_classes, dtype=torch.float32)
    for index, prediction in enumerate(predictions):
        classes = prediction.get("classes")
        values = prediction.get("probabilities")
        if classes is None or values is None:
            rows[index, int(prediction["label"])] = 1.0
            continue
        shown = torch.tensor(values, dtype=torch.float32)
        rows[index, torch.tensor(classes, dtype=torch.int64)] = shown
        hidden = num_classes - len(classes)
        if hidden > 0:
            remainder = max(0.0, 1.0 - float(shown.sum()))
            mask = torch.ones(num_classes, dtype=torch.bool)
            mask[torch.tensor(classes, dtype=torch.int64)] = False
            rows[index, mask] = remainder / hidden
    return rows / rows.sum(dim=1, keepdim=True).clamp_min(1e-12)


class ServiceClient:
    """HTTP client of one mlwarden service.

    Parameters
    ----------
    url : str
        Base URL, such as ``http://127.0.0.1:8000``.
    key : str, optional
        API key sent as ``Authorization: Bearer KEY``.
    timeout : float, default 30
        Seconds per request.
    max_batch : int, optional
        Images per request; default the service's limit from ``/v1/model``, else 64.
    max_wait : float, default 0
        Total seconds the client may wait after 429 responses before it
        raises :class:`ServiceRefused`.
    """

    def __init__(
        self,
        url: str,
        key: str | None = None,
        *,
        timeout: float = 30.0,
        max_batch: int | None = None,
        max_wait: float = 0.0,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ParameterError(f"url must start with http:// or https://, got {url!r}", value=url)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.waited = 0.0
        self.requests = 0
        self.last_refusal: ServiceRefused | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- requests ------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request, retrying after 429 responses within ``max_wait``; raise ServiceRefused on refusals."""
        while True:
            self.requests += 1
            response = self._http.request(method, path, **kwargs)
            if response.status_code not in (401, 403, 429):
                return response
            detail = _detail(response)
            retry_after = _retry_after(response)
            if response.status_code == 429 and retry_after is not None and self.waited + retry_after <= self.max_wait:
                logger.info("service responded 429; waiting %.1f s as its Retry-After header requests", retry_after)
                time.sleep(retry_after)
                self.waited += retry_after
                continue
            self.last_refusal = ServiceRefused(response.status_code, detail, retry_after)
            raise self.last_refusal

    def health(self) -> dict[str, Any]:
        """Return ``/healthz``."""
        return self._json(self.request("GET", "/healthz"))

    def model_info(self) -> dict[str, Any]:
        """Return ``/v1/model``: input shape, bounds, classes and output policy."""
        info = self._json(self.request("GET", "/v1/model"))
        if self.max_batch is None:
            self.max_batch = int(info.get("max_batch") or 64)
        return info

    def predict(self, inputs: torch.Tensor) -> list[dict[str, Any]]:
        """Return the service's predictions for a batch (N, C, H, W), sent in chunks of ``max_batch``."""
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
            raise ParameterError(
                f"predict takes a float tensor (N, C, H, W), got {type(inputs).__name__} {tuple(getattr(inputs, 'shape', ()))}",
                value=type(inputs),
            )
        size = self.max_batch or 64
        predictions: list[dict[str, Any]] = []
        for start in range(0, len(inputs), size):
            chunk = inputs[start : start + size].detach().to(torch.float32).cpu()
            response = self.request("POST", "/v1/predict", json={"inputs": chunk.tolist()})
            predictions.extend(self._json(response)["predictions"])
        return predictions

    def ingest(self, records: Iterable[SignedRecord]) -> tuple[int, dict[str, Any]]:
        """Send signed records; return the status code (200, or 422 when any was rejected) and the body."""
        response = self.request("POST", "/v1/ingest", json={"records": [record.to_dict() for record in records]})
        if response.status_code not in (200, 422):
            raise ModelError(f"ingest failed with {response.status_code}: {_detail(response)}", value=response.status_code)
        return response.status_code, response.json()

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        if response.status_code != 200:
            raise ModelError(
                f"{response.request.method} {response.request.url.path} failed with {response.status_code}: "
                f"{_detail(response)}",
                value=response.status_code,
            )
        return response.json()


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))[:300]
    except (ValueError, AttributeError):
        return response.text[:300]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
