"""OHIF (npm @ohif/app's prebuilt dist) served beside radnode: it lists and renders a study
through the same-origin /dicom-web/ proxy; a screenshot is kept as a test artifact."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from ai_node.synth import StudySpec
from dicomweb.app import create_app
from tests.support.browser import chromium, serve, wait
from tests.support.viewer import analyse_studies, make_node
from viewer_plugin.ohif.config import app_config_js
from viewer_plugin.ohif.server import create_ohif_app, default_dist

ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"


def _dist() -> Path:
    dist = default_dist()
    if not (dist / "index.html").is_file():
        pytest.fail(f"OHIF is not fetched ({dist}): run `make ohif`")
    return dist


def test_app_config_points_at_the_same_origin_dicomweb() -> None:
    js = app_config_js()
    assert 'window.location.origin + "/dicom-web"' in js
    assert "qidoRoot: root" in js and "imageRendering: 'wadors'" in js


@pytest.fixture
def fake_dist(tmp_path: Path) -> Path:
    """A stand-in for OHIF's dist/ (the default suite does not need `make ohif`)."""
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text('<script src="/app-config.js"></script>')
    (dist / "app.bundle.js").write_text("/* bundle */")
    return dist


@pytest.fixture
def stack(request, tmp_path: Path, shipped_models):
    dist = request.getfixturevalue("fake_dist") if request.param == "fake" else _dist()
    node = make_node(tmp_path / "data", auth=False)
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
def test_ohif_serves_config_spa_fallback_and_proxy(stack) -> None:
    uid, _, ohif_url, _ = stack
    with httpx.Client(base_url=ohif_url, timeout=30) as c:
        assert "radnode" in c.get("/app-config.js").text
        page = c.get("/viewer?StudyInstanceUIDs=" + uid)
        assert page.status_code == 200 and "app-config.js" in page.text
        assert c.get("/app.bundle.js").text == "/* bundle */"
        studies = c.get("/dicom-web/studies", headers={"Accept": "application/dicom+json"})
        assert studies.status_code == 200
        assert [s["0020000D"]["Value"][0] for s in studies.json()] == [uid]


@pytest.mark.slow
@pytest.mark.parametrize("stack", ["real"], indirect=True)
def test_ohif_renders_the_study_with_its_sr(stack, tmp_path) -> None:
    from selenium.webdriver.common.by import By

    uid, _, ohif_url, ohif = stack
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium(tmp_path / "profile") as driver:
        driver.get(f"{ohif_url}/viewer?StudyInstanceUIDs={uid}")
        # a viewport canvas with pixels drawn, and the SR series in the study browser
        wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "canvas.cornerstone-canvas"), 120)
        wait(driver, lambda d: re.search(r"\bSR\b", d.find_element(By.TAG_NAME, "body").text), 120)
        wait(
            driver,
            lambda d: d.execute_script(
                "const c = document.querySelector('canvas.cornerstone-canvas');"
                "if (!c || !c.width) return false;"
                "const x = document.createElement('canvas');"
                "x.width = c.width; x.height = c.height;"
                "const g = x.getContext('2d'); g.drawImage(c, 0, 0);"
                "const p = g.getImageData(0, 0, c.width, c.height).data;"
                "for (let i = 0; i < p.length; i += 4 * 97) if (p[i] > 20) return true;"
                "return false;"
            ),
            120,
        )
        driver.save_screenshot(str(ARTIFACTS / "ohif-study.png"))
    assert ohif.state.proxied > 0
