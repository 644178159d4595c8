"""Pipeline step 3, train: a candidate version of the retrained model from its labels.

Fine-tuning (the default) goes on training the active version's model file (Keras 3
``.keras`` or legacy ``.h5``, loaded in Keras safe mode as the worker loads it) with
binary cross-entropy and sample weights, classes balanced as :func:`ai_node.train.fit`
does; ``from_scratch`` starts from a fresh network, which only a model whose architecture
radnode knows can (the shipped finding model, :func:`ai_node.models.build_model`). The
input is :func:`ai_node.preprocess.card_input` of what the preprocess step decoded: the
model is trained on exactly what the worker feeds it.

What can be retrained (:func:`check_retrainable`): the active version's card says
``trainable: true``; the task is ``binary`` with a positive label (radiologists judge a
study positive or negative); the package was not imported with ``--trust-code`` (its
model loads only with its own code, which retraining does not run) and its model is a
Keras file, not a TensorFlow SavedModel.

Targets. Radiographs (``input.kind: image``): each image is a sample with its study's
label. CT slices (``kind: slice``): radiologists label studies, the model scores slices.
Every slice of a negative study is negative; in a positive study the slices the active
model scores at or above 0.5 (at least its top :data:`TOP_SLICES`) are positive and the
others carry no weight (unknown, not negative). A relabelled miss thus teaches the model
the slices it ranked highest; real localisation would need slice annotations.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ai_node.models import model_format
from ai_node.preprocess import card_input
from ai_node.registry import ModelRegistry
from ai_node.retrain.prepare import prepared_model, split_inputs
from ai_node.train import fit

logger = logging.getLogger(__name__)

TOP_SLICES = 3
FINE_TUNE_LEARNING_RATE = 5e-4
TRAINING_INFO = "training.json"
MODEL_FILE = "model.keras"
SCRATCH_ARCHITECTURES = ("finding",)
"""The models :func:`ai_node.models.build_model` builds afresh that retraining can train
(binary: the region model is not)."""


class RetrainingRefused(ValueError):
    """A model that retraining cannot (or may not) make a new version of."""


def check_retrainable(registry: ModelRegistry, name: str, from_scratch: bool = False) -> str:
    """The active version of ``name`` when it can be retrained (module docstring), from
    scratch too when asked; else :class:`RetrainingRefused` saying why."""
    version = registry.active_or_none(name)
    if version is None:
        raise RetrainingRefused(f"model {name} has no active version to retrain")
    card = registry.model_card(name, version)
    if not card.trainable:
        raise RetrainingRefused(
            f"model {name}:{version} is not trainable (its card says trainable: false): "
            "retraining refuses to make new versions of it"
        )
    if card.task != "binary" or not card.reports:
        raise RetrainingRefused(
            f"model {name}:{version} is a {card.task} model without a positive label: "
            "retraining learns radiologists' positive / negative labels (binary models only)"
        )
    if registry.entry(name, version).get("trust_code"):
        raise RetrainingRefused(
            f"model {name}:{version} was imported with --trust-code (its model needs the "
            "package's own code): retraining loads models in Keras safe mode only"
        )
    if model_format(registry.model_path(name, version)) == "saved_model":
        raise RetrainingRefused(
            f"model {name}:{version} is a TensorFlow SavedModel: retraining fine-tunes "
            "Keras files (.keras, .h5) only"
        )
    if from_scratch and name not in SCRATCH_ARCHITECTURES:
        raise RetrainingRefused(
            f"model {name}: training from scratch needs an architecture radnode knows "
            f"({', '.join(SCRATCH_ARCHITECTURES)}); fine-tune it instead"
        )
    return version


def slice_targets(
    label: int, active_probs: np.ndarray, top: int = TOP_SLICES
) -> tuple[np.ndarray, np.ndarray]:
    """(targets, weights) of one study's slices from its study label (module docstring)."""
    n = active_probs.shape[0]
    if label == 0:
        return np.zeros(n, np.float32), np.ones(n, np.float32)
    positive = active_probs >= 0.5
    positive[np.argsort(-active_probs, kind="stable")[:top]] = True
    return positive.astype(np.float32), positive.astype(np.float32)


def train_candidate(
    prepared: Path,
    models_dir: Path,
    out_dir: Path,
    epochs: int,
    from_scratch: bool,
    seed: int = 1,
    verbose: int = 2,
) -> dict[str, Any]:
    """Train and save ``out_dir/model.keras`` and ``out_dir/training.json`` for the model
    the prepared data set is for."""
    # TensorFlow takes seconds to import: only what builds, trains or runs a model pays for it.
    import keras

    name, card = prepared_model(prepared)
    registry = ModelRegistry(models_dir)
    version = check_retrainable(registry, name, from_scratch)
    active = registry.load(name, version)
    if active.card.input != card.input:
        raise ValueError(
            f"the active {name} model is {version}, whose input differs from the one the "
            "data set was prepared for (activated during the run): run again"
        )
    studies = split_inputs(prepared, "train")
    if not studies:
        raise ValueError("no study in the train split")
    xs, ys, ws = [], [], []
    for item in studies:
        x = card_input(item.hu, card.input, item.monochrome1)
        label = int(item.study["label"])
        if card.input.kind == "slice":
            probs = np.asarray(active.positive(active.predict_batched(x)))
            y, w = slice_targets(label, probs)
        else:
            y, w = np.full(len(x), float(label), np.float32), np.ones(len(x), np.float32)
        xs.append(x)
        ys.append(y)
        ws.append(w)
    x, y, w = np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)
    model = None
    if not from_scratch:
        model = active.keras_model
        model.compile(
            optimizer=keras.optimizers.Adam(FINE_TUNE_LEARNING_RATE),
            loss="binary_crossentropy",
            metrics=["accuracy"],
        )
    units = int(model.outputs[0].shape[-1]) if model is not None else 1
    # a two-unit softmax (negative, positive): one-hot targets, cross-entropy per unit
    targets = np.stack([1.0 - y, y], axis=1) if units == 2 else y
    trained = fit(name, x, targets, w, epochs, seed, verbose, model=model, balance_by=y)
    out_dir.mkdir(parents=True, exist_ok=True)
    trained.save(out_dir / MODEL_FILE)
    info = {
        "model": name,
        "base_version": None if from_scratch else version,
        "from_scratch": from_scratch,
        "epochs": epochs,
        "seed": seed,
        "input_kind": card.input.kind,
        "train_studies": len(studies),
        "train_slices": int(x.shape[0]),
        "positive_slices": int(y.sum()),
        "weighted_slices": int((w > 0).sum()),
        "learning_rate": None if from_scratch else FINE_TUNE_LEARNING_RATE,
    }
    (out_dir / TRAINING_INFO).write_text(json.dumps(info, indent=2) + "\n")
    logger.info("candidate trained", extra=info)
    return info
