"""JWT keys from a JWKS URL: a real HTTP server on 127.0.0.1 serves the key set, which the
tests rotate, break and stop; in-process, and through a `radnode api` process."""

from __future__ import annotations

import json
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from dicomweb.auth import InsecureBinding, check_exposure
from dicomweb.tokens import InvalidToken, JwksKeys, TokenVerifier
from radnode_core.settings import Settings
from tests.support.radnode_process import RadnodeProcess

ISSUER = "https://idp.example/realms/radnode"
AUDIENCE = "radnode"


class JwksServer:
    """Serves ``keys`` as a JWKS at ``url`` and counts the fetches; ``answer`` overrides."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.answer: tuple[int, bytes] | None = None
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                status, body = server.answer or (
                    200,
                    json.dumps({"keys": list(server.keys.values())}).encode(),
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/certs"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def serve(self, **keys: Any) -> None:
        """Publish these private keys' public halves, by kid."""
        self.keys = {kid: jwk(key, kid) for kid, key in keys.items()}

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()


@pytest.fixture
def idp() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.stop()


def jwk(key: Any, kid: str) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        data = json.loads(RSAAlgorithm.to_jwk(public))
    else:
        data = json.loads(ECAlgorithm.to_jwk(public))
    return {**data, "kid": kid, "use": "sig"}


def token(key: Any, kid: str | None, *roles: str, alg: str | None = None) -> str:
    now = time.time()
    claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "iat": now, "roles": list(roles)}
    if alg is None:
        alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the short RSA key's warning
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


def verifier(url: str, **jwks_options: Any) -> TokenVerifier:
    return TokenVerifier(jwks=JwksKeys(url, **jwks_options), issuer=ISSUER, audience=AUDIENCE)


@pytest.fixture(scope="module")
def key_a() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def key_b() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_rotation(
    idp: JwksServer, key_a: rsa.RSAPrivateKey, key_b: ec.EllipticCurvePrivateKey
) -> None:
    idp.serve(a=key_a)
    check = verifier(idp.url, min_refresh_s=0)
    assert check.roles(token(key_a, "a", "viewer")) == {"viewer"}
    assert check.roles(token(key_a, "a", "admin")) == {"admin"}
    assert idp.fetches == 1  # the set is cached

    idp.serve(b=key_b)  # the provider rotates: a new kid makes the verifier fetch again
    assert check.roles(token(key_b, "b", "radiologist")) == {"radiologist"}
    assert idp.fetches == 2
    with pytest.raises(InvalidToken, match="no key 'a' in the JWKS"):
        check.roles(token(key_a, "a", "admin"))  # withdrawn with the rotation
    with pytest.raises(InvalidToken, match="no key 'c' in the JWKS"):
        check.roles(token(key_a, "c", "admin"))
    impostor = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(InvalidToken, match="Signature verification failed"):
        check.roles(token(impostor, "b", "admin"))


def test_unknown_kids_refetch_at_most_once_per_interval(
    idp: JwksServer, key_a: rsa.RSAPrivateKey
) -> None:
    idp.serve(a=key_a)
    check = verifier(idp.url, min_refresh_s=60)
    assert check.roles(token(key_a, "a", "viewer")) == {"viewer"}
    for n in range(5):
        with pytest.raises(InvalidToken, match="no key"):
            check.roles(token(key_a, f"made-up-{n}", "admin"))
    assert idp.fetches == 1


def test_lifespan_refetch(idp: JwksServer, key_a: rsa.RSAPrivateKey) -> None:
    idp.serve(a=key_a)
    check = verifier(idp.url, lifespan_s=0.2, min_refresh_s=0)
    check.roles(token(key_a, "a", "viewer"))
    time.sleep(0.3)  # past the 0.2 s lifespan of the fetched keys
    check.roles(token(key_a, "a", "viewer"))
    assert idp.fetches == 2


def test_provider_down(idp: JwksServer, key_a: rsa.RSAPrivateKey) -> None:
    idp.serve(a=key_a)
    check = verifier(idp.url, min_refresh_s=0)
    assert check.roles(token(key_a, "a", "viewer")) == {"viewer"}
    idp.stop()
    # The keys fetched before still verify; a token under another kid names the failure.
    assert check.roles(token(key_a, "a", "viewer")) == {"viewer"}
    with pytest.raises(InvalidToken, match=f"JWKS fetch from {idp.url} failed: .*refused"):
        check.roles(token(key_a, "new", "viewer"))
    fresh = verifier(idp.url)
    with pytest.raises(InvalidToken, match=f"key 'a' unknown, JWKS fetch from {idp.url} failed"):
        fresh.roles(token(key_a, "a", "viewer"))


@pytest.mark.parametrize(
    "answer",
    [
        (200, b"<html>bad gateway</html>"),
        (503, b"<html>unavailable</html>"),
        (200, b'{"keys": []}'),
        (200, b'{"keys": [{"kty": "RSA", "kid": "a"}]}'),
        (200, b"[]"),
    ],
)
def test_provider_answers_garbage(
    idp: JwksServer, key_a: rsa.RSAPrivateKey, answer: tuple[int, bytes]
) -> None:
    idp.answer = answer
    with pytest.raises(InvalidToken, match="JWKS fetch .* failed"):
        verifier(idp.url).roles(token(key_a, "a", "viewer"))


def test_fetch_timeout(key_a: rsa.RSAPrivateKey) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/certs"
        start = time.monotonic()
        with pytest.raises(InvalidToken, match="JWKS fetch .* failed.*timed out"):
            verifier(url, timeout_s=0.5).roles(token(key_a, "a", "viewer"))
        assert time.monotonic() - start < 5


def test_jwks_keys_are_checked(
    idp: JwksServer, key_a: rsa.RSAPrivateKey, key_b: ec.EllipticCurvePrivateKey
) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    idp.serve(a=key_a, b=key_b, weak=weak)
    check = verifier(idp.url)
    with pytest.raises(InvalidToken, match="JWKS key 'weak' refused: RSA key of 1024 bits"):
        check.roles(token(weak, "weak", "admin"))
    with pytest.raises(InvalidToken, match="does not fit the key"):
        check.roles(token(key_a, "b", "admin"))  # RS256 under the EC key's kid
    with pytest.raises(InvalidToken, match="no kid"):
        check.roles(token(key_a, None, "admin"))
    assert check.roles(token(key_b, "b", "modality")) == {"modality"}


@pytest.mark.parametrize(
    "url", ["http://idp.example/certs", "file:///etc/passwd", "ftp://127.0.0.1/certs", "certs"]
)
def test_jwks_url_must_be_https(url: str) -> None:
    with pytest.raises(ValueError, match="https required"):
        JwksKeys(url)
    with pytest.raises(InsecureBinding, match="jwt_jwks_url unusable: JWKS URL .* https required"):
        check_exposure(Settings.load(auth_enabled=True, jwt_jwks_url=url))


def test_jwks_settings_at_start_up(tmp_path: Path) -> None:
    for url in ("https://idp.example/certs", "http://127.0.0.1:1/certs", "http://[::1]/certs"):
        check_exposure(Settings.load(auth_enabled=True, jwt_jwks_url=url))  # nothing fetched
    key_file = tmp_path / "idp.pem"
    with pytest.raises(InsecureBinding, match="not both"):
        check_exposure(
            Settings.load(
                auth_enabled=True,
                jwt_jwks_url="https://idp.example/certs",
                jwt_public_key_file=key_file,
            )
        )


@pytest.fixture
def jwks_api(tmp_path: Path, idp: JwksServer) -> Iterator[RadnodeProcess]:
    env = {
        "RADNODE_AUTH_ENABLED": "true",
        "RADNODE_JWT_JWKS_URL": idp.url,
        "RADNODE_JWT_ISSUER": ISSUER,
        "RADNODE_JWT_AUDIENCE": AUDIENCE,
    }
    node = RadnodeProcess(tmp_path / "data", "api", env=env).start()
    yield node
    node.stop()


def test_jwks_on_the_server(
    jwks_api: RadnodeProcess, idp: JwksServer, key_a: rsa.RSAPrivateKey
) -> None:
    url = f"http://127.0.0.1:{jwks_api.http_port}/dicom-web/studies"

    def call(bearer: str | None) -> int:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        return httpx.get(url, headers=headers).status_code

    idp.serve(a=key_a)
    viewer = token(key_a, "a", "viewer")
    assert call(None) == 401
    assert call(viewer) == 200
    assert call(token(key_a, "a", "modality")) == 403
    assert call(token(key_a, "unknown", "viewer")) == 401
    idp.stop()
    assert call(token(key_a, "a", "viewer")) == 200  # the keys fetched before
    assert call(token(key_a, "other", "viewer")) == 401  # refused, not a 500
    assert jwks_api.proc is not None and jwks_api.proc.poll() is None
    assert viewer not in jwks_api.log()
