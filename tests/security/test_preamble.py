"""The 128-byte preamble (PS3.10 7.1) of every file radnode stores, serves or forwards is
zero, whatever preamble the sender's file had: a Part 10 file whose preamble is an ELF or PE
header (a file that is both DICOM and an executable) loses it on the way in."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.filewriter import dcmwrite

from ai_node.synth import StudySpec, write_study
from dicomweb.app import create_app
from dicomweb.multipart import iter_parts
from pacs_link.outbox import queue_study_results
from pacs_link.sender import OutboxSender
from radnode.assembly import build_node
from radnode_core.settings import PacsPeer, Settings
from tests.support.processes import free_port
from tests.support.radnode_process import RadnodeProcess
from tests.support.security import RELATED, stow_body
from tests.support.tools import storescu

ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + b"\x02\x00\x3e\x00"
PE = b"MZ\x90\x00\x03" + b"\x00" * 55 + b"\x80\x00\x00\x00"
ZERO = b"\x00" * 128


def _polyglot(src: Path, header: bytes, out: Path) -> Path:
    ds = dcmread(src)
    ds.preamble = header.ljust(128, b"\xcc")
    dcmwrite(out, ds, enforce_file_format=True)
    assert out.read_bytes()[:4] in (b"\x7fELF", b"MZ\x90\x00")
    return out


@pytest.fixture
def polyglots(tmp_path: Path) -> tuple[str, list[Path]]:
    study, files = write_study(
        StudySpec(region="chest", slices=2, seed=41, rows=32, columns=32), tmp_path / "src"
    )
    out = [
        _polyglot(files[0], ELF, tmp_path / "elf.dcm"),
        _polyglot(files[1], PE, tmp_path / "pe.dcm"),
    ]
    return study.study_instance_uid, out


class _Capture(BaseHTTPRequestHandler):
    """A STOW-RS receiver that keeps the bodies it gets (what radnode forwards)."""

    bodies: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers["Content-Length"])
        self.bodies.append((self.headers["Content-Type"], self.rfile.read(length)))
        answer = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def capture() -> Iterator[tuple[int, list[tuple[str, bytes]]]]:
    _Capture.bodies = []
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), _Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield port, _Capture.bodies
    server.shutdown()


def _parts(content_type: str, body: bytes) -> list[bytes]:
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"')
    return [body[p.start : p.end] for p in iter_parts(body, boundary)]


def test_cstore_stores_a_zero_preamble(tmp_path: Path, polyglots) -> None:
    _, files = polyglots
    node = RadnodeProcess(tmp_path / "data", "scp").start()
    try:
        assert storescu(node.dicom_port, files).returncode == 0
    finally:
        node.stop()
    stored = sorted((node.data_dir / "studies").rglob("*.dcm"))
    assert len(stored) == 2
    assert all(p.read_bytes()[:132] == ZERO + b"DICM" for p in stored)


def test_stow_stores_serves_and_forwards_a_zero_preamble(
    tmp_path: Path, polyglots, capture
) -> None:
    study_uid, files = polyglots
    port, bodies = capture
    peer = PacsPeer(name="capture", dicomweb_url=f"http://127.0.0.1:{port}/dicom-web")
    node = build_node(Settings(data_dir=tmp_path / "data", fsync=False, pacs_peers=[peer]))
    try:
        web = TestClient(create_app(node))
        r = web.post(
            "/dicom-web/studies",
            content=stow_body(*(f.read_bytes() for f in files)),
            headers={"Content-Type": RELATED},
        )
        assert r.status_code == 200, r.text
        stored = sorted((tmp_path / "data" / "studies").rglob("*.dcm"))
        assert len(stored) == 2
        assert all(p.read_bytes()[:132] == ZERO + b"DICM" for p in stored)
        # Served by WADO-RS, as stored and transcoded (implicit VR: written anew).
        for syntax in ("*", "1.2.840.10008.1.2"):
            accept = f'multipart/related; type="application/dicom"; transfer-syntax={syntax}'
            served = web.get(f"/dicom-web/studies/{study_uid}", headers={"Accept": accept})
            assert served.status_code == 200
            parts = _parts(served.headers["content-type"], served.content)
            assert len(parts) == 2
            assert all(part[:132] == ZERO + b"DICM" for part in parts), syntax
            assert all(dcmread(BytesIO(part)).StudyInstanceUID == study_uid for part in parts)
        # Forwarded to the PACS by STOW-RS.
        queue_study_results(node, study_uid, None)
        assert OutboxSender(node).run_once() == 2
    finally:
        node.close()
    forwarded = [part for ct, body in bodies for part in _parts(ct, body)]
    assert len(forwarded) == 2
    assert all(part[:132] == ZERO + b"DICM" for part in forwarded)
