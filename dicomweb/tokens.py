"""JSON Web Tokens (RFC 7519) from an OIDC provider, verified with PyJWT.

The key is a PEM file (the provider's signing key, exported from its JWKS).

Only asymmetric signatures (RS256/384/512, PS256/384/512, ES256/384/512; RFC 7518 3),
and only those that fit the key: RS/PS for an RSA key of at least 2048 bits
(RFC 7518 3.3, 3.5), for an EC key the one ES algorithm of its curve (RFC 7518
3.4: ES256 is P-256, ES384 P-384, ES512 P-521). ``none`` and the HMAC algorithms
are refused, so a token cannot be forged with the public key as an HMAC secret.
A ``crit`` header is refused: radnode understands no JWS extension (RFC 7515
4.1.11). ``exp`` is required; ``nbf`` and ``iat`` are checked when present,
``iss`` and ``aud`` when configured (30 s leeway). Roles come from one claim, a
list or a string, reached by a dotted path (``realm_access.roles`` for Keycloak).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

LEEWAY_S = 30.0
MIN_RSA_BITS = 2048

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


class InvalidToken(ValueError):
    """The token is malformed, badly signed, expired or not for us."""


def _shown(value: object) -> str:
    """A header value of an untrusted token, short enough for a log line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def algorithms_for(key: object) -> tuple[str, ...]:
    """The JWS algorithms ``key`` may verify; ValueError for a key radnode does not accept."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(
                f"RSA key of {key.key_size} bits: at least {MIN_RSA_BITS} are required"
            )
        return _RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_ALGORITHMS.get(key.curve.name)
        if alg is None:
            raise ValueError(f"EC key on {key.curve.name}: P-256, P-384 or P-521 are accepted")
        return (alg,)
    raise ValueError("the JWT public key must be RSA or EC")


class PemKey:
    """One public key from a PEM file: every token is verified with it, whatever its kid."""

    def __init__(self, public_key_pem: bytes) -> None:
        key = serialization.load_pem_public_key(public_key_pem)
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise ValueError("the JWT public key must be RSA or EC")
        self.key: PublicKey = key
        self.algorithms = algorithms_for(key)

    def key_for(self, header: dict[str, Any]) -> tuple[PublicKey, tuple[str, ...]]:
        return self.key, self.algorithms


class TokenVerifier:
    """Verifies tokens with a PEM public key."""

    def __init__(
        self,
        public_key_pem: bytes,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        roles_claim: str = "roles",
    ) -> None:
        self.keys = PemKey(public_key_pem)
        self.issuer = issuer
        self.audience = audience
        self.roles_claim = roles_claim

    @classmethod
    def from_file(cls, path: Path, **kwargs: Any) -> TokenVerifier:
        return cls(Path(path).read_bytes(), **kwargs)

    def claims(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token``; raises InvalidToken."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from exc
        if "crit" in header:
            raise InvalidToken(
                f"crit header names extensions not understood: {_shown(header['crit'])}"
            )
        key, algorithms = self.keys.key_for(header)
        alg = header.get("alg")
        if alg not in algorithms:
            raise InvalidToken(
                f"algorithm {_shown(alg)} does not fit the key (accepted: {', '.join(algorithms)})"
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(algorithms),
                issuer=self.issuer,
                audience=self.audience,
                leeway=LEEWAY_S,
                options={"require": ["exp"], "verify_aud": self.audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from exc
        exp = claims["exp"]
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise InvalidToken("exp is not a number")
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
