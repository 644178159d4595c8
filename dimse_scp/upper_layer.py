"""The SCP's upper layer with bounded memory: PDUs read only up to the length radnode
advertised, C-STORE datasets spooled to disk as their fragments arrive.

pynetdicom reads each PDU whole, at whatever length its header declares (up to 4 GiB),
and collects a C-STORE's dataset in memory before the handler sees it. Here:

* :class:`BoundedDUL` reads a PDU's 6-byte header (PS3.8 9.3.1) first and refuses a
  P-DATA-TF longer than the Maximum Length Received radnode advertised (PS3.8 D.1), an
  A-ASSOCIATE-RQ longer than :data:`MAX_ASSOCIATE_PDU`, or any other PDU longer than
  :data:`MAX_OTHER_PDU`: it sends an A-ABORT (service provider, invalid PDU parameter
  value, PS3.8 9.3.8) and closes the connection before a byte of the body is read. The
  body of an admitted PDU is read into one buffer of its exact length.
* :class:`SpoolingDIMSE` writes the data set fragments of each C-STORE-RQ (PS3.7 6.3.1,
  PS3.8 E.2) to a :class:`Spool` file in the store's temp folder as they come: a File
  Meta Information group first (built from the request, so an instance whose dataset
  matches its request needs no second write), then the dataset bytes as received. Bytes
  past ``max_instance_bytes`` are not written: the file is removed at once and the rest
  of the message is only counted. The finished C-STORE primitive carries the spool's
  path (pynetdicom's ``Event.dataset_path``, as its own ``STORE_RECV_CHUNKED_DATASET``
  mode does) and an empty ``DataSet``; the handler takes the :class:`Spool` with
  :meth:`SpoolingDIMSE.claim`. Spools never claimed (the association ended first) are
  removed when the connection's DUL thread ends.

* Neither thread of an association polls. pynetdicom's DUL thread sleeps 1 ms whenever it
  finds no PDU and its association thread 1 ms before each look at the DIMSE queue, so a
  C-STORE waits on up to three sleeps. :class:`BoundedDUL` waits in ``select`` on the
  socket and a wake-up socket pair, :class:`WakingAssociation` on an event the DUL sets
  after each event it handles.
* A plain C-STORE-RSP is encoded by :func:`store_response_command` rather than through a
  pydicom Dataset.
* In the established state, a P-DATA-TF's PDVs go from the receive buffer straight to the
  spooling provider (:meth:`BoundedDUL._receive_pdata`), without pynetdicom's PDU objects
  and state machine event for each. A C-STORE-RQ whose last fragment is in is served
  right there in the DUL thread, by pynetdicom's own Storage service class, when the
  association's thread is idle (:meth:`WakingAssociation.serving_here`); its response
  goes out on the socket at once (:meth:`BoundedDUL.send_now`). Anything else, or anyone
  listening for pynetdicom's PDU events, takes pynetdicom's way.
* The spool file of a complete dataset is fsynced on a ``sync_ahead`` thread while the
  handler checks the dataset (the DUL thread lets that thread begin first); the store
  waits for that fsync instead of issuing its own. The next request's spool file is made
  once a response is out, while the peer reads it.

:class:`SpoolingRequestHandler` gives each accepted connection these providers.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import queue
import select
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pydicom.dataelem import DataElement, RawDataElement
from pynetdicom import _config
from pynetdicom import events as evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket, RequestHandler

from radnode_core.store import file_meta_bytes

logger = logging.getLogger(__name__)
_DUL_LOG = logging.getLogger("pynetdicom.dul")

MAX_ASSOCIATE_PDU = 256 * 1024
"""Longest A-ASSOCIATE-RQ read (it comes before any maximum is negotiated): room for 128
presentation contexts with a dozen transfer syntaxes each and a 64 KiB user identity."""
MAX_OTHER_PDU = 1024
"""Longest A-RELEASE or A-ABORT PDU read (the standard's are 4 bytes long)."""

_P_DATA_TF = 0x04
_ASSOCIATE = (0x01, 0x02, 0x03)
_RELEASE_OR_ABORT = (0x05, 0x07)
_INVALID_PDU_PARAMETER_VALUE = 0x06
_READ_CHUNK = 1024 * 1024
_SYNC_START_WAIT_S = 0.05
"""How long the DUL thread lets a ``sync_ahead`` thread take to begin a spool's fsync."""

Refused = Callable[[str, int, int], None]
"""Called with (peer address, PDU type, declared length) when a PDU is refused."""


@dataclass
class SpoolSettings:
    """Where C-STORE datasets are spooled and how many dataset bytes one may have;
    ``sync_ahead``: the threads that fsync each complete spool file while its dataset is
    checked (None: the store syncs it, or nothing does)."""

    directory: Path
    max_bytes: int | None = None
    sync_ahead: Executor | None = None


class Spool:
    """One C-STORE dataset on its way to disk: ``head`` (File Meta Information) first,
    then the dataset's bytes as they arrive, up to ``max_bytes``."""

    def __init__(
        self, settings: SpoolSettings, head: bytes, opened: tuple[Path, int] | None = None
    ) -> None:
        """``opened``: an empty spool file made ahead (:func:`open_spool_file`), its path and
        descriptor; the spool takes it over."""
        self.path = opened[0] if opened is not None else _spool_path(settings.directory)
        self.max_bytes = settings.max_bytes
        self.head = head
        self.data_offset = len(head)
        self.size = 0  # dataset bytes received, written or not
        self.too_large = False
        self.error: OSError | None = None
        self.sync_ahead = settings.sync_ahead
        self._synced: Future[None] | None = None
        self._fd: int | None = opened[1] if opened is not None else None
        try:
            if self._fd is None:
                self._fd = _create(self.path)
            self._write(memoryview(head))
        except OSError as exc:
            self._fail(exc)

    def write(self, data: memoryview) -> None:
        self.size += len(data)
        if self._fd is None:
            return
        if self.max_bytes is not None and self.size > self.max_bytes:
            self.too_large = True
            self.discard()
            return
        try:
            self._write(data)
        except OSError as exc:
            self._fail(exc)

    def _write(self, data: memoryview) -> None:
        assert self._fd is not None
        while data:
            written = os.write(self._fd, data)
            data = data[written:]

    def _fail(self, exc: OSError) -> None:
        self.error = exc
        self.discard()

    def finish(self) -> None:
        """The last fragment is in: close the file (it stays until claimed and stored),
        after an fsync on a ``sync_ahead`` thread if the settings have one."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self.sync_ahead is not None and self.complete:
            started = threading.Event()
            try:
                self._synced = self.sync_ahead.submit(_sync_and_close, fd, started)
            except RuntimeError:  # the executor is shut down: the store syncs it
                pass
            else:
                # The sync thread needs the interpreter lock to begin, and this thread
                # would hold it through the dataset's checks: without this wait the fsync
                # starts only when the store waits for it.
                started.wait(_SYNC_START_WAIT_S)
                return
        os.close(fd)

    def wait_synced(self) -> bool:
        """Wait for the fsync begun at :meth:`finish`: True once the file is durable,
        False if none was begun. Raises the fsync's OSError."""
        if self._synced is None:
            return False
        self._synced.result()
        return True

    @property
    def complete(self) -> bool:
        """Every byte is in the file (not refused for its size, no write error)."""
        return not self.too_large and self.error is None

    def discard(self) -> None:
        """Close and remove the file (nothing happens if it was renamed into the store). A
        file still open is closed without its fsync: it is removed anyway."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            logger.warning("cannot remove spool file", extra={"path": str(self.path)})


def _spool_path(directory: Path) -> Path:
    return directory / f"{uuid.uuid4().hex}.spool"


def _create(path: Path) -> int:
    """A new file at ``path``, open for writing; the folder is made again if it was
    removed (another host's clean-up of a shared data dir's idle temp folders)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)


def open_spool_file(directory: Path) -> tuple[Path, int]:
    """An empty spool file in ``directory``: its path and a descriptor open for writing."""
    path = _spool_path(directory)
    return path, _create(path)


def _sync_and_close(fd: int, started: threading.Event | None = None) -> None:
    if started is not None:
        started.set()
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pdata(context_id: int, data: bytes | memoryview) -> P_DATA:
    primitive = P_DATA()
    primitive.presentation_data_value_list.append((context_id, data))  # type: ignore[arg-type]
    return primitive


_IMPLICIT_ELEMENT = struct.Struct("<HHI")
_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101


def _command_element(element: int, value: bytes) -> bytes:
    return _IMPLICIT_ELEMENT.pack(0x0000, element, len(value)) + value


def _command_uid(uid: object) -> bytes:
    value = str(uid).encode("ascii")
    return value + b"\x00" if len(value) % 2 else value


def store_response_command(primitive: C_STORE) -> bytes | None:
    """The Command Set of a C-STORE-RSP that carries only what every response carries
    (PS3.7 9.3.1.2: class and instance, message ID responded to, status), implicit VR
    little endian (PS3.7 6.3.1) and byte for byte what pynetdicom encodes; None for any
    other message, which pynetdicom then encodes itself."""
    status = getattr(primitive, "Status", None)
    responded_to = primitive.MessageIDBeingRespondedTo
    if (
        not isinstance(status, int)
        or responded_to is None
        or primitive.ErrorComment is not None
        or primitive.OffendingElement is not None
        or primitive.MoveOriginatorApplicationEntityTitle is not None
        or primitive.MoveOriginatorMessageID is not None
        or primitive.DataSet is not None
    ):
        return None
    try:
        elements = []
        if primitive.AffectedSOPClassUID:
            elements.append(_command_element(0x0002, _command_uid(primitive.AffectedSOPClassUID)))
        elements.append(_command_element(0x0100, _C_STORE_RSP.to_bytes(2, "little")))
        elements.append(_command_element(0x0120, responded_to.to_bytes(2, "little")))
        elements.append(_command_element(0x0800, _NO_DATA_SET.to_bytes(2, "little")))
        elements.append(_command_element(0x0900, status.to_bytes(2, "little")))
        if primitive.AffectedSOPInstanceUID:
            elements.append(
                _command_element(0x1000, _command_uid(primitive.AffectedSOPInstanceUID))
            )
    except (OverflowError, UnicodeEncodeError):
        return None
    body = b"".join(elements)
    return _command_element(0x0000, len(body).to_bytes(4, "little")) + body


_US = "US"
_STORE_RQ_PARAMETERS: dict[int, tuple[str, str]] = {
    0x00000002: ("AffectedSOPClassUID", "UI"),
    0x00000110: ("MessageID", _US),
    0x00000700: ("Priority", _US),
    0x00001000: ("AffectedSOPInstanceUID", "UI"),
    0x00001030: ("MoveOriginatorApplicationEntityTitle", "AE"),
    0x00001031: ("MoveOriginatorMessageID", _US),
}
"""The C-STORE-RQ command elements that are parameters of the C-STORE primitive, with
their VR (PS3.7 9.3.1.1)."""
_STORE_RQ_STRUCTURE = frozenset({0x00000000, 0x00000100, 0x00000800})
"""Command Group Length, Command Field, Command Data Set Type: no parameter of the
primitive (pynetdicom skips them too)."""


def store_request(message: C_STORE_RQ) -> C_STORE | None:
    """The C-STORE primitive of a decoded C-STORE-RQ, what pynetdicom's
    ``message_to_primitive`` makes of it, with each parameter converted from its raw
    element as pydicom's value converters do (UI: without trailing NULs and spaces, AE:
    without leading and trailing spaces, US: two bytes little endian) and set through the
    primitive's own setters, which check it as before. pynetdicom builds a DataElement
    for every command element on the way, with pydicom's validation: about 0.1 ms a
    request. An element pydicom has converted already is taken as converted, as
    pynetdicom takes it. None (pynetdicom then converts the message) for anything else:
    an element not of the request, empty, multi-valued or of an unexpected length."""
    primitive = C_STORE()
    for tag, elem in message.command_set._dict.items():
        if tag in _STORE_RQ_STRUCTURE:
            continue
        parameter = _STORE_RQ_PARAMETERS.get(tag)
        if parameter is None:
            return None
        keyword, vr = parameter
        if type(elem) is DataElement:  # converted already (the SCP reads the UIDs first)
            if elem.VM != 1:
                return None
            setattr(primitive, keyword, elem.value)
            continue
        value = getattr(elem, "value", None)
        if type(elem) is not RawDataElement or not isinstance(value, bytes):
            return None
        if vr == _US:
            if len(value) != 2:
                return None
            setattr(primitive, keyword, int.from_bytes(value, "little"))
            continue
        text = value.decode("latin-1")
        if "\\" in text:
            return None
        setattr(primitive, keyword, text.rstrip("\0 ") if vr == "UI" else text.strip())
    primitive.DataSet = message.data_set
    primitive._context_id = message.context_id
    primitive._dataset_path = message._data_set_path
    primitive._dataset_file = message._data_set_file
    return primitive


class SpoolingDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider with C-STORE-RQ datasets written to a :class:`Spool`."""

    def __init__(self, assoc: Association, settings: SpoolSettings) -> None:
        super().__init__(assoc)
        self.spool_settings = settings
        self._spool: Spool | None = None  # the dataset being received
        self._finished: dict[str, Spool] = {}  # complete, not yet claimed by the handler
        self._storage_classes: dict[str, bool] = {}  # SOP Class UID: served as storage
        self._lock = threading.Lock()
        # The next request's spool file, made while the peer reads a response and sends on
        # (making a file in the temp folder costs 0.1-0.2 ms where storing just synced it).
        self._ready: tuple[Path, int] | None = None
        self._closed = False

    def receive_primitive(self, primitive: P_DATA) -> None:
        """In the DUL thread: each PDV on its own (:meth:`receive_pdv`)."""
        for context_id, data in primitive.presentation_data_value_list:
            self.receive_pdv(context_id, data)

    def receive_pdv(self, context_id: int, data: bytes | memoryview) -> None:
        """One presentation data value (PS3.8 E.2, message control header first): a
        C-STORE-RQ's dataset fragments go to its spool, everything else to pynetdicom."""
        control = data[0]
        spool = self._spool
        if spool is not None and not control & 1:
            spool.write(memoryview(data)[1:])
            if control & 2:
                self._finish(spool, context_id)
            return
        super().receive_primitive(_pdata(context_id, bytes(data)))
        message = self.message
        if control & 3 == 3 and isinstance(message, C_STORE_RQ):
            if spool is not None:  # a command before the last fragment: start anew
                spool.discard()
            opened, self._ready = self._ready, None
            self._spool = Spool(self.spool_settings, self._head(message, context_id), opened)

    def _head(self, message: C_STORE_RQ, context_id: int) -> bytes:
        """The File Meta Information the instance will have if its dataset matches the
        request; an empty head (the store then writes the file anew) when it cannot be
        made from what the peer sent."""
        try:
            context = self.assoc._accepted_cx[context_id]
            command = message.command_set
            return file_meta_bytes(
                str(context.abstract_syntax),
                str(command.AffectedSOPInstanceUID or ""),
                str(context.transfer_syntax[0]),  # type: ignore[index]
                str(self.assoc.requestor.ae_title).strip() or None,
            )
        except Exception:  # noqa: BLE001 - untrusted UIDs: any failure means no head
            return b""

    def _finish(self, spool: Spool, context_id: int) -> None:
        """The dataset's last fragment: serve the request here or hand it on, with the
        spool's path."""
        self._spool = None
        spool.finish()
        with self._lock:
            self._finished[str(spool.path)] = spool
        message = cast(C_STORE_RQ, self.message)
        message._data_set_path = spool.path
        assoc = self.assoc
        if isinstance(assoc, WakingAssociation) and self._storage_context(message, context_id):
            with assoc.serving_here() as free:
                if free:
                    self._serve_store(context_id)
                    return
        # An empty last fragment completes pynetdicom's message (its DataSet stays empty).
        super().receive_primitive(_pdata(context_id, b"\x02"))

    def _storage_context(self, message: C_STORE_RQ, context_id: int) -> PresentationContext | None:
        """The accepted context of a C-STORE-RQ that pynetdicom would give its Storage
        service class (``Association._serve_request``); None for anything else."""
        assoc = self.assoc
        if not assoc.is_established or assoc._sent_release:
            return None
        context = assoc._accepted_cx.get(context_id)
        class_uid = message.command_set.get("AffectedSOPClassUID")
        if context is None or not class_uid:
            return None
        if _config.UNRESTRICTED_STORAGE_SERVICE:
            return context
        storage = self._storage_classes.get(class_uid)
        if storage is None:
            service_uid = assoc.acceptor.accepted_common_extended.get(class_uid, (class_uid,))[0]
            storage = uid_to_service_class(service_uid) is StorageServiceClass
            self._storage_classes[class_uid] = storage
        return context if storage else None

    def _serve_store(self, context_id: int) -> None:
        """Complete the C-STORE-RQ and serve it in this (the DUL) thread with pynetdicom's
        own Storage service class, as the association thread would: the handler stores
        the instance and the response goes out without two hand-overs between threads."""
        assoc = self.assoc
        message = cast(C_STORE_RQ, self.message)
        message.decode_msg(_pdata(context_id, b"\x02"), assoc)
        self.message = None
        evt.trigger(assoc, evt.EVT_DIMSE_RECV, {"message": message})
        try:
            request = store_request(message) or cast(C_STORE, message.message_to_primitive())
        except Exception:  # noqa: BLE001 - as pynetdicom: an invalid message ends the association
            logger.warning(
                "invalid DIMSE message received", extra={"peer": assoc.requestor.address}
            )
            self.dul.event_queue.put("Evt19")
            return
        self.cancel_req = {}
        try:
            StorageServiceClass(assoc).SCP(request, assoc._accepted_cx[context_id])
        except Exception:  # noqa: BLE001 - pynetdicom aborts the association on the same
            logger.exception("C-STORE service failed: association aborted")
            assoc._abort_nonblocking()
        finally:
            # The peer waits for the response: the time spent storing is not its silence.
            self.dul._idle_timer.restart()
        self._make_ready()

    def _make_ready(self) -> None:
        """Make the next request's spool file now, while the peer reads the response (in
        the DUL thread, which alone takes it or, at the end, removes it)."""
        if self._ready is not None or self._closed:
            return
        try:
            self._ready = open_spool_file(self.spool_settings.directory)
        except OSError:  # left to the next request's spool, which reports it
            pass

    def send_msg(self, primitive: Any, context_id: int) -> None:
        """A plain C-STORE-RSP is encoded by :func:`store_response_command` and sent as one
        PDV (PS3.8 E.2: last fragment of a command); pynetdicom builds and encodes a pydicom
        Dataset for it, about half a millisecond a response. Anything else, or anyone
        listening for EVT_DIMSE_SENT, goes through pynetdicom."""
        command = None
        if isinstance(primitive, C_STORE) and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            command = store_response_command(primitive)
        limit = self.maximum_pdu_size
        if command is None or (limit and len(command) + 6 > limit):
            super().send_msg(primitive, context_id)
            return
        dul = self.dul
        if isinstance(dul, BoundedDUL) and dul.send_now(context_id, b"\x03" + command):
            return
        dul.send_pdu(_pdata(context_id, b"\x03" + command))

    def claim(self, path: str | Path | None) -> Spool | None:
        """The handler takes the finished spool at ``path`` (None: not, or no longer, here)."""
        if path is None:
            return None
        with self._lock:
            return self._finished.pop(str(path), None)

    def discard_all(self) -> None:
        """The connection is over: remove the dataset in progress and unclaimed spools."""
        with self._lock:
            spools = list(self._finished.values())
            self._finished.clear()
        if self._spool is not None:
            spools.append(self._spool)
            self._spool = None
        try:
            for spool in spools:
                spool.discard()
        finally:
            self.drop_ready()

    def drop_ready(self) -> None:
        """No request is to come (the connection ends, or the peer asked to release or
        abort): remove the spool file made ahead, and make no other."""
        self._closed = True
        ready, self._ready = self._ready, None
        if ready is not None:
            with contextlib.suppress(OSError):
                ready[0].unlink()
            with contextlib.suppress(OSError):
                os.close(ready[1])


_HEADER = struct.Struct(">BBL")
_ITEM_LENGTH = struct.Struct(">L")
_ITEM_HEADER = struct.Struct(">LB")


class BoundedDUL(DULServiceProvider):
    """pynetdicom's DUL with each PDU's length checked before its body is read."""

    on_refused: Refused | None = None

    def limit(self, pdu_type: int) -> int | None:
        """The longest PDU of this type read (None: no limit)."""
        if pdu_type == _P_DATA_TF:
            advertised = self.assoc.acceptor.maximum_length
            return advertised or None  # 0: unlimited was advertised
        if pdu_type in _ASSOCIATE:
            return MAX_ASSOCIATE_PDU
        return MAX_OTHER_PDU

    def _read_pdu_data(self) -> None:
        """As pynetdicom's, but the header first, and a PDU over its limit aborts."""
        assert self.socket is not None
        header: bytes | bytearray = b""
        try:
            header = self.socket.recv(6)
        except (OSError, TimeoutError):
            pass
        if len(header) != 6:
            self.event_queue.put("Evt17")  # closed before a whole header came
            return
        pdu_type, _, length = _HEADER.unpack(header)
        if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
            logger.error("unknown PDU type received", extra={"pdu_type": pdu_type})
            self.event_queue.put("Evt19")
            return
        if pdu_type in _RELEASE_OR_ABORT and isinstance(self.assoc.dimse, SpoolingDIMSE):
            # Before the A-RELEASE-RP goes out: the peer finds no spool file left.
            self.assoc.dimse.drop_ready()
        limit = self.limit(pdu_type)
        if limit is not None and length > limit:
            self._refuse(pdu_type, length, limit)
            return
        buffer = self._read_body(header, length)
        if buffer is None:
            self.event_queue.put("Evt17")
            return
        if pdu_type == _P_DATA_TF and self._receive_pdata(buffer):
            return
        try:
            pdu, event = self._decode_pdu(buffer)
        except Exception as exc:  # noqa: BLE001 - untrusted bytes: the peer's error, not ours
            logger.warning(
                "unable to decode the received PDU",
                extra={"peer": self.assoc.requestor.address, "error": type(exc).__name__},
            )
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _receive_pdata(self, buffer: bytearray) -> bool:
        """A P-DATA-TF in Sta6, its PDVs (PS3.8 9.3.5.1) handed to the spooling DIMSE
        provider straight from the receive buffer, as pynetdicom's DT-2 would hand them
        over after decoding the PDU into objects and a state machine event: True if done
        so. False (pynetdicom decodes it) for a PDU whose items do not add up, in any other
        state, or while anyone listens for the received bytes or PDU."""
        dimse = self.assoc.dimse
        if (
            not isinstance(dimse, SpoolingDIMSE)
            or self.state_machine.current_state != "Sta6"
            or self.assoc.get_handlers(evt.EVT_DATA_RECV)
            or self.assoc.get_handlers(evt.EVT_PDU_RECV)
        ):
            return False
        view = memoryview(buffer)
        items: list[tuple[int, memoryview]] = []
        pos, end = 6, len(buffer)
        while pos < end:
            if end - pos < 6:
                return False
            (item_length,) = _ITEM_LENGTH.unpack_from(buffer, pos)
            if item_length < 2 or pos + 4 + item_length > end:
                return False
            items.append((buffer[pos + 4], view[pos + 5 : pos + 4 + item_length]))
            pos += 4 + item_length
        if not items:
            return False
        for context_id, data in items:
            dimse.receive_pdv(context_id, data)
        wake = getattr(self.assoc, "wake", None)
        if wake is not None and not dimse.msg_queue.empty():  # a message for its thread
            wake()
        return True

    def send_now(self, context_id: int, value: bytes) -> bool:
        """From the DUL thread itself, in Sta6 with nothing queued to send: one PDV sent
        at once as a P-DATA-TF, the bytes pynetdicom's DT-1 sends, without a round through
        its queue and state machine. False (nothing sent) otherwise."""
        if (
            threading.current_thread() is not self
            or self.state_machine.current_state != "Sta6"
            or not self.to_provider_queue.empty()
            or self.assoc.get_handlers(evt.EVT_PDU_SENT)
            or self.socket is None
        ):
            return False
        item = _ITEM_HEADER.pack(len(value) + 1, context_id) + value
        self.socket.send(_HEADER.pack(_P_DATA_TF, 0, len(item)) + item)
        return True

    def _read_body(self, header: bytes | bytearray, length: int) -> bytearray | None:
        """The whole PDU in one buffer of its exact length; None if the connection ends."""
        assert self.socket is not None and self.socket.socket is not None
        sock = self.socket.socket
        buffer = bytearray(6 + length)
        buffer[:6] = header
        view = memoryview(buffer)
        pos = 6
        try:
            while pos < len(buffer):
                received = sock.recv_into(view[pos : pos + _READ_CHUNK])
                if not received:
                    return None
                pos += received
        except (OSError, TimeoutError):
            return None
        finally:
            view.release()
        return buffer

    def _refuse(self, pdu_type: int, length: int, limit: int) -> None:
        """A-ABORT (PS3.8 9.3.8: service provider, invalid PDU parameter value), then close:
        the body is never read."""
        peer = self.assoc.requestor.address
        logger.warning(
            "PDU longer than allowed: association aborted",
            extra={"peer": peer, "pdu_type": pdu_type, "length": length, "limit": limit},
        )
        if self.on_refused is not None:
            self.on_refused(peer, pdu_type, length)
        abort = A_ABORT_RQ()
        abort.source = 0x02
        abort.reason_diagnostic = _INVALID_PDU_PARAMETER_VALUE
        assert self.socket is not None
        try:
            self.socket.send(abort.encode())
        except OSError:
            pass
        self.socket.close()  # queues Evt17: the state machine ends the association

    def run_reactor(self) -> None:
        """pynetdicom's DUL loop, but an idle loop waits until the socket is readable or
        another thread hands the DUL a primitive (:meth:`send_pdu`, :meth:`stop_dul`),
        instead of sleeping ``_run_loop_delay`` and looking again. Each event the state
        machine handles wakes the association's reactor (:class:`WakingAssociation`)."""
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._idle_timer.start()
        assert self.socket is not None
        assoc = self.assoc
        notify = getattr(assoc, "wake", None)
        idle = False
        try:
            while True:
                if not assoc._dul_ready.is_set():
                    assoc._dul_ready.set()
                    idle = True
                readable = self._wait() if idle else False
                if self._kill_thread:
                    break
                if self.artim_timer.expired:
                    self.event_queue.put("Evt18")
                if self._process_recv_primitive():
                    pass
                elif readable and self.socket is not None and self.socket._is_connected:
                    # What _is_transport_event does once its own select finds data.
                    self._read_pdu_data()
                    self._idle_timer.restart()
                elif self._is_transport_event():
                    self._idle_timer.restart()
                try:
                    event = self.event_queue.get(block=False)
                except queue.Empty:
                    idle = True
                    continue
                self.state_machine.do_action(event)
                idle = False
                if notify is not None:
                    notify()
        except Exception as exc:  # noqa: BLE001 - the association is aborted, as pynetdicom does
            # Logged as pynetdicom's own reactor logs it (a state machine error on a bent
            # request, such as Evt7 in Sta13, is pynetdicom's).
            _DUL_LOG.error("Exception in DUL.run(), aborting association")
            _DUL_LOG.exception(exc)
            abort = A_ABORT_RQ()
            abort.source = 0x02
            abort.reason_diagnostic = 0x00
            try:
                self.socket.send(abort.encode())
            except OSError:
                pass
            assoc.is_aborted = True
            assoc.is_established = False
            assoc._kill = True
            self._kill_thread = True
        finally:
            self._wake_w.close()
            self._wake_r.close()
            if notify is not None:
                notify()
            dimse = assoc.dimse
            if isinstance(dimse, SpoolingDIMSE):
                dimse.discard_all()

    def _wait(self) -> bool:
        """Until the socket has data (or closed), a wake-up came, or ``WAIT_S`` passed (the
        ARTIM timer is checked that often). TLS data already decrypted needs no wait.

        True if the wait saw the socket readable (data, or its close): the loop then reads
        the PDU without pynetdicom's own look at the socket (``_is_transport_event``
        selects on it again, with no timeout, before it reads), one system call less per
        PDU. False leaves that look to pynetdicom."""
        transport = self.socket
        sock = transport.socket if transport is not None and transport._is_connected else None
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return False
        waits: list[Any] = [self._wake_r]
        if sock is not None and sock.fileno() >= 0:  # a closed socket is not waited on
            waits.append(sock)
        if not (self.to_provider_queue.empty() and self.event_queue.empty()):
            return False
        try:
            ready, _, _ = select.select(waits, [], [], WAIT_S)
        except (OSError, ValueError):  # the socket was closed: the loop sees it
            return False
        if self._wake_r in ready:
            try:
                while self._wake_r.recv(4096):
                    pass
            except OSError:  # drained (BlockingIOError)
                pass
        return sock is not None and sock in ready

    def wake(self) -> None:
        """Make an idle reactor loop look again (from any thread)."""
        wake_w = getattr(self, "_wake_w", None)
        if wake_w is None:
            return
        try:
            wake_w.send(b"\0")
        except OSError:  # closed (the reactor ended), or already full of wake-ups
            pass

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self.wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake()

    def stop_dul(self) -> bool:
        """As pynetdicom's: end the reactor if the state machine is idle (Sta1)."""
        if self.state_machine.current_state != "Sta1":
            return False
        self._kill_thread = True
        self.wake()
        while self.is_alive():
            time.sleep(0.001)
        return True


WAIT_S = 0.05
"""Longest an idle reactor (DUL or association) waits before it looks again without a
wake-up: the resolution of the ARTIM and network timeouts."""


class WakingAssociation(Association):
    """pynetdicom's acceptor :class:`Association` whose reactor waits to be woken (by the DUL
    thread, after each event it handles) instead of sleeping 1 ms between looks at the
    DIMSE queue: a C-STORE is served as soon as its last fragment is in."""

    def __init__(self, ae: Any, mode: str) -> None:
        super().__init__(ae, mode)
        self._wake = threading.Event()
        self._serve_lock = threading.Lock()
        self._serving = False

    @contextlib.contextmanager
    def serving_here(self) -> Iterator[bool]:
        """For the DUL thread: True while this association's own thread is idle (serving
        nothing and nothing queued for it), which then leaves the next message to the
        caller; False if the request must be queued behind the ones before it."""
        with self._serve_lock:
            free = not self._serving and self.dimse.msg_queue.empty()
            if free:
                self._serving = True
        try:
            yield free
        finally:
            if free:
                self._serving = False

    def wake(self) -> None:
        self._wake.set()

    def kill(self) -> None:
        self._kill = True
        self._wake.set()
        super().kill()

    def _run_reactor(self) -> None:
        """pynetdicom's acceptor loop (``Association._run_reactor``) with the wait above:
        serve a complete DIMSE message, answer an A-RELEASE-RQ, end on an abort, on the
        DUL's end or on the network timeout."""
        self._is_paused = False
        idle = False
        while not self._kill:
            if idle:
                self._wake.wait(WAIT_S)
            self._wake.clear()
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            with self._serve_lock:
                context_id, msg = self.dimse.get_msg(block=False)
                if msg is not None:
                    self._serving = True
            idle = msg is None
            if msg:
                try:
                    self._serve_request(msg, cast(int, context_id))
                finally:
                    self._serving = False

            if self.is_established and self.acse.is_release_requested():
                # Released before the A-RELEASE-RP goes: the DUL thread sends it at once,
                # and the peer's close (EVT_CONN_CLOSE) must find the association released.
                self.is_released = True
                self.is_established = False
                self.acse.send_release(is_response=True)
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)  # EVT_ACSE_RECV for its subscribers
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired() and not self._serving:
                logger.error("network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


def _copy_context(context: PresentationContext) -> PresentationContext:
    """A presentation context's own copy: its transfer syntax list is the only mutable part
    (UIDs are immutable strings)."""
    clone = copy.copy(context)
    clone._transfer_syntax = list(context._transfer_syntax)
    return clone


class SpoolingRequestHandler(RequestHandler):
    """pynetdicom's request handler whose associations get a :class:`BoundedDUL` and,
    where the server has ``spool`` settings, a :class:`SpoolingDIMSE`."""

    def _create_association(self) -> Association:
        """As pynetdicom's, with a :class:`WakingAssociation`, a :class:`BoundedDUL`, a
        :class:`SpoolingDIMSE` where the server has ``spool`` settings, the server's
        presentation contexts copied one by one instead of with ``deepcopy`` (about
        0.1 s for the 170 storage contexts, at every association), and pynetdicom's
        logging handlers left out while nothing would be logged."""
        server: Any = self.server
        assoc = WakingAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = server
        assoc.name = f"AcceptorThread@{time.strftime('%Y%m%d%H%M%S')}"
        dul = BoundedDUL(assoc)
        dul.on_refused = getattr(server, "on_pdu_refused", None)
        assoc.dul = dul
        assoc.set_socket(AssociationSocket(assoc, client_socket=self.request))
        settings: Any = getattr(server, "spool", None)
        if isinstance(settings, SpoolSettings):
            assoc.dimse = SpoolingDIMSE(assoc, settings)
        # The timers live in the DUL: set them again on the new one.
        assoc.acse_timeout = assoc.acse_timeout
        assoc.network_timeout = assoc.network_timeout

        acceptor = assoc.acceptor
        acceptor.maximum_length = self.ae.maximum_pdu_size
        acceptor.ae_title = server.ae_title
        acceptor.address_info = self.local
        acceptor.implementation_class_uid = self.ae.implementation_class_uid
        acceptor.implementation_version_name = self.ae.implementation_version_name
        acceptor.supported_contexts = [_copy_context(cx) for cx in server.contexts]
        assoc.requestor.address_info = self.remote

        for event, handlers in server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                for handler in handlers:
                    assoc.bind(event, handler[0], handler[1])
        if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
            for event, handler in _PYNETDICOM_LOG_HANDLERS:
                assoc.unbind(event, handler)
        return assoc


_PYNETDICOM_LOG_HANDLERS: tuple[tuple[evt.NotificationEvent, Callable[..., Any]], ...] = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)
"""pynetdicom's own logging handlers, bound to every association: they format each PDU
and DIMSE message (a C-STORE's a dozen lines) before the logger drops them. Unbound
while pynetdicom's logger is quieter than INFO (radnode keeps it at WARNING)."""
