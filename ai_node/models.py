"""The two CNNs (region, finding): architecture, loading, and batched inference.

Shape kept from the seed application: 128x128 grayscale slices, 3 convolutions and
2 dense layers. What changed, for speed on CPU (docs/benchmarks.md): 16/32/64
filters; the region model's convolutions all stride 2, the finding model's first
one runs at full resolution followed by a 2x2 max pool (small lesions) and the
other two stride 2; a global pooling replaces the flatten. A slice costs about
10-12 M multiply-adds instead of the seed's ~135 M. The finding model pools with a global max
(a small lesion anywhere in the slice must be able to dominate); the region model
with a global average (the whole anatomy matters).

TensorFlow is imported inside functions, never at module import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ai_node.labels import REGION_LABELS
from ai_node.preprocess import INPUT_SIZE

logger = logging.getLogger(__name__)

TASKS = ("region", "finding")

TASK_WINDOWS = {"region": "wide", "finding": "lung"}
"""Which window (ai_node.preprocess.WINDOWS) each task's input uses."""

DEFAULT_TARGET_SENSITIVITY = 0.9
"""The sensitivity a retrained model's threshold aims at when the card names none."""


def build_model(task: str) -> Any:
    """A fresh, compiled Keras model for ``task`` ("region" or "finding")."""
    # TensorFlow takes seconds to import: only what builds, trains or runs a model pays for it.
    import keras
    from keras import layers

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 1), name="slice")
    x = inputs
    if task == "finding":
        # full resolution first: a 3 mm lesion is a pixel or two on the 128 grid
        x = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    else:
        x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    for filters in (32, 64):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
    if task == "finding":
        x = layers.GlobalMaxPooling2D()(x)
    else:
        x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(64, activation="relu")(x)
    if task == "finding":
        outputs = layers.Dense(1, activation="sigmoid", name="lesion_probability")(x)
        loss: Any = "binary_crossentropy"
    else:
        outputs = layers.Dense(len(REGION_LABELS), activation="softmax", name="region")(x)
        loss = "sparse_categorical_crossentropy"
    model = keras.Model(inputs, outputs, name=f"radnode_{task}")
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss=loss, metrics=["accuracy"])
    return model


@dataclass
class LoadedModel:
    """One model version ready for inference, with its card."""

    task: str
    version: str
    card: dict[str, Any]
    keras_model: Any
    _fn: Callable[[Any], Any]

    @property
    def window(self) -> str:
        return str(self.card.get("input", {}).get("window", TASK_WINDOWS[self.task]))

    @property
    def name(self) -> str:
        return str(self.card.get("name", f"radnode-{self.task}"))

    @property
    def operating_threshold(self) -> float | None:
        """The card's operating threshold (``operating_point.threshold``), if it has one."""
        return card_threshold(self.card)

    @property
    def target_sensitivity(self) -> float:
        """The sensitivity the operating threshold is chosen to reach
        (``operating_point.target_sensitivity``, else :data:`DEFAULT_TARGET_SENSITIVITY`)."""
        point = self.card.get("operating_point") or {}
        return float(point.get("target_sensitivity", DEFAULT_TARGET_SENSITIVITY))

    def predict_batched(self, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Outputs for (N, S, S, 1) inputs, ``batch_size`` slices per call of the
        compiled function (``model(x, training=False)``; no per-slice ``predict``)."""
        outs = []
        for start in range(0, x.shape[0], batch_size):
            outs.append(np.asarray(self._fn(x[start : start + batch_size])))
        if not outs:
            width = len(REGION_LABELS) if self.task == "region" else 1
            return np.zeros((0, width), dtype=np.float32)
        return np.concatenate(outs, axis=0)


def card_threshold(card: dict[str, Any]) -> float | None:
    """``operating_point.threshold`` of a model card: the study score at or above which the
    model's finding is reported; None when the card leaves it to the node's settings."""
    value = (card.get("operating_point") or {}).get("threshold")
    return None if value is None else float(value)


def load_model(task: str, version: str, path: Path, card: dict[str, Any]) -> LoadedModel:
    """Load a ``.keras`` file and wrap it in a compiled inference function."""
    # TensorFlow takes seconds to import: only what builds, trains or runs a model pays for it.
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(path, compile=False)

    @tf.function(
        input_signature=[tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 1], tf.float32)],
        reduce_retracing=True,
    )
    def infer(x: Any) -> Any:
        return model(x, training=False)

    logger.info("model loaded", extra={"task": task, "version": version, "path": str(path)})
    return LoadedModel(task, version, card, model, infer)
