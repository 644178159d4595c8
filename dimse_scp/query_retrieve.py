"""Event handlers of the Query/Retrieve SCP (PS3.4 Annex C): C-FIND, C-MOVE and C-GET.

Each handler is a generator pynetdicom drives, as in pynetdicom's qrscp app:
collaborators come in through the handler object, statuses go out as yields, and
nothing raises. A C-FIND yields one pending response per match as soon as it is
built (0xFF00, or 0xFF01 when a key with a value could not be used for matching) and
stops at a C-CANCEL (0xFE00). A C-MOVE or C-GET yields each instance to send and
stops at a C-CANCEL; pynetdicom counts the sub-operations and answers 0x0000, or
0xB000 with the Failed SOP Instance UID List. An unknown Move Destination is 0xA801.

pynetdicom only answers a C-MOVE or C-GET with a failure once the sub-operations have
begun (a C-MOVE's association to its destination is open by then), so a refused
Identifier is answered that way: one sub-operation announced, none sent, the Failure
status (0xA900 or 0xC000) with its Error Comment.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any, cast

from pydicom import Dataset
from pynetdicom import events
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from dimse_scp.identifier import (
    MODELS,
    UNABLE_TO_PROCESS,
    IdentifierError,
    InformationModel,
    Request,
    parse,
    response,
)
from dimse_scp.retrieve import SubOperations, propose
from radnode_core.audit import MINOR_FAILURE, SERIOUS_FAILURE, SUCCESS, AuditTrail
from radnode_core.index import Index, instances, series, studies
from radnode_core.query import build_patient_select, build_select, computed_values
from radnode_core.settings import MoveDestination
from radnode_core.store import InstanceStore

logger = logging.getLogger(__name__)

Yield = tuple[int | Dataset, Dataset | None]
CANCEL = 0xFE00
PENDING = 0xFF00
PENDING_WARNING = 0xFF01  # an optional key was not supported for matching (PS3.4 C.4.1.1.4)
CHUNK = 100  # matches whose computed attributes are read in one query


SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700


def _failure(status: int, comment: str) -> Dataset:
    return IdentifierError(status, comment).status_dataset()


def _model(event: events.Event) -> InformationModel:
    """The request's information model. Only Patient Root and Study Root are negotiated, but
    pynetdicom's unrestricted storage service accepts any SOP class it has no name for
    (Modality Worklist, Color Palette Query/Retrieve) as if it were a storage class."""
    request = cast(C_FIND | C_MOVE | C_GET, event.request)
    model = MODELS.get(str(request.AffectedSOPClassUID))
    if model is None:
        raise IdentifierError(SOP_CLASS_NOT_SUPPORTED, "SOP Class not supported")
    return model


class QueryRetrieveHandlers:
    """C-FIND, C-MOVE and C-GET over the index and the store.

    ``destinations`` are the Move Destinations radnode knows; ``tls_context`` makes the
    client context of a destination with ``tls`` (None: such a destination fails).
    """

    def __init__(
        self,
        index: Index,
        store: InstanceStore,
        ae_title: str,
        destinations: list[MoveDestination],
        audit: AuditTrail | None = None,
        tls_context: Callable[[], ssl.SSLContext] | None = None,
        poll_interval_s: float | None = None,
        max_find_results: int | None = None,
    ) -> None:
        self.index = index
        self.store = store
        self.ae_title = ae_title
        self.destinations = {d.ae_title.strip(): d for d in destinations}
        self.audit = audit
        self.tls_context = tls_context
        self.poll_interval_s = poll_interval_s
        self.max_find_results = max_find_results

    def evt_handlers(self) -> list[tuple[Any, Any]]:
        return [
            (events.EVT_C_FIND, self.on_c_find),
            (events.EVT_C_MOVE, self.on_c_move),
            (events.EVT_C_GET, self.on_c_get),
        ]

    # -- C-FIND --------------------------------------------------------------------------

    def on_c_find(self, event: events.Event) -> Iterator[Yield]:
        """PS3.4 C.4.1.3: one pending response per match, in the index's order."""
        started = time.perf_counter()
        calling, address = _requestor(event)
        try:
            request = parse(event.identifier, _model(event))
        except IdentifierError as exc:
            logger.warning(
                "C-FIND refused",
                extra={"calling_aet": calling, "status": f"0x{exc.status:04X}", "reason": str(exc)},
            )
            self._audit_find(event, calling, address, MINOR_FAILURE, str(exc))
            yield exc.status_dataset(), None
            return
        self._audit_find(event, calling, address, SUCCESS, None)
        try:
            rows = self._matches(request)
        except Exception:  # the index is unavailable: a status, not a dead association
            logger.exception("C-FIND: index query failed")
            yield _failure(UNABLE_TO_PROCESS, "index unavailable"), None
            return
        cap = self.max_find_results
        if cap is not None and len(rows) > cap:
            logger.warning(
                "C-FIND refused: too many matches",
                extra={"calling_aet": calling, "qr_level": request.level, "limit": cap},
            )
            yield _failure(OUT_OF_RESOURCES, f"more than {cap} matches; narrow the query"), None
            return
        status = PENDING_WARNING if request.unmatched else PENDING
        sent = 0
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            try:
                extra = self._computed(request, chunk)
            except Exception:
                logger.exception("C-FIND: index query failed")
                yield _failure(UNABLE_TO_PROCESS, "index unavailable"), None
                return
            for row in chunk:
                if event.is_cancelled:
                    logger.info("C-FIND cancelled", extra={"calling_aet": calling, "sent": sent})
                    yield CANCEL, None
                    return
                try:
                    header = partial(self._header, request, row)
                    identifier = response(request, row, extra, header, self.ae_title)
                except Exception:
                    logger.exception("C-FIND: response identifier could not be built")
                    yield _failure(UNABLE_TO_PROCESS, "internal error"), None
                    return
                sent += 1
                yield status, identifier
        logger.info(
            "C-FIND answered",
            extra={
                "calling_aet": calling,
                "qr_level": request.level,
                "matches": sent,
                "seconds": round(time.perf_counter() - started, 4),
            },
        )

    def _matches(self, request: Request) -> list[Mapping[Any, Any]]:
        """Every match, up to one more than ``max_find_results``, read in one statement (a
        short transaction: on SQLite a read holds the index's write lock, so the responses
        are not sent while it is open)."""
        sqlite = self.index.is_sqlite
        if request.level == "PATIENT":
            stmt = build_patient_select(request.query, sqlite)
        else:
            stmt = build_select(request.query, sqlite)
        if self.max_find_results is not None:
            stmt = stmt.limit(self.max_find_results + 1)
        with self.index.engine.connect() as conn:
            return [row._mapping for row in conn.execute(stmt)]

    def _computed(
        self, request: Request, rows: list[Mapping[Any, Any]]
    ) -> dict[str, dict[str, Any]]:
        if request.level == "PATIENT":
            return {}
        with self.index.engine.connect() as conn:
            return computed_values(conn, request.query.level, rows)

    def _header(self, request: Request, row: Mapping[Any, Any]) -> Dataset | None:
        """The header of the match's first instance (for keys the index does not hold)."""
        if request.level == "IMAGE":
            path = row[instances.c.path]
        else:
            stmt = select(instances.c.path)
            if request.level == "PATIENT":
                stmt = stmt.join(studies, instances.c.study_uid == studies.c.study_uid).where(
                    studies.c.patient_id == row["patient_id"]
                )
            elif request.level == "STUDY":
                stmt = stmt.where(instances.c.study_uid == row[studies.c.study_uid])
            else:
                stmt = stmt.where(instances.c.series_uid == row[series.c.series_uid])
            with self.index.engine.connect() as conn:
                path = conn.execute(stmt.limit(1)).scalar_one_or_none()
        if path is None:
            return None
        try:
            return self.store.open_dataset(str(path), stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - the keys are returned empty
            logger.warning("C-FIND: instance header unreadable", extra={"path": str(path)})
            return None

    def _audit_find(
        self,
        event: events.Event,
        calling: str,
        address: str,
        outcome: str,
        description: str | None,
    ) -> None:
        if self.audit is None:
            return
        request = cast(C_FIND, event.request)
        raw = request.Identifier.getvalue() if request.Identifier is not None else b""
        self.audit.dimse_query(
            user=calling,
            address=address,
            sop_class_uid=str(request.AffectedSOPClassUID),
            identifier=raw,
            transfer_syntax_uid=str(event.context.transfer_syntax),
            outcome=outcome,
            outcome_description=description,
        )

    # -- C-MOVE and C-GET ----------------------------------------------------------------

    def _instances(self, request: Request) -> list[Mapping[str, Any]]:
        stmt = build_select(request.query, self.index.is_sqlite)
        with self.index.engine.connect() as conn:
            return [
                {
                    "sop_instance_uid": row[instances.c.sop_instance_uid],
                    "sop_class_uid": row[instances.c.sop_class_uid],
                    "transfer_syntax_uid": row[instances.c.transfer_syntax_uid],
                    "study_uid": row[instances.c.study_uid],
                    "path": row[instances.c.path],
                }
                for row in (r._mapping for r in conn.execute(stmt))
            ]

    def on_c_move(self, event: events.Event) -> Iterator[Any]:
        """PS3.4 C.4.2.3: the matching instances to a configured Move Destination."""
        calling, address = _requestor(event)
        name = str(event.move_destination or "").strip()
        destination = self.destinations.get(name)
        if destination is None:
            logger.warning(
                "C-MOVE to an unknown destination", extra={"calling_aet": calling, "to": name}
            )
            yield None, None  # 0xA801 Move Destination unknown
            return
        kwargs: dict[str, Any] = {}
        if destination.tls:
            if self.tls_context is None:
                logger.error("C-MOVE destination needs TLS, no TLS client settings")
                yield None, None
                return
            kwargs["tls_args"] = (self.tls_context(), destination.host)
        try:
            request = parse(event.identifier, _model(event), retrieve=True)
            rows = self._instances(request)
        except IdentifierError as exc:
            logger.warning(
                "C-MOVE refused",
                extra={"calling_aet": calling, "status": f"0x{exc.status:04X}", "reason": str(exc)},
            )
            yield (
                destination.host,
                destination.port,
                {
                    **kwargs,
                    "contexts": [build_context(Verification)],
                },
            )
            yield 1
            yield exc.status_dataset(), None
            return
        operations = SubOperations(self.store, rows, None, self.poll_interval_s)
        kwargs.update(contexts=propose(rows) or [build_context(Verification)])
        kwargs.update(evt_handlers=operations.handlers())
        yield destination.host, destination.port, kwargs
        yield len(rows)
        yield from self._send(event, operations, calling, address, destination)

    def on_c_get(self, event: events.Event) -> Iterator[Any]:
        """PS3.4 C.4.3.3: the matching instances over the requestor's own association (it
        proposed the storage contexts with the SCP role, PS3.7 D.3.3.4)."""
        calling, address = _requestor(event)
        try:
            request = parse(event.identifier, _model(event), retrieve=True)
            rows = self._instances(request)
        except IdentifierError as exc:
            logger.warning(
                "C-GET refused",
                extra={"calling_aet": calling, "status": f"0x{exc.status:04X}", "reason": str(exc)},
            )
            yield 1
            yield exc.status_dataset(), None
            return
        operations = SubOperations(self.store, rows, event.assoc)
        event.assoc.bind(events.EVT_DIMSE_RECV, operations.on_dimse_recv)
        try:
            yield len(rows)
            yield from self._send(event, operations, calling, address, None)
        finally:
            event.assoc.unbind(events.EVT_DIMSE_RECV, operations.on_dimse_recv)

    def _send(
        self,
        event: events.Event,
        operations: SubOperations,
        calling: str,
        address: str,
        destination: MoveDestination | None,
    ) -> Iterator[Yield]:
        for row in operations.rows:
            if event.is_cancelled:
                self._audit_retrieve(operations, calling, address, destination, cancelled=True)
                yield CANCEL, None
                return
            yield PENDING, operations.dataset(row)
        self._audit_retrieve(operations, calling, address, destination, cancelled=False)

    def _audit_retrieve(
        self,
        operations: SubOperations,
        calling: str,
        address: str,
        destination: MoveDestination | None,
        cancelled: bool,
    ) -> None:
        completed, warning, failed = operations.outcome()
        remaining = len(operations.rows) - operations.sent
        logger.info(
            "C-MOVE done" if destination is not None else "C-GET done",
            extra={
                "calling_aet": calling,
                "to": destination.ae_title if destination is not None else calling,
                "completed": completed,
                "warning": warning,
                "failed": failed,
                "remaining": remaining,
                "cancelled": cancelled,
            },
        )
        if self.audit is None or not operations.rows:
            return
        if failed and not (completed or warning):
            outcome = SERIOUS_FAILURE
        elif failed or cancelled:
            outcome = MINOR_FAILURE
        else:
            outcome = SUCCESS
        via = "C-MOVE" if destination is not None else "C-GET"
        description = f"{via}: {completed + warning} sent, {failed} failed"
        if cancelled:
            description += f", cancelled with {remaining} remaining"
        self.audit.instances_retrieved(
            operations.studies(),
            user=calling,
            address=address,
            outcome=outcome,
            destination=destination.ae_title if destination is not None else None,
            destination_address=destination.host if destination is not None else None,
            outcome_description=description,
        )


def _requestor(event: events.Event) -> tuple[str, str]:
    requestor = event.assoc.requestor
    return str(requestor.ae_title).strip(), str(requestor.address)
