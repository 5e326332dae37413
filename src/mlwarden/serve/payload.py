"""Decoding and validation of request bodies: image batches as arrays or PNG, bounded in size.

A prediction request carries either ``{"inputs": [...]}``, nested lists of
shape (N, C, H, W) (or (N, H, W) for one channel) of pixel values in the
model's bounds, or ``{"images": ["<base64 PNG>", ...]}``, or one PNG as the
raw body with ``Content-Type: image/png``. A PNG's width and height are read
from its header and checked before any pixel is decoded, so a small file that
would expand into a huge image (a decompression bomb) is rejected unread.

Every problem raises :class:`PayloadError` with the HTTP status to answer:
413 for a body, batch or PNG over its limit; 415 for an unsupported content
type; 422 for a body that is not a valid batch.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = [
    "PayloadError",
    "InputSpec",
    "decode_json",
    "decode_images_request",
    "decode_png",
    "decode_array",
    "encode_png",
]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class PayloadError(Exception):
    """A request body that cannot be served; ``status`` is the HTTP status and ``detail`` the client message."""

    def __init__(self, status: int, detail: str, reason: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.reason = reason or detail


@dataclass(frozen=True)
class InputSpec:
    """What the served model takes: one image's shape (C, H, W) and the pixel bounds."""

    shape: tuple[int, int, int]
    bounds: tuple[float, float]

    @property
    def channels(self) -> int:
        return self.shape[0]

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "bounds": list(self.bounds)}


def decode_json(body: bytes) -> Any:
    """Parse a JSON body; NaN and infinities are invalid JSON and rejected here.

    Arrays or objects nested deeper than the interpreter's recursion limit
    (about 1,000 levels) are rejected too. A valid request nests only a few levels.
    """
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as error:
        raise PayloadError(422, "the body is not valid JSON", f"invalid JSON: {error}") from None
    except RecursionError:
        raise PayloadError(422, "the body nests arrays or objects too deeply", "invalid JSON: nested too deeply") from None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")


def decode_images_request(document: Any, spec: InputSpec, max_batch: int, max_png_bytes: int) -> torch.Tensor:
    """Return the float32 batch (N, C, H, W) of a JSON prediction request.

    Raises
    ------
    PayloadError
        422 for a malformed request, 413 for a batch or image over its limit.
    """
    if not isinstance(document, dict):
        raise PayloadError(422, 'the body must be a JSON object with "inputs" or "images"')
    fields = [name for name in ("inputs", "images") if name in document]
    extra = sorted(set(document) - {"inputs", "images"})
    if extra:
        raise PayloadError(422, f"unknown field {extra[0]!r}; send \"inputs\" or \"images\"")
    if len(fields) != 1:
        raise PayloadError(422, 'send exactly one of "inputs" (arrays) or "images" (base64 PNG)')
    value = document[fields[0]]
    if not isinstance(value, list) or not value:
        raise PayloadError(422, f'"{fields[0]}" must be a non-empty list')
    if len(value) > max_batch:
        raise PayloadError(413, f"batch of {len(value)} images exceeds the limit of {max_batch}")
    if fields[0] == "inputs":
        return decode_array(value, spec)
    images = []
    for index, text in enumerate(value):
        if not isinstance(text, str):
            raise PayloadError(422, f"images[{index}] must be a base64 string of a PNG file")
        # Base64 is 4 characters per 3 bytes, so longer text cannot decode under the limit.
        if len(text) > 4 * math.ceil(max_png_bytes / 3) + 4:
            raise PayloadError(413, f"images[{index}] exceeds the limit of {max_png_bytes} bytes per PNG")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise PayloadError(422, f"images[{index}] is not valid base64") from None
        images.append(decode_png(data, spec, max_png_bytes, f"images[{index}]"))
    return torch.stack(images)


def decode_array(value: Sequence[Any], spec: InputSpec) -> torch.Tensor:
    """Return nested lists of pixel values as a float32 batch (N, C, H, W), checking shape and range."""
    try:
        raw = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise PayloadError(422, '"inputs" must be nested lists of numbers of one regular shape') from None
    if raw.dtype.kind not in "iuf":
        raise PayloadError(422, '"inputs" must be nested lists of numbers of one regular shape')
    with np.errstate(over="ignore"):
        array = raw.astype(np.float32)
    channels, height, width = spec.shape
    if array.ndim == 3 and channels == 1:
        array = array[:, None]
    if array.ndim != 4 or array.shape[1:] != spec.shape:
        raise PayloadError(
            422,
            f'"inputs" has shape {list(array.shape)}, expected [N, {channels}, {height}, {width}]'
            + (f" or [N, {height}, {width}]" if channels == 1 else ""),
        )
    if not np.isfinite(array).all():
        raise PayloadError(422, '"inputs" holds a value that is not a finite number')
    low, high = spec.bounds
    if float(array.min()) < low or float(array.max()) > high:
        raise PayloadError(
            422, f'"inputs" ranges from {float(array.min()):g} to {float(array.max()):g}, outside [{low:g}, {high:g}]'
        )
    return torch.from_numpy(np.ascontiguousarray(array))


def decode_png(data: bytes, spec: InputSpec, max_png_bytes: int, name: str = "the image") -> torch.Tensor:
    """Return one PNG as a float32 image (C, H, W) scaled to the model's bounds.

    The width and height in the PNG header must equal the model's; gray
    images are accepted for 3-channel models and color for 1-channel models
    after conversion.
    """
    if len(data) > max_png_bytes:
        raise PayloadError(413, f"{name} exceeds the limit of {max_png_bytes} bytes per PNG")
    channels, height, width = spec.shape
    if len(data) < 24 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise PayloadError(422, f"{name} is not a PNG file")
    png_width, png_height = struct.unpack(">II", data[16:24])
    if (png_width, png_height) != (width, height):
        raise PayloadError(422, f"{name} is {png_width}x{png_height} pixels, expected {width}x{height}")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as opened:
            converted = opened.convert("L" if channels == 1 else "RGB")
            pixels = np.asarray(converted, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error):
        raise PayloadError(422, f"{name} is not a readable PNG file") from None
    if pixels.ndim == 2:
        pixels = pixels[None]
    else:
        pixels = pixels.transpose(2, 0, 1)
    if channels not in (1, 3) or pixels.shape != spec.shape:
        raise PayloadError(422, f"{name} decodes to shape {list(pixels.shape)}, expected {list(spec.shape)}")
    low, high = spec.bounds
    return torch.from_numpy(np.ascontiguousarray(pixels * (high - low) + low))


def encode_png(image: torch.Tensor, bounds: tuple[float, float] = (0.0, 1.0)) -> bytes:
    """Return one image (C, H, W) in ``bounds`` as PNG bytes (8 bits per channel), for clients and tests."""
    low, high = bounds
    pixels = ((image.detach().cpu().clamp(low, high) - low) / (high - low) * 255.0).round().to(torch.uint8).numpy()
    mode = "L" if pixels.shape[0] == 1 else "RGB"
    array = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()
