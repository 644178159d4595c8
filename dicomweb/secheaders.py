"""Response headers: no framing, no MIME sniffing, no referrer, no caching of patient data.

* Every response: ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``,
  and, unless the response sets its own, ``Content-Security-Policy: frame-ancestors
  'none'`` (with ``X-Frame-Options: DENY`` for browsers that predate it): no page of the
  node can be framed by another site (clickjacking a radiologist's confirm button).
* ``/ui/``: a policy that allows only the pages' own scripts, styles and API calls, the
  driving slice as a ``blob:`` image, and frames of the OHIF viewer (``/viewer/`` on this
  origin, or ``ohif_url``); ``/viewer/`` itself may be framed by this origin only.
* ``/dicom-web/`` and ``/api/`` (instances, metadata, query results, AI results, the
  worklist): ``Cache-Control: no-store``, so no browser or proxy cache keeps patient data.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from radnode_core.settings import Settings
from viewer_plugin.ohif.mount import viewer_url

PATIENT_DATA_PREFIXES = ("/dicom-web/", "/api/")
UI_PREFIX = "/ui"
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
"""/docs: FastAPI's Swagger UI page starts the bundle with an inline script."""


def ui_policy(ohif_url: str | None) -> str:
    """The Content-Security-Policy of the review pages (viewer_plugin/review): frames of
    the OHIF viewer only, on this origin (a path) or another."""
    frames = "'none'"
    if ohif_url and ohif_url.startswith("/") and not ohif_url.startswith("//"):
        frames = "'self'"
    elif ohif_url:
        parts = urlsplit(ohif_url)
        if parts.scheme in ("http", "https") and parts.netloc:
            frames = f"{parts.scheme}://{parts.netloc}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
        f"connect-src 'self'; frame-src {frames}; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    )


class SecurityHeaders:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.ui_policy = ui_policy(viewer_url(settings))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path == UI_PREFIX or path.startswith(UI_PREFIX + "/"):
            policy = self.ui_policy
        elif path.startswith("/docs"):
            policy = DOCS_POLICY
        else:
            policy = "frame-ancestors 'none'"
        no_store = path.startswith(PATIENT_DATA_PREFIXES)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                headers.setdefault("Content-Security-Policy", policy)
                headers.setdefault("X-Frame-Options", "DENY")
                if no_store:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)
