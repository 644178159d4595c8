"""The worklist and review pages in a real headless Chromium: sign in, triage order, the AI
panel, Relabel; then the amended SR is found by QIDO-RS / WADO-RS on radnode's DICOMweb.
The layout at 1280x800, the keyboard shortcuts, and the viewer embedded from /viewer/ on the
same origin reading DICOMweb as the signed-in user (authentication on)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from ai_node.synth import StudySpec
from dicomweb.app import create_app
from tests.support.browser import chromium, serve, wait
from tests.support.viewer import (
    HORIZONTAL_OVERFLOW_JS,
    RADIOLOGIST,
    analyse_studies,
    make_node,
    set_viewport,
    stand_in_ohif,
)

VERIFICATION_FLAG = "0040A493"
PREDECESSOR_DOCUMENTS = "0040A360"


@pytest.fixture
def edge(tmp_path: Path, shipped_models):
    node = make_node(tmp_path / "data", auth=True, ohif_dir=stand_in_ohif(tmp_path / "ohif"))
    uids = analyse_studies(
        node,
        shipped_models,
        tmp_path / "in",
        [
            StudySpec(region="chest", slices=16, nodules=0, seed=21, rows=128, columns=128),
            StudySpec(region="chest", slices=16, nodules=2, seed=3, rows=128, columns=128),
        ],
    )
    with serve(create_app(node)) as base:
        yield node, uids, base
    node.close()


def test_worklist_review_relabel_then_amended_sr_by_qido(edge, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    node, uids, base = edge
    auth = {"Authorization": f"Bearer {RADIOLOGIST}"}
    with chromium(tmp_path / "profile") as driver:
        driver.get(f"{base}/ui/")
        token_box = wait(
            driver,
            lambda d: (
                d.find_element(By.ID, "token").is_displayed() and d.find_element(By.ID, "token")
            ),
        )
        token_box.send_keys(RADIOLOGIST)
        driver.find_element(By.ID, "signin-go").click()
        wait(
            driver,
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "true",
        )
        assert "Doe^Jane" in driver.find_element(By.ID, "who").text
        rows = driver.find_elements(By.CSS_SELECTOR, "#worklist tbody tr.study")
        assert {r.get_attribute("data-study-uid") for r in rows} == set(uids)
        scores = [float(r.find_element(By.CSS_SELECTOR, "td.score").text) for r in rows]
        assert scores == sorted(scores, reverse=True)  # triage: highest score first

        top = rows[0]
        study_uid = top.get_attribute("data-study-uid")
        ai_label = top.find_element(By.CSS_SELECTOR, "td.label").text
        top.find_element(By.CSS_SELECTOR, "a.open").click()

        wait(
            driver,
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "true",
        )
        assert driver.find_element(By.ID, "ai-score").text == f"{scores[0]:.3f}"
        assert driver.find_element(By.ID, "ai-label").text == ai_label
        assert driver.find_element(By.ID, "ai-model").text.startswith("finding:")
        wait(
            driver,
            lambda d: d.execute_script(
                "const i = document.getElementById('ai-slice');"
                "return i.complete && i.naturalWidth > 0;"
            ),
        )
        driver.find_element(By.ID, "relabel").click()
        new_label = "no lesion" if ai_label == "lesion" else "lesion"
        Select(wait(driver, lambda d: d.find_element(By.ID, "relabel-label"))).select_by_value(
            new_label
        )
        driver.find_element(By.ID, "relabel-comment").send_keys("second reader disagrees")
        driver.find_element(By.ID, "relabel-save").click()
        message = wait(
            driver, lambda d: d.find_element(By.CSS_SELECTOR, "#message[data-done='true']")
        )
        sr_uid = message.get_attribute("data-sr-uid")
        assert sr_uid and "Recorded: relabel" in message.text
        driver.save_screenshot(str(tmp_path / "review.png"))

    # the amended SR, found through radnode's own DICOMweb like any DICOMweb client would
    with httpx.Client(base_url=f"{base}/dicom-web", headers=auth, timeout=30) as dw:
        found = dw.get(f"/studies/{study_uid}/instances", params={"SOPInstanceUID": sr_uid})
        assert found.status_code == 200, found.text
        [hit] = found.json()
        series_uid = hit["0020000E"]["Value"][0]
        meta = dw.get(
            f"/studies/{study_uid}/series/{series_uid}/instances/{sr_uid}/metadata",
            headers={"Accept": "application/dicom+json"},
        )
        assert meta.status_code == 200, meta.text
        [ds] = meta.json()
    ai_sr = node.index.find_instance(sr_uid)
    assert ai_sr is not None
    assert ds[VERIFICATION_FLAG]["Value"] == ["VERIFIED"]
    [pre_study] = ds[PREDECESSOR_DOCUMENTS]["Value"]
    pre_sop = pre_study["00081115"]["Value"][0]["00081199"]["Value"][0]["00081155"]["Value"][0]
    result = httpx.get(f"{base}/api/studies/{study_uid}/result", headers=auth).json()
    assert pre_sop == result["sr_sop_instance_uid"]


def test_review_page_without_radiologist_role_has_no_buttons(edge, tmp_path) -> None:
    from selenium.webdriver.common.by import By

    from tests.support.viewer import VIEWER

    _, uids, base = edge
    with chromium(tmp_path / "profile") as driver:
        driver.get(f"{base}/ui/review.html?study={uids[0]}")
        driver.execute_script("sessionStorage.setItem('radnode.token', arguments[0]);", VIEWER)
        driver.refresh()
        wait(
            driver,
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "true",
        )
        assert "(viewer)" in driver.find_element(By.ID, "who").text
        assert not driver.find_element(By.ID, "confirm").is_displayed()


ROW_BANDS_JS = """
return [...document.querySelectorAll('#worklist tbody tr')].map((tr) => {
  const row = tr.getBoundingClientRect();
  return {row: [row.top, row.bottom],
          cells: [...tr.cells].map((td) => { const r = td.getBoundingClientRect();
                                             return [td.className, r.top, r.bottom]; })};
});
"""


def _loaded(driver) -> bool:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "true"


def _signed_in(driver, base: str, path: str, token: str) -> None:
    driver.get(f"{base}/ui/")
    driver.execute_script("sessionStorage.setItem('radnode.token', arguments[0]);", token)
    driver.get(f"{base}{path}")
    wait(driver, _loaded)


def test_worklist_rows_share_one_line_band_at_1280x800(edge, tmp_path) -> None:
    from selenium.webdriver.common.by import By

    _, uids, base = edge
    with chromium(tmp_path / "profile") as driver:
        set_viewport(driver, 1280, 800)
        _signed_in(driver, base, "/ui/", RADIOLOGIST)
        assert driver.execute_script("return window.innerWidth") == 1280
        bands = driver.execute_script(ROW_BANDS_JS)
        columns = len(driver.find_elements(By.CSS_SELECTOR, "#worklist thead th"))
        assert len(bands) == len(uids) and columns >= 9
        previous_bottom = 0.0
        for band in bands:
            top, bottom = band["row"]
            assert top >= previous_bottom - 1, band  # rows do not overlap
            previous_bottom = bottom
            assert len(band["cells"]) == columns, band
            for cls, cell_top, cell_bottom in band["cells"]:
                assert abs(cell_top - top) <= 1 and abs(cell_bottom - bottom) <= 1, (cls, band)
            assert bottom - top < 60, band  # one line of text, not a block
        assert driver.execute_script(HORIZONTAL_OVERFLOW_JS) == []


def test_review_keyboard_viewer_and_layout_at_1280x800(edge, tmp_path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    node, uids, base = edge
    with chromium(tmp_path / "profile") as driver:
        set_viewport(driver, 1280, 800)
        _signed_in(driver, base, "/ui/", RADIOLOGIST)
        order = [
            r.get_attribute("data-study-uid")
            for r in driver.find_elements(By.CSS_SELECTOR, "#worklist tbody tr.study")
        ]
        assert sorted(order) == sorted(uids)
        driver.find_element(By.CSS_SELECTOR, "#worklist tbody tr.study a.open").click()
        wait(driver, _loaded)
        assert driver.execute_script(HORIZONTAL_OVERFLOW_JS) == []

        # the viewer, from this origin, reads DICOMweb as the signed-in user
        frame = driver.find_element(By.ID, "ohif")
        assert frame.get_attribute("src") == (f"{base}/viewer/viewer?StudyInstanceUIDs={order[0]}")
        driver.switch_to.frame(frame)
        probe = wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#probe[data-status]"))
        assert probe.get_attribute("data-status") == "200"
        assert sorted(probe.get_attribute("data-studies").split(",")) == sorted(uids)
        driver.switch_to.default_content()

        keys = ActionChains(driver)
        panel = driver.find_element(By.CSS_SELECTOR, "#ai-panel h2")
        panel.click()
        keys.send_keys("r").perform()
        assert driver.find_element(By.ID, "relabel-form").is_displayed()
        assert driver.switch_to.active_element.get_attribute("id") == "relabel-label"
        comment = driver.find_element(By.ID, "relabel-comment")
        comment.send_keys("c")  # typing is not a shortcut
        assert driver.find_element(By.ID, "message").text == ""

        panel.click()
        keys.send_keys("c").perform()
        message = wait(
            driver, lambda d: d.find_element(By.CSS_SELECTOR, "#message[data-done='true']")
        )
        assert "Recorded: confirm" in message.text
        [row] = httpx.get(
            f"{base}/api/studies/{order[0]}/feedback",
            headers={"Authorization": f"Bearer {RADIOLOGIST}"},
        ).json()["items"]
        assert row["decision"] == "confirm" and row["observer_name"] == "Doe^Jane"

        keys.send_keys("n").perform()
        wait(driver, lambda d: d.current_url.endswith(f"review.html?study={order[1]}"))
        wait(driver, _loaded)
        assert driver.execute_script(HORIZONTAL_OVERFLOW_JS) == []


def test_real_ohif_in_the_review_page_with_authentication_on(tmp_path, shipped_models, caplog):
    """The radiologist signs in on the review page; OHIF, embedded from /viewer/ on the same
    origin, shows the study's images; without the session the same read is refused; the
    token is in no log line and no audit message."""
    import logging

    from selenium.webdriver.common.by import By

    from tests.support.viewer import CANVAS_HAS_PIXELS_JS, records_mentioning
    from viewer_plugin.ohif.dist import default_dist
    from viewer_plugin.ohif.session import encode

    dist = default_dist()
    if not (dist / "index.html").is_file():
        pytest.fail(f"OHIF is not fetched ({dist}): run `make ohif`")
    node = make_node(tmp_path / "data", auth=True, ohif_dir=dist.resolve())
    [uid] = analyse_studies(
        node,
        shipped_models,
        tmp_path / "in",
        [StudySpec(region="chest", slices=16, nodules=2, seed=3, rows=128, columns=128)],
    )
    artifacts = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        with caplog.at_level(logging.DEBUG), serve(create_app(node)) as base:
            anonymous = httpx.get(
                f"{base}/viewer/dicom-web/studies/{uid}/metadata",
                headers={"Accept": "application/dicom+json"},
            )
            assert anonymous.status_code == 401 and uid not in anonymous.text
            with chromium(tmp_path / "profile") as driver:
                set_viewport(driver, 1280, 800)
                _signed_in(driver, base, f"/ui/review.html?study={uid}", RADIOLOGIST)
                frame = driver.find_element(By.ID, "ohif")
                driver.switch_to.frame(frame)
                wait(driver, lambda d: d.execute_script(CANVAS_HAS_PIXELS_JS), 180)
                assert not driver.find_elements(By.XPATH, "//*[contains(text(), 'went wrong')]")
                driver.switch_to.default_content()
                driver.save_screenshot(str(artifacts / "review-with-ohif.png"))
        audit = "".join(
            p.read_text() for p in (node.settings.data_dir / "audit").glob("audit-*.log")
        )
        accessed = [r for r in caplog.records if r.name == "dicomweb.access"]
        assert any(str(getattr(r, "path", "")).startswith("/viewer/dicom-web/") for r in accessed)
        for secret in (RADIOLOGIST, encode(RADIOLOGIST)):
            assert records_mentioning(caplog.records, secret) == []
            assert secret not in audit
    finally:
        node.close()


MARK_BOX_JS = """
const img = document.getElementById('ai-slice'), mark = document.getElementById('ai-mark');
if (!img.complete || !img.naturalWidth || mark.hidden) return null;
const i = img.getBoundingClientRect(), c = mark.querySelector('circle').getBoundingClientRect();
return {img: [i.left, i.top, i.width, i.height],
        centre: [c.left + c.width / 2, c.top + c.height / 2],
        column: Number(mark.dataset.column), row: Number(mark.dataset.row)};
"""


SLICE_SHOWN_JS = "return document.getElementById('ai-slice').naturalWidth > 0"


def test_review_marks_the_finding_on_the_driving_slice(edge, tmp_path) -> None:
    node, uids, base = edge
    results = {
        uid: httpx.get(
            f"{base}/api/studies/{uid}/result",
            headers={"Authorization": f"Bearer {RADIOLOGIST}"},
            timeout=30,
        ).json()
        for uid in uids
    }
    [positive] = [u for u, r in results.items() if r["details"].get("location")]
    location = results[positive]["details"]["location"]
    with chromium(tmp_path / "profile") as driver:
        set_viewport(driver, 1280, 800)
        _signed_in(driver, base, f"/ui/review.html?study={positive}", RADIOLOGIST)
        box = wait(driver, lambda d: d.execute_script(MARK_BOX_JS))
        left, top, width, height = box["img"]
        assert (box["column"], box["row"]) == (location["column"], location["row"])
        expected = (
            left + width * location["column"] / location["columns"],
            top + height * location["row"] / location["rows"],
        )
        assert box["centre"] == pytest.approx(expected, abs=1.5)
        slice_uid = driver.find_element("id", "ai-slice").get_attribute("data-sop-instance-uid")
        assert slice_uid == location["sop_instance_uid"]
        artifacts = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(artifacts / "review-mark.png"))
        # a study without a finding shows its slice unmarked
        [negative] = [u for u in uids if u != positive]
        _signed_in(driver, base, f"/ui/review.html?study={negative}", RADIOLOGIST)
        wait(driver, lambda d: d.execute_script(SLICE_SHOWN_JS))
        assert driver.execute_script("return document.getElementById('ai-mark').hidden")
