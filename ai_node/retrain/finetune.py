"""Pipeline step 3, train: a candidate finding model from the exported labels.

Fine-tuning (the default) starts from the active version's weights; ``from_scratch``
starts from a fresh network. Both go through :func:`ai_node.train.fit` (the model's own
training code, class balancing included) on the train split.

Radiologists label studies, the model scores slices. Slice targets from study labels:
every slice of a ``no lesion`` study is negative; in a ``lesion`` study the slices the
active model scores at or above 0.5 (at least its top :data:`TOP_SLICES`) are positive
and the others carry no weight (unknown, not negative). A relabelled miss thus teaches
the model the slices it ranked highest; real localisation would need slice annotations.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ai_node.analysis import finding_probabilities
from ai_node.models import LoadedModel
from ai_node.preprocess import LUNG_WINDOW, model_input
from ai_node.registry import ModelRegistry, ModelSet
from ai_node.retrain.prepare import split_studies
from ai_node.train import DictModels, fit

logger = logging.getLogger(__name__)

TOP_SLICES = 3
FINE_TUNE_LEARNING_RATE = 5e-4
TRAINING_INFO = "training.json"
MODEL_FILE = "model.keras"


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
    """Train and save ``out_dir/model.keras`` and ``out_dir/training.json``."""
    # TensorFlow takes seconds to import: only what builds, trains or runs a model pays for it.
    import keras

    registry = ModelRegistry(models_dir)
    active: LoadedModel = ModelSet(registry).get("finding")
    studies = split_studies(prepared, "train")
    if not studies:
        raise ValueError("no study in the train split")
    xs, ys, ws = [], [], []
    for study, hu in studies:
        probs = finding_probabilities(hu, DictModels({"finding": active}))
        y, w = slice_targets(int(study["label"]), probs)
        xs.append(model_input(hu, LUNG_WINDOW))
        ys.append(y)
        ws.append(w)
    x, y, w = np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)
    model = None
    if not from_scratch:
        model = keras.saving.load_model(
            registry.version_dir("finding", active.version) / MODEL_FILE, compile=False
        )
        model.compile(
            optimizer=keras.optimizers.Adam(FINE_TUNE_LEARNING_RATE),
            loss="binary_crossentropy",
            metrics=["accuracy"],
        )
    trained = fit("finding", x, y, w, epochs, seed, verbose, model=model)
    out_dir.mkdir(parents=True, exist_ok=True)
    trained.save(out_dir / MODEL_FILE)
    info = {
        "base_version": None if from_scratch else active.version,
        "from_scratch": from_scratch,
        "epochs": epochs,
        "seed": seed,
        "train_studies": len(studies),
        "train_slices": int(x.shape[0]),
        "positive_slices": int(y.sum()),
        "weighted_slices": int((w > 0).sum()),
        "learning_rate": None if from_scratch else FINE_TUNE_LEARNING_RATE,
    }
    (out_dir / TRAINING_INFO).write_text(json.dumps(info, indent=2) + "\n")
    logger.info("candidate trained", extra=info)
    return info
