"""The PACS outbox (``/api/outbox``): what waits for delivery to a PACS, and why."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, BackgroundTasks, HTTPException, Query, Request
from pydantic import BaseModel, Field

from dicomweb.deps import require_store
from pacs_link.changes import ChangesFollower
from pacs_link.client import readiness
from pacs_link.outbox import Outbox
from radnode_core.uids import InvalidUID, check_uid

router = APIRouter(prefix="/api", tags=["pacs"])
notify_router = APIRouter(prefix="/api", tags=["pacs"], dependencies=[require_store])

State = Literal["pending", "delivered", "failed"]


@router.get("/outbox")
def list_outbox(
    request: Request,
    state: State | None = None,
    study_uid: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """Outbox rows, newest first, with counts per peer and state and each peer's status."""
    node = request.app.state.node
    if study_uid is not None:
        try:
            check_uid(study_uid, "Study Instance UID")
        except InvalidUID as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
    box = Outbox(node.index)
    counts: dict[str, dict[str, int]] = {}
    for (peer, row_state), count in box.counts().items():
        counts.setdefault(peer, {})[row_state] = count
    return {
        "counts": counts,
        "peers": readiness(node.index, node.settings.pacs_peers),
        "items": box.list(study_uid=study_uid, state=state, limit=limit),
    }


class StableStudy(BaseModel):
    orthanc_id: str = Field(pattern=r"^[0-9a-f-]{8,64}$")
    study_uid: str | None = Field(None, max_length=64)


@notify_router.post("/pacs/{peer}/stable-studies", status_code=202)
def stable_study(
    peer: str, body: StableStudy, request: Request, tasks: BackgroundTasks
) -> dict[str, Any]:
    """A PACS's plugin (viewer_plugin/orthanc_notify.py) says a study is stable: fetch what
    radnode lacks of it (:mod:`pacs_link.fetch`, several instances at a time) and queue it,
    after the response. A peer whose /changes feed radnode follows
    is left to the follower (one path per peer, so a study is never fetched twice at once)."""

    node = request.app.state.node
    found = [p for p in node.settings.pacs_peers if p.name == peer]
    if not found:
        raise HTTPException(status_code=404, detail=f"unknown PACS peer {peer}")
    if found[0].follow_changes:
        return {"accepted": False, "reason": "this peer's /changes feed is followed"}
    tasks.add_task(ChangesFollower(node, found[0]).handle_stable_study, body.orthanc_id)
    return {"accepted": True}
