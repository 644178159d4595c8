"""The index and job queue shared by several processes on one real PostgreSQL server.

Each thread here owns its own :class:`Index` (its own engine and connection pool), as
each ``radnode scp`` / ``radnode worker`` process does, so the database's row locks
(``FOR UPDATE SKIP LOCKED``) and the schema lock are what is tested, not a Python lock.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from radnode_core.index import Index, InstanceRecord, jobs
from radnode_core.jobs import JobQueue
from tests.support.postgres import PostgresServer


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


def _fresh_database(pg: PostgresServer, name: str) -> str:
    import psycopg

    with psycopg.connect(
        f"host=127.0.0.1 port={pg.port} user=radnode dbname=postgres", autocommit=True
    ) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg.url.rsplit("/", 1)[0] + f"/{name}"


def _add(index: Index, study: str, n: int) -> None:
    for i in range(n):
        index.add_instance(InstanceRecord(
            sop_instance_uid=f"{study}.{i}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            series_uid=f"{study}.0", study_uid=study, transfer_syntax_uid="1.2.840.10008.1.2.1",
            path=f"studies/{study}/{i}.dcm", size=10, received_at=time.time(),
        ))


def _in_threads(count: int, target, *args) -> list[BaseException]:
    """Run ``target(i, *args)`` in ``count`` threads released together; their exceptions."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            target(i, *args)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return errors


def test_processes_starting_together_on_an_empty_database_all_get_the_schema(pg):
    url = _fresh_database(pg, "schema_race")
    opened: list[Index] = []

    def open_index(_i: int) -> None:
        opened.append(Index(url))

    errors = _in_threads(6, open_index)
    try:
        assert errors == []
        assert len(opened) == 6
        _add(opened[0], "1.9", 1)
        assert opened[5].counts()["instances"] == 1
    finally:
        for index in opened:
            index.close()


def test_concurrent_claims_on_postgres_give_each_job_to_exactly_one_worker(pg):
    url = _fresh_database(pg, "claims")
    producer = Index(url)
    queue = JobQueue(producer)
    studies = [f"7.{i}" for i in range(60)]
    for s in studies:
        _add(producer, s, 2)
    enqueue_errors = _in_threads(
        4, lambda _i: [queue.enqueue_if_due(s, "released") for s in studies]
    )
    assert enqueue_errors == []
    assert queue.depth() == 60  # four producers raced on every study: one job each

    claimed: dict[int, list[int]] = {}

    def work(i: int) -> None:
        index = Index(url)
        own = JobQueue(index, lease_s=60)
        claimed[i] = []
        try:
            while (job := own.claim(f"w{i}")) is not None:
                claimed[i].append(job.id)
                time.sleep(0.005)  # hold the row a while, as a real job does
                assert own.complete(job, f"w{i}")
        finally:
            index.close()

    errors = _in_threads(6, work)
    assert errors == []
    ids = sorted(j for got in claimed.values() for j in got)
    assert len(ids) == 60 and len(set(ids)) == 60
    assert sum(1 for got in claimed.values() if got) >= 2  # the work was really shared
    assert queue.depth() == 0
    with producer.engine.connect() as conn:
        rows = conn.execute(select(jobs.c.state, jobs.c.attempts)).all()
    assert {(r[0], r[1]) for r in rows} == {("done", 1)}
    producer.close()


def test_a_dead_workers_lease_expires_and_only_the_new_owner_completes(pg):
    url = _fresh_database(pg, "leases")
    index = Index(url)
    queue = JobQueue(index, lease_s=1.0, max_attempts=3)
    _add(index, "8.1", 3)
    queue.enqueue_if_due("8.1", "released")
    dead = queue.claim("dead")
    assert dead is not None
    assert queue.claim("alive") is None  # leased
    time.sleep(1.2)  # past the 1 s lease, which nobody renews
    again = queue.claim("alive")
    assert again is not None and again.id == dead.id and again.attempts == 2
    assert not queue.complete(dead, "dead")
    assert queue.complete(again, "alive")
    [row] = queue.jobs_for("8.1")
    assert (row["state"], row["lease_owner"], row["attempts"]) == ("done", "alive", 2)
    index.close()


def test_a_live_worker_keeps_its_lease_however_long_the_study_takes(pg):
    url = _fresh_database(pg, "keep_alive")
    index = Index(url)
    queue = JobQueue(index, lease_s=0.6)
    _add(index, "8.2", 2)
    queue.enqueue_if_due("8.2", "released")
    job = queue.claim("slow")
    assert job is not None
    stolen = []
    with queue.keep_alive(job, "slow"):
        for _ in range(8):  # 2 s: more than three leases
            time.sleep(0.25)
            stolen.append(queue.claim("thief"))
    assert stolen == [None] * 8
    assert queue.complete(job, "slow")
    [row] = queue.jobs_for("8.2")
    assert (row["state"], row["attempts"]) == ("done", 1)
    index.close()


def test_the_worker_probe_passes_on_a_live_index_and_says_why_it_fails(pg, tmp_path):
    import os
    import subprocess

    from tests.support.radnode_process import REPO

    def probe(**env: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("RADNODE_")}
        return subprocess.run([sys.executable, "-m", "radnode.probe"], cwd=REPO, text=True,
                              capture_output=True, env={**clean, **env}, timeout=60)

    data = tmp_path / "data"
    assert probe(RADNODE_DATABASE_URL=pg.url, RADNODE_DATA_DIR=str(data)).returncode == 0
    down = probe(RADNODE_DATABASE_URL=pg.url.replace(str(pg.port), "1"))
    assert down.returncode == 1 and "index unavailable" in down.stderr
    bad = probe(RADNODE_DATABASE_URL=pg.url, RADNODE_DICOM_PORT="not-a-port")
    assert bad.returncode == 2 and "invalid settings" in bad.stderr
    assert not data.exists()  # a probe creates nothing


def test_a_resend_is_a_duplicate_on_postgresql(pg: PostgresServer) -> None:
    """A second C-STORE of an instance is a duplicate, not new data: it must not make the
    study due again (psycopg reports rowcount -1 for a Core INSERT, which once made every
    resend look new on PostgreSQL: a new job version, a second analysis and SR)."""
    from pacs_link.outbox import Outbox

    index = Index(_fresh_database(pg, "resend"))
    try:
        record = InstanceRecord(
            sop_instance_uid="1.2.3.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            series_uid="1.2.3.0", study_uid="1.2.3", transfer_syntax_uid="1.2.840.10008.1.2.1",
            path="studies/1.2.3/1.2.3.0/1.2.3.1.dcm", size=10, received_at=time.time(),
        )
        assert index.add_instance(record) is True
        assert index.add_instance(record) is False
        study = index.get_study("1.2.3")
        assert study is not None and study["received_seq"] == 1
        instance = index.find_instance("1.2.3.1")
        assert instance is not None and instance["duplicates"] == 1
        # the outbox counts what it really queued
        box = Outbox(index)
        assert box.enqueue("pacs", "1.2.3", [("1.2.3.1", "original")]) == 1
        assert box.enqueue("pacs", "1.2.3", [("1.2.3.1", "original")]) == 0
    finally:
        index.close()


def test_health_counts_are_the_planner_estimates_on_postgresql(pg: PostgresServer) -> None:
    """/healthz (the readiness probe) must not count every row of a large index: on
    PostgreSQL it reads pg_class's estimates, exact after ANALYZE; before any, it counts."""
    index = Index(_fresh_database(pg, "estimates"))
    try:
        _add(index, "7.7", 25)
        exact = index.counts()
        assert exact == {"studies": 1, "series": 1, "instances": 25}
        assert index.counts(approximate=True) == exact  # never analysed: counted
        with index.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
        _add(index, "7.8", 5)  # not in the estimates until the next ANALYZE
        assert index.counts(approximate=True) == exact
        assert index.counts()["instances"] == 30
    finally:
        index.close()
