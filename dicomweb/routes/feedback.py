"""Radiologist feedback (``/api/...``): confirm or relabel an AI result; the review worklist.

``POST /api/studies/{uid}/feedback`` is for the ``radiologist`` role only (401 without a
token, 403 for other roles; nothing is recorded then). What it records and how the edge
cases answer is :mod:`viewer_plugin.feedback`'s docstring and docs/viewer.md.
``GET /api/whoami`` tells the UI who is signed in and whether they may judge, ``GET /api/labels``
the labels it offers (:mod:`ai_node.labels`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from ai_node.labels import FINDING_LABELS, POSITIVE
from ai_node.registry import ModelRegistry, RegistryError
from dicomweb.auth import READ_ROLES, require_role
from dicomweb.deps import checked_uid
from dicomweb.identity import reviewer_of
from radnode_core.index import INT_MAX
from radnode_core.settings import Settings
from viewer_plugin.feedback import (
    BadLabel,
    FeedbackService,
    NoResult,
    StaleResult,
    UnknownStudy,
)
from viewer_plugin.ohif.mount import viewer_url

router = APIRouter(prefix="/api", tags=["feedback"])

FEEDBACK_ROLES = ("radiologist",)
require_radiologist = require_role(FEEDBACK_ROLES)
_read = require_role(READ_ROLES)


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["confirm", "relabel"]
    label: str | None = Field(
        None, max_length=64, description=f"relabel: {' / '.join(FINDING_LABELS)}"
    )
    comment: str | None = Field(None, max_length=1024)
    sr_sop_instance_uid: str | None = Field(
        None, max_length=64, description="The AI SR the radiologist saw (refused if stale)."
    )
    model: str | None = Field(
        None,
        max_length=64,
        description="The model whose result is judged (default: the study's lead result).",
    )


def feedback_service(request: Request) -> FeedbackService:
    return FeedbackService(request.app.state.node)


Service = Annotated[FeedbackService, Depends(feedback_service)]


@router.get("/whoami", dependencies=[Depends(_read)])
def whoami(request: Request) -> dict[str, Any]:
    """The signed-in user as the UI shows them, and whether they may confirm / relabel."""
    settings: Settings = request.app.state.node.settings
    reviewer = reviewer_of(request)
    may = not settings.auth_enabled or reviewer.role in FEEDBACK_ROLES
    return {
        "auth_enabled": settings.auth_enabled,
        "user": reviewer.user,
        "observer_name": reviewer.observer_name,
        "role": reviewer.role,
        "may_give_feedback": may,
        "ohif_url": viewer_url(settings),
    }


@router.get("/labels", dependencies=[Depends(_read)])
def labels(
    request: Request, model: Annotated[str | None, Query(max_length=64)] = None
) -> dict[str, Any]:
    """The labels a result can have (the AI's, and a relabel's choices) and the positive
    one, so the pages hold no vocabulary of their own: the shipped finding model's, or with
    ``model`` that model's (its active version's card: negative, positive)."""
    if model is None:
        return {"labels": list(FINDING_LABELS), "positive": POSITIVE}
    registry = ModelRegistry(request.app.state.node.settings.models_dir)
    try:
        card = registry.model_card(model, registry.active_version(model))
    except RegistryError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    if not card.reports:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model {model} reports no finding")
    negative, positive = card.label_vocabulary
    return {"labels": [negative, positive], "positive": positive, "model": model}


@router.get("/studies/{study_uid}/feedback", dependencies=[Depends(_read)])
def list_feedback(study_uid: str, service: Service) -> dict[str, Any]:
    """Every judgement of a study's results, newest first."""
    checked_uid(study_uid, "Study Instance UID")
    return {"items": service.for_study(study_uid)}


@router.post(
    "/studies/{study_uid}/feedback",
    dependencies=[Depends(require_radiologist)],
    status_code=status.HTTP_201_CREATED,
)
def give_feedback(
    study_uid: str, body: FeedbackIn, request: Request, response: Response, service: Service
) -> dict[str, Any]:
    """Confirm or relabel the study's newest AI result: 201 with the record (and the new
    SR's UID), 200 with the existing record for a repeated identical judgement."""
    checked_uid(study_uid, "Study Instance UID")
    if body.sr_sop_instance_uid is not None:
        checked_uid(body.sr_sop_instance_uid, "SR SOP Instance UID")
    try:
        record, created = service.record(
            study_uid,
            body.decision,
            reviewer_of(request),
            label=body.label,
            comment=body.comment,
            sr_sop_instance_uid=body.sr_sop_instance_uid,
            model=body.model,
        )
    except UnknownStudy as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except (NoResult, StaleResult) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except BadLabel as exc:
        raise HTTPException(422, str(exc)) from exc
    if not created:
        response.status_code = status.HTTP_200_OK
    return {"created": created, **record}


@router.get("/worklist", dependencies=[Depends(_read)])
def worklist(
    service: Service,
    reviewed: bool | None = None,
    label: Annotated[str | None, Query(max_length=64)] = None,
    status_: Annotated[
        Literal["pending", "running", "done", "out_of_scope", "failed"] | None,
        Query(alias="status"),
    ] = None,
    date_from: Annotated[str | None, Query(pattern=r"^\d{8}$")] = None,
    date_to: Annotated[str | None, Query(pattern=r"^\d{8}$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=INT_MAX)] = 0,
) -> dict[str, Any]:
    """The review worklist: studies with their AI status, score, label and newest judgement,
    highest score first; filters: reviewed, label, status, study date range (YYYYMMDD)."""
    total, items = service.worklist(
        reviewed=reviewed,
        label=label,
        status=status_,
        date_from=date_from,
        date_to=date_to,
        limit=limit,
        offset=offset,
    )
    return {"total": total, "limit": limit, "offset": offset, "items": items}
