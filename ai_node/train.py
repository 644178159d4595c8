"""Training and held-out evaluation of the region and finding models.

Synthetic data (the default, and how the shipped models were made): studies from
:mod:`ai_node.synth` at a mix of matrix sizes (128, 256, 512), decoded and
preprocessed by the same functions the worker uses. Training and held-out studies
come from disjoint seed ranges, so the held-out metrics are measured on patients
the models never saw. Slice labels come from the generator's ground truth: a chest
slice is positive when it cuts a lesion with a cross-section radius of at least
:data:`MIN_LESION_RADIUS_MM`; slices that only graze a lesion are left out of the
finding loss.

Real data: a folder of DICOM files with a CSV of labels (``file,label``), or the
seed application's Kaggle layout (``dicom_dir/ID_0000_AGE_0060_CONTRAST_1_CT.dcm``
with ``overview.csv``); it trains the finding model only.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import math
import platform
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from ai_node.analysis import classify_region, score_finding
from ai_node.card import ModelCard
from ai_node.labels import REGION_LABELS
from ai_node.models import LOCALISATION_LAYER, LoadedModel, build_model, wrap_keras
from ai_node.preprocess import (
    INPUT_SIZE,
    LUNG_WINDOW,
    WIDE_WINDOW,
    SliceStack,
    frames_of_dataset,
    load_datasets,
    model_input,
    stack_frames,
)
from ai_node.synth import StudySpec, SyntheticStudy, generate_study

logger = logging.getLogger(__name__)

MIN_LESION_RADIUS_MM = 2.5
"""Smallest lesion cross-section (radius) that makes a slice positive."""

TRAIN_SEED_BASE = 100_000
HELDOUT_SEED_BASE = 900_000
"""Seed ranges of the training and held-out synthetic studies (disjoint)."""

_SIZES = (128, 256, 512)
_FOV_MM = 512 * 0.7

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SyntheticPlan:
    """How many synthetic studies of each kind, and how long."""

    chest_with_lesions: int
    chest_without: int
    head: int
    abdomen: int
    min_slices: int
    max_slices: int

    @property
    def total(self) -> int:
        return self.chest_with_lesions + self.chest_without + self.head + self.abdomen


TRAIN_PLAN = SyntheticPlan(70, 40, 30, 30, 24, 40)
HELDOUT_PLAN = SyntheticPlan(24, 24, 12, 12, 40, 64)


def synthetic_specs(plan: SyntheticPlan, seed_base: int) -> list[StudySpec]:
    """A deterministic list of study specs for ``plan`` (sizes and lengths vary by seed)."""
    specs: list[StudySpec] = []
    kinds = (
        [("chest", True)] * plan.chest_with_lesions
        + [("chest", False)] * plan.chest_without
        + [("head", False)] * plan.head
        + [("abdomen", False)] * plan.abdomen
    )
    for i, (region, lesions) in enumerate(kinds):
        seed = seed_base + i
        rng = np.random.default_rng([seed, 5])
        size = int(_SIZES[int(rng.integers(0, len(_SIZES)))])
        spacing = round(_FOV_MM / size * float(rng.uniform(0.9, 1.1)), 3)
        specs.append(
            StudySpec(
                region=region,
                slices=int(rng.integers(plan.min_slices, plan.max_slices + 1)),
                nodules=int(rng.integers(1, 4)) if lesions else 0,
                seed=seed,
                rows=size,
                columns=size,
                pixel_spacing_mm=spacing,
            )
        )
    return specs


def slice_labels(study: SyntheticStudy, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, weights) per slice: 1 where a lesion's cross-section radius is at least
    :data:`MIN_LESION_RADIUS_MM`; weight 0 for slices that cut a lesion less than that."""
    labels = np.zeros(positions.shape[0], dtype=np.float32)
    weights = np.ones(positions.shape[0], dtype=np.float32)
    for lesion in study.lesions:
        dz = positions - lesion.center_mm[2]
        rho = np.sqrt(np.clip(lesion.radius_mm**2 - dz**2, 0.0, None))
        labels[rho >= MIN_LESION_RADIUS_MM] = 1.0
        weights[(rho > 0.0) & (rho < MIN_LESION_RADIUS_MM)] = 0.0
    weights[labels == 1.0] = 1.0
    return labels, weights


@dataclass
class SyntheticCase:
    spec: StudySpec
    study: SyntheticStudy
    stack: SliceStack


def synthetic_cases(
    specs: Sequence[StudySpec], progress: Progress | None = None
) -> Iterator[SyntheticCase]:
    """Generate and preprocess each study (same preprocessing as the worker)."""
    for i, spec in enumerate(specs):
        study, datasets = generate_study(spec)
        yield SyntheticCase(spec, study, load_datasets(datasets))
        if progress is not None:
            progress(i + 1, len(specs))


@dataclass
class TrainingData:
    region_x: np.ndarray
    region_y: np.ndarray
    finding_x: np.ndarray
    finding_y: np.ndarray
    finding_w: np.ndarray
    description: str


def synthetic_training_data(
    plan: SyntheticPlan = TRAIN_PLAN, progress: Progress | None = None
) -> TrainingData:
    rx, ry, fx, fy, fw = [], [], [], [], []
    for case in synthetic_cases(synthetic_specs(plan, TRAIN_SEED_BASE), progress):
        rx.append(model_input(case.stack.hu, WIDE_WINDOW))
        ry.append(np.full(len(case.stack), REGION_LABELS.index(case.spec.region), dtype=np.int32))
        if case.spec.region == "chest":
            labels, weights = slice_labels(case.study, case.stack.positions)
            fx.append(model_input(case.stack.hu, LUNG_WINDOW))
            fy.append(labels)
            fw.append(weights)
    return TrainingData(
        np.concatenate(rx),
        np.concatenate(ry),
        np.concatenate(fx),
        np.concatenate(fy),
        np.concatenate(fw),
        description=(
            f"{plan.total} synthetic CT studies from ai_node.synth (seeds {TRAIN_SEED_BASE}.."
            f"{TRAIN_SEED_BASE + plan.total - 1}): {plan.chest_with_lesions} chest with 1-3 "
            f"spherical lesions (radius 3-15 mm), {plan.chest_without} chest without, "
            f"{plan.head} head, {plan.abdomen} abdomen; {plan.min_slices}-{plan.max_slices} "
            f"axial slices each, matrix 128/256/512 with the field of view kept about "
            f"{_FOV_MM:.0f} mm. Slice labels from the generator's ground truth (positive: "
            f"lesion cross-section radius >= {MIN_LESION_RADIUS_MM} mm)."
        ),
    )


_KAGGLE_NAME = re.compile(r"CONTRAST_(\d)", re.IGNORECASE)


def labelled_dicom_data(
    dicom_dir: Path, labels_csv: Path | None, label_column: str = "label"
) -> TrainingData:
    """Finding-model training data from a folder of DICOM and a CSV of labels.

    The CSV names each file in a ``file`` (or Kaggle ``dicom_name``) column and gives
    a 0/1 ``label_column``. Without a CSV, Kaggle-style names
    (``ID_0000_AGE_0060_CONTRAST_1_CT.dcm``) carry the label.
    """

    labels: dict[str, int] = {}
    if labels_csv is not None:
        with labels_csv.open(newline="") as f:
            for row in csv.DictReader(f):
                name = row.get("file") or row.get("dicom_name")
                if not name or label_column not in row:
                    raise ValueError(
                        f"{labels_csv}: each row needs file (or dicom_name) and {label_column}"
                    )
                labels[Path(name).name] = int(float(row[label_column]))
    xs, ys = [], []
    for path in sorted(dicom_dir.rglob("*.dcm")):
        label = labels.get(path.name)
        if label is None:
            match = _KAGGLE_NAME.search(path.name)
            if match is None:
                continue
            label = int(match.group(1))
        stack = stack_frames(frames_of_dataset(pydicom.dcmread(path)))
        xs.append(model_input(stack.hu, LUNG_WINDOW))
        ys.append(np.full(len(stack), float(label > 0), dtype=np.float32))
    if not xs:
        raise ValueError(f"no labelled DICOM files under {dicom_dir}")
    fx = np.concatenate(xs)
    empty = np.zeros((0, INPUT_SIZE, INPUT_SIZE, 1), dtype=np.float32)
    return TrainingData(
        empty,
        np.zeros(0, dtype=np.int32),
        fx,
        np.concatenate(ys),
        np.ones(len(fx), np.float32),
        description=f"{len(xs)} labelled DICOM files from {dicom_dir}",
    )


def fit(
    task: str,
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray | None,
    epochs: int,
    seed: int,
    verbose: int = 1,
    model: Any | None = None,
    balance_by: np.ndarray | None = None,
) -> Any:
    """Train a fresh model, or go on training ``model`` (fine-tuning: the retraining
    pipeline hands in the active version); keras prints its progress per epoch when
    ``verbose``. The classes of the binary labels ``balance_by`` (the finding model's:
    ``y``) are balanced by weight: positives are few."""
    # TensorFlow takes seconds to import: only what builds, trains or runs a model pays for it.
    import keras

    keras.utils.set_random_seed(seed)
    if model is None:
        model = build_model(task)
    weights = np.ones(len(y), np.float32) if w is None else w.astype(np.float32, copy=True)
    if balance_by is None and task == "finding":
        balance_by = y
    if balance_by is not None:
        pos = float((balance_by * weights).sum())
        neg = float(((1 - balance_by) * weights).sum())
        if pos > 0:
            weights[balance_by == 1] *= min(neg / pos, 20.0)
    model.fit(
        x, y, sample_weight=weights, epochs=epochs, batch_size=64, shuffle=True, verbose=verbose
    )
    return model


def template_card(task: str) -> ModelCard:
    """The shipped card of ``task``'s model: what a newly trained version keeps (input,
    applicability, aggregation, outputs, SR coding); its provenance and metrics change."""
    from ai_node.registry import ModelRegistry

    shipped = ModelRegistry()
    return shipped.model_card(task, shipped.active_version(task))


def in_memory(task: str, version: str, keras_model: Any) -> LoadedModel:
    """A trained model wrapped like a registry model (for evaluation before saving)."""
    return wrap_keras(task, version, template_card(task), keras_model)


class DictModels:
    def __init__(self, models: dict[str, LoadedModel]) -> None:
        self.models = models

    def get(self, task: str) -> LoadedModel:
        return self.models[task]


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties count one half)."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[y == 1], s[y == 0]
    if pos.size == 0 or neg.size == 0:
        return math.nan
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


@dataclass
class HeldoutMetrics:
    region_accuracy: float
    region_studies: int
    finding_auc: float
    finding_sensitivity: float
    finding_specificity: float
    finding_studies: int
    threshold: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def evaluate(
    models: DictModels | Any,
    plan: SyntheticPlan = HELDOUT_PLAN,
    threshold: float = 0.5,
    progress: Progress | None = None,
) -> HeldoutMetrics:
    """Study-level metrics on the held-out synthetic set: region accuracy over every
    study, finding AUC / sensitivity / specificity over the chest studies."""
    correct = total = 0
    truth: list[int] = []
    scores: list[float] = []
    for case in synthetic_cases(synthetic_specs(plan, HELDOUT_SEED_BASE), progress):
        region, _ = classify_region(case.stack, models)
        correct += int(region == case.spec.region)
        total += 1
        if case.spec.region == "chest":
            score, _, _ = score_finding(case.stack, models)
            truth.append(int(bool(case.study.lesions)))
            scores.append(score)
    t = np.asarray(truth)
    p = np.asarray(scores) >= threshold
    return HeldoutMetrics(
        region_accuracy=correct / total,
        region_studies=total,
        finding_auc=roc_auc(truth, scores),
        finding_sensitivity=float((p & (t == 1)).sum() / max((t == 1).sum(), 1)),
        finding_specificity=float((~p & (t == 0)).sum() / max((t == 0).sum(), 1)),
        finding_studies=len(truth),
        threshold=threshold,
    )


HELDOUT_DESCRIPTION = (
    f"{HELDOUT_PLAN.total} synthetic studies, seeds {HELDOUT_SEED_BASE}.."
    f"{HELDOUT_SEED_BASE + HELDOUT_PLAN.total - 1} (never used in training): "
    f"{HELDOUT_PLAN.chest_with_lesions} chest with lesions, {HELDOUT_PLAN.chest_without} chest "
    f"without, {HELDOUT_PLAN.head} head, {HELDOUT_PLAN.abdomen} abdomen, "
    f"{HELDOUT_PLAN.min_slices}-{HELDOUT_PLAN.max_slices} slices each; study-level metrics"
)


def model_card(
    task: str,
    version: str,
    training: str,
    metrics: HeldoutMetrics | None,
    epochs: int,
    synthetic: bool,
) -> dict[str, Any]:
    """The card (model.yaml data) of a newly trained version of a shipped model: the shipped
    card with this version's provenance, training and held-out metrics (its sha256 is
    computed when the registry saves the model)."""
    # TensorFlow takes seconds to import: only what builds, trains or runs a model pays for it.
    import keras
    import tensorflow as tf

    card = template_card(task).model_dump(mode="json", exclude_none=True, exclude_unset=True)
    for key in ("metrics", "promotion", "sha256"):
        card.pop(key, None)
    card.update(
        {
            "version": version,
            "training_data": training,
            "training": {"epochs": epochs, "batch_size": 64, "optimizer": "Adam 2e-3"},
            "intended_use": "Demonstration and testing of the radnode pipeline only. "
            "NOT FOR CLINICAL USE."
            if synthetic
            else "Research use; not a medical device.",
            "limitations": (
                "Trained only on synthetic phantoms drawn from ellipses (ai_node.synth). It "
                "has never seen a real CT and its outputs on real patients are meaningless."
                if synthetic
                else "Trained on a user-supplied dataset; validate before any use."
            ),
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
            "framework": {
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "python": platform.python_version(),
            },
        }
    )
    if task == "finding":
        card["localisation"] = {
            "method": "max_activation",
            "layer": LOCALISATION_LAYER,
            "max_slices": card.get("localisation", {}).get("max_slices", 5),
        }
    if metrics is not None:
        m = metrics.as_dict()
        if task == "region":
            card["metrics"] = {
                "heldout": HELDOUT_DESCRIPTION,
                "accuracy": m["region_accuracy"],
                "studies": m["region_studies"],
            }
        else:
            card["metrics"] = {
                "heldout": HELDOUT_DESCRIPTION,
                "auc": m["finding_auc"],
                "sensitivity": m["finding_sensitivity"],
                "specificity": m["finding_specificity"],
                "threshold": m["threshold"],
                "studies": m["finding_studies"],
            }
    return card


def default_version() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")


@dataclass
class TrainingRun:
    version: str
    metrics: HeldoutMetrics | None
    cards: dict[str, dict[str, Any]]
    paths: dict[str, Path]


def train_and_save(
    registry: Any,
    version: str,
    *,
    synthetic: bool = True,
    dicom_dir: Path | None = None,
    labels_csv: Path | None = None,
    label_column: str = "label",
    region_epochs: int = 4,
    finding_epochs: int = 15,
    seed: int = 1,
    verbose: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
    evaluate_heldout: bool = True,
) -> TrainingRun:
    """Train both models (or the finding model on real data), evaluate them on the
    held-out synthetic set, and save them with their cards as ``version``."""

    def stage(name: str) -> Progress | None:
        if progress is None:
            return None
        return lambda done, total: progress(name, done, total)

    models: dict[str, Any] = {}
    if synthetic:
        data = synthetic_training_data(progress=stage("generate + preprocess training studies"))
        models["region"] = fit(
            "region", data.region_x, data.region_y, None, region_epochs, seed, verbose
        )
    else:
        if dicom_dir is None:
            raise ValueError("dicom_dir is required without --synthetic")
        data = labelled_dicom_data(dicom_dir, labels_csv, label_column)
    models["finding"] = fit(
        "finding", data.finding_x, data.finding_y, data.finding_w, finding_epochs, seed, verbose
    )
    metrics = None
    if evaluate_heldout and "region" in models:
        loaded = DictModels({task: in_memory(task, version, m) for task, m in models.items()})
        metrics = evaluate(loaded, progress=stage("evaluate on held-out studies"))
    cards, paths = {}, {}
    epochs = {"region": region_epochs, "finding": finding_epochs}
    for task, keras_model in models.items():
        cards[task] = model_card(task, version, data.description, metrics, epochs[task], synthetic)
        paths[task] = registry.save(task, version, keras_model, cards[task])
    return TrainingRun(version, metrics, cards, paths)
