"""Event handlers of the Storage SCP: each returns a DIMSE status and never raises.

Collaborators come in through the handler object (bound in ``evt_handlers``),
as in pynetdicom's own apps. Inference never runs here: a C-STORE stores,
indexes and acknowledges; the completion tracker queues the study's job.
"""

from __future__ import annotations

import logging
import socket
from typing import Any, cast

from pydicom import Dataset
from pynetdicom import events
from pynetdicom.dimse_primitives import C_STORE

from dimse_scp.access import REJECT_CALLED_AET, AccessPolicy
from dimse_scp.completion import CompletionTracker
from radnode.ingest import OUT_OF_RESOURCES, IngestError, Ingestor
from radnode.metrics import Metrics

logger = logging.getLogger(__name__)


def _status(status: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = status
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


class StorageHandlers:
    def __init__(
        self,
        ingestor: Ingestor,
        completion: CompletionTracker,
        access: AccessPolicy,
        metrics: Metrics,
        poll_interval_s: float = 0.001,
    ) -> None:
        self.poll_interval_s = poll_interval_s
        self.ingestor = ingestor
        self.completion = completion
        self.access = access
        self.metrics = metrics

    def evt_handlers(self) -> list[tuple[Any, Any]]:
        return [
            (events.EVT_CONN_OPEN, self.on_conn_open),
            (events.EVT_REQUESTED, self.on_requested),
            (events.EVT_ACCEPTED, self.on_accepted),
            (events.EVT_C_ECHO, self.on_c_echo),
            (events.EVT_C_STORE, self.on_c_store),
            (events.EVT_RELEASED, self.on_released),
            (events.EVT_ABORTED, self.on_ended),
            (events.EVT_CONN_CLOSE, self.on_ended),
        ]

    def on_accepted(self, event: events.Event) -> None:
        # pynetdicom's DUL thread sleeps this long whenever a loop found no PDU (default
        # 1 ms); each C-STORE waits on it once, so a shorter poll is most of a 300-slice
        # study's protocol overhead. (A documented knob of the DUL, not a public setting.)
        # Only once the association is accepted: a connection that sends nothing would
        # otherwise spin at this rate until the ARTIM timer ends it.
        event.assoc.dul._run_loop_delay = self.poll_interval_s

    def on_conn_open(self, event: events.Event) -> None:
        sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
        if sock is not None:
            # Small PDUs (C-STORE-RSP) go out at once, not after a delayed ACK (Nagle).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_requested(self, event: events.Event) -> None:
        """A-ASSOCIATE-RQ received: apply the AE allow-list before negotiation."""
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        assert primitive is not None  # EVT_REQUESTED fires once the A-ASSOCIATE-RQ is in
        calling = str(primitive.calling_ae_title).strip()
        called = str(primitive.called_ae_title).strip()
        rejection = self.access.check(calling, called, assoc.requestor.address)
        if rejection is None:
            return
        reason = "called_aet" if rejection == REJECT_CALLED_AET else "calling_aet"
        self.metrics.associations_rejected.labels(reason=reason).inc()
        logger.warning(
            "association rejected",
            extra={
                "reason": reason,
                "calling_aet": calling,
                "called_aet": called,
                "peer": assoc.requestor.address,
            },
        )
        assoc.acse.send_reject(*rejection)
        assoc.kill()  # waits until the DUL has sent the A-ASSOCIATE-RJ

    def on_c_echo(self, event: events.Event) -> int:
        return 0x0000

    def on_c_store(self, event: events.Event) -> int | Dataset:
        """PS3.4 B.2.2: store the instance, answer only once it is durable and indexed."""
        try:
            request = cast(C_STORE, event.request)
            context = event.context
            raw = request.DataSet.getbuffer() if request.DataSet is not None else memoryview(b"")
            result = self.ingestor.ingest(
                raw,
                context.transfer_syntax,
                source="dimse",
                expected_sop_class_uid=context.abstract_syntax,
                expected_sop_instance_uid=str(request.AffectedSOPInstanceUID or "") or None,
                calling_aet=str(event.assoc.requestor.ae_title).strip(),
            )
        except IngestError as exc:
            return _status(exc.status, exc.comment)
        except Exception:  # never let the association die on our bug
            logger.exception("unexpected error in C-STORE handler")
            return _status(OUT_OF_RESOURCES, "internal error")
        self.completion.instance_stored(id(event.assoc), result.study_uid)
        return result.status

    def on_released(self, event: events.Event) -> None:
        try:
            self.completion.association_released(id(event.assoc))
        except Exception:
            # The studies stay due; the quiet-period sweeper queues them.
            logger.exception("could not queue completed studies at release")

    def on_ended(self, event: events.Event) -> None:
        # The connection may close (DUL thread) before EVT_RELEASED runs (reactor thread).
        if event.assoc.is_released:
            self.on_released(event)
        else:
            self.completion.association_ended(id(event.assoc))
