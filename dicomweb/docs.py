"""The OpenAPI page at ``/docs``, served with Swagger UI from the node itself.

FastAPI's default page loads Swagger UI from a CDN without subresource integrity: a
compromised CDN would run its script in the node's origin, next to the tokens a user
types there. The assets here come from the ``fastapi-offline`` package (Swagger UI's
dist, MIT licensed) and are served from ``/docs-static/``.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_URL = "/docs-static"


def mount_docs(app: FastAPI) -> None:
    """``/docs`` and its OAuth2 redirect page; the app is made with ``docs_url=None``."""
    static = files("fastapi_offline").joinpath("static")
    app.mount(STATIC_URL, StaticFiles(directory=str(static)), name="docs-static")
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} API",
            swagger_js_url=f"{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_URL}/favicon.png",
            oauth2_redirect_url=redirect_url,
        )

    @app.get(redirect_url, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
