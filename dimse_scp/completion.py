"""When is a study complete? (PS3.4 has no "study complete" message.)

A study is complete when the association that carried it is released, or when
no new instance arrived for it for the quiet period, whichever comes first.
Then exactly one job for it goes into the persistent queue
(:meth:`radnode_core.jobs.JobQueue.enqueue_if_due` is atomic, so the release and the
quiet-period sweeper can race harmlessly). An aborted association leaves its
studies to the sweeper: what was acknowledged is stored and will be analysed.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict

from radnode_core.jobs import CompletionReason, JobQueue
from radnode_core.metrics import Metrics

logger = logging.getLogger(__name__)


class CompletionTracker:
    def __init__(self, queue: JobQueue, quiet_period_s: float, metrics: Metrics) -> None:
        self.queue = queue
        self.quiet_period_s = quiet_period_s
        self.metrics = metrics
        self._lock = threading.Lock()
        self._by_association: dict[int, set[str]] = defaultdict(set)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- association events --------------------------------------------------------

    def instance_stored(self, association_id: int, study_uid: str) -> None:
        with self._lock:
            self._by_association[association_id].add(study_uid)

    def association_released(self, association_id: int) -> None:
        with self._lock:
            study_uids = self._by_association.pop(association_id, set())
        for study_uid in sorted(study_uids):
            self.complete(study_uid, "released")

    def association_ended(self, association_id: int) -> None:
        """Aborted or dropped: forget the association; the sweeper completes its studies."""
        with self._lock:
            self._by_association.pop(association_id, None)

    def complete(self, study_uid: str, reason: CompletionReason) -> int | None:
        job_id = self.queue.enqueue_if_due(study_uid, reason)
        if job_id is not None:
            self.metrics.studies_completed.labels(reason=reason).inc()
        return job_id

    # -- quiet-period sweeper ------------------------------------------------------

    def sweep(self) -> int:
        """Queue every study that has been quiet for the quiet period. Returns jobs queued."""
        queued = 0
        for study_uid in self.queue.due_quiet_studies(self.quiet_period_s):
            if self.complete(study_uid, "quiet") is not None:
                queued += 1
        return queued

    def start(self) -> None:
        interval = min(1.0, max(0.05, self.quiet_period_s / 4))

        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    self.sweep()
                except Exception:  # the sweeper must outlive a database hiccup
                    logger.exception("quiet-period sweep failed; retrying")

        self._thread = threading.Thread(target=run, name="radnode-completion", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
