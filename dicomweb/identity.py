"""Who is calling, as a person: the name the audit trail and the feedback SRs record."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from dicomweb.auth import roles_of, verifier_for
from dicomweb.tokens import InvalidToken
from radnode_core.settings import Settings
from viewer_plugin.feedback import Reviewer


def _person_name(name: str) -> str:
    """A display name as a DICOM PN (``Family^Given``); a PN is kept as it is."""
    name = " ".join(name.replace("\\", " ").split())
    if "^" in name or " " not in name:
        return name[:64]
    given, family = name.rsplit(" ", 1)
    return f"{family[:64]}^{given[:64]}"


def reviewer_of(request: Request) -> Reviewer:
    """Who is calling: the demo observer with auth off; else the static token's configured
    name (``radiologist_names``) or the JWT's name claims. Never the token itself."""
    settings: Settings = request.app.state.node.settings
    if not settings.auth_enabled:
        return Reviewer(user="demo", observer_name=settings.demo_observer_name, role=None)
    authorization = request.headers.get("authorization") or ""
    roles = roles_of(settings, authorization)
    role = sorted(roles)[0] if roles else None
    token = authorization.partition(" ")[2].strip()
    for known, name in settings.radiologist_names.items():
        if hmac.compare_digest(known.encode(), token.encode()):
            return Reviewer(user=name, observer_name=_person_name(name), role=role)
    if token in settings.api_tokens:
        fingerprint = hashlib.sha256(token.encode()).hexdigest()[:10]
        return Reviewer(user=f"token-{fingerprint}", observer_name="Unnamed^Radiologist", role=role)
    verifier = verifier_for(settings)
    if verifier is not None:
        try:
            claims = verifier.claims(token)
        except InvalidToken:
            claims = {}
        user = str(claims.get("preferred_username") or claims.get("sub") or "jwt-user")[:128]
        name = str(claims.get("name") or user)
        return Reviewer(user=user, observer_name=_person_name(name), role=role)
    return Reviewer(user="unknown", observer_name="Unnamed^Radiologist", role=role)
