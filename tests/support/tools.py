"""The Debian command-line peers the tests drive: dcmtk's storescu and dicom3tools'
dciodvfy. `make test` installs them (``make system-deps``); a missing one fails the test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest


def which_system(name: str) -> str | None:
    """``shutil.which``, skipping this interpreter's scripts folder: pynetdicom installs its
    own ``storescp``, ``echoscp`` and ``qrscp`` there, which would shadow dcmtk's in an
    activated virtual environment."""
    scripts = Path(sysconfig.get_path("scripts")).resolve()
    search = [p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p]
    kept = [p for p in search if Path(p).resolve() != scripts]
    return shutil.which(name, path=os.pathsep.join(kept))


def require_tool(name: str) -> str:
    path = which_system(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make system-deps` (make test does)")
    return path


def dcmtk_env() -> dict[str, str]:
    # DCMTK stalls ~45 ms per message on loopback unless Nagle is disabled.
    return {**os.environ, "TCP_NODELAY": "1"}


def storescu(port: int, files: list[Path] | list[str], *args: str, aet: str = "MODALITY",
             called: str = "RADNODE", timeout: float = 300) -> subprocess.CompletedProcess[str]:
    exe = require_tool("storescu")
    return subprocess.run(
        [exe, *args, "-aet", aet, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=timeout,
    )


def dciodvfy(path: Path) -> str:
    """dicom3tools' validator output; the caller asserts there is no Error line."""
    exe = require_tool("dciodvfy")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return proc.stdout + proc.stderr
