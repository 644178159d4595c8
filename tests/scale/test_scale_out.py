"""Scale-out on PostgreSQL: 2 receivers and 3 workers share one data dir and one database.

20 synthetic chest CTs go out concurrently from four ``storescu`` processes, split over
both receivers; one worker is SIGKILLed while it holds a job. Afterwards every study
has exactly one job, one current result and one SR, every sent instance is both on disk
and in the index, and the queue is empty: the dead worker's lease expired and another
worker finished its study (the k8s radnode-scp / radnode-worker Deployments, tested
as processes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from sqlalchemy import func, select

from ai_node.synth import StudySpec, write_study
from ai_node.tables import results
from radnode_core.index import Index, instances, jobs
from radnode_core.jobs import JobQueue
from tests.support.postgres import PostgresServer
from tests.support.radnode_process import RadnodeProcess, WorkerProcess
from tests.support.tools import storescu
from tests.support.wait import wait_for

STUDIES = 20
SENDERS = 4
LEASE_S = 10.0
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


@pytest.fixture
def pg() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


def _studies(root: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for i in range(STUDIES):
        spec = StudySpec(region="chest", slices=16 + (i % 3) * 4, nodules=i % 2, seed=100 + i,
                         rows=128, columns=128, pixel_spacing_mm=2.8)
        study, paths = write_study(spec, root / f"s{i:02d}")
        out[study.study_instance_uid] = paths
    return out


def _held_by(index: Index, pid: int) -> int | None:
    """The id of a job the worker process ``pid`` holds right now, if any."""
    with index.engine.connect() as conn:
        return conn.execute(
            select(jobs.c.id).where(
                jobs.c.state == "running", jobs.c.lease_owner.like(f"%:{pid}:%")
            ).limit(1)
        ).scalar()


def test_two_receivers_three_workers_one_killed_every_study_once(tmp_path, pg):
    sent = _studies(tmp_path / "in")
    data = tmp_path / "shared"
    # A long quiet period: each study completes when its association is released, so
    # one version per study is expected and any second job would be a real duplicate.
    common = ("--database-url", pg.url, "--quiet-period", "120", "--log-format", "text")
    env = {"RADNODE_JOB_LEASE_S": str(LEASE_S), "RADNODE_WORKER_POLL_S": "0.1"}
    receivers = [RadnodeProcess(data, "scp", *common, env=env) for _ in range(2)]
    workers = [WorkerProcess(data, "worker", *common, env=env) for _ in range(3)]
    api = RadnodeProcess(data, "api", *common, env=env)  # /metrics: what the HPA reads
    index = Index(pg.url)
    try:
        for w in workers:  # they import TensorFlow: start them first, in parallel
            w.start()
        starters = [threading.Thread(target=r.start) for r in receivers]
        for t in starters:
            t.start()
        for t in starters:
            t.join()
        api.start()
        for w in workers:
            w.wait_warm()

        uids = sorted(sent)
        batches = [uids[k::SENDERS] for k in range(SENDERS)]
        outcomes: list[subprocess.CompletedProcess[str]] = []

        def send(k: int) -> None:
            files = [p for uid in batches[k] for p in sent[uid]]
            outcomes.append(storescu(receivers[k % 2].dicom_port, files, timeout=300))

        senders = [threading.Thread(target=send, args=(k,)) for k in range(SENDERS)]
        for t in senders:
            t.start()

        # Kill one worker while it holds a job (its lease, not a queued row, must recover).
        victim = workers[0]
        assert victim.proc is not None
        victim_pid = victim.proc.pid

        def frozen_holding_a_job() -> int | None:
            if _held_by(index, victim_pid) is None:
                return None
            # Freeze it, then check it still holds the job: it cannot finish it meanwhile.
            os.kill(victim_pid, signal.SIGSTOP)
            held = _held_by(index, victim_pid)
            if held is None:
                os.kill(victim_pid, signal.SIGCONT)
            return held

        killed_job = wait_for(frozen_holding_a_job, timeout=180, interval=0.02,
                              what="the victim worker to hold a job")
        victim.kill()

        for t in senders:
            t.join()
        codes = [o.returncode for o in outcomes]
        assert codes == [0] * SENDERS, [o.stderr[-999:] for o in outcomes]

        queue = JobQueue(index)

        def drained() -> tuple[int, int] | None:
            open_jobs = queue.depth()
            with index.engine.connect() as conn:
                finished = conn.execute(
                    select(func.count()).select_from(results).where(
                        results.c.status.in_(("done", "out_of_scope"))
                    )
                ).scalar_one()
            return (open_jobs, finished) if open_jobs == 0 and finished >= STUDIES else None

        counts = wait_for(drained, timeout=240, interval=0.5, what="the queue to drain")
        assert counts == (0, STUDIES), "the queue did not drain"

        with index.engine.connect() as conn:
            job_rows = [dict(r._mapping) for r in conn.execute(select(jobs))]
            result_rows = [dict(r._mapping) for r in conn.execute(select(results))]
            instance_rows = [dict(r._mapping) for r in conn.execute(select(instances))]

        # One job per study, done; the killed worker's job was claimed again and finished.
        assert sorted(r["study_uid"] for r in job_rows) == uids
        assert {r["state"] for r in job_rows} == {"done"}
        [retried] = [r for r in job_rows if r["id"] == killed_job]
        assert retried["attempts"] >= 2 and f":{victim_pid}:" not in retried["lease_owner"]

        # One current result per study, with the SR it names.
        assert sorted(r["study_uid"] for r in result_rows) == uids
        by_study: dict[str, list[dict]] = {}
        for row in instance_rows:
            by_study.setdefault(row["study_uid"], []).append(row)
        for res in result_rows:
            srs = [r["sop_instance_uid"] for r in by_study[res["study_uid"]]
                   if r["sop_class_uid"].startswith(SR_CLASS_PREFIX)]
            assert srs == [res["sr_sop_instance_uid"]]

        # No instance lost: index and files equal exactly what was sent (plus the SRs).
        for uid, files in sent.items():
            images = {r["sop_instance_uid"] for r in by_study[uid]
                      if not r["sop_class_uid"].startswith(SR_CLASS_PREFIX)}
            assert images == {str(dcmread(p, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
                              for p in files}
        on_disk = list((data / "studies").rglob("*.dcm"))
        assert len(on_disk) == len(instance_rows) == sum(map(len, sent.values())) + STUDIES
        indexed_paths = {r["path"] for r in instance_rows}
        assert {p.relative_to(data).as_posix() for p in on_disk} == indexed_paths

        # The API process reads the shared queue and index for Prometheus.
        metrics = httpx.get(f"http://127.0.0.1:{api.http_port}/metrics", timeout=30).text
        assert "radnode_queue_depth 0.0" in metrics
        assert f'radnode_index_objects{{level="instances"}} {len(instance_rows)}.0' in metrics
    finally:
        for proc in (*workers, *receivers, api):
            if proc.proc is not None:
                proc.stop()
        index.close()
