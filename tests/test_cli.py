"""The `radnode` command as a user runs it: serve, echo, send, synth, health and metrics."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request

from pydicom import dcmread

from tests.support.radnode_process import RADNODE, REPO, RadnodeProcess
from tests.support.tools import dcmtk_env, require_tool


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RADNODE, *args], capture_output=True, text=True, cwd=REPO, timeout=timeout
    )


def _get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=10) as rsp:
        return rsp.status, rsp.headers.get("content-type", ""), rsp.read().decode()


def test_help_lists_every_role():
    out = _run("--help").stdout
    for command in ("serve", "scp", "api", "worker", "synth", "echo", "send"):
        assert command in out


def test_synth_study_cli_writes_a_readable_series(tmp_path):
    result = _run("synth", "study", "--out", str(tmp_path / "s"), "--region", "head",
                  "--slices", "4", "--seed", "3", "--size", "64")
    assert result.returncode == 0, result.stderr
    files = sorted((tmp_path / "s").glob("*.dcm"))
    assert len(files) == 4
    assert dcmread(files[0]).BodyPartExamined == "HEAD"
    nodules_in_a_head = _run(
        "synth", "study", "--out", str(tmp_path / "x"), "--region", "head", "--nodules", "2"
    )
    assert nodules_in_a_head.returncode != 0


def test_serve_answers_echo_send_health_and_metrics(tmp_path, chest_study):
    _study, files = chest_study
    node = RadnodeProcess(tmp_path / "data", "serve").start()
    try:
        echo = _run("echo", "--port", str(node.dicom_port))
        assert echo.returncode == 0 and "0x0000" in echo.stdout
        dcmtk_echo = subprocess.run(
            [require_tool("echoscu"), "-aec", "RADNODE", "127.0.0.1", str(node.dicom_port)],
            capture_output=True, text=True, env=dcmtk_env(), timeout=30,
        )
        assert dcmtk_echo.returncode == 0

        sent = _run("send", "--port", str(node.dicom_port), *map(str, files[:12]))
        assert sent.returncode == 0, sent.stderr
        assert "sent 12/12" in sent.stdout

        status, _ctype, body = _get(f"http://127.0.0.1:{node.http_port}/healthz")
        health = json.loads(body)
        assert status == 200 and health["status"] == "ok"
        # the 12 CT slices, plus the node's own SR once its worker has analysed the study
        assert health["index"]["instances"] in (12, 13)

        status, ctype, text = _get(f"http://127.0.0.1:{node.http_port}/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        assert 'radnode_instances_received_total{source="dimse"} 12.0' in text
        assert re.search(r'^radnode_index_objects\{level="instances"\} 1[23]\.0$', text, re.M)
        assert 'radnode_studies_completed_total{reason="released"} 1.0' in text
        # queued, or already claimed by serve's worker
        assert re.search(r"^radnode_queue_depth [01]\.0$", text, re.M)
        assert "radnode_bytes_received_total" in text
    finally:
        assert node.stop() == 0
    # A clean stop is recorded, so the next start skips the orphan scan.
    assert (node.data_dir / ".clean-shutdown").exists()
    log = node.log()
    assert "DICOM SCP listening" in log
    patient_name = str(dcmread(files[0], stop_before_pixels=True).PatientName)
    assert patient_name not in log


def test_invalid_settings_are_a_clear_error(tmp_path):
    result = _run("scp", "--data-dir", str(tmp_path), "--aet", "WAY_TOO_LONG_AE_TITLE_X")
    assert result.returncode == 2
    assert "invalid settings" in result.stderr and "ae_title" in result.stderr


def test_module_entry_point_matches_console_script():
    script = REPO / ".venv" / "bin" / "radnode"
    exe = str(script) if script.exists() else sys.executable
    assert subprocess.run([exe, "--version"] if script.exists() else [*RADNODE, "--version"],
                          capture_output=True, text=True).stdout.startswith("radnode ")
