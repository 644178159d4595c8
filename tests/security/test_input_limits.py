"""Input limits: the largest instance (C-STORE 0xA700, STOW-RS FailureReason 0xA700, nothing
stored), associations per calling AE (A-ASSOCIATE-RJ transient, local limit exceeded, other
AEs unaffected), and HTTP request timeouts (silent or slow headers, a stalled STOW body)."""

from __future__ import annotations

import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ai_node.synth import StudySpec, write_study
from pacs_link.scu import send_files
from radnode.assembly import build_node
from radnode_core.ingest import IngestError
from radnode_core.settings import Settings
from tests.support.radnode_process import RadnodeProcess
from tests.support.security import RELATED, stow_body
from tests.support.tools import storescu
from tests.support.wait import wait_for

LIMIT = 20_000  # bytes: a 64x64 slice (8 KiB of pixels) fits, a 128x128 one (32 KiB) does not


@pytest.fixture(scope="module")
def scp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadnodeProcess]:
    root = tmp_path_factory.mktemp("limits-scp")
    env = {"RADNODE_MAX_INSTANCE_BYTES": str(LIMIT), "RADNODE_MAX_ASSOCIATIONS_PER_AET": "2"}
    node = RadnodeProcess(root / "data", "scp", env=env).start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadnodeProcess]:
    root = tmp_path_factory.mktemp("limits-api")
    env = {"RADNODE_MAX_INSTANCE_BYTES": str(LIMIT), "RADNODE_HTTP_REQUEST_TIMEOUT_S": "1.5"}
    node = RadnodeProcess(root / "data", "api", env=env).start()
    yield node
    node.stop()


def _study(tmp_path: Path, size: int, seed: int) -> list[Path]:
    spec = StudySpec(region="chest", slices=2, seed=seed, rows=size, columns=size)
    return write_study(spec, tmp_path / f"s{seed}")[1]


def _stored(node: RadnodeProcess) -> list[Path]:
    return sorted((node.data_dir / "studies").rglob("*.dcm"))


def test_cstore_over_the_instance_limit_is_refused_and_nothing_is_stored(
    scp: RadnodeProcess, tmp_path: Path
) -> None:
    small, big = _study(tmp_path, 64, 21), _study(tmp_path, 128, 22)
    before = _stored(scp)
    assert storescu(scp.dicom_port, big).returncode != 0  # dcmtk: a failed store
    statuses = send_files(big, "127.0.0.1", scp.dicom_port, "MODALITY", "RADNODE")
    assert set(statuses.values()) == {0xA700}
    assert _stored(scp) == before
    assert storescu(scp.dicom_port, small).returncode == 0
    assert len(_stored(scp)) == len(before) + len(small)


def test_stow_over_the_instance_limit_gets_failure_reason(
    api: RadnodeProcess, tmp_path: Path
) -> None:
    small, big = _study(tmp_path, 64, 23), _study(tmp_path, 128, 24)
    r = httpx.post(
        f"http://127.0.0.1:{api.http_port}/dicom-web/studies",
        content=stow_body(small[0].read_bytes(), big[0].read_bytes()),
        headers={"Content-Type": RELATED},
        timeout=60,
    )
    assert r.status_code == 202, r.text
    failed = r.json()["00081198"]["Value"]
    assert len(failed) == 1
    assert failed[0]["00081155"]["Value"] == [
        str(dcmread(big[0], stop_before_pixels=True).SOPInstanceUID)
    ]
    assert failed[0]["00081197"]["Value"] == [0xA700]
    stored = [p.stem for p in _stored(api)]
    assert str(dcmread(big[0], stop_before_pixels=True).SOPInstanceUID) not in stored


def _associate(port: int, aet: str) -> Association:
    ae = AE(ae_title=aet)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 30
    return ae.associate("127.0.0.1", port, ae_title="RADNODE")


def test_associations_per_calling_ae_are_limited_and_others_keep_working(
    scp: RadnodeProcess,
) -> None:
    held = [_associate(scp.dicom_port, "BUSYMOD") for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        over = _associate(scp.dicom_port, "BUSYMOD")
        assert over.is_rejected
        rj = over.acceptor.primitive
        assert rj is not None
        # PS3.8 9.3.4: rejected-transient (2), service-provider presentation (3), local limit (2)
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
        other = _associate(scp.dicom_port, "OTHERMOD")
        assert other.is_established
        assert other.send_c_echo().Status == 0x0000
        other.release()
        # The held ones still work.
        assert held[0].send_c_echo().Status == 0x0000
    finally:
        for a in held:
            a.release()
    # Released: the AE may associate again.

    def associated() -> Association | None:
        assoc = _associate(scp.dicom_port, "BUSYMOD")
        return assoc if assoc.is_established else None

    again = wait_for(associated, timeout=10, what="BUSYMOD to associate again", interval=0.2)
    assert again.is_established
    again.release()


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes the connection within ``seconds``."""
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_silent_and_slow_http_clients_are_cut_off(api: RadnodeProcess) -> None:
    silent = socket.create_connection(("127.0.0.1", api.http_port))
    slow = socket.create_connection(("127.0.0.1", api.http_port))
    try:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        started = time.monotonic()
        # A normal request meanwhile is served at once.
        assert httpx.get(f"http://127.0.0.1:{api.http_port}/healthz", timeout=10).status_code == 200
        assert _closed_within(silent, 15) and _closed_within(slow, 15)
        assert time.monotonic() - started >= 1.0  # not before the timeout
    finally:
        silent.close()
        slow.close()


def test_stalled_stow_body_gets_408_and_leaves_no_spool(api: RadnodeProcess) -> None:
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + b"\0" * 1000
    with socket.create_connection(("127.0.0.1", api.http_port)) as s:
        s.sendall(
            b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n'
            b"Content-Length: 100000\r\n\r\n" + body
        )
        s.settimeout(20)
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]

    def spools() -> list[Path]:
        return list((api.data_dir / "tmp").rglob("stow.*.body"))

    wait_for(lambda: not spools(), timeout=10, what="the spool file to go", interval=0.05)
    assert spools() == []


def test_a_deflate_bomb_is_refused_before_it_is_inflated_whole(tmp_path: Path) -> None:
    """Deflated Explicit VR Little Endian (PS3.5 A.5): 50 MB of zeros deflate to ~50 KB;
    inflating stops at the instance limit."""
    ds = dcmread(_study(tmp_path, 16, 25)[0])
    ds.PixelData = b"\0" * 50_000_000
    ds.Rows = ds.Columns = 5000
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = deflater.compress(buf.getvalue()) + deflater.flush()
    assert len(bomb) < LIMIT * 5
    node = build_node(Settings(data_dir=tmp_path / "data", fsync=False, max_instance_bytes=LIMIT))
    try:
        with pytest.raises(IngestError) as refused:
            node.ingestor.ingest(bomb, "1.2.840.10008.1.2.1.99", source="test")
    finally:
        node.close()
    assert refused.value.status == 0xA700
    assert list((tmp_path / "data" / "studies").rglob("*.dcm")) == []
