"""Study-level aggregation, and scoring overlapped with decoding in the right slice order."""

from __future__ import annotations

import numpy as np

from ai_node.analysis import decode_and_score, finding_probabilities, sample_indices, smooth
from ai_node.synth import StudySpec, write_study


def test_smoothing_and_sampling() -> None:
    assert smooth(np.array([0.0, 0.0, 0.9, 0.0, 0.0])).tolist() == [0.0, 0.3, 0.3, 0.3, 0.0]
    assert smooth(np.array([0.9, 0.0])).round(3).tolist() == [0.6, 0.3]
    assert sample_indices(5).tolist() == [0, 1, 2, 3, 4]
    picked = sample_indices(300)
    assert len(picked) == 24 and picked[0] == 0 and picked[-1] == 299


def test_overlapped_scores_follow_the_head_to_feet_order(shipped_models, tmp_path) -> None:
    _, files = write_study(
        StudySpec(
            region="chest",
            slices=11,
            nodules=1,
            seed=8,
            rows=128,
            columns=128,
            pixel_spacing_mm=2.8,
        ),
        tmp_path,
    )
    stack, raw = decode_and_score(
        list(reversed(files)), shipped_models, batch_size=4, compressed=False
    )
    assert np.all(np.diff(stack.positions) < 0)  # head to feet
    expected = finding_probabilities(stack.hu, shipped_models, 4)
    assert np.allclose(raw, expected, atol=1e-5)
