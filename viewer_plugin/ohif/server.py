"""The OHIF origin: static ``dist/`` with single-page fallback, ``app-config.js``, and a
streaming reverse proxy of ``/dicom-web/`` to radnode's HTTP edge.

The proxy forwards the method, query, body and the ``Accept``, ``Content-Type`` and
``Authorization`` headers, so radnode's roles apply to whoever the browser is; it adds
no credential of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from viewer_plugin.ohif.config import DICOMWEB_PATH, app_config_js

FORWARDED_REQUEST_HEADERS = ("accept", "content-type", "authorization")
FORWARDED_RESPONSE_HEADERS = ("content-type", "content-length", "warning", "www-authenticate")


def default_dist() -> Path:
    """Where ``make ohif`` unpacks ``@ohif/app``'s prebuilt viewer, from the directory
    ``make viewer`` runs in; elsewhere, set ``ohif_dir``."""
    return Path("build") / "ohif" / "package" / "dist"


class SinglePageApp(StaticFiles):
    """Static files; a path that is no file answers ``index.html`` (OHIF's own router)."""

    async def get_response(self, path: str, scope: Any) -> Response:
        try:
            return await super().get_response(path, scope)
        except StarletteHTTPException as exc:
            if exc.status_code != 404:
                raise
            return await super().get_response("index.html", scope)


def create_ohif_app(dist: Path, upstream: str) -> FastAPI:
    """OHIF from ``dist`` with our config, its DICOMweb proxied to ``upstream`` (radnode's
    HTTP root, e.g. ``http://127.0.0.1:8080``)."""
    if not (dist / "index.html").is_file():
        raise FileNotFoundError(f"no OHIF viewer in {dist}: run `make ohif`")
    upstream = upstream.rstrip("/")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(base_url=upstream, timeout=120.0) as client:
            app.state.client = client
            yield

    app = FastAPI(title="radnode OHIF", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.proxied = 0
    config = app_config_js()

    @app.get("/app-config.js", include_in_schema=False)
    def app_config() -> Response:
        return Response(config, media_type="application/javascript")

    @app.api_route(DICOMWEB_PATH + "/{path:path}", methods=["GET", "POST"])
    async def dicomweb_proxy(path: str, request: Request) -> Response:
        client: httpx.AsyncClient = request.app.state.client
        headers = {k: v for k, v in request.headers.items() if k in FORWARDED_REQUEST_HEADERS}
        upstream_request = client.build_request(
            request.method,
            f"{DICOMWEB_PATH}/{path}",
            params=request.url.query,
            headers=headers,
            content=request.stream() if request.method == "POST" else None,
        )
        try:
            answer = await client.send(upstream_request, stream=True)
        except httpx.HTTPError as exc:
            raise HTTPException(502, f"radnode unreachable: {type(exc).__name__}") from exc
        request.app.state.proxied += 1
        return StreamingResponse(
            answer.aiter_raw(),
            status_code=answer.status_code,
            headers={k: v for k, v in answer.headers.items() if k in FORWARDED_RESPONSE_HEADERS},
            background=BackgroundTask(answer.aclose),
        )

    app.mount("/", SinglePageApp(directory=dist, html=True), name="ohif")
    return app
