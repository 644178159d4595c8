"""How the models behave in service: input statistics, drift checks and the dashboard's series.

Everything here is read from the index (the ``results`` and ``feedback`` tables), so the
API, a worker and the embedded single-process node see the same numbers without a
Prometheus: the pipeline records each study's input statistics in its result's
``details["inputs"]``, and the drift checks compare the newest studies of each model with
what its card's ``monitoring`` section expects:

* **positive rate**: the share of positive results over the newest ``window`` done
  results, against the card's ``positive_rate`` band;
* **agreement**: the share of radiologists' judgements that confirm the model, over its
  newest ``window`` judgements, against ``min_agreement`` (once ``min_feedback`` exist);
* **input drift**: the population stability index (PSI) of each input statistic the
  card gives a training distribution for, against ``psi_alert``.

A check needs at least :func:`min_studies` values before it can alert, so one unusual
study does not page anyone. :class:`MonitorCollector` exposes the same numbers as
Prometheus gauges; ``k8s/monitoring/prometheusrule.yaml`` alerts on them.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from ai_node.card import InputDistribution, ModelCard
from ai_node.preprocess import SliceStack
from ai_node.tables import feedback, results
from radnode_core.index import Index, studies, utcnow
from radnode_core.metrics import manufacturer_label

logger = logging.getLogger(__name__)

BODY_HU = -500.0
"""Voxels above it count as inside the body (air and lung parenchyma below)."""

WINDOWS = {
    "24h": (dt.timedelta(hours=24), dt.timedelta(hours=1)),
    "7d": (dt.timedelta(days=7), dt.timedelta(hours=6)),
    "30d": (dt.timedelta(days=30), dt.timedelta(days=1)),
}
"""The dashboard's periods: (how far back, one bucket)."""

PSI_FLOOR = 1e-3
"""An expected share is never taken below this, so an empty bin does not make the PSI
infinite."""


# --------------------------------------------------------------------------- input statistics


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def input_statistics(stack: SliceStack, modality: str | None) -> dict[str, Any]:
    """The input statistics of an analysed series: manufacturer (a bounded label), slice
    thickness and row pixel spacing in mm from its first header, and for CT the mean HU of
    the voxels inside the body."""
    first = stack.headers.get(stack.refs[0].sop_instance_uid) if len(stack) else None
    out: dict[str, Any] = {"manufacturer": "unknown"}
    if first is not None:
        out["manufacturer"] = manufacturer_label(str(first.get("Manufacturer", "") or ""))
        thickness = _number(first.get("SliceThickness"))
        if thickness is not None and thickness > 0:
            out["slice_thickness_mm"] = round(thickness, 3)
        spacing = first.get("PixelSpacing") or first.get("ImagerPixelSpacing")
        if spacing:
            row = _number(spacing[0])
            if row is not None and row > 0:
                out["pixel_spacing_mm"] = round(row, 4)
    if modality == "CT" and len(stack):
        body = stack.hu[stack.hu > BODY_HU]
        if body.size:
            out["mean_hu"] = round(float(body.mean()), 1)
    return out


# --------------------------------------------------------------------------- drift


def psi(expected: InputDistribution, values: Sequence[float] | np.ndarray) -> float:
    """Population stability index of ``values`` against the expected distribution:
    sum over bins of (observed - expected) * ln(observed / expected). The observed shares
    are smoothed by half a study per bin, so a bin the window happens to miss does not
    count as a shift. With ``k`` bins and ``n`` studies an unshifted input still scores
    about (k - 1) / n, hence few bins and windows of about a hundred studies."""
    edges = np.asarray(expected.edges, dtype=float)
    k = len(expected.fractions)
    bins = np.clip(
        np.searchsorted(edges, np.asarray(values, dtype=float), side="right") - 1, 0, k - 1
    )
    counts = np.bincount(bins, minlength=k).astype(float)
    observed = (counts + 0.5) / (len(values) + 0.5 * k)
    e = np.maximum(np.asarray(expected.fractions, dtype=float), PSI_FLOOR)
    return float(np.sum((observed - e) * np.log(observed / e)))


def reference_distribution(
    values: Sequence[float] | np.ndarray, bins: int = 5
) -> InputDistribution:
    """A card's training distribution of a statistic from its values on the training (or
    held-out) data: bins at the quantiles (equal shares, as PSI is usually computed; five,
    since a drift window holds a hundred studies, not thousands). A statistic with one
    value gets a narrow bin around it and an empty one each side, so that any other value
    reads as a shift."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("no values to take a distribution from")
    inner = np.unique(np.round(np.quantile(data, np.linspace(0, 1, bins + 1)[1:-1]), 4))
    low, high = float(data.min()), float(data.max())
    pad = max(abs(high - low) * 0.05, abs(low) * 0.02, 1e-3)
    edges = [
        round(low - pad, 4),
        *[float(e) for e in inner if low < e < high],
        round(high + pad, 4),
    ]
    if len(edges) == 2:  # one value
        edges = [round(low - 2 * pad, 4), edges[0], edges[1], round(high + 2 * pad, 4)]
    counts = np.bincount(
        np.clip(np.searchsorted(np.asarray(edges), data, side="right") - 1, 0, len(edges) - 2),
        minlength=len(edges) - 1,
    )
    fractions = [round(float(c) / data.size, 4) for c in counts]
    fractions[int(np.argmax(fractions))] += round(1.0 - sum(fractions), 4)
    return InputDistribution(edges=edges, fractions=[round(f, 4) for f in fractions])


def binomial_band(rate: float, window: int, sigmas: float = 3.0) -> tuple[float, float]:
    """The band a positive rate measured on held-out data stays in, over ``window`` studies,
    unless the model or its input changed: ``sigmas`` binomial standard deviations."""
    half = sigmas * math.sqrt(rate * (1.0 - rate) / window)
    return round(max(0.0, rate - half), 3), round(min(1.0, rate + half), 3)


def min_studies(window: int) -> int:
    """Fewest studies (values) a positive-rate or input check needs before it may alert."""
    return max(10, window // 2)


@dataclass(frozen=True)
class Alert:
    model: str
    check: str  # positive_rate | agreement | input_<statistic>
    message: str


@dataclass
class ModelDrift:
    """One model's drift checks over its newest studies and judgements."""

    model: str
    version: str
    window: int
    studies: int = 0
    positive_rate: float | None = None
    band: tuple[float, float] | None = None
    judgements: int = 0
    agreement: float | None = None
    min_agreement: float | None = None
    psi: dict[str, float] = field(default_factory=dict)
    psi_alert: float | None = None
    checks: dict[str, bool] = field(default_factory=dict)  # check -> alerting
    alerts: list[Alert] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "window": self.window,
            "studies": self.studies,
            "positive_rate": self.positive_rate,
            "band": list(self.band) if self.band else None,
            "judgements": self.judgements,
            "agreement": self.agreement,
            "min_agreement": self.min_agreement,
            "psi": self.psi,
            "psi_alert": self.psi_alert,
            "alerts": [{"check": a.check, "message": a.message} for a in self.alerts],
        }


def _version_of(model: str, model_version: str | None) -> str:
    """The model's own version in a ``results``/``feedback`` model_version string
    (``finding:1.0.0,region:1.0.0``)."""
    for part in (model_version or "").split(","):
        name, _, version = part.partition(":")
        if name == model and version:
            return version
    return "unknown"


def drift_of(index: Index, card: ModelCard) -> ModelDrift:
    """The drift checks of one model (module docstring), from the index."""
    mon = card.monitoring
    window = mon.window if mon is not None else 100
    drift = ModelDrift(card.name, card.version, window)
    positive = card.outputs.positive_label
    with index.engine.connect() as conn:
        rows = conn.execute(
            select(results.c.label, results.c.details)
            .where(results.c.model_name == card.name, results.c.status == "done")
            .order_by(results.c.finished_at.desc(), results.c.id.desc())
            .limit(window)
        ).all()
        decisions = list(
            conn.execute(
                select(feedback.c.decision)
                .where(feedback.c.model_name == card.name)
                .order_by(feedback.c.created_at.desc(), feedback.c.id.desc())
                .limit(window)
            ).scalars()
        )
    drift.studies = len(rows)
    if rows:
        drift.positive_rate = sum(1 for r in rows if r.label == positive) / len(rows)
    drift.judgements = len(decisions)
    if decisions:
        drift.agreement = sum(1 for d in decisions if d == "confirm") / len(decisions)
    if mon is None:
        return drift
    enough = drift.studies >= min_studies(window)
    if mon.positive_rate is not None:
        drift.band = mon.positive_rate
        low, high = mon.positive_rate
        rate = drift.positive_rate
        out = enough and rate is not None and not low <= rate <= high
        drift.checks["positive_rate"] = out
        if out:
            drift.alerts.append(
                Alert(
                    card.name,
                    "positive_rate",
                    f"positive rate {rate:.0%} over the last {drift.studies} studies is outside "
                    f"the card's band {low:.0%}-{high:.0%}",
                )
            )
    drift.min_agreement = mon.min_agreement
    low_agreement = (
        drift.judgements >= mon.min_feedback
        and drift.agreement is not None
        and drift.agreement < mon.min_agreement
    )
    drift.checks["agreement"] = low_agreement
    if low_agreement:
        assert drift.agreement is not None
        drift.alerts.append(
            Alert(
                card.name,
                "agreement",
                f"radiologists confirmed {drift.agreement:.0%} of the last {drift.judgements} "
                f"judged results, below {mon.min_agreement:.0%}",
            )
        )
    drift.psi_alert = mon.psi_alert
    for statistic, expected in mon.inputs.items():
        values = [
            v
            for r in rows
            if (v := _number(((r.details or {}).get("inputs") or {}).get(statistic))) is not None
        ]
        check = f"input_{statistic}"
        if len(values) < min_studies(window):
            drift.checks[check] = False
            continue
        value = round(psi(expected, values), 4)
        drift.psi[statistic] = value
        drift.checks[check] = value > mon.psi_alert
        if value > mon.psi_alert:
            drift.alerts.append(
                Alert(
                    card.name,
                    check,
                    f"{statistic} has shifted from the training distribution: PSI {value:.2f} "
                    f"over the last {len(values)} studies (alert above {mon.psi_alert})",
                )
            )
    return drift


def feedback_decisions(index: Index) -> dict[tuple[str, str, str], int]:
    """Radiologists' judgements per (model, model version, decision), all time."""
    with index.engine.connect() as conn:
        rows = conn.execute(
            select(
                feedback.c.model_name, feedback.c.model_version, feedback.c.decision, func.count()
            ).group_by(feedback.c.model_name, feedback.c.model_version, feedback.c.decision)
        ).all()
    out: dict[tuple[str, str, str], int] = {}
    for model, model_version, decision, count in rows:
        key = (str(model), _version_of(str(model), model_version), str(decision))
        out[key] = out.get(key, 0) + int(count)
    return out


def last_received(index: Index, study_uid: str) -> float | None:
    """When the study's newest instance arrived (epoch seconds), for its time to result."""
    with index.engine.connect() as conn:
        value = conn.execute(
            select(studies.c.last_received_at).where(studies.c.study_uid == study_uid)
        ).scalar()
    return float(value) if value is not None else None


# --------------------------------------------------------------------------- dashboard series


def _aware(value: Any) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def series(index: Index, period: str, now: dt.datetime | None = None) -> dict[str, Any]:
    """Per model and bucket over ``period`` (24h, 7d, 30d): results by status, positive
    rate, median and 95th percentile seconds per study, median time to result, the median
    of each input statistic, judgements and agreement."""
    span, step = WINDOWS[period]
    now = now or utcnow()
    start = now - span
    n = int(span / step)
    edges = [start + i * step for i in range(n + 1)]
    with index.engine.connect() as conn:
        rows = conn.execute(
            select(
                results.c.model_name,
                results.c.status,
                results.c.label,
                results.c.finished_at,
                results.c.details,
            ).where(results.c.finished_at >= start, results.c.model_name != "")
        ).all()
        judged = conn.execute(
            select(feedback.c.model_name, feedback.c.decision, feedback.c.created_at).where(
                feedback.c.created_at >= start
            )
        ).all()
    models: dict[str, dict[str, Any]] = {}

    def slot(name: str) -> dict[str, Any]:
        if name not in models:
            models[name] = {
                "done": [0] * n,
                "failed": [0] * n,
                "out_of_scope": [0] * n,
                "positive": [0] * n,
                "seconds": [[] for _ in range(n)],
                "to_result": [[] for _ in range(n)],
                "inputs": {},
                "confirm": [0] * n,
                "relabel": [0] * n,
            }
        return models[name]

    def bucket(at: Any) -> int | None:
        i = int((_aware(at) - start) / step)
        return i if 0 <= i < n else None

    for r in rows:
        i = bucket(r.finished_at)
        if i is None or r.status not in ("done", "failed", "out_of_scope"):
            continue
        m = slot(str(r.model_name))
        m[r.status][i] += 1
        details = r.details or {}
        if r.status == "done" and r.label is not None and r.label == details.get("positive_label"):
            m["positive"][i] += 1
        total = _number((details.get("timings") or {}).get("total_s"))
        if total is not None:
            m["seconds"][i].append(total)
        to_result = _number(details.get("time_to_result_s"))
        if to_result is not None:
            m["to_result"][i].append(to_result)
        for statistic, raw in (details.get("inputs") or {}).items():
            number = _number(raw) if statistic != "manufacturer" else None
            if number is not None:
                m["inputs"].setdefault(statistic, [[] for _ in range(n)])[i].append(number)
    for name, decision, created_at in judged:
        i = bucket(created_at)
        if i is not None and decision in ("confirm", "relabel"):
            slot(str(name))[decision][i] += 1
    out: dict[str, Any] = {}
    for name, m in sorted(models.items()):
        seconds, to_result, inputs = m.pop("seconds"), m.pop("to_result"), m.pop("inputs")
        out[name] = {
            **m,
            "positive_rate": [
                p / d if d else None for p, d in zip(m["positive"], m["done"], strict=True)
            ],
            "median_s": [float(np.median(s)) if s else None for s in seconds],
            "p95_s": [float(np.percentile(s, 95)) if s else None for s in seconds],
            "time_to_result_median_s": [float(np.median(s)) if s else None for s in to_result],
            "inputs_median": {
                statistic: [float(np.median(v)) if v else None for v in buckets]
                for statistic, buckets in sorted(inputs.items())
            },
            "agreement": [
                c / (c + r) if c + r else None
                for c, r in zip(m["confirm"], m["relabel"], strict=True)
            ],
        }
    return {
        "period": period,
        "start": start.isoformat(),
        "end": now.isoformat(),
        "edges": [e.isoformat() for e in edges],
        "models": out,
    }


# --------------------------------------------------------------------------- Prometheus


class MonitorCollector(Collector):
    """Index-derived per-model gauges, read at scrape time: the drift checks of every
    active model with a positive label, and the radiologists' judgements per version."""

    def __init__(
        self, index: Index, cards: Callable[[], Iterable[ModelCard]], cache_s: float = 10.0
    ) -> None:
        self.index = index
        self.cards = cards
        self.cache_s = cache_s
        self._cached: tuple[float, list[ModelDrift]] | None = None

    def drifts(self) -> list[ModelDrift]:
        """Every active reporting model's drift (cached for ``cache_s``: each role's scrape
        and the dashboard ask for it)."""
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < self.cache_s:
            return self._cached[1]
        drifts = [drift_of(self.index, card) for card in self.cards() if card.reports]
        self._cached = (now, drifts)
        return drifts

    def collect(self) -> Iterable[Metric]:
        try:
            drifts = self.drifts()
            decided = feedback_decisions(self.index)
        except (SQLAlchemyError, OSError, ValueError) as exc:
            # the scrape still answers with the process's own metrics; the gauges that
            # are missing then are what an absent() alert would notice
            logger.warning("drift gauges unavailable", extra={"error": str(exc)})
            return
        rate = GaugeMetricFamily(
            "radnode_model_positive_rate",
            "Share of positive results over the model's newest window of done results.",
            labels=["model"],
        )
        band = GaugeMetricFamily(
            "radnode_model_positive_rate_band",
            "The positive-rate band the model card expects (bound low or high).",
            labels=["model", "bound"],
        )
        window = GaugeMetricFamily(
            "radnode_model_window_studies",
            "Done results in the model's drift window.",
            labels=["model"],
        )
        agreement = GaugeMetricFamily(
            "radnode_model_agreement",
            "Share of radiologists' judgements confirming the model (its newest window).",
            labels=["model"],
        )
        index_psi = GaugeMetricFamily(
            "radnode_model_input_psi",
            "Population stability index of an input statistic against the card's training "
            "distribution.",
            labels=["model", "statistic"],
        )
        alert = GaugeMetricFamily(
            "radnode_drift_alert",
            "1 while a drift check of the model alerts (positive_rate, agreement, input_*).",
            labels=["model", "check"],
        )
        for d in drifts:
            window.add_metric([d.model], d.studies)
            if d.positive_rate is not None:
                rate.add_metric([d.model], d.positive_rate)
            if d.band is not None:
                band.add_metric([d.model, "low"], d.band[0])
                band.add_metric([d.model, "high"], d.band[1])
            if d.agreement is not None:
                agreement.add_metric([d.model], d.agreement)
            for statistic, value in d.psi.items():
                index_psi.add_metric([d.model, statistic], value)
            for check, alerting in d.checks.items():
                alert.add_metric([d.model, check], 1.0 if alerting else 0.0)
        yield from (rate, band, window, agreement, index_psi, alert)
        decisions = GaugeMetricFamily(
            "radnode_feedback_decisions",
            "Radiologists' judgements of a model's results per model version and decision "
            "(confirm, relabel).",
            labels=["model", "version", "decision"],
        )
        for (model, version, decision), count in sorted(decided.items()):
            decisions.add_metric([model, version, decision], count)
        yield decisions


def observe(
    metrics: Any,
    card: ModelCard,
    status: str,
    label: str | None,
    score: float | None,
    details: dict[str, Any],
) -> None:
    """Count one model's result in the process's metrics (:class:`radnode_core.metrics.
    Metrics`): by status and outcome, its score, seconds, time to result and inputs."""
    name = card.name
    outcome = "none"
    if status == "done" and label is not None:
        outcome = "positive" if label == card.outputs.positive_label else "negative"
    metrics.model_results.labels(model=name, status=status, outcome=outcome).inc()
    total = _number((details.get("timings") or {}).get("total_s"))
    if total is not None:
        metrics.model_inference_seconds.labels(model=name).observe(total)
    if status != "done":
        return
    if score is not None:
        metrics.model_score.labels(model=name).observe(score)
    to_result = _number(details.get("time_to_result_s"))
    if to_result is not None:
        metrics.model_time_to_result_seconds.labels(model=name).observe(to_result)
    inputs = details.get("inputs") or {}
    metrics.input_studies.labels(
        model=name, manufacturer=inputs.get("manufacturer", "unknown")
    ).inc()
    for key, histogram in (
        ("slice_thickness_mm", metrics.input_slice_thickness_mm),
        ("pixel_spacing_mm", metrics.input_pixel_spacing_mm),
        ("mean_hu", metrics.input_mean_hu),
    ):
        value = _number(inputs.get(key))
        if value is not None:
            histogram.labels(model=name).observe(value)
