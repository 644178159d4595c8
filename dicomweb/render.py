"""Rendered images for WADO-RS ``/rendered`` and ``/thumbnail`` (PS3.18 8.3.5, 10.4.1.1.3).

Grayscale frames go through the Modality LUT (PS3.3 C.11.1), then the VOI LUT
(PS3.3 C.11.2), both applied by pydicom, onto 8-bit gray levels:

1. the ``window`` query parameter, ``center,width[,linear|linear-exact|sigmoid]``
   (PS3.18 8.3.5.1.3), computed as VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID;
2. else the dataset's first VOI LUT Sequence item (a lookup table);
3. else its first Window Center/Width with its VOI LUT Function (LINEAR when absent);
4. else the frame's range, mapped exactly onto 0..255 (LINEAR_EXACT).

A window's output range (y_min, y_max of PS3.3 C.11.2.1.2) is the 8-bit gray scale
itself; a lookup table's output (0 to 2^n - 1, n its bits per entry, PS3.3
C.11.2.1.1) is scaled onto it. MONOCHROME1 is inverted; RGB passes through. Output
is JPEG or PNG.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing, pixel_array

logger = logging.getLogger(__name__)

VOI_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}
"""The ``window`` parameter's functions (PS3.18 8.3.5.1.3) as VOI LUT Function values
(PS3.3 C.11.2.1.3)."""


class RenderError(ValueError):
    """A rendering parameter that cannot be honoured (400)."""


@dataclass(frozen=True)
class Window:
    """A VOI window: Window Center, Window Width and VOI LUT Function (PS3.3 C.11.2.1.2)."""

    center: float
    width: float
    function: str = "LINEAR"

    def is_valid(self) -> bool:
        """LINEAR needs a width of at least 1 (C.11.2.1.2.1), the others a positive one."""
        if self.function == "LINEAR":
            return self.width >= 1
        return self.function in ("LINEAR_EXACT", "SIGMOID") and self.width > 0


def parse_window(value: str | None) -> Window | None:
    if value is None:
        return None
    parts = value.split(",")
    try:
        center, width = float(parts[0]), float(parts[1])
    except (IndexError, ValueError) as exc:
        raise RenderError("window must be center,width[,function]") from exc
    name = parts[2].strip().lower() if len(parts) > 2 else "linear"
    if name not in VOI_FUNCTIONS:
        raise RenderError("window function must be linear, linear-exact or sigmoid")
    window = Window(center, width, VOI_FUNCTIONS[name])
    if not (np.isfinite(center) and np.isfinite(width) and window.is_valid()):
        raise RenderError("window width must be at least 1 (linear) or positive, and finite")
    return window


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


def _first(ds: Dataset, keyword: str) -> float:
    elem = ds[keyword]
    return float(elem.value[0] if elem.VM > 1 else elem.value)


def dataset_window(ds: Dataset) -> Window | None:
    """The dataset's first Window Center/Width with its VOI LUT Function (LINEAR when
    absent or not one of the defined terms), or None when it has no usable window."""
    try:
        center, width = _first(ds, "WindowCenter"), _first(ds, "WindowWidth")
        function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if function not in VOI_FUNCTIONS.values():
        function = "LINEAR"
    window = Window(center, width, function)
    return window if window.is_valid() else None


def _window_module(window: Window) -> Dataset:
    """``window`` as a VOI LUT module over an 8-bit unsigned output, for pydicom's
    windowing: its y_min and y_max are then the gray levels 0 and 255."""
    voi = Dataset()
    voi.PhotometricInterpretation = "MONOCHROME2"
    voi.BitsStored = 8
    voi.PixelRepresentation = 0
    voi.WindowCenter = window.center
    voi.WindowWidth = window.width
    voi.VOILUTFunction = window.function
    return voi


def _through_lut(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """The dataset's first VOI LUT Sequence item applied by pydicom, scaled from its output
    range (0 to 2^n - 1, n its bits per entry) onto 0..255. Values outside the table take
    its first or last entry (PS3.3 C.11.2.1.1).

    The item is looked up as a table of 16 bits per entry: LUT Data is 16-bit words
    whatever the declared bits (US or OW), and pydicom indexes a table with an array of
    the declared type, which wraps past 256 entries of an 8-bit table."""
    item = ds.VOILUTSequence[0]
    descriptor = item["LUTDescriptor"]
    entries, first, bits = (int(v) for v in descriptor.value)
    if bits != 8 and not 10 <= bits <= 16:
        raise ValueError(f"VOI LUT of {bits} bits per entry")
    lut = Dataset()
    lut.add_new(descriptor.tag, descriptor.VR, [entries, first, 16])
    lut.add(item["LUTData"])
    voi = Dataset()
    voi.VOILUTSequence = [lut]
    if hasattr(ds, "file_meta"):
        voi.file_meta = ds.file_meta  # the byte order of OW LUT Data
    voi.set_original_encoding(*ds.original_encoding)
    indices = np.clip(np.rint(values), first, first + (entries or 65536) - 1).astype(np.int64)
    return apply_voi_lut(indices, voi).astype(np.float64) * (255.0 / (2**bits - 1))


def gray_levels(values: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    """Modality LUT output ``values`` through the VOI LUT (the order of the module
    docstring) as 8-bit gray levels, before any MONOCHROME1 inversion."""
    levels: np.ndarray | None = None
    if window is None and ds.get("VOILUTSequence"):
        try:
            levels = _through_lut(values, ds)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError, struct.error) as exc:
            logger.warning("VOI LUT Sequence not usable (%s): windowing instead", exc)
    if levels is None:
        if window is None:
            window = dataset_window(ds)
        if window is None:
            low, high = float(values.min()), float(values.max())
            window = Window((low + high) / 2, max(high - low, 1.0), "LINEAR_EXACT")
        levels = apply_windowing(values, _window_module(window))
    return np.clip(np.rint(levels), 0, 255).astype(np.uint8)


def render(
    ds: Dataset,
    frame: int,
    *,
    window: Window | None,
    viewport: tuple[int, int] | None,
    media_type: str,
) -> bytes:
    """Frame ``frame`` (1-based) of ``ds`` as JPEG or PNG bytes."""
    pixels = decode_frame(ds, frame)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim == 3 and photometric in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    else:
        out = gray_levels(apply_modality_lut(pixels, ds), ds, window)
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
