"""Bearer-token authentication and roles of the HTTP edge.

Static API keys from the settings (``api_tokens``: token -> role). Roles:

* ``admin``: everything,
* ``radiologist``: read everything, store (STOW-RS),
* ``viewer``: read only (QIDO-RS, WADO-RS, AI results),
* ``modality``: store (STOW-RS) and nothing else.

With ``auth_enabled`` false every request passes (the demo on 127.0.0.1; binding
another address that way is refused at start-up, see :func:`check_exposure`).
Tokens are compared in constant time; a token never reaches a log.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Iterable
from typing import Final

from fastapi import HTTPException, Request, status

from radnode.settings import Settings

ROLES: Final = frozenset({"admin", "radiologist", "modality", "viewer"})
READ_ROLES: Final = ("admin", "radiologist", "viewer")
STORE_ROLES: Final = ("admin", "radiologist", "modality")
ADMIN_ROLES: Final = ("admin",)



def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class InsecureBinding(RuntimeError):
    """The HTTP edge would serve patient data without authentication beyond this host."""


def check_exposure(settings: Settings) -> None:
    """Refuse an open HTTP edge on a non-loopback address unless explicitly allowed.

    Also refuses ``auth_enabled`` without any token or with an unknown role, which
    would lock everyone out or grant nothing meaningful.
    """
    if settings.auth_enabled:
        if not settings.api_tokens:
            raise InsecureBinding("auth_enabled is set but api_tokens is empty")
        unknown = sorted({r for r in settings.api_tokens.values() if r not in ROLES})
        if unknown:
            raise InsecureBinding(f"api_tokens name unknown roles: {', '.join(unknown)}")
        return
    if not is_loopback(settings.host) and not settings.allow_insecure:
        raise InsecureBinding(
            f"refusing to serve HTTP on {settings.host} without authentication: set "
            "RADNODE_AUTH_ENABLED=true and RADNODE_API_TOKENS, or bind 127.0.0.1, or "
            "force it with RADNODE_ALLOW_INSECURE=true (not for production)"
        )


def role_of(settings: Settings, authorization: str | None) -> str | None:
    """The role of a ``Bearer`` token, or None when absent or unknown."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    token = token.strip()
    found = None
    for known, role in settings.api_tokens.items():
        if hmac.compare_digest(known.encode(), token.encode()):
            found = role
    return found


def require_role(roles: Iterable[str]) -> Callable[[Request], str | None]:
    """A dependency admitting requests whose token has one of ``roles``: 401 / 403 otherwise."""
    allowed = frozenset(roles)

    def dependency(request: Request) -> str | None:
        settings: Settings = request.app.state.node.settings
        if not settings.auth_enabled:
            return None
        role = role_of(settings, request.headers.get("authorization"))
        if role is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "a valid bearer token is required",
                headers={"WWW-Authenticate": 'Bearer realm="radnode"'},
            )
        if role not in allowed:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"role {role!r} may not do this")
        return role

    return dependency
