"""Where a positive finding is: a point on its driving image, from the model's own activations.

A model whose card declares a localisation method (``localisation.method``:
``max_activation`` or ``grad_cam``, on ``localisation.layer``) marks a positive finding on
the image that drove its score. The map of the named layer (rows, columns, channels) is
computed with the gradient of the positive output with respect to it, for that one image:

* ``max_activation``: the sum over channels of activation times gradient. Behind a global
  max pool the gradient is non-zero only where each channel took its maximum, so this is
  each channel's peak position, weighted by how much the output rises with that channel:
  the position behind the global max pool. A one-channel map (the shipped X-ray model's
  32x32 opacity logits) reduces to its argmax.
* ``grad_cam``: Grad-CAM (Selvaraju et al. 2017): the channels weighted by their mean
  gradient, summed, negative values clipped.

The peak cell is refined to the weighted centre of its 3x3 neighbourhood (positive values),
then carried from map cells to the model grid (a layer of ``h`` rows on an ``s``-pixel input
spans ``s / h`` pixels a cell) and from the grid to the stored image's pixels (the grid is
the image padded to a square, centred, then area-averaged: :func:`ai_node.preprocess.area_resize`).
Image positions follow PS3.3 C.18.6.1.1: (0, 0) is the top left corner of the top left pixel,
x along columns, y along rows; the centre of pixel (r, c) is (c + 0.5, r + 0.5).

The mark is one point per positive result (the study's finding), on the driving slice.
TensorFlow is imported inside functions (seconds to import).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ai_node.models import LoadedModel
from ai_node.preprocess import SliceRef

logger = logging.getLogger(__name__)

METHODS = ("max_activation", "grad_cam")
"""The card's localisation methods that mark a finding."""


class LocalisationError(ValueError):
    """The model cannot be localised as its card says (no such layer, not a Keras model,
    a map that is not (rows, columns, channels))."""


@dataclass(frozen=True)
class Location:
    """A finding's mark on one image: a point in the image's pixel coordinates
    (PS3.3 C.18.6.1.1), with the slice it is on."""

    slice_index: int
    ref: SliceRef
    column: float
    row: float
    rows: int
    columns: int
    method: str
    layer: str

    def as_details(self) -> dict[str, Any]:
        """What the results row's ``details.location`` holds (the review page draws it)."""
        return {
            "sop_instance_uid": self.ref.sop_instance_uid,
            "frame_number": self.ref.frame_number,
            "slice_index": self.slice_index,
            "column": round(self.column, 2),
            "row": round(self.row, 2),
            "columns": self.columns,
            "rows": self.rows,
            "method": self.method,
            "layer": self.layer,
        }


def _layer_and_positive(model: LoadedModel, layer: str) -> Any:
    """A Keras model giving (the layer's map, the model's outputs) for an input."""
    # TensorFlow takes seconds to import: only what runs a model pays for it.
    import keras

    net = model.keras_model
    if not isinstance(net, keras.Model):
        raise LocalisationError(f"{model.key} is not a Keras model: its layers cannot be read")
    try:
        target = net.get_layer(layer)
    except ValueError:
        raise LocalisationError(f"{model.key} has no layer named {layer!r}") from None
    try:
        return keras.Model(net.inputs, [target.output, net.outputs[0]])
    except (AttributeError, ValueError, TypeError) as exc:
        raise LocalisationError(f"{model.key}: layer {layer!r} cannot be read: {exc}") from None


def activation_map(model: LoadedModel, x: np.ndarray, method: str, layer: str) -> np.ndarray:
    """The localisation map (rows, columns) of one model input ``x`` (1, S, S, C)."""
    # TensorFlow takes seconds to import: only what runs a model pays for it.
    import tensorflow as tf

    if method not in METHODS:
        raise LocalisationError(f"unknown localisation method {method!r}")
    probe = _layer_and_positive(model, layer)
    inputs = tf.convert_to_tensor(np.asarray(x, dtype=np.float32))
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        features, outputs = probe(inputs, training=False)
        outputs = tf.reshape(outputs, (tf.shape(outputs)[0], -1))
        if outputs.shape[-1] == 1:
            positive = outputs[:, 0]
        else:
            card = model.card
            positive = outputs[:, card.outputs.labels.index(str(card.outputs.positive_label))]
    grads = tape.gradient(positive, features)
    if grads is None or len(features.shape) != 4:
        raise LocalisationError(
            f"{model.key}: layer {layer!r} is not a spatial map the output depends on"
        )
    a = np.asarray(features[0], dtype=np.float64)
    g = np.asarray(grads[0], dtype=np.float64)
    if method == "grad_cam":
        weights = g.mean(axis=(0, 1))
        cam = np.maximum((a * weights).sum(axis=-1), 0.0)
    else:
        cam = (a * g).sum(axis=-1)
    if not np.any(cam > 0):  # e.g. a one-channel map whose maximum is below zero
        cam = a.sum(axis=-1)
    return cam


def peak(cam: np.ndarray) -> tuple[float, float]:
    """(row, column) of the map's maximum in map units (cell i spans [i, i + 1]), refined
    to the weighted centre of the positive values of its 3x3 neighbourhood."""
    r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
    r0, r1 = max(r - 1, 0), min(r + 2, cam.shape[0])
    c0, c1 = max(c - 1, 0), min(c + 2, cam.shape[1])
    window = np.clip(cam[r0:r1, c0:c1], 0.0, None)
    total = float(window.sum())
    if total <= 0.0:
        return r + 0.5, c + 0.5
    rr, cc = np.mgrid[r0:r1, c0:c1]
    return float((window * (rr + 0.5)).sum() / total), float((window * (cc + 0.5)).sum() / total)


def grid_to_image(
    row: float, column: float, grid: int, rows: int, columns: int
) -> tuple[float, float]:
    """A position on the ``grid`` x ``grid`` model input (continuous, pixel i spans [i, i+1])
    as (row, column) on the stored image it came from (padded to a square, centred)."""
    side = max(rows, columns)
    scale = side / grid
    return row * scale - (side - rows) // 2, column * scale - (side - columns) // 2


def locate(
    model: LoadedModel, x: np.ndarray, slice_index: int, ref: SliceRef, rows: int, columns: int
) -> Location:
    """The mark of ``model``'s finding on one image: ``x`` its model input (1, S, S, C),
    ``rows`` x ``columns`` the stored image's matrix."""
    spec = model.card.localisation
    if not spec.marks or spec.layer is None:
        raise LocalisationError(f"{model.key}'s card declares no localisation method")
    cam = activation_map(model, x, spec.method, spec.layer)
    grid = int(x.shape[1])
    map_row, map_col = peak(cam)
    grid_row = map_row * grid / cam.shape[0]
    grid_col = map_col * grid / cam.shape[1]
    row, column = grid_to_image(grid_row, grid_col, grid, rows, columns)
    row = float(min(max(row, 0.0), rows))
    column = float(min(max(column, 0.0), columns))
    return Location(slice_index, ref, column, row, rows, columns, spec.method, spec.layer)
