"""A C-STORE is served in its connection's own thread, straight from the received bytes:
what goes back on the wire is what pynetdicom sends, however the peer cuts its PDVs into
PDUs, and a P-DATA-TF whose items do not add up still ends the association (pynetdicom
decodes it, and aborts) while the node keeps serving."""

from __future__ import annotations

import shutil
import signal
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import cast

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from dimse_scp.upper_layer import store_response_command
from tests.security.test_dimse_memory import _answer, _echo, _p_data, _store_command
from tests.security.test_hostile_dimse import _associate_rq
from tests.support.hostile import instance, part10, start
from tests.support.radnode_process import RadnodeProcess
from tests.support.wait import wait_for


@pytest.fixture(scope="module")
def scp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadnodeProcess]:
    node = start(
        tmp_path_factory.mktemp("direct-store"),
        "scp",
        RADNODE_ALLOWED_CALLING_AETS='["MODALITY"]',
    )
    yield node
    node.stop()


def _dataset(sop_instance_uid: str | None = None) -> tuple[str, bytes]:
    """A small instance's UID and its dataset as sent (explicit VR little endian, after the
    File Meta Information)."""
    ds = instance(sop_uid=sop_instance_uid, size=64)
    data = part10(ds)
    meta_end = 132 + int.from_bytes(data[140:144], "little") + 12
    return str(ds.SOPInstanceUID), data[meta_end:]


def _pdvs(*items: tuple[int, bytes]) -> bytes:
    """One P-DATA-TF PDU holding each (message control header, data) as its own PDV."""
    body = b""
    for control, data in items:
        pdv = bytes([1, control]) + data
        body += len(pdv).to_bytes(4, "big") + pdv
    return b"\x04\x00" + len(body).to_bytes(4, "big") + body


def _read_pdu(sock: socket.socket) -> bytes:
    head = b""
    while len(head) < 6:
        chunk = sock.recv(6 - len(head))
        assert chunk, "connection closed before a PDU came"
        head += chunk
    length = int.from_bytes(head[2:6], "big")
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk
        body += chunk
    return head + body


def _indexed(node: RadnodeProcess, sop_instance_uid: str) -> bool:
    with sqlite3.connect(node.data_dir / "index.sqlite3") as db:
        row = db.execute(
            "SELECT count(*) FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        ).fetchone()
    return bool(row[0])


def _association(node: RadnodeProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", node.dicom_port), timeout=10)
    sock.sendall(_associate_rq(ExplicitVRLittleEndian.encode()))
    assert _read_pdu(sock)[:1] == b"\x02"  # A-ASSOCIATE-AC
    return sock


@pytest.mark.parametrize(
    "layout",
    ["one PDU for all", "command and first fragment together", "a PDU per fragment"],
)
def test_a_store_is_answered_with_what_pynetdicom_sends(scp: RadnodeProcess, layout: str) -> None:
    uid, dataset = _dataset()
    command = _store_command(uid)
    half = len(dataset) // 2
    if layout == "one PDU for all":
        pdus = [_pdvs((0x03, command), (0x00, dataset[:half]), (0x02, dataset[half:]))]
    elif layout == "command and first fragment together":
        pdus = [_pdvs((0x03, command), (0x00, dataset[:half])), _p_data(0x02, dataset[half:])]
    else:
        chunks = [dataset[i : i + 1000] for i in range(0, len(dataset), 1000)]
        pdus = [_p_data(0x03, command), *(_p_data(0x00, c) for c in chunks[:-1])]
        pdus.append(_p_data(0x02, chunks[-1]))
    with _association(scp) as sock:
        sock.sendall(b"".join(pdus))
        answer = _read_pdu(sock)
        sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ
        assert _read_pdu(sock)[:1] == b"\x06"  # A-RELEASE-RP

    pdu = P_DATA_TF()
    pdu.decode(answer)
    (item,) = pdu.presentation_data_value_items
    context_id, value = item.presentation_context_id, cast(bytes, item.presentation_data_value)
    assert context_id == 1 and value[0] == 0x03  # the last fragment of a command
    response = C_STORE_RSP()
    response.command_set = decode(BytesIO(value[1:]), True, True)
    rsp = cast(C_STORE, response.message_to_primitive())
    assert rsp.Status == 0x0000
    assert rsp.MessageIDBeingRespondedTo == 1
    assert rsp.AffectedSOPInstanceUID == uid
    # Byte for byte what pynetdicom's DT-1 sends for the same response.
    rsp_command = store_response_command(rsp)
    assert rsp_command is not None
    expected = P_DATA()
    expected.presentation_data_value_list.append((1, b"\x03" + rsp_command))
    assert answer == P_DATA_TF(expected).encode()
    assert _indexed(scp, uid)


@pytest.mark.parametrize(
    "item_length", [0, 1, 1 << 20], ids=["empty item", "no control header", "past the PDU"]
)
def test_a_p_data_whose_items_do_not_add_up_ends_the_association(
    scp: RadnodeProcess, item_length: int
) -> None:
    uid, dataset = _dataset()
    body = item_length.to_bytes(4, "big") + b"\x01\x02" + dataset[:64]
    bent = b"\x04\x00" + len(body).to_bytes(4, "big") + body
    with _association(scp) as sock:
        sock.sendall(_p_data(0x03, _store_command(uid)) + bent)
        answer, closed_after = _answer(sock, 10)
    assert closed_after is not None, "the association was left open"
    assert answer[:1] == b"\x07", answer  # A-ABORT
    assert not _indexed(scp, uid)
    assert _echo(scp).returncode == 0
    # The node keeps serving stores.
    uid, dataset = _dataset()
    with _association(scp) as sock:
        sock.sendall(_p_data(0x03, _store_command(uid)) + _p_data(0x02, dataset))
        assert _read_pdu(sock)[:1] == b"\x04"
    assert _indexed(scp, uid)


def test_a_store_on_a_context_the_node_did_not_accept_is_not_stored(
    scp: RadnodeProcess,
) -> None:
    uid, dataset = _dataset()
    with _association(scp) as sock:
        # Context 3 was never proposed: pynetdicom aborts the association.
        sock.sendall(_p_data(0x03, _store_command(uid), 3) + _p_data(0x02, dataset, 3))
        answer, closed_after = _answer(sock, 10)
    assert closed_after is not None
    assert answer[:1] == b"\x07", answer
    assert not _indexed(scp, uid)
    assert _echo(scp).returncode == 0


def _status(answer: bytes) -> int:
    """The Status of the C-STORE-RSP in ``answer``, which must be a P-DATA-TF PDU."""
    assert answer[:1] == b"\x04", (
        f"PDU type {answer[:1].hex()}, not P-DATA-TF: the association ended"
    )
    pdu = P_DATA_TF()
    pdu.decode(answer)
    (item,) = pdu.presentation_data_value_items
    response = C_STORE_RSP()
    response.command_set = decode(
        BytesIO(cast(bytes, item.presentation_data_value)[1:]), True, True
    )
    status = cast(C_STORE, response.message_to_primitive()).Status
    assert status is not None
    return status


def test_a_store_that_outlasts_the_network_timeout_does_not_end_the_association(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The peer is silent while it waits for the response: time spent storing is not its
    silence. Another writer holds the index's write lock for longer than the node's
    network timeout, so the commit (and the response) waits; the association must then
    go on, answer a second store and release normally."""
    node = start(
        tmp_path_factory.mktemp("slow-store"),
        "scp",
        RADNODE_ALLOWED_CALLING_AETS='["MODALITY"]',
        RADNODE_NETWORK_TIMEOUT_S="1",
    )
    try:
        first, first_data = _dataset()
        second, second_data = _dataset()
        with _association(node) as sock:
            writer = sqlite3.connect(node.data_dir / "index.sqlite3", isolation_level=None)
            try:
                writer.execute("BEGIN IMMEDIATE")  # a real second writer, holding the lock
                sock.sendall(_p_data(0x03, _store_command(first)) + _p_data(0x02, first_data))
                sock.settimeout(2.5)
                with pytest.raises(TimeoutError):  # the store waits on the lock: no answer
                    sock.recv(1)
            finally:
                writer.execute("ROLLBACK")
                writer.close()
            sock.settimeout(10)
            assert _status(_read_pdu(sock)) == 0x0000
            sock.sendall(_p_data(0x03, _store_command(second)) + _p_data(0x02, second_data))
            assert _status(_read_pdu(sock)) == 0x0000
            sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ
            assert _read_pdu(sock)[:1] == b"\x06"  # A-RELEASE-RP
        assert _indexed(node, first) and _indexed(node, second)
    finally:
        node.stop()


STRACE = shutil.which("strace")


@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
def test_each_pdu_is_read_after_one_wait_on_the_socket(tmp_path, chest_study) -> None:
    """The receiver's connection thread waits for a PDU in one ``select`` and reads it: it
    does not look at the socket a second time (pynetdicom's own look, a ``select`` with no
    timeout) before reading what the wait found. Traced with strace on a running
    `radnode scp` while storescu sends three slices: the waits that returned ready number
    the PDUs read (their 6-byte headers), give or take the wake-ups from other threads."""
    from tests.reliability.test_sync_order import parse
    from tests.support.tools import storescu

    assert STRACE is not None
    _study, files = chest_study
    node = RadnodeProcess(tmp_path / "data", "scp").start()
    out = tmp_path / "trace.txt"
    try:
        tracer = subprocess.Popen(
            [STRACE, "-f", "-x", "-s", "8", "-e", "trace=select,pselect6,poll,recvfrom"]
            + ["-o", str(out), "-p", str(node.proc.pid)],  # type: ignore[union-attr]
            stderr=subprocess.PIPE,
            text=True,
        )
        assert tracer.stderr is not None
        while "attached" not in tracer.stderr.readline():
            assert tracer.poll() is None, "strace could not attach to the receiver"
        try:
            sent = storescu(node.dicom_port, files[:3], timeout=60)
            assert sent.returncode == 0, sent.stderr[-2000:]
        finally:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=30)
    finally:
        node.stop()
    calls = parse(out.read_text())
    headers = [c for c in calls if c.name == "recvfrom" and c.result == 6]
    ready = [c for c in calls if c.name in ("select", "pselect6") and (c.result or 0) > 0]
    assert len(headers) >= 3 * 4, "each slice comes in several PDUs"
    assert len(ready) <= len(headers) + 6, (len(ready), len(headers))


def _spool_files(node: RadnodeProcess) -> list[Path]:
    return sorted((node.data_dir / "tmp").glob("*/*.spool"))


def test_the_next_spool_file_is_made_ahead_and_removed_with_the_association(
    scp: RadnodeProcess,
) -> None:
    """After a response, the association's next spool file is already made (empty); the
    next request's dataset goes into that very file, which becomes the instance. A
    release request removes the one left over before the A-RELEASE-RP goes out; an
    abort removes it too."""
    # An earlier test's association may still be ending.
    wait_for(lambda: _spool_files(scp) == [], timeout=10, what="no spool file")
    first, dataset = _dataset()
    with _association(scp) as sock:
        sock.sendall(_p_data(0x03, _store_command(first)) + _p_data(0x02, dataset))
        assert _status(_read_pdu(sock)) == 0x0000
        # Made just after the response went out.
        (ready,) = wait_for(lambda: _spool_files(scp) or None, timeout=10, what="a spool file")
        assert ready.stat().st_size == 0
        inode = ready.stat().st_ino
        second, dataset = _dataset()
        sock.sendall(_p_data(0x03, _store_command(second)) + _p_data(0x02, dataset))
        assert _status(_read_pdu(sock)) == 0x0000
        (stored,) = (scp.data_dir / "studies").rglob(f"{second}.dcm")
        assert stored.stat().st_ino == inode
        wait_for(lambda: len(_spool_files(scp)) == 1, timeout=10, what="the next spool file")
        sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ
        assert _read_pdu(sock)[:1] == b"\x06"
        assert _spool_files(scp) == []  # gone before the A-RELEASE-RP
    assert _indexed(scp, first) and _indexed(scp, second)

    third, dataset = _dataset()
    with _association(scp) as sock:
        sock.sendall(_p_data(0x03, _store_command(third)) + _p_data(0x02, dataset))
        assert _status(_read_pdu(sock)) == 0x0000
        wait_for(lambda: len(_spool_files(scp)) == 1, timeout=10, what="the next spool file")
        sock.sendall(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-ABORT
    wait_for(lambda: _spool_files(scp) == [], timeout=10, what="the spare spool file removed")
    assert _indexed(scp, third)
