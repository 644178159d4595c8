"""Ingest benchmark: storescu associations into radnode, dcmtk storescp and Orthanc.

    python benchmarks/ingest.py [--slices 300] [--rounds 5] [--peers radnode,storescp,orthanc]
                                [--associations K] [--scp-processes N|auto]
                                [--work-dir DIR] [--json OUT]

The same synthetic CT study (``ai_node.synth``, chest, 512x512 int16, written once
and cached in the work dir) is sent by dcmtk ``storescu`` over ONE association to
each receiver in turn. Every receiver starts fresh, with an empty store, before the
clock starts; the clock covers the whole ``storescu`` run (process start,
association, every C-STORE and its response, release). After each run the receiver's
store is checked: it must hold every instance, or the benchmark stops with an error.

``--associations K`` (several modalities at once) sends K studies, each its own synthetic
CT (seeds 1..K), over K storescu associations started together; the clock runs from the
first storescu's start to the last one's end. ``radnode-multi`` is ``radnode scp`` with
``--scp-processes N`` (default auto: one receiver process per CPU), all on one port.
For every run the receiver's CPU time (user + system, of its process and every
descendant, from /proc/<pid>/stat) is read just before the first storescu starts and
after the last one ends: CPU seconds per instance say what each receiver costs,
whatever the machine's cores.

The peers run one after the other inside each round, and the first peer rotates from
round to round, so drifting machine load falls on all of them alike. The result is a
Markdown table (paste it into docs/benchmarks.md); ``--json`` keeps the raw timings.

Debian's dcmtk disables Nagle's algorithm only when ``TCP_NODELAY`` is set in the
environment; without it every dcmtk sender and receiver stalls about 45 ms per message
on loopback. So every process that speaks DICOM through dcmtk runs with
``TCP_NODELAY=1``: storescu, storescp, and Orthanc, which uses dcmtk's network library
(``--peers orthanc-nagle`` runs Orthanc without it, to show the difference).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PEERS: tuple[str, ...] = ("radnode", "storescp", "orthanc")
"""Receivers, in the order the first round runs them."""

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK_DIR = Path(tempfile.gettempdir()) / "radnode-bench"
STUDY_SEED = 1
CALLING_AET = "BENCH"
START_TIMEOUT_S = 60.0
SEND_TIMEOUT_S = 600.0

STORESCP_FLAGS: tuple[str, ...] = ("--single-process", "+B", "-pdu", "131072", "-dhl")
"""storescp as a plain file-writing receiver: one process (no fork per association), each
dataset written exactly as received behind a new file meta header (bit-preserving, as
radnode does), the largest receive PDU it supports (radnode advertises no limit), and no
reverse DNS lookup of the caller. Its files are not fsynced."""


class BenchmarkError(RuntimeError):
    """A receiver did not start, refused the study or did not store every instance."""


# -- small helpers ---------------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def first_line(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(cmd), check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    lines = [line.strip() for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    return lines[0] if lines else "unknown"


def require(name: str, path: str | None = None) -> str:
    """A system peer's path. This interpreter's scripts folder is skipped: pynetdicom
    installs its own ``storescp`` there, which would shadow dcmtk's."""
    scripts = Path(sysconfig.get_path("scripts")).resolve()
    search = os.pathsep.join(
        p
        for p in os.environ.get("PATH", os.defpath).split(os.pathsep)
        if p and Path(p).resolve() != scripts
    )
    found = path if path and Path(path).exists() else shutil.which(name, path=search)
    if found is None:
        raise BenchmarkError(f"{name} is not installed (run `make system-deps`)")
    return found


def radnode_exe() -> str:
    beside = Path(sys.executable).with_name("radnode")
    return str(beside) if beside.exists() else require("radnode")


def wait_until(
    ready: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    what: str,
    timeout: float = START_TIMEOUT_S,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchmarkError(f"{what} exited with status {proc.returncode} while starting")
        if ready():
            return
        time.sleep(0.05)
    raise BenchmarkError(f"{what} not ready after {timeout:.0f} s")


def port_open(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    return check


def http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def count_part10_files(folder: Path) -> int:
    """Files under ``folder`` that carry the PS3.10 ``DICM`` prefix after the preamble."""
    count = 0
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                f.seek(128)
                count += f.read(4) == b"DICM"
    return count


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the study -------------------------------------------------------------------------


def cached_study(work_dir: Path, slices: int, seed: int = STUDY_SEED) -> list[Path]:
    """The synthetic study's files, written once per slice count and seed and reused."""
    folder = work_dir / f"study-chest-{slices}-seed{seed}"
    files = sorted(folder.glob("IM*.dcm"))
    if (folder / "truth.json").exists() and len(files) == slices:
        return files
    from ai_node.synth import StudySpec, write_study

    log(f"writing the {slices}-slice synthetic study to {folder} (once)")
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    write_study(StudySpec(region="chest", slices=slices, nodules=2, seed=seed), partial)
    partial.rename(folder)
    return sorted(folder.glob("IM*.dcm"))


def warm_page_cache(files: Sequence[Path]) -> None:
    """Read every file once so no peer pays for the first read from disk."""
    for path in files:
        with path.open("rb") as f:
            while f.read(1 << 20):
                pass


# -- CPU time --------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stats() -> dict[int, tuple[int, float]]:
    """Every process's (parent pid, CPU seconds: user + system, its own and its reaped
    children's) from /proc/<pid>/stat."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after "(comm)": state ppid ... utime(14) stime(15) cutime(16) cstime(17).
        fields = text.rsplit(")", 1)[1].split()
        ticks = sum(int(f) for f in fields[11:15])
        stats[int(entry.name)] = (int(fields[1]), ticks / CLOCK_TICKS)
    return stats


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and every process below it (Linux)."""
    stats = _proc_stats()
    children: dict[int, list[int]] = {}
    for child, (parent, _cpu) in stats.items():
        children.setdefault(parent, []).append(child)
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        if current in stats:
            total += stats[current][1]
        todo.extend(children.get(current, []))
    return total


def echo(port: int, aet: str) -> bool:
    """Whether dcmtk's echoscu gets a C-ECHO answered on ``port`` within 30 s."""
    try:
        done = subprocess.run(
            [require("echoscu"), "-to", "30", "-aec", aet, "127.0.0.1", str(port)],
            capture_output=True,
            env=dcmtk_env(),
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


# -- receivers -------------------------------------------------------------------------


@dataclass
class Receiver:
    """One receiver started fresh for one timed run."""

    name: str
    aet: str
    run_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def environment(self) -> str:
        """What in the receiver's environment changes its speed, for the report."""
        nodelay = self.env().get("TCP_NODELAY")
        return f"TCP_NODELAY={nodelay}" if nodelay is not None else "TCP_NODELAY unset"

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return tree_cpu_seconds(self.proc.pid)

    def prepare(self) -> None:
        """Create the empty store (and any config) before the process starts."""

    def wait_ready(self) -> None:
        assert self.proc is not None
        wait_until(port_open(self.port), self.proc, self.name)

    def count_stored(self) -> dict[str, int]:
        """What the receiver holds after the run, by every measure available."""
        raise NotImplementedError

    def start(self) -> None:
        self.run_dir.mkdir(parents=True)
        self.prepare()
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=self.run_dir,
            )
        self.wait_ready()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class RadnodeReceiver(Receiver):
    """``radnode scp``: fsyncs file and directory and commits the SQLite index per instance;
    with ``processes`` other than 1, that many receiver processes on the one port."""

    def __init__(self, run_dir: Path, processes: int | str = 1, name: str = "radnode") -> None:
        super().__init__(name, "RADNODE", run_dir)
        self.data_dir = run_dir / "data"
        self.processes = processes
        self._auto: int | None = None

    def resolved_processes(self) -> int:
        """How many receiver processes ``processes`` makes, as the radnode under test
        resolves ``auto``."""
        if self.processes != "auto":
            return int(self.processes)
        if self._auto is None:
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "from radnode.scp_pool import available_cpus as n; print(n())",
                ],
                check=True,
                capture_output=True,
                text=True,
                env=self.env(),
                timeout=60,
            )
            self._auto = int(out.stdout)
        return self._auto

    def wait_ready(self) -> None:
        """The port answers a C-ECHO. With several receiver processes, the parent listens
        at once but hands connections over only once every receiver serves."""
        assert self.proc is not None
        super().wait_ready()
        wait_until(lambda: echo(self.port, self.aet), self.proc, self.name)

    def environment(self) -> str:
        # radnode sets TCP_NODELAY on its sockets itself, whatever the environment.
        return (
            f"{super().environment()} (radnode sets TCP_NODELAY itself), "
            f"scp_processes={self.processes} ({self.resolved_processes()}), fsync on, SQLite WAL"
        )

    def command(self) -> list[str]:
        return [
            radnode_exe(),
            "scp",
            "--data-dir",
            str(self.data_dir),
            "--dicom-port",
            str(self.port),
            "--aet",
            self.aet,
            "--log-format",
            "text",
            "--log-level",
            "WARNING",
            "--scp-processes",
            str(self.processes),
        ]

    def env(self) -> dict[str, str]:
        """No RADNODE_* setting from the caller; the radnode of this checkout (the one
        ``git_state`` describes) ahead of any installed copy."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RADNODE_")}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
        )
        return env

    def count_stored(self) -> dict[str, int]:
        files = sum(1 for p in (self.data_dir / "studies").rglob("*.dcm") if p.is_file())
        with sqlite3.connect(self.data_dir / "index.sqlite3") as db:
            rows = int(db.execute("SELECT count(*) FROM instances").fetchone()[0])
        return {"files": files, "index_rows": rows}


class StorescpReceiver(Receiver):
    """dcmtk ``storescp`` writing one file per instance into an empty folder."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__("storescp", "STORESCP", run_dir)
        self.out_dir = run_dir / "out"

    def prepare(self) -> None:
        self.out_dir.mkdir()

    def command(self) -> list[str]:
        return [
            require("storescp"),
            *STORESCP_FLAGS,
            "-aet",
            self.aet,
            "-od",
            str(self.out_dir),
            str(self.port),
        ]

    def env(self) -> dict[str, str]:
        return dcmtk_env()

    def count_stored(self) -> dict[str, int]:
        return {"files": count_part10_files(self.out_dir)}


class OrthancReceiver(Receiver):
    """Orthanc from Debian with a minimal config: SQLite index, files in its storage area."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__("orthanc", "ORTHANC", run_dir)
        self.http_port = free_port()
        self.storage_dir = run_dir / "storage"
        self.index_dir = run_dir / "index"
        self.config_path = run_dir / "orthanc.json"

    def prepare(self) -> None:
        self.storage_dir.mkdir()
        self.index_dir.mkdir()
        self.config_path.write_text(
            json.dumps(
                orthanc_config(
                    self.storage_dir, self.index_dir, self.port, self.http_port, self.aet
                ),
                indent=2,
            )
        )

    def command(self) -> list[str]:
        return [require("Orthanc", "/usr/sbin/Orthanc"), str(self.config_path)]

    def env(self) -> dict[str, str]:
        # Debian's Orthanc speaks DICOM through the shared dcmtk network library
        # (libdcmnet), which reads TCP_NODELAY like storescp does.
        return dcmtk_env()

    def wait_ready(self) -> None:
        assert self.proc is not None

        def answers() -> bool:
            try:
                http_json(f"http://127.0.0.1:{self.http_port}/system", timeout=1.0)
            except (OSError, urllib.error.URLError, ValueError):
                return False
            return True

        wait_until(answers, self.proc, self.name)
        wait_until(port_open(self.port), self.proc, self.name)

    def count_stored(self) -> dict[str, int]:
        stats = http_json(f"http://127.0.0.1:{self.http_port}/statistics")
        return {
            "files": count_part10_files(self.storage_dir),
            "index_instances": int(stats["CountInstances"]),
        }


class OrthancNagleReceiver(OrthancReceiver):
    """Orthanc as Debian ships it, without TCP_NODELAY: each C-STORE waits ~50 ms on loopback."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir)
        self.name = "orthanc-nagle"

    def env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}


def orthanc_config(
    storage: Path, index: Path, dicom_port: int, http_port: int, aet: str
) -> dict[str, Any]:
    """Everything else keeps Orthanc 1.10's defaults (SyncStorageArea true, PDU 16 KiB...)."""
    return {
        "Name": "radnode-bench",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(index),
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "DicomCheckCalledAet": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
    }


RECEIVERS: dict[str, Callable[[Path, argparse.Namespace], Receiver]] = {
    "radnode": lambda run_dir, _args: RadnodeReceiver(run_dir),
    "radnode-multi": lambda run_dir, args: RadnodeReceiver(
        run_dir, args.scp_processes, "radnode-multi"
    ),
    "storescp": lambda run_dir, _args: StorescpReceiver(run_dir),
    "orthanc": lambda run_dir, _args: OrthancReceiver(run_dir),
    "orthanc-nagle": lambda run_dir, _args: OrthancNagleReceiver(run_dir),
}
"""Every receiver ``--peers`` accepts; ``radnode-multi`` and ``orthanc-nagle`` run only when
asked for."""


# -- one timed run ---------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    round: int
    peer: str
    seconds: float
    stored: dict[str, int]
    cpu_seconds: float


@contextmanager
def running(receiver: Receiver) -> Iterator[Receiver]:
    try:
        receiver.start()
        yield receiver
    finally:
        receiver.stop()


def send_studies(receiver: Receiver, studies: Sequence[Sequence[Path]]) -> tuple[float, float]:
    """Time one storescu association per study, all started together, each with its own
    calling AE; fail unless every storescu succeeds. Returns (seconds, receiver CPU s)."""
    exe = require("storescu")
    commands = [
        [
            exe,
            "-aet",
            f"{CALLING_AET}{i}" if len(studies) > 1 else CALLING_AET,
            "-aec",
            receiver.aet,
            "127.0.0.1",
            str(receiver.port),
            *map(str, files),
        ]
        for i, files in enumerate(studies, start=1)
    ]
    cpu_before = receiver.cpu_seconds()
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dcmtk_env()
        )
        for cmd in commands
    ]
    results = []
    try:
        for proc in procs:
            _out, err = proc.communicate(timeout=SEND_TIMEOUT_S)
            results.append((proc.returncode, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    elapsed = time.perf_counter() - started
    cpu = receiver.cpu_seconds() - cpu_before
    for code, err in results:
        if code != 0:
            raise BenchmarkError(
                f"storescu -> {receiver.name} exited with {code}:\n{err.strip()[-2000:]}\n"
                f"--- {receiver.name} log ---\n{receiver.log_tail()}"
            )
    return elapsed, cpu


def timed_run(
    peer: str,
    round_no: int,
    studies: Sequence[Sequence[Path]],
    runs_dir: Path,
    args: argparse.Namespace,
) -> Run:
    run_dir = runs_dir / f"{peer}-round{round_no}"
    shutil.rmtree(run_dir, ignore_errors=True)
    receiver = RECEIVERS[peer](run_dir, args)
    total = sum(len(files) for files in studies)
    try:
        with running(receiver):
            seconds, cpu = send_studies(receiver, studies)
            stored = receiver.count_stored()
        missing = {what: n for what, n in stored.items() if n != total}
        if missing:
            raise BenchmarkError(
                f"{peer} acknowledged every study but holds {missing} instead of {total}"
                f" (round {round_no}); see {receiver.log_path}"
            )
    except BaseException:
        log(f"keeping {run_dir} for inspection")
        raise
    shutil.rmtree(run_dir, ignore_errors=True)
    return Run(round_no, peer, seconds, stored, cpu)


# -- report ----------------------------------------------------------------------------


@dataclass
class Summary:
    peer: str
    times: list[float]
    cpu: list[float]
    environment: str = ""

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def minimum(self) -> float:
        return min(self.times)


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count() or "?"),
        "cpu": cpu,
        "kernel": platform.release(),
        # The interpreter's installation: a distribution's build (/usr) or another.
        "python": f"{platform.python_version()} ({sys.base_prefix})",
    }


def git_state() -> str:
    """The checkout the radnode under test came from: commit, and whether it has edits."""
    repo = REPO
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "describe", "--always", "--dirty"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def versions() -> dict[str, str]:
    dcmtk = first_line([require("storescu"), "--version"]).strip("$ ").replace("dcmtk: ", "dcmtk ")
    orthanc = first_line([require("Orthanc", "/usr/sbin/Orthanc"), "--version"]).split()
    return {
        "radnode": f"{first_line([radnode_exe(), '--version'])} (git {git_state()})",
        "storescu": dcmtk,
        "orthanc": " ".join([Path(orthanc[0]).name, *orthanc[1:]]) if orthanc else "unknown",
    }


def markdown_table(summaries: Sequence[Summary], n_images: int, n_bytes: int) -> list[str]:
    base = next((s.median for s in summaries if s.peer == "radnode"), None)
    mb = n_bytes / 1e6
    header = [
        "peer",
        "median s",
        "min s",
        "images/s",
        "MB/s",
        "CPU s",
        "CPU ms/instance",
        "time / radnode",
    ]
    rows = []
    for s in summaries:
        ratio = f"{s.median / base:.2f}x" if base else "-"
        rows.append(
            [
                s.peer,
                f"{s.median:.2f}",
                f"{s.minimum:.2f}",
                f"{n_images / s.median:.0f}",
                f"{mb / s.median:.0f}",
                f"{s.cpu_median:.2f}",
                f"{1000 * s.cpu_median / n_images:.2f}",
                ratio,
            ]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return [line(header), rule, *(line(r) for r in rows)]


def verdict(summaries: Sequence[Summary]) -> list[str]:
    """Each radnode's speed relative to each other receiver, and to the fastest of them
    (medians)."""
    others = [s for s in summaries if not s.peer.startswith("radnode")]
    lines = []
    for mine in (s for s in summaries if s.peer.startswith("radnode")):
        if not others:
            break
        speeds = ", ".join(f"{s.median / mine.median:.2f}x {s.peer}'s speed" for s in others)
        best = min(others, key=lambda s: s.median)
        lines.append(
            f"{mine.peer} runs at {speeds}; against the fastest other receiver, {best.peer}, "
            f"it takes {mine.median / best.median:.2f}x the time."
        )
    return lines


def report(
    summaries: Sequence[Summary],
    studies: Sequence[Sequence[Path]],
    n_bytes: int,
    rounds: int,
    info: dict[str, str],
    vers: dict[str, str],
    today: str,
) -> str:
    n_images = sum(len(files) for files in studies)
    if len(studies) == 1:
        what = (
            f"{n_images} slices, {n_bytes / 1e6:.0f} MB, {rounds} round(s), "
            "one storescu association per run."
        )
    else:
        what = (
            f"{len(studies)} storescu associations at once, each sending its own "
            f"{len(studies[0])}-slice study: {n_images} instances, {n_bytes / 1e6:.0f} MB, "
            f"{rounds} round(s)."
        )
    lines = [
        f"Result of {today}: {what}",
        "",
        (
            f"Machine: {info['nproc']} CPUs, {info['cpu']}, Linux {info['kernel']}, "
            f"Python {info['python']}."
        ),
        f"Versions: {vers['radnode']}; {vers['storescu']}; {vers['orthanc']}.",
        "Environment: storescu TCP_NODELAY=1; "
        + "; ".join(f"{s.peer} {s.environment}" for s in summaries)
        + ".",
        "",
        *markdown_table(summaries, n_images, n_bytes),
    ]
    for line in verdict(summaries):
        lines += ["", line]
    per_round = "; ".join(f"{s.peer} {', '.join(f'{t:.2f}' for t in s.times)}" for s in summaries)
    lines += ["", f"Rounds, in seconds: {per_round}."]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/ingest.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--slices", type=int, default=300, help="slices in the study (default 300)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every peer (default 5)")
    parser.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"comma-separated receivers (default {','.join(PEERS)}; also orthanc-nagle)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=DEFAULT_WORK_DIR,
        help=f"study cache and receivers' stores (default {DEFAULT_WORK_DIR})",
    )
    parser.add_argument(
        "--associations",
        type=int,
        default=1,
        metavar="K",
        help="storescu associations at once, each sending its own study (default 1)",
    )
    parser.add_argument(
        "--scp-processes",
        default="auto",
        metavar="N|auto",
        help="receiver processes of the radnode-multi peer (default auto: one per CPU)",
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the raw timings here")
    args = parser.parse_args(argv)
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in args.peers if p not in RECEIVERS]
    if unknown or not args.peers:
        parser.error(f"unknown peer(s) {unknown}; choose from {', '.join(RECEIVERS)}")
    if args.slices < 1 or args.rounds < 1 or args.associations < 1:
        parser.error("--slices, --rounds and --associations must be at least 1")
    if args.scp_processes != "auto" and not (
        args.scp_processes.isdigit() and int(args.scp_processes) >= 1
    ):
        parser.error("--scp-processes takes a number of processes (1 or more) or auto")
    return args


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    work_dir: Path = args.work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    info, vers = machine_info(), versions()
    for what, value in (*info.items(), *vers.items()):
        log(f"{what}: {value}")

    studies = [
        cached_study(work_dir, args.slices, STUDY_SEED + i) for i in range(args.associations)
    ]
    files = [path for study in studies for path in study]
    n_bytes = sum(p.stat().st_size for p in files)
    warm_page_cache(files)
    runs_dir = work_dir / "runs"
    runs_dir.mkdir(exist_ok=True)
    environments = {p: RECEIVERS[p](runs_dir, args).environment() for p in args.peers}
    for peer, environment in environments.items():
        log(f"{peer} environment: {environment}")

    runs: list[Run] = []
    peers: list[str] = args.peers
    for round_no in range(1, args.rounds + 1):
        shift = (round_no - 1) % len(peers)
        for peer in peers[shift:] + peers[:shift]:
            log(f"round {round_no}/{args.rounds}: {peer} ...")
            run = timed_run(peer, round_no, studies, runs_dir, args)
            runs.append(run)
            log(
                f"round {round_no}/{args.rounds}: {peer} {run.seconds:.2f} s, "
                f"CPU {run.cpu_seconds:.2f} s, stored {run.stored}"
            )

    summaries = [
        Summary(
            p,
            [r.seconds for r in runs if r.peer == p],
            [r.cpu_seconds for r in runs if r.peer == p],
            environments[p],
        )
        for p in peers
    ]
    today = dt.date.today().isoformat()
    print(report(summaries, studies, n_bytes, args.rounds, info, vers, today))
    return {
        "date": today,
        "slices": args.slices,
        "associations": args.associations,
        "instances": len(files),
        "bytes": n_bytes,
        "rounds": args.rounds,
        "machine": info,
        "versions": vers,
        "storescp_flags": list(STORESCP_FLAGS),
        "peers": {
            s.peer: {
                "median_s": s.median,
                "min_s": s.minimum,
                "times_s": s.times,
                "cpu_s": s.cpu,
                "cpu_ms_per_instance": 1000 * s.cpu_median / len(files),
                "environment": s.environment,
            }
            for s in summaries
        },
        "runs": [
            {
                "round": r.round,
                "peer": r.peer,
                "seconds": r.seconds,
                "cpu_seconds": r.cpu_seconds,
                "stored": r.stored,
            }
            for r in runs
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Turn SIGTERM into SystemExit so every receiver is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        result = run_benchmark(args)
    except BenchmarkError as exc:
        log(f"benchmark failed: {exc}")
        return 1
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
