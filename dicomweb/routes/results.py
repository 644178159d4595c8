"""AI results of the node's studies (``/api/...``): one study's result, and the triage worklist.

Statuses: ``pending`` (queued or not yet complete), ``running``, ``done`` (with a
score in 0..1 and a label), ``out_of_scope`` (the region model found no chest; an
SR says so), ``failed`` (with the error: input the node cannot analyse, or a job
parked after its last attempt).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from ai_node.results import ResultStore
from radnode_core.index import INT_MAX
from radnode_core.uids import InvalidUID, check_uid

router = APIRouter(prefix="/api", tags=["results"])

Status = Literal["pending", "running", "done", "out_of_scope", "failed"]


def result_store(request: Request) -> ResultStore:
    return ResultStore(request.app.state.node.index)


Results = Annotated[ResultStore, Depends(result_store)]


@router.get("/studies/{study_uid}/result")
def study_result(study_uid: str, store: Results) -> dict[str, Any]:
    """The newest AI result of a study; 404 for a study the node has never seen."""
    try:
        check_uid(study_uid, "Study Instance UID")
    except InvalidUID as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    result = store.study_result(study_uid)
    if result is None:
        raise HTTPException(status_code=404, detail="unknown study")
    return result


@router.get("/results")
def list_results(
    store: Results,
    status: Status | None = None,
    label: Annotated[str | None, Query(max_length=64)] = None,
    min_score: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=INT_MAX)] = 0,
) -> dict[str, Any]:
    """The triage worklist: each study's newest result, highest score first (unscored last)."""
    total, items = store.list(
        status=status, label=label, min_score=min_score, limit=limit, offset=offset
    )
    return {"total": total, "limit": limit, "offset": offset, "items": items}
