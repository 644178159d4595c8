"""JSON Web Tokens (RFC 7519) from an OIDC provider, verified with its public key.

Only asymmetric signatures (RS256/384/512, PS256/384/512, ES256/384/512; RFC 7518 3):
``none`` and the HMAC algorithms are refused, so a token cannot be forged with
the public key as an HMAC secret. ``exp`` is required; ``nbf``, ``iss`` and
``aud`` are checked when configured. Roles come from one claim, a list or a
string, reached by a dotted path (``realm_access.roles`` for Keycloak).
The key is a PEM file (the provider's signing key, exported from its JWKS);
fetching and rotating JWKS is not implemented.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

_HASHES: dict[str, hashes.HashAlgorithm] = {
    "256": hashes.SHA256(),
    "384": hashes.SHA384(),
    "512": hashes.SHA512(),
}
LEEWAY_S = 30.0


class InvalidToken(ValueError):
    """The token is malformed, badly signed, expired or not for us."""


def _b64(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidToken("bad base64url") from exc


class TokenVerifier:
    def __init__(
        self,
        public_key_pem: bytes,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        roles_claim: str = "roles",
    ) -> None:
        key = serialization.load_pem_public_key(public_key_pem)
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise ValueError("the JWT public key must be RSA or EC")
        self.key = key
        self.issuer = issuer
        self.audience = audience
        self.roles_claim = roles_claim

    @classmethod
    def from_file(cls, path: Path, **kwargs: Any) -> TokenVerifier:
        return cls(Path(path).read_bytes(), **kwargs)

    def _verify_signature(self, alg: str, signing_input: bytes, signature: bytes) -> None:
        family, bits = alg[:2], alg[2:]
        if bits not in _HASHES:
            raise InvalidToken(f"algorithm {alg!r} not accepted")
        digest = _HASHES[bits]
        try:
            if family in ("RS", "PS") and isinstance(self.key, rsa.RSAPublicKey):
                pad: padding.AsymmetricPadding = (
                    padding.PKCS1v15()
                    if family == "RS"
                    else padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
                )
                self.key.verify(signature, signing_input, pad, digest)
            elif family == "ES" and isinstance(self.key, ec.EllipticCurvePublicKey):
                half = len(signature) // 2
                if half == 0 or len(signature) % 2:
                    raise InvalidToken("bad ECDSA signature length")
                der = encode_dss_signature(
                    int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
                )
                self.key.verify(der, signing_input, ec.ECDSA(digest))
            else:
                raise InvalidToken(f"algorithm {alg!r} does not fit the configured key")
        except InvalidSignature as exc:
            raise InvalidToken("bad signature") from exc

    def claims(self, token: str, now: float | None = None) -> dict[str, Any]:
        """The verified claims of ``token``; raises InvalidToken."""
        parts = token.split(".")
        if len(parts) != 3:
            raise InvalidToken("not a JWS compact token")
        try:
            header = json.loads(_b64(parts[0]))
            claims = json.loads(_b64(parts[1]))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidToken("bad JSON") from exc
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise InvalidToken("bad JOSE header or claims")
        self._verify_signature(
            str(header.get("alg", "")), f"{parts[0]}.{parts[1]}".encode(), _b64(parts[2])
        )
        now = time.time() if now is None else now
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or now > exp + LEEWAY_S:
            raise InvalidToken("expired or without exp")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and now + LEEWAY_S < nbf:
            raise InvalidToken("not yet valid")
        if self.issuer is not None and claims.get("iss") != self.issuer:
            raise InvalidToken("wrong issuer")
        if self.audience is not None:
            aud = claims.get("aud")
            audiences = aud if isinstance(aud, list) else [aud]
            if self.audience not in audiences:
                raise InvalidToken("wrong audience")
        return claims

    def roles(self, token: str) -> set[str]:
        value: Any = self.claims(token)
        for key in self.roles_claim.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str):
            return {value}
        if isinstance(value, list):
            return {v for v in value if isinstance(v, str)}
        return set()
