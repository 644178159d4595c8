"""Pipeline step 5, promote: register the candidate as a new version of the retrained
model; activate it only if the promotion rule holds.

The new version's card is the active version's (applicability, input, aggregation,
outputs, SR coding, ``trainable`` carried over) with the new version, its training, its
test-split metrics, its operating point, the promotion record and the new file's sha256.

The rule compares the two models on the test split, each at its own operating threshold
(:mod:`.evaluate`), and asks that the candidate be no worse than the active model on every
count that a radiologist or a calibrated consumer of the score would notice:

* sensitivity(candidate) >= sensitivity(active) - ``sensitivity_margin``;
* specificity(candidate) >= specificity(active) - ``specificity_margin``;
* Brier(candidate) <= Brier(active) + ``brier_margin``;
* the lower bound of the 95% interval of AUC(candidate) - AUC(active) (paired patient
  bootstrap) >= -``auc_margin``: a non-inferiority test, not a comparison of point
  estimates.

The margins are settings (``retraining_*_margin``); the rule, the margins and each
check's numbers go into the run record and into the new version's model card. A refused
candidate is still registered, inactive, with the failed checks as its reason; running
workers pick up a promoted one, and its operating threshold, at their next study
(:class:`ai_node.registry.ModelSet` reloads when ``ACTIVE`` changes).

The candidate was compared with the version active when the run evaluated it; it is
activated only if that version is still the active one, checked under the registry's
switch lock (:meth:`ai_node.registry.ModelRegistry.activate` with ``expected``). A model
activated meanwhile (by hand, or by another run) is never overwritten: the candidate is
then refused with that reason.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ai_node.registry import ActiveChanged, ModelRegistry
from ai_node.retrain.evaluate import ACTIVE, CANDIDATE
from ai_node.retrain.finetune import MODEL_FILE, TRAINING_INFO
from ai_node.retrain.metrics import CONFIDENCE

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "finding"
"""The model of an evaluation report that names none (the shipped finding model)."""
RULE_NAME = "operating-point non-inferiority"


@dataclass(frozen=True)
class Check:
    """One condition of the rule with its numbers."""

    name: str
    candidate: float | None
    active: float | None
    limit: float | None
    passed: bool
    text: str


def _f(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


@dataclass(frozen=True)
class PromotionRule:
    sensitivity_margin: float = 0.0
    specificity_margin: float = 0.05
    brier_margin: float = 0.01
    auc_margin: float = 0.05

    def as_dict(self) -> dict[str, Any]:
        return {"name": RULE_NAME, "confidence": CONFIDENCE, **asdict(self)}

    def checks(self, report: dict[str, Any]) -> list[Check]:
        """Each condition of the rule (module docstring) on the evaluation's report."""
        cand, act = report[CANDIDATE], report[ACTIVE]
        out = []
        for name, margin in (
            ("sensitivity", self.sensitivity_margin),
            ("specificity", self.specificity_margin),
        ):
            c, a = cand.get(name), act.get(name)
            limit = None if a is None else a - margin
            ok = c is not None and limit is not None and c >= limit - 1e-12
            out.append(
                Check(
                    name,
                    c,
                    a,
                    limit,
                    ok,
                    f"{name} {_f(c)} at threshold {cand.get('threshold', 0):.4g} "
                    f"{'>=' if ok else 'is below'} the active model's {_f(a)} at "
                    f"{act.get('threshold', 0):.4g} minus the margin {margin:g}",
                )
            )
        c, a = cand.get("brier"), act.get("brier")
        limit = None if a is None else a + self.brier_margin
        ok = c is not None and limit is not None and c <= limit + 1e-12
        out.append(
            Check(
                "brier",
                c,
                a,
                limit,
                ok,
                f"Brier score {_f(c)} {'<=' if ok else 'is above'} the active model's "
                f"{_f(a)} plus the margin {self.brier_margin:g}",
            )
        )
        diff = report.get("auc_difference") or {}
        ci = diff.get("ci")
        low = None if ci is None else float(ci[0])
        ok = low is not None and low >= -self.auc_margin - 1e-12
        interval = "undefined" if ci is None else f"{ci[0]:+.3f} to {ci[1]:+.3f}"
        out.append(
            Check(
                "auc_difference",
                low,
                None,
                -self.auc_margin,
                ok,
                f"AUC difference {_f(diff.get('estimate'))} (candidate {_f(cand.get('auc'))}, "
                f"active {_f(act.get('auc'))}), {CONFIDENCE:.0%} interval {interval}: lower "
                f"bound {'>=' if ok else 'is below'} {-self.auc_margin:g}",
            )
        )
        return out

    def decide(self, report: dict[str, Any]) -> tuple[bool, str, list[Check]]:
        """(promote?, why, the checks) from the evaluation's report."""
        checks = self.checks(report)
        failed = [c for c in checks if not c.passed]
        if failed:
            return False, "; ".join(c.text for c in failed), checks
        return True, "every check holds: " + "; ".join(c.text for c in checks), checks


def new_version() -> str:
    return "retrain-" + dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")


SUMMARY = ("auc", "sensitivity", "specificity", "ppv", "npv", "brier", "ece", "threshold")


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """A model's test-split numbers for the run record and the card, with the intervals."""
    out = {k: metrics.get(k) for k in SUMMARY}
    out["ci"] = metrics.get("ci", {})
    out["confusion"] = metrics.get("confusion")
    return out


def promote_candidate(
    models_dir: Path,
    candidate_dir: Path,
    report: dict[str, Any],
    rule: PromotionRule,
    version: str = "",
    run_id: str = "",
) -> dict[str, Any]:
    """Register the candidate and apply the rule; returns the decision record."""
    registry = ModelRegistry(models_dir)
    name = str(report.get("model") or DEFAULT_MODEL)
    version = version or new_version()
    promote, reason, checks = rule.decide(report)
    training = json.loads((candidate_dir / TRAINING_INFO).read_text())
    base = registry.card(name, report["active_version"])
    positive = (base.get("outputs") or {}).get("positive_label") or "positive"
    operating = report["operating_points"][CANDIDATE]
    decision = {
        "model": name,
        "version": version,
        "decision": "promoted" if promote else "refused",
        "reason": reason,
        "run_id": run_id,
        "active_version_before": report["active_version"],
        "rule": rule.as_dict(),
        "checks": [asdict(c) for c in checks],
        "metrics": {CANDIDATE: summary(report[CANDIDATE]), ACTIVE: summary(report[ACTIVE])},
        "auc_difference": report["auc_difference"],
        "operating_points": report["operating_points"],
        "prevalence": report["prevalence"],
        "test_studies": report["studies"],
        "test_positives": report["positives"],
    }
    card = {
        **base,
        "version": version,
        "model_file": MODEL_FILE,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "training_data": (
            f"retraining run {run_id or '(unnamed)'}: radiologist-labelled studies of this "
            f"node, de-identified (PS3.15 E Basic profile); {training['train_studies']} "
            "studies in the train split"
        ),
        "training": training,
        "operating_point": {
            "threshold": operating["threshold"],
            "target_sensitivity": operating["target_sensitivity"],
            "chosen_on": (
                f"{operating['chosen_on']} split of retraining run {run_id or '(unnamed)'}: "
                f"{operating.get('studies', 0)} studies, {operating.get('positives', 0)} "
                f"labelled {positive}; sensitivity there {operating.get('sensitivity')}"
            ),
        },
        "metrics": {
            "heldout": (
                f"test split of retraining run {run_id}: {report['studies']} studies, "
                f"{report['positives']} labelled {positive}, {report['patients']} patients; "
                f"{CONFIDENCE:.0%} intervals by patient bootstrap; PPV and NPV at prevalence "
                f"{report['prevalence']:g}"
            ),
            **{k: v for k, v in summary(report[CANDIDATE]).items() if v is not None},
            "studies": report["studies"],
        },
        "promotion": decision,
    }
    try:
        registry.register(
            name,
            version,
            candidate_dir / MODEL_FILE,
            card,
            activate=promote,
            expected_active=report["active_version"],
        )
    except ActiveChanged as exc:  # registered, inactive: record why in its card
        decision.update(decision="refused", reason=str(exc))
        registry.set_card(name, version, card)
    logger.info(
        "candidate registered",
        extra={
            "model": name,
            "version": version,
            "decision": decision["decision"],
            "reason": decision["reason"],
        },
    )
    return decision
