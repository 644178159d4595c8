"""Helpers of the reliability suite: its size knob, process figures, store checks.

``RADNODE_RELIABILITY=full`` (set by ``make test-reliability``) runs every part at full
size; unset or ``short`` runs the small version that ``make test`` includes.
``RADNODE_RELIABILITY_FIGURES=<file>`` appends each part's figures to that file as
JSON lines (docs/reliability.md is written from them).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any, TypeVar

from tests.support.dicom_bytes import dataset_bytes

MODE = os.environ.get("RADNODE_RELIABILITY", "short")
FULL = MODE == "full"
T = TypeVar("T")


def scale(short: T, full: T) -> T:
    """The short value in `make test`, the full one in `make test-reliability`."""
    return full if FULL else short


def record(part: str, **figures: Any) -> None:
    """Append a part's figures (with the mode) to $RADNODE_RELIABILITY_FIGURES, if set."""
    target = os.environ.get("RADNODE_RELIABILITY_FIGURES")
    if not target:
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"part": part, "mode": MODE, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **figures}
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")


# -- the server process ----------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident set size (VmRSS) of a process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- dcmtk ---------------------------------------------------------------------------------


def acknowledged(storescu_output: str) -> list[Path]:
    """Files for which storescu received a Success response, from its -v log."""
    acked: list[Path] = []
    current: Path | None = None
    for line in storescu_output.splitlines():
        if m := re.match(r"I: Sending file: (.+)$", line):
            current = Path(m.group(1))
        elif "Received Store Response (Success)" in line and current is not None:
            acked.append(current)
            current = None
    return acked


# -- the store ---------------------------------------------------------------------------


def files_on_disk(data_dir: Path) -> list[str]:
    return sorted(p.relative_to(data_dir).as_posix() for p in (data_dir / "studies").rglob("*")
                  if p.is_file())


def temp_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "tmp").rglob("*") if p.is_file())


def indexed_paths(data_dir: Path) -> list[str]:
    with sqlite3.connect(data_dir / "index.sqlite3") as db:
        return sorted(r[0] for r in db.execute("select path from instances"))


def indexed_path_of(data_dir: Path, sop_instance_uid: str) -> str | None:
    with sqlite3.connect(data_dir / "index.sqlite3") as db:
        row = db.execute("select path from instances where sop_instance_uid = ?",
                         (sop_instance_uid,)).fetchone()
    return row[0] if row else None


def stored_dataset(data_dir: Path, relative: str) -> bytes:
    return dataset_bytes(data_dir / relative)


def assert_store_consistent(data_dir: Path) -> int:
    """No temp file, no orphan: the index lists exactly the files on disk. Returns the count."""
    assert temp_files(data_dir) == [], temp_files(data_dir)
    on_disk = files_on_disk(data_dir)
    assert indexed_paths(data_dir) == on_disk
    return len(on_disk)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]
