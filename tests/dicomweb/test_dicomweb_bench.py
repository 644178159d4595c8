"""`python -m benchmarks.qido_wado` runs end to end on tiny data (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.radnode_process import REPO


def test_bench_dicomweb_small(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.qido_wado", "--studies", "30", "--slices", "3",
         "--queries", "3", "--rounds", "1", "--work-dir", str(tmp_path / "work"),
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| QIDO /studies?PatientID=<id> median ms |" in result.stdout
    data = json.loads(out.read_text())
    for server in ("radnode", "orthanc"):
        assert data[server]["wado_series"]["bytes"] > 3 * 512 * 512 * 2
        assert data[server]["qido_date_range_15d"]["last_matches"] >= 1
    assert (
        data["radnode"]["qido_date_range_15d"]["last_matches"]
        == data["orthanc"]["qido_date_range_15d"]["last_matches"]
    )
