"""Records of retraining runs (table ``retrain_runs`` in the node's index).

``radnode retrain`` creates a record, sets each step's state as the local runner reports
it, and closes the record with the decision; a run submitted to Kubeflow is recorded as
``submitted`` with its KFP run id (its progress is in the KFP UI). The API lists them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import select, update

from ai_node.retrain import STEPS
from ai_node.tables import retrain_runs
from radnode_core.index import Index, utcnow

STALE_AFTER = dt.timedelta(hours=12)
"""A run still ``running`` after this long is taken for dead (its process was killed)."""


def _iso(value: Any) -> str | None:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat()
    return None


def _public(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    out["started_at"] = _iso(out["started_at"])
    out["finished_at"] = _iso(out["finished_at"])
    return out


class RunStore:
    def __init__(self, index: Index) -> None:
        self.index = index

    def create(
        self,
        trigger: str,
        labels_upto: int = 0,
        status: str = "running",
        model: str = "finding",
    ) -> str:
        run_id = f"run-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        with self.index.transaction() as conn:
            conn.execute(
                retrain_runs.insert().values(
                    run_id=run_id,
                    model_name=model,
                    trigger=trigger,
                    status=status,
                    started_at=utcnow(),
                    steps={step: "pending" for step in STEPS},
                    labels_upto=labels_upto,
                )
            )
        return run_id

    def update(self, run_id: str, **values: Any) -> None:
        if values.get("status") in ("succeeded", "failed"):
            values.setdefault("finished_at", utcnow())
        with self.index.transaction() as conn:
            conn.execute(
                update(retrain_runs).where(retrain_runs.c.run_id == run_id).values(**values)
            )

    def set_step(self, run_id: str, step: str, state: str) -> None:
        run = self.get(run_id)
        if run is None:
            return
        steps = dict(run["steps"])
        steps[step] = state
        self.update(run_id, steps=steps)

    def get(self, run_id: str) -> dict[str, Any] | None:
        with self.index.engine.connect() as conn:
            row = conn.execute(select(retrain_runs).where(retrain_runs.c.run_id == run_id)).first()
        return _public(row) if row else None

    def list(self, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        with self.index.engine.connect() as conn:
            rows = conn.execute(
                select(retrain_runs)
                .order_by(retrain_runs.c.started_at.desc())
                .limit(limit)
                .offset(offset)
            ).all()
        return [_public(r) for r in rows]

    def labels_upto(self, model: str | None = None) -> int:
        """The newest feedback id any run (of ``model``, when given) has seen (a failed run
        too: the trigger then waits for new labels instead of starting the same failing run
        again)."""
        query = select(retrain_runs.c.labels_upto)
        if model is not None:
            query = query.where(retrain_runs.c.model_name == model)
        with self.index.engine.connect() as conn:
            rows = conn.execute(query).all()
        return max((int(r.labels_upto or 0) for r in rows), default=0)

    def running(self) -> bool:
        """True while a run started less than :data:`STALE_AFTER` ago is still running."""
        since = utcnow() - STALE_AFTER
        with self.index.engine.connect() as conn:
            row = conn.execute(
                select(retrain_runs.c.run_id).where(
                    retrain_runs.c.status == "running", retrain_runs.c.started_at > since
                )
            ).first()
        return row is not None
