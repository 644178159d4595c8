"""The viewer's session: the signed-in user's bearer token, carried to OHIF's data requests
by an HttpOnly cookie and turned back into an ``Authorization`` header by radnode.

OHIF's DICOMweb data source sends no token of its own (it asks its user-authentication
service, which is empty without an OIDC setup). The review page, which holds the user's
token, asks radnode for this cookie (``POST /api/viewer-session``); the browser then sends
it with every request OHIF makes below ``<prefix>/dicom-web/`` and nowhere else (its
``Path``). The cookie is ``HttpOnly`` (no script, OHIF's included, can read it),
``SameSite=Strict`` (no other site's page makes the browser send it) and ``Secure`` over
HTTPS. Only ``GET`` and ``HEAD`` are given the token: a cookie never authorises a write, so
a forged form or script cannot store or judge anything with it. The token travels
base64url-encoded, so any token fits a cookie. docs/viewer.md weighs this against OHIF's
``?token=`` parameter.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from http.cookies import SimpleCookie

from starlette.types import ASGIApp, Receive, Scope, Send

from viewer_plugin.ohif.config import DICOMWEB_PATH

COOKIE = "radnode_viewer"
SAFE_METHODS = frozenset({"GET", "HEAD"})


def cookie_path(prefix: str) -> str:
    """The only path the browser sends the cookie to: the viewer's DICOMweb root."""
    return prefix.rstrip("/") + DICOMWEB_PATH


def encode(token: str) -> str:
    return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def decode(value: str) -> str | None:
    """The token in a cookie value; None when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        token = raw.decode()
    except (binascii.Error, ValueError):
        return None
    return token if token and token.isprintable() else None


def set_cookie_header(token: str, prefix: str, secure: bool) -> str:
    """A ``Set-Cookie`` value holding ``token`` for the viewer at ``prefix``; no
    ``Max-Age``: it ends with the browser session, or with sign-out."""
    flags = f"Path={cookie_path(prefix)}; HttpOnly; SameSite=Strict"
    return f"{COOKIE}={encode(token)}; {flags}" + ("; Secure" if secure else "")


def clear_cookie_header(prefix: str, secure: bool) -> str:
    flags = f"Path={cookie_path(prefix)}; Max-Age=0; HttpOnly; SameSite=Strict"
    return f"{COOKIE}=; {flags}" + ("; Secure" if secure else "")


def authorization_from(headers: Mapping[str, str], method: str) -> str | None:
    """The ``Authorization`` header a request to the viewer's DICOMweb should carry: its own
    when it has one; else ``Bearer <token>`` from the session cookie for a read; else None."""
    own = headers.get("authorization")
    if own:
        return own
    if method not in SAFE_METHODS:
        return None
    cookies = SimpleCookie()
    try:
        cookies.load(headers.get("cookie", ""))
    except ValueError:  # http.cookies.CookieError
        return None
    morsel = cookies.get(COOKIE)
    token = decode(morsel.value) if morsel is not None else None
    return f"Bearer {token}" if token else None


class ViewerDicomweb:
    """ASGI middleware: ``<prefix>/dicom-web/...`` is radnode's own ``/dicom-web/...`` with
    the session's token, in process (OHIF on the node's origin). Reads only; any other
    method at that path is answered 405 with nothing forwarded."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.root = cookie_path(prefix)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(self.root + "/"):
            await self.app(scope, receive, send)
            return
        if scope["method"] not in SAFE_METHODS:
            await _refuse(send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        authorization = authorization_from(headers, scope["method"])
        raw = [(k, v) for k, v in scope["headers"] if k not in (b"authorization", b"cookie")]
        if authorization:
            raw.append((b"authorization", authorization.encode("latin-1")))
        cut = len(self.root) - len(DICOMWEB_PATH)  # the prefix
        raw_path: bytes = scope.get("raw_path") or path.encode()
        scope = dict(scope, path=path[cut:], raw_path=raw_path[cut:], headers=raw)
        await self.app(scope, receive, send)


async def _refuse(send: Send) -> None:
    body = b'{"detail":"the viewer\'s DICOMweb is read-only"}'
    await send(
        {
            "type": "http.response.start",
            "status": 405,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"allow", b"GET, HEAD"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
