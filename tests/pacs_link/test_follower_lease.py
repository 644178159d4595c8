"""One changes follower per PACS, however many workers: the follower lease.

Unit: the lease on SQLite and on a real PostgreSQL (one holder, renewal, expiry,
release). Processes: two ``radnode worker``s on one PostgreSQL index follow a real
Orthanc; a study sent to Orthanc is fetched once (no duplicate instance) and analysed
once; when the following worker stops, the other one takes the feed over.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from ai_node.synth import StudySpec, write_study
from ai_node.tables import results
from pacs_link.changes import LEASE_KEY
from pacs_link.lease import Lease
from radnode_core.index import Index, instances, jobs
from tests.support.orthanc_peer import OrthancPacs
from tests.support.postgres import PostgresServer
from tests.support.radnode_process import WorkerProcess
from tests.support.tools import storescu
from tests.support.wait import wait_for

SPEC: dict[str, Any] = {
    "region": "chest", "slices": 12, "rows": 128, "columns": 128, "pixel_spacing_mm": 2.8
}
FOLLOWING = "took the PACS changes follower lease"


@pytest.fixture(params=["sqlite", "postgresql"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Index]:
    if request.param == "sqlite":
        idx = Index(f"sqlite:///{tmp_path / 'index.sqlite3'}")
        yield idx
        idx.close()
    else:
        with PostgresServer() as pg:
            idx = Index(pg.url)
            yield idx
            idx.close()


def test_one_holder_renewal_expiry_and_release(index: Index) -> None:
    a = Lease(index, "orthanc", LEASE_KEY, ttl_s=30, holder="a")
    b = Lease(index, "orthanc", LEASE_KEY, ttl_s=30, holder="b")
    assert a.acquire(now=1000.0)
    assert not b.acquire(now=1001.0)
    assert a.acquire(now=1020.0)  # renewed: b still waits
    assert not b.acquire(now=1045.0)
    assert b.acquire(now=1051.0)  # a stopped renewing 31 s ago: b takes over
    assert not a.acquire(now=1052.0)
    a.release()  # not a's to release: nothing changes
    assert not a.acquire(now=1053.0)
    b.release()
    assert a.acquire(now=1054.0)  # released: taken at once
    # another peer's lease is independent
    assert Lease(index, "other-pacs", LEASE_KEY, ttl_s=30, holder="b").acquire(now=1054.0)


def _study_rows(index: Index, study_uid: str) -> tuple[int, int, int, int]:
    """(images, duplicate receipts, jobs, results) of a study in the index."""
    with index.engine.connect() as conn:
        images, duplicates = conn.execute(
            select(func.count(), func.coalesce(func.sum(instances.c.duplicates), 0)).where(
                instances.c.study_uid == study_uid,
                instances.c.sop_class_uid.not_like("1.2.840.10008.5.1.4.1.1.88.%"),
            )
        ).one()
        n_jobs = conn.execute(
            select(func.count()).select_from(jobs).where(jobs.c.study_uid == study_uid)
        ).scalar_one()
        n_results = conn.execute(
            select(func.count()).select_from(results).where(results.c.study_uid == study_uid)
        ).scalar_one()
    return int(images), int(duplicates), int(n_jobs), int(n_results)


def test_two_workers_fetch_each_pacs_study_once_and_hand_over(tmp_path: Path) -> None:
    first, first_files = write_study(StudySpec(**SPEC, seed=71), tmp_path / "a")
    second, second_files = write_study(StudySpec(**SPEC, nodules=1, seed=72), tmp_path / "b")
    data = tmp_path / "data"
    with PostgresServer() as pg, OrthancPacs(tmp_path / "orthanc") as orthanc:
        env = {
            "RADNODE_PACS_PEERS": orthanc.peer_json(follow_changes=True),
            "RADNODE_CHANGES_POLL_S": "0.2",
        }
        workers = [
            WorkerProcess(data, "worker", "--database-url", pg.url, env=env).start()
            for _ in range(2)
        ]
        index = Index(pg.url)
        try:
            for w in workers:
                w.wait_warm()
            wait_for(lambda: sum(FOLLOWING in w.log() for w in workers) == 1, what="a leader")

            sent = storescu(orthanc.dicom_port, first_files, called="ORTHANC")
            assert sent.returncode == 0, sent.stderr
            wait_for(lambda: _study_rows(index, first.study_instance_uid)[3] == 1,
                     what="first result", timeout=180)
            assert _study_rows(index, first.study_instance_uid) == (len(first_files), 0, 1, 1)
            leader, other = sorted(workers, key=lambda w: FOLLOWING not in w.log())
            assert FOLLOWING in leader.log() and FOLLOWING not in other.log()

            # a clean stop releases the lease: the other worker follows from there on
            assert leader.stop() == 0
            wait_for(lambda: FOLLOWING in other.log(), what="hand-over", timeout=60)
            sent = storescu(orthanc.dicom_port, second_files, called="ORTHANC")
            assert sent.returncode == 0, sent.stderr
            wait_for(lambda: _study_rows(index, second.study_instance_uid)[3] == 1,
                     what="second result", timeout=180)
            assert _study_rows(index, second.study_instance_uid) == (len(second_files), 0, 1, 1)
        finally:
            index.close()
            for w in workers:
                w.stop()
