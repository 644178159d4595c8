"""Lenient JWTs against `radnode api` verifying tokens with a P-384 public key: each way a
token could be bent is refused with 401 (never a 500), and the straight token works.

RFC 7515 (compact serialization, ``crit``), RFC 7518 3.4 (an EC key verifies only its
curve's algorithm; r and s of exactly the curve's size), RFC 7519 2 (NumericDate).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.support.radnode_process import RadnodeProcess

KEY = ec.generate_private_key(ec.SECP384R1())
HASHES = {"ES256": hashes.SHA256(), "ES384": hashes.SHA384(), "ES512": hashes.SHA512()}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signature(signing_input: str, alg: str, pad: int = 0) -> bytes:
    """r || s, each the key's size (48 bytes for P-384) plus ``pad`` leading zero bytes."""
    r, s = decode_dss_signature(KEY.sign(signing_input.encode(), ec.ECDSA(HASHES[alg])))
    size = 48 + pad
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def token(
    payload: str | None = None,
    *,
    alg: str = "ES384",
    header: dict[str, Any] | None = None,
    pad: int = 0,
    spell: Callable[[str], str] = lambda segment: segment,
) -> str:
    """A token signed with KEY; ``spell`` rewrites the payload segment before signing."""
    head = b64(json.dumps({"alg": alg, "typ": "JWT", **(header or {})}).encode())
    if payload is None:
        payload = json.dumps({"exp": time.time() + 300, "sub": "u1", "roles": ["viewer"]})
    body = spell(b64(payload.encode()))
    return f"{head}.{body}.{b64(_signature(f'{head}.{body}', alg, pad))}"


def _claims(**fields: str) -> str:
    """A payload with ``fields`` written as raw JSON text (NaN, 1e400, strings...)."""
    items = {"exp": str(int(time.time()) + 300), "roles": '["viewer"]', **fields}
    return "{" + ", ".join(f'"{k}": {v}' for k, v in items.items()) + "}"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadnodeProcess]:
    root = tmp_path_factory.mktemp("hostile-jwt")
    key_file = root / "idp.pem"
    key_file.write_bytes(
        KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    env = {
        "RADNODE_AUTH_ENABLED": "true",
        "RADNODE_JWT_PUBLIC_KEY_FILE": str(key_file),
        "RADNODE_FSYNC": "false",
    }
    node = RadnodeProcess(Path(root) / "data", "api", env=env).start()
    yield node
    node.stop()


def _status(api: RadnodeProcess, bearer: str) -> int:
    r = httpx.get(
        f"http://127.0.0.1:{api.http_port}/dicom-web/studies",
        headers={"Authorization": f"Bearer {bearer}"},
    )
    return r.status_code


def test_the_straight_token_is_accepted(api: RadnodeProcess) -> None:
    assert _status(api, token()) == 200


def _padded(t: str, segment: int, padding: str) -> str:
    parts = t.split(".")
    parts[segment] += padding
    return ".".join(parts)


def _noncanonical(segment: str) -> str:
    """The same bytes spelt with the last character's unused low bits set (RFC 4648 3.5)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused = {2: 4, 3: 2}[len(segment) % 4]
    last = alphabet.index(segment[-1]) | ((1 << unused) - 1)
    return segment[:-1] + alphabet[last]


def _odd_payload(remainder: int = 2) -> str:
    """A payload whose base64url spelling is ``remainder`` characters past a full group."""
    subject = "u"
    claims: dict[str, object] = {"exp": int(time.time()) + 300, "roles": ["viewer"], "sub": subject}
    while len(b64(json.dumps(claims).encode())) % 4 != remainder:
        subject += "u"
        claims["sub"] = subject
    return json.dumps(claims)


BENT = {
    "crit header": lambda: token(header={"crit": ["exp"]}),
    "crit naming an unknown extension": lambda: token(
        header={"crit": ["x-radnode"], "x-radnode": 1}
    ),
    "ES256 with a P-384 key": lambda: token(alg="ES256"),
    "ES512 with a P-384 key": lambda: token(alg="ES512"),
    "exp NaN": lambda: token(_claims(exp="NaN")),
    "exp Infinity": lambda: token(_claims(exp="Infinity")),
    "exp 1e400": lambda: token(_claims(exp="1e400")),
    "exp a string": lambda: token(_claims(exp=f'"{int(time.time()) + 300}"')),
    "nbf a string": lambda: token(_claims(nbf='"0"')),
    "iat a string": lambda: token(_claims(iat='"0"')),
    "nbf NaN": lambda: token(_claims(nbf="NaN")),
    "zero-padded r and s": lambda: token(pad=1),
    "== after the signature": lambda: _padded(token(), 2, "=="),
    "= after the payload": lambda: _padded(token(), 1, "="),
    "== after the header": lambda: _padded(token(), 0, "=="),
    "== padding inside the signed payload": lambda: token(
        _odd_payload(2), spell=lambda b: b + "=="
    ),
    "= padding inside the signed payload": lambda: token(_odd_payload(3), spell=lambda b: b + "="),
    "a non-canonical payload spelling": lambda: token(_odd_payload(3), spell=_noncanonical),
}


@pytest.mark.parametrize("name", sorted(BENT))
def test_a_bent_token_is_refused(api: RadnodeProcess, name: str) -> None:
    assert _status(api, BENT[name]()) == 401, name
