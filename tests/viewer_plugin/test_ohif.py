"""OHIF (npm @ohif/app's prebuilt dist) served at /viewer/: rebased for that path, on its own
origin (``radnode viewer``) with a proxy to radnode that reads as the session's user; the
real viewer renders a study with its SR, with a screenshot kept as a test artifact."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from ai_node.synth import StudySpec
from dicomweb.app import create_app
from tests.support.browser import chromium, serve, wait
from tests.support.viewer import RADIOLOGIST, analyse_studies, make_node, stand_in_ohif
from viewer_plugin.ohif.config import app_config_js
from viewer_plugin.ohif.dist import default_dist, rebase_bundle, rebase_index
from viewer_plugin.ohif.server import create_ohif_app
from viewer_plugin.ohif.session import COOKIE, encode

ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"


def real_dist() -> Path:
    dist = default_dist()
    if not (dist / "index.html").is_file():
        pytest.fail(f"OHIF is not fetched ({dist}): run `make ohif`")
    return dist


def test_app_config_points_at_the_viewers_dicomweb() -> None:
    js = app_config_js("/viewer")
    assert 'window.location.origin + "/viewer/dicom-web"' in js
    assert 'routerBasename: "/viewer"' in js
    assert "qidoRoot: root" in js and "imageRendering: 'wadors'" in js
    assert 'routerBasename: "/"' in app_config_js("")


def test_index_and_bundles_are_rebased_under_the_prefix() -> None:
    html = (
        b'<link rel="manifest" href="/manifest.json"><script>window.PUBLIC_URL="/"</script>'
        b'<script src="/app-config.js"></script><a href="//cdn.example/x">'
        b'<script defer src="/app.bundle.1.js"></script>'
    )
    rebased = rebase_index(html, "/viewer")
    assert b'href="/viewer/manifest.json"' in rebased
    assert b'src="/viewer/app-config.js"' in rebased and b'src="/viewer/app.bundle.1.js"' in rebased
    assert b'window.PUBLIC_URL="/viewer/"' in rebased
    assert b'href="//cdn.example/x"' in rebased  # another host's link is left alone
    js = b'x;__webpack_require__.p = "/";y'
    assert rebase_bundle(js, "/viewer/") == b'x;__webpack_require__.p = "/viewer/";y'


@pytest.fixture
def stack(request, tmp_path: Path, shipped_models):
    """radnode with authentication on and an analysed study, and OHIF on its own origin."""
    if request.param == "fake":
        dist = stand_in_ohif(tmp_path / "dist")
    else:
        dist = real_dist()
    node = make_node(tmp_path / "data", auth=True)
    [uid] = analyse_studies(
        node,
        shipped_models,
        tmp_path / "in",
        [StudySpec(region="chest", slices=16, nodules=2, seed=3, rows=128, columns=128)],
    )
    with serve(create_app(node)) as radnode_url:
        ohif = create_ohif_app(dist, radnode_url)
        with serve(ohif) as ohif_url:
            yield uid, radnode_url, ohif_url, ohif
    node.close()


@pytest.mark.parametrize("stack", ["fake"], indirect=True)
def test_own_origin_serves_rebased_viewer_and_proxies_reads_as_the_session_user(stack) -> None:
    uid, _, ohif_url, ohif = stack
    accept = {"Accept": "application/dicom+json"}
    with httpx.Client(base_url=ohif_url, timeout=30) as c:
        assert c.get("/").headers["location"] == "/viewer/"
        assert "/viewer/dicom-web" in c.get("/viewer/app-config.js").text
        assert "/viewer/dicom-web" in c.get("/app-config.js").text  # the probes' path
        page = c.get(f"/viewer/viewer?StudyInstanceUIDs={uid}")  # OHIF's own route
        assert page.status_code == 200 and 'src="/viewer/app-config.js"' in page.text
        assert c.get("/viewer/app.bundle.js").text.endswith('p = "/viewer/";')
        assert c.get("/viewer/logo.svg").text == "<svg/>"

        assert c.get("/viewer/dicom-web/studies", headers=accept).status_code == 401
        c.cookies.set(COOKIE, encode(RADIOLOGIST), domain="127.0.0.1", path="/viewer/dicom-web")
        studies = c.get("/viewer/dicom-web/studies", headers=accept)
        assert studies.status_code == 200, studies.text
        assert [s["0020000D"]["Value"][0] for s in studies.json()] == [uid]
        c.cookies.clear()
        c.cookies.set(COOKIE, encode("not-a-token"), domain="127.0.0.1", path="/viewer/dicom-web")
        assert c.get("/viewer/dicom-web/studies", headers=accept).status_code == 401
        # writes never go through the viewer's proxy, whatever the credentials
        stow = c.post(
            "/viewer/dicom-web/studies",
            content=b"x",
            headers={"Authorization": f"Bearer {RADIOLOGIST}", "Content-Type": "application/dicom"},
        )
        assert stow.status_code == 405
    assert ohif.state.proxied == 3


@pytest.mark.parametrize("stack", ["real"], indirect=True)
def test_ohif_renders_the_study_with_its_sr(stack, tmp_path) -> None:
    from selenium.webdriver.common.by import By

    from tests.support.viewer import CANVAS_HAS_PIXELS_JS

    uid, _, ohif_url, ohif = stack
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium(tmp_path / "profile") as driver:
        # the session cookie the review page would get, set on the viewer's DICOMweb path
        driver.get(f"{ohif_url}/viewer/app-config.js")
        driver.add_cookie(
            {"name": COOKIE, "value": encode(RADIOLOGIST), "path": "/viewer/dicom-web"}
        )
        driver.get(f"{ohif_url}/viewer/viewer?StudyInstanceUIDs={uid}")
        # a viewport canvas with pixels drawn, and the SR series in the study browser
        wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "canvas.cornerstone-canvas"), 120)
        wait(driver, lambda d: re.search(r"\bSR\b", d.find_element(By.TAG_NAME, "body").text), 120)
        wait(driver, lambda d: d.execute_script(CANVAS_HAS_PIXELS_JS), 120)
        driver.save_screenshot(str(ARTIFACTS / "ohif-study.png"))
    assert ohif.state.proxied > 0
