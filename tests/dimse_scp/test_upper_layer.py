"""The SCP's upper layer in pieces: what it encodes or decodes itself must be what pynetdicom
encodes or decodes, and each association gets contexts of its own."""

from __future__ import annotations

import os
import struct
import threading
import time
from pathlib import Path

import pytest
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA

from dimse_scp import upper_layer
from dimse_scp.server import _started_pool, build_ae
from dimse_scp.upper_layer import (
    Spool,
    SpoolSettings,
    _copy_context,
    store_request,
    store_response_command,
)
from radnode_core.settings import Settings

CT = "1.2.840.10008.5.1.4.1.1.2"
LONG_UID = "1.2.826.0.1.3680043.8.498.19803436436634749723672199720583725753"


def _response(status: int, instance: str | None) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = CT
    if instance:
        rsp.AffectedSOPInstanceUID = instance
    rsp.Status = status
    return rsp


def _pynetdicom_command(rsp: C_STORE) -> bytes:
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    return bytes(encode(message.command_set, True, True))  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xA700, 0xC000])
@pytest.mark.parametrize("instance", ["1.2.3", "1.2.34", LONG_UID, None])
def test_a_plain_c_store_response_is_what_pynetdicom_encodes(status, instance):
    rsp = _response(status, instance)
    assert store_response_command(rsp) == _pynetdicom_command(rsp)


def test_a_response_with_more_is_left_to_pynetdicom():
    rsp = _response(0xA700, "1.2.3")
    rsp.ErrorComment = "out of resources"  # type: ignore[assignment]
    assert store_response_command(rsp) is None
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = CT
    assert store_response_command(request) is None


def test_each_association_gets_its_own_contexts(tmp_path: Path):
    ae = build_ae(Settings(data_dir=tmp_path))
    original = ae.supported_contexts[0]
    copy = _copy_context(original)
    assert copy is not original
    assert copy.abstract_syntax == original.abstract_syntax
    assert copy.transfer_syntax == original.transfer_syntax
    copy.transfer_syntax.clear()
    copy.context_id = 3
    assert original.transfer_syntax and original.context_id is None


_IMPLICIT = struct.Struct("<HHI")


def _element(element: int, value: bytes) -> bytes:
    return _IMPLICIT.pack(0x0000, element, len(value)) + value


def _received_request(*elements: tuple[int, bytes]) -> C_STORE_RQ:
    """A C-STORE-RQ command set (implicit VR little endian) with ``elements`` besides its
    Command Field and Data Set Type, decoded by pynetdicom as the SCP receives it."""
    body = b"".join(
        _element(tag, value)
        for tag, value in sorted(
            [(0x0100, b"\x01\x00"), (0x0800, b"\x00\x00"), *elements], key=lambda e: e[0]
        )
    )
    command = _element(0x0000, len(body).to_bytes(4, "little")) + body
    message = DIMSEMessage()
    for control, data in ((b"\x03", command), (b"\x02", b"")):
        primitive = P_DATA()
        primitive.presentation_data_value_list.append((1, control + data))
        message.decode_msg(primitive)
    assert isinstance(message, C_STORE_RQ)
    return message


_PARAMETERS = (
    "MessageID",
    "AffectedSOPClassUID",
    "AffectedSOPInstanceUID",
    "Priority",
    "MoveOriginatorApplicationEntityTitle",
    "MoveOriginatorMessageID",
    "_context_id",
    "_dataset_path",
)


@pytest.mark.parametrize(
    "elements",
    [
        [
            (0x0002, CT.encode() + b"\0"),
            (0x0110, b"\x07\x00"),
            (0x0700, b"\x00\x00"),
            (0x1000, LONG_UID.encode()),
        ],
        [
            (0x0002, CT.encode() + b"\0"),
            (0x0110, b"\xff\xff"),
            (0x0700, b"\x02\x00"),
            (0x1000, b"1.2.34"),
            (0x1030, b" MOVE_SCU   "),
            (0x1031, b"\x09\x00"),
        ],
        [(0x0002, b"1.2.3 "), (0x0110, b"\x01\x00"), (0x0700, b"\x01\x00")],
        [(0x0002, CT.encode() + b"\0"), (0x0110, b"\x01\x00"), (0x0700, b"\x00\x00")],
    ],
)
@pytest.mark.parametrize("read", [(), ("AffectedSOPClassUID", "AffectedSOPInstanceUID")])
def test_a_store_request_is_the_primitive_pynetdicom_makes(elements, read):
    """Whether or not the SCP read some elements before (it reads the UIDs as the dataset
    arrives, which converts them)."""
    message = _received_request(*elements)
    for keyword in read:
        getattr(message.command_set, keyword, None)
    ours = store_request(message)
    theirs = _received_request(*elements).message_to_primitive()
    assert ours is not None and isinstance(theirs, C_STORE)
    assert ours.DataSet is not None and theirs.DataSet is not None
    assert ours.DataSet.getvalue() == theirs.DataSet.getvalue()
    for name in _PARAMETERS:
        assert getattr(ours, name) == getattr(theirs, name), name
        assert type(getattr(ours, name)) is type(getattr(theirs, name)), name


@pytest.mark.parametrize(
    "elements",
    [
        [(0x0002, CT.encode() + b"\0"), (0x0110, b"\x07\x00"), (0x1030, b"A\\B")],  # two AEs
        [(0x0002, CT.encode() + b"\0"), (0x0110, b"\x07\x00\x00\x00")],  # US of 4 bytes
        [(0x0002, CT.encode() + b"\0"), (0x0110, b"\x07\x00"), (0x0900, b"\x00\x00")],  # Status
        [(0x0002, CT.encode() + b"\0"), (0x0110, b"\x07\x00"), (0x1000, b"")],  # empty value
    ],
)
def test_a_store_request_out_of_the_ordinary_is_left_to_pynetdicom(elements):
    assert store_request(_received_request(*elements)) is None


def test_a_finished_spool_is_being_synced_when_finish_returns(tmp_path: Path, monkeypatch):
    """The sync thread has begun the spool's fsync by the time :meth:`Spool.finish` returns,
    while the calling thread goes on checking the dataset (it holds the interpreter lock
    throughout, so a sync thread that still had to take the lock would start only when
    the store waits for it)."""
    began: list[int] = []
    release = threading.Event()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        began.append(fd)
        release.wait(5)
        real_fsync(fd)

    monkeypatch.setattr(upper_layer.os, "fsync", fsync)
    # However long a loaded machine takes to wake the thread: finish waits for it.
    monkeypatch.setattr(upper_layer, "_SYNC_START_WAIT_S", 5.0)
    with _started_pool(2, "test-sync") as pool:  # as the server's: its threads wait idle
        spool = Spool(SpoolSettings(tmp_path, sync_ahead=pool), b"head")
        spool.write(memoryview(b"dataset bytes"))
        spool.finish()
        assert began  # read at once, no sleep: the fsync is under way
        release.set()
        assert spool.wait_synced()
    assert spool.path.read_bytes() == b"headdataset bytes"


def test_a_spool_whose_sync_thread_is_busy_does_not_wait_for_it(tmp_path: Path, monkeypatch):
    """Every sync thread busy: :meth:`Spool.finish` waits a bounded time for its fsync to
    begin, and the fsync still runs once a thread is free."""
    release = threading.Event()
    monkeypatch.setattr(upper_layer, "_SYNC_START_WAIT_S", 0.01)
    with _started_pool(1, "test-sync") as pool:
        pool.submit(release.wait, 5)  # the only sync thread is taken
        spool = Spool(SpoolSettings(tmp_path, sync_ahead=pool), b"head")
        started = time.monotonic()
        spool.finish()
        assert time.monotonic() - started < 1.0
        release.set()
        assert spool.wait_synced()


def test_a_spool_discarded_before_its_last_fragment_is_not_synced(tmp_path: Path, monkeypatch):
    """A dataset cut short (a new command before its last fragment, the connection's end)
    is removed without an fsync: none goes to the sync threads, and no wait for one."""
    synced: list[int] = []
    monkeypatch.setattr(upper_layer.os, "fsync", synced.append)
    with _started_pool(1, "test-sync") as pool:
        spool = Spool(SpoolSettings(tmp_path, sync_ahead=pool), b"head")
        spool.write(memoryview(b"first fragment"))
        spool.discard()
    assert synced == []
    assert not spool.path.exists()
