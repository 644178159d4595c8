"""JWT verification (dicomweb.tokens) in-process, and a JWT-protected `radnode api`."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from dicomweb.tokens import InvalidToken, TokenVerifier
from tests.support.radnode_process import RadnodeProcess

ISSUER = "https://idp.example/realms/radnode"
AUDIENCE = "radnode"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(key: Any, claims: dict[str, Any], alg: str = "RS256") -> str:
    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    data = f"{head}.{body}".encode()
    if alg == "none":
        return f"{head}.{body}."
    if alg.startswith("RS"):
        signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    elif alg.startswith("PS"):
        signature = key.sign(
            data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256()
        )
    else:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{head}.{body}.{b64(signature)}"


def pem(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims(**extra: Any) -> dict[str, Any]:
    now = time.time()
    return {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "iat": now, "sub": "u1", **extra}


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_verifier(rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = TokenVerifier(pem(rsa_key), issuer=ISSUER, audience=AUDIENCE)
    assert verifier.roles(sign(rsa_key, claims(roles=["viewer"]))) == {"viewer"}
    assert verifier.roles(sign(rsa_key, claims(roles="admin"), "PS256")) == {"admin"}
    nested = TokenVerifier(pem(rsa_key), roles_claim="realm_access.roles")
    token = sign(rsa_key, claims(realm_access={"roles": ["radiologist", "offline_access"]}))
    assert nested.roles(token) == {"radiologist", "offline_access"}

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bad = [
        sign(other, claims(roles=["admin"])),  # another key
        sign(rsa_key, claims(roles=["admin"], exp=time.time() - 3600)),  # expired
        sign(rsa_key, {k: v for k, v in claims(roles=["admin"]).items() if k != "exp"}),
        sign(rsa_key, claims(roles=["admin"], iss="https://evil.example")),
        sign(rsa_key, claims(roles=["admin"], aud="someone-else")),
        sign(rsa_key, claims(roles=["admin"], nbf=time.time() + 3600)),
        sign(rsa_key, claims(roles=["admin"]), "none"),
        "a.b.c",
        "not-a-jwt",
    ]
    for token in bad:
        with pytest.raises(InvalidToken):
            verifier.roles(token)
    # HS256 signed with the public key as secret (the classic confusion) is refused.
    import hmac

    head = b64(json.dumps({"alg": "HS256"}).encode())
    body = b64(json.dumps(claims(roles=["admin"])).encode())
    mac = hmac.new(pem(rsa_key), f"{head}.{body}".encode(), "sha256").digest()
    with pytest.raises(InvalidToken):
        verifier.roles(f"{head}.{body}.{b64(mac)}")


def test_ec_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    verifier = TokenVerifier(pem(key))
    assert verifier.roles(sign(key, claims(roles=["modality"]), "ES256")) == {"modality"}
    with pytest.raises(InvalidToken):
        verifier.roles(sign(rsa.generate_private_key(65537, 2048), claims(roles=["x"])))


@pytest.fixture(scope="module")
def jwt_api(
    tmp_path_factory: pytest.TempPathFactory, rsa_key: rsa.RSAPrivateKey
) -> Iterator[RadnodeProcess]:
    root = tmp_path_factory.mktemp("dicomweb-jwt")
    key_file = root / "idp.pem"
    key_file.write_bytes(pem(rsa_key))
    env = {
        "RADNODE_AUTH_ENABLED": "true",
        "RADNODE_JWT_PUBLIC_KEY_FILE": str(key_file),
        "RADNODE_JWT_ISSUER": ISSUER,
        "RADNODE_JWT_AUDIENCE": AUDIENCE,
        "RADNODE_JWT_ROLES_CLAIM": "realm_access.roles",
    }
    node = RadnodeProcess(root / "data", "api", env=env).start()
    yield node
    node.stop()


def test_jwt_roles_on_the_server(jwt_api: RadnodeProcess, rsa_key: rsa.RSAPrivateKey) -> None:
    url = f"http://127.0.0.1:{jwt_api.http_port}/dicom-web/studies"

    def call(token: str | None, method: str = "GET") -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if method == "POST":
            headers["Content-Type"] = 'multipart/related; type="application/dicom"; boundary=b'
            return httpx.post(url, headers=headers, content=b"--b--\r\n").status_code
        return httpx.get(url, headers=headers).status_code

    def token(*roles: str, **extra: Any) -> str:
        return sign(rsa_key, claims(realm_access={"roles": list(roles)}, **extra))

    assert call(None) == 401
    assert call(token("viewer")) == 200
    assert call(token("modality")) == 403
    assert call(token("offline_access")) == 403  # authenticated, no role of ours
    assert call(token("viewer", exp=time.time() - 3600)) == 401
    assert call(token("modality"), "POST") == 400  # allowed to store; the body is empty
    assert call(token("viewer"), "POST") == 403
    assert token("viewer") not in jwt_api.log()


def test_unusable_key_refused(tmp_path: Path) -> None:
    import os
    import subprocess

    from tests.support.processes import free_port
    from tests.support.radnode_process import RADNODE, REPO

    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    result = subprocess.run(
        [*RADNODE, "api", "--data-dir", str(tmp_path / "d"), "--http-port", str(free_port())],
        cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**os.environ, "RADNODE_AUTH_ENABLED": "true",
             "RADNODE_JWT_PUBLIC_KEY_FILE": str(bad)},
    )
    assert result.returncode == 2 and "jwt_public_key_file" in result.stderr


def sign_as(key: Any, claims: dict[str, Any], header: dict[str, Any]) -> str:
    """Signed with ``key`` and the hash ``header["alg"]`` names, whether or not they fit."""
    digest = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[
        header["alg"][2:]
    ]
    data = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(data.encode(), padding.PKCS1v15(), digest)
    else:
        r, s = decode_dss_signature(key.sign(data.encode(), ec.ECDSA(digest)))
        size = (key.curve.key_size + 7) // 8
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return f"{data}.{b64(signature)}"


def test_algorithm_must_fit_the_key(rsa_key: rsa.RSAPrivateKey) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1())
    body = claims(roles=["admin"])
    assert TokenVerifier(pem(p384)).roles(sign_as(p384, body, {"alg": "ES384"})) == {"admin"}
    assert TokenVerifier(pem(rsa_key)).roles(sign_as(rsa_key, body, {"alg": "RS512"})) == {"admin"}
    refused = [
        (rsa_key, sign_as(p256, body, {"alg": "ES256"})),  # EC algorithm, RSA key
        (p256, sign_as(p256, body, {"alg": "ES384"})),  # P-256 key used with SHA-384
        (p256, sign_as(p256, body, {"alg": "ES512"})),
        (p384, sign_as(p384, body, {"alg": "ES256"})),
        (p256, sign_as(rsa_key, body, {"alg": "RS256"})),  # RSA algorithm, EC key
        (p256, sign(rsa_key, body, "PS256")),
    ]
    for key, token in refused:
        with pytest.raises(InvalidToken, match="does not fit the key"):
            TokenVerifier(pem(key)).roles(token)


def test_unknown_critical_extension_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = TokenVerifier(pem(rsa_key))
    body = claims(roles=["viewer"])
    assert verifier.roles(sign_as(rsa_key, body, {"alg": "RS256", "x-ext": 1})) == {"viewer"}
    for header in (
        {"alg": "RS256", "crit": ["x-ext"], "x-ext": 1},
        {"alg": "RS256", "crit": ["b64"], "b64": True},
        {"alg": "RS256", "crit": []},
        {"alg": "RS256", "crit": "x-ext"},
    ):
        with pytest.raises(InvalidToken, match="crit"):
            verifier.roles(sign_as(rsa_key, body, header))


def test_rsa_key_under_2048_bits_refused(tmp_path: Path) -> None:
    from dicomweb.auth import InsecureBinding, check_exposure
    from radnode_core.settings import Settings

    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="1024 bits: at least 2048"):
        TokenVerifier(pem(small))
    key_file = tmp_path / "small.pem"
    key_file.write_bytes(pem(small))
    with pytest.raises(ValueError, match="at least 2048"):
        TokenVerifier.from_file(key_file)
    settings = Settings.load(auth_enabled=True, jwt_public_key_file=key_file)
    with pytest.raises(InsecureBinding, match="jwt_public_key_file unusable: RSA key of 1024"):
        check_exposure(settings)
    with pytest.raises(ValueError, match="P-256, P-384 or P-521"):
        TokenVerifier(pem(ec.generate_private_key(ec.SECP256K1())))


def test_malformed_tokens_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = TokenVerifier(pem(rsa_key))
    body = b64(json.dumps(claims(roles=["admin"])).encode())
    good = sign(rsa_key, claims(roles=["admin"]))
    for token in (
        "",
        "..",
        f"{b64(b'[1]')}.{body}.AAAA",
        f"{b64(b'{')}.{body}.AAAA",
        f"{b64(json.dumps({'alg': ['RS256']}).encode())}.{body}.AAAA",
        f"{b64(json.dumps({'alg': 'RS256', 'kid': 7}).encode())}.{body}.AAAA",
        good.rsplit(".", 1)[0] + ".!!!",
        sign(rsa_key, claims(roles=["admin"], exp="9999999999")),  # a string, not a NumericDate
        sign(rsa_key, claims(roles=["admin"], iat=time.time() + 3600)),
    ):
        with pytest.raises(InvalidToken):
            verifier.roles(token)
