"""The upload page in a real headless Chromium: a folder (with a non-DICOM file) goes by
STOW-RS, its first request's answer lost on the way back (the connection dropped after the
node stored it), so the page resumes and skips what is stored; then a .zip; progress
reaches 100 %, every file's outcome is shown, and once analysed both studies are in the
worklist."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

from ai_node.pipeline import AnalysisPipeline
from ai_node.synth import StudySpec, write_study
from dicomweb.app import create_app
from radnode_core.index import instances
from tests.support.analysis import run_all
from tests.support.browser import chromium, serve, wait
from tests.support.viewer import RADIOLOGIST, make_node


class DropFirstStow:
    """Lets the first STOW-RS request through to the node, then answers 502 instead of the
    node's answer, as a proxy does when the connection behind it dropped."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.dropped = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        first = (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == "/dicom-web/studies"
            and not self.dropped
        )
        if not first:
            await self.app(scope, receive, send)
            return
        self.dropped += 1

        async def swallow(message: Any) -> None:
            return None

        await self.app(scope, receive, swallow)
        await send({"type": "http.response.start", "status": 502, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def edge(tmp_path: Path):
    node = make_node(tmp_path / "data", auth=True)
    app = DropFirstStow(create_app(node))
    with serve(app) as base:
        yield node, app, base
    node.close()


def _done(driver: Any) -> bool:
    from selenium.webdriver.common.by import By

    body = driver.find_element(By.TAG_NAME, "body")
    return body.get_attribute("data-done") == "true"


def test_upload_folder_and_zip_then_the_worklist(edge, tmp_path, shipped_models) -> None:
    from selenium.webdriver.common.by import By

    node, app, base = edge

    def spec(nodules: int, seed: int) -> StudySpec:
        return StudySpec(
            region="chest", slices=16, nodules=nodules, seed=seed, rows=128, columns=128
        )

    folder_study, folder_files = write_study(spec(1, 31), tmp_path / "folder")
    (tmp_path / "folder" / "notes.txt").write_text("not DICOM")
    zip_study, zip_files = write_study(spec(0, 32), tmp_path / "z")
    archive = tmp_path / "scans.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in zip_files:
            zf.write(f, f"scans/{f.name}")
        zf.writestr("scans/readme.pdf", b"%PDF-1.4 not DICOM")

    with chromium(tmp_path / "profile") as driver:
        driver.get(f"{base}/ui/upload/")
        box = wait(
            driver,
            lambda d: (
                d.find_element(By.ID, "token").is_displayed() and d.find_element(By.ID, "token")
            ),
        )
        box.send_keys(RADIOLOGIST)
        driver.find_element(By.ID, "signin-go").click()
        wait(
            driver,
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true",
        )

        driver.find_element(By.ID, "pick-folder").send_keys(str(tmp_path / "folder"))
        wait(driver, _done)
        rows = driver.find_elements(By.CSS_SELECTOR, "#files tbody tr")
        outcomes = {
            r.get_attribute("data-name").rsplit("/", 1)[-1]: r.get_attribute("data-outcome")
            for r in rows
        }
        assert len(outcomes) == len(folder_files) + 2
        assert outcomes.pop("notes.txt") == outcomes.pop("truth.json") == "skipped"
        assert set(outcomes.values()) <= {"stored", "already stored"}
        assert app.dropped == 1
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-resumed") == "1"
        assert "already stored" in outcomes.values()  # the resumed request skipped them
        assert driver.find_element(By.ID, "total-progress").get_attribute("value") == "100"

        driver.find_element(By.ID, "pick-files").send_keys(str(archive))
        wait(
            driver,
            lambda d: (
                _done(d)
                and d.find_elements(By.CSS_SELECTOR, "#files tbody tr[data-name$='readme.pdf']")
            ),
        )
        member_rows = driver.find_elements(
            By.CSS_SELECTOR, "#files tbody tr[data-name^='scans.zip / ']"
        )
        member = {r.get_attribute("data-name"): r for r in member_rows}
        assert len(member) == len(zip_files) + 1
        pdf = member.pop("scans.zip / scans/readme.pdf")
        assert pdf.get_attribute("data-outcome") == "skipped"
        assert "not a DICOM file" in pdf.find_element(By.CSS_SELECTOR, "td.why").text
        assert {r.get_attribute("data-outcome") for r in member.values()} == {"stored"}
        assert driver.find_element(By.ID, "total-progress").get_attribute("value") == "100"
        assert "100 %" in driver.find_element(By.ID, "total-text").text
        driver.save_screenshot(str(tmp_path / "upload.png"))

        run_all(node, AnalysisPipeline(node, shipped_models))
        driver.get(f"{base}/ui/")
        wait(
            driver,
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "true",
        )
        listed = {
            r.get_attribute("data-study-uid")
            for r in driver.find_elements(By.CSS_SELECTOR, "#worklist tbody tr.study")
        }
        assert listed == {folder_study.study_instance_uid, zip_study.study_instance_uid}


def test_viewer_role_sees_upload_refused(edge, tmp_path) -> None:
    from selenium.webdriver.common.by import By

    from tests.support.viewer import VIEWER

    _, _, base = edge
    with chromium(tmp_path / "profile") as driver:
        driver.get(f"{base}/ui/upload/")
        wait(driver, lambda d: d.find_element(By.ID, "token").is_displayed())
        driver.find_element(By.ID, "token").send_keys(VIEWER)
        driver.find_element(By.ID, "signin-go").click()
        wait(
            driver,
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "refused",
        )
        assert "Not allowed to upload" in driver.find_element(By.ID, "who").text
        assert not driver.find_element(By.ID, "drop").is_displayed()


def test_images_wait_for_a_patient_id_then_become_one_study(edge, tmp_path) -> None:
    from selenium.webdriver.common.by import By

    node, _, base = edge
    images = []
    for n, fmt in enumerate(("PNG", "JPEG")):
        path = tmp_path / f"film{n}.{fmt.lower()}"
        Image.new("L", (64, 48), color=40 + n * 80).save(path, format=fmt)
        images.append(path)
    with chromium(tmp_path / "profile") as driver:
        driver.get(f"{base}/ui/upload/")
        wait(driver, lambda d: d.find_element(By.ID, "token").is_displayed())
        driver.find_element(By.ID, "token").send_keys(RADIOLOGIST)
        driver.find_element(By.ID, "signin-go").click()
        wait(
            driver,
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true",
        )
        driver.find_element(By.ID, "pick-files").send_keys("\n".join(str(p) for p in images))
        form = wait(driver, lambda d: d.find_element(By.ID, "image-form").is_displayed())
        assert form
        assert driver.find_element(By.ID, "image-count").text == "2"
        driver.find_element(By.ID, "image-go").click()  # no patient ID: the form refuses
        assert driver.execute_script(
            "return document.getElementById('f-patient-id').validity.valueMissing"
        )
        assert driver.find_element(By.ID, "image-form").is_displayed()
        assert node.index.counts()["instances"] == 0
        driver.find_element(By.ID, "f-patient-id").send_keys("FILM-7")
        driver.find_element(By.ID, "f-study-description").send_keys("old films")
        driver.find_element(By.ID, "image-go").click()
        wait(driver, _done)
        rows = driver.find_elements(By.CSS_SELECTOR, "#files tbody tr")
        assert [r.get_attribute("data-outcome") for r in rows] == ["stored", "stored"]
    studies = {node.index.find_instance(uid)["study_uid"] for uid in _instance_uids(node)}
    assert len(studies) == 1
    study = node.index.get_study(studies.pop())
    assert study is not None
    assert (study["patient_id"], study["study_description"]) == ("FILM-7", "old films")


def _instance_uids(node: Any) -> list[str]:
    with node.index.engine.connect() as conn:
        return list(conn.execute(select(instances.c.sop_instance_uid)).scalars())
