"""``python -m benchmarks.scale`` runs end to end on tiny studies (no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import create_engine, text

from tests.support.postgres import PostgresServer
from tests.support.radnode_process import REPO


@pytest.mark.slow
def test_bench_scale_reports_every_round_and_leaves_no_database(tmp_path) -> None:
    with PostgresServer() as pg:
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.scale", "--database-url", pg.url,
             "--workers", "1", "2", "--studies", "2", "--slices", "8", "--size", "64",
             "--work-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=600, cwd=REPO, check=False,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
        assert [row.split("|")[1].strip() for row in rows[1:]] == ["1", "2"], result.stdout
        header = [cell.strip() for cell in rows[0].split("|")]
        statuses = [row.split("|")[header.index("results")].strip() for row in rows[1:]]
        assert statuses == ["done", "done"], result.stdout
        engine = create_engine(pg.url)
        with engine.connect() as conn:
            names = conn.execute(text("SELECT datname FROM pg_database")).scalars().all()
        engine.dispose()
        assert not [n for n in names if n.startswith("radnode_bench_scale")]


def test_bench_scale_refuses_a_database_that_is_not_postgresql(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale",
         "--database-url", f"sqlite:///{tmp_path / 'x.db'}"],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
    )
    assert result.returncode == 2 and "PostgreSQL" in result.stderr
