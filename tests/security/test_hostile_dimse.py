"""Hostile DICOM peers against `radnode scp`: association requests that trickle in lock no
modality out and are cut at their deadline, requests in progress are capped per address
(a few more wait their turn, unread; a burst of honest ones is served in turn), and
C-STOREs with out-of-range numbers or a SOP Instance UID of another study get a proper
answer and leave nothing behind.

The hostile connections come from 127.0.0.2 and 127.0.0.3 (loopback addresses too), the
modality from 127.0.0.1, so the per-address cap is seen to spare other addresses.
"""

from __future__ import annotations

import select
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config

from tests.support.hostile import SECONDARY_CAPTURE, instance, part10, start, study_folders
from tests.support.radnode_process import RadnodeProcess

DEADLINE_S = 2.0
MAX_ASSOCIATIONS = 4
PER_PEER = 8
WAITING = 2
ASSOCIATE_RQ_HEAD = bytes([0x01, 0x00]) + (1000).to_bytes(4, "big")


@pytest.fixture(scope="module")
def scp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadnodeProcess]:
    node = start(
        tmp_path_factory.mktemp("hostile-dimse"),
        "scp",
        RADNODE_ALLOWED_CALLING_AETS='["MODALITY"]',
        RADNODE_MAX_ASSOCIATIONS=str(MAX_ASSOCIATIONS),
        RADNODE_ASSOCIATION_REQUEST_TIMEOUT_S=str(DEADLINE_S),
        RADNODE_MAX_NEGOTIATING_PER_PEER=str(PER_PEER),
        RADNODE_MAX_WAITING_PER_PEER=str(WAITING),
    )
    yield node
    node.stop()


class Trickle(threading.Thread):
    """A connection that sends an A-ASSOCIATE-RQ header declaring 1,000 bytes, then one
    byte every ``every_s``; ``closed_after`` is when the server closed it (None: open)."""

    def __init__(self, port: int, source: str, every_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
        self.every_s = every_s
        self.started = time.monotonic()
        self.closed_after: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            self.sock.sendall(ASSOCIATE_RQ_HEAD)
            while not self.stop.is_set():
                readable, _, _ = select.select([self.sock], [], [], self.every_s)
                if readable and not self.sock.recv(4096):
                    break
                self.sock.sendall(b"\x00")
        except OSError:
            pass
        if not self.stop.is_set():
            self.closed_after = time.monotonic() - self.started
        self.sock.close()


def _trickles(port: int, source: str, count: int) -> list[Trickle]:
    out = [Trickle(port, source) for _ in range(count)]
    for t in out:
        t.start()
    return out


def _end(trickles: list[Trickle]) -> None:
    for t in trickles:
        t.stop.set()
    for t in trickles:
        t.join(timeout=5)


def _store(port: int, files: list[Path]) -> list[int]:
    """C-STORE each file's bytes as they are (no re-encoding) as MODALITY from 127.0.0.1."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(SECONDARY_CAPTURE, ExplicitVRLittleEndian)
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="RADNODE")
        if not assoc.is_established:
            rj = assoc.acceptor.primitive
            detail = (rj.result, rj.result_source, rj.diagnostic) if rj is not None else None
            raise AssertionError(f"association not established: {detail}")
        try:
            return [int(assoc.send_c_store(f).Status) for f in files]
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def _file(tmp_path: Path, **kwargs: object) -> Path:
    ds = instance(**kwargs)  # type: ignore[arg-type]
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    path.write_bytes(part10(ds))
    return path


def test_requests_trickling_in_lock_no_modality_out(scp: RadnodeProcess, tmp_path: Path) -> None:
    slow = _trickles(scp.dicom_port, "127.0.0.2", MAX_ASSOCIATIONS + 2)
    try:
        time.sleep(0.5)
        assert all(t.closed_after is None for t in slow)  # all still in progress
        assert _store(scp.dicom_port, [_file(tmp_path)]) == [0x0000]
    finally:
        _end(slow)


def test_a_trickled_request_is_cut_at_its_deadline(scp: RadnodeProcess) -> None:
    slow = _trickles(scp.dicom_port, "127.0.0.2", 2)
    try:
        deadline = time.monotonic() + DEADLINE_S + 10
        while time.monotonic() < deadline and any(t.closed_after is None for t in slow):
            time.sleep(0.1)
        for t in slow:
            assert t.closed_after is not None, "still open long after the deadline"
            assert DEADLINE_S - 0.5 <= t.closed_after <= DEADLINE_S + 2.5, t.closed_after
    finally:
        _end(slow)


def test_requests_in_progress_are_capped_per_address(scp: RadnodeProcess, tmp_path: Path) -> None:
    held = _trickles(scp.dicom_port, "127.0.0.3", PER_PEER)
    try:
        time.sleep(0.5)
        assert all(t.closed_after is None for t in held)
        waiting = _trickles(scp.dicom_port, "127.0.0.3", WAITING)
        extra = Trickle(scp.dicom_port, "127.0.0.3")
        extra.start()
        extra.join(timeout=DEADLINE_S)
        assert extra.closed_after is not None and extra.closed_after < 1.0, extra.closed_after
        # Another address is not affected.
        assert _store(scp.dicom_port, [_file(tmp_path)]) == [0x0000]
        # The held ones were never read, and are closed at their own deadline.
        for t in waiting:
            t.join(timeout=DEADLINE_S + 5)
            assert t.closed_after is not None
            assert DEADLINE_S - 0.5 <= t.closed_after <= DEADLINE_S + 2.5, t.closed_after
    finally:
        _end(held)
    # Once those are gone the address may connect again.
    time.sleep(DEADLINE_S + 1)
    again = Trickle(scp.dicom_port, "127.0.0.3")
    again.start()
    time.sleep(0.5)
    assert again.closed_after is None
    _end([again])
    assert "too many association requests in progress" in scp.log()


def test_a_burst_from_one_address_beyond_the_cap_is_served_in_turn(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """24 association requests from one address at once, with 2 allowed to negotiate and
    30 to wait: every one is established in turn and every C-STORE succeeds."""
    node = start(
        tmp_path_factory.mktemp("burst"),
        "scp",
        RADNODE_ALLOWED_CALLING_AETS='["MODALITY"]',
        RADNODE_MAX_ASSOCIATIONS="64",
        RADNODE_MAX_ASSOCIATIONS_PER_AET="64",
        RADNODE_MAX_NEGOTIATING_PER_PEER="2",
        RADNODE_MAX_WAITING_PER_PEER="30",
    )
    try:
        files = [_file(tmp_path) for _ in range(24)]
        results: list[object] = []
        go = threading.Barrier(len(files))

        def send(path: Path) -> None:
            go.wait(timeout=10)
            try:
                results.append(_store(node.dicom_port, [path]))
            except AssertionError as exc:
                results.append(str(exc))

        threads = [threading.Thread(target=send, args=(f,)) for f in files]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert results == [[0x0000]] * len(files)
        assert "too many association requests in progress" not in node.log()
    finally:
        node.stop()


def test_an_instance_number_beyond_64_bits_is_stored(scp: RadnodeProcess, tmp_path: Path) -> None:
    path = _file(tmp_path, raw={"InstanceNumber": ("IS", "12345678901234567890")})
    assert _store(scp.dicom_port, [path]) == [0x0000]
    stored = list((scp.data_dir / "studies").rglob(path.name))
    assert len(stored) == 1
    with sqlite3.connect(scp.data_dir / "index.sqlite3") as db:
        (number,) = db.execute(
            "select instance_number from instances where sop_instance_uid = ?", (path.stem,)
        ).fetchone()
    assert number is None
    assert all(any(f.rglob("*.dcm")) for f in study_folders(scp))  # no empty folder


def test_a_sop_instance_uid_of_another_study_is_refused(
    scp: RadnodeProcess, tmp_path: Path
) -> None:
    first = _file(tmp_path, patient_name="Original^Patient")
    assert _store(scp.dicom_port, [first]) == [0x0000]
    other_study = generate_uid()
    (tmp_path / "copy").mkdir()
    copy = _file(tmp_path / "copy", sop_uid=first.stem, study_uid=other_study)
    assert _store(scp.dicom_port, [copy]) == [0xA900]
    assert not (scp.data_dir / "studies" / other_study).exists()
    with sqlite3.connect(scp.data_dir / "index.sqlite3") as db:
        assert db.execute(
            "select count(*) from studies where study_uid = ?", (other_study,)
        ).fetchone() == (0,)


def _item(item_type: int, payload: bytes) -> bytes:
    return bytes([item_type, 0]) + len(payload).to_bytes(2, "big") + payload


def _associate_rq(transfer_syntax: bytes) -> bytes:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2) with one presentation context."""
    context = _item(0x20, bytes([1, 0, 0, 0]) + _item(0x30, SECONDARY_CAPTURE.encode())
                    + _item(0x40, transfer_syntax))  # fmt: skip
    items = (
        _item(0x10, b"1.2.840.10008.3.1.1.1")
        + context
        + _item(0x50, _item(0x51, (16384).to_bytes(4, "big")))
    )
    body = b"\x00\x01\x00\x00" + b"RADNODE".ljust(16) + b"MODALITY".ljust(16) + bytes(32) + items
    return bytes([0x01, 0x00]) + len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize("transfer_syntax", [b"\x00", b""])
def test_a_context_without_a_transfer_syntax_is_rejected_not_left_hanging(
    scp: RadnodeProcess, transfer_syntax: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", scp.dicom_port), timeout=DEADLINE_S + 5) as s:
        s.sendall(_associate_rq(transfer_syntax))
        answer = s.recv(10)
    assert answer[:1] == b"\x03", answer  # A-ASSOCIATE-RJ
    assert answer[7:10] == bytes([0x01, 0x01, 0x01])  # permanent, service-user, no reason
