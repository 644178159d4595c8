"""STOW-RS: store instances (PS3.18 10.5).

The body is spooled to a temp file in the store's temp folder (never held in
memory; ``max_stow_bytes`` is enforced while reading: 413), then each part, a
Part 10 file, goes through :meth:`radnode_core.ingest.Ingestor.ingest` with its
dataset bytes as received: the same validation, durability and PS3.4 statuses
as C-STORE, reported as FailureReason (PS3.18 10.5.3.1). The request is one
completed batch: each touched study is queued for analysis once, after the
last part.

HTTP status (PS3.18 10.5.3): 200 all stored, 202 some failed, 409 all failed,
400 malformed multipart, 413 too large or more than ``max_stow_parts`` parts, 415 not
``multipart/related; type="application/dicom"``, 503 (with Retry-After) when the body
cannot even be spooled (disk full). The parts are counted before any is stored, so a
request over the part limit stores nothing; they are then read one at a time, and the
refused ones are logged as one line per request with a count per reason.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from io import BytesIO
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import JSONResponse
from pydicom.filereader import _read_file_meta_info
from starlette.concurrency import run_in_threadpool

from dicomweb.auditing import requester
from dicomweb.deps import NodeDep, checked_uid, dicomweb_base, require_store
from dicomweb.dicomjson import DICOM_JSON, element, parse_media_type
from dicomweb.multipart import MultipartError, iter_parts
from radnode_core.audit import SERIOUS_FAILURE, StudyRef
from radnode_core.ingest import CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH_SOP_CLASS, IngestError
from radnode_core.node import Node

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/dicom-web", tags=["STOW-RS"], dependencies=[require_store])

_PART10_MAGIC_AT = 128


def split_part10(part: bytes) -> tuple[str, str | None, str | None, bytes]:
    """(transfer syntax, SOP class, SOP instance, dataset bytes) of a Part 10 file (PS3.10 7.1).

    The dataset bytes are returned exactly as they follow the File Meta Information.
    """
    if len(part) >= 144 and part[_PART10_MAGIC_AT:132] == b"DICM":
        meta_at = 132
    elif part[:2] == b"\x02\x00":  # some clients omit preamble and prefix: accept it
        meta_at = 0
    else:
        raise IngestError(CANNOT_UNDERSTAND, "not_part10", "part is not a DICOM Part 10 file")
    f = BytesIO(part)
    f.seek(meta_at)
    try:
        meta = _read_file_meta_info(f)
        syntax = str(meta.TransferSyntaxUID)
        sop_class = meta.get("MediaStorageSOPClassUID")
        sop_instance = meta.get("MediaStorageSOPInstanceUID")
    except Exception as exc:  # noqa: BLE001 - any broken meta group is "cannot understand"
        raise IngestError(
            CANNOT_UNDERSTAND, "bad_meta", "unreadable File Meta Information"
        ) from exc
    return (
        syntax,
        str(sop_class) if sop_class else None,
        str(sop_instance) if sop_instance else None,
        part[f.tell() :],
    )


async def _chunks(request: Request, idle_timeout_s: float) -> AsyncIterator[bytes]:
    """The request body's chunks; 408 when the client sends nothing for ``idle_timeout_s``."""
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), idle_timeout_s)
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            raise HTTPException(
                status.HTTP_408_REQUEST_TIMEOUT,
                f"no request body data for {idle_timeout_s:g} s (http_request_timeout_s)",
            ) from exc
        yield chunk


async def _spool(request: Request, node: Node, limit: int) -> Path:
    """Write the request body to a temp file; 413 beyond ``limit`` bytes, 408 when stalled."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"request body over {limit} bytes"
        )
    path = node.store.tmp_dir / f"stow.{uuid.uuid4().hex}.body"
    size = 0
    try:
        with path.open("wb") as f:
            async for chunk in _chunks(request, node.settings.http_request_timeout_s):
                size += len(chunk)
                if size > limit:
                    raise HTTPException(
                        status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"request body over {limit} bytes"
                    )
                f.write(chunk)
    except OSError as exc:  # disk full: no part can be stored, so none is examined
        path.unlink(missing_ok=True)
        logger.error("cannot spool STOW-RS request", extra={"errno": exc.errno})
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"out of resources: cannot spool the request ({exc.strerror or exc})",
            headers={"Retry-After": "60"},
        ) from exc
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _store_parts(
    node: Node,
    body: Path,
    boundary: str,
    base: str,
    study_uid: str | None,
    who: tuple[str, str | None] = ("unknown", None),
) -> tuple[int, dict[str, Any], list[str]]:
    """Ingest every part; returns (HTTP status, response dataset as DICOM JSON, warnings)."""
    stored_classes: dict[str, Counter[str]] = defaultdict(Counter)
    try:
        code, answer, notes = _ingest_parts(node, body, boundary, base, study_uid, stored_classes)
    except HTTPException:
        _audit(node, who, stored_classes, refused=1)
        raise
    refused = len(answer.get("00081198", {}).get("Value", []))
    _audit(node, who, stored_classes, refused)
    return code, answer, notes


def _audit(
    node: Node, who: tuple[str, str | None], stored: dict[str, Counter[str]], refused: int
) -> None:
    """110104 DICOM Instances Transferred (create): one message per request and study."""
    user, address = who
    for uid, classes in stored.items():
        node.audit.instances_stored(
            StudyRef(uid, dict(classes)),
            source_user=user,
            source_address=address,
            refused=refused,
            via="STOW-RS",
        )
    if not stored:  # nothing stored: the failed request is audited without a study
        node.audit.instances_failed(
            source_user=user,
            source_address=address,
            outcome=SERIOUS_FAILURE,
            via="STOW-RS",
            refused=refused,
        )


def _count_parts(body: mmap.mmap, boundary: str, limit: int) -> None:
    """400 for a malformed body, 413 for more than ``limit`` parts; nothing is kept."""
    count = 0
    try:
        for _ in iter_parts(body, boundary):
            count += 1
            if count > limit:
                raise HTTPException(
                    status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                    f"more than {limit} parts in one request (max_stow_parts)",
                )
    except MultipartError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    if not count:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "no parts in the request")


def _ingest_parts(
    node: Node,
    body: Path,
    boundary: str,
    base: str,
    study_uid: str | None,
    stored_classes: dict[str, Counter[str]],
) -> tuple[int, dict[str, Any], list[str]]:
    stored: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    refusals: Counter[tuple[int, str]] = Counter()
    touched: list[str] = []
    with body.open("rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "empty request body")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            _count_parts(mm, boundary, node.settings.max_stow_parts)
            for part in iter_parts(mm, boundary):
                media, _ = parse_media_type(part.content_type or "application/dicom")
                sop_class = sop_instance = None
                try:
                    if media != "application/dicom":
                        raise IngestError(
                            CANNOT_UNDERSTAND, "media_type", f"part type {media} not supported"
                        )
                    syntax, sop_class, sop_instance, dataset = split_part10(
                        mm[part.start : part.end]
                    )
                    if study_uid is not None:
                        # PS3.18 10.5.2: instances of another study are refused, unstored.
                        fields = node.ingestor.validate(dataset, syntax)
                        if fields["study_uid"] != study_uid:
                            raise IngestError(
                                DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                "study_mismatch",
                                "Study Instance UID differs from the request's",
                            )
                    result = node.ingestor.ingest(
                        dataset,
                        syntax,
                        source="stow",
                        expected_sop_class_uid=sop_class,
                        expected_sop_instance_uid=sop_instance,
                        log_refused=False,
                    )
                except IngestError as exc:
                    failed.append(_failed_item(sop_class, sop_instance, exc))
                    refusals[exc.status, exc.reason] += 1
                    continue
                stored_classes[result.study_uid][result.sop_class_uid] += 1
                if result.study_uid not in touched:
                    touched.append(result.study_uid)
                stored.append(_stored_item(node, result, base))
    for uid in touched:
        if node.queue.enqueue_if_due(uid, "stow") is not None:
            node.metrics.studies_completed.labels(reason="stow").inc()
    if refusals:
        # One line per request, however many parts: a request of many tiny bad parts
        # must not become as many log lines.
        logger.info(
            "STOW-RS parts refused",
            extra={
                "refused": sum(refusals.values()),
                "stored": len(stored),
                "reasons": ", ".join(
                    f"0x{code:04X} {reason} x{n}" for (code, reason), n in refusals.most_common()
                ),
            },
        )
    answer: dict[str, Any] = {}
    if study_uid is not None:
        answer.update([element("RetrieveURL", f"{base}/studies/{study_uid}", "UR")])
    if failed:
        answer["00081198"] = {"vr": "SQ", "Value": failed}
    if stored:
        answer["00081199"] = {"vr": "SQ", "Value": stored}
    code = (
        status.HTTP_200_OK
        if not failed
        else (status.HTTP_202_ACCEPTED if stored else status.HTTP_409_CONFLICT)
    )
    notes = []
    conflicts = sum(n for (_, reason), n in refusals.items() if reason == "uid_conflict")
    if conflicts:  # PS3.18 10.5.3.1: say why, beside the FailureReason 0xA900
        notes.append(
            f"{conflicts} instance(s) refused: the SOP Instance UID is already stored in "
            "another study or series"
        )
    return code, answer, notes


def _stored_item(node: Node, result: Any, base: str) -> dict[str, Any]:
    """A ReferencedSOPSequence item; its RetrieveURL names the instance as indexed."""
    row = node.index.find_instance(result.sop_instance_uid)
    url = f"{base}/studies/{result.study_uid}"
    if row is not None:
        url = (
            f"{base}/studies/{row['study_uid']}/series/{row['series_uid']}"
            f"/instances/{row['sop_instance_uid']}"
        )
    return dict(
        [
            element("ReferencedSOPClassUID", result.sop_class_uid, "UI"),
            element("ReferencedSOPInstanceUID", result.sop_instance_uid, "UI"),
            element("RetrieveURL", url, "UR"),
        ]
    )


def _failed_item(
    sop_class: str | None, sop_instance: str | None, exc: IngestError
) -> dict[str, Any]:
    # Why, for people: Error Comment text is not part of the item, so a private free-text
    # note would be non-standard; the reasons go to the server log, one line per request.
    return dict(
        [
            element("ReferencedSOPClassUID", sop_class, "UI"),
            element("ReferencedSOPInstanceUID", sop_instance, "UI"),
            element("FailureReason", exc.status, "US"),
        ]
    )


async def _stow(request: Request, node: Node, study_uid: str | None) -> JSONResponse:
    media, params = parse_media_type(request.headers.get("content-type", ""))
    part_type = params.get("type", "application/dicom").lower()
    if media != "multipart/related" or part_type != "application/dicom":
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            'STOW-RS takes multipart/related; type="application/dicom"',
        )
    boundary = params.get("boundary")
    if not boundary:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "multipart boundary missing")
    body = await _spool(request, node, node.settings.max_stow_bytes)
    base = dicomweb_base(request)
    who = requester(request)
    try:
        code, answer, notes = await run_in_threadpool(
            _store_parts, node, body, boundary, base, study_uid, who
        )
    finally:
        body.unlink(missing_ok=True)
    if code == status.HTTP_202_ACCEPTED:  # PS3.18 10.5.3.1
        notes.insert(0, "some instances were not stored: see FailedSOPSequence")
    headers = {"Warning": ", ".join(f'299 radnode "{n}"' for n in notes)} if notes else {}
    return JSONResponse(answer, status_code=code, media_type=DICOM_JSON, headers=headers)


@router.post("/studies", summary="Store instances")
async def store_instances(request: Request, node: NodeDep) -> JSONResponse:
    return await _stow(request, node, None)


@router.post("/studies/{study}", summary="Store instances of one study")
async def store_study_instances(request: Request, node: NodeDep, study: str) -> JSONResponse:
    return await _stow(request, node, checked_uid(study, "Study Instance UID"))
