"""radnode itself as a subprocess: ``radnode <role>`` on free loopback ports with its own
data directory, stopped by whoever started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Self

from tests.support.processes import free_port, wait_port
from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
RADNODE = [sys.executable, "-m", "radnode.cli"]


class RadnodeProcess:
    """A `radnode <role>` subprocess on free ports with its own data dir."""

    def __init__(self, data_dir: Path, role: str = "scp", *extra: str,
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.role = role
        self.extra = list(extra)
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.aet = "RADNODE"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-{role}.log"

    def start(self) -> Self:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*RADNODE, self.role, "--data-dir", str(self.data_dir),
                 "--dicom-port", str(self.dicom_port), "--http-port", str(self.http_port),
                 "--aet", self.aet, *self.extra],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO,
            )
        wait_port(self.http_port if self.role == "api" else self.dicom_port, self.proc)
        if self.role == "serve":
            wait_port(self.http_port, self.proc)
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

    def start(self) -> Self:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"worker-{id(self):x}.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*RADNODE, "worker", "--data-dir", str(self.data_dir), *self.extra],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO,
            )
        return self

    def wait_warm(self, timeout: float = 240) -> None:
        def warm() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log()[-3000:]
            return "analysis pipeline warmed up" in self.log()

        wait_for(warm, timeout=timeout, what="the worker to warm up", interval=0.2)
