"""SIGKILL of the receiver at a random (seeded) moment while storescu sends a study.

After each kill and a restart: every instance storescu saw acknowledged with Success
is on disk with the bytes it sent; no temp, partial or orphan file; the index lists
exactly the files on disk; the study's job is queued (and, under `serve`, run) once.
(Folds in tests/dimse_scp/test_crash.py.)
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from ai_node.synth import StudySpec, SyntheticStudy, write_study
from tests.support.dicom_bytes import dataset_bytes
from tests.support.radnode_process import RadnodeProcess
from tests.support.reliability import FULL, acknowledged, assert_store_consistent, record, scale
from tests.support.tools import dcmtk_env, require_tool, storescu
from tests.support.wait import wait_for

ROUNDS = scale(3, 20)
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture(scope="module")
def study(chest_study, tmp_path_factory) -> tuple[SyntheticStudy, list[Path]]:
    """Short: the session's 100-slice chest CT. Full: a 300-instance study."""
    if not FULL:
        return chest_study
    spec = StudySpec(region="chest", slices=300, nodules=1, seed=77, rows=256, columns=256,
                     pixel_spacing_mm=1.4)
    return write_study(spec, tmp_path_factory.mktemp("study300"))


def _role(round_: int) -> str:
    """Every third round kills `serve` (SCP + HTTP + worker), the others `scp`."""
    return "serve" if round_ % 3 == 2 else "scp"


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_sigkill_mid_study_loses_nothing_acknowledged(tmp_path, study, round_):
    synthetic, files = study
    rng = random.Random(9000 + round_)
    role = _role(round_)
    # A long quiet period while sending: the study must not complete before the kill.
    node = RadnodeProcess(tmp_path / "data", role, "--quiet-period", "30").start()
    sender = subprocess.Popen(
        [require_tool("storescu"), "-v", "--no-halt", "-aet", "MODALITY", "-aec", "RADNODE",
         "127.0.0.1", str(node.dicom_port), *map(str, files)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dcmtk_env(),
    )
    studies_dir = node.data_dir / "studies"
    target = rng.randint(len(files) // 20, len(files) * 8 // 10)
    wait_for(lambda: sum(1 for _ in studies_dir.rglob("*.dcm")) >= target, timeout=120,
             what=f"{target} files on disk", interval=0.005)
    time.sleep(rng.random() * 0.02)  # a random moment between two files, not right after one
    node.kill()  # SIGKILL
    output, _ = sender.communicate(timeout=120)
    acked = acknowledged(output)
    assert 0 < len(acked) < len(files), output[-2000:]

    restarted = RadnodeProcess(node.data_dir, role, "--quiet-period", "0.5").start()
    try:
        series_dir = studies_dir / synthetic.study_instance_uid / synthetic.series_instance_uid
        for src in acked:
            stored = series_dir / f"{dcmread(src, stop_before_pixels=True).SOPInstanceUID}.dcm"
            assert stored.is_file(), f"acknowledged {src.name} lost"
            assert dataset_bytes(stored) == dataset_bytes(src), f"{src.name} differs"
        on_disk = assert_store_consistent(node.data_dir)
        assert on_disk >= len(acked)
        db = sqlite3.connect(node.data_dir / "index.sqlite3")
        uid = synthetic.study_instance_uid

        def jobs() -> list[tuple]:
            return db.execute("select study_uid, version, state from jobs").fetchall()

        # The interrupted study completes by the quiet period after the restart: one job.
        [(job_uid, version, _state)] = wait_for(jobs, timeout=30, what="the study's job")
        assert (job_uid, version) == (uid, on_disk)
        if role == "serve":
            wait_for(lambda: jobs()[0][2] == "done", timeout=240, what="the job to run")
            srs = db.execute("select count(*) from instances where sop_class_uid = ?",
                             (SR_CLASS,)).fetchone()[0]
            results = db.execute("select count(*) from results where study_uid = ?",
                                 (uid,)).fetchone()[0]
            assert (srs, results) == (1, 1)
        time.sleep(1.0)  # two quiet periods: time enough for a second job, which must not come
        assert len(jobs()) == 1, jobs()

        # The modality sends the study again: everything is there, nothing doubled.
        resent = storescu(restarted.dicom_port, files)
        assert resent.returncode == 0, resent.stderr[-2000:]
        extra = 1 if role == "serve" else 0
        assert assert_store_consistent(node.data_dir) == len(files) + extra
        record("crash", round=round_, role=role, instances=len(files), acknowledged=len(acked),
               on_disk_after_restart=on_disk, recovered_unacknowledged=on_disk - len(acked))
    finally:
        restarted.stop()
