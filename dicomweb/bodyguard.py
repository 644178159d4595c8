"""Request bodies: the bearer token is checked before a body is read, and each body has a limit.

FastAPI reads and parses a route's body before the route's dependencies run, so a role
check in a dependency alone would let anyone make the node read and parse any amount of
JSON. This middleware runs first, for every request that carries a body
(``Content-Length`` above 0, or chunked): with ``auth_enabled`` it needs a valid bearer
token (401, the body unread); and the body may not exceed its limit (413 with the
limit named): ``max_stow_bytes`` for a STOW-RS request, ``max_json_body_bytes`` for any
other. A declared length over the limit is refused at once; a chunked body as soon as
it grows past it. Which role a route wants is still the route's own check.
"""

from __future__ import annotations

import logging

from fastapi import HTTPException, Request, status
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomweb.auth import CHALLENGE, UNAUTHORIZED, audit_login_failure, roles_of
from radnode_core.node import Node

logger = logging.getLogger(__name__)

STOW_PREFIX = "/dicom-web/studies"
UPLOAD_PREFIX = "/api/upload/"
UPLOAD_JSON = "/api/upload/known"


class BodyGuard:
    def __init__(self, app: ASGIApp, node: Node) -> None:
        self.app = app
        self.node = node

    def limit(self, scope: Scope) -> tuple[int, str]:
        """The body limit of a request and the setting that sets it."""
        s = self.node.settings
        if scope["method"] == "POST" and scope["path"].startswith(STOW_PREFIX):
            return s.max_stow_bytes, "max_stow_bytes"
        path = scope["path"]
        if scope["method"] == "POST" and path.startswith(UPLOAD_PREFIX) and path != UPLOAD_JSON:
            return s.max_stow_bytes, "max_stow_bytes"  # the upload page's zips and images
        return s.max_json_body_bytes, "max_json_body_bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if not chunked and (declared is None or declared.strip() in ("", "0")):
            await self.app(scope, receive, send)
            return
        settings = self.node.settings
        if settings.auth_enabled:
            roles = await run_in_threadpool(roles_of, settings, headers.get("authorization"))
            if not roles:
                await run_in_threadpool(audit_login_failure, Request(scope))
                refusal = JSONResponse(
                    {"detail": UNAUTHORIZED}, status.HTTP_401_UNAUTHORIZED, headers=CHALLENGE
                )
                await refusal(scope, receive, send)
                return
        limit, setting = self.limit(scope)
        too_large = f"request body over {limit} bytes ({setting})"
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await JSONResponse({"detail": too_large}, 413)(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, too_large)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except HTTPException as exc:  # raised by limited_receive outside any handler
            if started or exc.status_code != status.HTTP_413_REQUEST_ENTITY_TOO_LARGE:
                raise
            await JSONResponse({"detail": exc.detail}, exc.status_code)(scope, receive, send)
