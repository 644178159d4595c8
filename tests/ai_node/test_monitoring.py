"""Per-model monitoring: what the pipeline records of each study (metrics and input
statistics), the drift checks against a card's ``monitoring`` section, and the gauges a
scrape reads from the index."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from ai_node.card import InputDistribution, ModelCard
from ai_node.monitoring import (
    MonitorCollector,
    drift_of,
    feedback_decisions,
    psi,
    reference_distribution,
    series,
)
from ai_node.monitoring_reference import heldout_series, measure
from ai_node.registry import SHIPPED_MODELS, ModelRegistry
from ai_node.results import ResultStore
from ai_node.synth import StudySpec
from ai_node.tables import feedback, results
from radnode.assembly import build_node
from radnode_core.index import studies, utcnow
from radnode_core.metrics import manufacturer_label
from radnode_core.node import Node
from radnode_core.settings import Settings
from tests.support.analysis import add_study, run_all
from tests.support.postgres import PostgresServer


def samples(node: Node) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = node.metrics.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(node: Node, name: str, **labels: str) -> float | None:
    return samples(node).get((name, tuple(sorted(labels.items()))))


def shipped_card(name: str) -> ModelCard:
    registry = ModelRegistry(SHIPPED_MODELS)
    return registry.model_card(name, registry.active_version(name))


def card_with(monitoring: dict) -> ModelCard:
    data = shipped_card("finding").model_dump(mode="json", exclude_none=True)
    data["monitoring"] = monitoring
    return ModelCard.model_validate(data)


def add_results(
    node: Node,
    n: int,
    positives: int,
    mean_hu: list[float] | None = None,
    model: str = "finding",
    start: int = 0,
) -> None:
    """``n`` done results of ``model`` (the first ``positives`` positive), 10 s apart,
    with the mean HU of each study when given; a batch from ``start`` 100 is an hour newer
    than one from 0."""
    store = ResultStore(node.index)
    now = utcnow()
    with node.index.transaction() as conn:
        for i in range(start, start + n):
            conn.execute(
                studies.insert().values(
                    study_uid=f"1.2.3.{i}",
                    num_instances=1,
                    first_received_at=time.time(),
                    last_received_at=time.time(),
                )
            )
    for k, i in enumerate(range(start, start + n)):
        store.upsert(
            f"1.2.3.{i}",
            1,
            None,
            model_name=model,
            status="done",
            score=0.9 if k < positives else 0.1,
            label="lesion" if k < positives else "no lesion",
            finished_at=now - dt.timedelta(hours=5 - start // 100, seconds=-10 * k),
            details={
                "positive_label": "lesion",
                "timings": {"total_s": 1.0 + k % 3},
                "time_to_result_s": 30.0,
                "inputs": {"mean_hu": float(mean_hu[k])} if mean_hu is not None else {},
            },
        )


def add_feedback(node: Node, model: str, confirms: int, relabels: int) -> None:
    now = utcnow()
    with node.index.transaction() as conn:
        for k in range(confirms + relabels):
            conn.execute(
                feedback.insert().values(
                    study_uid=f"1.2.3.{k}",
                    result_version=1,
                    ai_sr_sop_instance_uid=f"1.2.9.{k}",
                    decision="confirm" if k < confirms else "relabel",
                    label="lesion",
                    ai_label="lesion",
                    model_version=f"{model}:1.0.0,region:1.0.0",
                    model_name=model,
                    user="rad",
                    observer_name="Doe^Jane",
                    sr_sop_instance_uid=f"1.2.8.{k}",
                    predecessor_sop_instance_uid=f"1.2.9.{k}",
                    created_at=now - dt.timedelta(minutes=k),
                )
            )


# -- what the pipeline records -------------------------------------------------------------


def test_an_analysed_study_is_counted_per_model_with_its_input_statistics(
    node: Node, pipeline, tmp_path: Path
) -> None:
    spec = StudySpec(region="chest", slices=12, nodules=1, seed=3, rows=128, columns=128)
    study = add_study(node, spec, tmp_path / "in")
    run_all(node, pipeline)
    with node.index.engine.connect() as conn:
        row = (
            conn.execute(
                select(results).where(
                    results.c.study_uid == study.study_instance_uid,
                    results.c.model_name == "finding",
                )
            )
            .mappings()
            .one()
        )
    assert row["status"] == "done", row
    inputs = row["details"]["inputs"]
    assert inputs["manufacturer"] == "other"  # "radnode synth": not a known vendor
    assert inputs["slice_thickness_mm"] == pytest.approx(spec.slice_thickness_mm)
    assert 0.5 < inputs["pixel_spacing_mm"] < 5
    assert -500 < inputs["mean_hu"] < 500  # soft tissue and bone inside the body, not air
    assert row["details"]["time_to_result_s"] >= 0

    outcome = "positive" if row["label"] == "lesion" else "negative"
    assert (
        value(node, "radnode_model_results_total", model="finding", status="done", outcome=outcome)
        == 1
    )
    assert value(node, "radnode_model_score_count", model="finding") == 1
    assert value(node, "radnode_model_inference_seconds_count", model="finding") == 1
    assert value(node, "radnode_model_time_to_result_seconds_count", model="finding") == 1
    assert value(node, "radnode_input_studies_total", model="finding", manufacturer="other") == 1
    assert value(node, "radnode_input_mean_hu_count", model="finding") == 1  # no _sum: HU < 0
    above = "100.0" if inputs["mean_hu"] <= 100 else "+Inf"
    assert value(node, "radnode_input_mean_hu_bucket", model="finding", le=above) == 1
    assert value(node, "radnode_input_slice_thickness_mm_count", model="finding") == 1
    # the index-derived gauges see the same result
    assert value(node, "radnode_model_window_studies", model="finding") == 1


def test_the_manufacturer_label_is_bounded() -> None:
    assert manufacturer_label("SIEMENS") == "siemens"
    assert manufacturer_label("GE MEDICAL SYSTEMS") == "ge"
    assert manufacturer_label("Philips Healthcare") == "philips"
    assert manufacturer_label("") == "unknown"
    names = {manufacturer_label(f"Vendor {i} Inc.") for i in range(1000)}
    assert names == {"other"}


# -- drift ---------------------------------------------------------------------------------


def test_psi_is_small_on_the_reference_and_large_on_a_shift() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(40, 10, 2000)
    dist = reference_distribution(reference)
    assert sum(dist.fractions) == pytest.approx(1.0, abs=0.01)
    assert psi(dist, rng.normal(40, 10, 300)) < 0.1
    assert psi(dist, rng.normal(70, 10, 300)) > 1.0
    one_value = reference_distribution([2.5] * 50)  # every study 2.5 mm
    assert psi(one_value, [2.5] * 40) < 0.1
    assert psi(one_value, [5.0] * 40) > 1.0


def test_the_positive_rate_alerts_outside_the_cards_band_once_enough_studies(node: Node) -> None:
    card = card_with({"window": 20, "positive_rate": [0.3, 0.7]})
    add_results(node, 8, positives=8)
    drift = drift_of(node.index, card)
    assert drift.positive_rate == 1.0 and drift.alerts == []  # 8 < 10: too few to alert
    add_results(node, 12, positives=12, start=100)
    drift = drift_of(node.index, card)
    assert drift.studies == 20 and [a.check for a in drift.alerts] == ["positive_rate"]
    assert "100%" in drift.alerts[0].message and "30%-70%" in drift.alerts[0].message
    add_results(node, 20, positives=10, start=200)  # the newest 20: half positive
    assert drift_of(node.index, card).alerts == []


def test_agreement_below_the_threshold_alerts(node: Node) -> None:
    card = card_with({"window": 50, "min_agreement": 0.8, "min_feedback": 10})
    add_results(node, 10, positives=5)
    add_feedback(node, "finding", confirms=6, relabels=4)
    drift = drift_of(node.index, card)
    assert drift.agreement == pytest.approx(0.6)
    assert [a.check for a in drift.alerts] == ["agreement"]
    assert feedback_decisions(node.index) == {
        ("finding", "1.0.0", "confirm"): 6,
        ("finding", "1.0.0", "relabel"): 4,
    }


def test_input_drift_alerts_by_psi_against_the_cards_distribution(node: Node) -> None:
    rng = np.random.default_rng(1)
    dist = reference_distribution(rng.normal(40, 10, 500))
    card = card_with({"window": 100, "inputs": {"mean_hu": dist.model_dump()}})
    add_results(node, 100, 10, mean_hu=list(rng.normal(40, 10, 100)))
    drift = drift_of(node.index, card)
    assert drift.alerts == [] and drift.psi["mean_hu"] < 0.25
    add_results(node, 100, 10, mean_hu=list(rng.normal(-150, 10, 100)), start=100)
    drift = drift_of(node.index, card)
    assert [a.check for a in drift.alerts] == ["input_mean_hu"]
    assert drift.psi["mean_hu"] > 0.25


def test_a_scrape_exports_the_drift_gauges_and_alerts(node: Node) -> None:
    card = card_with({"window": 10, "positive_rate": [0.3, 0.7], "min_feedback": 5})
    registry = CollectorRegistry()
    registry.register(MonitorCollector(node.index, lambda: [card], cache_s=0))
    add_results(node, 10, positives=1)
    add_feedback(node, "finding", confirms=1, relabels=5)
    text = generate_latest(registry).decode()
    assert 'radnode_drift_alert{check="positive_rate",model="finding"} 1.0' in text
    assert 'radnode_drift_alert{check="agreement",model="finding"} 1.0' in text
    assert 'radnode_model_positive_rate_band{bound="low",model="finding"} 0.3' in text
    assert 'radnode_model_positive_rate{model="finding"} 0.1' in text
    assert (
        'radnode_feedback_decisions{decision="relabel",model="finding",version="1.0.0"} 5.0' in text
    )
    add_results(node, 10, positives=5, start=100)
    text = generate_latest(registry).decode()
    assert 'radnode_drift_alert{check="positive_rate",model="finding"} 0.0' in text


def test_the_dashboard_series_buckets_results_and_judgements(node: Node) -> None:
    add_results(node, 10, positives=4)
    add_feedback(node, "finding", confirms=3, relabels=1)
    data = series(node.index, "24h")
    m = data["models"]["finding"]
    assert len(m["done"]) == 24 and sum(m["done"]) == 10 and sum(m["positive"]) == 4
    assert sum(m["confirm"]) == 3 and sum(m["relabel"]) == 1
    last = max(i for i, d in enumerate(m["done"]) if d)
    assert m["median_s"][last] is not None
    assert m["time_to_result_median_s"][last] == 30.0
    assert sum(series(node.index, "30d")["models"]["finding"]["done"]) == 10


# -- the shipped cards ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["finding", "chest-xray-opacity"])
def test_the_shipped_cards_expect_their_heldout_behaviour(name: str) -> None:
    mon = shipped_card(name).monitoring
    assert mon is not None and mon.positive_rate is not None and mon.basis
    low, high = mon.positive_rate
    assert low < 0.5 < high  # the held-out sets are half positive
    assert "pixel_spacing_mm" in mon.inputs
    assert ("mean_hu" in mon.inputs) == (name == "finding")  # HU only for CT
    # the held-out series, measured as the pipeline measures them, fall inside the card's
    # distributions (the card was made from all of them: python -m ai_node.monitoring_reference)
    size = 128 if name == "finding" else 224
    for datasets in heldout_series(name, limit=4):
        stats = measure(datasets, size)
        for statistic, dist in mon.inputs.items():
            assert isinstance(dist, InputDistribution)
            assert dist.edges[0] <= float(stats[statistic]) <= dist.edges[-1], (statistic, stats)


def test_the_checks_read_postgresql_as_they_read_sqlite(tmp_path: Path) -> None:
    """The drift window, the judgements and the dashboard's buckets are the same SQL on
    PostgreSQL (the scale-out index) as on SQLite."""
    card = card_with({"window": 20, "positive_rate": [0.3, 0.7], "min_feedback": 5})
    rng = np.random.default_rng(2)
    hu = list(rng.normal(40, 10, 20))

    def measured(node: Node) -> tuple[Any, ...]:
        add_results(node, 20, positives=3, mean_hu=hu)
        add_feedback(node, "finding", confirms=2, relabels=4)
        drift = drift_of(node.index, card)
        data = series(node.index, "7d", now=utcnow())
        return drift.as_dict(), data["models"], feedback_decisions(node.index)

    with PostgresServer() as pg:
        on_pg = build_node(Settings(data_dir=tmp_path / "pg", fsync=False, database_url=pg.url))
        try:
            assert not on_pg.index.is_sqlite
            pg_result = measured(on_pg)
        finally:
            on_pg.close()
    on_sqlite = build_node(Settings(data_dir=tmp_path / "sqlite", fsync=False))
    try:
        assert measured(on_sqlite) == pg_result
    finally:
        on_sqlite.close()
    drift = pg_result[0]
    assert [a["check"] for a in drift["alerts"]] == ["positive_rate", "agreement"]
    assert drift["positive_rate"] == pytest.approx(0.15)


def test_a_scrape_answers_when_the_drift_gauges_cannot_be_read(node: Node) -> None:
    def unreadable() -> list[ModelCard]:
        raise OSError("models volume unavailable")

    node.metrics.watch(MonitorCollector(node.index, unreadable, cache_s=0))
    text = node.metrics.exposition().decode()
    assert "radnode_queue_depth 0.0" in text
    assert text.count("# TYPE radnode_drift_alert gauge") == 1  # build_node's collector only
