"""The job loop of ``radnode worker``: claim a study's job, process it, record the outcome.

The processing itself is a callable handed in (the analysis pipeline, or a
test's function), so the loop's guarantees are testable on their own: a job
is processed by one worker at a time, a failure is retried with backoff and
then marked failed with its error, never dropped.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Protocol

from radnode_core.jobs import Job, JobQueue
from radnode_core.metrics import Metrics

logger = logging.getLogger(__name__)

Processor = Callable[[Job], None]


class Follower(Protocol):
    """Work a processor does beside its jobs while the worker runs (the analysis pipeline
    decodes studies while they arrive, :mod:`ai_node.prefetch`); it calls ``wake`` when a
    job is probably waiting, so the worker looks at once instead of at its next poll."""

    def start(self, wake: Callable[[], None]) -> None: ...

    def stop(self) -> None: ...


class Worker:
    def __init__(
        self,
        queue: JobQueue,
        processor: Processor,
        metrics: Metrics,
        poll_s: float = 0.25,
        worker_id: str | None = None,
        retry_delay_s: float = 5.0,
    ) -> None:
        self.queue = queue
        self.processor = processor
        self.metrics = metrics
        self.poll_s = poll_s
        self.retry_delay_s = retry_delay_s
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> bool:
        """Claim and process one job. Returns False when the queue had none."""
        job = self.queue.claim(self.worker_id)
        if job is None:
            return False
        log_extra = {"job_id": job.id, "study_uid": job.study_uid, "version": job.version}
        try:
            with self.queue.keep_alive(job, self.worker_id):
                self.processor(job)
        except Exception as exc:
            state = self.queue.fail(
                job, self.worker_id, f"{type(exc).__name__}: {exc}", self.retry_delay_s
            )
            self.metrics.jobs_finished.labels(outcome=state).inc()
            logger.exception("job failed", extra={**log_extra, "next_state": state})
            return True
        if self.queue.complete(job, self.worker_id):
            self.metrics.jobs_finished.labels(outcome="done").inc()
            logger.info("job done", extra=log_extra)
        else:
            logger.warning("job lease lost before completion", extra=log_extra)
        return True

    def run(self) -> None:
        """Process jobs until stopped; sleeps only when the queue is empty (at most
        ``poll_s``, less when woken: :meth:`wake`).

        A processor with a ``warm_up()`` (the analysis pipeline: models, traced
        functions) gets it called first, in this thread, so the first study is as
        fast as the next; a failed warm-up is logged and the jobs still run. A processor
        with a ``follower`` (:class:`Follower`) has it started then, and stopped with the
        loop.
        """
        warm_up = getattr(self.processor, "warm_up", None)
        if callable(warm_up):
            try:
                warm_up()
            except Exception:
                logger.exception("processor warm-up failed; continuing without it")
        follower: Follower | None = getattr(self.processor, "follower", None)
        if follower is not None:
            follower.start(self.wake)
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    busy = self.run_once()
                except Exception:  # database unavailable: keep trying
                    logger.exception("worker loop error")
                    busy = False
                if not busy:
                    self._wake.wait(self.poll_s)
        finally:
            if follower is not None:
                follower.stop()

    def wake(self) -> None:
        """Look for a job now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="radnode-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
