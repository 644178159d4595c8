"""The evaluation report as one self-contained HTML page (inline SVG, no script, nothing
fetched): the decision and its reason, the metrics of both models with their 95%
intervals, the ROC curves with their bootstrap bands and operating points, a reliability
diagram, the confusion matrices at each model's threshold and the promotion checks.
"""

from __future__ import annotations

import html
from typing import Any

from ai_node.retrain.evaluate import ACTIVE, CANDIDATE

COLORS = {CANDIDATE: "#c0392b", ACTIVE: "#2c3e50"}
SIZE, PAD = 280, 40
ROWS = (
    ("auc", "AUC"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("ppv", "PPV"),
    ("npv", "NPV"),
    ("brier", "Brier score"),
    ("ece", "calibration error (ECE)"),
)


CHOSEN_ON = {
    "val": "validation split",
    "train": "train split (no lesion study in the validation split)",
    "model card": "model card",
    "settings": "settings (finding_threshold)",
}


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _with_ci(metrics: dict[str, Any], key: str) -> str:
    ci = (metrics.get("ci") or {}).get(key)
    value = _num(metrics.get(key))
    return value if ci is None else f"{value} <small>({_num(ci[0])}–{_num(ci[1])})</small>"


def _xy(x: float, y: float) -> str:
    return f"{PAD + x * SIZE:.1f},{PAD + (1 - y) * SIZE:.1f}"


def _frame(label: str, x_title: str, y_title: str) -> list[str]:
    w = SIZE + 2 * PAD
    lines = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{w}" role="img" '
        f'aria-label="{_e(label)}">',
        f'<rect x="{PAD}" y="{PAD}" width="{SIZE}" height="{SIZE}" fill="none" stroke="#999"/>',
        f'<line x1="{PAD}" y1="{PAD + SIZE}" x2="{PAD + SIZE}" y2="{PAD}" stroke="#ccc" '
        'stroke-dasharray="4"/>',
        f'<text x="{PAD + SIZE / 2}" y="{2 * PAD + SIZE - 8}" font-size="11" '
        f'text-anchor="middle">{_e(x_title)}</text>',
        f'<text x="12" y="{PAD + SIZE / 2}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {PAD + SIZE / 2})">{_e(y_title)}</text>',
    ]
    for tick in (0, 0.5, 1):
        lines.append(
            f'<text x="{PAD + tick * SIZE}" y="{PAD + SIZE + 14}" font-size="10" '
            f'text-anchor="middle">{tick:g}</text>'
        )
        lines.append(
            f'<text x="{PAD - 6}" y="{PAD + (1 - tick) * SIZE + 4}" font-size="10" '
            f'text-anchor="end">{tick:g}</text>'
        )
    return lines


def svg_roc(report: dict[str, Any]) -> str:
    """Both ROC curves, their 95% bands (shaded) and operating points (dots)."""
    lines = _frame("ROC curves with 95% bands", "false positive rate", "true positive rate")
    for i, name in enumerate((CANDIDATE, ACTIVE)):
        m = report[name]
        band = m.get("roc_band")
        if band:
            upper = [_xy(x, y) for x, y in zip(band["fpr"], band["upper"], strict=True)]
            lower = [_xy(x, y) for x, y in zip(band["fpr"], band["lower"], strict=True)]
            lines.append(
                f'<polygon class="band" fill="{COLORS[name]}" fill-opacity="0.15" stroke="none" '
                f'points="{" ".join(upper + lower[::-1])}"/>'
            )
        points = " ".join(_xy(x, y) for x, y in m.get("roc", []))
        if points:
            lines.append(
                f'<polyline fill="none" stroke="{COLORS[name]}" stroke-width="2" '
                f'points="{points}"/>'
            )
        if m.get("sensitivity") is not None and m.get("specificity") is not None:
            cx, cy = _xy(1 - m["specificity"], m["sensitivity"]).split(",")
            lines.append(f'<circle cx="{cx}" cy="{cy}" r="4" fill="{COLORS[name]}"/>')
        lines.append(
            f'<text x="{PAD + SIZE - 6}" y="{PAD + SIZE - 10 - 14 * i}" fill="{COLORS[name]}" '
            f'font-size="12" text-anchor="end">{name} AUC {_num(m.get("auc"))}</text>'
        )
    lines.append("</svg>")
    return "\n".join(lines)


def svg_reliability(report: dict[str, Any]) -> str:
    """Observed fraction of lesions against mean score per bin; dot area ~ studies."""
    lines = _frame("reliability diagram", "mean score in the bin", "observed fraction with lesion")
    for i, name in enumerate((CANDIDATE, ACTIVE)):
        bins = report[name].get("reliability") or []
        points = [_xy(b["mean_score"], b["observed"]) for b in bins]
        if points:
            lines.append(
                f'<polyline fill="none" stroke="{COLORS[name]}" stroke-width="1.5" '
                f'points="{" ".join(points)}"/>'
            )
        for b, p in zip(bins, points, strict=True):
            cx, cy = p.split(",")
            r = 2 + 1.5 * b["studies"] ** 0.5
            lines.append(
                f'<circle cx="{cx}" cy="{cy}" r="{r:.1f}" fill="{COLORS[name]}" '
                'fill-opacity="0.5"><title>'
                f"{name}: {b['studies']} studies, mean score {b['mean_score']:.3f}, observed "
                f"{b['observed']:.3f}</title></circle>"
            )
        lines.append(
            f'<text x="{PAD + 6}" y="{PAD + 14 + 14 * i}" fill="{COLORS[name]}" font-size="12">'
            f"{name} ECE {_num(report[name].get('ece'))}</text>"
        )
    lines.append("</svg>")
    return "\n".join(lines)


def confusion_table(name: str, metrics: dict[str, Any]) -> str:
    c = metrics["confusion"]
    return (
        f"<table class='confusion'><caption>{_e(name)} at threshold "
        f"{metrics['threshold']:.4g}</caption>"
        "<tr><th></th><th>labelled lesion</th><th>labelled no lesion</th></tr>"
        f"<tr><th>score &ge; threshold</th><td>{c['tp']} TP</td><td>{c['fp']} FP</td></tr>"
        f"<tr><th>score &lt; threshold</th><td>{c['fn']} FN</td><td>{c['tn']} TN</td></tr>"
        "</table>"
    )


def _decision(decision: dict[str, Any] | None) -> str:
    if decision is None:
        return "<p class='decision'>No decision recorded.</p>"
    promoted = decision["decision"] == "promoted"
    color = "#1e8449" if promoted else "#b03a2e"
    rule = decision.get("rule", {})
    margins = ", ".join(f"{k} {v:g}" for k, v in rule.items() if k.endswith("_margin"))
    rows = "".join(
        f"<tr><td>{'✔' if c['passed'] else '✘'}</td><td>{_e(c['name'])}</td>"
        f"<td>{_e(c['text'])}</td></tr>"
        for c in decision.get("checks", [])
    )
    return (
        f"<div class='decision' style='border-left:6px solid {color};padding:4px 12px'>"
        f"<h2 style='color:{color}'>{_e(decision['version'])}: {_e(decision['decision'])}</h2>"
        f"<p>{_e(decision['reason'])}</p>"
        f"<p><small>Rule: {_e(rule.get('name', ''))}; margins {_e(margins)}.</small></p>"
        f"<table><tr><th></th><th>check</th><th>numbers</th></tr>{rows}</table></div>"
    )


def render_report(report: dict[str, Any], decision: dict[str, Any] | None = None) -> str:
    """The page (module docstring)."""
    rows = "".join(
        f"<tr><td>{label}</td><td>{_with_ci(report[CANDIDATE], key)}</td>"
        f"<td>{_with_ci(report[ACTIVE], key)}</td></tr>"
        for key, label in ROWS
    )
    ops = report["operating_points"]
    threshold_rows = "".join(
        f"<tr><td>{name}</td><td>{ops[name]['threshold']:.4g}</td>"
        f"<td>{_e(CHOSEN_ON.get(ops[name]['chosen_on'], ops[name]['chosen_on']))}</td></tr>"
        for name in (CANDIDATE, ACTIVE)
    )
    diff = report["auc_difference"]
    ci = diff.get("ci")
    diff_text = _num(diff.get("estimate"))
    if ci is not None:
        diff_text += f" (95% interval {ci[0]:+.3f} to {ci[1]:+.3f})"
    boot = report.get("bootstrap", {})
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<title>radnode retraining report</title><style>"
        "body{font-family:sans-serif;max-width:960px;margin:1em auto}"
        "table{border-collapse:collapse;margin:8px 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        "caption{font-weight:bold;text-align:left}.figs{display:flex;gap:16px;flex-wrap:wrap}"
        "</style></head><body>"
        "<h1>Candidate vs active finding model</h1>"
        f"{_decision(decision)}"
        f"<p>Test split: {report['studies']} studies of {report['patients']} patients, "
        f"{report['positives']} labelled lesion, {report['negatives']} no lesion. Active "
        f"version {_e(report['active_version'])}. PPV and NPV at the stated prevalence "
        f"{report['prevalence']:g}. Intervals: {_e(boot.get('method', ''))}, "
        f"{boot.get('samples', '')} replicates, seed {boot.get('seed', '')}.</p>"
        "<table><tr><th>metric (95% interval)</th>"
        f"<th style='color:{COLORS[CANDIDATE]}'>candidate</th>"
        f"<th style='color:{COLORS[ACTIVE]}'>active</th></tr>{rows}</table>"
        f"<p>AUC difference candidate − active: {diff_text}</p>"
        "<table><caption>Operating thresholds</caption><tr><th>model</th><th>threshold</th>"
        f"<th>chosen on</th></tr>{threshold_rows}</table>"
        f"<div class='figs'>{svg_roc(report)}{svg_reliability(report)}</div>"
        f"<div class='figs'>{confusion_table(CANDIDATE, report[CANDIDATE])}"
        f"{confusion_table(ACTIVE, report[ACTIVE])}</div>"
        "</body></html>\n"
    )
