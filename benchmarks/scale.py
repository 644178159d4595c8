"""``python -m benchmarks.scale``: studies per minute with 1, 2, 3... worker processes
on PostgreSQL.

For each worker count, in one run: a fresh database on the given PostgreSQL server
and a fresh data dir, one ``radnode scp`` (the Kubernetes Deployments, as processes)
to which dcmtk ``storescu`` sends every study, two associations at a time. The queued
jobs are then held (``available_at`` pushed ahead) while N ``radnode worker``
processes start and warm up (TensorFlow, the models), and released at once: the
clock runs from the release to the last result written, so studies/min =
studies / that time measures the workers draining a full queue, not the ingest nor
the model loading. The same synthetic studies go to every round.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

WARM_LINE = "analysis pipeline warmed up"
HOLD_S = 24 * 3600.0  # queued jobs are held this far ahead while the workers warm up


def _radnode(
    role: str, data: Path, url: str, log: IO[bytes], *extra: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "radnode.cli",
            role,
            "--data-dir",
            str(data),
            "--database-url",
            url,
            "--log-format",
            "text",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _database(server_url: str, name: str, create: bool) -> str:
    """CREATE (or DROP) database ``name`` on the server; returns its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(
        make_url(server_url).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as conn:
            if create:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            else:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def _wait_warm(logs: list[Path], procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(WARM_LINE in p.read_text(errors="replace") for p in logs):
        if any(proc.poll() is not None for proc in procs):
            raise RuntimeError(f"a worker exited: see {', '.join(map(str, logs))}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers not warm after {timeout:.0f} s")
        time.sleep(0.5)


def _wait_for(engine: Any, count_query: Any, expected: int, timeout_s: float) -> None:
    """Poll ``count_query`` until it reaches ``expected`` rows."""
    deadline = time.monotonic() + timeout_s
    while True:
        with engine.connect() as conn:
            got = int(conn.execute(count_query).scalar_one())
        if got >= expected:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{got}/{expected} after {timeout_s:.0f} s")
        time.sleep(0.2)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_round(
    workers: int,
    studies: list[tuple[str, list[Path]]],
    server_url: str,
    work_dir: Path,
    storescu: str,
    timeout_s: float,
) -> dict[str, Any]:
    """One worker count: the measured window and the per-study analysis times."""
    from sqlalchemy import create_engine, func, select, update

    from ai_node.tables import results
    from radnode_core.index import jobs
    from tests.support.processes import free_port, wait_port

    name = f"radnode_bench_scale_{workers}_{uuid.uuid4().hex[:8]}"
    url = _database(server_url, name, create=True)
    data = Path(tempfile.mkdtemp(prefix=f"scale-{workers}w-", dir=work_dir))
    procs: list[subprocess.Popen[bytes]] = []
    engine = create_engine(url)
    try:
        with (data.parent / f"{data.name}-scp.log").open("wb") as scp_log:
            port = free_port()
            scp = _radnode(
                "scp",
                data,
                url,
                scp_log,
                "--dicom-port",
                str(port),
                "--quiet-period",
                "300",
                "--log-level",
                "WARNING",
            )
            procs.append(scp)
            wait_port(port, scp)
            env = {**os.environ, "TCP_NODELAY": "1"}

            def send(files: list[Path]) -> None:
                subprocess.run(
                    [storescu, "-aet", "MODALITY", "-aec", "RADNODE", "127.0.0.1", str(port)]
                    + [str(f) for f in files],
                    check=True,
                    capture_output=True,
                    env=env,
                    timeout=600,
                )

            sent = time.perf_counter()
            with ThreadPoolExecutor(max_workers=2) as pool:
                list(pool.map(send, [files for _uid, files in studies]))
            send_s = time.perf_counter() - sent
            _wait_for(engine, select(func.count()).select_from(jobs), len(studies), timeout_s)
            # Hold the queue while the workers start: they claim nothing until all are warm.
            with engine.begin() as conn:
                conn.execute(update(jobs).values(available_at=time.time() + HOLD_S))
            logs = [data.parent / f"{data.name}-worker{i}.log" for i in range(workers)]
            for log in logs:
                with log.open("wb") as handle:
                    procs.append(_radnode("worker", data, url, handle))
            _wait_warm(logs, procs[1:], timeout=600)
            load = os.getloadavg()[0]
            released = dt.datetime.now(dt.UTC)
            with engine.begin() as conn:
                conn.execute(update(jobs).values(available_at=released.timestamp()))
            done = (
                select(func.count()).select_from(results).where(results.c.finished_at.is_not(None))
            )
            _wait_for(engine, done, len(studies), timeout_s)
            with engine.connect() as conn:
                last = conn.execute(select(func.max(results.c.finished_at))).scalar_one()
                rows = conn.execute(select(results.c.status, results.c.details)).all()
        for log in [data.parent / f"{data.name}-scp.log", *logs]:
            log.unlink(missing_ok=True)  # kept when the round fails, for its errors
    finally:
        _stop(procs)
        engine.dispose()
        _database(server_url, name, create=False)
        shutil.rmtree(data, ignore_errors=True)
    wall = (last - released).total_seconds()
    per_study = [float(r[1]["timings"]["total_s"]) for r in rows if r[1] and "timings" in r[1]]
    return {
        "workers": workers,
        "send_s": send_s,
        "load": load,
        "wall_s": wall,
        "per_min": len(studies) / wall * 60,
        "mean_study_s": sum(per_study) / len(per_study),
        "statuses": sorted({str(r[0]) for r in rows}),
    }


def scale_benchmark(
    server_url: str,
    worker_counts: list[int],
    studies: int,
    slices: int,
    size: int,
    work_dir: Path,
    timeout_s: float = 1800,
) -> str:
    """The Markdown table of studies/min per worker count."""
    from benchmarks.analysis import _study

    storescu = shutil.which("storescu")
    if storescu is None:
        raise RuntimeError("storescu (dcmtk) is not installed")
    work_dir.mkdir(parents=True, exist_ok=True)
    batch = [_study(work_dir, slices, size, seed=500 + i) for i in range(studies)]
    rounds = [run_round(n, batch, server_url, work_dir, storescu, timeout_s) for n in worker_counts]
    base = rounds[0]["per_min"]
    lines = [
        f"{studies} studies of {slices} slices {size}x{size}, 1 `radnode scp`, "
        f"{os.cpu_count()} CPUs, PostgreSQL {_server_version(server_url)}",
        "",
        "| workers | queue released -> last result (s) | studies/min | speed-up | "
        "mean analysis per study (s) | results | send (s) | load avg at release |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rounds:
        lines.append(
            f"| {r['workers']} | {r['wall_s']:.1f} | {r['per_min']:.1f} | "
            f"{r['per_min'] / base:.2f}x | {r['mean_study_s']:.2f} | {', '.join(r['statuses'])} "
            f"| {r['send_s']:.1f} | {r['load']:.1f} |"
        )
    return "\n".join(lines)


def _server_version(server_url: str) -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(server_url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar_one()).split()[0]
    finally:
        engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--database-url",
        required=True,
        help="a PostgreSQL server whose user may CREATE DATABASE "
        "(each round makes and drops its own database)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 2, 3],
        help="worker counts, one round each (default 1 2 3)",
    )
    parser.add_argument("--studies", type=int, default=20, help="studies per round (default 20)")
    parser.add_argument("--slices", type=int, default=100, help="slices per study (default 100)")
    parser.add_argument("--size", type=int, default=512, help="rows = columns (default 512)")
    parser.add_argument("--work-dir", type=Path, help="where the synthetic studies are cached")
    args = parser.parse_args(argv)
    if not args.database_url.startswith("postgresql"):
        print("benchmarks.scale: --database-url must be a PostgreSQL server", file=sys.stderr)
        return 2
    work_dir = args.work_dir or Path(tempfile.gettempdir()) / "radnode-bench-scale"
    print(
        scale_benchmark(
            args.database_url, args.workers, args.studies, args.slices, args.size, work_dir
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
