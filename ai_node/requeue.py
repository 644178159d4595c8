"""Running studies through the analysis again: the ones that failed, or the ones a given
model version scored (``radnode results requeue``, ``POST /api/results/requeue``).

A study is selected by its newest result: its status, when it finished, and the models
it records (``results.model_version``, e.g. ``finding:1.0.0,region:1.0.0``; a failed
result records the models active when it failed). Each selected study gets exactly one
new job, as a new version of the study (:meth:`radnode_core.jobs.JobQueue.requeue`), so
the new analysis has its own result row and SR and the old ones stay. A study that
already has a job queued or running, or instances not yet queued, is skipped: it is
about to be analysed anyway. Every requeue is audited (PS3.15 A.5.3.2, 110103) with the
studies it named and who asked.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from ai_node.card import NAME_PATTERN
from ai_node.results import STATUSES, ResultStore
from radnode_core.audit import AuditTrail
from radnode_core.index import Index
from radnode_core.jobs import Job, JobQueue

logger = logging.getLogger(__name__)


def _utc(value: dt.datetime | dt.date) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        value = dt.datetime.combine(value, dt.time())
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


@dataclass(frozen=True)
class Selection:
    """Which studies to run again. ``model_version`` alone means the finding model's."""

    status: str | None = None
    since: dt.datetime | None = None
    model: str | None = None
    model_version: str | None = None

    def __post_init__(self) -> None:
        if self.status is None and self.model_version is None:
            raise ValueError("give a status or a model version: requeueing every study is refused")
        if self.status is not None and self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        if self.model is not None and not re.match(NAME_PATTERN, self.model):
            raise ValueError(f"model must be a model name, got {self.model!r}")
        if self.since is not None:
            object.__setattr__(self, "since", _utc(self.since))

    def matches_models(self, model_version: str | None) -> bool:
        """Whether a result's ``model_version`` names the selected model (and version)."""
        if self.model is None and self.model_version is None:
            return True
        task = self.model or "finding"
        recorded = dict(
            part.split(":", 1) for part in (model_version or "").split(",") if ":" in part
        )
        if task not in recorded:
            return False
        return self.model_version is None or recorded[task] == self.model_version

    def describe(self) -> str:
        parts = [f"status {self.status}"] if self.status else []
        if self.since is not None:
            parts.append(f"since {self.since.isoformat()}")
        if self.model or self.model_version:
            parts.append(f"model {self.model or 'finding'}:{self.model_version or '*'}")
        return ", ".join(parts)


@dataclass
class Outcome:
    selected: list[str] = field(default_factory=list)
    requeued: list[Job] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "selected": len(self.selected),
            "requeued": [
                {"study_uid": j.study_uid, "job_id": j.id, "version": j.version}
                for j in self.requeued
            ],
            "skipped": self.skipped,
        }


def select_studies(index: Index, selection: Selection) -> list[str]:
    """The studies whose newest result fits ``selection``, by Study Instance UID."""
    rows = ResultStore(index).newest(selection.status, selection.since)
    uids = [r["study_uid"] for r in rows if selection.matches_models(r.get("model_version"))]
    return list(dict.fromkeys(uids))


def requeue(
    index: Index,
    queue: JobQueue,
    audit: AuditTrail,
    selection: Selection,
    user: str,
    address: str | None = None,
    dry_run: bool = False,
) -> Outcome:
    """Queue one new analysis of every selected study (module docstring); with
    ``dry_run`` only say which studies that would be."""
    outcome = Outcome(selected=select_studies(index, selection))
    if dry_run:
        return outcome
    for study_uid in outcome.selected:
        job = queue.requeue(study_uid)
        if job is None:
            outcome.skipped.append(study_uid)
        else:
            outcome.requeued.append(job)
    if outcome.requeued:
        audit.analysis_requeued(
            [j.study_uid for j in outcome.requeued],
            user=user,
            address=address,
            selection=selection.describe(),
        )
    logger.info(
        "studies requeued",
        extra={
            "selection": selection.describe(),
            "requeued": len(outcome.requeued),
            "skipped": len(outcome.skipped),
        },
    )
    return outcome
