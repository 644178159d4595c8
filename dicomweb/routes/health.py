"""Liveness/readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from dicomweb.deps import require_admin
from pacs_link.client import readiness

router = APIRouter()


@router.get("/livez")
def livez() -> dict[str, str]:
    """Alive: the process answers HTTP. No database call, so a database restart does not
    make an orchestrator kill every API pod (Kubernetes liveness probe)."""
    return {"status": "ok"}


@router.get("/healthz")
def healthz(request: Request) -> dict[str, object]:
    """Ready when the index answers; reports queue depth and index counts (PostgreSQL's
    row estimates there, so the probe stays fast at any index size)."""
    node = request.app.state.node
    with node.index.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    counts = node.index.counts(approximate=True)
    return {"status": "ok", "queue_depth": node.queue.depth(), "index": counts}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """Ready to do its whole job: the index answers and every PACS peer was reachable with
    the configured credentials at its last check (503 with each problem in words if not)."""

    node = request.app.state.node
    problems: list[str] = []
    try:
        with node.index.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        peers = readiness(node.index, node.settings.pacs_peers)
    except Exception as exc:  # noqa: BLE001 - readiness reports, never raises
        problems.append(f"index unavailable: {type(exc).__name__}")
        peers = {}
    problems += [f"{name}: {p['error']}" for name, p in peers.items() if not p.get("ok")]
    body = {"status": "ready" if not problems else "not ready", "problems": problems}
    return JSONResponse({**body, "pacs_peers": peers}, status_code=200 if not problems else 503)


@router.get("/metrics", dependencies=[require_admin])
def metrics(request: Request) -> Response:
    return Response(request.app.state.node.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
