"""The C-STORE sub-operations of one C-MOVE or C-GET (PS3.4 C.4.2.3, C.4.3.3).

pynetdicom runs the sub-operations (it sends each dataset the handler yields and counts
the outcomes); :class:`SubOperations` decides what to propose and what to send, and
records what became of each instance for the log and the audit trail:

- the presentation contexts a C-MOVE proposes to its destination: per SOP class, each
  stored transfer syntax as stored, plus Explicit and Implicit VR Little Endian as a
  fallback (at most 128 contexts, PS3.8 9.3.2.2); a C-GET uses those the requestor
  proposed with the SCP role for itself;
- each instance is sent as stored: its file read without decoding the values, so the
  encoded elements go out unchanged in the stored transfer syntax when the peer
  accepted it. Otherwise pynetdicom converts between the uncompressed syntaxes, and a
  compressed instance is decompressed to Explicit VR Little Endian when only an
  uncompressed syntax was accepted. An instance that cannot be sent (no file, no
  accepted context, a codec failure) is a failed sub-operation with the reason logged.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import events
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context

from radnode_core.audit import StudyRef
from radnode_core.store import InstanceStore
from radnode_core.uids import InvalidUID

logger = logging.getLogger(__name__)

MAX_CONTEXTS = 128
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# C-STORE statuses (PS3.4 B.2.3): warnings are stored instances too.
_WARNINGS = frozenset({0xB000, 0xB006, 0xB007})


def propose(rows: list[Mapping[str, Any]]) -> list[PresentationContext]:
    """The contexts a C-MOVE proposes for ``rows`` (instances of the index)."""
    syntaxes: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        ts = str(row["transfer_syntax_uid"])
        if ts not in syntaxes[str(row["sop_class_uid"])]:
            syntaxes[str(row["sop_class_uid"])].append(ts)
    contexts: list[PresentationContext] = []
    for sop_class, stored in syntaxes.items():
        compressed = [ts for ts in stored if UID(ts).is_compressed]
        plain = [ts for ts in stored if not UID(ts).is_compressed]
        contexts += [build_context(sop_class, [ts]) for ts in compressed]
        contexts.append(build_context(sop_class, list(dict.fromkeys([*plain, *UNCOMPRESSED]))))
    if len(contexts) > MAX_CONTEXTS:
        # One context per SOP class, every syntax in it: the peer picks one per class.
        contexts = [
            build_context(sop_class, list(dict.fromkeys([*stored, *UNCOMPRESSED])))
            for sop_class, stored in syntaxes.items()
        ]
    if len(contexts) > MAX_CONTEXTS:
        logger.warning(
            "more SOP classes than presentation contexts; the rest will fail",
            extra={"sop_classes": len(contexts)},
        )
    return contexts[:MAX_CONTEXTS]


class SubOperations:
    """The instances of one retrieve, the datasets to send and the C-STORE outcomes."""

    def __init__(
        self,
        store: InstanceStore,
        rows: list[Mapping[str, Any]],
        assoc: Association | None,
        poll_interval_s: float | None = None,
    ) -> None:
        self.store = store
        self.rows = rows
        self.assoc = assoc  # the association the C-STOREs go over (C-MOVE: set on accept)
        self.own_association = assoc is None  # a C-MOVE's: radnode requested it
        self.poll_interval_s = poll_interval_s
        self.statuses: dict[str, int] = {}  # SOP Instance UID -> C-STORE response status
        self.reasons: dict[str, str] = {}  # SOP Instance UID -> why it was not sent
        self.sent = 0
        self._lock = threading.Lock()

    # -- event handlers of the sub-operations' association ---------------------------------

    def on_conn_open(self, event: events.Event) -> None:
        """A C-MOVE's connection: each C-STORE goes out at once, not after a delayed ACK."""
        sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_accepted(self, event: events.Event) -> None:
        """EVT_ACCEPTED of a C-MOVE's association to its destination."""
        self.assoc = event.assoc
        if self.poll_interval_s is not None:
            # As for the SCP's own associations (StorageHandlers.on_accepted): the DUL's
            # idle poll is a wait of every C-STORE response.
            event.assoc.dul._run_loop_delay = self.poll_interval_s

    def on_dimse_recv(self, event: events.Event) -> None:
        """EVT_DIMSE_RECV: record each C-STORE response's status."""
        message = event.message
        if type(message).__name__ != "C_STORE_RSP":
            return
        command = message.command_set
        uid = str(command.get("AffectedSOPInstanceUID", ""))
        with self._lock:
            self.statuses[uid] = int(command.Status)

    def handlers(self) -> list[tuple[Any, Any]]:
        return [
            (events.EVT_CONN_OPEN, self.on_conn_open),
            (events.EVT_ACCEPTED, self.on_accepted),
            (events.EVT_DIMSE_RECV, self.on_dimse_recv),
        ]

    # -- what to send ----------------------------------------------------------------------

    def dataset(self, row: Mapping[str, Any]) -> Dataset:
        """The dataset pynetdicom sends for ``row``; one it cannot send when there is none."""
        self.sent += 1
        if self.own_association:
            self._wait_for_reactor()
        uid = str(row["sop_instance_uid"])
        sop_class = str(row["sop_class_uid"])
        stored = UID(str(row["transfer_syntax_uid"]))
        accepted = {
            UID(cx.transfer_syntax[0])
            for cx in (self.assoc.accepted_contexts if self.assoc is not None else [])
            if cx.abstract_syntax == sop_class and cx.as_scu
        }
        if not accepted:
            return self._unsendable(row, f"no presentation context accepted for {sop_class}")
        plain = {ts for ts in accepted if not ts.is_compressed}
        convertible = not stored.is_compressed and any(
            ts.is_little_endian == stored.is_little_endian for ts in plain
        )
        decompress = stored.is_compressed and any(ts.is_little_endian for ts in plain)
        if stored not in accepted and not convertible and not decompress:
            names = ", ".join(sorted(ts.name for ts in accepted))
            return self._unsendable(row, f"stored as {stored.name}, accepted only {names}")
        try:
            ds = dcmread(self.store.path_of(str(row["path"])))
        except (OSError, InvalidDicomError, InvalidUID) as exc:
            return self._unsendable(row, f"stored file unreadable: {type(exc).__name__}")
        if stored in accepted or convertible:
            return ds
        try:
            ds.decompress()
        except Exception as exc:  # noqa: BLE001 - a codec failure fails this instance only
            return self._unsendable(row, f"cannot decompress {stored.name}: {exc}"[:200])
        logger.info(
            "instance decompressed for the peer",
            extra={"sop_instance_uid": uid, "transfer_syntax": stored.name},
        )
        return ds

    def _wait_for_reactor(self, timeout_s: float = 1.0) -> None:
        """Let the C-MOVE association's reactor resume after the previous C-STORE.

        pynetdicom (3.0) pauses a requested association's reactor thread for each
        ``send_c_store`` and lets it go once the response is in. When the next C-STORE
        starts before that thread has woken, it finds the reactor still marked paused,
        sends, and the waking reactor can take the response for itself ("Received
        unexpected C-STORE service message"): the C-STORE then waits out the DIMSE timeout
        and every later sub-operation fails. Busy machines hit it every few hundred
        instances; waiting for the reactor to wake first closes the window.
        """
        assoc = self.assoc
        deadline = time.monotonic() + timeout_s
        while (
            assoc is not None
            and assoc.is_established
            and assoc._is_paused
            and time.monotonic() < deadline
        ):
            time.sleep(0.0001)

    def _unsendable(self, row: Mapping[str, Any], reason: str) -> Dataset:
        """A dataset without SOP Class UID: pynetdicom's C-STORE refuses it, and counts a
        failed sub-operation with its SOP Instance UID in the Failed SOP Instance UID List."""
        uid = str(row["sop_instance_uid"])
        self.reasons[uid] = reason
        logger.warning("instance not sent", extra={"sop_instance_uid": uid, "reason": reason})
        stub = Dataset()
        stub.SOPInstanceUID = uid
        return stub

    # -- outcome -----------------------------------------------------------------------------

    def outcome(self) -> tuple[int, int, int]:
        """(completed, warning, failed) of the sub-operations attempted so far."""
        with self._lock:
            statuses = dict(self.statuses)
        completed = sum(1 for s in statuses.values() if s == 0x0000)
        warning = sum(1 for s in statuses.values() if s in _WARNINGS)
        return completed, warning, self.sent - completed - warning

    def studies(self) -> list[StudyRef]:
        """The studies whose instances the peer stored, with SOP class counts (audit)."""
        with self._lock:
            stored = {u for u, s in self.statuses.items() if s == 0x0000 or s in _WARNINGS}
        classes: dict[str, Counter[str]] = defaultdict(Counter)
        for row in self.rows:
            if str(row["sop_instance_uid"]) in stored:
                classes[str(row["study_uid"])][str(row["sop_class_uid"])] += 1
        if not classes:  # nothing arrived: still name what was asked for
            for row in self.rows:
                classes[str(row["study_uid"])]
        return [StudyRef(uid, dict(counts)) for uid, counts in classes.items()]
