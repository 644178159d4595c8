"""The chest X-ray opacity demo model: training data, network, held-out evaluation, package.

Data: synthetic PA chest radiographs from :mod:`ai_node.xray_synth`, written as DICOM
and read back through :func:`ai_node.xray_preprocess.radiograph_input` with the
``input`` the model card declares. An image's label is the generator's image-level
ground truth (at least one opacity or none); the opacities' ellipses also give the
cell map the network is trained against. The images vary the way a node's inputs do:
matrix 384-1024 on a 430 mm detector, 10-16 bits stored, DX or CR, MONOCHROME1 or
MONOCHROME2. Training images come in twin pairs (one patient with and without
opacities), held-out images one per patient, from disjoint seed ranges: the held-out
metrics are measured on patients the model never saw.

The package written is a model package in the card format of ``ai_node.card``: a
folder ``<root>/chest-xray-opacity/<version>/`` holding ``model.keras`` (weights only,
no optimizer state) and ``model.yaml`` (the card, with the model file's SHA-256).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ai_node.card import Input as CardInput
from ai_node.labels import OPACITY_LABELS
from ai_node.train import roc_auc
from ai_node.xray_preprocess import ModelImage, area_resize, image_input, radiograph_input
from ai_node.xray_synth import SOP_CLASSES, Opacity, XraySpec, generate_radiograph

logger = logging.getLogger(__name__)

MODEL_NAME = "chest-xray-opacity"
"""The model's registry name and the folder of its package."""

INPUT = image_input(size=256, channels=1, scale="min_max", standardise="none")
"""The model's input (the card's ``input``)."""

TRAIN_SEED_BASE = 3_000_000
HELDOUT_SEED_BASE = 3_900_000
"""Seed ranges of the training and held-out radiographs (disjoint)."""

THRESHOLD = 0.5
"""The operating point: a score at or above it is reported as an opacity."""

_SIZES = (384, 512, 768, 1024)
_SIZE_WEIGHTS = (0.3, 0.4, 0.2, 0.1)
_BITS = (10, 12, 14, 16)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class XrayPlan:
    """How many radiographs with opacities (1-3 each) and without, from which seeds.

    ``paired``: the radiographs without opacities are the same patients as those with
    them (twins that differ only by the opacities), so a training batch of whole pairs
    shows the network exactly what to look for; unpaired, every radiograph is its own
    patient.
    """

    with_opacities: int
    without: int
    seed_base: int
    paired: bool = False

    def __post_init__(self) -> None:
        if self.paired and self.without != self.with_opacities:
            raise ValueError("a paired plan has as many images without opacities as with")

    @property
    def total(self) -> int:
        return self.with_opacities + self.without

    @property
    def seeds(self) -> range:
        patients = self.with_opacities if self.paired else self.total
        return range(self.seed_base, self.seed_base + patients)


TRAIN_PLAN = XrayPlan(800, 800, TRAIN_SEED_BASE, paired=True)
HELDOUT_PLAN = XrayPlan(100, 100, HELDOUT_SEED_BASE)


def _spec(seed: int, with_opacities: bool) -> XraySpec:
    rng = np.random.default_rng([seed, 17])
    opacities = int(rng.integers(1, 4))
    return XraySpec(
        seed=seed,
        opacities=opacities if with_opacities else 0,
        size=int(rng.choice(_SIZES, p=_SIZE_WEIGHTS)),
        bits=int(rng.choice(_BITS)),
        sop_class=str(rng.choice(sorted(SOP_CLASSES))),
        monochrome1=bool(rng.random() < 0.3),
    )


def plan_specs(plan: XrayPlan) -> list[XraySpec]:
    """The radiographs of ``plan``, those with opacities first (1-3 each); matrix, bits,
    SOP class and photometric interpretation are drawn from each seed."""
    seeds = list(plan.seeds)
    positives = [_spec(seed, True) for seed in seeds[: plan.with_opacities]]
    if plan.paired:
        negatives = [_spec(seed, False) for seed in seeds]
    else:
        negatives = [_spec(seed, False) for seed in seeds[plan.with_opacities :]]
    return positives + negatives


LOCALISATION_LAYER = "cell_features"
"""The name :func:`build_model` gives the ReLU of the first 32x32 block, where the card's
``localisation.layer`` marks an opacity (the shipped 1.0.0 predates the name: ``re_lu_9``).
The opacity map three layers later peaks beside the opacities it finds (measured on the
held-out radiographs: docs/model-card.md)."""

GRID_STRIDE = 8
"""Model pixels per cell of the opacity map the network computes (256 / 8 = 32 cells)."""


@dataclass
class XrayData:
    """Model inputs, image labels and opacity maps (coverage per map cell, 0..1)."""

    x: np.ndarray
    y: np.ndarray
    maps: np.ndarray


def opacity_map(
    opacities: Sequence[Opacity], image: ModelImage, spacing_mm: float, stride: int = GRID_STRIDE
) -> np.ndarray:
    """The fraction of each map cell the opacities cover: each opacity's ellipse (its
    radius, aspect and angle from the ground truth) drawn on the model grid, then
    area-averaged by ``stride``."""
    size = image.array.shape[0]
    canvas = np.zeros((size, size), dtype=np.float32)
    rows, cols = np.mgrid[:size, :size].astype(np.float32)
    for opacity in opacities:
        r, c = image.to_model_px(*opacity.center_px)
        scale = spacing_mm * image.factor
        a = opacity.radius_mm / scale
        b = a * opacity.aspect
        theta = np.radians(opacity.angle_deg)
        dc, dr = cols - c, rows - r
        along = dc * np.cos(theta) + dr * np.sin(theta)
        across = -dc * np.sin(theta) + dr * np.cos(theta)
        canvas[(along / a) ** 2 + (across / b) ** 2 <= 1.0] = 1.0
    return area_resize(canvas, size // stride, size // stride)


def model_inputs(
    specs: Sequence[XraySpec], how: CardInput = INPUT, progress: Progress | None = None
) -> XrayData:
    """Inputs, labels and opacity maps of the radiographs: each one is generated as
    DICOM and read back through the worker's preprocessing."""
    cells = how.size[0] // GRID_STRIDE
    data = XrayData(
        x=np.zeros((len(specs), *how.size, how.channels), dtype=np.float32),
        y=np.zeros(len(specs), dtype=np.float32),
        maps=np.zeros((len(specs), cells, cells, 1), dtype=np.float32),
    )
    for i, spec in enumerate(specs):
        truth, ds = generate_radiograph(spec)
        image = radiograph_input(ds, how)
        data.x[i] = image.array
        data.y[i] = 1.0 if truth.opacities else 0.0
        data.maps[i, :, :, 0] = opacity_map(truth.opacities, image, spec.pixel_spacing_mm)
        if progress is not None:
            progress(i + 1, len(specs))
    return data


# --------------------------------------------------------------------------- network

ARCHITECTURE = (
    "conv 16 3x3 stride 2, conv 32 3x3 stride 2, conv 32 3x3, conv 64 3x3 stride 2, "
    "conv 64 3x3, conv 64 3x3 dilation 2, each with batch normalisation and ReLU; a 1x1 "
    "conv to a 32x32 map of opacity logits; global max pooling; sigmoid"
)


def build_model(how: CardInput = INPUT) -> Any:
    """The opacity CNN, uncompiled: small and fast on a CPU (about 150 M multiply-adds
    an image). It scores every 8x8-pixel cell of the image (a 32x32 logit map, layer
    ``opacity_logits``) and the image's P(opacity) is the sigmoid of the highest cell:
    one small opacity anywhere decides."""
    # TensorFlow takes seconds to import: only what builds, trains or runs a model pays for it.
    import keras
    from keras import layers

    inputs = keras.Input((*how.size, how.channels), name="radiograph")
    x = inputs
    for i, (filters, stride, dilation) in enumerate(
        ((16, 2, 1), (32, 2, 1), (32, 1, 1), (64, 2, 1), (64, 1, 1), (64, 1, 2))
    ):
        x = layers.Conv2D(
            filters, 3, strides=stride, dilation_rate=dilation, padding="same", use_bias=False
        )(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU(name=LOCALISATION_LAYER if i == 3 else None)(x)
    logits = layers.Conv2D(1, 1, name="opacity_logits")(x)
    top = layers.GlobalMaxPooling2D()(logits)
    outputs = layers.Activation("sigmoid", name="opacity_probability")(top)
    return keras.Model(inputs, outputs, name="radnode_chest_xray_opacity")


def _training_model(model: Any) -> Any:
    """``model`` with a second output sharing its layers: the per-cell probability map,
    trained against the ground truth's opacity maps."""
    import keras
    from keras import layers

    cells = layers.Activation("sigmoid", name="map")(model.get_layer("opacity_logits").output)
    image = layers.Identity(name="image")(model.output)
    return keras.Model(model.input, {"map": cells, "image": image})


def _pair_order(n: int, paired: bool, rng: np.random.Generator) -> np.ndarray:
    """A shuffled order; for a paired set (positives first, their twins after) each
    radiograph is followed by its twin, so that every batch holds whole pairs."""
    if not paired:
        return rng.permutation(n)
    half = n // 2
    perm = rng.permutation(half)
    return np.stack([perm, perm + half], axis=1).reshape(-1)


def fit(
    data: XrayData,
    epochs: int,
    seed: int,
    batch_size: int = 16,
    paired: bool = True,
    verbose: int = 1,
) -> Any:
    """Train a fresh model and return it (the image-level model).

    The loss is binary cross-entropy on the image label plus binary cross-entropy of
    the cell map against the opacity maps: the map tells the network where to look,
    which it would otherwise learn only slowly from one label per image. Adam with a
    cosine decay from 1e-3; batches of whole twin pairs for a paired set."""
    # TensorFlow takes seconds to import: only what builds, trains or runs a model pays for it.
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model()
    trainer = _training_model(model)
    steps = epochs * math.ceil(len(data.y) / batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, steps, alpha=0.05)
    trainer.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss={"map": "binary_crossentropy", "image": "binary_crossentropy"},
    )
    for epoch in range(epochs):
        order = _pair_order(len(data.y), paired, rng)
        if verbose:
            logger.info("epoch %d/%d", epoch + 1, epochs)
        trainer.fit(
            data.x[order],
            {"map": data.maps[order], "image": data.y[order]},
            epochs=1,
            batch_size=batch_size,
            shuffle=False,
            verbose=verbose,
        )
    return model


def predict(model: Any, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """P(opacity) per input, ``batch_size`` images per call (``model(x, training=False)``)."""
    out = [
        np.asarray(model(x[start : start + batch_size], training=False)).reshape(-1)
        for start in range(0, len(x), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class XrayMetrics:
    """Image-level held-out metrics at the operating threshold."""

    auc: float
    sensitivity: float
    specificity: float
    threshold: float
    images: int
    with_opacities: int
    without: int

    def as_card(self) -> dict[str, float | int]:
        return {
            "auc": round(self.auc, 4),
            "sensitivity": round(self.sensitivity, 4),
            "specificity": round(self.specificity, 4),
            "threshold": self.threshold,
            "images": self.images,
            "with_opacities": self.with_opacities,
            "without": self.without,
        }


def metrics_of(labels: Sequence[int], scores: Sequence[float], threshold: float) -> XrayMetrics:
    """AUC (ties count one half), sensitivity and specificity at ``threshold``."""
    truth = np.asarray(labels) == 1
    called = np.asarray(scores) >= threshold
    positives, negatives = int(truth.sum()), int((~truth).sum())
    return XrayMetrics(
        auc=roc_auc(list(np.asarray(labels).astype(int)), list(scores)),
        sensitivity=float((called & truth).sum() / max(positives, 1)),
        specificity=float((~called & ~truth).sum() / max(negatives, 1)),
        threshold=threshold,
        images=len(truth),
        with_opacities=positives,
        without=negatives,
    )


def evaluate(
    model: Any,
    plan: XrayPlan = HELDOUT_PLAN,
    threshold: float = THRESHOLD,
    progress: Progress | None = None,
) -> XrayMetrics:
    """Metrics of ``model`` on the radiographs of ``plan`` (the held-out set by default)."""
    data = model_inputs(plan_specs(plan), progress=progress)
    return metrics_of(data.y.astype(int).tolist(), predict(model, data.x).tolist(), threshold)


def heldout_description(plan: XrayPlan = HELDOUT_PLAN) -> str:
    return (
        f"{plan.total} synthetic PA chest radiographs from ai_node.xray_synth, seeds "
        f"{plan.seeds.start}..{plan.seeds.stop - 1} (never used in training): "
        f"{plan.with_opacities} with 1-3 opacities, {plan.without} without; one image per "
        "patient; image-level metrics"
    )


def training_description(plan: XrayPlan = TRAIN_PLAN) -> str:
    return (
        f"{plan.total} synthetic PA chest radiographs from ai_node.xray_synth (seeds "
        f"{plan.seeds.start}..{plan.seeds.stop - 1}"
        + (
            "; each patient twice, with and without opacities): "
            if plan.paired
            else "), one patient each: "
        )
        + f"{plan.with_opacities} with 1-3 focal opacities (radius 6-24 mm at the detector, "
        f"peak density 0.08-0.30 against a lung about 0.5 below soft tissue), "
        f"{plan.without} without. Matrix 384/512/768/1024 on a 430 mm detector, 10-16 bits "
        "stored, DX or CR, 30 % MONOCHROME1; read as DICOM through "
        "ai_node.xray_preprocess. Labels from the generator's ground truth."
    )


# --------------------------------------------------------------------------- package


def model_card(
    version: str,
    metrics: XrayMetrics | None,
    epochs: int,
    seed: int,
    wall_s: float | None = None,
    train_plan: XrayPlan = TRAIN_PLAN,
    heldout_plan: XrayPlan = HELDOUT_PLAN,
) -> dict[str, Any]:
    """The card (``model.yaml``) of a trained version, without its ``sha256``."""
    # TensorFlow takes seconds to import: only what builds, trains or runs a model pays for it.
    import keras
    import tensorflow as tf

    training: dict[str, Any] = {
        "epochs": epochs,
        "batch_size": 16,
        "optimizer": "Adam, cosine decay from 1e-3",
        "loss": "binary cross-entropy of the image label plus binary cross-entropy of the "
        "32x32 opacity map against the ground truth's opacity coverage",
        "batches": "whole twin pairs (a patient with opacities and without)",
        "seed": seed,
        "command": f"radnode model train --synthetic --kind xray --version {version}",
    }
    if wall_s is not None:
        training["wall_s"] = round(wall_s)
    card: dict[str, Any] = {
        "schema_version": 1,
        "name": MODEL_NAME,
        "version": version,
        "intended_use": "Demonstration and testing of radnode's radiograph pipeline only: "
        "trained and evaluated on synthetic phantoms. NOT FOR CLINICAL USE.",
        "description": "PA chest radiograph classifier: probability that the image shows a "
        "focal opacity in a lung field. Each radiograph is scored on its own.",
        "limitations": "Trained only on synthetic phantoms drawn from analytic shapes "
        "(ai_node.xray_synth): no real anatomy, disease, devices, lateral views, children "
        "or acquisition artefacts. Its outputs on real radiographs are meaningless. The "
        "score is not a calibrated probability of disease.",
        "task": "binary",
        "applicability": {
            "modalities": ["CR", "DX"],
            "sop_classes": [SOP_CLASSES["cr"], SOP_CLASSES["dx"]],
            "body_part": {"any_of": ["CHEST"], "source": "tag"},
            "slices": {"min": 1, "max": 4},
        },
        "input": {
            "kind": "image",
            "size": list(INPUT.size),
            "channels": INPUT.channels,
            "dtype": "float32",
            "normalisation": {
                "scale": INPUT.normalisation.scale,
                "standardise": INPUT.normalisation.standardise,
            },
            "invert_monochrome1": INPUT.invert_monochrome1,
        },
        "outputs": {
            "labels": list(OPACITY_LABELS),
            "positive_label": OPACITY_LABELS[1],
            "threshold": THRESHOLD,
        },
        "sr": {"finding": "DCM.AbnormalOpacity", "finding_site": "SCT.Lung"},
        "localisation": {"method": "max_activation", "layer": LOCALISATION_LAYER, "max_slices": 5},
        "metrics": {}
        if metrics is None
        else {
            "heldout": heldout_description(heldout_plan),
            **metrics.as_card(),
        },
        "training_data": training_description(train_plan),
        "training": training,
        "architecture": ARCHITECTURE,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "framework": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "python": platform.python_version(),
        },
        "trainable": False,
        "timeout_s": 60.0,
        "model_file": "model.keras",
    }
    return card


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dump_yaml(card: dict[str, Any]) -> str:
    import yaml

    return str(yaml.safe_dump(card, sort_keys=False, allow_unicode=True, width=100))


def save_package(
    root: Path, version: str, keras_model: Any, card: dict[str, Any], activate: bool = False
) -> Path:
    """Write ``root/chest-xray-opacity/<version>/`` (model.keras and model.yaml with the
    file's SHA-256); refuses to overwrite a version. The weights go into a fresh,
    uncompiled copy of the network so the file holds no optimizer state. With
    ``activate`` the folder's ``ACTIVE`` names the new version."""
    # TensorFlow takes seconds to import: only what builds, trains or runs a model pays for it.
    import keras

    folder = Path(root) / MODEL_NAME / version
    if folder.exists():
        raise FileExistsError(f"{MODEL_NAME} version {version!r} already exists in {root}")
    tmp = folder.with_name(f".{version}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    clean = build_model()
    clean.set_weights(keras_model.get_weights())
    keras.saving.save_model(clean, tmp / "model.keras")
    card = {**card, "sha256": sha256_of(tmp / "model.keras")}
    (tmp / "model.yaml").write_text(dump_yaml(card))
    os.replace(tmp, folder)
    if activate:
        marker = folder.parent / "ACTIVE"
        staged = marker.with_name(f".ACTIVE.tmp-{os.getpid()}")
        staged.write_text(version + "\n")
        os.replace(staged, marker)
    logger.info("saved %s %s to %s", MODEL_NAME, version, folder)
    return folder


@dataclass
class XrayTrainingRun:
    version: str
    metrics: XrayMetrics | None
    card: dict[str, Any]
    path: Path
    wall_s: float


def train_and_save_xray(
    root: Path,
    version: str,
    *,
    epochs: int = 10,
    seed: int = 1,
    verbose: int = 1,
    activate: bool = False,
    train_plan: XrayPlan = TRAIN_PLAN,
    heldout_plan: XrayPlan | None = HELDOUT_PLAN,
    progress: Callable[[str, int, int], None] | None = None,
) -> XrayTrainingRun:
    """Generate the training radiographs, train, evaluate on the held-out set and save
    the package as ``version`` under ``root``."""

    def stage(name: str) -> Progress | None:
        if progress is None:
            return None
        return lambda done, total: progress(name, done, total)

    if set(train_plan.seeds) & set(heldout_plan.seeds if heldout_plan else ()):
        raise ValueError("training and held-out seeds overlap")
    started = time.monotonic()
    data = model_inputs(plan_specs(train_plan), progress=stage("generate training radiographs"))
    model = fit(data, epochs, seed, paired=train_plan.paired, verbose=verbose)
    del data
    wall_s = time.monotonic() - started
    metrics = None
    if heldout_plan is not None:
        metrics = evaluate(model, heldout_plan, progress=stage("evaluate on held-out radiographs"))
    card = model_card(
        version, metrics, epochs, seed, wall_s, train_plan, heldout_plan or HELDOUT_PLAN
    )
    path = save_package(root, version, model, card, activate=activate)
    return XrayTrainingRun(version, metrics, card, path, wall_s)
