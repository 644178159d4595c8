"""Study-level metrics of a binary model and their patient-level bootstrap intervals.

Point metrics come from scikit-learn (``roc_auc_score``, ``roc_curve``,
``confusion_matrix``, ``brier_score_loss``, ``calibration_curve``); nothing here
re-derives them by hand except what sklearn has no function for:

* PPV and NPV at a stated prevalence ``p`` (Bayes' rule on sensitivity and specificity,
  not the test split's own mix): ``PPV = sens p / (sens p + (1 - spec)(1 - p))``,
  ``NPV = spec (1 - p) / (spec (1 - p) + (1 - sens) p)``;
* the expected calibration error: ``sum_b n_b / N |observed_b - mean score_b|`` over the
  :data:`BINS` equal-width bins of ``calibration_curve(strategy="uniform")``, the bin
  counts taken with the same binning.

Intervals (:func:`bootstrap`): a stratified patient-level bootstrap. The test split's
patients are divided by class (positive when any of their studies is) and sorted by key;
``rng = numpy.random.default_rng(seed)``; each replicate draws, for the negative class and
then the positive class, ``rng.integers(0, n, n)`` patients with replacement (``n`` the
class's patient count) and takes all studies of each drawn patient, in draw order. Every
replicate thus keeps the split's class mix, so AUC, sensitivity and specificity are always
defined. The interval is the 2.5th and 97.5th percentile (numpy's linear interpolation)
of the replicates. Both models are scored on the same replicates, so the AUC difference
candidate - active has a paired interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import sklearn
from sklearn.calibration import calibration_curve
from sklearn.metrics import auc, brier_score_loss, confusion_matrix, roc_auc_score, roc_curve

BINS = 10
"""Equal-width score bins of the calibration error and the reliability diagram."""
CONFIDENCE = 0.95
ROC_GRID = np.linspace(0.0, 1.0, 51)
"""False positive rates at which the bootstrap gives the ROC curve's band."""
METRICS = ("auc", "sensitivity", "specificity", "ppv", "npv", "brier", "ece")


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def confusion(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, int]:
    """True / false positives and negatives with ``score >= threshold`` as positive (the
    worker's rule)."""
    predicted = (scores >= threshold).astype(np.int64)
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    return {"tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn)}


def predictive_values(
    sensitivity: float | None, specificity: float | None, prevalence: float
) -> tuple[float | None, float | None]:
    """(PPV, NPV) at ``prevalence`` (module docstring); None where undefined."""
    if sensitivity is None or specificity is None:
        return None, None
    tp, fp = sensitivity * prevalence, (1 - specificity) * (1 - prevalence)
    tn, fn = specificity * (1 - prevalence), (1 - sensitivity) * prevalence
    ppv = tp / (tp + fp) if tp + fp > 0 else None
    npv = tn / (tn + fn) if tn + fn > 0 else None
    return ppv, npv


def calibration_bins(
    labels: np.ndarray, scores: np.ndarray, bins: int = BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(observed fraction, mean score, studies) of each non-empty bin, as
    ``calibration_curve(strategy="uniform")`` bins them."""
    observed, mean_score = calibration_curve(labels, scores, n_bins=bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], scores), minlength=bins)
    return observed, mean_score, counts[counts > 0]


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = BINS) -> float:
    observed, mean_score, counts = calibration_bins(labels, scores, bins)
    return float(np.sum(counts / counts.sum() * np.abs(observed - mean_score)))


def reliability(labels: np.ndarray, scores: np.ndarray, bins: int = BINS) -> list[dict[str, Any]]:
    """The reliability diagram's points: per non-empty bin, its range, studies, mean score
    and observed fraction of positives."""
    observed, mean_score, counts = calibration_bins(labels, scores, bins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    filled = np.flatnonzero(np.bincount(np.searchsorted(edges[1:-1], scores), minlength=bins) > 0)
    return [
        {
            "range": [float(edges[i]), float(edges[i + 1])],
            "studies": int(n),
            "mean_score": float(m),
            "observed": float(o),
        }
        for i, n, m, o in zip(filled, counts, mean_score, observed, strict=True)
    ]


def point_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float, prevalence: float
) -> dict[str, Any]:
    """AUC; sensitivity, specificity, PPV and NPV (at ``prevalence``) at ``threshold``;
    Brier score; expected calibration error; the confusion matrix."""
    both = labels.size > 0 and 0 < int(labels.sum()) < labels.size
    counts = confusion(labels, scores, threshold)
    sensitivity = _rate(counts["tp"], counts["tp"] + counts["fn"])
    specificity = _rate(counts["tn"], counts["tn"] + counts["fp"])
    ppv, npv = predictive_values(sensitivity, specificity, prevalence)
    return {
        "auc": float(roc_auc_score(labels, scores)) if both else None,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": ppv,
        "npv": npv,
        "brier": float(brier_score_loss(labels, scores)) if labels.size else None,
        "ece": expected_calibration_error(labels, scores) if labels.size else None,
        "threshold": threshold,
        "confusion": counts,
    }


def roc_points(labels: np.ndarray, scores: np.ndarray) -> list[list[float]]:
    """The ROC curve's (false positive rate, true positive rate) points."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return [[float(x), float(y)] for x, y in zip(fpr, tpr, strict=True)]


def tpr_at(fpr: np.ndarray, tpr: np.ndarray, grid: np.ndarray = ROC_GRID) -> np.ndarray:
    """The best true positive rate at a false positive rate no higher than each grid value
    (the ROC step function of ``roc_curve``'s points, read vertically)."""
    return np.asarray(tpr[np.searchsorted(fpr, grid, side="right") - 1])


def _replicate(
    labels: np.ndarray, scores: np.ndarray, threshold: float, prevalence: float
) -> tuple[dict[str, float | None], np.ndarray]:
    """One bootstrap replicate's metrics and ROC band values. The same sklearn functions as
    :func:`point_metrics`, but the AUC is ``auc`` of the one ``roc_curve`` the band needs
    (``roc_auc_score`` computes exactly that, at twice the cost)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    counts = confusion(labels, scores, threshold)
    sensitivity = _rate(counts["tp"], counts["tp"] + counts["fn"])
    specificity = _rate(counts["tn"], counts["tn"] + counts["fp"])
    ppv, npv = predictive_values(sensitivity, specificity, prevalence)
    values = {
        "auc": float(auc(fpr, tpr)),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": ppv,
        "npv": npv,
        "brier": float(brier_score_loss(labels, scores)),
        "ece": expected_calibration_error(labels, scores),
    }
    return values, tpr_at(fpr, tpr)


def choose_threshold(labels: np.ndarray, scores: np.ndarray, target: float) -> float | None:
    """The operating threshold for a target sensitivity: the lowest lesion score that the
    target needs above the threshold (from ``roc_curve``: the highest threshold whose
    sensitivity reaches ``target``), lowered halfway to the next lower score of any study.
    The sensitivity and specificity on these studies are those of the highest such
    threshold; the half gap is margin for studies that score a little lower than these.
    None without a lesion study."""
    positives = int(labels.sum())
    if positives == 0:
        return None
    if positives == labels.size:  # no negative: roc_curve would warn
        ranked = np.sort(scores)[::-1]
        reached = np.arange(1, labels.size + 1) / labels.size >= target
        highest = float(ranked[int(np.argmax(reached))])
    else:
        _, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
        highest = float(thresholds[int(np.argmax(tpr >= target))])
    below = scores[scores < highest]
    return highest if below.size == 0 else (highest + float(below.max())) / 2


def patient_strata(patients: Sequence[str], labels: np.ndarray) -> list[list[np.ndarray]]:
    """Per class (negative, positive): the class's patients sorted by key, each as the
    indices of its studies."""
    studies: dict[str, list[int]] = {}
    for i, key in enumerate(patients):
        studies.setdefault(key, []).append(i)
    strata: list[list[np.ndarray]] = [[], []]
    for key in sorted(studies):
        positive = int(labels[studies[key]].max())
        strata[positive].append(np.asarray(studies[key], dtype=np.int64))
    return strata


def bootstrap_indices(
    strata: Sequence[Sequence[np.ndarray]], samples: int, seed: int
) -> Iterator[np.ndarray]:
    """The study indices of each replicate (module docstring)."""
    rng = np.random.default_rng(seed)
    for _ in range(samples):
        parts: list[np.ndarray] = []
        for members in strata:
            if members:
                parts.extend(members[i] for i in rng.integers(0, len(members), len(members)))
        yield np.concatenate(parts)


def interval(values: Sequence[float | None], confidence: float = CONFIDENCE) -> list[float] | None:
    """The percentile interval of the defined values; None when none is."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)])
    if finite.size == 0:
        return None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return [float(low), float(high)]


def bootstrap(
    labels: np.ndarray,
    scores: Mapping[str, np.ndarray],
    thresholds: Mapping[str, float],
    patients: Sequence[str],
    prevalence: float,
    samples: int,
    seed: int,
    difference: tuple[str, str] = ("candidate", "active"),
) -> dict[str, Any]:
    """Intervals of every metric of each model, the ROC bands and the paired interval of
    the AUC difference ``difference[0] - difference[1]`` (module docstring). Needs both
    classes among ``labels``."""
    strata = patient_strata(patients, labels)
    if not (strata[0] and strata[1]):
        raise ValueError("the bootstrap needs patients of both classes")
    values: dict[str, dict[str, list[float | None]]] = {
        name: {m: [] for m in METRICS} for name in scores
    }
    bands: dict[str, list[np.ndarray]] = {name: [] for name in scores}
    # the inputs were checked once, by the caller's point estimates: thousands of replicates
    # need not re-validate them (sklearn's validation costs more than the metrics here)
    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
        for idx in bootstrap_indices(strata, samples, seed):
            y = labels[idx]
            for name, s in scores.items():
                m, band = _replicate(y, s[idx], thresholds[name], prevalence)
                for key in METRICS:
                    values[name][key].append(m[key])
                bands[name].append(band)
    first, second = difference
    deltas = [
        None if a is None or b is None else a - b
        for a, b in zip(values[first]["auc"], values[second]["auc"], strict=True)
    ]
    tail = (1 - CONFIDENCE) / 2 * 100
    models = {}
    for name in scores:
        band = np.asarray(bands[name])
        models[name] = {
            "ci": {key: interval(values[name][key]) for key in METRICS},
            "roc_band": {
                "fpr": [float(x) for x in ROC_GRID],
                "lower": [float(x) for x in np.percentile(band, tail, axis=0)],
                "upper": [float(x) for x in np.percentile(band, 100 - tail, axis=0)],
            },
        }
    return {
        "samples": samples,
        "seed": seed,
        "confidence": CONFIDENCE,
        "method": "stratified patient-level bootstrap, percentile intervals",
        "patients": [len(strata[0]), len(strata[1])],
        "models": models,
        "auc_difference": {"ci": interval(deltas), "replicates": len(deltas)},
    }
