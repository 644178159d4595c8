"""Faults of the node's peers and parts: results are delayed, never lost or doubled.

* the PACS (Orthanc) goes down while SRs are being produced, then comes back;
* PostgreSQL restarts while studies are stored and analysed;
* `radnode worker` is killed (SIGKILL) in the middle of a job.
(tests/pacs_link/test_pacs_outage.py covers a PACS that is down from the start.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from functools import partial
from pathlib import Path

import httpx

from ai_node.synth import StudySpec, SyntheticStudy, write_study
from tests.support.dicom_bytes import dataset_bytes
from tests.support.orthanc_peer import OrthancPacs
from tests.support.orthanc_queries import instance_count, sr_instances
from tests.support.processes import stop_process
from tests.support.radnode_process import RADNODE, REPO, RadnodeProcess
from tests.support.reliability import acknowledged, files_on_disk, record, scale, temp_files
from tests.support.tools import dcmtk_env, require_tool, storescu
from tests.support.wait import wait_for

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
FAST_RETRY = {"RADNODE_OUTBOX_BACKOFF_S": "0.2", "RADNODE_OUTBOX_BACKOFF_MAX_S": "1"}


def _small_study(seed: int, out: Path, slices: int = 12) -> tuple[SyntheticStudy, list[Path]]:
    return write_study(StudySpec(region="chest", slices=slices, seed=seed, rows=128, columns=128,
                                 pixel_spacing_mm=2.8), out)


def _result(base: str, uid: str) -> dict:
    return httpx.get(f"{base}/api/studies/{uid}/result", timeout=10).json()


def _analysed(base: str, uid: str) -> dict | None:
    body = _result(base, uid)
    return body if body.get("status") in ("done", "out_of_scope") else None


def test_pacs_down_while_results_are_produced_then_back(tmp_path):
    """Orthanc stops after the first study's SR is delivered; the next studies' SRs wait
    in the outbox and are delivered once each when it is back."""
    later = scale(2, 5)
    studies = [_small_study(300 + i, tmp_path / f"in{i}") for i in range(1 + later)]
    orthanc = OrthancPacs(tmp_path / "orthanc").start()
    env = {"RADNODE_PACS_PEERS": orthanc.peer_json(), **FAST_RETRY}
    node = RadnodeProcess(tmp_path / "data", "serve", env=env).start()
    base = f"http://127.0.0.1:{node.http_port}"
    try:
        first, files = studies[0]
        assert storescu(node.dicom_port, files).returncode == 0
        wait_for(lambda: sr_instances(orthanc, first.study_instance_uid), timeout=180,
                 what="first SR in Orthanc")
        orthanc.stop()
        for _study, files in studies[1:]:
            assert storescu(node.dicom_port, files).returncode == 0
        for study, _ in studies[1:]:
            wait_for(partial(_analysed, base, study.study_instance_uid), timeout=180,
                     what="analysis while the PACS is down")
        outbox = httpx.get(f"{base}/api/outbox", timeout=10).json()
        pending = outbox["counts"]["orthanc"].get("pending", 0)
        assert pending >= later, outbox["counts"]  # the SRs (and originals) wait
        orthanc.start()
        total = sum(len(f) + 1 for _, f in studies)
        wait_for(lambda: httpx.get(f"{base}/api/outbox", timeout=10).json()["counts"]["orthanc"]
                 == {"delivered": total}, timeout=180, what="everything delivered")
        for study, files in studies:
            assert len(sr_instances(orthanc, study.study_instance_uid)) == 1
            assert instance_count(orthanc, study.study_instance_uid) == len(files) + 1
        assert node.proc is not None and node.proc.poll() is None
        record("fault_pacs_down", studies_while_down=later, outbox_pending_peak=pending,
               delivered=total, srs_per_study=1)
    finally:
        node.stop()
        orthanc.stop()


def test_database_restart_while_storing_and_analysing(tmp_path):
    from radnode_core.index import Index
    from tests.support.postgres import PostgresServer

    studies = [_small_study(400 + i, tmp_path / f"in{i}", slices=scale(80, 150))
               for i in range(scale(2, 4))]
    with PostgresServer() as pg:
        # A job whose worker lost the database mid-job is claimed again when its lease
        # expires (default 300 s): a short lease keeps the test short.
        node = RadnodeProcess(tmp_path / "data", "serve", "--database-url", pg.url,
                              "--quiet-period", "1", env={"RADNODE_JOB_LEASE_S": "10"}).start()
        base = f"http://127.0.0.1:{node.http_port}"
        index = Index(pg.url)
        try:
            # The first study is analysed while the next ones are sent; the database
            # restarts in the middle of the sending.
            first, first_files = studies[0]
            assert storescu(node.dicom_port, first_files).returncode == 0
            senders = [
                subprocess.Popen(
                    [require_tool("storescu"), "-v", "--no-halt", "-aet", "MODALITY",
                     "-aec", "RADNODE", "127.0.0.1", str(node.dicom_port), *map(str, files)],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dcmtk_env())
                for _study, files in studies[1:]
            ]
            studies_dir = node.data_dir / "studies"
            wait_for(lambda: len(files_on_disk(node.data_dir)) >= len(first_files) + 10,
                     timeout=60, what="the next studies to arrive", interval=0.01)
            began = time.monotonic()
            pg.restart()
            outage = time.monotonic() - began
            outputs = [s.communicate(timeout=300)[0] for s in senders]
            assert node.proc is not None and node.proc.poll() is None, "the node died"
            acked = [p for out in outputs for p in acknowledged(out)]
            refused = sum(out.count("Refused: OutOfResources") for out in outputs)

            # Nothing acknowledged is lost; nothing unindexed is left on disk.
            indexed = index.instance_paths()
            for src in acked:
                rel = next(p for p in indexed if p.endswith(f"/{_sop_uid(src)}.dcm"))
                assert dataset_bytes(node.data_dir / rel) == dataset_bytes(src)
            assert temp_files(node.data_dir) == []
            assert sorted(indexed - _sr_paths(index)) == sorted(
                p for p in files_on_disk(node.data_dir) if p not in _sr_paths(index))
            assert studies_dir.is_dir()

            # The modality retries what was refused; every study gets its result.
            for _study, files in studies[1:]:
                assert storescu(node.dicom_port, files).returncode == 0
            for study, files in studies:
                body = wait_for(partial(_analysed, base, study.study_instance_uid),
                                timeout=300, what="a result after the restart")
                assert body["sr_sop_instance_uid"]
                rows = index.instances_of_study(study.study_instance_uid)
                assert len([r for r in rows if r["sop_class_uid"] != SR_CLASS]) == len(files)
            log = node.log()
            record("fault_database_restart", studies=len(studies),
                   instances=sum(len(f) for _, f in studies), outage_s=round(outage, 2),
                   acknowledged_during=len(acked), refused_a700_during=refused,
                   index_errors_logged=log.count("index cannot record the instance"))
        finally:
            index.close()
            node.stop()


def _sop_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _sr_paths(index) -> set[str]:
    from sqlalchemy import select

    from radnode_core.index import instances

    with index.engine.connect() as conn:
        return set(conn.execute(select(instances.c.path).where(
            instances.c.sop_class_uid == SR_CLASS)).scalars())


def test_worker_killed_mid_job_is_rerun_once(tmp_path):
    import sqlite3

    study, files = write_study(StudySpec(region="chest", slices=60, nodules=1, seed=500,
                                         rows=256, columns=256, pixel_spacing_mm=1.4),
                               tmp_path / "in")
    uid = study.study_instance_uid
    env = {**os.environ, "RADNODE_JOB_LEASE_S": "4", "RADNODE_WORKER_POLL_S": "0.05"}
    scp = RadnodeProcess(tmp_path / "data", "scp").start()
    log = (tmp_path / "worker.log").open("ab")

    def worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen([*RADNODE, "worker", "--data-dir", str(scp.data_dir)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)

    first = worker()
    second = None
    try:
        assert storescu(scp.dicom_port, files).returncode == 0
        db = sqlite3.connect(scp.data_dir / "index.sqlite3")

        def job() -> tuple | None:
            return db.execute("select state, attempts from jobs where study_uid = ?",
                              (uid,)).fetchone()

        def results() -> list[tuple]:
            return db.execute("select status from results where study_uid = ?",
                              (uid,)).fetchall()

        wait_for(lambda: results() == [("running",)], timeout=240, interval=0.01,
                 what="the worker to start the job")
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert job() == ("running", 1) and results() == [("running",)], "job ended before kill"
        killed_at = time.monotonic()
        second = worker()
        wait_for(lambda: job() == ("done", 2), timeout=240, what="the job to be re-run")
        rerun_after = time.monotonic() - killed_at
        assert results() == [("done",)]
        srs = db.execute("select count(*) from instances where study_uid = ? and "
                         "sop_class_uid = ?", (uid, SR_CLASS)).fetchone()[0]
        assert srs == 1
        assert db.execute("select count(*) from jobs").fetchone()[0] == 1
        time.sleep(1.0)  # and it stays done: no third attempt within a second
        assert job() == ("done", 2)
        record("fault_worker_killed", lease_s=4, attempts=2, results=1, srs=1,
               rerun_done_after_s=round(rerun_after, 1))
    finally:
        for proc in (first, second):
            if proc is not None:
                stop_process(proc)
        scp.stop()
