"""Every kind of SR radnode writes opens in the real OHIF that radnode serves at /viewer/:
the AI SR of a positive study (its finding drawn on the slice it names), of a negative one
and of an out-of-scope one, the verified SR of a confirmation and the amended SR of a
relabel. None reaches OHIF's error boundary; a screenshot of each is kept."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import httpx
import pytest

from ai_node.synth import StudySpec
from dicomweb.app import create_app
from tests.support.browser import chromium, serve, wait
from tests.support.viewer import CANVAS_HAS_PIXELS_JS, RADIOLOGIST, analyse_studies, make_node

ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"

CURRENT_IMAGE_JS = """
try {
  const s = window.services;
  const id = s.viewportGridService.getActiveViewportId();
  const vp = s.cornerstoneViewportService.getCornerstoneViewport(id);
  return vp ? vp.getCurrentImageId() || null : null;
} catch (e) { return null; }
"""
"""The image id of the active viewport's current image (OHIF's services, on window)."""

DRAWN_SHAPES_JS = """
return document.querySelectorAll(
  'svg.svg-layer line, svg.svg-layer path, svg.svg-layer polyline, svg.svg-layer polygon, ' +
  'svg.svg-layer circle, svg.svg-layer ellipse, svg.svg-layer rect'
).length;
"""
"""How many annotation shapes cornerstone's SVG layer draws over the viewport."""


def _sr_series(base: str, study_uid: str) -> dict[int, str]:
    """Series Number -> Series Instance UID of the study's SR series (QIDO-RS)."""
    r = httpx.get(
        f"{base}/dicom-web/studies/{study_uid}/series",
        params={"Modality": "SR"},
        headers={"Accept": "application/dicom+json", "Authorization": f"Bearer {RADIOLOGIST}"},
        timeout=30,
    )
    r.raise_for_status()
    return {int(s["00200011"]["Value"][0]): s["0020000E"]["Value"][0] for s in r.json()}


def _region_image(node, study_uid: str, series_uid: str) -> tuple[str, str]:
    """(graphic type, referenced SOP Instance UID) of the SR's TID 1410 group."""
    [row] = [i for i in node.index.instances_of_study(study_uid) if i["series_uid"] == series_uid]
    sr = node.store.open_dataset(row["path"])
    [roi] = hd.sr.MeasurementReport.from_sequence([sr]).get_planar_roi_measurement_groups()
    region = roi.roi
    assert region is not None
    ref = region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    return region.GraphicType, str(ref)


def test_every_sr_radnode_writes_opens_in_ohif(tmp_path, shipped_models) -> None:
    from selenium.webdriver.common.by import By

    from viewer_plugin.ohif.dist import default_dist
    from viewer_plugin.ohif.session import COOKIE, encode

    dist = default_dist()
    if not (dist / "index.html").is_file():
        pytest.fail(f"OHIF is not fetched ({dist}): run `make ohif`")
    node = make_node(tmp_path / "data", auth=True, ohif_dir=dist.resolve())
    positive, negative, head = analyse_studies(
        node,
        shipped_models,
        tmp_path / "in",
        [
            StudySpec(region="chest", slices=16, nodules=2, seed=3, rows=128, columns=128),
            StudySpec(region="chest", slices=16, nodules=0, seed=21, rows=128, columns=128),
            StudySpec(region="head", slices=12, seed=4, rows=128, columns=128),
        ],
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    auth = {"Authorization": f"Bearer {RADIOLOGIST}"}
    try:
        with serve(create_app(node)) as base:
            for uid, body in (
                (positive, {"decision": "confirm"}),
                (negative, {"decision": "relabel", "label": "lesion"}),
            ):
                r = httpx.post(
                    f"{base}/api/studies/{uid}/feedback", json=body, headers=auth, timeout=60
                )
                assert r.status_code in (200, 201), r.text
            located = httpx.get(
                f"{base}/api/studies/{positive}/result", headers=auth, timeout=30
            ).json()["details"]["location"]
            cases = [
                ("ai-positive", positive, _sr_series(base, positive)[9901]),
                ("verified", positive, _sr_series(base, positive)[9902]),
                ("ai-negative", negative, _sr_series(base, negative)[9901]),
                ("amended", negative, _sr_series(base, negative)[9902]),
                ("ai-out-of-scope", head, _sr_series(base, head)[9901]),
            ]
            with chromium(tmp_path / "profile") as driver:
                driver.get(f"{base}/viewer/app-config.js")
                driver.add_cookie(
                    {"name": COOKIE, "value": encode(RADIOLOGIST), "path": "/viewer/dicom-web"}
                )
                for kind, uid, series in cases:
                    graphic, image = _region_image(node, uid, series)
                    marked = kind in ("ai-positive", "verified")
                    assert graphic == ("POINT" if marked else "POLYLINE")
                    if marked:  # the finding's mark is on its driving slice
                        assert image == located["sop_instance_uid"]
                    driver.get(
                        f"{base}/viewer/viewer?StudyInstanceUIDs={uid}"
                        f"&initialSeriesInstanceUID={series}"
                    )
                    # the SR's group is drawn on the image it references
                    wait(driver, lambda d: d.execute_script(CANVAS_HAS_PIXELS_JS), 180)
                    wait(
                        driver,
                        lambda d, image=image: image in (d.execute_script(CURRENT_IMAGE_JS) or ""),
                        120,
                    )
                    wait(driver, lambda d: d.execute_script(DRAWN_SHAPES_JS) > 0, 120)
                    for tour in driver.find_elements(By.XPATH, "//*[text()='Skip all']"):
                        tour.click()  # OHIF's first-run tour, over the viewport
                    driver.save_screenshot(str(ARTIFACTS / f"ohif-sr-{kind}.png"))
                    errors = driver.find_elements(
                        By.XPATH, "//*[contains(text(), 'Something went wrong')]"
                    )
                    assert not errors, f"{kind}: OHIF's error boundary"
    finally:
        node.close()
