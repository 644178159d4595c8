"""The monitoring dashboard (``/ui/dashboard/``) in a real headless Chromium: an admin sees
each model's charts drawn from the index (studies analysed by the real models, a
radiologist's real judgements) and the drift alerts; a radiologist is refused by the API
and the page draws nothing."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from ai_node.results import ResultStore
from ai_node.synth import StudySpec
from dicomweb.app import create_app
from tests.support.browser import chromium, serve, wait
from tests.support.viewer import ADMIN, RADIOLOGIST, analyse_studies, make_node


@pytest.fixture
def edge(tmp_path: Path, shipped_models):
    node = make_node(tmp_path / "data", auth=True)
    uids = analyse_studies(
        node,
        shipped_models,
        tmp_path / "in",
        [
            StudySpec(region="chest", slices=12, nodules=0, seed=21, rows=128, columns=128),
            StudySpec(region="chest", slices=12, nodules=2, seed=3, rows=128, columns=128),
        ],
    )
    with serve(create_app(node)) as base:
        yield node, uids, base
    node.close()


def _sign_in(driver, base: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/ui/dashboard")
    box = wait(
        driver,
        lambda d: d.find_element(By.ID, "token").is_displayed() and d.find_element(By.ID, "token"),
    )
    box.send_keys(token)
    driver.find_element(By.ID, "signin-go").click()


def test_an_admin_sees_charts_with_data_and_the_models_alerts(edge, tmp_path) -> None:
    from selenium.webdriver.common.by import By

    node, uids, base = edge
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {RADIOLOGIST}"}) as c:
        for uid in uids:  # the radiologist disagrees with the model on every study
            result = ResultStore(node.index).study_result(uid)
            assert result is not None and result["status"] == "done"
            other = "no lesion" if result["label"] == "lesion" else "lesion"
            r = c.post(f"/api/studies/{uid}/feedback", json={"decision": "relabel", "label": other})
            assert r.status_code == 201, r.text

    with chromium(tmp_path / "profile") as driver:
        _sign_in(driver, base, ADMIN)
        section = wait(
            driver, lambda d: d.find_element(By.CSS_SELECTOR, 'section.model[data-model="finding"]')
        )
        charts = section.find_elements(By.CSS_SELECTOR, "svg.chart")
        titles = [c.get_attribute("aria-label") for c in charts]
        assert titles[4:] == [  # the input statistics the pipeline recorded
            "finding: mean_hu (median)",
            "finding: pixel_spacing_mm (median)",
            "finding: slice_thickness_mm (median)",
        ]
        for chart in charts[4:]:  # inside the card's training range
            assert chart.find_elements(By.CSS_SELECTOR, "rect.band")
            assert len(chart.find_elements(By.CSS_SELECTOR, "circle.point")) >= 1
        assert titles[:4] == [
            "finding: results per bucket",
            "finding: positive rate",
            "finding: seconds per study",
            "finding: agreement with radiologists",
        ]
        # every chart has the two studies' data drawn: bars for the results, points for
        # the rest (both studies finished within the same hour)
        assert int(charts[0].get_attribute("data-points")) > 0
        assert len(charts[0].find_elements(By.CSS_SELECTOR, "rect.bar")) >= 1
        for chart in charts[1:]:
            assert len(chart.find_elements(By.CSS_SELECTOR, "circle.point")) >= 1
        assert charts[1].find_elements(By.CSS_SELECTOR, "rect.band")  # the card's band
        assert charts[3].find_elements(By.CSS_SELECTOR, "line.floor")  # min agreement
        assert "2 done" in section.find_element(By.TAG_NAME, "h2").text
        assert (
            "agreement 0 % of 2 judgements" in section.find_element(By.CSS_SELECTOR, ".drift").text
        )
        # the 7-day and 30-day views come from the same index
        driver.find_element(By.CSS_SELECTOR, '#periods button[data-period="30d"]').click()
        wait(
            driver,
            lambda d: (
                "active"
                in d.find_element(
                    By.CSS_SELECTOR, '#periods button[data-period="30d"]'
                ).get_attribute("class")
            ),
        )
        wait(
            driver,
            lambda d: (
                len(
                    d.find_elements(
                        By.CSS_SELECTOR,
                        'section.model[data-model="finding"] svg.chart circle.point',
                    )
                )
                >= 3
            ),
        )
        assert driver.find_element(By.ID, "alerts").get_attribute("hidden") is not None

    # once enough studies disagree, the agreement alert shows on the page
    with node.index.transaction() as conn:
        from ai_node.tables import feedback

        row = dict(conn.execute(feedback.select().limit(1)).mappings().one())
        for i in range(20):
            conn.execute(
                feedback.insert().values(
                    {**row, "id": None, "sr_sop_instance_uid": f"2.25.{i + 1}"}
                )
            )
    with chromium(tmp_path / "profile2") as driver:
        _sign_in(driver, base, ADMIN)
        alert = wait(
            driver,
            lambda d: d.find_element(
                By.CSS_SELECTOR, '#alert-list li.alert[data-check="agreement"]'
            ),
        )
        assert alert.get_attribute("data-model") == "finding"
        assert "radiologists confirmed 0%" in alert.text
        assert driver.find_element(By.ID, "alerts").is_displayed()
        # the worklist links an admin to it
        driver.get(f"{base}/ui/")
        wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"))
        link = driver.find_element(By.ID, "dashboard-link")
        assert link.is_displayed()
        link.click()
        wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "section.model"))


def test_a_radiologist_gets_no_dashboard(edge, tmp_path) -> None:
    from selenium.webdriver.common.by import By

    _node, _uids, base = edge
    r = httpx.get(f"{base}/api/monitoring", headers={"Authorization": f"Bearer {RADIOLOGIST}"})
    assert r.status_code == 403
    assert httpx.get(f"{base}/api/monitoring").status_code == 401
    ok = httpx.get(f"{base}/api/monitoring?period=7d", headers={"Authorization": f"Bearer {ADMIN}"})
    assert ok.status_code == 200 and ok.json()["period"] == "7d"
    with chromium(tmp_path / "profile") as driver:
        _sign_in(driver, base, RADIOLOGIST)
        status = wait(
            driver,
            lambda d: (
                "Not allowed" in d.find_element(By.ID, "status").text
                and d.find_element(By.ID, "status")
            ),
        )
        assert "admins" in status.text
        assert driver.find_elements(By.CSS_SELECTOR, "svg.chart") == []
        assert driver.find_elements(By.CSS_SELECTOR, "section.model") == []
        driver.get(f"{base}/ui/")  # and the worklist shows a radiologist no link to it
        wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"))
        assert not driver.find_element(By.ID, "dashboard-link").is_displayed()


def test_the_dashboard_shows_the_space_deletions_reclaimed(tmp_path) -> None:
    from selenium.webdriver.common.by import By

    from tests.support.analysis import add_study

    node = make_node(tmp_path / "data", auth=True)
    try:
        kept = add_study(
            node, StudySpec(region="chest", slices=4, rows=64, columns=64), tmp_path / "a"
        )
        gone = add_study(
            node, StudySpec(region="chest", slices=6, seed=9, rows=64, columns=64), tmp_path / "b"
        )
        with serve(create_app(node)) as base:
            admin = {"Authorization": f"Bearer {ADMIN}"}
            deleted = httpx.delete(f"{base}/api/studies/{gone.study_instance_uid}", headers=admin)
            assert deleted.status_code == 204, deleted.text
            storage = httpx.get(f"{base}/api/monitoring?period=7d", headers=admin).json()["storage"]
            assert storage["studies_deleted"] == 1 and storage["reclaimed_bytes"] > 6 * 64 * 64
            with chromium(tmp_path / "profile") as driver:
                _sign_in(driver, base, ADMIN)
                box = wait(
                    driver,
                    lambda d: d.find_element(By.ID, "storage").is_displayed()
                    and d.find_element(By.ID, "storage"),
                )
                assert "1 studies deleted" in box.find_element(By.ID, "storage-summary").text
                reclaimed = box.find_element(By.CSS_SELECTOR, "svg.chart")
                assert reclaimed.get_attribute("aria-label") == "storage: MiB reclaimed per day"
                assert reclaimed.get_attribute("data-points") == "1"  # the one day with a deletion
                assert len(reclaimed.find_elements(By.CSS_SELECTOR, "rect.bar")) == 1
        assert node.index.get_study(kept.study_instance_uid) is not None
    finally:
        node.close()
