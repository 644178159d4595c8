"""End to end: storescu -> radnode serve -> worker -> SR stored, result on the HTTP API."""

from __future__ import annotations

import time

import httpx

from ai_node.synth import StudySpec, write_study
from tests.support.radnode_process import RadnodeProcess
from tests.support.tools import storescu


def test_serve_analyses_a_sent_study_and_serves_the_result(tmp_path) -> None:
    study, files = write_study(
        StudySpec(
            region="chest",
            slices=20,
            nodules=1,
            seed=41,
            rows=256,
            columns=256,
            pixel_spacing_mm=1.4,
        ),
        tmp_path / "in",
    )
    node = RadnodeProcess(tmp_path / "data", "serve").start()
    try:
        sent = storescu(node.dicom_port, files)
        assert sent.returncode == 0, sent.stderr
        url = f"http://127.0.0.1:{node.http_port}/api/studies/{study.study_instance_uid}/result"
        body: dict = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            body = httpx.get(url, timeout=10).json()
            if body["status"] in ("done", "out_of_scope", "failed"):
                break
            time.sleep(0.2)
        assert body["status"] == "done", (body, node.log()[-3000:])
        assert 0 <= body["score"] <= 1 and body["sr_sop_instance_uid"]
        worklist = httpx.get(f"http://127.0.0.1:{node.http_port}/api/results", timeout=10).json()
        assert worklist["items"][0]["study_uid"] == study.study_instance_uid
    finally:
        assert node.stop() == 0
    sr_files = list((tmp_path / "data").rglob(f"{body['sr_sop_instance_uid']}.dcm"))
    assert len(sr_files) == 1


def test_radnode_worker_processes_queued_studies_and_stops_cleanly(tmp_path) -> None:
    """`radnode worker` alone (the analysis pipeline is installed; it replaced the
    foundation's "no analysis pipeline" exit)."""
    import signal
    import subprocess
    import sys

    from ai_node.results import ResultStore
    from radnode.assembly import build_node
    from radnode_core.settings import Settings
    from tests.support.analysis import add_study

    data = tmp_path / "data"
    node = build_node(Settings(data_dir=data, fsync=False))
    study = add_study(
        node,
        StudySpec(
            region="abdomen", slices=12, seed=42, rows=128, columns=128, pixel_spacing_mm=2.8
        ),
        tmp_path / "in",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "radnode.cli", "worker", "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        result: dict = {}
        while time.monotonic() < deadline and proc.poll() is None:
            result = ResultStore(node.index).study_result(study.study_instance_uid) or {}
            if result.get("status") in ("done", "out_of_scope", "failed"):
                break
            time.sleep(0.2)
        assert result.get("status") == "out_of_scope", result
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode(errors="replace")
        node.close()
    assert proc.returncode == 0, out[-2000:]


def test_worker_killed_mid_job_the_job_completes_once_after_restart(tmp_path) -> None:
    """A `radnode worker` process is killed (SIGKILL) while it analyses a study; a
    restarted worker takes the job over when the lease runs out and finishes it: one
    job done after two attempts, one SR, one result."""
    import os
    import signal
    import subprocess
    import sys

    from ai_node.results import ResultStore
    from radnode.assembly import build_node
    from radnode_core.settings import Settings
    from tests.support.analysis import add_study, sr_rows

    data = tmp_path / "data"
    node = build_node(Settings(data_dir=data, fsync=False))
    study = add_study(
        node, StudySpec(region="chest", slices=200, nodules=1, seed=43), tmp_path / "in"
    )
    uid = study.study_instance_uid
    env = {**os.environ, "RADNODE_JOB_LEASE_S": "3"}
    cmd = [sys.executable, "-m", "radnode.cli", "worker", "--data-dir", str(data)]
    store = ResultStore(node.index)

    def wait_for(statuses: tuple[str, ...], proc: subprocess.Popen, poll: float) -> dict:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            result = store.study_result(uid) or {}
            if result.get("status") in statuses:
                return result
            time.sleep(poll)
        raise AssertionError(f"no {statuses} result; worker exit {proc.poll()}")

    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(("running",), first, 0.005)
    finally:
        first.kill()  # SIGKILL mid-job
        first.wait()
    assert node.queue.jobs_for(uid)[0]["state"] == "running"
    second = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        result = wait_for(("done", "failed"), second, 0.1)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    assert result["status"] == "done", result
    [job] = node.queue.jobs_for(uid)
    assert job["state"] == "done" and job["attempts"] == 2
    assert len(sr_rows(node, uid)) == 1
    node.close()
