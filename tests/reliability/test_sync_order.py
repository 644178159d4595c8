"""The system calls of one C-STORE, traced with strace on a running `radnode scp`: every
sync the durability claim rests on is done before the success response is sent.

The claim (docs/reliability.md): a C-STORE success means the instance's bytes and its
name are on stable storage, and the index lists it, or will after any unclean stop. So
before the C-STORE-RSP P-DATA-TF (PS3.8 9.3.5) leaves the receiver:

1. the spool file that becomes the instance is fsynced;
2. it is renamed to its place under ``studies/``, every folder it made on the way is
   fsynced after its entry was made, and then the series folder holding the new name;
3. the index commit is in SQLite's write-ahead log: a commit frame written to
   ``index.sqlite3-wal``. The index runs with ``synchronous=NORMAL``, so that frame is not
   synced: it survives a crash of the process (the kill -9 tests), and after a power cut
   the reconciliation at the next start indexes every durable file the index lacks
   (tests/radnode/test_store.py), so the durable file stands for the row.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.support.radnode_process import RadnodeProcess
from tests.support.tools import storescu
from tests.support.wait import wait_for

STRACE = shutil.which("strace")
pytestmark = pytest.mark.skipif(STRACE is None, reason="strace is not installed")

TRACED = "fsync,fdatasync,rename,renameat,renameat2,link,linkat,mkdir,mkdirat,pwrite64,sendto"
_CALL = re.compile(r"^(?P<pid>\d+)\s+(?P<name>\w+)\((?P<args>.*)")
_RESUMED = re.compile(r"^(?P<pid>\d+)\s+<\.\.\. (?P<name>\w+) resumed>(?P<rest>.*)")
_RESULT = re.compile(r"\)\s+=\s+(-?\d+)")
_FD_PATH = re.compile(r"^\d+<(?P<path>[^>]*)>")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_COUNT_OFFSET = re.compile(r'"(?:\.\.\.)?, (\d+), (\d+)\)')


@dataclass
class Call:
    """One system call: its name, arguments as strace printed them, where its entry and its
    return are in the trace (line numbers), and what it returned."""

    pid: str
    name: str
    args: str
    start: int
    end: int = -1
    result: int | None = None

    @property
    def fd_path(self) -> str | None:
        match = _FD_PATH.match(self.args)
        return match["path"] if match else None

    @property
    def strings(self) -> list[str]:
        """The quoted arguments (paths, the first bytes of a buffer) as text."""
        return [_unescape(q).decode("latin-1") for q in _QUOTED.findall(self.args)]

    @property
    def count(self) -> int | None:
        """The byte count of a pwrite64."""
        match = _COUNT_OFFSET.search(self.args)
        return int(match.group(1)) if match else None


def _unescape(text: str) -> bytes:
    """strace's C escapes (``\\x04``, ``\\n``, ``\\"``) as the bytes they stand for."""
    return text.encode("latin-1").decode("unicode_escape").encode("latin-1")


def parse(trace: str) -> list[Call]:
    """The calls of an ``strace -f -y -x`` trace, an interrupted call joined with its
    ``resumed`` line."""
    calls: list[Call] = []
    pending: dict[tuple[str, str], Call] = {}
    for number, line in enumerate(trace.splitlines()):
        resumed = _RESUMED.match(line)
        if resumed:
            call = pending.pop((resumed["pid"], resumed["name"]), None)
            if call is not None:
                call.end = number
                result = _RESULT.search(resumed["rest"])
                call.result = int(result.group(1)) if result else None
            continue
        match = _CALL.match(line)
        if not match:
            continue
        call = Call(match["pid"], match["name"], match["args"], start=number)
        if line.rstrip().endswith("<unfinished ...>"):
            pending[(call.pid, call.name)] = call
        else:
            call.end = number
            result = _RESULT.search(line)
            call.result = int(result.group(1)) if result else None
        calls.append(call)
    return calls


def _attach(pid: int, out: Path) -> subprocess.Popen[str]:
    """strace every thread of ``pid`` (and threads it starts) into ``out``."""
    assert STRACE is not None
    tracer = subprocess.Popen(
        [
            STRACE,
            "-f",
            "-y",
            "-x",
            "-s",
            "16",
            "-e",
            f"trace={TRACED}",
            "-o",
            str(out),
            "-p",
            str(pid),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert tracer.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # "Process N attached with M threads"
        line = tracer.stderr.readline()
        if "attached" in line:
            return tracer
        if not line and tracer.poll() is not None:
            break
    tracer.kill()
    pytest.fail(f"strace could not attach to the receiver (pid {pid}): ptrace not allowed?")


def test_every_sync_happens_before_the_c_store_response(tmp_path, chest_study):
    _study, files = chest_study
    source = files[0]
    ds = dcmread(source, stop_before_pixels=True)
    node = RadnodeProcess(tmp_path / "data", "scp").start()
    trace_path = tmp_path / "trace.txt"
    try:
        tracer = _attach(node.proc.pid, trace_path)  # type: ignore[union-attr]
        try:
            sent = storescu(node.dicom_port, [source], timeout=60)
            assert sent.returncode == 0, sent.stderr[-2000:]
        finally:
            tracer.send_signal(signal.SIGINT)  # detach; the receiver runs on
            tracer.wait(timeout=30)
    finally:
        node.stop()

    data_dir = node.data_dir.resolve()
    studies = data_dir / "studies"
    study_dir = studies / ds.StudyInstanceUID
    series_dir = study_dir / ds.SeriesInstanceUID
    final = series_dir / f"{ds.SOPInstanceUID}.dcm"
    wait_for(final.is_file, timeout=5, what="the stored instance")
    calls = parse(trace_path.read_text())

    responses = [
        c for c in calls if c.name == "sendto" and c.strings and c.strings[0].startswith("\x04")
    ]
    assert len(responses) == 1, "one P-DATA-TF (the C-STORE-RSP) expected from the receiver"
    response = responses[0]

    def done_before_response(what: str, found: list[Call], returns: int = 0) -> Call:
        assert found, f"no {what} in the trace"
        call = found[-1]
        assert call.result == returns, f"{what} failed: {call}"
        assert 0 <= call.end < response.start, f"{what} returned after the response was sent"
        return call

    def fsyncs_of(path: Path) -> list[Call]:
        return [
            c
            for c in calls
            if c.name in ("fsync", "fdatasync")
            and c.fd_path == str(path)
            and c.start < response.start
        ]

    renames = [
        c
        for c in calls
        if c.name.startswith("rename") and len(c.strings) == 2 and c.strings[1] == str(final)
    ]
    rename = done_before_response("rename of the spool file into the store", renames)
    spool = rename.strings[0]
    assert spool.startswith(str(data_dir / "tmp")), spool
    file_sync = done_before_response("fsync of the instance file", fsyncs_of(Path(spool)))
    assert file_sync.end < rename.start, "the file was renamed into place before it was synced"

    # Folders made for the new study and series: each entry synced in its parent.
    for made in (study_dir, series_dir):
        mkdirs = [c for c in calls if c.name.startswith("mkdir") and str(made) in c.strings]
        mkdir = done_before_response(f"mkdir {made.name}", mkdirs)
        synced = [c for c in fsyncs_of(made.parent) if c.start > mkdir.end]
        done_before_response(f"fsync of {made.parent.name} after its new entry", synced)
    dir_syncs = [c for c in fsyncs_of(series_dir) if c.start > rename.end]
    dir_sync = done_before_response("fsync of the series folder after the rename", dir_syncs)

    wal = str(data_dir / "index.sqlite3-wal")
    # A WAL frame header (24 bytes) whose second word, the database size after the commit,
    # is not zero marks a commit frame (sqlite.org/fileformat2.html#walformat).
    commits = [
        c
        for c in calls
        if c.name == "pwrite64"
        and c.fd_path == wal
        and dir_sync.end < c.start < response.start
        and c.count == 24
        and c.strings
        and c.strings[0][4:8] != "\x00" * 4
    ]
    done_before_response("index commit frame written to the WAL", commits, returns=24)
