"""The persistent job queue: one job per study version, leases, retries, no loss."""

from __future__ import annotations

import threading
import time

import pytest

from ai_node.results import ResultStore
from radnode_core.index import Index, InstanceRecord
from radnode_core.jobs import JobQueue


@pytest.fixture
def index(tmp_path):
    idx = Index(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    yield idx
    idx.close()


def _add(index: Index, study: str, n: int, start: int = 0, at: float | None = None) -> None:
    for i in range(start, start + n):
        index.add_instance(
            InstanceRecord(
                sop_instance_uid=f"{study}.{i}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                series_uid=f"{study}.0",
                study_uid=study,
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=f"studies/{study}/{i}.dcm",
                size=10,
                received_at=at if at is not None else time.time(),
            )
        )


def test_enqueue_is_once_per_version_and_later_instances_make_a_new_version(index):
    queue = JobQueue(index)
    _add(index, "1.2.3", 5)
    first = queue.enqueue_if_due("1.2.3", "released")
    assert first is not None
    assert queue.enqueue_if_due("1.2.3", "quiet") is None  # nothing new
    _add(index, "1.2.3", 3, start=5)
    second = queue.enqueue_if_due("1.2.3", "quiet")
    assert second is not None and second != first
    assert [(j["version"], j["reason"]) for j in queue.jobs_for("1.2.3")] == [
        (5, "released"),
        (8, "quiet"),
    ]


def test_duplicates_do_not_make_a_new_version(index):
    queue = JobQueue(index)
    _add(index, "1.2.3", 4)
    assert queue.enqueue_if_due("1.2.3", "released") is not None
    _add(index, "1.2.3", 4)  # the same SOP Instance UIDs again
    assert queue.enqueue_if_due("1.2.3", "released") is None


def test_quiet_studies_are_found_only_after_the_quiet_period(index):
    queue = JobQueue(index)
    now = time.time()
    _add(index, "1.1", 2, at=now - 10)
    _add(index, "2.2", 2, at=now)
    assert queue.due_quiet_studies(2.0, now=now) == ["1.1"]
    queue.enqueue_if_due("1.1", "quiet")
    assert queue.due_quiet_studies(2.0, now=now) == []


def test_concurrent_enqueue_and_claim_give_each_job_to_exactly_one_worker(index):
    queue = JobQueue(index)
    studies = [f"9.{i}" for i in range(40)]
    for s in studies:
        _add(index, s, 2)
    barrier = threading.Barrier(4)
    queued: list[int | None] = []

    def race_enqueue() -> None:
        barrier.wait()
        for s in studies:
            queued.append(queue.enqueue_if_due(s, "quiet"))

    threads = [threading.Thread(target=race_enqueue) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(j for j in queued if j is not None) == list(range(1, 41))

    claimed: dict[str, list[int]] = {f"w{i}": [] for i in range(4)}

    def work(name: str) -> None:
        while (job := queue.claim(name)) is not None:
            claimed[name].append(job.id)
            assert queue.complete(job, name)

    threads = [threading.Thread(target=work, args=(n,)) for n in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_ids = sorted(i for ids in claimed.values() for i in ids)
    assert all_ids == list(range(1, 41))
    assert queue.depth() == 0


def test_expired_lease_is_reclaimed_and_gives_up_after_max_attempts(index):
    queue = JobQueue(index, lease_s=10, max_attempts=2)
    queue.on_give_up(ResultStore.fail_abandoned)  # as the AI pipeline registers it
    _add(index, "5.5", 1)
    queue.enqueue_if_due("5.5", "released")
    now = time.time()
    job = queue.claim("dead-worker", now=now)
    assert job is not None and job.attempts == 1
    # the worker marks the study's result running, then dies (as ai_node.pipeline does)
    results = ResultStore(index)
    results.upsert("5.5", job.version, job.id, status="running", error=None)
    assert queue.claim("other", now=now + 5) is None  # lease still held
    again = queue.claim("other", now=now + 11)  # dead-worker's lease expired
    assert again is not None and again.id == job.id and again.attempts == 2
    assert not queue.complete(job, "dead-worker")  # the old owner cannot complete it any more
    assert queue.claim("third", now=now + 30) is None  # third expiry: failed for good, not dropped
    [row] = queue.jobs_for("5.5")
    assert row["state"] == "failed" and "lease expired" in row["error"]
    # ... and the result says so: not "running" forever
    result = results.get("5.5", job.version)
    assert result is not None and result["status"] == "failed"
    assert "lease expired" in result["error"] and result["finished_at"] is not None


def test_failure_is_retried_with_backoff_then_marked_failed(index):
    queue = JobQueue(index, max_attempts=2)
    _add(index, "6.6", 1)
    queue.enqueue_if_due("6.6", "released")
    job = queue.claim("w")
    assert job is not None
    assert queue.fail(job, "w", "boom", retry_delay_s=0.2) == "queued"
    assert queue.claim("w") is None  # backing off
    time.sleep(0.25)
    job = queue.claim("w")
    assert job is not None and job.attempts == 2
    assert queue.fail(job, "w", "boom again") == "failed"
    [row] = queue.jobs_for("6.6")
    assert (row["state"], row["error"]) == ("failed", "boom again")
    assert queue.depth() == 0


def test_derived_objects_do_not_make_a_study_due_again(index):
    queue = JobQueue(index)
    _add(index, "7.7", 3)
    assert queue.enqueue_if_due("7.7", "released") is not None
    index.add_instance(
        InstanceRecord(
            sop_instance_uid="7.7.sr",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
            series_uid="7.7.99",
            study_uid="7.7",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            path="studies/7.7/sr.dcm",
            size=10,
            received_at=time.time(),
            analyze=False,
        )
    )
    assert queue.enqueue_if_due("7.7", "released") is None
    assert index.get_study("7.7")["num_instances"] == 4
