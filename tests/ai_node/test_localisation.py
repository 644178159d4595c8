"""The shipped models mark their findings where the held-out truth puts them: hit rate and
false marks per study, recomputed through the worker's path and compared with the cards."""

from __future__ import annotations

import numpy as np
import pytest

from ai_node.localisation_metrics import (
    TOLERANCE_MM,
    LocalisationMetrics,
    heldout_ct,
    heldout_xray,
)
from ai_node.localise import grid_to_image, peak
from ai_node.registry import ModelRegistry


def _card_metrics(name: str) -> dict[str, float]:
    registry = ModelRegistry()
    return dict(registry.card(name, registry.active_version(name))["metrics"]["localisation"])


def test_a_peak_maps_back_to_the_image_it_came_from() -> None:
    cam = np.zeros((32, 32))
    cam[10, 20] = 1.0
    assert peak(cam) == (10.5, 20.5)
    # 32 cells on a 128 grid: 4 grid pixels a cell; a 512x384 image padded to 512x512
    row, column = grid_to_image(10.5 * 4, 20.5 * 4, 128, 384, 512)
    assert (row, column) == (10.5 * 16 - 64, 20.5 * 16)


def test_metrics_count_hits_misses_and_false_marks() -> None:
    m = LocalisationMetrics()
    m.add(positive=True, marked=True, hit=True)
    m.add(positive=True, marked=True, hit=False)
    m.add(positive=True, marked=False, hit=False)
    m.add(positive=False, marked=True, hit=False)
    assert (m.hit_rate, m.hit_rate_flagged) == (pytest.approx(1 / 3), 0.5)
    assert m.false_marks_per_study == 0.5
    assert m.as_card()["tolerance_mm"] == TOLERANCE_MM


def test_ct_marks_on_a_few_heldout_studies(shipped_models) -> None:
    """Three studies with lesions and three without (the fast share of the measurement)."""
    metrics = heldout_ct(shipped_models, limit=3)
    assert metrics.studies == 6 and metrics.positive == 3
    assert metrics.hits >= 2
    assert metrics.false_marks <= 2


def test_xray_marks_on_a_few_heldout_radiographs(shipped_models) -> None:
    metrics = heldout_xray(shipped_models.get("chest-xray-opacity"), limit=5)
    assert metrics.studies == 10 and metrics.positive == 5
    assert metrics.hits >= 4
    assert metrics.false_marks <= 1


@pytest.mark.slow
def test_ct_localisation_reaches_its_card(shipped_models) -> None:
    card = _card_metrics("finding")
    metrics = heldout_ct(shipped_models)
    assert metrics.hit_rate == pytest.approx(card["hit_rate"], abs=1e-4)
    assert metrics.false_marks_per_study == pytest.approx(card["false_marks_per_study"], abs=1e-4)


@pytest.mark.slow
def test_xray_localisation_reaches_its_card(shipped_models) -> None:
    card = _card_metrics("chest-xray-opacity")
    metrics = heldout_xray(shipped_models.get("chest-xray-opacity"))
    assert metrics.hit_rate == pytest.approx(card["hit_rate"], abs=1e-4)
    assert metrics.false_marks_per_study == pytest.approx(card["false_marks_per_study"], abs=1e-4)
