"""The radiologist's pages served by radnode at ``/ui/``: the worklist and the review page.

Static HTML and JavaScript (no build step) over the HTTP API: ``/api/worklist``,
``/api/studies/{uid}/result``, ``/api/studies/{uid}/feedback``, ``/api/whoami`` and
WADO-RS ``/rendered`` for the driving slice. The pages hold no patient data; every
request for data carries the user's bearer token (typed once, kept in the tab's
sessionStorage), so the roles of :mod:`dicomweb.auth` apply unchanged.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"


def mount_ui(app: FastAPI) -> None:
    """Serve the pages at ``/ui/`` (``/ui`` redirects there)."""

    @app.get("/ui", include_in_schema=False)
    def ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    app.mount("/ui/", StaticFiles(directory=STATIC, html=True), name="ui")
