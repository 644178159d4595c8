"""Liveness/readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from dicomweb.deps import require_admin

router = APIRouter()


@router.get("/healthz")
def healthz(request: Request) -> dict[str, object]:
    """Ready when the index answers; reports queue depth and index counts."""
    node = request.app.state.node
    with node.index.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return {"status": "ok", "queue_depth": node.queue.depth(), "index": node.index.counts()}


@router.get("/metrics", dependencies=[require_admin])
def metrics(request: Request) -> Response:
    return Response(request.app.state.node.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
