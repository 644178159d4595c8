"""Shared fixtures: free ports, synthetic studies, and real processes (radnode, dcmtk, Orthanc).

Servers run as subprocesses on free loopback ports and are stopped by the
fixture that started them. The peers (dcmtk, Orthanc, dicom3tools) are
Debian packages that `make test` installs; a missing one fails the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import TypeVar

import pytest
from pydicom.filereader import _read_file_meta_info

from ai_node.synth import StudySpec, SyntheticStudy, write_study
from tests.support.processes import free_port

REPO = Path(__file__).resolve().parents[1]
RADNODE = [sys.executable, "-m", "radnode.cli"]
T = TypeVar("T")


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def wait_for(check: Callable[[], T], timeout: float = 120, what: str = "condition",
             interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy (returned); AssertionError naming
    ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make system-deps` (make test does)")
    return path


def dataset_bytes(path: Path) -> bytes:
    """The dataset part of a Part 10 file (what travels in a C-STORE)."""
    raw = path.read_bytes()
    f = BytesIO(raw)
    f.seek(132)
    _read_file_meta_info(f)
    return raw[f.tell():]


def dcmtk_env() -> dict[str, str]:
    # DCMTK stalls ~45 ms per message on loopback unless Nagle is disabled.
    return {**os.environ, "TCP_NODELAY": "1"}


class RadnodeProcess:
    """A `radnode <role>` subprocess on free ports with its own data dir."""

    def __init__(self, data_dir: Path, role: str = "scp", *extra: str, env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.role = role
        self.extra = list(extra)
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.aet = "RADNODE"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-{role}.log"

    def start(self) -> RadnodeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*RADNODE, self.role, "--data-dir", str(self.data_dir), "--dicom-port", str(self.dicom_port),
             "--http-port", str(self.http_port), "--aet", self.aet, *self.extra],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO,
        )
        wait_for_port(self.http_port if self.role == "api" else self.dicom_port, self.proc)
        if self.role == "serve":
            wait_for_port(self.http_port, self.proc)
        return self

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class WorkerProcess(RadnodeProcess):
    """``radnode worker``: it listens on no port, so it is ready once it has warmed up."""

    def start(self) -> WorkerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"worker-{id(self):x}.log"
        self.proc = subprocess.Popen(
            [*RADNODE, "worker", "--data-dir", str(self.data_dir), *self.extra],
            stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT, env=self.env, cwd=REPO,
        )
        return self

    def wait_warm(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while "analysis pipeline warmed up" not in self.log():
            assert self.proc is not None and self.proc.poll() is None, self.log()[-3000:]
            assert time.monotonic() < deadline, f"worker not warm after {timeout}s"
            time.sleep(0.2)


@pytest.fixture
def radnode_scp(tmp_path: Path) -> Iterator[RadnodeProcess]:
    node = RadnodeProcess(tmp_path / "data", "scp").start()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def chest_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticStudy, list[Path]]:
    """A 100-slice 512x512 synthetic chest CT with two nodules (written once per session)."""
    out = tmp_path_factory.mktemp("chest_study")
    return write_study(StudySpec(region="chest", slices=100, nodules=2, seed=7), out)


def storescu(port: int, files: list[Path] | list[str], *args: str, aet: str = "MODALITY",
             called: str = "RADNODE", timeout: float = 300) -> subprocess.CompletedProcess[str]:
    exe = require_tool("storescu")
    return subprocess.run(
        [exe, *args, "-aet", aet, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=timeout,
    )
