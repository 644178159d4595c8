"""The upload page's API (``/ui/upload``; roles admin, radiologist and modality).

* ``POST /api/upload/known``: which of these SOP Instance UIDs are stored already (a
  resumed upload skips them; the modality role may store but not query, so QIDO-RS is
  not open to it);
* ``POST /api/upload/zip``: a ``.zip`` of DICOM files (body ``application/zip``), read
  under the caps of :mod:`viewer_plugin.upload`; each file's outcome, non-DICOM files
  reported and skipped;
* ``POST /api/upload/image``: one JPEG or PNG (body ``image/jpeg`` or ``image/png``) and
  the form's fields as query parameters, stored as a DX For Presentation (modality DX)
  or Secondary Capture instance.

Files that are DICOM already go by STOW-RS (``/dicom-web/studies``) from the page. Every
stored study is queued for analysis and audited as STOW-RS stores are (110104, action C).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, Field
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from dicomweb.auditing import requester
from dicomweb.deps import NodeDep, require_store
from dicomweb.dicomjson import parse_media_type
from dicomweb.routes.stow import _spool, split_part10
from radnode_core.audit import StudyRef
from radnode_core.index import instances
from radnode_core.ingest import IngestError, IngestResult
from radnode_core.node import Node
from viewer_plugin.upload import (
    IMAGE_TYPES,
    ImageForm,
    Modality,
    ZipLimits,
    ZipRefused,
    encode,
    explain,
    image_to_instance,
    is_part10,
    zip_members,
)

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/upload", tags=["upload"], dependencies=[require_store])

MAX_KNOWN = 500


class KnownQuery(BaseModel):
    sop_instance_uids: list[Annotated[str, Field(max_length=64)]] = Field(max_length=MAX_KNOWN)


def _known(node: Node, uids: list[str]) -> list[str]:
    if not uids:
        return []
    with node.index.engine.connect() as conn:
        found = conn.execute(
            select(instances.c.sop_instance_uid).where(instances.c.sop_instance_uid.in_(uids))
        )
        return sorted(found.scalars())


@router.post("/known", summary="Which of these instances are stored already")
async def known(node: NodeDep, query: KnownQuery) -> dict[str, list[str]]:
    return {"known": await run_in_threadpool(_known, node, query.sop_instance_uids)}


def _outcome(name: str, result: IngestResult) -> dict[str, Any]:
    return {
        "name": name,
        "outcome": "already stored" if result.duplicate else "stored",
        "sop_instance_uid": result.sop_instance_uid,
        "study_uid": result.study_uid,
    }


def _refused(name: str, exc: IngestError) -> dict[str, Any]:
    return {
        "name": name,
        "outcome": "failed",
        "failure_reason": exc.status,
        "explanation": explain(exc.status),
    }


def _finish(
    node: Node, request: Request, stored: dict[str, Counter[str]], refused: int, via: str
) -> None:
    """Queue each touched study once, and audit the stores per study."""
    user, address = requester(request)
    for study_uid, classes in stored.items():
        if node.queue.enqueue_if_due(study_uid, "stow") is not None:
            node.metrics.studies_completed.labels(reason="stow").inc()
        node.audit.instances_stored(
            StudyRef(study_uid, dict(classes)),
            source_user=user,
            source_address=address,
            refused=refused,
            via=via,
        )
    if not stored and refused:
        node.audit.instances_failed(
            source_user=user, source_address=address, via=via, refused=refused
        )


def _ingest_zip(node: Node, request: Request, body: Any) -> dict[str, Any]:
    s = node.settings
    limits = ZipLimits(
        max_total_bytes=s.upload_max_zip_bytes,
        max_ratio=s.upload_max_zip_ratio,
        max_members=s.max_stow_parts,
        max_member_bytes=s.max_instance_bytes + 64 * 1024,
    )
    files: list[dict[str, Any]] = []
    stored: dict[str, Counter[str]] = defaultdict(Counter)
    refused = 0
    reasons: Counter[str] = Counter()
    try:
        for member in zip_members(body, limits):
            if member.data is None or not is_part10(member.data):
                files.append(
                    {
                        "name": member.name,
                        "outcome": "skipped",
                        "explanation": member.skipped or "not a DICOM file: skipped",
                    }
                )
                continue
            try:
                syntax, sop_class, sop_instance, dataset = split_part10(member.data)
                result = node.ingestor.ingest(
                    dataset,
                    syntax,
                    source="upload",
                    expected_sop_class_uid=sop_class,
                    expected_sop_instance_uid=sop_instance,
                    log_refused=False,
                )
            except IngestError as exc:
                refused += 1
                reasons[f"0x{exc.status:04X} {exc.reason}"] += 1
                files.append(_refused(member.name, exc))
                continue
            stored[result.study_uid][result.sop_class_uid] += 1
            files.append(_outcome(member.name, result))
    except ZipRefused as exc:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(exc)) from exc
    finally:
        _finish(node, request, stored, refused, "upload (zip)")
        if reasons:  # one line per zip, however many files were refused
            logger.info(
                "upload: zip members refused",
                extra={
                    "refused": refused,
                    "reasons": ", ".join(f"{r} x{n}" for r, n in reasons.most_common()),
                },
            )
    counts = Counter(f["outcome"] for f in files)
    return {"files": files, "counts": dict(counts)}


@router.post("/zip", summary="Upload a .zip of DICOM files")
async def upload_zip(request: Request, node: NodeDep) -> dict[str, Any]:
    media, _ = parse_media_type(request.headers.get("content-type", ""))
    if media not in ("application/zip", "application/x-zip-compressed"):
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "send application/zip")
    body = await _spool(request, node, node.settings.max_stow_bytes)
    try:
        return await run_in_threadpool(_ingest_zip, node, request, body)
    finally:
        body.unlink(missing_ok=True)


def _ingest_image(node: Node, request: Request, data: bytes, form: ImageForm) -> dict[str, Any]:
    try:
        instance = image_to_instance(data, form, manufacturer=node.settings.ae_title)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    stored: dict[str, Counter[str]] = defaultdict(Counter)
    try:
        result = node.ingestor.ingest(encode(instance), ExplicitVRLittleEndian, source="upload")
    except IngestError as exc:
        _finish(node, request, stored, 1, "upload (image)")
        return {"files": [_refused("image", exc)], "counts": {"failed": 1}}
    stored[result.study_uid][result.sop_class_uid] += 1
    _finish(node, request, stored, 0, "upload (image)")
    item = _outcome("image", result)
    item["series_uid"] = str(instance.SeriesInstanceUID)
    return {"files": [item], "counts": {item["outcome"]: 1}}


@router.post("/image", summary="Upload a JPEG or PNG as a Secondary Capture instance")
async def upload_image(
    request: Request,
    node: NodeDep,
    patient_id: Annotated[str, Query(max_length=64)] = "",
    patient_name: Annotated[str, Query(max_length=64)] = "",
    study_description: Annotated[str, Query(max_length=64)] = "",
    modality: Modality = "OT",
    study_uid: Annotated[str | None, Query(max_length=64)] = None,
    body_part: Annotated[str, Query(max_length=16)] = "",
) -> dict[str, Any]:
    media, _ = parse_media_type(request.headers.get("content-type", ""))
    if media not in IMAGE_TYPES:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "send image/jpeg or image/png")
    try:
        form = ImageForm(
            patient_id, patient_name, study_description, modality, study_uid, body_part.upper()
        )
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    body = await _spool(request, node, node.settings.max_instance_bytes)
    try:
        data = body.read_bytes()
    finally:
        body.unlink(missing_ok=True)
    return await run_in_threadpool(_ingest_image, node, request, data, form)
