"""Bearer-token authentication and roles of the HTTP edge.

Static API keys from the settings (``api_tokens``: token -> role), and JWTs of
an OIDC provider verified with its public key or its JWKS (:mod:`dicomweb.tokens`).
Roles:

* ``admin``: everything,
* ``radiologist``: read everything, store (STOW-RS),
* ``viewer``: read only (QIDO-RS, WADO-RS, AI results),
* ``modality``: store (STOW-RS) and nothing else.

With ``auth_enabled`` false every request passes (the demo on 127.0.0.1; binding
another address that way is refused at start-up, see :func:`check_exposure`).
Tokens are compared in constant time; a token never reaches a log.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

from fastapi import HTTPException, Request, status

from dicomweb.tokens import InvalidToken, TokenVerifier
from radnode_core.settings import Settings

logger = logging.getLogger(__name__)

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
        key_file, jwks_url = settings.jwt_public_key_file, settings.jwt_jwks_url
        if not settings.api_tokens and key_file is None and jwks_url is None:
            raise InsecureBinding(
                "auth_enabled is set but none of api_tokens, jwt_public_key_file, jwt_jwks_url is"
            )
        if key_file is not None and jwks_url is not None:
            raise InsecureBinding("set jwt_public_key_file or jwt_jwks_url, not both")
        if key_file is not None or jwks_url is not None:
            try:
                verifier_for(settings)
            except (OSError, ValueError) as exc:
                which = "jwt_public_key_file" if key_file is not None else "jwt_jwks_url"
                raise InsecureBinding(f"{which} unusable: {exc}") from exc
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


@functools.cache
def _verifier(
    path: str | None, jwks_url: str | None, issuer: str | None, audience: str | None, claim: str
) -> TokenVerifier:
    if path is not None:
        return TokenVerifier.from_file(
            Path(path), issuer=issuer, audience=audience, roles_claim=claim
        )
    if jwks_url is not None:
        return TokenVerifier.from_jwks_url(
            jwks_url, issuer=issuer, audience=audience, roles_claim=claim
        )
    raise ValueError("neither jwt_public_key_file nor jwt_jwks_url is set")


def verifier_for(settings: Settings) -> TokenVerifier | None:
    """The JWT verifier of these settings, or None.

    One per process and configuration: the key file is read once, and the JWKS
    keys are cached in the verifier (fetched on first use, not at start-up, so
    radnode starts while the provider is still coming up).
    """
    if settings.jwt_public_key_file is None and settings.jwt_jwks_url is None:
        return None
    if settings.jwt_public_key_file is not None and settings.jwt_jwks_url is not None:
        raise ValueError("set jwt_public_key_file or jwt_jwks_url, not both")
    return _verifier(
        None if settings.jwt_public_key_file is None else str(settings.jwt_public_key_file),
        settings.jwt_jwks_url,
        settings.jwt_issuer,
        settings.jwt_audience,
        settings.jwt_roles_claim,
    )


def roles_of(settings: Settings, authorization: str | None) -> set[str]:
    """The roles of a ``Bearer`` credential: a static API key's, or a verified JWT's."""
    if not authorization:
        return set()
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return set()
    found: set[str] = set()
    for known, role in settings.api_tokens.items():
        if hmac.compare_digest(known.encode(), token.encode()):
            found = {role}
    if not found and token.count(".") == 2:
        verifier = verifier_for(settings)
        if verifier is not None:
            try:
                found = verifier.roles(token) & ROLES
            except InvalidToken as exc:
                # Per request, so at DEBUG: the audit trail's throttled line says it at WARNING.
                logger.debug("bearer JWT refused", extra={"reason": str(exc)})
                return set()
            if not found:
                found = {"none"}  # authenticated, but no role of ours: 403, not 401
    return found


UNAUTHORIZED = "a valid bearer token is required"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="radnode"'}


def audit_login_failure(request: Request) -> None:
    """110114 User Authentication, outcome 4 (PS3.15 A.5.3.8): no or a bad bearer token
    (throttled per client address and reason by the audit trail)."""
    header = request.headers.get("authorization")
    reason = "bearer token missing" if not header else "bearer token refused"
    client = request.client.host if request.client else None
    request.app.state.node.audit.login_failed(user="unknown", address=client, reason=reason)


def require_role(roles: Iterable[str]) -> Callable[[Request], str | None]:
    """A dependency admitting requests whose token has one of ``roles``: 401 / 403 otherwise."""
    allowed = frozenset(roles)

    def dependency(request: Request) -> str | None:
        settings: Settings = request.app.state.node.settings
        if not settings.auth_enabled:
            return None
        roles = roles_of(settings, request.headers.get("authorization"))
        if not roles:
            audit_login_failure(request)
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, UNAUTHORIZED, headers=CHALLENGE)
        granted = roles & allowed
        if not granted:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "this role may not do this")
        return sorted(granted)[0]

    return dependency
