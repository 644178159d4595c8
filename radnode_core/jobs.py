"""The persistent job queue: one job per completed version of a study.

A study is due for a job while its ``received_seq`` (bumped by every stored
instance) is ahead of its ``queued_seq``. Enqueueing moves ``queued_seq`` up to
``received_seq`` and inserts a job with that version in the same transaction,
so a study is never queued twice for the same instances, and instances that
arrive later make a new version, never a lost update.

Workers claim jobs with a lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; a
single atomic UPDATE on SQLite, whose writers are serialised). While a worker
processes a job it renews the lease (:meth:`JobQueue.keep_alive`), so a lease
only expires when its worker died or hangs, however long a study takes; such a
job is claimed again; after ``max_attempts`` it is marked failed, never silently
dropped.

Running a study again without new instances (:meth:`JobQueue.requeue`, e.g. after a
broken model was replaced) makes a new version of it: ``received_seq`` and
``queued_seq`` move up by one together and one job with that version is queued, so
the new analysis gets its own job and result row and the earlier one stays as it was.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.engine import Connection

from radnode_core.index import Index, jobs, studies, utcnow

logger = logging.getLogger(__name__)

CompletionReason = Literal["released", "quiet", "recovered", "manual", "stow", "pacs", "requeue"]


@dataclass(frozen=True)
class Job:
    id: int
    study_uid: str
    version: int
    attempts: int
    reason: str


GiveUpHook = Callable[[Connection, Job, str, dt.datetime], None]
"""Called in the transaction that fails a job whose worker kept dying: (connection, job,
error, finished_at). The feature that processes jobs marks its own state failed there."""


class JobQueue:
    def __init__(self, index: Index, lease_s: float = 300.0, max_attempts: int = 3) -> None:
        self.index = index
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self._give_up_hooks: list[GiveUpHook] = []

    def on_give_up(self, hook: GiveUpHook) -> None:
        """Register ``hook`` for jobs given up after expired leases (see :data:`GiveUpHook`)."""
        if hook not in self._give_up_hooks:
            self._give_up_hooks.append(hook)

    # -- producers ---------------------------------------------------------------

    def enqueue_if_due(self, study_uid: str, reason: CompletionReason) -> int | None:
        """Queue a job for the study if it has instances no job covers yet.

        Returns the new job's id, or None when nothing was due.
        """
        with self.index.transaction() as conn:
            row = conn.execute(
                update(studies)
                .where(
                    studies.c.study_uid == study_uid, studies.c.received_seq > studies.c.queued_seq
                )
                .values(queued_seq=studies.c.received_seq)
                .returning(studies.c.received_seq)
            ).first()
            if row is None:
                return None
            version = row[0]
            job_id = conn.execute(
                jobs.insert()
                .values(
                    study_uid=study_uid,
                    version=version,
                    state="queued",
                    reason=reason,
                    attempts=0,
                    created_at=utcnow(),
                    available_at=time.time(),
                )
                .returning(jobs.c.id)
            ).scalar_one()
        logger.info(
            "study complete, job queued",
            extra={"study_uid": study_uid, "job_id": job_id, "version": version, "reason": reason},
        )
        return int(job_id)

    def requeue(self, study_uid: str, reason: CompletionReason = "requeue") -> Job | None:
        """Queue one more analysis of a study as it is now, as a new version (module
        docstring). None, and nothing queued, when the study is unknown, has instances no
        job covers yet (it is about to be queued anyway) or has a job queued or running."""
        with self.index.transaction() as conn:
            study = conn.execute(
                select(studies.c.received_seq, studies.c.queued_seq)
                .where(studies.c.study_uid == study_uid)
                .with_for_update()
            ).first()
            if study is None or study.received_seq != study.queued_seq:
                return None
            busy = conn.execute(
                select(jobs.c.id)
                .where(jobs.c.study_uid == study_uid, jobs.c.state.in_(("queued", "running")))
                .limit(1)
            ).first()
            if busy is not None:
                return None
            version = int(study.received_seq) + 1
            conn.execute(
                update(studies)
                .where(studies.c.study_uid == study_uid)
                .values(received_seq=version, queued_seq=version)
            )
            job_id = conn.execute(
                jobs.insert()
                .values(
                    study_uid=study_uid,
                    version=version,
                    state="queued",
                    reason=reason,
                    attempts=0,
                    created_at=utcnow(),
                    available_at=time.time(),
                )
                .returning(jobs.c.id)
            ).scalar_one()
        logger.info(
            "study requeued",
            extra={"study_uid": study_uid, "job_id": job_id, "version": version, "reason": reason},
        )
        return Job(id=int(job_id), study_uid=study_uid, version=version, attempts=0, reason=reason)

    def due_quiet_studies(self, quiet_s: float, now: float | None = None) -> list[str]:
        """Studies with un-queued instances and no new instance for ``quiet_s`` seconds."""
        cutoff = (now if now is not None else time.time()) - quiet_s
        with self.index.engine.connect() as conn:
            return list(
                conn.execute(
                    select(studies.c.study_uid).where(
                        studies.c.received_seq > studies.c.queued_seq,
                        studies.c.last_received_at <= cutoff,
                    )
                ).scalars()
            )

    # -- consumers ---------------------------------------------------------------

    def claim(self, worker_id: str, now: float | None = None) -> Job | None:
        """Claim the oldest available job (or one whose lease expired)."""
        now = time.time() if now is None else now
        claimable = or_(
            and_(jobs.c.state == "queued", jobs.c.available_at <= now),
            and_(jobs.c.state == "running", jobs.c.lease_expires_at < now),
        )
        candidate = (
            select(jobs.c.id)
            .where(claimable)
            .order_by(jobs.c.available_at, jobs.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        with self.index.transaction() as conn:
            row = conn.execute(
                update(jobs)
                .where(jobs.c.id == candidate, claimable)
                .values(
                    state="running",
                    attempts=jobs.c.attempts + 1,
                    lease_owner=worker_id,
                    lease_expires_at=now + self.lease_s,
                )
                .returning(
                    jobs.c.id, jobs.c.study_uid, jobs.c.version, jobs.c.attempts, jobs.c.reason
                )
            ).first()
            if row is None:
                return None
            job = Job(id=row[0], study_uid=row[1], version=row[2], attempts=row[3], reason=row[4])
            if job.attempts > self.max_attempts:
                error = "lease expired too often (worker died while processing)"
                finished = utcnow()
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job.id)
                    .values(state="failed", finished_at=finished, error=error)
                )
                # Whatever the dead worker left "running" must say it failed, or it shows
                # in progress forever (a result silently dropped).
                for hook in self._give_up_hooks:
                    hook(conn, job, error, finished)
                logger.error("job failed: gave up after expired leases", extra={"job_id": job.id})
                return None
        return job

    def renew(self, job: Job, worker_id: str, now: float | None = None) -> bool:
        """Extend a held lease by ``lease_s``. False if the job is no longer this worker's."""
        now = time.time() if now is None else now
        with self.index.transaction() as conn:
            result = conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job.id, jobs.c.state == "running", jobs.c.lease_owner == worker_id
                )
                .values(lease_expires_at=now + self.lease_s)
            )
        return result.rowcount == 1

    @contextmanager
    def keep_alive(self, job: Job, worker_id: str) -> Iterator[None]:
        """Renew the job's lease every third of ``lease_s`` while the block runs.

        A renewal that fails (database briefly away) is retried at the next tick; the
        lease then still has two thirds of its time left.
        """
        stop = threading.Event()

        def renew_until_stopped() -> None:
            while not stop.wait(self.lease_s / 3):
                try:
                    if not self.renew(job, worker_id):
                        logger.warning("job lease lost while processing", extra={"job_id": job.id})
                        return
                except Exception:  # noqa: BLE001 - retried at the next tick
                    logger.warning("job lease renewal failed", extra={"job_id": job.id})

        thread = threading.Thread(
            target=renew_until_stopped, name=f"radnode-lease-{job.id}", daemon=True
        )
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def complete(self, job: Job, worker_id: str) -> bool:
        """Mark a claimed job done. False if the lease was lost to another worker."""
        with self.index.transaction() as conn:
            result = conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job.id, jobs.c.state == "running", jobs.c.lease_owner == worker_id
                )
                .values(state="done", finished_at=utcnow(), lease_expires_at=None, error=None)
            )
        return result.rowcount == 1

    def fail(self, job: Job, worker_id: str, error: str, retry_delay_s: float = 5.0) -> str:
        """Record a failed attempt: requeue with backoff, or fail for good after max attempts."""
        final = job.attempts >= self.max_attempts
        state = "failed" if final else "queued"
        with self.index.transaction() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job.id, jobs.c.lease_owner == worker_id)
                .values(
                    state=state,
                    error=error[:4000],
                    lease_owner=None,
                    lease_expires_at=None,
                    available_at=time.time() + retry_delay_s * 2 ** (job.attempts - 1),
                    finished_at=utcnow() if final else None,
                )
            )
        return state

    # -- inspection --------------------------------------------------------------

    def depth(self) -> int:
        """Jobs waiting or running."""
        with self.index.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(jobs)
                    .where(jobs.c.state.in_(("queued", "running")))
                ).scalar_one()
            )

    def jobs_for(self, study_uid: str) -> list[dict[str, Any]]:
        with self.index.engine.connect() as conn:
            rows = conn.execute(
                select(jobs).where(jobs.c.study_uid == study_uid).order_by(jobs.c.id)
            )
            return [dict(r._mapping) for r in rows]
