"""The labels retraining learns from: radiologists' final judgement per study, per model.

The ``feedback`` table (:mod:`viewer_plugin.feedback`) holds every confirm / relabel of
each model's result, with the model judged (``model_name``); a study's newest row for the
retrained model is its final label, so each model learns from its own labels only. A
label is one of that model's two labels (its card's ``label_vocabulary``: negative,
positive), which are the training targets 0 and 1. ``labels_upto`` (the highest feedback
id a run saw) lets the trigger count the labels that arrived since a model's last run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from ai_node.labels import FINDING_LABELS
from ai_node.tables import feedback
from radnode_core.index import Index


@dataclass(frozen=True)
class FinalLabel:
    study_uid: str
    label: str
    decision: str
    feedback_id: int
    vocabulary: tuple[str, str] = (FINDING_LABELS[0], FINDING_LABELS[1])

    @property
    def target(self) -> int:
        """0 for the model's negative label, 1 for its positive one."""
        return self.vocabulary.index(self.label)

    def as_dict(self) -> dict[str, Any]:
        return {
            "study_uid": self.study_uid,
            "label": self.label,
            "target": self.target,
            "decision": self.decision,
            "feedback_id": self.feedback_id,
        }


RETRAINED_MODEL = "finding"
"""The model the retraining loop retrains unless told another (the shipped finding model)."""


def final_labels(
    index: Index, model: str = RETRAINED_MODEL, vocabulary: Sequence[str] = FINDING_LABELS
) -> list[FinalLabel]:
    """The newest judgement of ``model``'s result of each judged study, by study; only
    labels of ``vocabulary`` (negative, positive: the model's card's) count."""
    vocab = (str(vocabulary[0]), str(vocabulary[1]))
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
        FinalLabel(str(r.study_uid), str(r.label), str(r.decision), int(r.id), vocab)
        for r in rows
        if str(r.label) in vocab
    ]


def label_count_since(index: Index, feedback_id: int, model: str | None = None) -> int:
    """Feedback rows recorded after ``feedback_id`` (new labels since a run); of
    ``model``'s results only, when given."""
    query = select(func.count()).select_from(feedback).where(feedback.c.id > feedback_id)
    if model is not None:
        query = query.where(feedback.c.model_name == model)
    with index.engine.connect() as conn:
        count = conn.execute(query).scalar_one()
    return int(count)


def newest_feedback_id(index: Index, model: str | None = None) -> int:
    """The highest feedback id (of ``model``'s results, when given)."""
    query = select(func.max(feedback.c.id))
    if model is not None:
        query = query.where(feedback.c.model_name == model)
    with index.engine.connect() as conn:
        value = conn.execute(query).scalar()
    return int(value or 0)
