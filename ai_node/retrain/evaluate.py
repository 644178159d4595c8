"""Pipeline step 4, evaluate: the candidate and the active model on the same test split.

Study-level, as the node reports: a study's score is :func:`ai_node.analysis.score_finding`
(the maximum of the smoothed slice probabilities), the truth is the radiologist's final
label. Per model: ROC AUC (:func:`ai_node.train.roc_auc`), sensitivity and specificity at
the operating point (``finding_threshold``), and calibration: the Brier score and a
reliability table (:data:`BINS` equal-width bins: studies, mean score, observed fraction).
Outputs: ``report.json`` (metrics and each test study's scores, so anyone can recompute
them) and ``report.html`` with both ROC curves as an inline SVG.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ai_node.analysis import score_finding
from ai_node.models import LoadedModel, load_model
from ai_node.preprocess import SliceStack
from ai_node.registry import ModelRegistry, ModelSet
from ai_node.retrain.finetune import MODEL_FILE
from ai_node.retrain.prepare import split_studies
from ai_node.train import DictModels, roc_auc

BINS = 5
CANDIDATE = "candidate"


def roc_points(labels: np.ndarray, scores: np.ndarray) -> list[tuple[float, float]]:
    """(false positive rate, true positive rate) at every distinct threshold."""
    pos, neg = max(int((labels == 1).sum()), 1), max(int((labels == 0).sum()), 1)
    points = [(0.0, 0.0)]
    for t in sorted(set(scores.tolist()), reverse=True):
        p = scores >= t
        points.append(
            (float((p & (labels == 0)).sum() / neg), float((p & (labels == 1)).sum() / pos))
        )
    points.append((1.0, 1.0))
    return points


def study_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """AUC, sensitivity / specificity at ``threshold``, Brier score, reliability bins."""
    p = scores >= threshold
    pos, neg = int((labels == 1).sum()), int((labels == 0).sum())
    bins = []
    edges = np.linspace(0.0, 1.0, BINS + 1)
    for i in range(BINS):
        inside = (scores >= edges[i]) & ((scores < edges[i + 1]) | (i == BINS - 1))
        n = int(inside.sum())
        bins.append(
            {
                "range": [round(float(edges[i]), 2), round(float(edges[i + 1]), 2)],
                "studies": n,
                "mean_score": round(float(scores[inside].mean()), 4) if n else None,
                "observed": round(float(labels[inside].mean()), 4) if n else None,
            }
        )
    auc = roc_auc(labels.tolist(), scores.tolist())
    return {
        "auc": None if math.isnan(auc) else round(auc, 4),
        "sensitivity": round(float((p & (labels == 1)).sum() / pos), 4) if pos else None,
        "specificity": round(float((~p & (labels == 0)).sum() / neg), 4) if neg else None,
        "brier": round(float(np.mean((scores - labels) ** 2)), 4) if labels.size else None,
        "reliability": bins,
        "roc": [[round(x, 4), round(y, 4)] for x, y in roc_points(labels, scores)],
    }


def study_score(hu: np.ndarray, model: LoadedModel) -> float:
    stack = SliceStack(hu=hu, positions=np.arange(hu.shape[0], dtype=np.float64), refs=[])
    score, _, _ = score_finding(stack, DictModels({"finding": model}))
    return float(score)


def evaluate_candidate(
    prepared: Path, candidate_dir: Path, models_dir: Path, threshold: float
) -> dict[str, Any]:
    """The report (module docstring) of the candidate against the active version."""
    active = ModelSet(ModelRegistry(models_dir)).get("finding")
    candidate = load_model("finding", CANDIDATE, candidate_dir / MODEL_FILE, active.card)
    studies = split_studies(prepared, "test")
    labels = np.asarray([int(s["label"]) for s, _ in studies], dtype=np.int64)
    scores: dict[str, list[float]] = {CANDIDATE: [], "active": []}
    for _, hu in studies:
        scores[CANDIDATE].append(study_score(hu, candidate))
        scores["active"].append(study_score(hu, active))
    return {
        "split": "test",
        "studies": len(studies),
        "positives": int(labels.sum()),
        "threshold": threshold,
        "active_version": active.version,
        CANDIDATE: study_metrics(labels, np.asarray(scores[CANDIDATE]), threshold),
        "active": study_metrics(labels, np.asarray(scores["active"]), threshold),
        "scores": [
            {
                "study": s["dir"],
                "label": int(s["label"]),
                CANDIDATE: round(c, 6),
                "active": round(a, 6),
            }
            for (s, _), c, a in zip(studies, scores[CANDIDATE], scores["active"], strict=True)
        ],
    }


def _svg_roc(report: dict[str, Any]) -> str:
    size, pad = 260, 30
    colors = {CANDIDATE: "#c0392b", "active": "#2c3e50"}

    def xy(fpr: float, tpr: float) -> str:
        return f"{pad + fpr * size:.1f},{pad + (1 - tpr) * size:.1f}"

    lines = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size + 2 * pad}" '
        f'height="{size + 2 * pad}" role="img" aria-label="ROC curves">',
        f'<rect x="{pad}" y="{pad}" width="{size}" height="{size}" fill="none" stroke="#999"/>',
        f'<line x1="{pad}" y1="{pad + size}" x2="{pad + size}" y2="{pad}" stroke="#ccc" '
        'stroke-dasharray="4"/>',
    ]
    for i, name in enumerate((CANDIDATE, "active")):
        points = " ".join(xy(x, y) for x, y in report[name]["roc"])
        lines.append(
            f'<polyline fill="none" stroke="{colors[name]}" stroke-width="2" points="{points}"/>'
        )
        lines.append(
            f'<text x="{pad + 8}" y="{pad + size - 10 - 14 * i}" fill="{colors[name]}" '
            f'font-size="12">{name} AUC {report[name]["auc"]}</text>'
        )
    lines.append(
        f'<text x="{pad + size / 2 - 60}" y="{2 * pad + size - 6}" font-size="11">'
        "false positive rate</text>"
    )
    lines.append("</svg>")
    return "\n".join(lines)


def report_html(report: dict[str, Any]) -> str:
    """A small self-contained page: the metrics table and the ROC curves."""
    rows = []
    for key in ("auc", "sensitivity", "specificity", "brier"):
        rows.append(
            f"<tr><td>{key}</td><td>{report[CANDIDATE][key]}</td>"
            f"<td>{report['active'][key]}</td></tr>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>radnode retraining report"
        "</title></head><body><h1>Candidate vs active finding model</h1>"
        f"<p>Test split: {report['studies']} studies ({report['positives']} with a lesion); "
        f"operating point {report['threshold']}; active version "
        f"{html.escape(str(report['active_version']))}.</p>"
        "<table border='1' cellpadding='4'><tr><th>metric</th><th>candidate</th>"
        f"<th>active</th></tr>{''.join(rows)}</table>{_svg_roc(report)}</body></html>\n"
    )


def write_report(report: dict[str, Any], json_path: Path, html_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(report_html(report))
