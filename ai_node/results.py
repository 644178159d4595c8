"""The AI results in the index (the ``results`` table): written by the pipeline, read by the API.

One row per (study, study version, model): every model that was for the study has its own
(``done``, ``out_of_scope`` or ``failed``). The study's own row (model ``""``) says
``running`` while its job runs and is removed when the models' rows are written; it stays
when no model was for the study (``out_of_scope`` with the reason) or the job failed.

A study's **lead** result is its newest version's row with the highest score (the highest
positive probability over its models), then done before out of scope before failed: what
``GET /api/studies/{uid}/result`` answers and what the triage worklist sorts by. The
status a client sees combines it with the job queue: a study whose newest job has no
result yet is ``pending`` (queued) or ``running``; a job parked after its last failed
attempt is ``failed`` with the job's error, so nothing the worker gave up on looks like it
is still coming.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Select, and_, case, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from ai_node.tables import results
from radnode_core.index import Index, jobs, studies, utcnow
from radnode_core.jobs import Job
from radnode_core.node import ResultSummary

STATUSES = ("pending", "running", "done", "out_of_scope", "failed")

STUDY_ROW = ""
"""``model_name`` of a study's own row."""


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat()
    return str(value)


def _status_rank() -> Any:
    return case(
        (results.c.status == "done", 0),
        (results.c.status == "out_of_scope", 1),
        (results.c.status == "failed", 2),
        else_=3,
    )


def lead_rows() -> Any:
    """A subquery of each study's lead result row (module docstring): every column of
    ``results``, one row per study."""
    rank = (
        func.row_number()
        .over(
            partition_by=results.c.study_uid,
            order_by=[
                results.c.version.desc(),
                results.c.score.desc().nulls_last(),
                _status_rank(),
                results.c.model_name,
            ],
        )
        .label("lead_rank")
    )
    ranked = select(results, rank).subquery("ranked")
    return (
        select(*[ranked.c[c.name] for c in results.columns])
        .where(ranked.c.lead_rank == 1)
        .subquery("lead")
    )


class ResultStore:
    """Upserts and queries of the ``results`` table."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def upsert(
        self,
        study_uid: str,
        version: int,
        job_id: int | None,
        model_name: str = STUDY_ROW,
        **values: Any,
    ) -> None:
        """Insert or update the row of (study, version, model); ``values`` are column values."""
        dialect = sqlite if self.index.is_sqlite else postgresql
        now = utcnow()
        row = {
            "study_uid": study_uid,
            "version": version,
            "model_name": model_name,
            "job_id": job_id,
            "created_at": now,
            **values,
        }
        stmt = dialect.insert(results).values(**row)
        keys = ("study_uid", "version", "model_name", "created_at")
        update_ = {k: stmt.excluded[k] for k in row if k not in keys}
        stmt = stmt.on_conflict_do_update(
            index_elements=["study_uid", "version", "model_name"], set_=update_
        )
        with self.index.transaction() as conn:
            conn.execute(stmt)

    def clear_study_row(self, study_uid: str, version: int) -> None:
        """Remove the study's own row of a version (its models' rows now say it all)."""
        with self.index.transaction() as conn:
            conn.execute(
                delete(results).where(
                    results.c.study_uid == study_uid,
                    results.c.version == version,
                    results.c.model_name == STUDY_ROW,
                )
            )

    @staticmethod
    def fail_abandoned(conn: Connection, job: Job, error: str, finished_at: dt.datetime) -> None:
        """Mark the results a dead worker left "running" failed (a :data:`GiveUpHook`)."""
        conn.execute(
            update(results)
            .where(
                results.c.study_uid == job.study_uid,
                results.c.version == job.version,
                results.c.status == "running",
            )
            .values(status="failed", error=error, finished_at=finished_at)
        )

    def get(
        self, study_uid: str, version: int, model_name: str | None = None
    ) -> dict[str, Any] | None:
        """One model's row of a study version; without ``model_name``, the version's lead."""
        query = select(results).where(
            results.c.study_uid == study_uid, results.c.version == version
        )
        if model_name is not None:
            query = query.where(results.c.model_name == model_name)
        query = query.order_by(
            results.c.score.desc().nulls_last(), _status_rank(), results.c.model_name
        ).limit(1)
        with self.index.engine.connect() as conn:
            row = conn.execute(query).first()
        return dict(row._mapping) if row else None

    def rows(self, study_uid: str, version: int) -> list[dict[str, Any]]:
        """Every row of a study version, the lead first."""
        with self.index.engine.connect() as conn:
            found = conn.execute(
                select(results)
                .where(results.c.study_uid == study_uid, results.c.version == version)
                .order_by(results.c.score.desc().nulls_last(), _status_rank(), results.c.model_name)
            )
            return [dict(r._mapping) for r in found]

    def _newest(
        self, conn: Connection, study_uid: str
    ) -> tuple[Any, dict[str, Any] | None, dict[str, Any] | None]:
        study = conn.execute(
            select(studies.c.study_uid, studies.c.received_seq).where(
                studies.c.study_uid == study_uid
            )
        ).first()
        if study is None:
            return None, None, None
        job = conn.execute(
            select(jobs)
            .where(jobs.c.study_uid == study_uid)
            .order_by(jobs.c.version.desc())
            .limit(1)
        ).first()
        lead = lead_rows()
        result = conn.execute(select(lead).where(lead.c.study_uid == study_uid)).first()
        return (
            study,
            dict(job._mapping) if job else None,
            dict(result._mapping) if result else None,
        )

    def study_result(self, study_uid: str) -> dict[str, Any] | None:
        """What the API answers for one study (its lead result, with every model's result
        of that version under ``results``); None when the node has never seen it."""
        with self.index.engine.connect() as conn:
            study, job_row, res_row = self._newest(conn, study_uid)
        if study is None:
            return None
        if res_row is not None and (job_row is None or res_row["version"] >= job_row["version"]):
            out = public(res_row)
            if job_row is not None and job_row["state"] == "failed" and out["status"] == "running":
                out.update(status="failed", error=job_row["error"])
            out["results"] = [
                public(r)
                for r in self.rows(study_uid, int(res_row["version"]))
                if r["model_name"] != STUDY_ROW
            ]
            return out
        if job_row is None:
            return {"study_uid": study_uid, "version": study[1], "status": "pending"}
        status = {"queued": "pending", "running": "running", "failed": "failed"}.get(
            job_row["state"], "pending"
        )
        out = {
            "study_uid": study_uid,
            "version": job_row["version"],
            "status": status,
            "job_id": job_row["id"],
        }
        if status == "failed":
            out["error"] = job_row["error"]
        if res_row is not None:
            out["previous"] = public(res_row)
        return out

    def study_results(self, study_uid: str) -> dict[str, Any] | None:
        """Every model's result of the study's newest analysed version (``items``), with
        the study's status; None when the node has never seen it."""
        lead = self.study_result(study_uid)
        if lead is None:
            return None
        items = lead.pop("results", None)
        if items is None:
            items = []
        return {
            "study_uid": study_uid,
            "version": lead.get("version"),
            "status": lead.get("status"),
            "reason": lead.get("reason"),
            "error": lead.get("error") if not items else None,
            "lead": lead.get("model"),
            "items": items,
        }

    def models_of(self, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], list[dict]]:
        """Per (study, version): each model's summary (model, status, score, label,
        flagged: its label is its positive one), lead first."""
        keys = list(keys)
        out: dict[tuple[str, int], list[dict[str, Any]]] = {k: [] for k in keys}
        if not keys:
            return out
        studies_ = sorted({k[0] for k in keys})
        with self.index.engine.connect() as conn:
            found = conn.execute(
                select(results)
                .where(results.c.study_uid.in_(studies_), results.c.model_name != STUDY_ROW)
                .order_by(results.c.score.desc().nulls_last(), _status_rank(), results.c.model_name)
            )
            for r in found:
                key = (str(r.study_uid), int(r.version))
                if key in out:
                    out[key].append(summary(dict(r._mapping)))
        return out

    def worklist_query(self) -> tuple[Any, Select[Any]]:
        """(lead subquery, a select of its rows) for worklists to filter and page."""
        lead = lead_rows()
        return lead, select(lead)

    def newest(
        self, status: str | None = None, since: dt.datetime | None = None
    ) -> list[dict[str, Any]]:
        """The result rows of each study's newest version (status, model_version,
        finished_at, ...: one per model), with ``status`` and finished (else created) at or
        after ``since`` when given; by study."""
        newest = (
            select(results.c.study_uid, func.max(results.c.version).label("version"))
            .group_by(results.c.study_uid)
            .subquery()
        )
        query = select(results).join(
            newest,
            and_(results.c.study_uid == newest.c.study_uid, results.c.version == newest.c.version),
        )
        if status is not None:
            query = query.where(results.c.status == status)
        if since is not None:
            query = query.where(func.coalesce(results.c.finished_at, results.c.created_at) >= since)
        with self.index.engine.connect() as conn:
            rows = conn.execute(query.order_by(results.c.study_uid)).all()
        return [dict(r._mapping) for r in rows]

    def triage_page(
        self, query: Select[Any], lead: Any, limit: int, offset: int
    ) -> tuple[int, list[dict[str, Any]]]:
        """One page of a worklist ``query`` over lead results ``lead`` in triage order
        (highest score first, then newest), and how many rows the whole query has."""
        with self.index.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(query.subquery())).scalar_one()
            ordered = query.order_by(
                lead.c.score.desc().nulls_last(), lead.c.finished_at.desc(), lead.c.id
            )
            rows = [dict(r._mapping) for r in conn.execute(ordered.limit(limit).offset(offset))]
        return int(total), rows

    def list(
        self,
        status: str | None = None,
        label: str | None = None,
        min_score: float | None = None,
        limit: int = 50,
        offset: int = 0,
        model: str | None = None,
    ) -> tuple[int, list[dict[str, Any]]]:
        """The triage worklist: each study's lead result (its newest version's highest
        positive probability over models), highest first; ``flagged_by`` names the models
        whose label is their positive one, ``models`` summarises each model's result.
        ``model`` keeps the studies that model has a result for."""
        lead, query = self.worklist_query()
        if status is not None:
            query = query.where(lead.c.status == status)
        if label is not None:
            query = query.where(lead.c.label == label)
        if min_score is not None:
            query = query.where(lead.c.score >= min_score)
        if model is not None:
            has = select(results.c.id).where(
                results.c.study_uid == lead.c.study_uid,
                results.c.version == lead.c.version,
                results.c.model_name == model,
            )
            query = query.where(has.exists())
        total, rows = self.triage_page(query, lead, limit, offset)
        per_study = self.models_of((r["study_uid"], r["version"]) for r in rows)
        items = []
        for row in rows:
            item = public(row)
            models = per_study.get((row["study_uid"], row["version"]), [])
            item["models"] = models
            item["flagged_by"] = [m["model"] for m in models if m["flagged"]]
            items.append(item)
        return int(total), items


def summary(row: dict[str, Any]) -> dict[str, Any]:
    """One model's result in a line: what the worklist shows per model."""
    details = row.get("details") or {}
    positive = details.get("positive_label")
    return {
        "model": row.get("model_name") or None,
        "status": row["status"],
        "score": row.get("score"),
        "label": row.get("label"),
        "model_version": row.get("model_version"),
        "flagged": bool(
            row["status"] == "done" and positive is not None and row.get("label") == positive
        ),
    }


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A results row as the API shows it."""
    details = row.get("details") or {}
    out = {
        "study_uid": row["study_uid"],
        "version": row["version"],
        "model": row.get("model_name") or None,
        "status": row["status"],
        "score": row.get("score"),
        "label": row.get("label"),
        "reason": details.get("reason"),
        "model_version": row.get("model_version"),
        "sr_sop_instance_uid": row.get("sr_sop_instance_uid"),
        "error": row.get("error"),
        "job_id": row.get("job_id"),
        "created_at": _iso(row.get("created_at")),
        "finished_at": _iso(row.get("finished_at")),
        "timings": details.get("timings", {}),
        "details": {k: v for k, v in details.items() if k not in ("timings", "slice_scores")},
    }
    return out


def routing_summary(result: dict[str, Any], label: str | None = None) -> ResultSummary:
    """The routing summary of a result as :func:`public` shows it; ``label`` replaces the
    AI's (a radiologist's judgement)."""
    details = result.get("details") or {}
    return ResultSummary(
        label=label if label is not None else result.get("label"),
        score=result.get("score"),
        models=tuple(details.get("model_ids") or ()),
        modality=details.get("modality"),
    )
