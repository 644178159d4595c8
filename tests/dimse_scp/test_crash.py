"""kill -9 of the receiver in the middle of a study loses nothing it acknowledged."""

from __future__ import annotations

import random
import re
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import RadnodeProcess, dataset_bytes, dcmtk_env, require_tool
from pydicom import dcmread


def _acknowledged(storescu_output: str) -> list[Path]:
    """Files for which storescu received a Success response, from its -v log."""
    acked: list[Path] = []
    current: Path | None = None
    for line in storescu_output.splitlines():
        if m := re.match(r"I: Sending file: (.+)$", line):
            current = Path(m.group(1))
        elif "Received Store Response (Success)" in line and current is not None:
            acked.append(current)
            current = None
    return acked


@pytest.mark.parametrize("round_", range(3))
def test_kill_9_mid_study_then_restart(tmp_path, chest_study, round_):
    study, files = chest_study
    rng = random.Random(round_)
    node = RadnodeProcess(tmp_path / "data", "scp").start()
    sender = subprocess.Popen(
        [require_tool("storescu"), "-v", "--no-halt", "-aet", "MODALITY", "-aec", "RADNODE",
         "127.0.0.1", str(node.dicom_port), *map(str, files)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dcmtk_env(),
    )
    studies_dir = node.data_dir / "studies"
    target = rng.randint(10, 80)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(1 for _ in studies_dir.rglob("*.dcm")) < target:
        time.sleep(0.005)
    time.sleep(rng.random() * 0.05)
    node.kill()  # SIGKILL, mid-study
    output, _ = sender.communicate(timeout=60)
    acked = _acknowledged(output)
    assert 0 < len(acked) < len(files), output[-2000:]

    restarted = RadnodeProcess(node.data_dir, "scp", "--quiet-period", "0.5").start()
    try:
        for src in acked:
            sop = dcmread(src, stop_before_pixels=True).SOPInstanceUID
            stored = studies_dir / study.study_instance_uid / study.series_instance_uid / f"{sop}.dcm"
            assert stored.is_file(), f"acknowledged {src.name} lost"
            assert dataset_bytes(stored) == dataset_bytes(src)
        assert [p for p in (node.data_dir / "tmp").rglob("*") if p.is_file()] == []
        on_disk = sorted(p.relative_to(node.data_dir).as_posix() for p in studies_dir.rglob("*.dcm"))
        db = sqlite3.connect(node.data_dir / "index.sqlite3")
        indexed = sorted(r[0] for r in db.execute("select path from instances"))
        assert indexed == on_disk
        # The interrupted study is completed by the quiet period after the restart: one job.
        deadline = time.monotonic() + 10
        jobs: list[tuple] = []
        while time.monotonic() < deadline and not jobs:
            jobs = db.execute("select study_uid, version, state from jobs").fetchall()
            time.sleep(0.1)
        assert jobs == [(study.study_instance_uid, len(on_disk), "queued")]
        time.sleep(1.0)
        assert db.execute("select count(*) from jobs").fetchone()[0] == 1
    finally:
        restarted.stop()
