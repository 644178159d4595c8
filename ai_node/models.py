"""Models: the shipped CNNs' architecture, and loading any model package's model for
batched inference.

The shipped region and finding models keep the seed application's shape: 128x128
grayscale slices, 3 convolutions and 2 dense layers. What changed, for speed on CPU
(docs/benchmarks.md): 16/32/64 filters; the region model's convolutions all stride 2, the
finding model's first one runs at full resolution followed by a 2x2 max pool (small
lesions) and the other two stride 2; a global pooling replaces the flatten. A slice
costs about 10-12 M multiply-adds instead of the seed's ~135 M. The finding model pools
with a global max (a small lesion anywhere in the slice must be able to dominate); the
region model with a global average (the whole anatomy matters).

Any model, shipped or brought, is loaded by :func:`load_model` from its file: a Keras 3
``.keras`` file, a legacy Keras 2 HDF5 ``.h5`` file (Keras 3's legacy loader), or a
TensorFlow SavedModel folder (its ``serving_default`` signature). Keras files load in
Keras safe mode unless the package's code is trusted (:mod:`ai_node.package`). Every
model runs through one traced function on batches (``model(x, training=False)``), never
a per-slice ``predict``.

TensorFlow is imported inside functions, never at module import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ai_node.card import DEFAULT_TARGET_SENSITIVITY, ModelCard, parse_card
from ai_node.labels import REGION_LABELS
from ai_node.preprocess import INPUT_SIZE, Window

logger = logging.getLogger(__name__)

TASKS = ("region", "finding")
"""The shipped models (their registry names), which ``radnode model train`` trains."""

TASK_WINDOWS = {"region": "wide", "finding": "lung"}
"""Which window (ai_node.preprocess.WINDOWS) each shipped model's input uses."""

__all__ = ["DEFAULT_TARGET_SENSITIVITY", "TASKS", "TASK_WINDOWS", "LoadedModel", "load_model"]


LOCALISATION_LAYER = "lesion_features"
"""The name :func:`build_model` gives the finding model's 32x32 feature map (the stride-2
convolution read by the last one), which its card's ``localisation.layer`` names (the
shipped 1.0.0 predates the name: there it is ``conv2d_4``)."""


class ModelTimeout(TimeoutError):
    """A model ran past its card's ``timeout_s``."""


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
        name = LOCALISATION_LAYER if task == "finding" and filters == 32 else None
        x = layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu", name=name)(x)
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


def model_format(path: Path) -> str:
    """``keras``, ``h5`` or ``saved_model``, from the model file's name (or a folder)."""
    if path.is_dir():
        return "saved_model"
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return "keras"
    if suffix in (".h5", ".hdf5"):
        return "h5"
    raise ValueError(f"{path.name}: not a model file (.keras, .h5 or a SavedModel folder)")


@dataclass
class LoadedModel:
    """One model version ready for inference, with its card."""

    name: str
    version: str
    card: ModelCard
    keras_model: Any
    _fn: Callable[[Any], Any]
    trust_code: bool = False

    @property
    def task(self) -> str:
        """The registry name (the shipped models are named after their task)."""
        return self.name

    @property
    def size(self) -> int:
        return int(self.card.input.size[0])

    @property
    def window(self) -> Window:
        """The first HU window of the input (the shipped models have one)."""
        windows = self.card.input.normalisation.windows or []
        if not windows:
            raise ValueError(f"model {self.name} has no HU window")
        return Window(windows[0].center, windows[0].width)

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def operating_threshold(self) -> float | None:
        """The card's operating threshold, if it has one (:func:`card_threshold`)."""
        return self.card.operating_threshold

    @property
    def target_sensitivity(self) -> float:
        """The sensitivity the operating threshold is chosen to reach
        (``operating_point.target_sensitivity``, else :data:`DEFAULT_TARGET_SENSITIVITY`)."""
        return self.card.target_sensitivity

    def predict_batched(
        self,
        x: np.ndarray,
        batch_size: int = 64,
        check: Callable[[], None] | None = None,
    ) -> np.ndarray:
        """The raw outputs (N, units) of (N, S, S, C) inputs, ``batch_size`` at a time
        through the traced function; ``check()`` runs before each batch (it raises to stop:
        a deadline)."""
        dtype = np.float16 if self.card.input.dtype == "float16" else np.float32
        outs = []
        for start in range(0, x.shape[0], batch_size):
            if check is not None:
                check()
            batch = np.ascontiguousarray(x[start : start + batch_size], dtype=dtype)
            out = np.asarray(self._fn(batch), dtype=np.float32)
            outs.append(out.reshape(out.shape[0], -1))
        if not outs:
            return np.zeros((0, max(self.card.output_widths())), dtype=np.float32)
        return np.concatenate(outs, axis=0)

    def positive(self, outputs: np.ndarray) -> np.ndarray:
        """The positive label's probability per row of ``outputs``."""
        card = self.card
        if outputs.shape[1] == 1:
            return outputs[:, 0]
        index = card.outputs.labels.index(str(card.outputs.positive_label))
        return outputs[:, index]

    def class_probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """(N, labels) probabilities: a one-unit binary output becomes [1 - p, p]."""
        if self.card.task == "binary" and outputs.shape[1] == 1:
            return np.concatenate([1.0 - outputs, outputs], axis=1)
        return outputs


def card_threshold(card: ModelCard | dict[str, Any]) -> float | None:
    """A card's operating threshold: the retraining's ``operating_point.threshold``, else
    ``outputs.threshold``; None when the card leaves it to the node's settings."""
    if not isinstance(card, ModelCard):
        card = parse_card(card)
    return card.operating_threshold


def _single_output(out: Any) -> Any:
    if isinstance(out, Mapping):
        if len(out) != 1:
            raise ValueError(f"the model has {len(out)} outputs ({', '.join(out)}); one expected")
        return next(iter(out.values()))
    if isinstance(out, list | tuple):
        if len(out) != 1:
            raise ValueError(f"the model has {len(out)} outputs; one expected")
        return out[0]
    return out


def open_model(
    path: Path,
    card: ModelCard,
    *,
    trust_code: bool = False,
    custom_objects: Mapping[str, Any] | None = None,
) -> tuple[Any, Callable[[Any], Any], tuple[Any, ...] | None]:
    """(model object, traced batch function, the model's declared input shape or None).

    Keras files load with ``safe_mode=not trust_code`` (Keras 3 refuses a Lambda layer's
    Python lambda in safe mode, in ``.keras`` files and, in Keras 3.15, in legacy HDF5 too);
    a SavedModel is called through its ``serving_default`` signature.
    """
    # TensorFlow takes seconds to import: only what builds, trains or runs a model pays for it.
    import keras
    import tensorflow as tf

    size, channels = card.input.size[0], card.input.channels
    dtype = tf.float16 if card.input.dtype == "float16" else tf.float32
    spec = tf.TensorSpec([None, size, size, channels], dtype)
    fmt = model_format(path)
    if fmt == "saved_model":
        loaded = tf.saved_model.load(str(path))
        signatures = getattr(loaded, "signatures", {})
        if "serving_default" not in signatures:
            raise ValueError("the SavedModel has no serving_default signature")
        signature = signatures["serving_default"]
        inputs = signature.structured_input_signature[1]
        if len(inputs) != 1:
            raise ValueError(f"the SavedModel's signature takes {len(inputs)} inputs; one expected")
        [(input_name, input_spec)] = inputs.items()
        declared_sm: tuple[Any, ...] | None = tuple(input_spec.shape.as_list())

        @tf.function(input_signature=[spec], reduce_retracing=True)
        def infer_sm(x: Any) -> Any:
            return _single_output(signature(**{input_name: tf.cast(x, input_spec.dtype)}))

        return loaded, infer_sm, declared_sm
    model = keras.saving.load_model(
        path,
        compile=False,
        safe_mode=not trust_code,
        custom_objects=dict(custom_objects or {}) or None,
    )
    declared: tuple[Any, ...] | None = None
    try:
        declared = tuple(model.inputs[0].shape) if len(model.inputs) == 1 else None
    except (AttributeError, ValueError, TypeError):
        declared = None

    @tf.function(input_signature=[spec], reduce_retracing=True)
    def infer(x: Any) -> Any:
        return _single_output(model(x, training=False))

    return model, infer, declared


def load_model(
    name: str,
    version: str,
    path: Path,
    card: ModelCard | dict[str, Any],
    *,
    trust_code: bool = False,
    custom_objects: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Load a model file and wrap it in its traced inference function (no digest check:
    :meth:`ai_node.registry.ModelRegistry.load` checks the card's sha256 first)."""
    if not isinstance(card, ModelCard):
        card = parse_card(card)
    model, fn, _ = open_model(path, card, trust_code=trust_code, custom_objects=custom_objects)
    logger.info("model loaded", extra={"model": name, "version": version, "path": str(path)})
    return LoadedModel(name, version, card, model, fn, trust_code)


def wrap_keras(name: str, version: str, card: ModelCard, keras_model: Any) -> LoadedModel:
    """An in-memory Keras model wrapped like a loaded one (evaluation before saving)."""
    # TensorFlow takes seconds to import: only what builds, trains or runs a model pays for it.
    import tensorflow as tf

    size, channels = card.input.size[0], card.input.channels

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, channels], tf.float32)])
    def fn(x: Any) -> Any:
        return keras_model(x, training=False)

    return LoadedModel(name, version, card, keras_model, fn)
