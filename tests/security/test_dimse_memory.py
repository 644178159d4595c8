"""Memory per association is bounded in `radnode scp`: a PDU longer than the Maximum Length
Received radnode announced is aborted before it is read, a large C-STORE dataset is
spooled to disk as it arrives (the receiver's resident memory barely grows), a dataset
over ``max_instance_bytes`` is refused while it arrives, its temp file removed, and one the
peer cuts off midway leaves no temp file behind.

The large instances are written to disk here, header by pydicom and Pixel Data appended
in chunks, and sent by pynetdicom straight from the file (STORE_SEND_CHUNKED_DATASET), so
neither side of the test holds one in memory.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from tests.security.test_hostile_dimse import _associate_rq
from tests.support.hostile import SECONDARY_CAPTURE, instance, part10, start
from tests.support.radnode_process import RadnodeProcess

MIB = 1024 * 1024
BIG_FRAMES = 320  # 320 frames of 1024 x 1024 x 8 bits: 320 MiB of Pixel Data
RSS_GROWTH_LIMIT = 64 * MIB
SMALL_LIMIT = 8 * MIB  # max_instance_bytes of the second node


@pytest.fixture(scope="module")
def scp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadnodeProcess]:
    node = start(
        tmp_path_factory.mktemp("dimse-memory"),
        "scp",
        RADNODE_ALLOWED_CALLING_AETS='["MODALITY"]',
        RADNODE_FSYNC="true",
    )
    yield node
    node.stop()


@pytest.fixture(scope="module")
def limited_scp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadnodeProcess]:
    node = start(
        tmp_path_factory.mktemp("dimse-memory-limit"),
        "scp",
        RADNODE_ALLOWED_CALLING_AETS='["MODALITY"]',
        RADNODE_MAX_INSTANCE_BYTES=str(SMALL_LIMIT),
    )
    yield node
    node.stop()


# -- the receiver's memory ---------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


class PeakRss:
    """The highest resident set size of a process while the block runs, by the kernel's
    high-water mark (reset at the start), sampled too where the reset is not allowed."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = 0
        self.peak = 0
        self._reset = False
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self.baseline = _status_kib(self.pid, "VmRSS") * 1024
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # resets VmHWM
            self._reset = True
        except OSError:
            pass
        self.peak = self.baseline
        self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _status_kib(self.pid, "VmRSS") * 1024)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sampler.join()
        if self._reset:
            self.peak = max(self.peak, _status_kib(self.pid, "VmHWM") * 1024)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def _pid(node: RadnodeProcess) -> int:
    assert node.proc is not None
    return node.proc.pid


# -- peers ----------------------------------------------------------------------------


def _big_file(path: Path, frames: int, size: int = 1024) -> Path:
    """A multi-frame secondary capture of ``frames`` frames of ``size`` x ``size`` bytes,
    its Pixel Data written in chunks."""
    ds = instance(frames=frames, size=8)
    ds.Rows = ds.Columns = size
    del ds.PixelData
    head = part10(ds)
    length = frames * size * size
    chunk = bytes(range(256)) * (MIB // 256)
    with path.open("wb") as f:
        f.write(head)
        # (7FE0,0010) OB, explicit VR little endian: tag, VR, 2 reserved bytes, 4-byte length
        f.write(b"\xe0\x7f\x10\x00OB\x00\x00" + length.to_bytes(4, "little"))
        left = length
        while left:
            f.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))
    return path


def _store(port: int, files: list[Path], timeout_s: float = 120) -> list[int]:
    """C-STORE each file's bytes as they are, read from disk as they are sent."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(SECONDARY_CAPTURE, ExplicitVRLittleEndian)
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="RADNODE")
        assert assoc.is_established
        try:
            return [int(assoc.send_c_store(f).Status) for f in files]
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def _echo(node: RadnodeProcess) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-aet", "MODALITY", "-aec", node.aet, "127.0.0.1", str(node.dicom_port)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _temp_files(node: RadnodeProcess) -> list[Path]:
    return [p for p in (node.data_dir / "tmp").rglob("*") if p.is_file()]


def _sha256(path: Path, skip: int = 0) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        f.seek(skip)
        while block := f.read(4 * MIB):
            digest.update(block)
    return digest.hexdigest()


def _answer(sock: socket.socket, wait_s: float) -> tuple[bytes, float | None]:
    """What the server sends until it closes the connection, and when it closed it
    (None: still open after ``wait_s``)."""
    sock.settimeout(wait_s)
    started = time.monotonic()
    answer = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return answer, None
        except ConnectionResetError:
            return answer, time.monotonic() - started
        if not chunk:
            return answer, time.monotonic() - started
        answer += chunk


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:  # the server closed the connection: what the test wants
        pass


# -- the tests ------------------------------------------------------------------------


def test_a_pdu_longer_than_announced_is_aborted_before_it_is_read(scp: RadnodeProcess) -> None:
    with socket.create_connection(("127.0.0.1", scp.dicom_port), timeout=10) as s:
        s.sendall(_associate_rq(ExplicitVRLittleEndian.encode()))
        accept = s.recv(65536)
        assert accept[:1] == b"\x02", accept  # A-ASSOCIATE-AC
        with PeakRss(_pid(scp)) as rss:
            # A P-DATA-TF declaring 1 GiB, and its first megabyte.
            _send_quietly(s, b"\x04\x00" + (1024 * MIB).to_bytes(4, "big") + bytes(MIB))
            answer, closed_after = _answer(s, 10)
    assert closed_after is not None and closed_after < 2.0, closed_after
    assert answer[:1] == b"\x07", answer  # A-ABORT
    assert answer[8:10] == b"\x02\x06"  # service provider: invalid PDU parameter value
    assert rss.growth < 4 * MIB, rss.growth
    echo = _echo(scp)
    assert echo.returncode == 0, echo.stderr
    assert "PDU longer than allowed" in scp.log()


def test_an_association_request_declaring_a_gigabyte_is_aborted(scp: RadnodeProcess) -> None:
    with socket.create_connection(("127.0.0.1", scp.dicom_port), timeout=10) as s:
        with PeakRss(_pid(scp)) as rss:
            _send_quietly(s, b"\x01\x00" + (1024 * MIB).to_bytes(4, "big") + bytes(MIB))
            answer, closed_after = _answer(s, 10)
    assert closed_after is not None and closed_after < 2.0, closed_after
    assert answer[:1] == b"\x07", answer
    assert rss.growth < 4 * MIB, rss.growth
    assert _echo(scp).returncode == 0


def test_a_large_instance_is_spooled_to_disk_as_it_arrives(
    scp: RadnodeProcess, tmp_path: Path
) -> None:
    big = _big_file(tmp_path / "big.dcm", BIG_FRAMES)
    with PeakRss(_pid(scp)) as rss:
        assert _store(scp.dicom_port, [big]) == [0x0000]
    assert rss.growth < RSS_GROWTH_LIMIT, f"RSS grew by {rss.growth / MIB:.1f} MiB"
    (stored,) = (scp.data_dir / "studies").rglob("*.dcm")
    # Stored as sent: the dataset after the File Meta Information is byte-identical.
    sent_meta = 132 + int.from_bytes(big.read_bytes()[140:144], "little") + 12
    with stored.open("rb") as f:
        head = f.read(144)
    stored_meta = 132 + int.from_bytes(head[140:144], "little") + 12
    assert stored.stat().st_size - stored_meta == big.stat().st_size - sent_meta
    assert _sha256(stored, stored_meta) == _sha256(big, sent_meta)
    assert _temp_files(scp) == []


def test_an_instance_over_the_limit_is_refused_as_it_arrives(
    limited_scp: RadnodeProcess, tmp_path: Path
) -> None:
    over = _big_file(tmp_path / "over.dcm", frames=32)  # 32 MiB, the limit is 8 MiB
    largest = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal largest
        while not done.wait(0.005):
            for path in _temp_files(limited_scp):
                try:
                    largest = max(largest, path.stat().st_size)
                except FileNotFoundError:
                    pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        assert _store(limited_scp.dicom_port, [over]) == [0xA700]
    finally:
        done.set()
        watcher.join()
    assert largest <= SMALL_LIMIT + 4096, largest  # never more than the limit on disk
    assert _temp_files(limited_scp) == []
    assert not any((limited_scp.data_dir / "studies").rglob("*.dcm"))
    # The service keeps serving: a small instance is stored on a new association.
    small = tmp_path / "small.dcm"
    small.write_bytes(part10(instance()))
    assert _store(limited_scp.dicom_port, [small]) == [0x0000]
    assert _echo(limited_scp).returncode == 0
    assert _temp_files(limited_scp) == []


def _p_data(control: int, data: bytes, context_id: int = 1) -> bytes:
    """A P-DATA-TF PDU with one PDV (PS3.8 9.3.5, E.2)."""
    pdv = bytes([context_id, control]) + data
    body = len(pdv).to_bytes(4, "big") + pdv
    return b"\x04\x00" + len(body).to_bytes(4, "big") + body


def _store_command(sop_instance_uid: str) -> bytes:
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = SECONDARY_CAPTURE
    request.AffectedSOPInstanceUID = sop_instance_uid
    request.Priority = 2
    request.DataSet = BytesIO(b"\x00")
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    encoded = encode(message.command_set, True, True)
    assert encoded is not None
    return encoded


def test_a_dataset_cut_off_by_the_peer_leaves_no_temp_file(
    scp: RadnodeProcess, tmp_path: Path
) -> None:
    ds = instance(frames=64, size=256)
    dataset = part10(ds)  # 4 MiB; only the first 2 MiB are sent
    with socket.create_connection(("127.0.0.1", scp.dicom_port), timeout=10) as s:
        s.sendall(_associate_rq(ExplicitVRLittleEndian.encode()))
        assert s.recv(65536)[:1] == b"\x02"
        s.sendall(_p_data(0x03, _store_command(str(ds.SOPInstanceUID))))
        for start in range(0, 2 * MIB, 16 * 1024):
            s.sendall(_p_data(0x00, dataset[start : start + 16 * 1024]))
        deadline = time.monotonic() + 5
        while not _temp_files(scp) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _temp_files(scp), "the dataset is not spooled while it arrives"
    deadline = time.monotonic() + 10
    while _temp_files(scp) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _temp_files(scp) == []
    assert _echo(scp).returncode == 0
