"""``radnode`` subcommands of the HTTP edge (DICOMweb benchmark)."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

NodeOptions = Callable[[argparse.ArgumentParser], None]


def cmd_bench_dicomweb(args: argparse.Namespace) -> int:
    from dicomweb import bench

    result = bench.run(args.work_dir, args.studies, args.slices, args.queries, args.rounds)
    print(bench.report(result))
    if args.json:
        bench.write_json(result, args.json)
    return 0


def register(sub: Any, bench_sub: Any, node_options: NodeOptions) -> None:
    """Add the HTTP edge's commands to the ``radnode`` parser (``sub``) and ``radnode bench``."""
    p = bench_sub.add_parser(
        "dicomweb",
        help="QIDO-RS latency and WADO-RS throughput, radnode vs Orthanc's DICOMweb plugin",
        description="Load the same studies into `radnode api` and Orthanc (DICOMweb plugin), "
        "then time QIDO-RS searches and a WADO-RS series retrieval on each.",
    )
    p.add_argument("--studies", type=int, default=2000, help="one-instance studies (2000)")
    p.add_argument("--slices", type=int, default=300, help="instances of the big series (300)")
    p.add_argument("--queries", type=int, default=50, help="requests per QIDO measurement (50)")
    p.add_argument("--rounds", type=int, default=5, help="WADO-RS / metadata repetitions (5)")
    p.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "radnode-bench",
        help="where the data dirs go (a new folder per run)",
    )
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.set_defaults(func=cmd_bench_dicomweb)
