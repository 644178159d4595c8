"""Helpers of the hostile-input tests: a `radnode` with authentication on, small instances
with chosen attributes, raw HTTP requests, and reading the node's logs.

(A helper module, not a conftest: test modules import what they use.)
"""

from __future__ import annotations

import json
import socket
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset, FileMetaDataset, config
from pydicom.dataelem import DataElement
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.support.radnode_process import RadnodeProcess

ADMIN = "admin-token-hostile-0123456789"
RADIOLOGIST = "radiologist-token-hostile-0123456789"
MODALITY = "modality-token-hostile-0123456789"
VIEWER = "viewer-token-hostile-0123456789"
TOKENS = {ADMIN: "admin", RADIOLOGIST: "radiologist", MODALITY: "modality", VIEWER: "viewer"}
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def auth_env(**extra: str) -> dict[str, str]:
    """The environment of a node with authentication on and the four tokens above."""
    return {
        "RADNODE_AUTH_ENABLED": "true",
        "RADNODE_API_TOKENS": json.dumps(TOKENS),
        "RADNODE_FSYNC": "false",
        **extra,
    }


def start(tmp: Path, role: str, **env: str) -> RadnodeProcess:
    return RadnodeProcess(tmp / "data", role, env=auth_env(**env)).start()


def instance(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    patient_name: str = "Hostile^Test",
    frames: int = 1,
    size: int = 8,
    raw: dict[str, tuple[str, str]] | None = None,
) -> Dataset:
    """A small secondary capture image; ``raw`` sets elements as given (keyword -> VR,
    value), unchecked, e.g. an Instance Number of 20 digits."""
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = "HOSTILE1"
    ds.Modality = "OT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = (np.arange(size * size * frames) % 251).astype(np.uint8).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with config.disable_value_validation():
        for keyword, (vr, value) in (raw or {}).items():
            ds[keyword] = DataElement(keyword, vr, value)
    return ds


def part10(ds: Dataset) -> bytes:
    buf = BytesIO()
    with config.disable_value_validation():
        dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def raw_request(port: int, head: bytes, body: bytes = b"", wait_s: float = 10.0) -> bytes:
    """Send a request's head (and some body) on a new connection; what came back within
    ``wait_s`` seconds, or until the server closed the connection."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head + body)
        s.settimeout(wait_s)
        answer = b""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
            if b"\r\n\r\n" in answer and _complete(answer):
                break
        return answer


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def log_lines(node: RadnodeProcess) -> list[dict[str, Any]]:
    """The node's JSON log lines (others are left out)."""
    out = []
    for line in node.log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def study_folders(node: RadnodeProcess) -> list[Path]:
    return sorted(p for p in (node.data_dir / "studies").iterdir() if p.is_dir())
