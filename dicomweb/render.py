"""Rendered images for WADO-RS ``/rendered`` and ``/thumbnail`` (PS3.18 8.3.5, 10.4.1.1.3).

Modality LUT (rescale) first, then the VOI window: the ``window`` query
parameter (``center,width[,linear|linear-exact|sigmoid]``), else the dataset's
first Window Center/Width, else the frame's range. Output is JPEG or PNG.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.pixels import apply_modality_lut, pixel_array


class RenderError(ValueError):
    """A rendering parameter that cannot be honoured (400)."""


def parse_window(value: str | None) -> tuple[float, float, str] | None:
    if value is None:
        return None
    parts = value.split(",")
    try:
        center, width = float(parts[0]), float(parts[1])
    except (IndexError, ValueError) as exc:
        raise RenderError("window must be center,width[,function]") from exc
    function = parts[2].strip().lower() if len(parts) > 2 else "linear"
    if width <= 0 or function not in ("linear", "linear-exact", "sigmoid"):
        raise RenderError("window width must be positive; function linear or sigmoid")
    return center, width, function


def parse_viewport(value: str | None, default: int | None) -> tuple[int, int] | None:
    if value is None:
        return (default, default) if default else None
    try:
        width, height = (int(v) for v in value.split(",")[:2])
    except ValueError as exc:
        raise RenderError("viewport must be width,height") from exc
    if not (0 < width <= 4096 and 0 < height <= 4096):
        raise RenderError("viewport must be between 1 and 4096 pixels")
    return width, height


def _first(value: object) -> float:
    if (
        isinstance(value, list | tuple)
        or hasattr(value, "__getitem__")
        and not isinstance(value, str | bytes)
    ):
        return float(value[0])  # type: ignore[index]
    return float(value)  # type: ignore[arg-type]


MAX_FRAME_PIXELS = 64 * 1024 * 1024
"""Largest frame (rows x columns x samples) decoded for rendering or raw frames: a
decompression bomb's header claims a size it never had to send."""


def check_frame_size(ds: Dataset) -> None:
    try:
        pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise RenderError("Image Pixel module incomplete") from exc
    if pixels > MAX_FRAME_PIXELS:
        raise RenderError(f"frame of {pixels} pixels is over the {MAX_FRAME_PIXELS} limit")


def decode_frame(ds: Dataset, frame: int) -> np.ndarray:
    """Frame ``frame`` (1-based) decoded, and only that frame (PS3.5 8.2 via pydicom)."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= frames:
        raise RenderError(f"frame {frame} does not exist")
    check_frame_size(ds)
    return pixel_array(ds, index=frame - 1 if frames > 1 else None)


def render(
    ds: Dataset,
    frame: int,
    *,
    window: tuple[float, float, str] | None,
    viewport: tuple[int, int] | None,
    media_type: str,
) -> bytes:
    """Frame ``frame`` (1-based) of ``ds`` as JPEG or PNG bytes."""
    pixels = decode_frame(ds, frame)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim == 3 and photometric in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    else:
        values = apply_modality_lut(pixels, ds).astype(np.float32)
        if window is None and "WindowCenter" in ds and "WindowWidth" in ds:
            window = (_first(ds.WindowCenter), _first(ds.WindowWidth), "linear")
        if window is None:
            low, high = float(values.min()), float(values.max())
            window = ((low + high) / 2, max(high - low, 1.0), "linear")
        center, width, function = window
        if function == "sigmoid":
            scaled = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        else:
            scaled = ((values - (center - 0.5)) / max(width - 1, 1) + 0.5) * 255.0
        out = np.clip(scaled, 0, 255).astype(np.uint8)
        if photometric == "MONOCHROME1":
            out = 255 - out
        image = Image.fromarray(out, "L")
    if viewport is not None:
        image.thumbnail(viewport)
    buf = BytesIO()
    if media_type == "image/png":
        image.save(buf, "PNG")
    else:
        image.save(buf, "JPEG", quality=90)
    return buf.getvalue()
