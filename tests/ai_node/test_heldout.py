"""The shipped models reach, on the held-out synthetic set, the metrics their cards claim.

The test recomputes the metrics through the worker's own analysis path
(``ai_node.analysis.analyse``) with its own AUC; it reads the card only to compare.
"""

from __future__ import annotations

import numpy as np

from ai_node.analysis import analyse
from ai_node.registry import ModelRegistry
from ai_node.train import HELDOUT_PLAN, HELDOUT_SEED_BASE, synthetic_cases, synthetic_specs


def auc(labels: list[int], scores: list[float]) -> float:
    pairs = [
        (s_pos, s_neg)
        for s_pos, y_pos in zip(scores, labels, strict=True)
        if y_pos
        for s_neg, y_neg in zip(scores, labels, strict=True)
        if not y_neg
    ]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


def test_shipped_models_reach_their_card_metrics(shipped_models) -> None:
    registry = ModelRegistry()
    finding_card = registry.card("finding", registry.active_version("finding"))
    region_card = registry.card("region", registry.active_version("region"))
    threshold = finding_card["metrics"]["threshold"]

    specs = synthetic_specs(HELDOUT_PLAN, HELDOUT_SEED_BASE)
    assert min(s.seed for s in specs) >= HELDOUT_SEED_BASE  # never the training seeds
    correct, labels, scores = 0, [], []
    for case in synthetic_cases(specs):
        # the region decision as the worker makes it; the finding score for every chest study
        result = analyse(
            case.stack, shipped_models, threshold, in_scope_regions=("chest", "head", "abdomen")
        )
        correct += result.region == case.spec.region
        if case.spec.region == "chest":
            assert result.score is not None, "a chest study without a finding score"
            labels.append(int(bool(case.study.lesions)))
            scores.append(float(result.score))

    accuracy = correct / len(specs)
    finding_auc = auc(labels, scores)
    predicted = np.asarray(scores) >= threshold
    truth = np.asarray(labels) == 1
    sensitivity = (predicted & truth).sum() / truth.sum()
    specificity = (~predicted & ~truth).sum() / (~truth).sum()

    assert accuracy >= 0.95 and finding_auc >= 0.9
    assert accuracy >= region_card["metrics"]["accuracy"] - 0.01
    assert finding_auc >= finding_card["metrics"]["auc"] - 0.01
    assert sensitivity >= finding_card["metrics"]["sensitivity"] - 0.05
    assert specificity >= finding_card["metrics"]["specificity"] - 0.05
