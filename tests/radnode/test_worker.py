"""The worker loop: every queued study is processed once; failures are retried, never dropped."""

from __future__ import annotations

import time

from ai_node.worker import Worker
from radnode_core.index import Index, InstanceRecord
from radnode_core.jobs import Job, JobQueue
from radnode_core.metrics import Metrics


def test_worker_processes_each_job_once_and_retries_failures(tmp_path):
    index = Index(f"sqlite:///{tmp_path / 'i.sqlite3'}")
    queue = JobQueue(index, max_attempts=2)
    for s in ("1.1", "2.2", "3.3"):
        index.add_instance(InstanceRecord(
            sop_instance_uid=f"{s}.1", sop_class_uid="1.2", series_uid=f"{s}.0", study_uid=s,
            transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"studies/{s}.dcm", size=1,
            received_at=time.time()))
        queue.enqueue_if_due(s, "released")
    seen: list[str] = []

    def processor(job: Job) -> None:
        seen.append(job.study_uid)
        if job.study_uid == "2.2":
            raise RuntimeError("model exploded")

    worker = Worker(queue, processor, Metrics(), poll_s=0.01, retry_delay_s=0.0)
    while worker.run_once():
        pass
    assert sorted(seen) == ["1.1", "2.2", "2.2", "3.3"]
    states = {s: queue.jobs_for(s)[0]["state"] for s in ("1.1", "2.2", "3.3")}
    assert states == {"1.1": "done", "2.2": "failed", "3.3": "done"}
    assert "model exploded" in str(queue.jobs_for("2.2")[0]["error"])
    text = worker.metrics.exposition().decode()
    assert 'radnode_jobs_finished_total{outcome="done"} 2.0' in text
    assert 'radnode_jobs_finished_total{outcome="failed"} 1.0' in text
    index.close()
