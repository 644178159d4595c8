"""Orthanc as the PACS, started from the stack's own config file (tests,
``python -m benchmarks.analysis e2e --via orthanc``).

``deploy/orthanc/orthanc.json`` is what docker-compose mounts into the orthancteam
image; here Debian's Orthanc runs with the same file, only the machine-specific
keys rewritten: free loopback ports, a work directory, the plugin paths, one
registered user, and the radnode modality's address.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from radnode_core.settings import PacsPeer
from tests.support.dicomweb_peer import DICOMWEB_PLUGIN, OrthancDicomWeb

REPO = Path(__file__).resolve().parents[2]
STACK_CONFIG = REPO / "deploy" / "orthanc" / "orthanc.json"
PYTHON_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPython.so"
USER = "radnode"


class OrthancPacs(OrthancDicomWeb):
    """Orthanc with the stack's config, authentication on, on free loopback ports."""

    def __init__(
        self,
        work_dir: Path,
        radnode_port: int | None = None,
        python_script: Path | None = None,
        extra: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(work_dir)
        self.env = env
        self.credentials = (USER, secrets.token_hex(12))
        self.auth = self.credentials
        self.radnode_port = radnode_port
        self.python_script = python_script
        self.extra = extra or {}

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = json.loads(STACK_CONFIG.read_text())
        modalities = config["DicomModalities"]
        if self.radnode_port is not None:
            modalities["radnode"].update(Host="127.0.0.1", Port=self.radnode_port)
        plugins = [DICOMWEB_PLUGIN]
        if self.python_script is not None:
            plugins.append(PYTHON_PLUGIN)
            config["PythonScript"] = str(self.python_script)
        config.update(
            StorageDirectory=str(self.work_dir / "storage"),
            IndexDirectory=str(self.work_dir / "index"),
            DicomPort=self.dicom_port,
            HttpPort=self.http_port,
            RemoteAccessAllowed=False,
            RegisteredUsers={self.credentials[0]: self.credentials[1]},
            Plugins=plugins,
            **self.extra,
        )
        return config

    def peer(self, name: str = "orthanc", **options: Any) -> PacsPeer:
        """This Orthanc as radnode's PACS peer."""
        values: dict[str, Any] = {
            "name": name,
            "dicomweb_url": self.url,
            "username": self.credentials[0],
            "password": self.credentials[1],
            "ae_title": "ORTHANC",
            "host": "127.0.0.1",
            "port": self.dicom_port,
        }
        values.update(options)
        return PacsPeer(**values)

    def peer_json(self, name: str = "orthanc", **options: Any) -> str:
        """``RADNODE_PACS_PEERS`` for a radnode process."""
        peer = self.peer(name, **options)
        data = peer.model_dump(mode="json", exclude_none=True)
        data["password"] = peer.password.get_secret_value() if peer.password else None
        return json.dumps([data])

    def get_json(self, path: str) -> Any:
        import urllib.request

        request = urllib.request.Request(f"{self.rest}{path}", headers=self.headers())
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
