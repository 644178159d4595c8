"""Event handlers of the Storage SCP: each returns a DIMSE status and never raises.

Collaborators come in through the handler object (bound in ``evt_handlers``),
as in pynetdicom's own apps. Inference never runs here: a C-STORE stores,
indexes and acknowledges; the completion tracker queues the study's job.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, cast

from pydicom import Dataset
from pynetdicom import events
from pynetdicom.dimse_primitives import C_STORE

from dimse_scp.access import (
    REJECT_CALLED_AET,
    REJECT_LOCAL_LIMIT,
    REJECT_MALFORMED,
    AccessPolicy,
    malformed_contexts,
)
from dimse_scp.completion import CompletionTracker
from dimse_scp.upper_layer import Spool, SpoolingDIMSE
from radnode_core.audit import AuditTrail, StudyRef
from radnode_core.ingest import OUT_OF_RESOURCES, IngestError, Ingestor
from radnode_core.metrics import Metrics

logger = logging.getLogger(__name__)


def _status(status: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = status
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


@dataclass
class _Transfer:
    """What one association stored, for its audit messages (one per study, at its end)."""

    calling_aet: str
    address: str
    assoc: threading.Thread | None = None  # counts while its thread runs
    studies: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    refused: int = 0

    def active(self) -> bool:
        return self.assoc is None or self.assoc.is_alive()


class StorageHandlers:
    def __init__(
        self,
        ingestor: Ingestor,
        completion: CompletionTracker,
        access: AccessPolicy,
        metrics: Metrics,
        poll_interval_s: float = 0.001,
        audit: AuditTrail | None = None,
        max_associations_per_aet: int | None = None,
        max_associations: int | None = None,
    ) -> None:
        self.poll_interval_s = poll_interval_s
        self.ingestor = ingestor
        self.completion = completion
        self.access = access
        self.metrics = metrics
        self.audit = audit
        self.max_associations_per_aet = max_associations_per_aet
        self.max_associations = max_associations
        self._lock = threading.Lock()
        self._transfers: dict[int, _Transfer] = {}  # id(association) -> what it stored

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
        # pynetdicom's own DUL thread sleeps this long whenever a loop found no PDU
        # (default 1 ms). The SCP's upper layer (dimse_scp.upper_layer.BoundedDUL) waits on
        # the socket instead and ignores it; this serves associations made without it.
        # Only once the association is accepted: a connection that sends nothing would
        # otherwise spin at this rate until the ARTIM timer ends it.
        event.assoc.dul._run_loop_delay = self.poll_interval_s

    def on_conn_open(self, event: events.Event) -> None:
        sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
        if sock is not None:
            # Small PDUs (C-STORE-RSP) go out at once, not after a delayed ACK (Nagle).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_requested(self, event: events.Event) -> None:
        """A-ASSOCIATE-RQ received: apply the AE allow-list, refuse presentation contexts that
        cannot be negotiated, then the per-AE and the total association limit.

        Only associations admitted here count towards the limits: a connection still
        sending its request (:mod:`dimse_scp.negotiation`) takes no one's place."""
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        assert primitive is not None  # EVT_REQUESTED fires once the A-ASSOCIATE-RQ is in
        calling = str(primitive.calling_ae_title).strip()
        called = str(primitive.called_ae_title).strip()
        peer = assoc.requestor.address
        rejection = self.access.check(calling, called, peer)
        if rejection is None and malformed_contexts(primitive.presentation_context_definition_list):
            rejection, reason = REJECT_MALFORMED, "malformed_request"
        elif rejection is None:
            rejection, reason = self._admit(assoc, calling, peer)
            if rejection is None:
                return
        else:
            reason = "called_aet" if rejection == REJECT_CALLED_AET else "calling_aet"
            if self.audit is not None:
                self.audit.login_failed(
                    user=calling, address=peer, reason=f"association rejected: {reason}"
                )
        self.metrics.associations_rejected.labels(reason=reason).inc()
        logger.warning(
            "association rejected",
            extra={"reason": reason, "calling_aet": calling, "called_aet": called, "peer": peer},
        )
        assoc.acse.send_reject(*rejection)
        assoc.kill()  # waits until the DUL has sent the A-ASSOCIATE-RJ

    def _admit(
        self, assoc: threading.Thread, calling: str, peer: str
    ) -> tuple[tuple[int, ...] | None, str]:
        """Count the association (in all and against its calling AE); the A-ASSOCIATE-RJ of
        the limit it is over, if any, and the limit's name."""
        with self._lock:
            ended = [k for k, t in self._transfers.items() if not t.active()]
            active = [t for t in self._transfers.values() if t.active()]
            rejection: tuple[tuple[int, ...] | None, str] = (None, "")
            if self.max_associations is not None and len(active) >= self.max_associations:
                rejection = (REJECT_LOCAL_LIMIT, "max_associations")
            elif self.max_associations_per_aet is not None and (
                sum(1 for t in active if t.calling_aet == calling) >= self.max_associations_per_aet
            ):
                rejection = (REJECT_LOCAL_LIMIT, "per_aet_limit")
            else:
                self._transfers[id(assoc)] = _Transfer(calling, peer, assoc)
        for association_id in ended:  # its end event never came: audit what it stored now
            self._finish(association_id)
        return rejection

    def tls_refused(self, peer: str, reason: str) -> None:
        """A TLS handshake failed (no or untrusted client certificate, TLS < 1.2, ...)."""
        self.metrics.associations_rejected.labels(reason="tls").inc()
        if self.audit is not None:
            self.audit.node_authentication_failed(address=peer, reason=f"TLS: {reason}")

    def on_c_echo(self, event: events.Event) -> int:
        return 0x0000

    def on_c_store(self, event: events.Event) -> int | Dataset:
        """PS3.4 B.2.2: store the instance, answer only once it is durable and indexed."""
        spool: Spool | None = None
        try:
            request = cast(C_STORE, event.request)
            context = event.context
            calling_aet = str(event.assoc.requestor.ae_title).strip()
            sop_instance_uid = str(request.AffectedSOPInstanceUID or "") or None
            spooled = request._dataset_path
            if spooled is None:  # not spooled (an association without SpoolingDIMSE)
                raw = request.DataSet.getbuffer() if request.DataSet is not None else b""
                result = self.ingestor.ingest(
                    raw,
                    context.transfer_syntax,
                    source="dimse",
                    expected_sop_class_uid=context.abstract_syntax,
                    expected_sop_instance_uid=sop_instance_uid,
                    calling_aet=calling_aet,
                )
            else:
                spool = self._claim(event, spooled, calling_aet)
                result = self.ingestor.ingest_file(
                    spool.path,
                    spool.data_offset,
                    context.transfer_syntax,
                    source="dimse",
                    expected_sop_class_uid=context.abstract_syntax,
                    expected_sop_instance_uid=sop_instance_uid,
                    calling_aet=calling_aet,
                    synced=spool.wait_synced,
                    written=(spool.head, spool.data_offset + spool.size),
                )
        except IngestError as exc:
            self._count_refused(id(event.assoc))
            return _status(exc.status, exc.comment)
        except Exception:  # never let the association die on our bug
            logger.exception("unexpected error in C-STORE handler")
            self._count_refused(id(event.assoc))
            return _status(OUT_OF_RESOURCES, "internal error")
        finally:
            if spool is not None:
                spool.discard()  # refused, or a duplicate (a stored one was renamed away)
        self.completion.instance_stored(id(event.assoc), result.study_uid)
        transfer = self._transfers.get(id(event.assoc))
        if transfer is not None:
            transfer.studies[result.study_uid][result.sop_class_uid] += 1
        return result.status

    def _claim(self, event: events.Event, path: object, calling_aet: str) -> Spool:
        """The spooled dataset of this C-STORE, or the refusal made while it arrived."""
        dimse = event.assoc.dimse
        spool = dimse.claim(str(path)) if isinstance(dimse, SpoolingDIMSE) else None
        refusal: IngestError | None = None
        if spool is None:
            refusal = IngestError(OUT_OF_RESOURCES, "write_failed", "spooled dataset gone")
        elif spool.too_large:
            refusal = self.ingestor.too_large()
        elif spool.error is not None:
            error = spool.error
            logger.error("cannot spool a C-STORE dataset", extra={"errno": error.errno})
            refusal = IngestError(
                OUT_OF_RESOURCES, "write_failed", f"out of resources: {error.strerror or error}"
            )
        if refusal is None:
            assert spool is not None
            return spool
        if spool is not None:
            spool.discard()
        self.ingestor.refused(refusal, "dimse", calling_aet)
        raise refusal

    def pdu_refused(self, peer: str, pdu_type: int, length: int) -> None:
        """A PDU longer than allowed (:mod:`dimse_scp.upper_layer`): its association is
        aborted before the PDU is read."""
        self.metrics.associations_rejected.labels(reason="pdu_too_long").inc()

    def _count_refused(self, association_id: int) -> None:
        transfer = self._transfers.get(association_id)
        if transfer is not None:
            transfer.refused += 1

    def _finish(self, association_id: int) -> None:
        """The association is over: forget it and audit what it stored (PS3.15 A.5.3.4)."""
        with self._lock:
            transfer = self._transfers.pop(association_id, None)
        if transfer is None or self.audit is None:
            return
        if transfer.refused and not transfer.studies:
            self.audit.instances_failed(
                source_user=transfer.calling_aet,
                source_address=transfer.address,
                refused=transfer.refused,
            )
        for study_uid, classes in transfer.studies.items():
            self.audit.instances_stored(
                StudyRef(study_uid, dict(classes)),
                source_user=transfer.calling_aet,
                source_address=transfer.address,
                refused=transfer.refused,
            )

    def on_released(self, event: events.Event) -> None:
        try:
            self.completion.association_released(id(event.assoc))
        except Exception:
            # The studies stay due; the quiet-period sweeper queues them.
            logger.exception("could not queue completed studies at release")
        self._finish(id(event.assoc))

    def on_ended(self, event: events.Event) -> None:
        # The connection may close (DUL thread) before EVT_RELEASED runs (reactor thread).
        if event.assoc.is_released:
            self.on_released(event)
        else:
            self.completion.association_ended(id(event.assoc))
            self._finish(id(event.assoc))
