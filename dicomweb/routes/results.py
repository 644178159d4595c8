"""AI results of the node's studies (``/api/...``): filled by the AI node issue."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api", tags=["results"])
