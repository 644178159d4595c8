"""Pipeline step 4, evaluate: the candidate and the active model on the same test split,
each at its own operating threshold.

Study-level, as the node reports: a study's score is the retrained model's card's
aggregation (:func:`ai_node.analysis.aggregate`: for the finding model the maximum of the
smoothed slice probabilities, for a radiograph model its highest image) of the positive
label's probability, on the card's input (:func:`ai_node.preprocess.card_input`); the
truth is the radiologist's final label of that model's result. The operating thresholds:

* the active model's is the one the worker uses: its card's ``operating_point.threshold``,
  else the node's ``finding_threshold`` (the ``default_threshold`` passed in);
* the candidate's is chosen on the validation split to reach the target sensitivity of the
  active model's card (``operating_point.target_sensitivity``, default 0.9):
  :func:`ai_node.retrain.metrics.choose_threshold`. A validation split without a lesion
  study leaves the train split to choose on (optimistic: the report says so).

Per model (:mod:`.metrics`): AUC, sensitivity and specificity at the threshold, PPV and
NPV at the site's stated prevalence, Brier score, expected calibration error, the ROC curve
and the reliability bins; 95% intervals from a seeded, stratified patient-level bootstrap,
and the paired interval of the AUC difference candidate - active. Output: the report as
JSON (every number, and each test study's two scores so anyone can recompute them); the
promote step renders it as HTML with its decision (:mod:`.report`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ai_node.analysis import aggregate, scored_indices
from ai_node.models import LoadedModel, load_model
from ai_node.preprocess import card_input
from ai_node.registry import ModelRegistry
from ai_node.retrain.finetune import MODEL_FILE
from ai_node.retrain.metrics import (
    bootstrap,
    choose_threshold,
    point_metrics,
    reliability,
    roc_points,
)
from ai_node.retrain.prepare import prepared_model, split_inputs

logger = logging.getLogger(__name__)

CANDIDATE = "candidate"
ACTIVE = "active"


def study_score(
    hu: np.ndarray, model: LoadedModel, monochrome1: np.ndarray | None = None
) -> float:
    """A study's score as the worker computes it: the model's card's sample of slices
    (all of them unless it samples), its input, the positive label's probability, its
    aggregation."""
    card = model.card
    idx = scored_indices(card, hu.shape[0])
    m1 = monochrome1[idx] if monochrome1 is not None else None
    x = card_input(hu[idx], card.input, m1)
    score, _, _ = aggregate(card, np.asarray(model.positive(model.predict_batched(x))))
    return float(score)


def _scored(
    prepared: Path, split: str, model: LoadedModel
) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    studies = split_inputs(prepared, split)
    labels = np.asarray([int(p.study["label"]) for p in studies], dtype=np.int64)
    scores = np.asarray(
        [study_score(p.hu, model, p.monochrome1) for p in studies], dtype=np.float64
    )
    return [p.study for p in studies], labels, scores


def candidate_threshold(
    prepared: Path, candidate: LoadedModel, target: float, fallback: float
) -> dict[str, Any]:
    """The candidate's operating point, chosen on the validation split (module docstring)."""
    for split in ("val", "train"):
        _, labels, scores = _scored(prepared, split, candidate)
        threshold = choose_threshold(labels, scores, target)
        if threshold is not None:
            predicted = scores >= threshold
            return {
                "threshold": threshold,
                "target_sensitivity": target,
                "chosen_on": split,
                "studies": int(labels.size),
                "positives": int(labels.sum()),
                "sensitivity": float(predicted[labels == 1].mean()),
            }
        logger.warning("no lesion study to choose the threshold on", extra={"split": split})
    return {"threshold": fallback, "target_sensitivity": target, "chosen_on": "settings"}


def evaluate_candidate(
    prepared: Path,
    candidate_dir: Path,
    models_dir: Path,
    default_threshold: float,
    prevalence: float = 0.1,
    samples: int = 1000,
    seed: int = 1,
) -> dict[str, Any]:
    """The report (module docstring) of the candidate against the active version of the
    model the prepared data set is for."""
    name, _ = prepared_model(prepared)
    registry = ModelRegistry(models_dir)
    active = registry.load(name, registry.active_version(name))
    candidate = load_model(name, CANDIDATE, candidate_dir / MODEL_FILE, active.card)
    card_threshold = active.operating_threshold
    operating = {
        ACTIVE: {
            "threshold": card_threshold if card_threshold is not None else default_threshold,
            "chosen_on": "model card" if card_threshold is not None else "settings",
        },
        CANDIDATE: candidate_threshold(
            prepared, candidate, active.target_sensitivity, default_threshold
        ),
    }
    studies, labels, candidate_scores = _scored(prepared, "test", candidate)
    if not 0 < int(labels.sum()) < labels.size:
        raise ValueError(
            f"the test split holds {labels.size} studies of one class: nothing to compare on"
        )
    _, _, active_scores = _scored(prepared, "test", active)
    scores = {CANDIDATE: candidate_scores, ACTIVE: active_scores}
    thresholds = {name: float(operating[name]["threshold"]) for name in scores}
    patients = [str(s["patient"]) for s in studies]
    intervals = bootstrap(labels, scores, thresholds, patients, prevalence, samples, seed)
    report: dict[str, Any] = {
        "model": name,
        "split": "test",
        "studies": len(studies),
        "positives": int(labels.sum()),
        "negatives": int(labels.size - labels.sum()),
        "patients": len(set(patients)),
        "prevalence": prevalence,
        "active_version": active.version,
        "operating_points": operating,
    }
    for name, s in scores.items():
        report[name] = {
            **point_metrics(labels, s, thresholds[name], prevalence),
            "ci": intervals["models"][name]["ci"],
            "roc": roc_points(labels, s),
            "roc_band": intervals["models"][name]["roc_band"],
            "reliability": reliability(labels, s),
        }
    c_auc, a_auc = report[CANDIDATE]["auc"], report[ACTIVE]["auc"]
    report["auc_difference"] = {
        "estimate": c_auc - a_auc,
        "ci": intervals["auc_difference"]["ci"],
        "replicates": intervals["auc_difference"]["replicates"],
    }
    report["bootstrap"] = {
        k: v for k, v in intervals.items() if k not in ("models", "auc_difference")
    }
    report["scores"] = [
        {
            "study": s["dir"],
            "patient": s["patient"],
            "label": int(y),
            CANDIDATE: float(c),
            ACTIVE: float(a),
        }
        for s, y, c, a in zip(studies, labels, candidate_scores, active_scores, strict=True)
    ]
    logger.info(
        "evaluation done",
        extra={"studies": len(studies), "candidate_auc": c_auc, "active_auc": a_auc},
    )
    return report


def write_report(report: dict[str, Any], json_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
