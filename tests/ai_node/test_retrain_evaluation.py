"""The evaluation's numbers and the promotion rule at the operating point: point metrics
from scikit-learn, intervals that an independent bootstrap written here reproduces with
the same seed, the operating threshold chosen for a target sensitivity, and a candidate
that trades specificity for sensitivity refused with its reason recorded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score

from ai_node.registry import SHIPPED_MODELS, ModelRegistry
from ai_node.retrain.metrics import bootstrap, choose_threshold, point_metrics
from ai_node.retrain.promote import PromotionRule, promote_candidate
from ai_node.retrain.report import render_report

SEED, SAMPLES, PREVALENCE = 7, 300, 0.08


def _data() -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    """30 studies of 24 patients (6 with two studies), 12 with a lesion; two models."""
    rng = np.random.default_rng(3)
    labels = np.array([1] * 12 + [0] * 18)
    patients = [f"P{i:02d}" for i in range(24)] + [f"P{i:02d}" for i in (0, 1, 2, 12, 13, 14)]
    labels[24:27] = 1  # the second studies of P00..P02 (positive patients)
    labels[27:] = 0
    scores = {
        "candidate": np.clip(rng.normal(0.35 + 0.35 * labels, 0.18), 0.001, 0.999),
        "active": np.clip(rng.normal(0.40 + 0.25 * labels, 0.2), 0.001, 0.999),
    }
    return labels, scores, patients


def _independent_bootstrap(labels, scores, thresholds, patients):
    """The documented resampling, written again with sklearn's metric functions."""
    by_patient: dict[str, list[int]] = {}
    for i, p in enumerate(patients):
        by_patient.setdefault(p, []).append(i)
    keys = sorted(by_patient)
    strata = [[by_patient[k] for k in keys if max(labels[by_patient[k]]) == c] for c in (0, 1)]
    rng = np.random.default_rng(SEED)
    out: dict[str, dict[str, list[float]]] = {
        name: {m: [] for m in ("auc", "sensitivity", "specificity", "ppv", "brier", "ece")}
        for name in scores
    }
    deltas = []
    for _ in range(SAMPLES):
        idx = []
        for members in strata:
            for j in rng.integers(0, len(members), len(members)):
                idx.extend(members[j])
        y = labels[idx]
        aucs = {}
        for name, s in scores.items():
            tn, fp, fn, tp = confusion_matrix(
                y, (s[idx] >= thresholds[name]).astype(int), labels=[0, 1]
            ).ravel()
            sens, spec = tp / (tp + fn), tn / (tn + fp)
            ppv = sens * PREVALENCE / (sens * PREVALENCE + (1 - spec) * (1 - PREVALENCE))
            observed, predicted = calibration_curve(y, s[idx], n_bins=10)
            counts = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], s[idx]))
            counts = counts[counts > 0]
            aucs[name] = roc_auc_score(y, s[idx])
            for key, value in (
                ("auc", aucs[name]),
                ("sensitivity", sens),
                ("specificity", spec),
                ("ppv", ppv),
                ("brier", brier_score_loss(y, s[idx])),
                ("ece", np.sum(counts / counts.sum() * np.abs(observed - predicted))),
            ):
                out[name][key].append(value)
        deltas.append(aucs["candidate"] - aucs["active"])
    ci = {name: {k: np.percentile(v, [2.5, 97.5]) for k, v in m.items()} for name, m in out.items()}
    return ci, np.percentile(deltas, [2.5, 97.5])


def test_intervals_match_an_independent_bootstrap_with_the_same_seed() -> None:
    labels, scores, patients = _data()
    thresholds = {"candidate": 0.5, "active": 0.55}
    mine = bootstrap(labels, scores, thresholds, patients, PREVALENCE, SAMPLES, SEED)
    theirs, delta = _independent_bootstrap(labels, scores, thresholds, patients)
    for name in scores:
        for key, (low, high) in theirs[name].items():
            assert mine["models"][name]["ci"][key] == pytest.approx([low, high], abs=1e-9), (
                name,
                key,
            )
    assert mine["auc_difference"]["ci"] == pytest.approx(list(delta), abs=1e-9)
    assert mine["patients"] == [12, 12] and mine["samples"] == SAMPLES
    band = mine["models"]["candidate"]["roc_band"]
    assert all(lo <= hi for lo, hi in zip(band["lower"], band["upper"], strict=True))
    # another seed, other intervals
    other = bootstrap(labels, scores, thresholds, patients, PREVALENCE, SAMPLES, SEED + 1)
    assert other["auc_difference"]["ci"] != mine["auc_difference"]["ci"]


def test_point_metrics_are_sklearns() -> None:
    labels, scores, _ = _data()
    s = scores["candidate"]
    m = point_metrics(labels, s, 0.5, PREVALENCE)
    tn, fp, fn, tp = confusion_matrix(labels, (s >= 0.5).astype(int)).ravel()
    assert m["auc"] == roc_auc_score(labels, s)
    assert m["brier"] == brier_score_loss(labels, s)
    assert m["confusion"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    assert (m["sensitivity"], m["specificity"]) == (tp / (tp + fn), tn / (tn + fp))
    sens, spec = m["sensitivity"], m["specificity"]
    npv = spec * (1 - PREVALENCE) / (spec * (1 - PREVALENCE) + (1 - sens) * PREVALENCE)
    assert m["npv"] == pytest.approx(npv)


def test_threshold_meets_the_target_sensitivity_with_a_margin_below() -> None:
    labels = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.75, 0.7, 0.6, 0.5, 0.45, 0.4, 0.3, 0.1, 0.2, 0.35, 0.05])
    t = choose_threshold(labels, scores, 0.9)
    # 9 of 10 lesion studies need 0.3 included; the next lower score is 0.2
    assert t == pytest.approx(0.25)
    assert (scores[labels == 1] >= t).mean() == 0.9 and (scores[labels == 0] < t).mean() == 2 / 3
    assert choose_threshold(labels, scores, 1.0) == pytest.approx(0.075)
    assert choose_threshold(labels, scores, 0.5) == pytest.approx(0.55)
    assert choose_threshold(np.zeros(3, int), np.array([0.1, 0.2, 0.3]), 0.9) is None
    assert choose_threshold(np.ones(2, int), np.array([1.0, 0.6]), 0.5) == pytest.approx(0.8)


def _report(active_version: str, candidate: dict, active: dict, auc_ci: list[float]) -> dict:
    def model(m: dict) -> dict:
        return {
            **m,
            "ppv": None,
            "npv": None,
            "ece": 0.05,
            "ci": {},
            "confusion": {"tp": 5, "fp": 2, "tn": 4, "fn": 1},
        }

    return {
        "candidate": model(candidate),
        "active": model(active),
        "auc_difference": {"estimate": candidate["auc"] - active["auc"], "ci": auc_ci},
        "operating_points": {
            "candidate": {
                "threshold": candidate["threshold"],
                "target_sensitivity": 0.9,
                "chosen_on": "val",
                "studies": 6,
                "positives": 3,
                "sensitivity": 1.0,
            },
            "active": {"threshold": active["threshold"], "chosen_on": "settings"},
        },
        "active_version": active_version,
        "studies": 12,
        "positives": 6,
        "negatives": 6,
        "patients": 12,
        "prevalence": 0.1,
    }


def test_a_candidate_that_trades_specificity_for_sensitivity_is_refused(tmp_path: Path) -> None:
    """The case the old rule (AUC and sensitivity point estimates) promoted: sensitivity up,
    specificity 0.833 -> 0.667, Brier 0.172 -> 0.233."""
    root = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS, root, ignore=shutil.ignore_patterns("__pycache__"))
    candidate = tmp_path / "candidate"
    candidate.mkdir()
    shutil.copyfile(root / "finding" / "1.0.0" / "model.keras", candidate / "model.keras")
    (candidate / "training.json").write_text(json.dumps({"train_studies": 20}))
    report = _report(
        "1.0.0",
        {
            "auc": 0.861,
            "sensitivity": 0.917,
            "specificity": 0.667,
            "brier": 0.233,
            "threshold": 0.41,
        },
        {
            "auc": 0.847,
            "sensitivity": 0.833,
            "specificity": 0.833,
            "brier": 0.172,
            "threshold": 0.5,
        },
        [-0.06, 0.09],
    )
    rule = PromotionRule(
        sensitivity_margin=0.0, specificity_margin=0.05, brier_margin=0.01, auc_margin=0.1
    )
    decision = promote_candidate(root, candidate, report, rule, "cand-spec", "run-1")
    assert decision["decision"] == "refused"
    assert (
        "specificity 0.667 at threshold 0.41 is below the active model's 0.833"
        in (decision["reason"])
    )
    assert (
        "Brier score 0.233 is above the active model's 0.172 plus the margin 0.01"
        in (decision["reason"])
    )
    assert "sensitivity" not in decision["reason"].split(";")[0].split("specificity")[0]
    checks = {c["name"]: c["passed"] for c in decision["checks"]}
    assert checks == {
        "sensitivity": True,
        "specificity": False,
        "brier": False,
        "auc_difference": True,
    }
    registry = ModelRegistry(root)
    assert registry.active_version("finding") == "1.0.0"
    card = registry.card("finding", "cand-spec")
    assert card["promotion"]["reason"] == decision["reason"]
    assert card["promotion"]["rule"] == {
        "name": "operating-point non-inferiority",
        "confidence": 0.95,
        "sensitivity_margin": 0.0,
        "specificity_margin": 0.05,
        "brier_margin": 0.01,
        "auc_margin": 0.1,
    }
    assert card["operating_point"]["threshold"] == 0.41
    assert card["operating_point"]["target_sensitivity"] == 0.9
    page = render_report(report, decision)
    assert "cand-spec: refused" in page and "✘" in page


@pytest.mark.parametrize(
    ("auc_ci", "promoted", "why"),
    [([-0.04, 0.08], True, "every check holds"), ([-0.12, 0.08], False, "lower bound")],
)
def test_the_auc_difference_is_judged_by_its_lower_bound(
    tmp_path: Path, auc_ci: list[float], promoted: bool, why: str
) -> None:
    metrics = {"auc": 0.9, "sensitivity": 0.9, "specificity": 0.8, "brier": 0.1, "threshold": 0.5}
    report = _report("1.0.0", metrics, metrics, auc_ci)
    decision, reason, _ = PromotionRule(auc_margin=0.05).decide(report)
    assert decision is promoted and why in reason
