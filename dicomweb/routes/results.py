"""AI results of the node's studies (``/api/...``): one study's result, and the triage worklist.

Statuses: ``pending`` (queued or not yet complete), ``running``, ``done`` (with a
score in 0..1 and a label), ``out_of_scope`` (a model's body part rule excluded the
study, e.g. the region model found no chest, and an SR says so; or no active model is
for the study, with the reason), ``failed`` (with the error: input the node cannot
analyse, a model that failed or ran past its timeout, or a job parked after its last
attempt).

Every model the study is for has its own result (:mod:`ai_node.results`):
``GET /api/studies/{uid}/results`` lists them; ``GET /api/studies/{uid}/result`` answers
the lead one (the highest positive probability over the models, with ``model`` naming
it and every model's result under ``results``), and the worklist sorts by it and says
which models flagged each study (``flagged_by``).

``POST /api/results/requeue`` (admins) runs selected studies through the analysis again:
those whose newest result failed, or that a given model version scored
(:mod:`ai_node.requeue`); one new job per study, audited.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from ai_node.requeue import Selection, requeue
from ai_node.results import ResultStore
from dicomweb.auditing import requester
from dicomweb.deps import NodeDep, require_admin
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


@router.get("/studies/{study_uid}/results")
def study_results(study_uid: str, store: Results) -> dict[str, Any]:
    """Every model's result of the study's newest analysed version (``items``, the lead
    first) and the study's status; 404 for a study the node has never seen."""
    try:
        check_uid(study_uid, "Study Instance UID")
    except InvalidUID as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    results = store.study_results(study_uid)
    if results is None:
        raise HTTPException(status_code=404, detail="unknown study")
    return results


@router.get("/results")
def list_results(
    store: Results,
    status: Status | None = None,
    label: Annotated[str | None, Query(max_length=64)] = None,
    min_score: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=INT_MAX)] = 0,
    model: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """The triage worklist: each study's lead result (the highest positive probability over
    its models), highest score first (unscored last), with ``flagged_by`` and every model's
    result in a line; ``model``: only studies that model has a result for."""
    total, items = store.list(
        status=status, label=label, min_score=min_score, limit=limit, offset=offset, model=model
    )
    return {"total": total, "limit": limit, "offset": offset, "items": items}


class RequeueRequest(BaseModel):
    """Which studies to run again (at least a status or a model version)."""

    model_config = ConfigDict(extra="forbid")

    status: Status | None = None
    since: dt.datetime | dt.date | None = Field(
        None, description="Only results finished at or after this date or time (UTC if naive)."
    )
    model: Literal["finding", "region"] | None = None
    model_version: str | None = Field(None, max_length=64)
    dry_run: bool = Field(False, description="Only list the studies that would be requeued.")


@router.post("/results/requeue", dependencies=[require_admin])
def requeue_results(body: RequeueRequest, request: Request, node: NodeDep) -> dict[str, Any]:
    """One new analysis job per study whose newest result matches (ai_node.requeue)."""
    since = body.since
    if isinstance(since, dt.date) and not isinstance(since, dt.datetime):
        since = dt.datetime.combine(since, dt.time())
    try:
        selection = Selection(body.status, since, body.model, body.model_version)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    user, address = requester(request)
    outcome = requeue(
        node.index, node.queue, node.audit, selection, user, address, dry_run=body.dry_run
    )
    return {"selection": selection.describe(), "dry_run": body.dry_run, **outcome.as_dict()}
