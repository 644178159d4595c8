"""JSON Web Tokens (RFC 7519) from an OIDC provider, verified with PyJWT.

The key is either a PEM file (the provider's signing key, exported from its
JWKS) or the provider's JWKS URL (RFC 7517 5; ``jwks_uri`` of its OpenID
configuration), where the token's ``kid`` picks the key (:class:`JwksKeys`).

Only asymmetric signatures (RS256/384/512, PS256/384/512, ES256/384/512; RFC 7518 3),
and only those that fit the key: RS/PS for an RSA key of at least 2048 bits
(RFC 7518 3.3, 3.5), for an EC key the one ES algorithm of its curve (RFC 7518
3.4: ES256 is P-256, ES384 P-384, ES512 P-521). ``none`` and the HMAC algorithms
are refused, so a token cannot be forged with the public key as an HMAC secret.
A ``crit`` header is refused: radnode understands no JWS extension (RFC 7515
4.1.11). The compact serialization is taken literally (RFC 7515 7.1, 2): three
base64url segments without padding, each in its one canonical encoding, so no second
spelling of a token verifies. ``exp`` is required and, like ``nbf`` and ``iat`` when
present, must be a finite JSON number (RFC 7519 2: NumericDate, not a string);
``iss`` and ``aud`` are checked when configured (30 s leeway). Roles come from one claim, a
list or a string, reached by a dotted path (``realm_access.roles`` for Keycloak).
"""

from __future__ import annotations

import base64
import binascii
import http.client
import ipaddress
import logging
import math
import re
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

logger = logging.getLogger(__name__)

LEEWAY_S = 30.0
MIN_RSA_BITS = 2048
JWKS_TIMEOUT_S = 5.0
JWKS_LIFESPAN_S = 300.0
JWKS_MIN_REFRESH_S = 10.0

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_JWKS_FETCH_ERRORS = (jwt.PyJWTError, ValueError, OSError, http.client.HTTPException)
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_NUMERIC_DATES = ("exp", "nbf", "iat")


class InvalidToken(ValueError):
    """The token is malformed, badly signed, expired or not for us."""


def check_compact(token: str) -> None:
    """Refuse any spelling of a JWS but the canonical one (RFC 7515 2, 7.1; RFC 4648 5).

    Three segments of the base64url alphabet, no ``=`` padding, and each segment the
    exact encoding of the bytes it decodes to (no stray low bits in its last character).
    """
    segments = token.split(".")
    if len(segments) != 3 or not all(_SEGMENT.fullmatch(s) for s in segments):
        raise InvalidToken("not three unpadded base64url segments (RFC 7515 7.1)")
    for segment in segments:
        try:
            raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        except (binascii.Error, ValueError) as exc:
            raise InvalidToken("a segment is not base64url") from exc
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != segment:
            raise InvalidToken("a segment is not in canonical base64url")


def _check_numeric_dates(claims: dict[str, Any]) -> None:
    """``exp``, ``nbf``, ``iat``: JSON numbers, finite (RFC 7519 2 NumericDate)."""
    for name in _NUMERIC_DATES:
        if name not in claims:
            continue
        value = claims[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidToken(f"{name} is not a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidToken(f"{name} is not finite")


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


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


class JwksKeys:
    """The signing keys of a JWKS URL, by ``kid``, fetched with :class:`jwt.PyJWKClient`.

    The set is fetched on first use, again once it is ``lifespan_s`` old, and
    again when a token names a ``kid`` it lacks (the provider rotated its
    keys), but at most once per ``min_refresh_s``, so tokens with made-up kids
    cannot make radnode hammer the provider. Each fetch gives up after
    ``timeout_s``. A failed fetch keeps the keys fetched before (a short outage
    of the provider does not lock out holders of valid tokens); a token whose
    key is not among them is refused with the failure as the reason.

    The URL must be https, or http to a loopback address: keys fetched in the
    clear could be swapped on the way.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = JWKS_TIMEOUT_S,
        lifespan_s: float = JWKS_LIFESPAN_S,
        min_refresh_s: float = JWKS_MIN_REFRESH_S,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" and not (
            parts.scheme == "http" and _is_loopback(parts.hostname)
        ):
            raise ValueError(f"JWKS URL {url!r}: https required (http only to a loopback address)")
        self.url = url
        self.lifespan_s = lifespan_s
        self.min_refresh_s = min_refresh_s
        self._client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=timeout_s)
        self._lock = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -math.inf
        self._tried_at = -math.inf
        self._error: str | None = None

    def _fetch(self, now: float) -> None:
        self._tried_at = now
        try:
            keys = self._client.get_signing_keys(refresh=True)
        except _JWKS_FETCH_ERRORS as exc:
            self._error = str(exc)
            logger.warning("JWKS fetch failed", extra={"url": self.url, "reason": str(exc)})
            return
        self._keys = {k.key_id: k for k in keys if k.key_id}
        self._fetched_at = now
        self._error = None

    def signing_key(self, kid: str) -> jwt.PyJWK:
        """The key named ``kid``, fetching the set when it is due; raises InvalidToken."""
        with self._lock:
            now = time.monotonic()
            due = kid not in self._keys or now - self._fetched_at >= self.lifespan_s
            if due and now - self._tried_at >= self.min_refresh_s:
                self._fetch(now)
            key = self._keys.get(kid)
            error = self._error
        if key is not None:
            return key
        if error is not None:
            raise InvalidToken(
                f"key {_shown(kid)} unknown, JWKS fetch from {self.url} failed: {error}"
            )
        raise InvalidToken(f"no key {_shown(kid)} in the JWKS of {self.url}")

    def key_for(self, header: dict[str, Any]) -> tuple[PublicKey, tuple[str, ...]]:
        """The key a token's header names, and the algorithms it may verify."""
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("no kid in the token header: JWKS keys are chosen by kid")
        key = self.signing_key(kid).key
        try:
            return key, algorithms_for(key)
        except ValueError as exc:
            raise InvalidToken(f"JWKS key {_shown(kid)} refused: {exc}") from exc


class TokenVerifier:
    """Verifies tokens with a PEM public key or, given ``jwks``, the key a token's kid names."""

    def __init__(
        self,
        public_key_pem: bytes | None = None,
        *,
        jwks: JwksKeys | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        roles_claim: str = "roles",
    ) -> None:
        if public_key_pem is not None and jwks is None:
            self.keys: PemKey | JwksKeys = PemKey(public_key_pem)
        elif jwks is not None and public_key_pem is None:
            self.keys = jwks
        else:
            raise ValueError("give a PEM public key or a JWKS, not both or neither")
        self.issuer = issuer
        self.audience = audience
        self.roles_claim = roles_claim

    @classmethod
    def from_file(cls, path: Path, **kwargs: Any) -> TokenVerifier:
        return cls(Path(path).read_bytes(), **kwargs)

    @classmethod
    def from_jwks_url(
        cls, url: str, *, timeout_s: float = JWKS_TIMEOUT_S, **kwargs: Any
    ) -> TokenVerifier:
        return cls(jwks=JwksKeys(url, timeout_s=timeout_s), **kwargs)

    def claims(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token``; raises InvalidToken."""
        check_compact(token)
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
        except (ValueError, TypeError, OverflowError) as exc:  # a claim PyJWT cannot compare
            raise InvalidToken(f"unusable claim: {type(exc).__name__}") from exc
        _check_numeric_dates(claims)
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
