"""A modality (dcmtk storescu) sends a synthetic CT study to `radnode scp`."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from pydicom import dcmread

from tests.support.dicom_bytes import dataset_bytes
from tests.support.radnode_process import RadnodeProcess
from tests.support.tools import storescu
from tests.support.wait import wait_for


def _index(data_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(data_dir / "index.sqlite3")


def _job_count(db: sqlite3.Connection) -> int:
    return int(db.execute("select count(*) from jobs").fetchone()[0])


def test_storescu_study_is_stored_byte_identical_indexed_and_queued_once(
    radnode_scp: RadnodeProcess, chest_study
):
    study, files = chest_study
    result = storescu(radnode_scp.dicom_port, files)
    assert result.returncode == 0, result.stderr

    stored = sorted((radnode_scp.data_dir / "studies").rglob("*.dcm"))
    assert len(stored) == len(files) == 100
    for src in files:
        sop_uid = dcmread(src, stop_before_pixels=True).SOPInstanceUID
        series_dir = (
            radnode_scp.data_dir / "studies" / study.study_instance_uid / study.series_instance_uid
        )
        dst = series_dir / f"{sop_uid}.dcm"
        assert dataset_bytes(dst) == dataset_bytes(src), f"{dst.name} differs from what was sent"
        meta = dcmread(dst, stop_before_pixels=True).file_meta
        assert meta.SourceApplicationEntityTitle == "MODALITY"
        assert dst.read_bytes()[:128] == b"\0" * 128  # zeroed preamble

    db = _index(radnode_scp.data_dir)
    count = db.execute(
        "select count(*) from instances where study_uid=?", (study.study_instance_uid,)
    ).fetchone()[0]
    assert count == 100
    assert db.execute("select num_instances from studies").fetchall() == [(100,)]
    # The association's release completes the study at once: one job, no quiet-period wait.
    jobs = wait_for(
        lambda: db.execute("select study_uid, version, state, reason from jobs").fetchall(),
        timeout=5, what="the release's job", interval=0.05,
    )
    assert jobs == [(study.study_instance_uid, 100, "queued", "released")]
    # ... and the quiet-period sweeper does not add a second one: let more than the quiet
    # period (2 s) pass.
    time.sleep(2.5)
    assert db.execute("select count(*) from jobs").fetchone()[0] == 1


def test_resending_the_study_keeps_the_first_copy_and_makes_no_new_job(
    radnode_scp: RadnodeProcess, chest_study
):
    _study, files = chest_study
    assert storescu(radnode_scp.dicom_port, files[:10]).returncode == 0
    first = {p: p.stat().st_mtime_ns for p in (radnode_scp.data_dir / "studies").rglob("*.dcm")}
    assert storescu(radnode_scp.dicom_port, files[:10]).returncode == 0  # duplicates answer success
    after = {p: p.stat().st_mtime_ns for p in (radnode_scp.data_dir / "studies").rglob("*.dcm")}
    assert after == first
    db = _index(radnode_scp.data_dir)
    assert db.execute("select sum(duplicates) from instances").fetchone()[0] == 10
    wait_for(lambda: _job_count(db) >= 1, timeout=5, what="the first release's job",
             interval=0.05)
    time.sleep(0.5)  # a second job would come with the second release: give it time to show
    assert _job_count(db) == 1


def test_instances_arriving_later_make_a_new_job_version(radnode_scp: RadnodeProcess, chest_study):
    _study, files = chest_study
    assert storescu(radnode_scp.dicom_port, files[:60]).returncode == 0
    assert storescu(radnode_scp.dicom_port, files[60:]).returncode == 0
    db = _index(radnode_scp.data_dir)
    wait_for(lambda: _job_count(db) >= 2, timeout=5, what="the second release's job",
             interval=0.05)
    assert db.execute("select version, reason from jobs order by id").fetchall() == [
        (60, "released"),
        (100, "released"),
    ]
