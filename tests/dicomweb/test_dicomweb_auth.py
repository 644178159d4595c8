"""Authentication and roles on every route of the OpenAPI spec; CORS; the insecure-bind refusal."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import free_port
from tests.support.radnode_process import RADNODE, REPO, RadnodeProcess
from tests.support.wait import wait_for

TOKENS = {"t-admin": "admin", "t-rad": "radiologist", "t-mod": "modality", "t-view": "viewer"}
ROLE_TOKEN = {role: token for token, role in TOKENS.items()}
VIEWER_ORIGIN = "http://viewer.example"
READ = {"admin", "radiologist", "viewer"}
STORE = {"admin", "radiologist", "modality"}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadnodeProcess]:
    root = tmp_path_factory.mktemp("dicomweb-auth")
    env = {
        "RADNODE_AUTH_ENABLED": "true",
        "RADNODE_API_TOKENS": json.dumps(TOKENS),
        "RADNODE_CORS_ORIGINS": json.dumps([VIEWER_ORIGIN]),
    }
    node = RadnodeProcess(root / "data", "api", env=env).start()
    yield node
    node.stop()


def allowed_roles(method: str, path: str) -> set[str] | None:
    """Roles that may call the route; None: open to all. (/api writes: the AI node decides.)"""
    if path in ("/livez", "/healthz", "/readyz"):  # probes (orchestrators send no token)
        return None
    if path == "/api/viewer-session" and method == "DELETE":  # sign-out only clears a cookie,
        return None  # so it works with an expired token
    # labels: studies released for training; monitoring: the dashboard's data
    if path in ("/metrics", "/api/retraining/labels", "/api/monitoring"):
        return {"admin"}
    if path.startswith(("/api/retraining/", "/api/models")):  # runs and model versions
        return {"admin", "radiologist"}
    if (method == "DELETE" and "/studies/" in path) or path == "/api/retention":  # deletion
        return {"admin"}
    if path.startswith("/api/upload/"):  # the upload page stores
        return STORE
    if path.startswith("/dicom-web") and method == "POST":
        return STORE
    if path.startswith("/api/pacs/") and method == "POST":  # a PACS's plugin notifies
        return STORE
    return READ


def concrete(path: str) -> str:
    fill = {"frames": "1", "tag": "7FE00010"}
    out = []
    for piece in path.split("/"):
        if piece.startswith("{") and piece.endswith("}"):
            out.append(fill.get(piece[1:-1], "1.2.826.0.1.3680043.8.498.1"))
        else:
            out.append(piece)
    return "/".join(out)


def test_every_route(secured: RadnodeProcess) -> None:
    base = f"http://127.0.0.1:{secured.http_port}"
    spec = httpx.get(f"{base}/openapi.json").json()
    routes = [(m.upper(), p) for p, ops in spec["paths"].items() for m in ops]
    assert len(routes) >= 25
    for method, path in routes:
        url = base + concrete(path)
        allowed = allowed_roles(method, path)
        if allowed is None:
            assert httpx.request(method, url).status_code in (200, 204), path
            continue
        assert httpx.request(method, url).status_code == 401, (method, path)
        bad = httpx.request(method, url, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401, (method, path)
        for role, token in ROLE_TOKEN.items():
            response = httpx.request(method, url, headers={"Authorization": f"Bearer {token}"})
            if path.startswith("/api") and method != "GET" and role != "modality":
                assert response.status_code != 401, (method, path, role)  # AI node's call
            elif role in allowed:
                assert response.status_code not in (401, 403), (method, path, role)
            else:
                assert response.status_code == 403, (method, path, role, response.status_code)


def test_cors_preflight(secured: RadnodeProcess) -> None:
    url = f"http://127.0.0.1:{secured.http_port}/dicom-web/studies"
    preflight = httpx.options(
        url,
        headers={
            "Origin": VIEWER_ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == VIEWER_ORIGIN
    response = httpx.get(url, headers={"Origin": VIEWER_ORIGIN, "Authorization": "Bearer t-view"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == VIEWER_ORIGIN
    other = httpx.get(
        url, headers={"Origin": "http://evil.example", "Authorization": "Bearer t-view"}
    )
    assert "access-control-allow-origin" not in other.headers


def _log_with(node: RadnodeProcess, text: str) -> str | None:
    log = node.log()
    return log if text in log else None


def test_no_patient_names_in_access_log(secured: RadnodeProcess) -> None:
    url = f"http://127.0.0.1:{secured.http_port}/dicom-web/studies?PatientName=Secret^Person"
    assert httpx.get(url, headers={"Authorization": "Bearer t-view"}).status_code == 200
    # The line is written once the response is out: wait for it (bounded), then look.
    log = wait_for(lambda: _log_with(secured, "PatientName"), timeout=20,
                   what="the access log line", interval=0.05)
    assert "PatientName" in log  # the parameter's name is logged
    assert "Secret" not in log
    assert "t-view" not in log  # nor any token


@pytest.mark.parametrize("role", ["api", "serve"])
def test_open_non_loopback_bind_refused(tmp_path: Path, role: str) -> None:
    command = [*RADNODE, role, "--data-dir", str(tmp_path / "data"), "--host", "0.0.0.0",
               "--http-port", str(free_port()), "--dicom-port", str(free_port())]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "without authentication" in result.stderr
    assert not (tmp_path / "data").exists()  # refused before anything started


def test_auth_without_tokens_refused(tmp_path: Path) -> None:
    command = [*RADNODE, "api", "--data-dir", str(tmp_path / "data"),
               "--http-port", str(free_port())]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "RADNODE_AUTH_ENABLED": "true"})
    assert result.returncode == 2
    assert "api_tokens" in result.stderr
