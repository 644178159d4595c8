"""Radiologist feedback on AI results: recorded in the index, as DICOM and in the audit log.

One call of :meth:`FeedbackService.record` judges one model's result of the study's newest
analysed version (``model``; by default the study's lead result, the highest positive
probability over its models):

* ``confirm``: the radiologist stands by the AI's label;
* ``relabel``: the radiologist gives the correct label, one of that model's two labels
  (negative, positive; the shipped finding model's are
  :data:`ai_node.labels.FINDING_LABELS`), with an optional comment.

The judged model is recorded with the judgement, so each model gets its own labels.

Either way a verified SR superseding the judged one is built (:mod:`ai_node.feedback_sr`),
stored in the study (source ``feedback``, not analysed again), queued for the PACS peers
like the AI SR, recorded in the ``feedback`` table (who, when, decision, label, comment,
model version judged) and written to the audit log (logger ``radnode_core.audit``).

Documented behaviour at the edges (docs/viewer.md):

* a study the node has never seen: :class:`UnknownStudy` (404);
* a study without a finished AI result (pending, running, failed), or without a result of
  the named model: :class:`NoResult` (409) and nothing is recorded;
* the client judged an older result than the newest (``sr_sop_instance_uid`` given and
  different): :class:`StaleResult` (409);
* twice on the same result: the same reviewer repeating the current decision, label and
  comment gets the existing record back (``created`` false, nothing new: a double click);
  anything else is a new judgement that supersedes the previous one, its SR naming the
  previous feedback SR as predecessor; the newest judgement of a result is its label.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Literal

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import func, select

from ai_node.feedback_sr import build_feedback_sr
from ai_node.labels import FINDING_LABELS
from ai_node.pipeline import encode
from ai_node.results import ResultStore, lead_rows, routing_summary
from ai_node.tables import feedback
from radnode_core.index import studies, utcnow
from radnode_core.node import Node, ResultSummary

logger = logging.getLogger(__name__)
audit = logging.getLogger("radnode_core.audit")

Decision = Literal["confirm", "relabel"]


class FeedbackError(Exception):
    """Feedback that cannot be recorded; the HTTP route maps each kind to a status."""


class UnknownStudy(FeedbackError):
    pass


class NoResult(FeedbackError):
    pass


class StaleResult(FeedbackError):
    pass


class BadLabel(FeedbackError):
    pass


@dataclass(frozen=True)
class Reviewer:
    """Who judges: an identifier for the index and the audit log, and a DICOM person name."""

    user: str
    observer_name: str
    role: str | None = None


def _iso(value: Any) -> str | None:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat()
    return None if value is None else str(value)


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A feedback row as the API shows it."""
    out = {k: v for k, v in row.items() if k != "created_at"}
    out["created_at"] = _iso(row.get("created_at"))
    return out


class FeedbackService:
    """Records and lists feedback for one node (its index, store, ingestor and settings)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.results = ResultStore(node.index)

    # -- queries -------------------------------------------------------------------

    def for_study(self, study_uid: str) -> list[dict[str, Any]]:
        with self.node.index.engine.connect() as conn:
            rows = conn.execute(
                select(feedback)
                .where(feedback.c.study_uid == study_uid)
                .order_by(feedback.c.id.desc())
            )
            return [public(dict(r._mapping)) for r in rows]

    def _latest(self, study_uid: str, version: int, model: str) -> dict[str, Any] | None:
        with self.node.index.engine.connect() as conn:
            row = conn.execute(
                select(feedback)
                .where(
                    feedback.c.study_uid == study_uid,
                    feedback.c.result_version == version,
                    feedback.c.model_name == model,
                )
                .order_by(feedback.c.id.desc())
                .limit(1)
            ).first()
        return dict(row._mapping) if row else None

    def worklist(
        self,
        *,
        reviewed: bool | None = None,
        label: str | None = None,
        status: str | None = None,
        date_from: str | None = None,
        date_to: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, list[dict[str, Any]]]:
        """Each study's lead result (its newest version's highest positive probability over
        models) with its study attributes and newest judgement, highest score first
        (triage), unscored last; ``flagged_by`` names the models whose label is positive."""
        lead = lead_rows()
        last_fb = (
            select(feedback.c.study_uid, func.max(feedback.c.id).label("fid"))
            .group_by(feedback.c.study_uid, feedback.c.result_version)
            .where(
                feedback.c.result_version
                == select(func.max(lead.c.version))
                .where(lead.c.study_uid == feedback.c.study_uid)
                .scalar_subquery()
            )
            .subquery()
        )
        query = (
            select(
                lead,
                studies.c.patient_id,
                studies.c.patient_name,
                studies.c.study_date,
                studies.c.study_description,
                studies.c.accession_number,
                feedback.c.decision.label("fb_decision"),
                feedback.c.label.label("fb_label"),
                feedback.c.user.label("fb_user"),
                feedback.c.created_at.label("fb_at"),
            )
            .join(studies, studies.c.study_uid == lead.c.study_uid)
            .outerjoin(last_fb, last_fb.c.study_uid == lead.c.study_uid)
            .outerjoin(feedback, feedback.c.id == last_fb.c.fid)
        )
        if reviewed is True:
            query = query.where(feedback.c.id.is_not(None))
        elif reviewed is False:
            query = query.where(feedback.c.id.is_(None))
        if label is not None:
            query = query.where(lead.c.label == label)
        if status is not None:
            query = query.where(lead.c.status == status)
        if date_from:
            query = query.where(studies.c.study_date >= date_from)
        if date_to:
            query = query.where(studies.c.study_date <= date_to)
        total, rows = self.results.triage_page(query, lead, limit, offset)
        per_study = self.results.models_of((m["study_uid"], m["version"]) for m in rows)
        items = []
        for m in rows:
            models = per_study.get((m["study_uid"], m["version"]), [])
            items.append(
                {
                    "study_uid": m["study_uid"],
                    "version": m["version"],
                    "model": m["model_name"] or None,
                    "status": m["status"],
                    "score": m["score"],
                    "label": m["label"],
                    "model_version": m["model_version"],
                    "flagged_by": [x["model"] for x in models if x["flagged"]],
                    "models": models,
                    "patient_id": m["patient_id"],
                    "patient_name": m["patient_name"],
                    "study_date": m["study_date"],
                    "study_description": m["study_description"],
                    "accession_number": m["accession_number"],
                    "finished_at": _iso(m["finished_at"]),
                    "review": None
                    if m["fb_decision"] is None
                    else {
                        "decision": m["fb_decision"],
                        "label": m["fb_label"],
                        "user": m["fb_user"],
                        "created_at": _iso(m["fb_at"]),
                    },
                }
            )
        return int(total), items

    # -- recording -----------------------------------------------------------------

    def _open(self, sop_instance_uid: str, *, pixels: bool) -> Dataset | None:
        row = self.node.index.find_instance(sop_instance_uid)
        if row is None:
            return None
        ds: Dataset = self.node.store.open_dataset(str(row["path"]), stop_before_pixels=not pixels)
        return ds

    def _evidence(self, predecessor: Dataset) -> list[Dataset]:
        uids = [
            str(sop.ReferencedSOPInstanceUID)
            for study in predecessor.get("CurrentRequestedProcedureEvidenceSequence", [])
            for series in study.get("ReferencedSeriesSequence", [])
            for sop in series.get("ReferencedSOPSequence", [])
        ]
        headers = [self._open(uid, pixels=False) for uid in dict.fromkeys(uids)]
        return [ds for ds in headers if ds is not None]

    def record(
        self,
        study_uid: str,
        decision: Decision,
        reviewer: Reviewer,
        *,
        label: str | None = None,
        comment: str | None = None,
        sr_sop_instance_uid: str | None = None,
        model: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Record one judgement of a model's result (default: the study's lead result) of
        the study's newest version; returns (record, created)."""
        lead = self.results.study_result(study_uid)
        if lead is None:
            raise UnknownStudy("unknown study")
        result = lead
        if model is not None:
            mine = [r for r in lead.get("results", []) if r.get("model") == model]
            if not mine:
                raise NoResult(f"no result of model {model!r} for the study's newest version")
            result = mine[0]
        model_name = str(result.get("model") or "")
        ai_sr_uid = result.get("sr_sop_instance_uid")
        if result["status"] not in ("done", "out_of_scope") or not ai_sr_uid:
            raise NoResult(f"no AI result to judge yet (status {result['status']})")
        if sr_sop_instance_uid is not None and sr_sop_instance_uid != ai_sr_uid:
            raise StaleResult("the AI result judged is not the study's newest one")
        ai_label = result.get("label")
        vocabulary = tuple((result.get("details") or {}).get("labels") or FINDING_LABELS)
        if decision == "confirm":
            if label is not None and label != ai_label:
                raise BadLabel("confirm takes the AI's label; relabel to change it")
            label = ai_label
        else:
            if label not in vocabulary:
                raise BadLabel(f"label must be one of: {', '.join(vocabulary)}")
            if label == ai_label:
                raise BadLabel("that is the AI's label: confirm it instead")
        assert label is not None
        comment = (comment or "").strip() or None
        version = int(result["version"])
        previous = self._latest(study_uid, version, model_name)
        if (
            previous is not None
            and previous["user"] == reviewer.user
            and previous["decision"] == decision
            and previous["label"] == label
            and previous["comment"] == comment
        ):
            return public(previous), False

        predecessor_uid = previous["sr_sop_instance_uid"] if previous else str(ai_sr_uid)
        predecessor = self._open(predecessor_uid, pixels=True)
        if predecessor is None:
            raise NoResult("the SR being judged is no longer in the store")
        evidence = self._evidence(predecessor)
        count = 0 if previous is None else int(previous["id"])
        sr = build_feedback_sr(
            predecessor,
            evidence,
            observer_name=reviewer.observer_name,
            organization=self.node.settings.verifying_organization,
            label=label if label in vocabulary else None,
            present=(label == vocabulary[-1]) if label in vocabulary else None,
            decision=decision,
            feedback_key=f"{count}|{reviewer.user}|{decision}|{label}|{comment or ''}",
        )
        self.node.ingestor.ingest(
            encode(sr), ExplicitVRLittleEndian, source="feedback", analyze=False
        )
        row = {
            "study_uid": study_uid,
            "result_version": version,
            "ai_sr_sop_instance_uid": str(ai_sr_uid),
            "decision": decision,
            "label": label,
            "ai_label": ai_label,
            "comment": comment,
            "model_version": result.get("model_version"),
            "model_name": model_name,
            "user": reviewer.user,
            "observer_name": reviewer.observer_name,
            "sr_sop_instance_uid": str(sr.SOPInstanceUID),
            "predecessor_sop_instance_uid": predecessor_uid,
            "created_at": utcnow(),
        }
        with self.node.index.transaction() as conn:
            row["id"] = conn.execute(
                feedback.insert().values(**row).returning(feedback.c.id)
            ).scalar_one()
        self._queue_for_pacs(study_uid, str(sr.SOPInstanceUID), routing_summary(result, label))
        self.node.audit.feedback(
            study_uid, user=reviewer.user, decision=decision, sr_sop_class_uid=str(sr.SOPClassUID)
        )
        audit.info(
            "AI result judged",
            extra={
                "event": "feedback",
                "user": reviewer.user,
                "role": reviewer.role,
                "study_uid": study_uid,
                "result_version": version,
                "decision": decision,
                "label": label,
                "ai_label": ai_label,
                "model": model_name or None,
                "model_version": result.get("model_version"),
                "sr_sop_instance_uid": row["sr_sop_instance_uid"],
                "predecessor_sop_instance_uid": predecessor_uid,
            },
        )
        return public(row), True

    def _queue_for_pacs(self, study_uid: str, sr_uid: str, result: ResultSummary) -> None:
        """Send the feedback SR to the PACS peers the way the AI SR goes (the node's delivery),
        routed by the radiologist's label."""
        if self.node.deliver is not None:
            self.node.deliver(study_uid, sr_uid, result)
