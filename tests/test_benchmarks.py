"""The ingest benchmark runs end to end on a tiny study (no timing is asserted)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PEERS = ("radnode", "storescp", "orthanc")
SLICES = 5


def _run(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """A benchmark script from the repository root; fails the test if it did not succeed."""
    result = subprocess.run(
        [sys.executable, *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _run_ingest(
    tmp_path: Path, *args: str, timeout_s: float
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``benchmarks/ingest.py`` on a study of ``SLICES`` slices, one round, with ``args``:
    its output, and its report (``--json``)."""
    out = tmp_path / "ingest.json"
    result = _run(
        [
            str(REPO / "benchmarks" / "ingest.py"),
            "--slices",
            str(SLICES),
            "--rounds",
            "1",
            *args,
            "--work-dir",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],
        timeout_s,
    )
    return result, json.loads(out.read_text())


def test_ingest_benchmark_stores_every_instance_in_every_peer(tmp_path: Path) -> None:
    for tool in ("storescu", "storescp", "Orthanc"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(f"{tool} is not installed: run `make system-deps` (make test does)")
    result, report = _run_ingest(tmp_path, "--peers", ",".join(PEERS), timeout_s=120)
    assert report["slices"] == SLICES
    assert set(report["peers"]) == set(PEERS)
    for peer, summary in report["peers"].items():
        assert summary["median_s"] > 0, peer
        assert len(summary["times_s"]) == 1, peer
    assert sorted(run["peer"] for run in report["runs"]) == sorted(PEERS)
    for run in report["runs"]:
        # Files on disk and the receiver's own index both hold the whole study.
        assert run["stored"], run
        assert all(count == SLICES for count in run["stored"].values()), run
    assert "| radnode " in result.stdout  # the Markdown table for docs/benchmarks.md


def test_ingest_benchmark_several_associations_at_once(tmp_path: Path) -> None:
    """Two modalities at once into two radnode receiver processes and storescp: every
    instance of both studies stored, and each receiver's CPU time and environment given."""
    result, report = _run_ingest(
        tmp_path,
        "--associations",
        "2",
        "--scp-processes",
        "2",
        "--peers",
        "radnode-multi,storescp",
        timeout_s=180,
    )
    assert (report["associations"], report["instances"]) == (2, 2 * SLICES)
    for run in report["runs"]:
        assert all(count == 2 * SLICES for count in run["stored"].values()), run
        # /proc counts in clock ticks: storescp may spend less than one on 10 instances.
        assert run["cpu_seconds"] > 0 or run["peer"] == "storescp", run
    assert "scp_processes=2" in report["peers"]["radnode-multi"]["environment"]
    assert report["peers"]["storescp"]["environment"] == "TCP_NODELAY=1"
    assert "| radnode-multi " in result.stdout
    assert "CPU ms/instance" in result.stdout


def test_ingest_steps_benchmark_times_each_way_of_each_step(tmp_path: Path) -> None:
    result = _run(
        [
            "-m",
            "benchmarks.ingest_steps",
            "--slices",
            str(SLICES),
            "--rounds",
            "1",
            "--work-dir",
            str(tmp_path / "work"),
        ],
        300,
    )
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ")]
    timed = {(row[0].strip(), row[1].strip()): row[2:] for row in rows[1:]}
    assert set(timed) == {
        ("decode", "pydicom reader + walk"),
        ("decode", "walk collecting"),
        ("index", "SQLAlchemy Core"),
        ("index", "DBAPI, compiled once"),
    }
    for values in timed.values():
        assert float(values[0]) > 0 and float(values[1]) >= 0
    assert f"{SLICES} slices" in result.stdout
