"""The labels retraining learns from: radiologists' final judgement per study.

The ``feedback`` table (:mod:`viewer_plugin.feedback`) holds every confirm / relabel of
each model's result; a study's newest row for the retrained model
(:data:`RETRAINED_MODEL`) is its final label, so each model learns from its own labels.
``labels_upto`` (the highest feedback id a run saw) lets the trigger count the labels that
arrived since the last run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from ai_node.labels import TARGETS
from ai_node.tables import feedback
from radnode_core.index import Index


@dataclass(frozen=True)
class FinalLabel:
    study_uid: str
    label: str
    decision: str
    feedback_id: int

    @property
    def target(self) -> int:
        return TARGETS[self.label]

    def as_dict(self) -> dict[str, Any]:
        return {
            "study_uid": self.study_uid,
            "label": self.label,
            "decision": self.decision,
            "feedback_id": self.feedback_id,
        }


RETRAINED_MODEL = "finding"
"""The model the retraining loop retrains (the shipped finding model)."""


def final_labels(index: Index, model: str = RETRAINED_MODEL) -> list[FinalLabel]:
    """The newest judgement of ``model``'s result of each judged study, by study."""
    newest = (
        select(func.max(feedback.c.id).label("fid"))
        .where(feedback.c.model_name == model)
        .group_by(feedback.c.study_uid)
        .subquery()
    )
    query = (
        select(feedback.c.study_uid, feedback.c.label, feedback.c.decision, feedback.c.id)
        .where(feedback.c.id.in_(select(newest.c.fid)))
        .order_by(feedback.c.study_uid)
    )
    with index.engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        FinalLabel(str(r.study_uid), str(r.label), str(r.decision), int(r.id))
        for r in rows
        if str(r.label) in TARGETS
    ]


def label_count_since(index: Index, feedback_id: int) -> int:
    """Feedback rows recorded after ``feedback_id`` (new labels since a run)."""
    with index.engine.connect() as conn:
        count = conn.execute(
            select(func.count()).select_from(feedback).where(feedback.c.id > feedback_id)
        ).scalar_one()
    return int(count)


def newest_feedback_id(index: Index) -> int:
    with index.engine.connect() as conn:
        value = conn.execute(select(func.max(feedback.c.id))).scalar()
    return int(value or 0)
