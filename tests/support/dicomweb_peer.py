"""Orthanc with its DICOMweb plugin as a reference peer (tests and
``python -m benchmarks.qido_wado``).

Debian's ``orthanc`` + ``orthanc-dicomweb``, started with a generated config on
free loopback ports, SQLite index, and stopped by whoever started it.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.processes import free_port, stop_process

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class PeerError(RuntimeError):
    """The peer is missing or did not start."""


class OrthancDicomWeb:
    """One Orthanc process serving DICOMweb at ``self.url`` (``.../dicom-web``)."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = Path(work_dir)
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.http_port}/dicom-web"
        self.rest = f"http://127.0.0.1:{self.http_port}"
        self.auth: tuple[str, str] | None = None  # HTTP basic credentials, when it wants them
        self.env: dict[str, str] | None = None  # its environment (default: this process's)

    def headers(self) -> dict[str, str]:
        if self.auth is None:
            return {}
        token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def config(self) -> dict[str, object]:
        return {
            "Name": "radnode-peer",
            "StorageDirectory": str(self.work_dir / "storage"),
            "IndexDirectory": str(self.work_dir / "index"),
            "DicomAet": "ORTHANC",
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "CaseSensitivePN": False,
            "LimitFindResults": 0,
            "LimitFindInstances": 0,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }

    def start(self, timeout: float = 60.0) -> Self:
        if shutil.which("Orthanc") is None and not Path(ORTHANC).exists():
            raise PeerError("Orthanc is not installed (make system-deps)")
        if not Path(DICOMWEB_PLUGIN).exists():
            raise PeerError("the Orthanc DICOMweb plugin is not installed (orthanc-dicomweb)")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=2))
        log = (self.work_dir / "orthanc.log").open("ab")
        self.proc = subprocess.Popen(
            [ORTHANC, str(config)], stdout=log, stderr=subprocess.STDOUT, env=self.env
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PeerError(f"Orthanc exited with {self.proc.returncode} while starting")
            try:
                probe = urllib.request.Request(
                    f"{self.rest}/plugins/dicom-web", headers=self.headers()
                )
                with urllib.request.urlopen(probe, timeout=1):
                    return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        self.stop()
        raise PeerError("Orthanc did not answer in time")

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process(self.proc)
        self.proc = None

    def upload(self, part10: bytes) -> None:
        """Store one Part 10 file through Orthanc's REST API (faster than its STOW-RS)."""
        request = urllib.request.Request(
            f"{self.rest}/instances",
            data=part10,
            method="POST",
            headers={"Content-Type": "application/dicom", **self.headers()},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
