"""OHIF on an origin of its own (``radnode viewer``; the compose and Kubernetes ``ohif``
service): the viewer at ``/viewer/`` and a streaming proxy of ``/viewer/dicom-web/`` to
radnode's HTTP edge.

The proxy forwards reads only (GET, HEAD) with the ``Accept`` header and the user's
``Authorization``: the browser's own header, or the viewer session's cookie turned into one
(:mod:`viewer_plugin.ohif.session`); it adds no credential of its own, so radnode's roles
apply to whoever the browser is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from viewer_plugin.ohif.config import DICOMWEB_PATH
from viewer_plugin.ohif.dist import PREFIX, SAME_ORIGIN, OhifFiles
from viewer_plugin.ohif.session import authorization_from

FORWARDED_REQUEST_HEADERS = ("accept",)
FORWARDED_RESPONSE_HEADERS = ("content-type", "content-length", "warning", "www-authenticate")


def create_ohif_app(
    dist: Path, upstream: str, prefix: str = PREFIX, frame_ancestors: str = SAME_ORIGIN
) -> FastAPI:
    """OHIF from ``dist`` at ``prefix`` with our config, its DICOMweb proxied to ``upstream``
    (radnode's HTTP root, e.g. ``http://127.0.0.1:8080``); pages that may embed it:
    ``frame_ancestors`` (a CSP source list: the review page's origin)."""
    files = OhifFiles(dist, prefix, frame_ancestors)
    upstream = upstream.rstrip("/")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(base_url=upstream, timeout=120.0) as client:
            app.state.client = client
            yield

    app = FastAPI(title="radnode OHIF", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.proxied = 0

    @app.get("/", include_in_schema=False)
    @app.get(prefix, include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(prefix + "/")

    @app.get("/app-config.js", include_in_schema=False)
    def app_config() -> Response:
        """The same configuration at the root, where the probes of k8s/base/ohif.yaml ask."""
        return Response(files.config, media_type="application/javascript")

    @app.api_route(prefix + DICOMWEB_PATH + "/{path:path}", methods=["GET", "HEAD"])
    async def dicomweb_proxy(path: str, request: Request) -> Response:
        client: httpx.AsyncClient = request.app.state.client
        headers = {k: v for k, v in request.headers.items() if k in FORWARDED_REQUEST_HEADERS}
        authorization = authorization_from(request.headers, request.method)
        if authorization:
            headers["authorization"] = authorization
        upstream_request = client.build_request(
            request.method, f"{DICOMWEB_PATH}/{path}", params=request.url.query, headers=headers
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

    app.mount(prefix + "/", files, name="ohif")
    return app
