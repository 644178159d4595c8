"""The Query/Retrieve benchmark runs end to end on tiny data (no timing is asserted)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STUDIES, SLICES = 12, 3


def test_qr_benchmark_finds_and_moves_the_same_on_both_peers(tmp_path: Path) -> None:
    for tool in ("storescp", "Orthanc"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(f"{tool} is not installed: run `make system-deps` (make test does)")
    out = tmp_path / "qr.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.qr",
            "--studies",
            str(STUDIES),
            "--slices",
            str(SLICES),
            "--queries",
            "2",
            "--rounds",
            "1",
            "--work-dir",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["studies"] == STUDIES + 1
    ours, theirs = report["radnode"], report["orthanc"]
    assert set(ours["find"]) == set(theirs["find"])
    for shape in ours["find"]:
        # The same queries match the same number of studies on both peers.
        assert ours["find"][shape]["matches"] == theirs["find"][shape]["matches"], shape
        assert ours["find"][shape]["median_ms"] > 0
    assert ours["find"]["all studies"]["matches"] == STUDIES + 1
    for peer in (ours, theirs):
        assert peer["move"]["instances"] == SLICES and peer["move"]["median_s"] > 0
    assert "TCP_NODELAY=1" in report["environment"]["orthanc"]
    assert "TCP_NODELAY=1" in report["environment"]["storescp"]
    assert "| C-MOVE series to storescp, MB/s |" in result.stdout  # the table for the docs
