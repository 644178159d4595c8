"""``Annotated`` dependency aliases for the routes (the node and its parts; the caller's role)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from dicomweb.auth import ADMIN_ROLES, READ_ROLES, STORE_ROLES, require_role
from dicomweb.headers import InstanceHeaders
from radnode_core.node import Node
from radnode_core.uids import InvalidUID, check_uid


def get_node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


NodeDep = Annotated[Node, Depends(get_node)]


def get_headers(request: Request) -> InstanceHeaders:
    headers: InstanceHeaders = request.app.state.headers
    return headers


HeadersDep = Annotated[InstanceHeaders, Depends(get_headers)]


def checked_uid(value: str, what: str) -> str:
    """A UID from a path; 400 when it is not one (UIDs also name files: PS3.5 9.1)."""
    try:
        return check_uid(value, what)
    except InvalidUID as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc


require_read = Depends(require_role(READ_ROLES))
require_store = Depends(require_role(STORE_ROLES))
require_admin = Depends(require_role(ADMIN_ROLES))


def dicomweb_base(request: Request) -> str:
    """The DICOMweb root URL for links in answers (RetrieveURL, BulkDataURI).

    ``public_url`` when set (behind a reverse proxy, set it). Otherwise the scheme and
    the local address and port the connection actually reached: never the request's
    Host header, which the client chooses (a link in an answer must not point wherever
    a client says). The scheme is ``https`` only when a trusted proxy said so
    (``trusted_proxies``; uvicorn applies X-Forwarded-Proto from those alone).
    """
    public = request.app.state.node.settings.public_url
    if public:
        return f"{public.rstrip('/')}/dicom-web"
    scheme = request.scope.get("scheme", "http")
    server = request.scope.get("server")
    if not server:
        return "/dicom-web"
    host, port = str(server[0]), int(server[1])
    if ":" in host:  # IPv6
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(scheme)
    authority = host if port == default else f"{host}:{port}"
    return f"{scheme}://{authority}/dicom-web"
