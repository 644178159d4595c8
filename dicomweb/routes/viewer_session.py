"""``/api/viewer-session``: the review page hands the signed-in user's token to the OHIF it
embeds, as an HttpOnly cookie scoped to the viewer's DICOMweb (:mod:`viewer_plugin.ohif.session`).

``POST`` needs a reading role's bearer token in the ``Authorization`` header; it sets the
cookie (204; no token 401, another role 403). With authentication off it sets nothing
(204). ``DELETE`` clears it (sign-out). The token is never in a URL, a log line or a
response body.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response, status

from dicomweb.auth import READ_ROLES, require_role
from radnode_core.settings import Settings
from viewer_plugin.ohif.dist import PREFIX
from viewer_plugin.ohif.session import clear_cookie_header, set_cookie_header

router = APIRouter(prefix="/api", tags=["viewer"])


def _secure(request: Request, settings: Settings) -> bool:
    """Secure cookie over HTTPS: the connection's scheme (X-Forwarded-Proto from trusted
    proxies only), or a ``public_url`` that says https."""
    return request.url.scheme == "https" or (settings.public_url or "").startswith("https:")


@router.post(
    "/viewer-session",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Depends(require_role(READ_ROLES))],
)
def open_session(request: Request) -> Response:
    """Let the embedded OHIF read DICOMweb as the caller."""
    settings: Settings = request.app.state.node.settings
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    if not settings.auth_enabled:
        return response
    # require_role admitted it, so the header is "Bearer <a token of ours>"
    token = (request.headers.get("authorization") or "").partition(" ")[2].strip()
    response.headers["Set-Cookie"] = set_cookie_header(token, PREFIX, _secure(request, settings))
    return response


@router.delete("/viewer-session", status_code=status.HTTP_204_NO_CONTENT)
def close_session(request: Request) -> Response:
    """Forget the viewer's cookie (no token needed: it only removes one)."""
    settings: Settings = request.app.state.node.settings
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.headers["Set-Cookie"] = clear_cookie_header(PREFIX, _secure(request, settings))
    return response
