"""OHIF on radnode's own origin with authentication on: the viewer session's cookie lets OHIF
read /viewer/dicom-web/ as the signed-in user; without it, 401 and no pixels; the token
reaches neither the access log nor the audit log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dicomweb.app import create_app
from tests.support.viewer import (
    ADMIN,
    RADIOLOGIST,
    VIEWER,
    Analysed,
    make_node,
    records_mentioning,
    stand_in_ohif,
)
from viewer_plugin.ohif.session import COOKIE, encode

PNG = b"\x89PNG"


@pytest.fixture
def client(analysed: Analysed, tmp_path: Path):
    analysed.node.settings.ohif_dir = stand_in_ohif(tmp_path / "dist")
    with TestClient(create_app(analysed.node), base_url="http://127.0.0.1") as c:
        yield c


def _rendered(a: Analysed) -> str:
    row = a.node.index.find_instance(a.sop_instance_uids[0])
    assert row is not None
    return (
        f"/viewer/dicom-web/studies/{a.study_uid}/series/{row['series_uid']}"
        f"/instances/{a.sop_instance_uids[0]}/rendered"
    )


def test_session_cookie_is_httponly_strict_and_scoped(client: TestClient) -> None:
    assert client.post("/api/viewer-session").status_code == 401
    bad = client.post("/api/viewer-session", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and "set-cookie" not in bad.headers
    r = client.post("/api/viewer-session", headers={"Authorization": f"Bearer {RADIOLOGIST}"})
    assert r.status_code == 204 and not r.content
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={encode(RADIOLOGIST)};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Path=/viewer/dicom-web" in cookie and RADIOLOGIST not in cookie
    assert "Secure" not in cookie  # plain http here
    gone = client.delete("/api/viewer-session").headers["set-cookie"]
    assert gone.startswith(f"{COOKIE}=;") and "Max-Age=0" in gone


def test_viewer_reads_pixels_with_the_session_and_nothing_without(
    analysed: Analysed, client: TestClient
) -> None:
    url = _rendered(analysed)
    refused = client.get(url, headers={"Accept": "image/png"})
    assert refused.status_code == 401 and PNG not in refused.content
    assert refused.headers["cache-control"] == "no-store"

    client.post("/api/viewer-session", headers={"Authorization": f"Bearer {VIEWER}"})
    image = client.get(url, headers={"Accept": "image/png"})
    assert image.status_code == 200 and image.content.startswith(PNG)
    assert image.headers["cache-control"] == "no-store"

    client.cookies.set(COOKIE, encode("forged-token"), path="/viewer/dicom-web")
    assert client.get(url, headers={"Accept": "image/png"}).status_code == 401
    client.cookies.set(COOKIE, "%%%not base64", path="/viewer/dicom-web")
    assert client.get(url, headers={"Accept": "image/png"}).status_code == 401


def test_the_session_never_writes(analysed: Analysed, client: TestClient) -> None:
    before = analysed.node.index.counts()["instances"]
    client.post("/api/viewer-session", headers={"Authorization": f"Bearer {ADMIN}"})
    stow = client.post(
        f"/viewer/dicom-web/studies/{analysed.study_uid}",
        content=b"--x--",
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=x'},
    )
    assert stow.status_code == 405
    assert analysed.node.index.counts()["instances"] == before


def test_token_reaches_neither_access_log_nor_audit_log(
    analysed: Analysed, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        client.post("/api/viewer-session", headers={"Authorization": f"Bearer {RADIOLOGIST}"})
        assert client.get(_rendered(analysed)).status_code == 200
        assert client.get(f"/viewer/dicom-web/studies/{analysed.study_uid}/metadata").is_success
    accessed = [r for r in caplog.records if r.name == "dicomweb.access"]
    assert any(getattr(r, "path", "").startswith("/viewer/dicom-web/") for r in accessed)
    audit_dir = analysed.node.settings.data_dir / "audit"
    audit = "".join(p.read_text() for p in sorted(audit_dir.glob("audit-*.log")))
    assert analysed.study_uid in audit and "Doe^Jane" in audit  # the retrieval, by whom
    for secret in (RADIOLOGIST, encode(RADIOLOGIST)):
        assert records_mentioning(caplog.records, secret) == []
        assert secret not in audit


def test_viewer_pages_are_framed_by_this_origin_only(client: TestClient) -> None:
    page = client.get("/viewer/viewer?StudyInstanceUIDs=1.2.3")
    assert page.status_code == 200 and 'src="/viewer/app-config.js"' in page.text
    assert page.headers["content-security-policy"] == "frame-ancestors 'self'"
    assert page.headers["x-frame-options"] == "SAMEORIGIN"
    assert client.get("/viewer", follow_redirects=False).headers["location"] == "/viewer/"
    ui = client.get("/ui/review.html").headers["content-security-policy"]
    assert "frame-src 'self'" in ui
    me = client.get("/api/whoami", headers={"Authorization": f"Bearer {RADIOLOGIST}"}).json()
    assert me["ohif_url"] == "/viewer"


def test_without_ohif_dir_there_is_no_viewer(tmp_path: Path) -> None:
    node = make_node(tmp_path / "data", auth=False)
    try:
        with TestClient(create_app(node)) as c:
            assert c.get("/viewer/").status_code == 404
            assert c.get("/api/whoami").json()["ohif_url"] is None
            assert "frame-src 'none'" in c.get("/ui/").headers["content-security-policy"]
            open_session = c.post("/api/viewer-session")  # auth off: nothing to carry
            assert open_session.status_code == 204 and "set-cookie" not in open_session.headers
    finally:
        node.close()
