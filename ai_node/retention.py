"""What the retention policy needs from the AI node: the studies with a radiologist's label
that the retraining export has not yet taken (radnode_core.retention keeps them)."""

from __future__ import annotations

from sqlalchemy import func, select

from ai_node.tables import feedback, retrain_runs
from radnode_core.index import Index


def exported_upto(index: Index) -> int:
    """The newest feedback id a retraining run's export step completed with."""
    with index.engine.connect() as conn:
        rows = conn.execute(select(retrain_runs.c.labels_upto, retrain_runs.c.steps)).all()
    return max(
        (
            int(r.labels_upto or 0)
            for r in rows
            if isinstance(r.steps, dict) and r.steps.get("export") == "succeeded"
        ),
        default=0,
    )


def labelled_not_exported(index: Index) -> set[str]:
    """Studies whose newest label (feedback row) is newer than anything an export took."""
    upto = exported_upto(index)
    stmt = (
        select(feedback.c.study_uid)
        .group_by(feedback.c.study_uid)
        .having(func.max(feedback.c.id) > upto)
    )
    with index.engine.connect() as conn:
        return set(conn.execute(stmt).scalars())
