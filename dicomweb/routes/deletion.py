"""Deleting studies and series (admin only), and the retention policy's numbers.

* ``DELETE /dicom-web/studies/{study}`` and ``.../series/{series}``: the DICOMweb
  deletion most archives offer (dcm4chee, Orthanc; PS3.18 defines no DELETE, so this
  follows their shape): 204 when deleted, 404 when there was nothing;
* ``DELETE /api/studies/{study}`` and ``.../series/{series}``: the same on the API;
* ``GET /api/retention``: space reclaimed and studies deleted per day, studies kept by
  reason, the disk in use and the policy (for the dashboard).

A deleted study loses its instances, its index rows and its results and feedback; a
series only its instances. Each deletion is journalled against crashes and audited
(110105 DICOM Study Deleted, or 110103 with action D for a series; PS3.15 A.5.3).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from starlette.concurrency import run_in_threadpool

from dicomweb.auditing import requester
from dicomweb.deps import NodeDep, checked_uid, require_admin

router = APIRouter(dependencies=[require_admin], tags=["deletion"])


async def _delete(request: Request, node: NodeDep, study: str, series: str | None) -> Response:
    study_uid = checked_uid(study, "Study Instance UID")
    series_uid = checked_uid(series, "Series Instance UID") if series is not None else None
    user, address = requester(request)
    done = await run_in_threadpool(
        lambda: node.retention.delete(study_uid, series_uid=series_uid, user=user, address=address)
    )
    if done is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such study or series")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/dicom-web/studies/{study}", summary="Delete a study", status_code=204)
async def delete_study(request: Request, node: NodeDep, study: str) -> Response:
    return await _delete(request, node, study, None)


@router.delete(
    "/dicom-web/studies/{study}/series/{series}", summary="Delete a series", status_code=204
)
async def delete_series(request: Request, node: NodeDep, study: str, series: str) -> Response:
    return await _delete(request, node, study, series)


@router.delete("/api/studies/{study}", summary="Delete a study", status_code=204)
async def api_delete_study(request: Request, node: NodeDep, study: str) -> Response:
    return await _delete(request, node, study, None)


@router.delete("/api/studies/{study}/series/{series}", summary="Delete a series", status_code=204)
async def api_delete_series(request: Request, node: NodeDep, study: str, series: str) -> Response:
    return await _delete(request, node, study, series)


@router.get("/api/retention", summary="Storage retention: reclaimed, kept, disk in use")
async def retention_summary(node: NodeDep, days: int = 30) -> dict[str, Any]:
    days = max(1, min(days, 366))
    return await run_in_threadpool(node.retention.summary, days * 86400.0)
