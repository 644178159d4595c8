"""Per-slice cost of the two CPU-bound steps of a C-STORE, each way side by side, in-process.

    python -m benchmarks.ingest_steps [--slices 300] [--rounds 5] [--work-dir DIR]

The receive benchmark (``benchmarks/ingest.py``) times whole storescu runs, whose spread on
a shared machine hides a step that changed by a tenth of a millisecond. This one times the
steps alone, on the same synthetic 512x512 CT study, with no network and no fsync, so
their CPU time per slice can be compared within one run:

* **decode** a spooled C-STORE: pydicom's reader up to Pixel Data, then the strict walk of
  the whole dataset (``pydicom reader + walk``), against the walk that collects the top
  level's elements itself (``walk collecting``, what ``decode_complete_file`` does when
  the walk can stand for the reader);
* **index** the instance in SQLite (WAL, one transaction of four statements per slice):
  through SQLAlchemy Core's execution, against the same statements compiled once and run
  on the DBAPI connection (what ``Index.add_instance`` does for a new instance).

Each way runs ``--rounds`` times over every slice, alternating; the table gives the median
round, per slice. CPU is the process's user + system time.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.ingest import (  # noqa: E402 - the repository on the path first
    DEFAULT_WORK_DIR,
    cached_study,
    git_state,
    machine_info,
)


def _spool(files: Sequence[Path], folder: Path) -> list[tuple[Path, int, str]]:
    """Each file as radnode's spool holds a received C-STORE: meta group, then dataset."""
    from pydicom.filereader import _read_file_meta_info

    spooled = []
    for i, source in enumerate(files):
        raw = source.read_bytes()
        f = BytesIO(raw)
        f.seek(132)
        meta = _read_file_meta_info(f)
        path = folder / f"{i}.spool"
        path.write_bytes(raw)
        spooled.append((path, f.tell(), str(meta.TransferSyntaxUID)))
    return spooled


def _timed(step: Callable[[int], None], count: int) -> tuple[float, float]:
    """(wall, CPU) seconds of ``step(i)`` for i in range(count)."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(count):
        step(i)
    return time.perf_counter() - wall0, time.process_time() - cpu0


def decode_ways(spooled: list[tuple[Path, int, str]]) -> dict[str, Callable[[int], None]]:
    from pydicom.uid import UID

    from radnode_core.ingest import _read_file_dataset, check_structure, decode_complete_file

    def reader_then_walk(i: int) -> None:
        path, offset, ts = spooled[i]
        with path.open("rb") as fp:
            _read_file_dataset(fp, offset, UID(ts))
            with mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)[offset:]
                try:
                    check_structure(view, UID(ts))
                finally:
                    view.release()

    def walk_collecting(i: int) -> None:
        decode_complete_file(*spooled[i])

    return {"pydicom reader + walk": reader_then_walk, "walk collecting": walk_collecting}


def index_ways(
    files: Sequence[Path], folder: Path
) -> tuple[dict[str, Callable[[int], None]], Callable[[], int]]:
    """The two ways of indexing, each into its own SQLite index; and a closer that checks
    both indexed the same number of instances."""
    from pydicom import dcmread

    from radnode_core.index import Index, InstanceRecord, record_fields_from_dataset

    fields = []
    for source in files:
        ds = dcmread(source, stop_before_pixels=True)
        fields.append(record_fields_from_dataset(ds, str(ds.file_meta.TransferSyntaxUID), "CT"))
    core = Index(f"sqlite:///{folder / 'core.sqlite3'}")
    dbapi = Index(f"sqlite:///{folder / 'dbapi.sqlite3'}")
    counter = iter(range(10**9))

    def record(i: int) -> InstanceRecord:
        # A new SOP Instance UID every call: each round indexes new instances.
        values = dict(fields[i])
        values["sop_instance_uid"] = f"{values['sop_instance_uid']}.{next(counter)}"
        return InstanceRecord(
            path=f"studies/{i}.dcm", size=525_000, received_at=time.time(), **values
        )

    def through_core(i: int) -> None:
        rec = record(i)
        core._add_known(rec, core._rows(rec))  # a new UID: SQLAlchemy Core's insert

    def on_dbapi(i: int) -> None:
        dbapi.add_instance(record(i))

    def close() -> int:
        """Both indexes hold every instance each way indexed; returns how many."""
        try:
            counts = core.counts()["instances"], dbapi.counts()["instances"]
            if counts[0] != counts[1] or not counts[0]:
                raise RuntimeError(f"the two indexes hold {counts[0]} and {counts[1]} instances")
            return counts[0]
        finally:
            core.close()
            dbapi.close()

    return {"SQLAlchemy Core": through_core, "DBAPI, compiled once": on_dbapi}, close


def measure(
    ways: dict[str, Callable[[int], None]], count: int, rounds: int
) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) ms per slice of each way; one unmeasured round warms them."""
    for step in ways.values():
        _timed(step, min(count, 20))
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for r in range(rounds):
        for name in list(ways)[r % 2 :] + list(ways)[: r % 2]:  # alternate who goes first
            samples[name].append(_timed(ways[name], count))
    return {
        name: (
            1000 * statistics.median(w for w, _ in runs) / count,
            1000 * statistics.median(c for _, c in runs) / count,
        )
        for name, runs in samples.items()
    }


def report(results: dict[str, dict[str, tuple[float, float]]], slices: int, rounds: int) -> str:
    machine = machine_info()
    lines = [
        f"Per-slice steps of a C-STORE, in-process: {slices} slices of the synthetic 512x512 "
        f"CT study, median of {rounds} rounds.",
        "",
        f"Machine: {machine['nproc']} CPUs, {machine['cpu']}, Linux {machine['kernel']}, "
        f"Python {machine['python']}; radnode git {git_state()}; load average "
        f"{os.getloadavg()[0]:.1f} at the end. SQLite WAL, synchronous=NORMAL; no fsync.",
        "",
        "| step | way | ms per slice | CPU ms per slice | time / first way |",
        "|---|---|---:|---:|---:|",
    ]
    for step, ways in results.items():
        first = next(iter(ways.values()))[0]
        for name, (wall, cpu) in ways.items():
            lines.append(f"| {step} | {name} | {wall:.3f} | {cpu:.3f} | {wall / first:.2f}x |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300, help="slices (default 300)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each way (default 5)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    files = cached_study(args.work_dir, args.slices)
    with tempfile.TemporaryDirectory(prefix="radnode-steps-") as tmp:
        folder = Path(tmp)
        print(f"spooling {len(files)} slices", file=sys.stderr)
        spooled = _spool(files, folder)
        results = {}
        print("timing decode", file=sys.stderr)
        results["decode"] = measure(decode_ways(spooled), len(files), args.rounds)
        print("timing index", file=sys.stderr)
        ways, close = index_ways(files, folder)
        try:
            results["index"] = measure(ways, len(files), args.rounds)
        finally:
            indexed = close()
        print(f"each index holds the {indexed} instances it was given", file=sys.stderr)
    print(report(results, len(files), args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
