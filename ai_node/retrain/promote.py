"""Pipeline step 5, promote: register the candidate as a new version; activate it only if
the promotion rule holds.

The rule (settings ``retraining_auc_margin`` and ``retraining_sensitivity_margin``): on
the test split, the candidate's AUC is not worse than the active model's by more than the
AUC margin, and its sensitivity at the operating point is not lower than the active
model's by more than the sensitivity margin (default 0: not lower). An undefined AUC (a
test split with one class) refuses. A refused candidate is still registered, inactive,
with the reason in its model card; running workers pick up a promoted one at their next
study (:class:`ai_node.registry.ModelSet` reloads when ``ACTIVE`` changes).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai_node.registry import ActiveChanged, ModelRegistry
from ai_node.retrain.evaluate import CANDIDATE
from ai_node.retrain.finetune import MODEL_FILE, TRAINING_INFO

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromotionRule:
    auc_margin: float = 0.02
    sensitivity_margin: float = 0.0

    def decide(self, candidate: dict[str, Any], active: dict[str, Any]) -> tuple[bool, str]:
        """(promote?, why) from the two models' test-split metrics."""
        c_auc, a_auc = candidate.get("auc"), active.get("auc")
        c_sens, a_sens = candidate.get("sensitivity"), active.get("sensitivity")
        if c_auc is None or a_auc is None:
            return False, "AUC undefined on the test split (one class only)"
        if c_sens is None or a_sens is None:
            return False, "sensitivity undefined on the test split (no lesion study)"
        if c_auc < a_auc - self.auc_margin:
            return False, (
                f"AUC {c_auc:.4f} is worse than the active model's {a_auc:.4f} by more than "
                f"the margin {self.auc_margin:g}"
            )
        if c_sens < a_sens - self.sensitivity_margin:
            return False, (
                f"sensitivity {c_sens:.4f} is lower than the active model's {a_sens:.4f} "
                f"(margin {self.sensitivity_margin:g})"
            )
        return True, (
            f"AUC {c_auc:.4f} vs {a_auc:.4f} (margin {self.auc_margin:g}), sensitivity "
            f"{c_sens:.4f} vs {a_sens:.4f} (margin {self.sensitivity_margin:g})"
        )


def new_version() -> str:
    return "retrain-" + dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")


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
    version = version or new_version()
    promote, reason = rule.decide(report[CANDIDATE], report["active"])
    training = json.loads((candidate_dir / TRAINING_INFO).read_text())
    base = registry.card("finding", report["active_version"])
    decision = {
        "version": version,
        "decision": "promoted" if promote else "refused",
        "reason": reason,
        "run_id": run_id,
        "active_version_before": report["active_version"],
        "rule": {"auc_margin": rule.auc_margin, "sensitivity_margin": rule.sensitivity_margin},
        "metrics": {CANDIDATE: _summary(report[CANDIDATE]), "active": _summary(report["active"])},
        "test_studies": report["studies"],
    }
    card = {
        **base,
        "version": version,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "training_data": (
            f"retraining run {run_id or '(unnamed)'}: radiologist-labelled studies of this "
            f"node, de-identified (PS3.15 E Basic profile); {training['train_studies']} "
            "studies in the train split"
        ),
        "training": training,
        "metrics": {
            "heldout": f"test split of retraining run {run_id}: {report['studies']} studies",
            **{k: v for k, v in _summary(report[CANDIDATE]).items() if v is not None},
            "threshold": report["threshold"],
            "studies": report["studies"],
        },
        "promotion": decision,
    }
    try:
        registry.register(
            "finding",
            version,
            candidate_dir / MODEL_FILE,
            card,
            activate=promote,
            expected_active=report["active_version"],
        )
    except ActiveChanged as exc:  # registered, inactive: record why in its card
        decision.update(decision="refused", reason=str(exc))
        registry.set_card("finding", version, card)
    logger.info(
        "candidate registered",
        extra={
            "version": version,
            "decision": decision["decision"],
            "reason": decision["reason"],
        },
    )
    return decision


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("auc", "sensitivity", "specificity", "brier")}
