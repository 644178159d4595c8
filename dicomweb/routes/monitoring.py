"""The monitoring dashboard's data (``GET /api/monitoring``), for admins.

Charts of the last 24 h, 7 d or 30 d per model (results by status, positive rate against
the card's band, seconds per study, radiologists' agreement) drawn as SVG on the server
from the index, and each model's drift checks with their alerts
(:mod:`ai_node.monitoring`). Nothing here needs Prometheus: the embedded node shows the
same numbers its ``/metrics`` exports.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query

from ai_node.monitoring import drift_of, series
from ai_node.registry import ModelRegistry, ModelSet
from dicomweb.auth import require_role
from dicomweb.deps import NodeDep
from viewer_plugin.review.charts import Line, chart

router = APIRouter(prefix="/api", tags=["monitoring"])

_admin = require_role(("admin",))

Period = Literal["24h", "7d", "30d"]
PERIOD_DAYS = {"24h": 1, "7d": 7, "30d": 30}
MIB = 1 << 20


def _span(edges: list[str]) -> tuple[str, str]:
    """The period's first and last edge as the charts label them (UTC)."""
    first, last = (dt.datetime.fromisoformat(edges[i]) for i in (0, -1))
    return first.strftime("%m-%d %H:%M"), last.strftime("%m-%d %H:%M")


@router.get("/monitoring", dependencies=[Depends(_admin)])
def monitoring(node: NodeDep, period: Annotated[Period, Query()] = "24h") -> dict[str, Any]:
    """Per model: the period's charts (SVG) and its drift checks; every alert raised."""
    cards = {
        c.name: c
        for c in ModelSet(ModelRegistry(node.settings.models_dir)).active_cards()
        if c.reports
    }
    data = series(node.index, period)
    labels = _span(data["edges"])
    drifts = {name: drift_of(node.index, card) for name, card in sorted(cards.items())}
    models = []
    for name in sorted(set(cards) | set(data["models"])):
        s = data["models"].get(name)
        card = cards.get(name)
        drift = drifts.get(name)
        charts = []
        if s is not None:
            mon = card.monitoring if card is not None else None
            charts = [
                chart(
                    f"{name}: results per bucket",
                    [
                        Line("done", s["done"], "bar"),
                        Line("failed", s["failed"], "bar"),
                        Line("out of scope", s["out_of_scope"], "bar"),
                    ],
                    labels,
                ),
                chart(
                    f"{name}: positive rate",
                    [Line("positive rate", s["positive_rate"])],
                    labels,
                    y_max=1.0,
                    band=mon.positive_rate if mon is not None else None,
                ),
                chart(
                    f"{name}: seconds per study",
                    [
                        Line("median", s["median_s"]),
                        Line("95th percentile", s["p95_s"]),
                        Line("time to result (median)", s["time_to_result_median_s"]),
                    ],
                    labels,
                ),
                chart(
                    f"{name}: agreement with radiologists",
                    [Line("confirmed share", s["agreement"])],
                    labels,
                    y_max=1.0,
                    floor=mon.min_agreement if mon is not None else None,
                ),
            ]
            for statistic, medians in s["inputs_median"].items():
                expected = mon.inputs.get(statistic) if mon is not None else None
                charts.append(
                    chart(
                        f"{name}: {statistic} (median)",
                        [Line(statistic, medians)],
                        labels,
                        band=(expected.edges[0], expected.edges[-1]) if expected else None,
                    )
                )
        totals = {
            k: sum(s[k]) if s is not None else 0
            for k in ("done", "failed", "out_of_scope", "positive", "confirm", "relabel")
        }
        models.append(
            {
                "model": name,
                "version": card.version if card is not None else None,
                "totals": totals,
                "drift": drift.as_dict() if drift is not None else None,
                "charts": charts,
            }
        )
    alerts = [
        {"model": a.model, "check": a.check, "message": a.message}
        for d in drifts.values()
        for a in d.alerts
    ]
    return {
        "period": period,
        "start": data["start"],
        "end": data["end"],
        "models": models,
        "alerts": alerts,
        "storage": _storage(node, period),
    }


def _storage(node: Any, period: Period) -> dict[str, Any]:
    """The retention policy's work over the period (per UTC day: space reclaimed, studies
    deleted), the studies it keeps and why, and the disk in use."""
    days = PERIOD_DAYS[period]
    summary = node.retention.summary(days * 86400.0)
    today = dt.datetime.now(dt.UTC).date()
    names = [(today - dt.timedelta(days=days - 1 - i)).isoformat() for i in range(days)]
    per_day = {d["day"]: d for d in summary["per_day"]}
    span = (names[0], names[-1])
    reclaimed = [per_day[n]["bytes"] / MIB if n in per_day else None for n in names]
    deleted = [float(per_day[n]["studies"]) if n in per_day else None for n in names]
    return {
        **summary,
        "charts": [
            chart("storage: MiB reclaimed per day", [Line("reclaimed", reclaimed, "bar")], span),
            chart("storage: studies deleted per day", [Line("deleted", deleted, "bar")], span),
        ],
    }
