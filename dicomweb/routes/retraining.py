"""Retraining (``/api/retraining/...``) and the model registry (``/api/models``).

* ``GET /api/retraining/labels?model=NAME``: each judged study's final label of that
  model's result (default the finding model), with the model's active version and card,
  what the pipeline's export step reads (admin only: it lists study UIDs with labels for
  export);
* ``GET /api/retraining/runs`` and ``/runs/{run_id}``: runs with their status, each step's
  state, the test-split metrics, the promotion decision and its reason;
* ``GET /api/models``: every model version with its card (``model.yaml`` as data), whether
  it is active, its task, modalities, metrics and whether its code was trusted at import.

Runs and models are for admins and radiologists (docs/retraining.md).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi import Path as PathParam

from ai_node.registry import ModelRegistry, RegistryError
from ai_node.retrain.labels import RETRAINED_MODEL, final_labels
from ai_node.retrain.runs import RunStore
from dicomweb.auditing import requester
from dicomweb.auth import require_role
from dicomweb.deps import NodeDep
from radnode_core.index import INT_MAX

router = APIRouter(prefix="/api", tags=["retraining"])

_admin = require_role(("admin",))
_staff = require_role(("admin", "radiologist"))


@router.get("/retraining/labels", dependencies=[Depends(_admin)])
def labels(
    request: Request,
    node: NodeDep,
    model: Annotated[str, Query(max_length=64)] = RETRAINED_MODEL,
) -> dict[str, Any]:
    """The newest judgement (confirm / relabel) of ``model``'s result of each judged study:
    its final label (one of the labels of the model's active card), with the active
    version and its card (the export step decodes and trains by it).

    This is where studies are released for a training data set (the export step reads
    this list, then fetches each study by WADO-RS), so it is audited as an Export
    (PS3.15 A.5.3.6, 110106) naming every listed study.
    """
    registry = ModelRegistry(node.settings.models_dir)
    try:
        version = registry.active_version(model)
        card = registry.model_card(model, version)
    except RegistryError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    if not card.reports:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model {model} has no label of its own")
    vocabulary = card.label_vocabulary
    items = [label.as_dict() for label in final_labels(node.index, model, vocabulary)]
    user, _ = requester(request)
    node.audit.export(
        [item["study_uid"] for item in items], destination="retraining-export", user=user
    )
    return {
        "model": model,
        "version": version,
        "labels": list(vocabulary),
        "card": card.as_dict(),
        "total": len(items),
        "items": items,
    }


@router.get("/retraining/runs", dependencies=[Depends(_staff)])
def runs(
    node: NodeDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=INT_MAX)] = 0,
) -> dict[str, Any]:
    """Retraining runs, newest first."""
    return {"items": RunStore(node.index).list(limit, offset), "limit": limit, "offset": offset}


@router.get("/retraining/runs/{run_id}", dependencies=[Depends(_staff)])
def run(run_id: Annotated[str, PathParam(max_length=40)], node: NodeDep) -> dict[str, Any]:
    record = RunStore(node.index).get(run_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "unknown retraining run")
    return record


@router.get("/models", dependencies=[Depends(_staff)])
def models(node: NodeDep) -> dict[str, Any]:
    """Every model version with its card, metrics and promotion record; ``active`` marked."""
    registry = ModelRegistry(node.settings.models_dir)
    return {"registry": str(registry.root), "items": registry.describe()}
