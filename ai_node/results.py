"""The AI results in the index (the ``results`` table): written by the pipeline, read by the API.

One row per (study, study version). The status a client sees combines it with the
job queue: a study whose newest job has no result yet is ``pending`` (queued) or
``running``; a job parked after its last failed attempt is ``failed`` with the job's
error, so nothing the worker gave up on looks like it is still coming.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from ai_node.tables import results
from radnode_core.index import Index, jobs, studies, utcnow
from radnode_core.jobs import Job

STATUSES = ("pending", "running", "done", "out_of_scope", "failed")


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat()
    return str(value)


class ResultStore:
    """Upserts and queries of the ``results`` table."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def upsert(self, study_uid: str, version: int, job_id: int | None, **values: Any) -> None:
        """Insert or update the row of (study, version); ``values`` are column values."""
        dialect = sqlite if self.index.is_sqlite else postgresql
        now = utcnow()
        row = {
            "study_uid": study_uid,
            "version": version,
            "job_id": job_id,
            "created_at": now,
            **values,
        }
        stmt = dialect.insert(results).values(**row)
        update = {
            k: stmt.excluded[k] for k in row if k not in ("study_uid", "version", "created_at")
        }
        stmt = stmt.on_conflict_do_update(index_elements=["study_uid", "version"], set_=update)
        with self.index.transaction() as conn:
            conn.execute(stmt)

    @staticmethod
    def fail_abandoned(conn: Connection, job: Job, error: str, finished_at: dt.datetime) -> None:
        """Mark the result a dead worker left "running" failed (a :data:`GiveUpHook`)."""
        conn.execute(
            update(results)
            .where(
                results.c.study_uid == job.study_uid,
                results.c.version == job.version,
                results.c.status == "running",
            )
            .values(status="failed", error=error, finished_at=finished_at)
        )

    def get(self, study_uid: str, version: int) -> dict[str, Any] | None:
        with self.index.engine.connect() as conn:
            row = conn.execute(
                select(results).where(
                    results.c.study_uid == study_uid, results.c.version == version
                )
            ).first()
        return dict(row._mapping) if row else None

    def study_result(self, study_uid: str) -> dict[str, Any] | None:
        """What the API answers for one study; None when the node has never seen it."""
        with self.index.engine.connect() as conn:
            study = conn.execute(
                select(studies.c.study_uid, studies.c.received_seq).where(
                    studies.c.study_uid == study_uid
                )
            ).first()
            if study is None:
                return None
            job = conn.execute(
                select(jobs)
                .where(jobs.c.study_uid == study_uid)
                .order_by(jobs.c.version.desc())
                .limit(1)
            ).first()
            result = conn.execute(
                select(results)
                .where(results.c.study_uid == study_uid)
                .order_by(results.c.version.desc())
                .limit(1)
            ).first()
        job_row = dict(job._mapping) if job else None
        res_row = dict(result._mapping) if result else None
        if res_row is not None and (job_row is None or res_row["version"] >= job_row["version"]):
            out = public(res_row)
            if job_row is not None and job_row["state"] == "failed" and out["status"] == "running":
                out.update(status="failed", error=job_row["error"])
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

    def newest(
        self, status: str | None = None, since: dt.datetime | None = None
    ) -> list[dict[str, Any]]:
        """Each study's newest result row (status, model_version, finished_at, ...), with
        ``status`` and finished (else created) at or after ``since`` when given; by study."""
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

    def list(
        self,
        status: str | None = None,
        label: str | None = None,
        min_score: float | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[int, list[dict[str, Any]]]:
        """The triage worklist: each study's newest result, highest score first."""
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
        if label is not None:
            query = query.where(results.c.label == label)
        if min_score is not None:
            query = query.where(results.c.score >= min_score)
        with self.index.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(query.subquery())).scalar_one()
            rows = conn.execute(
                query.order_by(
                    results.c.score.desc().nulls_last(), results.c.finished_at.desc(), results.c.id
                )
                .limit(limit)
                .offset(offset)
            )
            return int(total), [public(dict(r._mapping)) for r in rows]


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A results row as the API shows it."""
    details = row.get("details") or {}
    out = {
        "study_uid": row["study_uid"],
        "version": row["version"],
        "status": row["status"],
        "score": row.get("score"),
        "label": row.get("label"),
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
