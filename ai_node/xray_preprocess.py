"""From one CR or DX image to a model input of a declared size and channels.

The order of work, per image:

1. the stored values are decoded and checked (one frame, one sample per pixel,
   MONOCHROME1 or MONOCHROME2, at most 16 bits; sizes are checked before decoding);
2. a MONOCHROME1 image is inverted on its stored values, ``(2**BitsStored - 1) - v``
   for unsigned pixels (PS3.3 C.7.6.3.1.2: there the minimum is displayed white),
   so that every image the model sees is bright where it is dense; on integers this
   is exact, so a MONOCHROME1 image and its MONOCHROME2 twin give identical inputs;
3. the Modality LUT's Rescale Slope / Intercept (PS3.3 C.11.1) when present (DX
   requires 1 and 0, C.8.11.3.1.4);
4. a non-square image is padded to a square with its darkest value (centred), then
   area-averaged to ``size`` x ``size``: each model pixel is the mean of the source
   pixels it covers, so nothing is aliased;
5. scaled to 0..1: ``min_max`` over the image, or ``percentile``: clipped to the
   image's low and high percentiles first (robust to markers and collimator edges);
6. standardised (``none``, ``per_image``: zero mean and unit variance, ``imagenet``:
   ImageNet's channel means and deviations, three channels) and given 1 channel or 3
   (the grayscale image replicated).

These are the ``input`` semantics of a model card's ``kind: image``. Scaling after the
resize keeps the input independent of the detector's pixel count: single noisy
pixels of a 3000-pixel detector do not set the range.

Lengths: Imager Pixel Spacing (0018,1164) is the spacing at the detector (PS3.3
C.8.11.4.1.1, 10.7.1.1), the plane the ground truth of ``ai_node.xray_synth`` is
measured in; Pixel Spacing (0028,0030) is used only when it is absent.
:class:`ModelImage` converts millimetres and pixel positions between the source image
and the model grid.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from ai_node.card import Input as CardInput
from ai_node.preprocess import InputError, card_input

logger = logging.getLogger(__name__)

__all__ = [
    "ModelImage",
    "area_resize",
    "detector_spacing_mm",
    "image_input",
    "image_input_of",
    "radiograph_input",
    "stored_pixels",
]

MAX_MATRIX = 8192
"""Largest Rows/Columns accepted: checked before the pixels are decoded."""

def image_input(
    size: int = 256,
    channels: int = 1,
    scale: str = "min_max",
    percentiles: tuple[float, float] = (1.0, 99.0),
    standardise: str = "none",
    invert_monochrome1: bool = True,
) -> CardInput:
    """A model card's ``input`` for ``kind: image`` (``ValueError`` when inconsistent)."""
    return CardInput.model_validate(
        {
            "kind": "image",
            "size": (size, size),
            "channels": channels,
            "normalisation": {
                "scale": scale,
                "percentiles": percentiles,
                "standardise": standardise,
            },
            "invert_monochrome1": invert_monochrome1,
        }
    )


@dataclass(frozen=True)
class ModelImage:
    """A radiograph on the model grid, with what it takes to map positions back.

    ``array`` is (size, size, channels) float32. The source image (``source_shape``
    rows and columns) was padded by ``pad`` (rows, columns) on the top and left to a
    square, and ``factor`` source pixels make one model pixel along each axis (on
    average: for a non-integer factor the positions below hold to within a pixel).
    """

    array: np.ndarray
    source_shape: tuple[int, int]
    pad: tuple[int, int]
    factor: float
    spacing_mm: tuple[float, float] | None

    @property
    def model_spacing_mm(self) -> tuple[float, float] | None:
        """(row, column) spacing of the model grid in mm at the detector, if known."""
        if self.spacing_mm is None:
            return None
        return self.spacing_mm[0] * self.factor, self.spacing_mm[1] * self.factor

    def to_model_px(self, row: float, column: float) -> tuple[float, float]:
        """The model-grid (row, column) of a source pixel index (0-based, pixel centres)."""
        return (
            (row + 0.5 + self.pad[0]) / self.factor - 0.5,
            (column + 0.5 + self.pad[1]) / self.factor - 0.5,
        )

    def to_source_px(self, row: float, column: float) -> tuple[float, float]:
        """The source (row, column) of a model-grid position (inverse of to_model_px)."""
        return (
            (row + 0.5) * self.factor - 0.5 - self.pad[0],
            (column + 0.5) * self.factor - 0.5 - self.pad[1],
        )

    def mm_to_model_px(self, mm: float) -> tuple[float, float]:
        """A length in mm at the detector as (rows, columns) of the model grid."""
        spacing = self.model_spacing_mm
        if spacing is None:
            raise InputError("the image has no Imager Pixel Spacing or Pixel Spacing")
        return mm / spacing[0], mm / spacing[1]


# --------------------------------------------------------------------------- header


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    try:
        value = ds.get(keyword, default)
        if value is None:
            raise InputError(f"{keyword} is missing")
        return int(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{keyword} is not an integer: {exc}") from None


def detector_spacing_mm(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm at the detector: Imager Pixel Spacing, else Pixel
    Spacing, else None (PS3.3 10.7.1.1)."""
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        try:
            value = ds.get(keyword)
            if value is None:
                continue
            row, column = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(row) and math.isfinite(column) and row > 0 and column > 0:
            return row, column
    return None


def stored_pixels(ds: Dataset, invert_monochrome1: bool = True) -> np.ndarray:
    """The stored values of a single-frame grayscale image as float64, MONOCHROME1
    inverted (when asked) and the Modality LUT's slope and intercept applied.

    Raises :class:`~ai_node.preprocess.InputError` for what a radiograph model cannot
    take: colour, several frames, more than 16 bits, sizes beyond :data:`MAX_MATRIX`.
    """
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(f"PhotometricInterpretation {photometric or '(none)'} is not grayscale")
    if _int(ds, "SamplesPerPixel", 1) != 1:
        raise InputError("SamplesPerPixel must be 1")
    if _int(ds, "NumberOfFrames", 1) != 1:
        raise InputError("a radiograph model takes single-frame images")
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    if not (1 <= rows <= MAX_MATRIX and 1 <= columns <= MAX_MATRIX):
        raise InputError(f"{rows}x{columns} pixels is outside 1..{MAX_MATRIX}")
    allocated = _int(ds, "BitsAllocated")
    bits = _int(ds, "BitsStored", allocated)
    signed = _int(ds, "PixelRepresentation", 0) == 1
    if allocated not in (8, 16) or not 1 <= bits <= allocated:
        raise InputError(f"BitsAllocated {allocated} / BitsStored {bits} is not 8 or 16 bit")
    try:
        raw: np.ndarray = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - any decoder failure is bad input
        raise InputError(f"pixel data cannot be decoded: {exc}") from None
    if raw.shape != (rows, columns):
        raise InputError(f"decoded pixels are {raw.shape}, not {rows}x{columns}")
    if signed:
        values = raw.astype(np.int64)
        top = (1 << (bits - 1)) - 1
        bottom = -(1 << (bits - 1))
    else:
        values = raw.astype(np.int64) & ((1 << bits) - 1)
        top, bottom = (1 << bits) - 1, 0
    if photometric == "MONOCHROME1" and invert_monochrome1:
        values = (top + bottom) - values
    out = values.astype(np.float64)
    slope, intercept = _rescale(ds)
    if slope != 1.0 or intercept != 0.0:
        out = out * slope + intercept
    return out


def _rescale(ds: Dataset) -> tuple[float, float]:
    try:
        slope = float(ds.get("RescaleSlope", 1.0))
        intercept = float(ds.get("RescaleIntercept", 0.0))
    except (TypeError, ValueError):
        raise InputError("RescaleSlope / RescaleIntercept are not numbers") from None
    if not (math.isfinite(slope) and math.isfinite(intercept)) or slope == 0.0:
        raise InputError(f"unusable Rescale Slope {slope} / Intercept {intercept}")
    return slope, intercept


# --------------------------------------------------------------------------- geometry


def _resize_axis(image: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    n_in = image.shape[axis]
    if n_in == n_out:
        return image
    if n_in < n_out:
        return np.take(image, (np.arange(n_out) * n_in) // n_out, axis=axis)
    edges = np.linspace(0, n_in, n_out + 1).astype(np.intp)
    sums = np.add.reduceat(image, edges[:-1], axis=axis, dtype=np.float32)
    shape = [1, 1]
    shape[axis] = n_out
    return sums / np.diff(edges).astype(np.float32).reshape(shape)


def area_resize(image: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Area-average (box-filter) ``image`` to ``rows`` x ``columns`` (float32).

    Each target pixel is the mean of a bin of whole source pixels: the bins split the
    axis at ``floor(k * n / size)``, so for an integer factor they are its blocks and
    otherwise they are one pixel wider or narrower by turns. An axis with fewer pixels
    than asked for is enlarged by nearest neighbour.
    """
    out = _resize_axis(image.astype(np.float32, copy=False), rows, 0)
    return np.ascontiguousarray(_resize_axis(out, columns, 1), dtype=np.float32)


def _pad_square(values: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    rows, columns = values.shape
    side = max(rows, columns)
    if rows == columns:
        return values, (0, 0)
    pad = ((side - rows) // 2, (side - columns) // 2)
    out = np.full((side, side), values.min(), dtype=values.dtype)
    out[pad[0] : pad[0] + rows, pad[1] : pad[1] + columns] = values
    return out, pad


def radiograph_input(ds: Dataset, how: CardInput | None = None) -> ModelImage:
    """The model input of one CR or DX image (see the module docstring for the steps);
    scaling and standardising are :func:`ai_node.preprocess.card_input`'s, as in the
    analysis pipeline."""
    how = how or image_input()
    size = how.size[0]
    values = stored_pixels(ds, how.invert_monochrome1)
    source_shape = (int(values.shape[0]), int(values.shape[1]))
    square, pad = _pad_square(values)
    small = area_resize(square, size, size)
    # MONOCHROME1 is already inverted on the stored values (exact on integers).
    array = card_input(small[None], how)[0].astype(np.float32, copy=False)
    return ModelImage(
        array=array,
        source_shape=source_shape,
        pad=pad,
        factor=square.shape[0] / size,
        spacing_mm=detector_spacing_mm(ds),
    )


def image_input_of(card: Mapping[str, Any]) -> CardInput:
    """The card's ``input`` from a model card's ``input`` mapping; ``ValueError`` when it
    is not ``kind: image`` or is inconsistent."""
    if card.get("kind", "image") != "image":
        raise ValueError(f"input.kind is {card.get('kind')!r}, not image")
    return CardInput.model_validate({"kind": "image", **card})
