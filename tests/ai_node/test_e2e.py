"""End to end: storescu -> radnode serve -> worker -> SR stored, result on the HTTP API."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import httpx

from ai_node.synth import StudySpec, write_study
from tests.support.radnode_process import RadnodeProcess
from tests.support.tools import storescu
from tests.support.wait import wait_for

FINAL = ("done", "out_of_scope", "failed")


def _result_in(
    statuses: tuple[str, ...], result: Callable[[], dict[str, Any] | None],
    proc: subprocess.Popen[bytes] | None = None,
) -> Callable[[], dict[str, Any] | None]:
    """A check for wait_for: the result once its status is one of ``statuses``; it gives up
    if the worker process ``proc`` has exited."""
    def check() -> dict[str, Any] | None:
        assert proc is None or proc.poll() is None, f"the worker exited with {proc.returncode}"
        body = result() or {}
        return body if body.get("status") in statuses else None

    return check


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
        body = wait_for(_result_in(FINAL, lambda: httpx.get(url, timeout=10).json()),
                        timeout=120, what="the study's result", interval=0.2,
                        detail=lambda: node.log()[-3000:])
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
    uid = study.study_instance_uid
    proc = subprocess.Popen(
        [sys.executable, "-m", "radnode.cli", "worker", "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        result = wait_for(
            _result_in(FINAL, lambda: ResultStore(node.index).study_result(uid), proc),
            timeout=120, what="the study's result", interval=0.2,
        )
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

    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(_result_in(("running",), lambda: store.study_result(uid), first),
                 timeout=120, what="the job to run", interval=0.005)
    finally:
        first.kill()  # SIGKILL mid-job
        first.wait()
    assert node.queue.jobs_for(uid)[0]["state"] == "running"
    second = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        result = wait_for(_result_in(("done", "failed"), lambda: store.study_result(uid), second),
                          timeout=120, what="the job to finish", interval=0.1)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    assert result["status"] == "done", result
    [job] = node.queue.jobs_for(uid)
    assert job["state"] == "done" and job["attempts"] == 2
    assert len(sr_rows(node, uid)) == 1
    node.close()
